"""What the AI selector may know about a request: a summary, redacted before anything leaves.

Rules (DESIGN.md §6):

- Headers: only ``Content-Type``, ``Accept``, ``Accept-Language``, ``User-Agent`` and
  ``Content-Length`` are kept (an allow-list: ``Authorization``, cookies and every key or token
  header are never sent, whatever their name).
- Body: the text of the request is taken from the body when it was read whole (a streamed body
  is never previewed): for JSON, the ``content`` of chat ``messages`` (OpenAI and Anthropic
  shapes, text parts of multi-part content), ``system``, ``prompt`` and ``input``; otherwise the
  JSON or plain text itself. Values of JSON keys named like a secret (``*key*``, ``*token*``,
  ``*secret*``, ``*password*``, ``authorization``, ``cookie``) are replaced by ``[redacted]``.
- Masked everywhere in the text: e-mail addresses (``[email]``), card-like numbers of 13–19
  digits (``[card]``), bearer tokens, JWTs, ``sk-``-style API keys and opaque strings of 32+
  letters, digits, ``-`` or ``_`` (``[token]``).
- The prompt shows the first ``PREVIEW_CHARS`` (1,000) characters of the masked text; the
  heuristic reads the masked text too (its length counts the whole text).
- ``fingerprint``: a hash of route, method, path, query and the raw body; equal requests share
  one LLM call and one cached decision. It is never sent anywhere.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

SAFE_HEADERS = ("content-type", "accept", "accept-language", "user-agent", "content-length")
PREVIEW_CHARS = 1000
MAX_TEXT_CHARS = 64 * 1024
_SECRET_KEY = re.compile(r"key|token|secret|passw|authorization|cookie|credential", re.I)
_MASKS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]+"), "Bearer [token]"),
    (re.compile(r"\beyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"), "[token]"),
    (re.compile(r"\b(?:sk|pk|rk|ak)[-_][A-Za-z0-9_-]{8,}"), "[token]"),
    (re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+"), "[email]"),
    (re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])"), "[card]"),
    (re.compile(r"(?<![A-Za-z0-9_-])[A-Za-z0-9_-]{32,}(?![A-Za-z0-9_-])"), "[token]"),
)


@dataclass(frozen=True, slots=True)
class RequestSummary:
    """A request as the selector sees it: safe headers and masked text only."""

    method: str
    path: str
    headers: tuple[tuple[str, str], ...]
    text: str
    body_bytes: int
    previewed: bool
    fingerprint: str

    @property
    def preview(self) -> str:
        return self.text[:PREVIEW_CHARS]


def summarize(
    route_id: str,
    method: str,
    path: str,
    query: str,
    headers: Sequence[tuple[str, str]],
    body: bytes | None,
    *,
    declared_bytes: int = 0,
) -> RequestSummary:
    """The summary of one request (``body`` None: not read whole, so not previewed)."""
    safe = tuple((k.lower(), v) for k, v in headers if k.lower() in SAFE_HEADERS)
    text = mask(extract_text(body)) if body else ""
    digest = hashlib.blake2b(digest_size=16)
    for part in (route_id, method, path, query):
        digest.update(part.encode("utf-8", "surrogateescape") + b"\x00")
    digest.update(body or b"")
    return RequestSummary(
        method=method,
        path=path,
        headers=safe,
        text=text,
        body_bytes=len(body) if body is not None else declared_bytes,
        previewed=body is not None,
        fingerprint=digest.hexdigest(),
    )


def mask(text: str) -> str:
    """Mask e-mails, card numbers and token-like strings (rules above)."""
    for pattern, replacement in _MASKS:
        text = pattern.sub(replacement, text)
    return text


def extract_text(body: bytes) -> str:
    """The text a person wrote in the request (rules above), at most ``MAX_TEXT_CHARS``."""
    raw = body[: MAX_TEXT_CHARS * 4].decode("utf-8", "replace")
    try:
        document = json.loads(body)
    except ValueError:
        return raw[:MAX_TEXT_CHARS]
    redacted = _redact_json(document)
    parts: list[str] = []
    if isinstance(redacted, dict):
        for key in ("system", "prompt", "input", "messages"):
            if key in redacted:
                _collect(redacted[key], parts)
    text = "\n".join(p for p in parts if p)
    if not text:
        text = json.dumps(redacted, ensure_ascii=False)
    return text[:MAX_TEXT_CHARS]


def _redact_json(node: Any) -> Any:
    if isinstance(node, dict):
        return {
            key: "[redacted]"
            if isinstance(key, str) and _SECRET_KEY.search(key) and not isinstance(value, dict)
            else _redact_json(value)
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_redact_json(item) for item in node]
    return node


def _collect(node: Any, out: list[str]) -> None:
    """Text of chat content: strings, ``{"content": ...}``, ``{"type": "text", "text": ...}``."""
    if isinstance(node, str):
        out.append(node)
    elif isinstance(node, list):
        for item in node:
            _collect(item, out)
    elif isinstance(node, dict):
        if isinstance(node.get("text"), str):
            out.append(node["text"])
        elif "content" in node:
            _collect(node["content"], out)
