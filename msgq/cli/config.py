"""What the CLI says about configuration: `msgq settings` (value, source) and bad-setting errors.

Both name the environment variable a user actually types, never the Python field name.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from dotenv import dotenv_values
from pydantic import SecretStr, ValidationError
from pydantic.fields import FieldInfo

from msgq.settings import Settings

# Values that may carry a password: shown only with it masked, never echoed in an error.
_URL_FIELDS = frozenset({"redis_url"})


def env_names(name: str, field: FieldInfo) -> list[str]:
    """The environment variables that set one field, in pydantic-settings' order."""
    alias = field.validation_alias
    if alias is not None and hasattr(alias, "choices"):
        return [str(c) for c in alias.choices]
    return [f"MSGQ_{name.upper()}"]


def dotenv_settings() -> dict[str, str]:
    """The `.env` file's variables, names upper-cased (empty without the file)."""
    path = Path(str(Settings.model_config.get("env_file") or ".env"))
    if not path.is_file():
        return {}
    return {k.upper(): v for k, v in dotenv_values(path).items() if v is not None}


def source_of(names: list[str], dotenv: dict[str, str]) -> tuple[str, str]:
    """(variable, where): the first of `names` set in the environment, else in .env, else the
    field's default. Matching ignores case, as pydantic-settings does."""
    environ = {k.upper(): k for k in os.environ}
    for name in names:
        if name.upper() in environ:
            return name, "env"
    for name in names:
        if name.upper() in dotenv:
            return name, ".env"
    return names[0], "default"


def mask(name: str, value: Any) -> str:
    if value is None:
        return "until msgq resume" if name == "spend_pause_s" else "(unset)"
    if isinstance(value, SecretStr):
        return "****** (set)"
    if name in _URL_FIELDS:
        return re.sub(r"//[^@/]*@", "//***@", str(value))
    return str(value)


def settings_rows(settings: Settings) -> list[tuple[str, str, str, str]]:
    """(variables, value in effect, source, description) per setting; secrets masked."""
    dotenv = dotenv_settings()
    rows = []
    for name, field in Settings.model_fields.items():
        names = env_names(name, field)
        _, where = source_of(names, dotenv)
        value = mask(name, getattr(settings, name))
        rows.append((" / ".join(names), value, where, field.description or ""))
    return rows


def describe_settings_error(exc: ValidationError) -> str:
    """One line per bad setting, `VARIABLE: problem (got 'value')`, joined with `; `."""
    dotenv = dotenv_settings()
    parts = []
    for err in exc.errors(include_url=False):
        name = _field_of(str(err["loc"][0]) if err["loc"] else "")
        field = Settings.model_fields.get(name)
        variable = source_of(env_names(name, field), dotenv)[0] if field else name
        problem = str(err["msg"]).removeprefix("Value error, ")
        secret = field is not None and (name in _URL_FIELDS or "SecretStr" in str(field.annotation))
        shown = "" if secret or "input" not in err else f" (got {str(err['input'])[:60]!r})"
        parts.append(f"{variable}: {problem}{shown}")
    return "bad configuration: " + "; ".join(parts)


def _field_of(loc: str) -> str:
    """pydantic-settings reports an aliased field under one of its variables: map it back."""
    for name, field in Settings.model_fields.items():
        if loc == name or loc.upper() in (n.upper() for n in env_names(name, field)):
            return name
    return loc
