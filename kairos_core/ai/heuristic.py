"""The offline selector: a deterministic rule scorer, no network, well under a millisecond.

It reads the request's masked text (:mod:`kairos_core.ai.request`) and each candidate backend's
``description`` and ``tags``, and scores every candidate. Rules:

- **What the request needs.** Complexity starts at 0 and is clamped to [0, 1]: +0.5 for 4,000+
  characters of text (+0.25 for 1,000+; -0.15 under 200), +0.25 per distinct reasoning marker
  (``explain``, ``step by step``, ``why``, ``prove``, ``analyze``, ``compare``, ...; at most
  +0.75), +0.2 when the text looks like code (fences, ``def``, ``class``, ``function``,
  ``import``, ``SELECT``, tracebacks), -0.3 per quick-answer marker (``quickly``, ``briefly``,
  ``tl;dr``, ``yes or no``, ``one word``, ...). A request is **deep** at complexity 0.5 or more,
  else **quick**; it **wants code** when it looks like code.
- **What a backend is for**, from its tags (exact, case-insensitive) and the words of its
  description: *quick* (``instant``, ``fast``, ``quick``, ``cheap``, ``small``, ``mini``,
  ``lite``, ``flash``, ``haiku``, ``simple``), *deep* (``thinking``, ``reasoning``, ``deep``,
  ``complex``, ``large``, ``smart``, ``pro``, ``opus``, ``analysis``), *code* (``code``,
  ``coding``, ``coder``, ``codex``, ``programming``).
- **Score**: a deep request gives deep backends +2 and quick ones -1; a quick request the
  reverse; wanting code gives code backends +1.5. The single best score wins. Several equal
  best scores narrow the choice to them (the balancer picks among them); when every candidate
  scores the same the heuristic has no opinion.

Tags ``instant`` and ``thinking`` give the two-tier routing of an OpenClaw-style gateway: quick
questions to the instant tier, long or reasoning-heavy ones to the thinking tier.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from kairos_core.config.models import Backend

QUICK_WORDS = frozenset(
    {"instant", "fast", "quick", "cheap", "small", "mini", "lite", "flash", "haiku", "simple"}
)
DEEP_WORDS = frozenset(
    {"thinking", "reasoning", "reasoner", "deep", "complex", "large", "smart", "pro", "opus"}
    | {"analysis"}
)
CODE_WORDS = frozenset({"code", "coding", "coder", "codex", "programming"})
REASONING_MARKERS = (
    "step by step",
    "explain",
    "why",
    "prove",
    "analyze",
    "analyse",
    "compare",
    "trade-off",
    "tradeoff",
    "derive",
    "evaluate",
    "reason",
    "in detail",
    "pros and cons",
    "design",
    "plan",
)
QUICK_MARKERS = (
    "quick",
    "briefly",
    "short answer",
    "tl;dr",
    "tldr",
    "one word",
    "yes or no",
    "in one sentence",
    "just tell me",
)
_CODE_LINE = re.compile(
    r"^[ \t]*(?:def|class|import|from \S+ import|#include|function|const|let|var|public|fn)\b"
    r"|;[ \t]*$",
    re.M,
)
_SQL = re.compile(r"\bselect\b[^;]{0,200}?\bfrom\b")
_CODE_MARKS = ("```", "traceback (most recent call last)", "=>")
_REASONING = re.compile(r"\b(?:" + "|".join(re.escape(m) for m in REASONING_MARKERS) + ")")
_WORD = re.compile(r"[a-z0-9]+")
SCAN_CHARS = 4 * 1024
"""Markers are looked for in the first and the last 4 KiB of text (a long prompt's question is
usually at one end); the length counts all of it."""


@dataclass(frozen=True, slots=True)
class Needs:
    """What one request needs, and why (for the decision's reason)."""

    complexity: float
    deep: bool
    code: bool
    chars: int
    markers: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Profile:
    """What one backend is for."""

    quick: bool
    deep: bool
    code: bool

    @property
    def known(self) -> bool:
        return self.quick or self.deep or self.code


@dataclass(frozen=True, slots=True)
class HeuristicPick:
    """One candidate (``index``), several equally good ones (``among``), or no opinion."""

    index: int | None
    among: tuple[int, ...] | None
    reason: str


def needs(text: str, chars: int | None = None) -> Needs:
    """``chars``: the request's size when ``text`` is not all of it (a streamed body)."""
    chars = max(len(text), chars or 0)
    if len(text) > 2 * SCAN_CHARS:
        text = f"{text[:SCAN_CHARS]}\n{text[-SCAN_CHARS:]}"
    lower = text.lower()
    complexity = 0.5 if chars >= 4000 else 0.25 if chars >= 1000 else -0.15 if chars < 200 else 0
    reasoning = tuple(m for m in REASONING_MARKERS if m in lower)
    quick = tuple(m for m in QUICK_MARKERS if m in lower)
    code = (
        any(mark in lower for mark in _CODE_MARKS)
        or _CODE_LINE.search(text) is not None
        or ("select" in lower and _SQL.search(lower) is not None)
    )
    complexity += min(0.25 * len(reasoning), 0.75) + (0.2 if code else 0.0) - 0.3 * len(quick)
    complexity = min(max(complexity, 0.0), 1.0)
    return Needs(complexity, complexity >= 0.5, code, chars, reasoning + quick)


def profile(backend: Backend) -> Profile:
    words = {tag.lower() for tag in backend.tags}
    words.update(_WORD.findall((backend.description or "").lower()))
    return Profile(
        quick=bool(words & QUICK_WORDS),
        deep=bool(words & DEEP_WORDS),
        code=bool(words & CODE_WORDS),
    )


def score(need: Needs, backend: Profile) -> float:
    total = 0.0
    if backend.deep:
        total += 2.0 if need.deep else -1.0
    if backend.quick:
        total += -1.0 if need.deep else 2.0
    if backend.code and need.code:
        total += 1.5
    return total


def choose(
    text: str, candidates: Sequence[tuple[int, Backend]], *, chars: int | None = None
) -> HeuristicPick:
    """Score ``candidates`` (index, backend) against the request ``text`` (rules above)."""
    need = needs(text, chars)
    scored = [(score(need, profile(backend)), index) for index, backend in candidates]
    if not scored:
        return HeuristicPick(None, None, "no candidate")
    best = max(s for s, _ in scored)
    top = tuple(index for s, index in scored if s == best)
    tier = "deep" if need.deep else "quick"
    why = f"{need.chars} chars, {tier} request" + (", looks like code" if need.code else "")
    if need.markers:
        why += f" (markers: {', '.join(need.markers[:4])})"
    if len(top) == len(scored):
        return HeuristicPick(None, None, f"{why}; every candidate fits equally")
    if len(top) == 1:
        chosen = dict((index, backend) for index, backend in candidates)[top[0]]
        label = ", ".join(chosen.tags) or chosen.description or chosen.key
        return HeuristicPick(top[0], None, f"{why} → backend {top[0]} ({label})")
    return HeuristicPick(None, top, f"{why} → backends {', '.join(map(str, top))}")
