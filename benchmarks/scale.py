"""Scale and stability sections of the harness: idle connections, and config swaps under load.

Each starts its own gateway in front of the harness's backend, so its RSS and its latency are
its own, and stops it at the end.

Idle connections (``measure_idle_connections``): a gateway with one bare route and a 600 s
keep-alive timeout. A small open-loop load (``rate`` req/s on 8 connections) is measured alone;
then N connections are opened, each sends one request and reads its answer, and all stay open
and silent (idle keep-alive connections, as browsers and pools leave them); the gateway's RSS
and open fds are read, its CPU over 5 quiet seconds, and the same small load is measured beside
them. At the end a sample of the idle connections sends one more request each (they must still
be served), all are closed, and RSS and fds are read once more.

Config swaps (``measure_config_swaps``): a gateway with the bare route and ``routes``
parameterised routes under ``/a{i}/items/{id}``. An open-loop load on the bare route is measured
alone, then again while N ``PUT /api/config`` alternate between that config and one with the
routes under ``/b{i}/...``. After each PUT, ``/b0/items/1`` (or ``/a0``) must answer 200 and the
other prefix 404: the swap is live. Every answer of the bare route other than 2xx, every broken
connection and every unanswered request counts as failed.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from benchmarks import openloop, servers
from benchmarks.procstat import group_cpu_seconds, open_fds, rss_mb

SMALL_LOAD_CONNECTIONS = 8
SMALL_LOAD_S = 8.0
OPEN_CONCURRENCY = 256
PROBE_SAMPLE = 200
QUIET_CPU_S = 5.0
SWAP_INTERVAL_S = 0.25

Log = Callable[[str], None]


@dataclass
class LoadFigures:
    """An open-loop load's outcome, and the gateway's CPU per request meanwhile."""

    rate: float
    achieved_rps: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    failed: int
    statuses: dict[str, int]
    gateway_cpu_us_per_request: float

    @classmethod
    def of(cls, report: openloop.Report, cpu_s: float) -> LoadFigures:
        sent = report.rate * (report.warmup_s + report.measured_window_s)
        bad = sum(n for code, n in report.statuses.items() if not code.startswith("2"))
        return cls(
            rate=report.rate,
            achieved_rps=report.achieved_rps,
            p50_ms=report.latency_ms.p50,
            p99_ms=report.latency_ms.p99,
            max_ms=report.latency_ms.max,
            failed=bad + report.errors + report.unfinished,
            statuses=report.statuses,
            gateway_cpu_us_per_request=round(cpu_s * 1e6 / sent, 1) if sent else float("nan"),
        )

    def line(self) -> str:
        return (
            f"{self.achieved_rps:7,.0f} req/s  p50 {self.p50_ms:6.3f} ms  p99 {self.p99_ms:6.3f} "
            f"ms  max {self.max_ms:7.1f} ms  failed {self.failed}  "
            f"gateway CPU {self.gateway_cpu_us_per_request:.0f} µs/req"
        )


def _small_load(
    gateway: servers.Gateway, path: str, rate: float, seconds: float, connections: int
) -> LoadFigures:
    before = group_cpu_seconds(gateway.pid)
    report = openloop.measure(f"{gateway.url}{path}", rate, seconds, connections=connections)
    return LoadFigures.of(report, group_cpu_seconds(gateway.pid) - before)


# --- idle connections ---------------------------------------------------------------------------


@dataclass
class IdleResult:
    connections: int
    opened: int
    open_s: float
    rss_before_mb: float
    rss_with_idle_mb: float
    rss_after_close_mb: float
    fds_before: int
    fds_with_idle: int
    fds_after_close: int
    quiet_cpu_percent: float
    alone: LoadFigures
    beside: LoadFigures
    probed: int
    probe_answered: int
    closed_by_gateway: int

    @property
    def kb_per_connection(self) -> float:
        grown = (self.rss_with_idle_mb - self.rss_before_mb) * 1000
        return grown / self.opened if self.opened else float("nan")


def measure_idle_connections(
    workdir: Path, backend_port: int, connections: int, rate: float, log: Log
) -> IdleResult:
    config = servers.base_config(keepalive_timeout_ms=600_000)
    config["routers"] = [servers.bare_route(backend_port)]
    gateway = servers.start_gateway(workdir, "kairos-idle", config)
    try:
        return asyncio.run(_idle(gateway, connections, rate, log))
    finally:
        gateway.process.stop()


async def _idle(gateway: servers.Gateway, count: int, rate: float, log: Log) -> IdleResult:
    pid = gateway.pid
    log(f"idle connections: a small load alone ({rate:g} req/s, {SMALL_LOAD_S:g} s)")
    alone = await asyncio.to_thread(
        _small_load, gateway, "/bare", rate, SMALL_LOAD_S, SMALL_LOAD_CONNECTIONS
    )
    rss_before, fds_before = rss_mb(pid), open_fds(pid)
    log(f"idle connections: opening {count:,}")
    started = time.monotonic()
    opened = await _open_idle(gateway.url, count)
    open_s = time.monotonic() - started
    rss_with, fds_with = rss_mb(pid), open_fds(pid)
    log(f"idle connections: {len(opened):,} open in {open_s:.1f} s; gateway RSS {rss_with:.1f} MB")
    cpu_before = group_cpu_seconds(pid)
    await asyncio.sleep(QUIET_CPU_S)
    quiet_cpu = 100 * (group_cpu_seconds(pid) - cpu_before) / QUIET_CPU_S
    log("idle connections: the same small load beside them")
    beside = await asyncio.to_thread(
        _small_load, gateway, "/bare", rate, SMALL_LOAD_S, SMALL_LOAD_CONNECTIONS
    )
    rss_with = max(rss_with, rss_mb(pid))
    closed = sum(1 for reader, _ in opened if reader.at_eof())
    sample = opened[:: max(1, len(opened) // PROBE_SAMPLE)][:PROBE_SAMPLE]
    answers = await asyncio.gather(
        *(_request(reader, writer, gateway.url) for reader, writer in sample),
        return_exceptions=True,
    )
    answered = sum(1 for status in answers if status == 200)
    for _, writer in opened:
        writer.close()
    await asyncio.sleep(1.0)  # the gateway sees the closes
    return IdleResult(
        connections=count,
        opened=len(opened),
        open_s=round(open_s, 2),
        rss_before_mb=round(rss_before, 1),
        rss_with_idle_mb=round(rss_with, 1),
        rss_after_close_mb=round(rss_mb(pid), 1),
        fds_before=fds_before,
        fds_with_idle=fds_with,
        fds_after_close=open_fds(pid),
        quiet_cpu_percent=round(quiet_cpu, 1),
        alone=alone,
        beside=beside,
        probed=len(sample),
        probe_answered=answered,
        closed_by_gateway=closed,
    )


Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _open_idle(url: str, count: int) -> list[Stream]:
    parts = urlsplit(url)
    host, port = parts.hostname or servers.LOOPBACK, parts.port or 80
    gate = asyncio.Semaphore(OPEN_CONCURRENCY)

    async def one() -> Stream:
        async with gate:
            reader, writer = await asyncio.open_connection(host, port)
            status = await _request(reader, writer, url)
            if status != 200:
                writer.close()
                raise ConnectionError(f"answered {status}")
            return reader, writer

    results = await asyncio.gather(*(one() for _ in range(count)), return_exceptions=True)
    return [result for result in results if not isinstance(result, BaseException)]


async def _request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, url: str) -> int:
    """``GET /bare`` on an open connection; the status once the whole answer is read."""
    writer.write(f"GET /bare HTTP/1.1\r\nHost: {urlsplit(url).netloc}\r\n\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    lines = head.decode("latin-1").split("\r\n")
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    await reader.readexactly(length)
    return int(lines[0].split()[1])


def describe_idle(result: IdleResult) -> list[str]:
    return [
        f"Idle connections: {result.opened:,} of {result.connections:,} opened in "
        f"{result.open_s:.1f} s (each served one request, then silent; keep-alive 600 s)",
        f"  gateway RSS {result.rss_before_mb:.1f} MB before, {result.rss_with_idle_mb:.1f} MB "
        f"with them ({result.kb_per_connection:.1f} kB each), {result.rss_after_close_mb:.1f} MB "
        "after they closed",
        f"  gateway fds {result.fds_before} before, {result.fds_with_idle} with them, "
        f"{result.fds_after_close} after; CPU with them and no traffic: "
        f"{result.quiet_cpu_percent:.1f}% of a core",
        f"  small load alone:        {result.alone.line()}",
        f"  small load beside them:  {result.beside.line()}",
        f"  afterwards {result.probe_answered} of {result.probed} sampled idle connections "
        f"answered a request; {result.closed_by_gateway} had been closed by the gateway",
    ]


# --- config swaps -------------------------------------------------------------------------------


@dataclass
class SwapResult:
    swaps: int
    routes: int
    applied: int
    put_ms_median: float
    put_ms_max: float
    put_errors: list[str]
    before: LoadFigures
    during: LoadFigures


def measure_config_swaps(
    workdir: Path, backend_port: int, swaps: int, routes: int, rate: float, log: Log
) -> SwapResult:
    config = servers.base_config()
    documents = []
    for prefix in ("a", "b"):
        document = json.loads(json.dumps(config))
        document["routers"] = [servers.bare_route(backend_port)]
        document["routers"] += servers.many_routes(backend_port, routes, prefix)
        documents.append(document)
    gateway = servers.start_gateway(workdir, "kairos-swaps", documents[0])
    seconds = max(SMALL_LOAD_S, swaps * SWAP_INTERVAL_S)
    try:
        log(f"config swaps: the bare route alone ({rate:g} req/s, {seconds:g} s)")
        before = _small_load(gateway, "/bare", rate, seconds, 64)
        log(f"config swaps: {swaps} swaps of {routes:,} routes under the same load")
        cpu_before = group_cpu_seconds(gateway.pid)
        load = openloop.spawn(f"{gateway.url}/bare", rate, 3600, connections=64, warmup_s=1.0)
        try:
            time.sleep(1.5)
            applied, put_ms, errors = _swap(gateway, documents, swaps)
            time.sleep(1.0)
        finally:
            load.terminate()
        during = LoadFigures.of(openloop.collect(load), group_cpu_seconds(gateway.pid) - cpu_before)
    finally:
        gateway.process.stop()
    return SwapResult(
        swaps=swaps,
        routes=routes,
        applied=applied,
        put_ms_median=round(statistics.median(put_ms), 1) if put_ms else float("nan"),
        put_ms_max=round(max(put_ms), 1) if put_ms else float("nan"),
        put_errors=errors,
        before=before,
        during=during,
    )


def _swap(
    gateway: servers.Gateway, documents: list[dict[str, Any]], swaps: int
) -> tuple[int, list[float], list[str]]:
    applied, put_ms, errors = 0, [], []
    with httpx.Client(timeout=60, trust_env=False) as client:
        for i in range(swaps):
            new, old = ("b", "a") if i % 2 == 0 else ("a", "b")
            started = time.perf_counter()
            answer = client.put(f"{gateway.admin_url}/api/config", json=documents[(i + 1) % 2])
            put_ms.append((time.perf_counter() - started) * 1000)
            if answer.status_code != 200:
                errors.append(f"swap {i + 1}: {answer.status_code} {answer.text[:200]}")
            else:
                live = client.get(f"{gateway.url}/{new}0/items/1").status_code
                gone = client.get(f"{gateway.url}/{old}0/items/1").status_code
                applied += live == 200 and gone == 404
            time.sleep(SWAP_INTERVAL_S)
    return applied, put_ms, errors


def describe_swaps(result: SwapResult) -> list[str]:
    lines = [
        f"Config swaps: {result.swaps} PUT /api/config alternating two configs of "
        f"{result.routes:,} routes (+ the bare route), one every {SWAP_INTERVAL_S:g} s after "
        "the previous answered",
        f"  {result.applied} of {result.swaps} swaps live right after their PUT; PUT took "
        f"{result.put_ms_median:.0f} ms (median), {result.put_ms_max:.0f} ms (max)",
        f"  bare route, no swaps:    {result.before.line()}",
        f"  bare route, swapping:    {result.during.line()}",
    ]
    lines += [f"  {error}" for error in result.put_errors]
    lines.append(f"  statuses while swapping: {result.during.statuses}")
    return lines
