"""Cluster mode's throughput and the Redis cost of a limited request, in one run.

    .venv/bin/python benchmarks/cluster.py [--duration 8] [--connections 32] [--rounds 3]

What it starts, all on loopback: a backend (nginx ``return 200`` when nginx is installed, else
the aiohttp test upstream), a redis-server, and these gateways, every one with the same rate-limited
route (``PerIP``, a fixed window too large ever to refuse: every request is charged):

- ``1 worker, memory``: no cluster, counters in the process (the baseline of the Redis cost);
- ``1 worker, Redis``: ``cluster.redis_url`` set, one worker;
- ``2 workers, Redis``: the same with ``server.workers: 2``;
- ``2 instances, Redis``: two one-worker instances on the same Redis.

Every target is loaded by two wrk processes (``-t1``, half the connections each; for the two
instances, one each), their requests/s added and the worse p50 and p99 kept, so the load
generator is the same for all. Each round runs every target in turn; the report gives medians
over rounds, the throughput of each target as a ratio to ``1 worker, Redis``, the gateway's CPU
time per request (every process of the instance: workers and admin process included), and the
Redis cost per limited request: round trips (``INFO commandstats``: client calls, not the
commands the script runs), the gateway's CPU time per request with Redis minus without, the p50
it adds, and Redis's own CPU time per request. On a small machine wrk, the backend, Redis and
the gateways share the cores, so the ratios say more than the absolute figures; ``--json``
prints them too. Nothing here runs in the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.procs import ManagedProcess, free_port, wait_for_port  # noqa: E402
from tests.support.redisserver import RedisServer  # noqa: E402

BASELINE = "1 worker, Redis"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Result:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    gateway_cpu_s: float = 0.0
    redis_cpu_s: float = 0.0
    redis_calls: int = 0


def wrk(url: str, seconds: int, connections: int) -> subprocess.Popen[str]:
    args = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", url]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def parse_wrk(output: str) -> Result:
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]

    def latency(percent: str) -> float:
        match = re.search(rf"^\s+{percent}%\s+([\d.]+)(us|ms|s)\s*$", output, re.M)
        if match is None:
            return float("nan")
        value, unit = float(match.group(1)), match.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    return Result(rps, latency("50"), latency("99"), total)


def cpu_seconds(process_group: int) -> float:
    """User + system CPU time of every process in a process group (a gateway and its workers)."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == process_group:  # pgrp, then utime and stime at 11 and 12
            total += int(fields[11]) + int(fields[12])
    return total / CLOCK_TICKS


@dataclass
class Target:
    """One or more gateways loaded at once (their URLs), and the process groups behind them."""

    urls: list[str]
    groups: list[int]
    redis: RedisServer | None

    def run(self, seconds: int, connections: int) -> Result:
        urls = self.urls if len(self.urls) > 1 else self.urls * 2
        share = max(connections // len(urls), 1)
        cpu_before = sum(cpu_seconds(group) for group in self.groups)
        redis_before = self._redis_usage()
        runs = [wrk(url, seconds, share) for url in urls]
        outputs = [run.communicate()[0] for run in runs]
        results = [parse_wrk(output) for output in outputs]
        redis_after = self._redis_usage()
        return Result(
            rps=sum(r.rps for r in results),
            p50_ms=max(r.p50_ms for r in results),
            p99_ms=max(r.p99_ms for r in results),
            requests=sum(r.requests for r in results),
            gateway_cpu_s=sum(cpu_seconds(group) for group in self.groups) - cpu_before,
            redis_cpu_s=redis_after[0] - redis_before[0],
            redis_calls=redis_after[1] - redis_before[1],
        )

    def _redis_usage(self) -> tuple[float, int]:
        """Redis's CPU seconds and the calls clients made (script-internal commands excluded)."""
        if self.redis is None:
            return 0.0, 0
        client = self.redis.client()
        cpu = client.info("cpu")
        calls = client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)
        return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]), int(calls)


def gateway_config(
    backend: int, port: int, admin_port: int, redis: RedisServer | None, workers: int, prefix: str
) -> dict[str, object]:
    config: dict[str, object] = {
        "version": 1,
        "server": {"host": "127.0.0.1", "port": port, "workers": workers},
        "admin": {"host": "127.0.0.1", "port": admin_port},
        "routers": [
            {
                "name": "limited",
                "external_path": "/limited",
                "internal_path": "/",
                "methods": ["GET"],
                "backends": [{"host": "http://127.0.0.1", "port": backend}],
                "rate_limit": {
                    "strategy": "PerIP",
                    "requests_per_window": 1_000_000_000,
                    "window_duration": 60,
                    "window_type": "FixedWindow",
                },
            }
        ],
    }
    if redis is not None:
        config["cluster"] = {"redis_url": redis.url, "key_prefix": prefix}
    return config


def start_backend(workdir: Path) -> tuple[ManagedProcess, int, str]:
    port = free_port()
    if shutil.which("nginx") is None:
        upstream = ManagedProcess(
            [sys.executable, "-m", "tests.support.upstreams", "--port", str(port)],
            name="upstream",
            cwd=ROOT,
        ).start()
        wait_for_port("127.0.0.1", port, 10, process=upstream)
        return upstream, port, "aiohttp test upstream"
    conf = workdir / "nginx.conf"
    conf.write_text(
        textwrap.dedent(
            f"""
            worker_processes 1;
            daemon off;
            pid {workdir}/nginx.pid;
            error_log {workdir}/nginx.error.log;
            events {{ worker_connections 4096; }}
            http {{
                access_log off;
                client_body_temp_path {workdir}/body;
                proxy_temp_path {workdir}/proxy;
                fastcgi_temp_path {workdir}/fcgi;
                uwsgi_temp_path {workdir}/uwsgi;
                scgi_temp_path {workdir}/scgi;
                server {{ listen 127.0.0.1:{port}; location / {{ return 200 'ok'; }} }}
            }}
            """
        )
    )
    nginx = ManagedProcess(["nginx", "-c", str(conf), "-p", str(workdir)], name="nginx").start()
    wait_for_port("127.0.0.1", port, 10, process=nginx)
    return nginx, port, "nginx return 200"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=8, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print the results as JSON too")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install wrk")

    processes: list[ManagedProcess] = []
    workdir = Path(tempfile.mkdtemp(prefix="kairos-cluster-bench-"))
    redis = RedisServer()
    try:
        backend, backend_port, backend_kind = start_backend(workdir)
        processes.append(backend)
        redis.start()

        def gateway(name: str, use_redis: bool, workers: int = 1, prefix: str = "b") -> int:
            """Start one gateway; its proxy URL's port (its process group is its pid)."""
            port, admin_port = free_port(), free_port()
            path = workdir / f"{name}.json"
            config = gateway_config(
                backend_port, port, admin_port, redis if use_redis else None, workers, prefix
            )
            path.write_text(json.dumps(config))
            process = ManagedProcess(
                [sys.executable, "-m", "kairos_gateway", str(path), "--log-level", "warning"],
                name=name,
                cwd=ROOT,
                env={"KAIROS_ADMIN_TOKEN": ""},
            ).start()
            processes.append(process)
            wait_for_port("127.0.0.1", port, 20, process=process)
            wait_until_ready(admin_port)
            gateways[port] = process.pid
            return port

        gateways: dict[int, int] = {}
        memory = gateway("memory", use_redis=False)
        single = gateway("single", use_redis=True, prefix="single")
        double = gateway("workers", use_redis=True, workers=2, prefix="workers")
        first, second = (gateway(f"instance-{n}", use_redis=True, prefix="pair") for n in "ab")

        def target(*ports: int, with_redis: bool = True) -> Target:
            urls = [f"http://127.0.0.1:{port}/limited" for port in ports]
            return Target(urls, [gateways[port] for port in ports], redis if with_redis else None)

        targets = {
            "1 worker, memory": target(memory, with_redis=False),
            BASELINE: target(single),
            "2 workers, Redis": target(double),
            "2 instances, Redis": target(first, second),
        }
        for warm in targets.values():
            warm.run(1, args.connections)
        results: dict[str, list[Result]] = {name: [] for name in targets}
        for round_number in range(1, args.rounds + 1):
            for name, each in targets.items():
                result = each.run(args.duration, args.connections)
                results[name].append(result)
                print(
                    f"round {round_number} {name:20s} {result.rps:9.0f} req/s  "
                    f"p50 {result.p50_ms:6.2f} ms  p99 {result.p99_ms:6.2f} ms",
                    file=sys.stderr,
                )
        report(results, backend_kind, args)
    finally:
        for process in reversed(processes):
            process.stop(signal.SIGTERM)
        redis.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def wait_until_ready(admin_port: int, timeout_s: float = 20) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{admin_port}/ready", trust_env=False).is_success:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"the gateway on admin port {admin_port} never became ready")


def report(results: dict[str, list[Result]], backend: str, args: argparse.Namespace) -> None:
    def median(name: str, field: Callable[[Result], float]) -> float:
        return statistics.median(field(r) for r in results[name])

    print(
        f"\nKairos cluster benchmark: backend = {backend}; wrk -t1, {args.connections} connections"
        f" in all, {args.duration} s, {args.rounds} interleaved rounds, medians; "
        f"{os.cpu_count()} cores"
    )
    print(
        f"{'target':22s} {'req/s':>9s} {'vs 1 worker, Redis':>19s} {'p50 ms':>8s} "
        f"{'p99 ms':>8s} {'CPU µs/req':>11s}"
    )
    baseline = median(BASELINE, lambda r: r.rps)
    figures: dict[str, dict[str, float]] = {}

    def per_request(name: str, field: Callable[[Result], float]) -> float:
        return statistics.median(field(r) / r.requests for r in results[name] if r.requests)

    for name in results:
        rps = median(name, lambda r: r.rps)
        p50, p99 = median(name, lambda r: r.p50_ms), median(name, lambda r: r.p99_ms)
        cpu_us = per_request(name, lambda r: r.gateway_cpu_s) * 1e6
        figures[name] = {
            "rps": rps,
            "ratio": rps / baseline,
            "p50_ms": p50,
            "p99_ms": p99,
            "gateway_cpu_us": cpu_us,
        }
        print(f"{name:22s} {rps:9.0f} {rps / baseline:19.2f} {p50:8.2f} {p99:8.2f} {cpu_us:11.0f}")

    memory_cpu_us = per_request("1 worker, memory", lambda r: r.gateway_cpu_s) * 1e6
    redis_cpu_us = per_request(BASELINE, lambda r: r.gateway_cpu_s) * 1e6
    round_trips = per_request(BASELINE, lambda r: r.redis_calls)
    redis_side_us = per_request(BASELINE, lambda r: r.redis_cpu_s) * 1e6
    added_p50 = median(BASELINE, lambda r: r.p50_ms) - median(
        "1 worker, memory", lambda r: r.p50_ms
    )
    print(
        "\nRedis cost per limited request (1 worker, Redis vs 1 worker, memory):\n"
        f"  round trips: {round_trips:.2f} (EVALSHA calls / requests)\n"
        f"  gateway CPU: {redis_cpu_us:.0f} µs vs {memory_cpu_us:.0f} µs "
        f"(+{redis_cpu_us - memory_cpu_us:.0f} µs)\n"
        f"  Redis CPU:   {redis_side_us:.0f} µs\n"
        f"  p50 added:   {added_p50:+.2f} ms"
    )
    if args.json:
        figures["redis_cost"] = {
            "round_trips": round_trips,
            "gateway_cpu_us": redis_cpu_us,
            "gateway_cpu_memory_us": memory_cpu_us,
            "redis_cpu_us": redis_side_us,
            "p50_added_ms": added_p50,
        }
        print(json.dumps(figures))


if __name__ == "__main__":
    main()
