"""Misspelt setting names: pydantic-settings ignores a variable it does not know, so
`MSGQ_MAX_JOB=10` (or `REDIS_ULR`) silently left the default in force. Every `msgq` command
warns once about each, naming the closest real variable."""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import click
from dotenv import dotenv_values

from msgq.cli.config import env_names
from msgq.settings import Settings

# MSGQ_* names msgq reads that are not Settings fields: the dev stack's file and the test
# suite's switches. The simulator's MSGQ_SIM_* come from its command's options, read below.
OTHER_NAMES = frozenset(
    {
        "MSGQ_API_URL",
        "MSGQ_DEV_CHILD",
        "MSGQ_CHAOS",
        "MSGQ_REQUIRE_BROWSER",
        "MSGQ_REQUIRE_NODE",
        "MSGQ_REQUEST",
    }
)
# Un-prefixed variables msgq reads: a near miss of one of these is a typo; any other name
# (HOME, REDIS_HOST, ANTHROPIC_AUTH_TOKEN, ...) belongs to someone else and is left alone.
BARE_NAMES = ("REDIS_URL", "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL")
BARE_CUTOFF = 0.8  # REDIS_ULR, REDIS_URI, ANTHROPIC_API_KYE match; REDIS_PORT (0.74) does not


def known_names(commands: Iterable[click.Command] = ()) -> set[str]:
    """Every variable msgq reads: the Settings fields', the commands' `envvar`s, the others."""
    names = {n.upper() for name, f in Settings.model_fields.items() for n in env_names(name, f)}
    for command in commands:
        for param in command.params:
            envvar = getattr(param, "envvar", None)
            names.update([envvar] if isinstance(envvar, str) else (envvar or []))
    return names | OTHER_NAMES


def misspelt(variables: Iterable[str], known: set[str]) -> list[tuple[str, str | None]]:
    """(variable, closest real name or None) for each name that looks meant for msgq but is
    none of its variables."""
    found = []
    for variable in sorted(set(variables)):
        upper = variable.upper()
        if upper in known:
            continue
        if upper.startswith("MSGQ_"):
            close = difflib.get_close_matches(upper, sorted(known), n=1, cutoff=0.75)
            found.append((variable, close[0] if close else None))
        elif close := difflib.get_close_matches(upper, BARE_NAMES, n=1, cutoff=BARE_CUTOFF):
            found.append((variable, close[0]))
    return found


def typo_warnings(
    environ: Mapping[str, str], dotenv_path: Path, commands: Iterable[click.Command] = ()
) -> list[str]:
    """One line per misspelt variable in the environment or `.env`, saying where it is."""
    known = known_names(commands)
    dotenv = list(dotenv_values(dotenv_path)) if dotenv_path.is_file() else []
    lines = []
    for where, names in (("the environment", list(environ)), (str(dotenv_path), dotenv)):
        for variable, close in misspelt(names, known):
            hint = f"did you mean {close}?" if close else "`msgq settings` lists every setting"
            lines.append(
                f"msgq: warning: {variable} (in {where}) is not a msgq setting and is ignored; "
                f"{hint}"
            )
    return lines


def warn_about_typos(commands: Iterable[click.Command] = ()) -> None:
    """On stderr, once per command run, so stdout still pipes."""
    env_file = Path(str(Settings.model_config.get("env_file") or ".env"))
    for line in typo_warnings(os.environ, env_file, commands):
        click.echo(line, err=True)
