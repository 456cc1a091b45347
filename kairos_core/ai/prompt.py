"""The prompt sent to the LLM, and the strict reading of its answer.

The prompt (DESIGN.md §6) is a fixed system message and one user message holding the request
summary (method, path, safe headers, the masked body preview; see :mod:`kairos_core.ai.request`)
and each candidate: its index in the route's ``backends``, description, tags and live state
(breaker, recent latency, in-flight). Only candidates are listed; backends whose breaker is open
or whose health check fails are not offered.

The answer must be one JSON object ``{"index": N, "reason": "..."}`` (a Markdown code fence
around it is tolerated, nothing else): ``index`` an integer naming a listed candidate, ``reason``
an optional string (cut to 200 characters). Anything else (not JSON, a list, a string or float
index, an index out of range or naming a backend that is not a candidate) is
:class:`InvalidAnswer`, and the selector falls back (``fallback:invalid``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from kairos_core.ai.request import RequestSummary
from kairos_core.config.models import Backend
from kairos_core.selection import BackendStats

SYSTEM_PROMPT = (
    "You are the routing brain of an API gateway. Given one incoming request and the backends "
    "that can serve it now, choose the backend best suited to the request (by what each "
    "backend is for, then by its live state). Answer with a single JSON object and nothing "
    'else: {"index": <the chosen candidate\'s index>, "reason": "<one short sentence>"}.'
)
MAX_REASON_CHARS = 200


@dataclass(frozen=True, slots=True)
class CandidateView:
    """One candidate as the prompt shows it."""

    index: int
    backend: Backend
    circuit: str
    stats: BackendStats
    in_flight: int


@dataclass(frozen=True, slots=True)
class Prompt:
    system: str
    user: str


@dataclass(frozen=True, slots=True)
class Answer:
    index: int
    reason: str


class InvalidAnswer(ValueError):
    """The LLM's answer cannot be used; the message says why (logged and recorded)."""


def build_prompt(
    route_id: str, summary: RequestSummary, candidates: Sequence[CandidateView]
) -> Prompt:
    lines = [f"Route: {route_id}", "Request:", f"  {summary.method} {summary.path}"]
    for name, value in summary.headers:
        lines.append(f"  {name}: {value}")
    if summary.previewed:
        preview = summary.preview
        cut = " (cut)" if len(summary.text) > len(preview) else ""
        lines.append(f"  body ({summary.body_bytes} bytes, masked{cut}):")
        lines.extend(f"    {line}" for line in (preview or "(empty)").splitlines() or [""])
    elif summary.body_bytes:
        lines.append(f"  body: {summary.body_bytes} bytes, streamed (not shown)")
    lines.append("Candidates:")
    for view in candidates:
        backend = view.backend
        latency = view.stats.latency_ms
        state = (
            f"breaker {view.circuit}, "
            + (f"recent latency {latency:.0f} ms" if latency is not None else "no latency yet")
            + f", {view.in_flight} in flight"
        )
        lines.append(
            f"  - index {view.index}: "
            f"description: {json.dumps(backend.description or '')}; "
            f"tags: [{', '.join(backend.tags)}]; {state}"
        )
    lines.append('Answer with {"index": N, "reason": "..."} where N is one of the indices above.')
    return Prompt(SYSTEM_PROMPT, "\n".join(lines))


def parse_answer(text: str, candidates: Sequence[int], backend_count: int) -> Answer:
    """The strict reading described above."""
    body = text.strip()
    if body.startswith("```"):
        body = body.strip("`").strip()
        if body.lower().startswith("json"):
            body = body[4:].strip()
    try:
        document = json.loads(body)
    except ValueError as exc:
        raise InvalidAnswer(f"not JSON: {text[:80]!r}") from exc
    if not isinstance(document, dict):
        raise InvalidAnswer(f"not a JSON object: {text[:80]!r}")
    index = document.get("index")
    if not isinstance(index, int) or isinstance(index, bool):
        raise InvalidAnswer(f"index is not an integer: {index!r}")
    if not 0 <= index < backend_count:
        raise InvalidAnswer(f"index {index} is out of range (the route has {backend_count})")
    if index not in candidates:
        raise InvalidAnswer(f"index {index} names a backend that is not a candidate now")
    reason = document.get("reason", "")
    if not isinstance(reason, str):
        reason = ""
    return Answer(index, reason[:MAX_REASON_CHARS])
