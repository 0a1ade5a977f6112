"""Per-version validation: 2026-10-21's refusals, each naming its field; 2023-06-01 unchanged."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from schemas import field_errors, validate_request

V2023, V2026 = "2023-06-01", "2026-10-21"


def body(**extra: Any) -> dict[str, Any]:
    return {
        "model": "claude-haiku-4-5",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "hi"}],
        **extra,
    }


def refused_at(data: dict[str, Any], version: str) -> str:
    with pytest.raises(ValidationError) as exc:
        validate_request(data, anthropic_version=version)
    [error] = field_errors(exc.value, data)
    return error["loc"] + ": " + error["msg"]


CITED = {"type": "text", "text": "a", "citations": [{"type": "char_location", "cited_text": "a"}]}
DOCUMENT = {
    "type": "document",
    "source": {"type": "text", "media_type": "text/plain", "data": "x"},
}
SEARCH = {"type": "search_result", "source": "s", "title": "t", "content": [CITED]}


@pytest.mark.parametrize(
    ("extra", "where"),
    [
        ({"temperature": 1.0}, "temperature"),  # even at its default
        ({"top_p": 0.9}, "top_p"),
        ({"top_k": 5}, "top_k"),
        (
            {
                "messages": [
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": [DOCUMENT]},
                    {"role": "user", "content": "and?"},
                ]
            },
            "messages.1.content.0",
        ),
        ({"messages": [{"role": "user", "content": [CITED]}]}, "messages.0.content.0.citations"),
        (
            {"messages": [{"role": "user", "content": [SEARCH]}]},
            "messages.0.content.0.content.0.citations",
        ),
    ],
)
def test_2026_refuses_with_the_field_named_and_2023_accepts(
    extra: dict[str, Any], where: str
) -> None:
    """Each 2026-10-21 rule is a refusal naming the field; 2023-06-01 (and no version) pass."""
    data = body(**extra)
    assert refused_at(data, V2026).startswith(f"{where}: ")
    validate_request(data, anthropic_version=V2023)
    validate_request(data)


def test_2026_wording_is_the_apis() -> None:
    """The message carries the API's own words for a removed parameter."""
    assert "Extra inputs are not permitted" in refused_at(body(temperature=0.2), V2026)


def test_2026_accepts_what_it_keeps() -> None:
    """Empty citations, a document in a user turn, citations in an assistant turn: all fine."""
    uncited = {**CITED, "citations": []}
    data = body(
        messages=[
            {"role": "user", "content": [uncited, DOCUMENT]},
            {"role": "assistant", "content": [CITED]},
            {"role": "user", "content": "go on"},
        ]
    )
    validate_request(data, anthropic_version=V2026)
