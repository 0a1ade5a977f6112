"""Optional extras: a subsystem whose libraries are not installed says which extra brings them.

A producer installs plain `msgq` (redis, pydantic, orjson, arq); the worker, the HTTP API,
captioning and the dev stack each have an extra. Each subsystem's package calls `require` on
import, so a missing library is one clear line, not a traceback from deep inside.
"""

from __future__ import annotations

import importlib.util


class MissingExtraError(ImportError):
    """A subsystem was used without its extra installed."""


def require(extra: str, what: str, *modules: str) -> None:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        msg = (
            f"{what} needs the '{extra}' extra ({', '.join(missing)} not installed): "
            f"pip install 'msgq[{extra}]'"
        )
        raise MissingExtraError(msg)
