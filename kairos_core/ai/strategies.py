"""The two selector strategies that need no LLM: ``latency_prediction`` and ``anomaly_detection``.

Both read each candidate's recent behaviour (:class:`~kairos_core.selection.BackendStats`: EWMAs
of upstream time and failures, fed by every attempt) and never call out. Rules:

- **Probing**: a candidate with no attempt yet, or none in the last ``STALE_S`` (10) seconds,
  is *stale*. A stale candidate with nothing in flight is chosen first (lowest index), so an
  estimate never stays stale: a backend that was slow or failing gets one request to show it
  recovered. While that probe runs, the stale candidate is left out of the comparison below
  (unless every candidate is stale).
- ``latency_prediction``: each candidate's predicted cost is its recent latency × (in-flight
  requests + 1); the lowest cost wins, equal lowest costs go to the balancer. Traffic moves away
  from a backend as it slows down or queues up, and comes back as it recovers.
- ``anomaly_detection``: a candidate is an outlier when its recent error rate is 0.25 above the
  norm, or its recent latency is more than 3× the norm and 20 ms above it. With 3 or more
  candidates the norm is the median of its siblings; with fewer, its own long-run baseline (and
  it needs ``MIN_SAMPLES`` (5) attempts). Outliers are avoided: the balancer picks among the
  others. When every candidate is an outlier, none is avoided.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from kairos_core.selection import BackendStats

STALE_S = 10.0
MIN_SAMPLES = 5
ERROR_JUMP = 0.25
LATENCY_FACTOR = 3.0
LATENCY_MARGIN_MS = 20.0


@dataclass(frozen=True, slots=True)
class StrategyPick:
    """One candidate, a narrower set, or no preference (``index`` and ``among`` None)."""

    index: int | None
    among: tuple[int, ...] | None
    reason: str


Observed = Sequence[tuple[int, BackendStats, int]]
"""Candidates as (index, recent stats, in-flight count)."""


def is_stale(stats: BackendStats) -> bool:
    return stats.samples == 0 or stats.age_s is None or stats.age_s >= STALE_S


def probe(candidates: Observed) -> tuple[StrategyPick | None, Observed]:
    """A stale candidate to probe now, or the candidates to compare (fresh ones if any)."""
    for index, stats, in_flight in candidates:
        if is_stale(stats) and in_flight == 0:
            return StrategyPick(index, None, f"backend {index}: no recent attempt, probing it"), ()
    fresh = [c for c in candidates if not is_stale(c[1])]
    return None, fresh or candidates


def latency_prediction(candidates: Observed) -> StrategyPick:
    probing, candidates = probe(candidates)
    if probing is not None:
        return probing
    costs = [((s.latency_ms or 0.0) * (in_flight + 1), index) for index, s, in_flight in candidates]
    best = min(cost for cost, _ in costs)
    top = tuple(index for cost, index in costs if cost == best)
    shown = ", ".join(f"{i}: {c:.1f}" for c, i in costs)
    if len(top) == 1:
        return StrategyPick(top[0], None, f"lowest predicted latency ms×(in-flight+1) ({shown})")
    return StrategyPick(None, top, f"equal predicted latency ({shown})")


def anomaly_detection(candidates: Observed) -> StrategyPick:
    probing, compared = probe(candidates)
    if probing is not None:
        return probing
    if len(compared) < len(candidates):
        keep = tuple(index for index, _, _ in compared)
        return StrategyPick(None, keep, "waiting for a probe of the other candidates")
    candidates = compared
    outliers = [
        (index, why)
        for index, stats, _ in candidates
        if (why := _outlier(stats, [s for i, s, _ in candidates if i != index]))
    ]
    if not outliers or len(outliers) == len(candidates):
        note = "no outlier" if not outliers else "every candidate is an outlier; none avoided"
        return StrategyPick(None, None, note)
    avoided = {index for index, _ in outliers}
    keep = tuple(index for index, _, _ in candidates if index not in avoided)
    reasons = "; ".join(f"backend {index}: {why}" for index, why in outliers)
    return StrategyPick(keep[0] if len(keep) == 1 else None, keep, f"avoiding {reasons}")


def _outlier(stats: BackendStats, siblings: Sequence[BackendStats]) -> str | None:
    latency = stats.latency_ms or 0.0
    if len(siblings) >= 2:
        error_norm = statistics.median(s.error_rate for s in siblings)
        latency_norm = statistics.median(s.latency_ms or 0.0 for s in siblings)
        against = "siblings"
    else:
        if stats.samples < MIN_SAMPLES:
            return None
        error_norm = stats.baseline_error_rate
        latency_norm = stats.baseline_latency_ms or 0.0
        against = "its baseline"
    if stats.error_rate >= error_norm + ERROR_JUMP:
        return f"error rate {stats.error_rate:.0%} vs {error_norm:.0%} ({against})"
    if latency > LATENCY_FACTOR * latency_norm and latency > latency_norm + LATENCY_MARGIN_MS:
        return f"latency {latency:.0f} ms vs {latency_norm:.0f} ms ({against})"
    return None
