"""The docs agree with the code where a newcomer would notice a contradiction."""

from __future__ import annotations

import re
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
