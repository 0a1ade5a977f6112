"""The docs agree with the code where a newcomer would notice a contradiction."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from schemas import JobRecord

ROOT = Path(__file__).parent.parent


def test_the_documented_record_fields_are_jobrecords_fields() -> None:
    """The field table in docs/reference/job-record.md lists exactly JobRecord's fields, in
    its order, so no field is missing and none is invented."""
    text = (ROOT / "docs" / "reference" / "job-record.md").read_text(encoding="utf-8")
    documented = re.findall(r"^\| `(\w+)` \|", text, flags=re.MULTILINE)
    assert documented == list(JobRecord.model_fields)


def test_the_readme_is_a_front_door() -> None:
    """At most 200 lines, and it points into the docs site rather than holding its depth."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 200
    for link in re.findall(r"\]\((docs/[^)#]+)", readme):
        assert (ROOT / link).is_file(), link


def test_the_built_site_opens_from_disk(tmp_path: Path) -> None:
    """`make docs`, then open site/index.html (as the README says): every link between pages
    names a file, since from file:// a link to a directory shows its listing, not its page."""
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    built = subprocess.run(
        [str(Path(sys.executable).parent / "mkdocs"), "build", "--strict", "-q", "-d", str(site)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    checked = 0
    for page in site.rglob("*.html"):
        if page.name == "404.html":
            continue  # served only by a web server, which resolves its absolute links
        for link in re.findall(r'href="([^"#?]+)[^"]*"', page.read_text(encoding="utf-8")):
            if re.match(r"^[a-z]+:|^//", link):
                continue  # another site
            target = (page.parent / link).resolve()
            assert target.is_file(), f"{page.relative_to(site)} links to {link}"
            checked += 1
    assert checked > 100


def test_the_caption_window_default_is_documented_as_the_code_has_it() -> None:
    """One default for `--window`, the same in the guide, the command's help and the code (it
    was documented as 64, as 4 x MSGQ_MAX_JOBS, and was 256)."""
    from msgq.cli.caption_command import _default_window, caption
    from msgq.settings import Settings
    from schemas import Lane

    default = _default_window(Lane.REALTIME, Settings(_env_file=None))  # type: ignore[call-arg]
    guide = (ROOT / "docs" / "guides" / "caption.md").read_text(encoding="utf-8")
    stated = re.search(r"at most (\d+): (\d+) with\s+the default `MSGQ_MAX_JOBS`", guide)
    assert stated is not None
    assert int(stated[1]) == int(stated[2]) == default
    [window] = [p for p in caption.params if p.name == "window"]
    assert f"{default} by default" in str(getattr(window, "help", ""))
    from msgq.caption.work import CaptionOptions

    assert CaptionOptions(inputs=[]).window == default
