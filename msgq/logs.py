"""configure_logging(): structlog, JSON lines off a TTY, readable lines on one, secrets scrubbed."""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

_secrets: set[str] = set()


def register_secret(value: str | None) -> None:
    """Never let this string reach a log line, even inside an exception message."""
    if value and len(value) >= 8:
        _secrets.add(value)


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        for secret in _secrets:
            value = value.replace(secret, "[redacted]")
    return value


def scrub_secrets(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """A structlog processor: the belt to SecretStr's braces."""
    return {key: _scrub(value) for key, value in event.items()}


def configure_logging(*, fmt: str = "auto", level: str = "info") -> None:
    """Call once per entry point. `fmt` is auto (JSON unless stderr is a TTY), json or console."""
    as_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if as_json
        else structlog.dev.ConsoleRenderer(
            exception_formatter=structlog.dev.RichTracebackFormatter(show_locals=False)
        )
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            # Tracebacks without local variables: locals can hold image bytes or the key.
            structlog.processors.ExceptionRenderer(
                structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
            )
            if as_json
            else structlog.dev.set_exc_info,
            scrub_secrets,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        # Resolved per call, so a redirected or replaced stderr is honoured.
        logger_factory=lambda *_: structlog.PrintLogger(sys.stderr),
        cache_logger_on_first_use=False,
    )
    # arq and httpx log through the stdlib: keep their lines, at warning and above only.
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="%(name)s %(message)s")
