"""Deterministic Messages: the same request (and seed) always gets the same answer and usage."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from msgq.dev.simulator.cache import CacheUse
from msgq.dev.simulator.tool_use import chosen_tool, tool_use_block
from msgq.dev.simulator.vision import look_at
from schemas.tokens import UNFETCHED_SIZE_PX, image_tokens, text_tokens

WORDS = [
    "the",
    "queue",
    "hums",
    "along",
    "while",
    "patient",
    "workers",
    "carry",
    "each",
    "request",
    "to",
    "the",
    "model",
    "and",
    "back",
    "with",
    "results",
    "stored",
    "safely",
    "under",
    "their",
    "job",
    "ids",
    "for",
    "anyone",
    "holding",
    "them",
    "to",
    "read",
]


def _texts(content: Any) -> list[str]:
    if isinstance(content, str):
        return [content]
    out: list[str] = []
    for block in content or []:
        if block.get("type") == "text":
            out.append(block["text"])
        elif block.get("type") in ("tool_use", "tool_result", "document"):
            out.append(orjson.dumps(block).decode()[:20_000])
    return out


def _images(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return []
    found = []
    for block in content or []:
        if block.get("type") == "image":
            found.append(block)
        elif block.get("type") == "tool_result" and isinstance(block.get("content"), list):
            found.extend(b for b in block["content"] if b.get("type") == "image")
    return found


def count_input_tokens(body: dict[str, Any]) -> int:
    model = str(body.get("model", ""))
    system = body.get("system")
    total = sum(text_tokens(t) for t in _texts(system)) if system else 0
    for message in body.get("messages", []):
        total += sum(text_tokens(t) for t in _texts(message.get("content")))
        for image in _images(message.get("content")):
            total += image_tokens(*_image_size(image), model)
    if body.get("tools"):
        total += text_tokens(orjson.dumps(body["tools"]).decode())
    return max(1, total)


def item_tokens(item: Any, model: str, is_tool: bool = False) -> int:
    """One prompt item's tokens, counted as `count_input_tokens` counts the whole prompt."""
    if is_tool:
        return text_tokens(orjson.dumps(item).decode())
    content = item if isinstance(item, str) else [item] if isinstance(item, dict) else []
    tokens = sum(text_tokens(t) for t in _texts(content))
    return tokens + sum(image_tokens(*_image_size(i), model) for i in _images(content))


def _image_size(block: dict[str, Any]) -> tuple[int, int]:
    source = block.get("source", {})
    if source.get("type") == "base64":
        seen = look_at(source.get("data", ""))
        if seen is not None:
            return seen.width, seen.height
    return UNFETCHED_SIZE_PX


def _full_reply(body: dict[str, Any], seed: int) -> str:
    """What the model 'would say' with no limits: image descriptions, else an echo plus filler."""
    last = body["messages"][-1]
    asked = {k: v for k, v in body.items() if k != "stream"}  # streamed or not: the same answer
    digest = hashlib.sha256(orjson.dumps([seed, asked], option=orjson.OPT_SORT_KEYS)).digest()
    filler = " ".join(WORDS[(digest[i] + i) % len(WORDS)] for i in range(12))
    if last.get("role") == "assistant":
        return f" {digest[0] % 90 + 10}, and {filler}."
    descriptions = []
    for image in _images(last.get("content")):
        source = image.get("source", {})
        seen = look_at(source.get("data", "")) if source.get("type") == "base64" else None
        descriptions.append(seen.describe() if seen else "An image the simulator did not fetch.")
    if descriptions:
        return " ".join(descriptions)
    prompt = " ".join(_texts(last.get("content"))).strip().replace("\n", " ")
    return f"Simulated reply to: {prompt[:80]!r}. Also, {filler}."


def long_text(tokens: int, seed: int) -> str:
    """Exactly `tokens` tokens (4 characters each) of deterministic filler."""
    start = seed % len(WORDS)
    sentence = " ".join(WORDS[start:] + WORDS[:start]) + ". "
    return (sentence * (tokens * 4 // len(sentence) + 1))[: tokens * 4]


def build_message(
    body: dict[str, Any],
    *,
    seed: int,
    request_id: str,
    output_tokens: int | None = None,
    cache: CacheUse | None = None,
) -> dict[str, Any]:
    """A Message as the API would send it, honouring max_tokens and stop_sequences.

    With `output_tokens` N the reply is min(N, max_tokens) tokens of filler: `end_turn` when N
    is below max_tokens, else `max_tokens` (long generations on demand).
    """
    text, stop_reason, stop_sequence = _full_reply(body, seed), "end_turn", None
    for sequence in body.get("stop_sequences") or []:
        index = text.find(sequence)
        if sequence and index >= 0:
            text, stop_reason, stop_sequence = text[:index], "stop_sequence", sequence
            break
    max_tokens = int(body["max_tokens"])
    if output_tokens is not None:
        text = long_text(min(output_tokens, max_tokens), seed)
        stop_reason, stop_sequence = "end_turn", None
        if output_tokens >= max_tokens:
            stop_reason = "max_tokens"
    elif text_tokens(text) > max_tokens:
        text, stop_reason, stop_sequence = text[: max_tokens * 4], "max_tokens", None
    content: list[dict[str, Any]] = [{"type": "text", "text": text}] if text or max_tokens else []
    tool = chosen_tool(body, seed) if max_tokens else None
    if tool is not None:  # tool_choice any/tool: the model must call one, and says nothing else
        call = tool_use_block(tool, body, seed)
        content, stop_reason, stop_sequence = [call], "tool_use", None
        text = orjson.dumps(call["input"]).decode()
    digest = hashlib.sha256(request_id.encode()).hexdigest()[:24]
    return {
        "id": f"msg_sim{digest}",
        "type": "message",
        "role": "assistant",
        "model": body["model"],
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
        "usage": {
            **input_usage(body, cache),
            "output_tokens": max(1, text_tokens(text)) if max_tokens else 0,
            "service_tier": "standard",
        },
    }


def input_usage(body: dict[str, Any], cache: CacheUse | None) -> dict[str, Any]:
    """The input side of `usage`: total = input + cache writes + cache reads."""
    total = count_input_tokens(body)
    if cache is None or not cache.keys:
        zero = {"cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
        return {"input_tokens": total, **zero}
    return {
        "input_tokens": max(0, total - cache.read - cache.write),
        "cache_creation_input_tokens": cache.write,
        "cache_read_input_tokens": cache.read,
        "cache_creation": {
            "ephemeral_5m_input_tokens": cache.write - cache.write_1h,
            "ephemeral_1h_input_tokens": cache.write_1h,
        },
    }


def reported_output_tokens(message: Any) -> int:
    """The output tokens a (possibly scripted, possibly bogus) answer claims."""
    if not isinstance(message, dict) or not isinstance(message.get("usage"), dict):
        return 0
    return int(message["usage"].get("output_tokens", 0))
