"""The AI backend selector (DESIGN.md §6): decide, bounded, and never on the critical path for long.

For a route with an enabled ``ai_policy``, the pipeline asks :meth:`AiSelector.choose` (modes
``inline`` and ``background``) or :meth:`AiSelector.shadow` (mode ``shadow``) once per request,
for its first attempt, among the candidates of :mod:`kairos_core.selection`. Rules:

- **Strategies.** ``content_analysis`` asks the route's LLM (:mod:`~kairos_core.ai.providers`)
  with the prompt of :mod:`~kairos_core.ai.prompt`; with no LLM configured the offline
  :mod:`~kairos_core.ai.heuristic` is the selector. ``latency_prediction`` and
  ``anomaly_detection`` decide locally (:mod:`~kairos_core.ai.strategies`); for them the mode
  only matters for ``shadow``.
- **Bounded.** ``inline`` waits at most ``timeout_ms`` for the LLM, then falls back
  (``fallback:timeout``); the call itself may go on (up to ``ai.timeout_ms``) and its answer is
  cached for later requests. At most ``max_concurrent_calls`` calls per route run at once; a
  request that would start one more falls back at once (``fallback:busy``). Equal requests
  (same fingerprint) share one call in flight and one cached answer for ``cache_ttl_s``
  (``cache``; 0 disables the cache). A cached answer naming a backend that is no longer a
  candidate is not used.
- **Fallback order**: the heuristic (if it has a preference), then ``fallback_backend_index``
  (if that backend is a candidate), then the balancing strategy. Answers that cannot be used
  (not JSON, index out of range, a backend that is not a candidate) are rejected, logged at
  WARNING and recorded as ``fallback:invalid``; failed calls as ``fallback:error``.
- **Modes.** ``inline``: wait (bounded) and route by the decision. ``background``: route by the
  cache when it has the answer, else by the fallback order at once (``fallback:pending``) while
  the call runs off the request path; later equal requests follow the LLM. ``shadow``: route by
  the balancer; decide off the request path and record whether the two agree.
- Every decision goes to the :class:`~kairos_core.ai.decisions.DecisionLog`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kairos_core.ai import heuristic, strategies
from kairos_core.ai.decisions import Decision, DecisionLog, Source
from kairos_core.ai.prompt import (
    Answer,
    CandidateView,
    InvalidAnswer,
    Prompt,
    build_prompt,
    parse_answer,
)
from kairos_core.ai.providers import LlmClient, LlmError, Resolved, resolve
from kairos_core.ai.request import RequestSummary
from kairos_core.config.models import AiPolicy, Backend, GatewayConfig, Router
from kairos_core.selection import AiChoice, BackendStates, Candidates

log = logging.getLogger("kairos.ai")
CACHE_ENTRIES = 10_000
_Key = tuple[str, str]


@dataclass(frozen=True, slots=True)
class AiRoute:
    """A route's ``ai_policy``, compiled: strategy, mode, and the LLM endpoints resolved."""

    route_id: str
    policy: AiPolicy
    backends: tuple[Backend, ...]
    resolved: Resolved

    @property
    def strategy(self) -> str:
        return self.policy.strategy.kind

    @property
    def mode(self) -> str:
        return self.policy.mode

    @property
    def uses_llm(self) -> bool:
        return self.strategy == "content_analysis" and bool(self.resolved.endpoints)

    @property
    def reads_body(self) -> bool:
        """Whether the request's body is read before choosing (``content_analysis`` only)."""
        return self.strategy == "content_analysis"


def compile_ai(
    route_id: str,
    router: Router,
    config: GatewayConfig,
    environ: Mapping[str, str] | None = None,
) -> AiRoute | None:
    """The route's selector, or None when it has no enabled ``ai_policy``."""
    policy = router.ai_policy
    if policy is None or not policy.enabled:
        return None
    resolved = resolve(config.ai, policy, os.environ if environ is None else environ)
    return AiRoute(route_id, policy, router.effective_backends, resolved)


@dataclass(frozen=True, slots=True)
class Preview:
    """What a dry run shows: the offline pick (heuristic or local strategy) and the prompt."""

    choice: AiChoice | None
    source: Source
    reason: str
    prompt: Prompt | None


class AiSelector:
    """Decisions for every AI route; lives as long as the gateway (caches survive reloads)."""

    def __init__(self, log_: DecisionLog, client: LlmClient | None = None) -> None:
        self.log = log_
        self._client = client
        self._cache: OrderedDict[_Key, tuple[float, Answer]] = OrderedDict()
        self._calls: dict[_Key, asyncio.Task[Answer]] = {}
        self._active: dict[str, int] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def client(self) -> LlmClient:
        if self._client is None:
            self._client = LlmClient()
        return self._client

    # --- the request path ---------------------------------------------------------------------

    async def choose(
        self,
        route: AiRoute,
        summary: RequestSummary,
        found: Candidates,
        states: BackendStates,
        request_id: str | None,
    ) -> tuple[AiChoice | None, Decision]:
        """Modes ``inline`` and ``background``: the choice, and its decision (to finish)."""
        started = time.perf_counter()
        if not route.uses_llm:
            choice, source, reason = _local(route, summary, found, states)
            return choice, self._decision(route, request_id, source, reason, started, choice)
        key = (route.route_id, summary.fingerprint)
        cached = self._cached(key, route, found)
        if cached is not None:
            choice = AiChoice(index=cached.index)
            return choice, self._decision(
                route, request_id, "cache", cached.reason, started, choice
            )
        call = self._calls.get(key) or self._start(route, key, summary, found, states)
        if route.mode == "background" or call is None:
            waiting: Source = "fallback:busy" if call is None else "fallback:pending"
            return self._fallback(route, summary, found, request_id, waiting, "", started)
        try:
            async with asyncio.timeout(route.policy.timeout_ms / 1000):
                answer = await asyncio.shield(call)
        except TimeoutError:
            why = f"no answer within {route.policy.timeout_ms} ms"
            return self._fallback(
                route, summary, found, request_id, "fallback:timeout", why, started
            )
        except InvalidAnswer as exc:
            return self._fallback(
                route, summary, found, request_id, "fallback:invalid", str(exc), started
            )
        except LlmError as exc:
            failed: Source = "fallback:timeout" if exc.kind == "timeout" else "fallback:error"
            return self._fallback(route, summary, found, request_id, failed, exc.message, started)
        if answer.index not in found.indices:
            why = f"the LLM chose backend {answer.index}, which is no longer a candidate"
            log.warning("route %s: %s", route.route_id, why)
            return self._fallback(
                route, summary, found, request_id, "fallback:invalid", why, started
            )
        choice = AiChoice(index=answer.index)
        return choice, self._decision(route, request_id, "llm", answer.reason, started, choice)

    def shadow(
        self,
        route: AiRoute,
        summary: RequestSummary,
        found: Candidates,
        states: BackendStates,
        request_id: str | None,
        routed: int,
    ) -> None:
        """Mode ``shadow``: decide off the request path; record agreement with ``routed``."""
        started = time.perf_counter()
        if not route.uses_llm:
            choice, source, reason = _local(route, summary, found, states)
            self._shadow_record(route, request_id, source, reason, started, choice, found, routed)
            return
        key = (route.route_id, summary.fingerprint)
        cached = self._cached(key, route, found)
        if cached is not None:
            choice = AiChoice(index=cached.index)
            self._shadow_record(
                route, request_id, "cache", cached.reason, started, choice, found, routed
            )
            return
        call = self._calls.get(key) or self._start(route, key, summary, found, states)
        if call is None:
            self._shadow_record(
                route, request_id, "fallback:busy", "", started, None, found, routed
            )
            return
        self._spawn(self._shadow_wait(route, call, request_id, started, found, routed))

    def finish(self, decision: Decision, status: int | None, upstream_s: float | None) -> None:
        """The decision's request ended: join its outcome and publish it."""
        self.log.finish(decision, status, upstream_s)

    # --- the dry run --------------------------------------------------------------------------

    def preview(
        self, route: AiRoute, summary: RequestSummary, found: Candidates, states: BackendStates
    ) -> Preview:
        """What the offline selector would choose now, and the prompt an LLM would get."""
        if route.strategy != "content_analysis":
            choice, source, reason = _local(route, summary, found, states)
            return Preview(choice, source, reason, None)
        choice, reason = _fallback_choice(route, summary, found)
        return Preview(choice, "heuristic", reason, prompt_for(route, summary, found, states))

    async def ask(
        self, route: AiRoute, summary: RequestSummary, found: Candidates, states: BackendStates
    ) -> Answer:
        """One live call, as the gateway would make it (for ``route-test --ai``)."""
        return await self._call(route, None, prompt_for(route, summary, found, states), found)

    async def close(self) -> None:
        tasks = [*self._tasks, *self._calls.values()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        if self._client is not None:
            await self._client.close()

    # --- internals ----------------------------------------------------------------------------

    def _cached(self, key: _Key, route: AiRoute, found: Candidates) -> Answer | None:
        entry = self._cache.get(key)
        if entry is None:
            return None
        expires, answer = entry
        if time.monotonic() >= expires:
            del self._cache[key]
            return None
        return answer if answer.index in found.indices else None

    def _remember(self, key: _Key | None, route: AiRoute, answer: Answer) -> None:
        ttl = route.policy.cache_ttl_s
        if key is None or ttl <= 0:
            return
        self._cache[key] = (time.monotonic() + ttl, answer)
        self._cache.move_to_end(key)
        while len(self._cache) > CACHE_ENTRIES:
            self._cache.popitem(last=False)

    def _start(
        self,
        route: AiRoute,
        key: _Key,
        summary: RequestSummary,
        found: Candidates,
        states: BackendStates,
    ) -> asyncio.Task[Answer] | None:
        """Start the one call for ``key``, unless the route is at ``max_concurrent_calls``."""
        active = self._active.get(route.route_id, 0)
        if active >= route.policy.max_concurrent_calls:
            return None
        self._active[route.route_id] = active + 1
        prompt = prompt_for(route, summary, found, states)
        task = asyncio.create_task(
            self._call(route, key, prompt, found), name=f"ai {route.route_id}"
        )
        self._calls[key] = task

        def done(task: asyncio.Task[Answer]) -> None:
            self._active[route.route_id] -= 1
            if self._calls.get(key) is task:
                del self._calls[key]
            if not task.cancelled():
                task.exception()  # retrieved: a caller that timed out never awaits it

        task.add_done_callback(done)
        return task

    async def _call(
        self, route: AiRoute, key: _Key | None, prompt: Prompt, found: Candidates
    ) -> Answer:
        error: Exception = LlmError("error", "no LLM endpoint")
        for endpoint in route.resolved.endpoints:
            try:
                text = await self.client.complete(endpoint, prompt)
            except LlmError as exc:
                error = exc
                continue
            try:
                answer = parse_answer(text, found.indices, len(route.backends))
            except InvalidAnswer as exc:
                log.warning(
                    "route %s: answer from %s rejected: %s", route.route_id, endpoint.provider, exc
                )
                error = exc
                continue
            self._remember(key, route, answer)
            return answer
        raise error

    def _fallback(
        self,
        route: AiRoute,
        summary: RequestSummary,
        found: Candidates,
        request_id: str | None,
        source: Source,
        why: str,
        started: float,
    ) -> tuple[AiChoice | None, Decision]:
        choice, reason = _fallback_choice(route, summary, found)
        if source == "fallback:pending":
            why = "no answer cached yet; asking the LLM off the request path"
        elif source == "fallback:busy":
            why = f"{route.policy.max_concurrent_calls} LLM calls already in flight"
        return choice, self._decision(
            route, request_id, source, f"{why}; {reason}", started, choice
        )

    def _decision(
        self,
        route: AiRoute,
        request_id: str | None,
        source: Source,
        reason: str,
        started: float,
        choice: AiChoice | None,
    ) -> Decision:
        return Decision(
            route=route.route_id,
            request_id=request_id,
            strategy=route.strategy,
            mode=route.mode,
            source=source,
            reason=reason,
            latency_ms=round((time.perf_counter() - started) * 1000, 3),
            index=choice.index if choice is not None else None,
        )

    async def _shadow_wait(
        self,
        route: AiRoute,
        call: asyncio.Task[Answer],
        request_id: str | None,
        started: float,
        found: Candidates,
        routed: int,
    ) -> None:
        try:
            answer = await asyncio.shield(call)
        except InvalidAnswer as exc:
            self._shadow_record(
                route, request_id, "fallback:invalid", str(exc), started, None, found, routed
            )
        except LlmError as exc:
            source: Source = "fallback:timeout" if exc.kind == "timeout" else "fallback:error"
            self._shadow_record(
                route, request_id, source, exc.message, started, None, found, routed
            )
        else:
            choice = AiChoice(index=answer.index)
            self._shadow_record(
                route, request_id, "llm", answer.reason, started, choice, found, routed
            )

    def _shadow_record(
        self,
        route: AiRoute,
        request_id: str | None,
        source: Source,
        reason: str,
        started: float,
        choice: AiChoice | None,
        found: Candidates,
        routed: int,
    ) -> None:
        decision = self._decision(route, request_id, source, reason, started, choice)
        decision.shadow = True
        decision.routed_backend = found.backends[routed].key
        if choice is not None and choice.index is not None:
            decision.backend = found.backends[choice.index].key
            decision.agrees = choice.index == routed
        elif choice is not None and choice.among is not None:
            decision.agrees = routed in choice.among
        self.log.finish(decision, None, None)

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def prompt_for(
    route: AiRoute, summary: RequestSummary, found: Candidates, states: BackendStates
) -> Prompt:
    views = [
        CandidateView(
            index=i,
            backend=found.backends[i],
            circuit=states.circuit(found.backends[i].key),
            stats=states.stats(found.backends[i].key),
            in_flight=states.in_flight_count(found.backends[i].key),
        )
        for i in found.indices
    ]
    return build_prompt(route.route_id, summary, views)


def _fallback_choice(
    route: AiRoute, summary: RequestSummary, found: Candidates
) -> tuple[AiChoice | None, str]:
    """Heuristic → ``fallback_backend_index`` → balancer; the choice and which step made it."""
    pick = heuristic.choose(
        summary.text,
        [(i, found.backends[i]) for i in found.indices],
        chars=None if summary.previewed else summary.body_bytes,
    )
    if pick.index is not None or pick.among is not None:
        return AiChoice(pick.index, pick.among), f"heuristic: {pick.reason}"
    index = route.policy.fallback_backend_index
    if index is not None and index in found.indices:
        return AiChoice(index=index), f"fallback_backend_index {index} ({pick.reason})"
    return None, f"balancing strategy ({pick.reason})"


def _local(
    route: AiRoute, summary: RequestSummary, found: Candidates, states: BackendStates
) -> tuple[AiChoice | None, Source, str]:
    """A decision made without an LLM: the heuristic, or a local strategy."""
    if route.strategy == "content_analysis":
        choice, reason = _fallback_choice(route, summary, found)
        return choice, "heuristic", f"{reason} [{route.resolved.note}]"
    observed = [
        (i, states.stats(found.backends[i].key), states.in_flight_count(found.backends[i].key))
        for i in found.indices
    ]
    if route.strategy == "latency_prediction":
        pick = strategies.latency_prediction(observed)
        source: Source = "latency_prediction"
    else:
        pick = strategies.anomaly_detection(observed)
        source = "anomaly_detection"
    if pick.index is None and pick.among is None:
        return None, source, pick.reason
    return AiChoice(pick.index, pick.among), source, pick.reason
