"""Microbenchmarks of the hot decisions, in process (not part of the test run).

    .venv/bin/python benchmarks/micro.py

Each figure is the median of 5 runs of a timed loop (``timeit``), in microseconds per call:

- route lookup with 10, 1,000 and 10,000 routes (a parameterised path in the middle of the set);
- a rate-limit check (in-memory fixed window, and token bucket);
- a breaker admission and its success report;
- selection (candidates + pick) on a two-backend route;
- the offline AI heuristic on a short question and on 16 KiB of text;
- compile of a 1,000-route config and the swap of the new state (milliseconds).
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import json
import statistics
import sys
import time
import timeit
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kairos_core.ai import heuristic  # noqa: E402
from kairos_core.config import parse_config  # noqa: E402
from kairos_core.config.models import Backend, RateLimitConfig  # noqa: E402
from kairos_core.ratelimit import LimitKey, RateLimiter  # noqa: E402
from kairos_core.selection import find_candidates, pick  # noqa: E402
from kairos_core.state import compile_state  # noqa: E402


def config(routes: int) -> dict[str, Any]:
    return {
        "routers": [
            {
                "name": f"r{i}",
                "external_path": f"/svc{i}/items/{{id}}",
                "internal_path": "/items/{id}",
                "methods": ["GET"],
                "backends": [
                    {"host": "http://10.0.0.1", "port": 8000 + i % 100},
                    {"host": "http://10.0.0.2", "port": 8000 + i % 100},
                ],
            }
            for i in range(routes)
        ]
    }


def per_call_us(statement: Any, number: int) -> float:
    runs = timeit.repeat(statement, number=number, repeat=5)
    return statistics.median(runs) / number * 1e6


def main() -> None:
    gc.set_threshold(50_000, 20, 20)  # as the gateway runs
    rows: list[tuple[str, float, str]] = []
    for routes in (10, 1_000, 10_000):
        state = compile_state(parse_config(json.dumps(config(routes)), environ={}))
        path = f"/svc{routes // 2}/items/42"
        ids = itertools.count()
        prefix = f"/svc{routes // 2}/items/"
        rows.append(
            (
                f"route lookup, {routes:,} routes, a new path each time",
                per_call_us(
                    lambda state=state, ids=ids, prefix=prefix: state.table.lookup(
                        "GET", f"{prefix}{next(ids)}"
                    ),
                    20_000,
                ),
                "µs",
            )
        )
        rows.append(
            (
                f"route lookup, {routes:,} routes, a repeated path",
                per_call_us(lambda state=state, path=path: state.table.lookup("GET", path), 20_000),
                "µs",
            )
        )

    limiter = RateLimiter()
    fixed = RateLimitConfig(requests_per_window=10**9, window_duration=60)
    bucket = RateLimitConfig(
        requests_per_window=10**9, window_duration=60, window_type="TokenBucket"
    )
    keys = (LimitKey("PerIP", "kairos:global:ip=192.0.2.1"),)
    loop = asyncio.new_event_loop()

    async def checks(policy: RateLimitConfig, count: int) -> None:
        for _ in range(count):
            await limiter.check(policy, keys)

    def per_check_us(policy: RateLimitConfig, count: int = 20_000) -> float:
        """Awaited from one coroutine, as the pipeline does (no event loop entry per call)."""
        runs = []
        for _ in range(5):
            started = time.perf_counter()
            loop.run_until_complete(checks(policy, count))
            runs.append((time.perf_counter() - started) / count * 1e6)
        return statistics.median(runs)

    for name, policy in (("fixed window", fixed), ("token bucket", bucket)):
        rows.append((f"rate-limit check, {name}", per_check_us(policy), "µs"))

    state = compile_state(parse_config(json.dumps(config(10)), environ={}))
    shared = state.shared
    route = state.routes["r1"]
    breaker = shared.breakers.get(route.backends[0].key)
    assert breaker is not None

    def admit() -> None:
        trial = breaker.admit()
        assert trial is not None
        trial.success()

    rows.append(("breaker admit + success", per_call_us(admit, 50_000), "µs"))

    def select() -> None:
        found = find_candidates(route.backends, route.fallback, shared)
        assert not isinstance(found, Exception)
        pick(found, route.balancer, client_key="192.0.2.1")

    rows.append(("selection (candidates + pick), 2 backends", per_call_us(select, 50_000), "µs"))

    tiers = [
        (0, Backend(host="http://a", port=1, tags=("instant",))),
        (1, Backend(host="http://b", port=2, tags=("thinking",))),
    ]
    quick = "What's the capital of France? Quick answer."
    long_text = ("Explain step by step why this proof works and compare it with induction. " * 250)[
        : 16 * 1024
    ]
    rows.append(
        (
            "AI heuristic, short question",
            per_call_us(lambda: heuristic.choose(quick, tiers), 20_000),
            "µs",
        )
    )
    rows.append(
        (
            "AI heuristic, 16 KiB of text",
            per_call_us(lambda: heuristic.choose(long_text, tiers), 500),
            "µs",
        )
    )

    document = json.dumps(config(1_000))
    loaded = parse_config(document, environ={})
    started = time.perf_counter()
    parse_config(document, environ={})
    rows.append(("validate 1,000 routes", (time.perf_counter() - started) * 1000, "ms"))
    compile_times = []
    for _ in range(5):
        started = time.perf_counter()
        compile_state(loaded, shared)
        compile_times.append((time.perf_counter() - started) * 1000)
    rows.append(
        (
            "compile + swap 1,000 routes (state built, breakers reconfigured)",
            statistics.median(compile_times),
            "ms",
        )
    )

    for name in ("bare", "full"):
        rows.append((f"pipeline, {name} route, in-memory upstream", pipeline_us(name), "CPU µs"))

    width = max(len(name) for name, _, _ in rows)
    print(f"Kairos microbenchmarks (median of 5; {sys.version.split()[0]})")
    for name, value, unit in rows:
        print(f"{name:{width}s} {value:10.2f} {unit}")


def pipeline_us(route_name: str, requests: int = 20_000) -> float:
    """CPU µs per request through ``Pipeline.handle`` on an in-memory upstream (no sockets),
    including the record (metrics observe, not the access log)."""
    from kairos_core.http import ProxyRequest
    from kairos_core.metrics import Metrics
    from kairos_core.pipeline import Pipeline
    from tests.support.memory import MemoryUpstream, Reply

    secret = "micro-benchmark-secret-0123456789abcdef"
    document = {
        "jwt": {"secret": secret},
        "routers": [
            {
                "name": "bare",
                "external_path": "/bare",
                "internal_path": "/",
                "methods": ["GET"],
                "backends": [{"host": "http://10.0.0.1", "port": 8000}],
            },
            {
                "name": "full",
                "external_path": "/full/{id}",
                "internal_path": "/{id}",
                "methods": ["GET"],
                "auth_required": True,
                "backends": [{"host": "http://10.0.0.1", "port": 8000}],
                "retry": {"max_retries": 2},
                "rate_limit": {"requests_per_window": 10**9, "window_duration": 60},
                "request_transformation": {
                    "headers": [{"action": "set", "name": "X-Bench", "value": "1"}]
                },
                "response_transformation": {"headers": [{"action": "remove", "name": "Server"}]},
            },
        ],
    }
    import jwt

    token = jwt.encode({"sub": "bench"}, secret, algorithm="HS256")
    state = compile_state(parse_config(json.dumps(document), environ={}))
    upstream = MemoryUpstream(lambda call: Reply(200, [("Content-Type", "text/plain")], b"ok"))
    metrics = Metrics("bench")
    sink = (lambda r: metrics.observe(r.sample())) if route_name != "nometrics" else None
    pipeline = Pipeline(state, upstream, on_record=sink)
    path = "/full/7" if route_name == "full" else "/bare"
    headers = [
        ("Host", "gw.test"),
        ("User-Agent", "wrk"),
        ("Accept", "*/*"),
    ]
    if route_name == "full":
        headers.append(("Authorization", f"Bearer {token}"))

    async def run() -> float:
        started = time.process_time()
        for _ in range(requests):
            response = await pipeline.handle(ProxyRequest("GET", path, "", headers, "192.0.2.1"))
            await response.close()
            upstream.calls.clear()
        return (time.process_time() - started) / requests * 1e6

    return asyncio.run(run())


if __name__ == "__main__":
    main()
