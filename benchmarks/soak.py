"""Soak: mixed traffic through one gateway for many minutes, one line of figures per minute.

    .venv/bin/python benchmarks/soak.py [--minutes 10] [--rate 200] [--phase-s 30]
        [--log-level info]

One gateway (access log on by default) in front of two test upstreams
(``python -m tests.support.upstreams``), with four kinds of client at once:

- ``healthy``: ``GET /healthy`` at ``--rate`` req/s on keep-alive connections;
- ``flaky``: ``GET /flaky`` (retry, breaker, 2 s route timeout) at a tenth of that, to an
  upstream steered through its control plane every ``--phase-s`` seconds: ok, fail (503), flap
  (two ok, two 503), hang (never answers), delay (800 ms), then again;
- ``slow upload``: four clients each POST 64 KiB to ``/upload`` in 4 KiB pieces 150 ms apart;
- ``vanish``: two clients start a 16 MiB ``GET /download`` and drop the connection after
  64 KiB; one more sends 8 KiB of a 1 MiB upload and drops it.

Each minute: the gateway's RSS, open fds and threads (``/proc``), its live asyncio tasks
(``kairos_event_loop_tasks`` on ``/metrics``), requests in flight and the minute's requests by
status class (``GET /api/metrics``, deltas), and what the clients saw. At the end the traffic
stops, and after 5 quiet seconds RSS, fds and tasks are read once more against the first
minute's. Not part of the
test run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import os
import re
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import servers  # noqa: E402
from benchmarks.procstat import open_fds, rss_mb, thread_count  # noqa: E402
from tests.support.procs import Upstream  # noqa: E402

UPLOAD_BYTES = 64 * 1024
UPLOAD_PIECE_BYTES = 4 * 1024
UPLOAD_PAUSE_S = 0.15
DOWNLOAD_BYTES = 16 * 1024 * 1024
VANISH_AFTER_BYTES = 64 * 1024
PHASES: list[tuple[str, dict[str, Any]]] = [
    ("ok", {}),
    ("fail", {"mode": "fail"}),
    ("flap", {"mode": "flap"}),
    ("hang", {"mode": "hang"}),
    ("delay", {"delay_ms": 800}),
]


def gateway_config(healthy_port: int, flaky_port: int) -> dict[str, Any]:
    config = servers.base_config(keepalive_timeout_ms=75_000)
    config["server"].update(upstream_timeout_ms=5_000, client_body_timeout_ms=10_000)

    def route(name: str, port: int, internal: str, methods: list[str]) -> dict[str, Any]:
        return {
            "name": name,
            "backends": [servers.backend(port)],
            "external_path": f"/{name}",
            "internal_path": internal,
            "methods": methods,
        }

    flaky = route("flaky", flaky_port, "/", ["GET"])
    flaky.update(
        retry={"max_retries": 2, "initial_backoff_ms": 20, "max_backoff_ms": 200},
        circuit_breaker={"failure_threshold": 5, "reset_timeout_s": 5},
        timeout_ms=2_000,
    )
    config["routers"] = [
        route("healthy", healthy_port, "/", ["GET"]),
        route("upload", healthy_port, "/", ["POST"]),
        route("download", healthy_port, "/_download", ["GET"]),
        flaky,
    ]
    return config


@dataclass
class ClientTally:
    """What one kind of client saw: answers by status class, and errors by kind."""

    answers: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)

    def answered(self, status: int) -> None:
        self.answers[f"{status // 100}xx"] += 1

    def failed(self, exc: BaseException) -> None:
        self.errors["timeout" if isinstance(exc, TimeoutError) else type(exc).__name__] += 1

    def take(self) -> ClientTally:
        """This minute's counts; the tally starts again from zero."""
        taken = ClientTally(self.answers.copy(), self.errors.copy())
        self.answers.clear()
        self.errors.clear()
        return taken

    def brief(self) -> str:
        parts = [f"{k} {v}" for k, v in sorted(self.answers.items())]
        parts += [f"{k} {v}" for k, v in sorted(self.errors.items())]
        return ", ".join(parts) or "-"


class Traffic:
    """The four kinds of client, running until ``stop``."""

    def __init__(self, url: str, rate: float) -> None:
        self.url = url
        self.rate = rate
        self.stopping = asyncio.Event()
        self.tallies = {
            kind: ClientTally() for kind in ("healthy", "flaky", "slow upload", "vanish")
        }
        self.vanished = 0

    async def run(self) -> None:
        connector = aiohttp.TCPConnector(limit=64)
        timeout = aiohttp.ClientTimeout(total=15)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            tasks = [self._paced(session, "healthy", "/healthy", self.rate, 16)]
            tasks.append(self._paced(session, "flaky", "/flaky", self.rate / 10, 8))
            tasks += [self._slow_uploads() for _ in range(4)]
            tasks += [self._vanishing_downloads() for _ in range(2)]
            tasks.append(self._vanishing_uploads())
            await asyncio.gather(*tasks)

    async def _paced(
        self, session: aiohttp.ClientSession, kind: str, path: str, rate: float, workers: int
    ) -> None:
        tally, interval = self.tallies[kind], workers / rate

        async def worker(offset: float) -> None:
            await asyncio.sleep(offset)
            next_at = time.monotonic()
            while not self.stopping.is_set():
                try:
                    async with session.get(f"{self.url}{path}") as response:
                        await response.read()
                        tally.answered(response.status)
                except (aiohttp.ClientError, TimeoutError) as exc:
                    tally.failed(exc)
                next_at = max(next_at + interval, time.monotonic() - interval)
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))

        await asyncio.gather(*(worker(i * interval / workers) for i in range(workers)))

    async def _slow_uploads(self) -> None:
        tally = self.tallies["slow upload"]
        while not self.stopping.is_set():
            try:
                reader, writer = await self._connect()
                head = f"POST /upload HTTP/1.1\r\nHost: soak\r\nContent-Length: {UPLOAD_BYTES}"
                writer.write(f"{head}\r\nConnection: close\r\n\r\n".encode())
                for _ in range(UPLOAD_BYTES // UPLOAD_PIECE_BYTES):
                    writer.write(b"u" * UPLOAD_PIECE_BYTES)
                    await writer.drain()
                    await asyncio.sleep(UPLOAD_PAUSE_S)
                status = await asyncio.wait_for(reader.readline(), 15)
                tally.answered(int(status.split()[1]))
                writer.close()
            except (OSError, TimeoutError, ValueError, IndexError) as exc:
                tally.failed(exc)
                await asyncio.sleep(0.5)

    async def _vanishing_downloads(self) -> None:
        tally = self.tallies["vanish"]
        while not self.stopping.is_set():
            try:
                reader, writer = await self._connect()
                request = f"GET /download?bytes={DOWNLOAD_BYTES} HTTP/1.1\r\nHost: soak\r\n\r\n"
                writer.write(request.encode())
                status = await asyncio.wait_for(reader.readline(), 15)
                tally.answered(int(status.split()[1]))
                await asyncio.wait_for(reader.readexactly(VANISH_AFTER_BYTES), 15)
                writer.transport.abort()  # gone mid-response, without a FIN
                self.vanished += 1
            except (OSError, TimeoutError, ValueError, IndexError, EOFError) as exc:
                tally.failed(exc)
            await asyncio.sleep(0.2)

    async def _vanishing_uploads(self) -> None:
        tally = self.tallies["vanish"]
        while not self.stopping.is_set():
            try:
                _, writer = await self._connect()
                head = "POST /upload HTTP/1.1\r\nHost: soak\r\nContent-Length: 1048576\r\n\r\n"
                writer.write(head.encode() + b"v" * 8192)
                await writer.drain()
                await asyncio.sleep(0.1)
                writer.transport.abort()  # gone mid-upload
                self.vanished += 1
            except OSError as exc:
                tally.failed(exc)
            await asyncio.sleep(0.3)

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        host, port = self.url.removeprefix("http://").split(":")
        return await asyncio.open_connection(host, int(port))


@dataclass
class Minute:
    minute: float
    rss_mb: float
    fds: int
    threads: int
    tasks: int
    in_flight: int
    requests: int
    status_classes: dict[str, int]
    phases: list[str]
    clients: dict[str, ClientTally]


def metrics(admin_url: str) -> dict[str, Any]:
    with httpx.Client(timeout=30, trust_env=False) as client:
        data: dict[str, Any] = client.get(f"{admin_url}/api/metrics").json()
        return data


def event_loop_tasks(admin_url: str) -> int:
    """The gateway's live asyncio tasks, as its last 1-second tick counted them."""
    with httpx.Client(timeout=30, trust_env=False) as client:
        text = client.get(f"{admin_url}/metrics").text
    found = re.search(r"^kairos_event_loop_tasks (\S+)$", text, re.MULTILINE)
    return int(float(found.group(1))) if found else -1


async def soak(args: argparse.Namespace) -> list[Minute]:
    workdir = Path(tempfile.mkdtemp(prefix="kairos-soak-"))
    healthy, flaky = Upstream.start("healthy"), Upstream.start("flaky")
    config = gateway_config(healthy.port, flaky.port)
    gateway = servers.start_gateway(workdir, "kairos-soak", config, log_level=args.log_level)
    pid = gateway.pid
    traffic = Traffic(gateway.url, args.rate)
    phases = itertools.cycle(PHASES)
    phase_log: list[str] = []
    minutes: list[Minute] = []
    print(
        f"Kairos soak: {args.minutes:g} min, healthy {args.rate:g} req/s, flaky {args.rate / 10:g} "
        f"req/s (phases of {args.phase_s:g} s: {', '.join(p for p, _ in PHASES)}), 4 slow "
        "uploaders, 3 vanishing clients; gateway at --log-level "
        f"{args.log_level}; {os.cpu_count()} cores, load average "
        + " ".join(f"{x:.2f}" for x in os.getloadavg()),
        flush=True,
    )
    print(
        f"{'min':>5s} {'RSS MB':>7s} {'fds':>5s} {'thr':>3s} {'tasks':>5s} {'in-fl':>5s} "
        f"{'requests':>9s} "
        f"{'2xx':>7s} {'3xx':>4s} {'4xx':>5s} {'5xx':>6s}  flaky phases  client errors",
        flush=True,
    )
    runner = asyncio.create_task(traffic.run())
    before = await asyncio.to_thread(metrics, gateway.admin_url)
    try:
        started = time.monotonic()
        next_phase = started
        for index in range(1, math.ceil(args.minutes * 60 / args.report_s) + 1):
            minute = index * args.report_s / 60
            minute_end = started + index * args.report_s
            while True:
                now = time.monotonic()
                if now >= next_phase:
                    name, control = next(phases)
                    await asyncio.to_thread(flaky.control, **control)
                    phase_log.append(name)
                    next_phase += args.phase_s
                if now >= minute_end:
                    break
                await asyncio.sleep(min(next_phase, minute_end) - now)
            after = await asyncio.to_thread(metrics, gateway.admin_url)
            row = Minute(
                minute=minute,
                rss_mb=round(rss_mb(pid), 1),
                fds=open_fds(pid),
                threads=thread_count(pid),
                tasks=await asyncio.to_thread(event_loop_tasks, gateway.admin_url),
                in_flight=after["in_flight"],
                requests=after["requests_total"] - before["requests_total"],
                status_classes={
                    k: v - before["status_classes"].get(k, 0)
                    for k, v in after["status_classes"].items()
                },
                phases=sorted(set(phase_log), key=phase_log.index),
                clients={kind: tally.take() for kind, tally in traffic.tallies.items()},
            )
            minutes.append(row)
            before, phase_log = after, phase_log[-1:]
            print(format_minute(row), flush=True)
    finally:
        traffic.stopping.set()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(runner, 30)
        runner.cancel()
    await asyncio.to_thread(flaky.control)  # back to ok: hung requests end
    await asyncio.sleep(5)
    rest_rss, rest_fds = rss_mb(pid), open_fds(pid)
    rest_tasks = await asyncio.to_thread(event_loop_tasks, gateway.admin_url)
    gateway.process.stop()
    healthy.stop()
    flaky.stop()
    print(summary(minutes, rest_rss, rest_fds, rest_tasks, traffic.vanished), flush=True)
    return minutes


def format_minute(row: Minute) -> str:
    classes = row.status_classes
    errors = "; ".join(
        f"{kind}: {', '.join(f'{k} {v}' for k, v in sorted(tally.errors.items()))}"
        for kind, tally in row.clients.items()
        if tally.errors
    )
    return (
        f"{row.minute:5.1f} {row.rss_mb:7.1f} {row.fds:5d} {row.threads:3d} {row.tasks:5d} "
        f"{row.in_flight:5d} "
        f"{row.requests:9,d} {classes.get('2xx', 0):7,d} {classes.get('3xx', 0):4,d} "
        f"{classes.get('4xx', 0):5,d} {classes.get('5xx', 0):6,d}  "
        f"{'/'.join(row.phases):12s}  {errors or '-'}"
    )


def summary(
    minutes: list[Minute], rest_rss: float, rest_fds: int, rest_tasks: int, vanished: int
) -> str:
    if not minutes:
        return "no complete minute"
    first, last = minutes[0], minutes[-1]
    total = sum(m.requests for m in minutes)
    classes: Counter[str] = Counter()
    for m in minutes:
        classes.update(m.status_classes)
    return "\n".join(
        [
            f"summary: {total:,} requests in {last.minute:g} min "
            f"({', '.join(f'{k} {v:,}' for k, v in sorted(classes.items()))}); "
            f"{vanished:,} clients vanished mid-transfer",
            f"  RSS {first.rss_mb:.1f} MB after minute {first.minute:g}, {last.rss_mb:.1f} MB "
            f"after minute {last.minute:g} (max {max(m.rss_mb for m in minutes):.1f}), "
            f"{rest_rss:.1f} MB at rest",
            f"  open fds {first.fds} after minute {first.minute:g}, {last.fds} after minute "
            f"{last.minute:g} "
            f"(min {min(m.fds for m in minutes)}, max {max(m.fds for m in minutes)}), "
            f"{rest_fds} at rest",
            f"  asyncio tasks {first.tasks} after minute {first.minute:g}, {last.tasks} after "
            f"minute {last.minute:g} (max {max(m.tasks for m in minutes)}), {rest_tasks} at rest",
        ]
    )


def _row_json(row: Minute) -> dict[str, Any]:
    data = dict(vars(row))
    data["clients"] = {
        kind: {"answers": dict(t.answers), "errors": dict(t.errors)}
        for kind, t in row.clients.items()
    }
    return data


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--report-s", type=float, default=60, help="seconds between lines")
    parser.add_argument("--rate", type=float, default=200, help="healthy req/s")
    parser.add_argument("--phase-s", type=float, default=30, help="seconds per flaky phase")
    parser.add_argument("--log-level", default="info", choices=["info", "warning"])
    parser.add_argument("--json", metavar="FILE", help="also write the minutes as JSON")
    args = parser.parse_args(argv)
    minutes = asyncio.run(soak(args))
    if args.json:
        Path(args.json).write_text(json.dumps([_row_json(m) for m in minutes], indent=2))


if __name__ == "__main__":
    main()
