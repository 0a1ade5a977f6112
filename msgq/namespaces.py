"""Namespaces: how deployments sharing one Redis keep apart (`MSGQ_NAMESPACE`, and the older
`MSGQ_QUEUE_NAME` that named one before it). `msgq.keys` builds every key name from one."""

from __future__ import annotations

import functools
import re

DEFAULT_NAMESPACE = "msgq"
DEFAULT_QUEUE_NAME = "msgq:queue"  # MSGQ_QUEUE_NAME's default: the default namespace's queue
NAMESPACE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def check_namespace(namespace: str) -> str:
    """The namespace, or ValueError: 1-64 of `A-Za-z0-9_.-` (no `:` or `/`: no prefix of
    another namespace's keys, nor of a partition's, see `msgq.keys.Keyspace.part`)."""
    if not NAMESPACE_RE.fullmatch(namespace):
        msg = (
            f"namespace {namespace[:80]!r} must be 1-64 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
        raise ValueError(msg)
    return namespace


def namespace_of_queue(queue_name: str) -> str:
    """The namespace an older `MSGQ_QUEUE_NAME` means (`msgq:queue`: the default; `msgq:N`: N)."""
    if queue_name == DEFAULT_QUEUE_NAME:
        return DEFAULT_NAMESPACE
    name = queue_name.removeprefix("msgq:")
    try:
        return check_namespace(name)
    except ValueError:
        msg = f"MSGQ_QUEUE_NAME={queue_name[:80]!r} names no namespace; set MSGQ_NAMESPACE instead"
        raise ValueError(msg) from None


@functools.lru_cache(maxsize=64)  # `Settings.keys` is read on every job's path
def resolve_namespace(namespace: str, queue_name: str) -> str:
    """The one namespace `MSGQ_NAMESPACE` and the older `MSGQ_QUEUE_NAME` name together; a
    ValueError when both are set to different ones."""
    from_queue = namespace_of_queue(queue_name)
    if namespace == DEFAULT_NAMESPACE:
        return from_queue
    if from_queue not in (DEFAULT_NAMESPACE, namespace):
        msg = f"MSGQ_NAMESPACE={namespace!r} and MSGQ_QUEUE_NAME={queue_name!r} disagree; set one"
        raise ValueError(msg)
    return namespace
