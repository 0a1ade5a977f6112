"""MkDocs hook: the reference pages generated from the code at build time, never by hand.

- reference/settings.md from `Settings.model_fields` (variables, defaults, descriptions);
- reference/http-api.md from the app's OpenAPI document;
- `{{ error_tree }}` in reference/errors.md from `msgq/errors.py`'s docstring;
- design/reliability-log.md and design/benchmarks.md from RELIABILITY.md and BENCHMARKS.md;
- index.md from README.md (the front door of both).
The CLI reference is mkdocs-click's directive in reference/cli.md (click itself).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page

ROOT = Path(__file__).resolve().parents[2]


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def settings_page() -> str:
    from pydantic_core import PydanticUndefined

    from msgq.cli.config import env_names
    from msgq.settings import Settings

    rows = [
        "# Settings",
        "",
        "Generated from the `Settings` model (`msgq/settings.py`) when the site is built. "
        "`msgq settings` prints the same list with the values in effect and their source. "
        "Where each must be set (workers, API, producers): [Configuration](configuration.md).",
        "",
        "| variable | default | description |",
        "|---|---|---|",
    ]
    for name, field in Settings.model_fields.items():
        default = field.default
        if default is PydanticUndefined:
            default = field.default_factory() if field.default_factory else ""  # type: ignore[call-arg]
        shown = "(unset)" if default is None else f"`{_cell(default)}`"
        variables = " / ".join(f"`{n}`" for n in env_names(name, field))
        rows.append(f"| {variables} | {shown} | {_cell(field.description or '')} |")
    return "\n".join(rows) + "\n"


def http_api_page() -> str:
    from pydantic import SecretStr

    from msgq.http.app import create_app
    from msgq.settings import Settings

    settings = Settings(_env_file=None, api_keys=SecretStr("docs:docs-key"))  # type: ignore[call-arg]
    spec: dict[str, Any] = create_app(settings).openapi()
    rows = [
        "# HTTP API reference",
        "",
        f"Generated from the app's OpenAPI document ({spec['info']['title']} "
        f"{spec['info'].get('version', '')}) when the site is built; a running API serves it "
        "at `/openapi.json`. The guide: [HTTP API](../guides/http-api.md).",
        "",
        "| method | path | summary |",
        "|---|---|---|",
    ]
    for path, operations in spec["paths"].items():
        for method, op in operations.items():
            summary = op.get("summary") or op.get("operationId", "")
            rows.append(f"| {method.upper()} | `{_cell(path)}` | {_cell(summary)} |")
    rows += ["", "## Schemas", ""]
    for name, schema in sorted(spec.get("components", {}).get("schemas", {}).items()):
        fields = ", ".join(f"`{f}`" for f in schema.get("properties", {}))
        rows.append(f"- **{name}**: {fields or _cell(schema.get('description', ''))}")
    return "\n".join(rows) + "\n"


def error_tree() -> str:
    import msgq.errors

    doc = msgq.errors.__doc__ or ""
    tree = doc[doc.index("ServiceError") :].strip()
    return f"```\n{tree}\n```"


def from_root(name: str, title: str) -> str:
    text = (ROOT / name).read_text(encoding="utf-8")
    for old, new in (
        ("](README.md", "](../index.md"),
        ("](BENCHMARKS.md)", "](benchmarks.md)"),
        ("](RELIABILITY.md)", "](reliability-log.md)"),
    ):
        text = text.replace(old, new)
    return f"<!-- generated from {name} at build time -->\n{text}" if title else text


def index_page() -> str:
    """The README is the site's front page too: one text, its links made relative to docs/."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    for old, new in (
        ("](docs/", "]("),
        ("](RELIABILITY.md)", "](design/reliability-log.md)"),
        ("](BENCHMARKS.md)", "](design/benchmarks.md)"),
    ):
        text = text.replace(old, new)
    return text.replace(" (`make docs`, then open `site/index.html`)", "")


GENERATED = {
    "index.md": index_page,
    "reference/settings.md": settings_page,
    "reference/http-api.md": http_api_page,
    "design/reliability-log.md": lambda: from_root("RELIABILITY.md", "reliability"),
    "design/benchmarks.md": lambda: from_root("BENCHMARKS.md", "benchmarks"),
}


def on_files(files: Files, config: MkDocsConfig) -> Files:
    for uri, build in GENERATED.items():
        files.append(File.generated(config, uri, content=build()))
    return files


def on_page_markdown(markdown: str, page: Page, config: MkDocsConfig, files: Files) -> str:
    return markdown.replace("{{ error_tree }}", error_tree())
