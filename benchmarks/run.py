"""Kairos performance harness: the same load, direct and through each proxy, interleaved.

    .venv/bin/python benchmarks/run.py [--duration 8] [--connections 32] [--rounds 3] [--aiohttp]

What it starts, all on loopback:

- the backend: nginx answering a fixed 200 (``return 200``) when nginx is installed, else the
  aiohttp test upstream (then the direct numbers are the Python server's, and say so);
- nginx as a reverse proxy in front of that backend (when installed), as the reference proxy;
- Kairos with a *bare* route (no policies) and a *full* route (JWT, rate limit with a limit high
  enough never to refuse, retry policy, circuit breaker, request and response transformations);
- Kairos's AI selector (``kairos ai cached``: a ``content_analysis`` route whose LLM, the
  stand-in of ``tests/support/llm.py``, has answered once: every request is decided from the
  cache; ``kairos ai background``: ``background`` mode where every request is new, so each is
  routed at once by the fallback order while LLM calls run off the request path), each reported
  as a ratio to the bare route.

Each round runs wrk (``wrk -t1 -cN -dS --latency``) against every target in turn, so slow drift
of the machine hits all targets alike; the report gives the median over rounds of requests/s,
p50 and p99, each target's ratio to the direct run, and the gateway's RSS. Install wrk and nginx
with ``apt-get install wrk nginx-light``. Nothing here runs in the test suite.
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
from dataclasses import dataclass
from pathlib import Path

import jwt as pyjwt

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.procs import ManagedProcess, free_port, wait_for_port  # noqa: E402

SECRET = "benchmark-secret-0123456789abcdef0123456789"


@dataclass
class Result:
    rps: float
    p50_ms: float
    p99_ms: float


def parse_wrk(output: str) -> Result:
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]

    def latency(percent: str) -> float:
        match = re.search(rf"^\s+{percent}%\s+([\d.]+)(us|ms|s)\s*$", output, re.M)
        if match is None:
            return float("nan")
        value, unit = float(match.group(1)), match.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    return Result(rps, latency("50"), latency("99"))


@dataclass(frozen=True)
class Target:
    url: str
    headers: dict[str, str]
    script: Path | None = None  # a wrk Lua script (POST bodies)


CACHED_CHAT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"messages": [{"role": "user", "content": "What is the capital of France?"}]}'
"""
NEW_CHAT_EACH_TIME = """
counter = 0
request = function()
  counter = counter + 1
  local body = '{"messages": [{"role": "user", "content": "question ' .. counter .. '"}]}'
  return wrk.format("POST", nil, {["Content-Type"] = "application/json"}, body)
end
"""


def run_wrk(target: Target, seconds: int, connections: int) -> Result:
    args = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency"]
    for name, value in target.headers.items():
        args += ["-H", f"{name}: {value}"]
    if target.script is not None:
        args += ["-s", str(target.script)]
    output = subprocess.run([*args, target.url], capture_output=True, text=True, check=True)
    return parse_wrk(output.stdout)


def start_nginx(workdir: Path, backend_port: int | None, port: int) -> ManagedProcess:
    """nginx: a fixed-200 backend (``backend_port`` None) or a reverse proxy to it."""
    if backend_port is None:
        location = "return 200 'ok';"
    else:
        location = textwrap.dedent(
            """
            proxy_pass http://kairos_bench_backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            """
        )
    upstream = (
        f"upstream kairos_bench_backend {{ server 127.0.0.1:{backend_port}; keepalive 64; }}"
        if backend_port is not None
        else ""
    )
    name = f"nginx-{port}"
    conf = workdir / f"{name}.conf"
    conf.write_text(
        textwrap.dedent(
            f"""
            worker_processes 1;
            daemon off;
            pid {workdir}/{name}.pid;
            error_log {workdir}/{name}.error.log;
            events {{ worker_connections 4096; }}
            http {{
                access_log off;
                client_body_temp_path {workdir}/{name}-body;
                proxy_temp_path {workdir}/{name}-proxy;
                fastcgi_temp_path {workdir}/{name}-fcgi;
                uwsgi_temp_path {workdir}/{name}-uwsgi;
                scgi_temp_path {workdir}/{name}-scgi;
                {upstream}
                server {{
                    listen 127.0.0.1:{port};
                    location / {{ {location} }}
                }}
            }}
            """
        )
    )
    process = ManagedProcess(["nginx", "-c", str(conf), "-p", str(workdir)], name=name).start()
    wait_for_port("127.0.0.1", port, 10, process=process)
    return process


def kairos_config(backend_port: int, port: int, admin_port: int, llm_url: str) -> dict[str, object]:
    backend = {"host": "http://127.0.0.1", "port": backend_port}
    tiers = [{**backend, "tags": ["instant"]}, {**backend, "tags": ["thinking"], "weight": 1}]
    return {
        "version": 1,
        "server": {"host": "127.0.0.1", "port": port},
        "admin": {"host": "127.0.0.1", "port": admin_port},
        "jwt": {"secret": SECRET, "required_claims": ["sub"]},
        "ai": {"provider": "openai", "model": "stand-in", "base_url": f"{llm_url}/v1"},
        "routers": [
            {
                "name": "ai-cached",
                "backends": tiers,
                "external_path": "/ai/cached",
                "internal_path": "/",
                "methods": ["POST"],
                "ai_policy": {"cache_ttl_s": 3600},
            },
            {
                "name": "ai-background",
                "backends": tiers,
                "external_path": "/ai/background",
                "internal_path": "/",
                "methods": ["POST"],
                "ai_policy": {"mode": "background"},
            },
            {
                "name": "bare",
                "backends": [backend],
                "external_path": "/bare",
                "internal_path": "/",
                "methods": ["GET"],
            },
            {
                "name": "full",
                "backends": [backend],
                "external_path": "/full/{id}",
                "internal_path": "/{id}",
                "methods": ["GET"],
                "auth_required": True,
                "retry": {"max_retries": 2, "initial_backoff_ms": 10, "max_backoff_ms": 100},
                "circuit_breaker": {"failure_threshold": 5},
                "rate_limit": {
                    "strategy": "PerIP",
                    "requests_per_window": 10_000_000,
                    "window_duration": 60,
                    "window_type": "FixedWindow",
                },
                "request_transformation": {
                    "headers": [{"action": "set", "name": "X-Bench", "value": "1"}],
                    "query_params": [{"action": "add", "name": "via", "value": "kairos"}],
                },
                "response_transformation": {
                    "headers": [{"action": "remove", "name": "Server"}],
                },
            },
        ],
    }


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=8, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print the results as JSON too")
    parser.add_argument(
        "--aiohttp", action="store_true", help="also run a gateway on the aiohttp upstream client"
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install wrk")
    has_nginx = shutil.which("nginx") is not None

    processes: list[ManagedProcess] = []
    workdir = Path(tempfile.mkdtemp(prefix="kairos-bench-"))
    try:
        backend_port = free_port()
        if has_nginx:
            processes.append(start_nginx(workdir, None, backend_port))
            backend_kind = "nginx return 200"
        else:
            upstream = ManagedProcess(
                [sys.executable, "-m", "tests.support.upstreams", "--port", str(backend_port)],
                name="upstream",
                cwd=ROOT,
            ).start()
            processes.append(upstream)
            wait_for_port("127.0.0.1", backend_port, 10, process=upstream)
            backend_kind = "aiohttp test upstream"
        targets: dict[str, Target] = {"direct": Target(f"http://127.0.0.1:{backend_port}/", {})}
        if has_nginx:
            proxy_port = free_port()
            processes.append(start_nginx(workdir, backend_port, proxy_port))
            targets["nginx proxy"] = Target(f"http://127.0.0.1:{proxy_port}/", {})

        llm_port = free_port()
        llm = ManagedProcess(
            [sys.executable, "-m", "tests.support.llm", "--port", str(llm_port)],
            name="llm-stand-in",
            cwd=ROOT,
        ).start()
        processes.append(llm)
        wait_for_port("127.0.0.1", llm_port, 10, process=llm)
        llm_url = f"http://127.0.0.1:{llm_port}"
        port, admin_port = free_port(), free_port()
        config_path = workdir / "config.json"
        config_path.write_text(json.dumps(kairos_config(backend_port, port, admin_port, llm_url)))
        gateway = ManagedProcess(
            [sys.executable, "-m", "kairos_gateway", str(config_path), "--log-level", "warning"],
            name="kairos",
            cwd=ROOT,
            env={"KAIROS_ADMIN_TOKEN": ""},
        ).start()
        processes.append(gateway)
        wait_for_port("127.0.0.1", port, 20, process=gateway)
        token = pyjwt.encode({"sub": "bench", "exp": time.time() + 3600}, SECRET, "HS256")
        targets["kairos bare"] = Target(f"http://127.0.0.1:{port}/bare", {})
        if args.aiohttp:
            other_port, other_admin = free_port(), free_port()
            other_config = workdir / "config-aiohttp.json"
            other_config.write_text(
                json.dumps(kairos_config(backend_port, other_port, other_admin, llm_url))
            )
            other = ManagedProcess(
                [sys.executable, "-m", "kairos_gateway", str(other_config), "--log-level",
                 "warning", "--upstream-client", "aiohttp"],
                name="kairos-aiohttp",
                cwd=ROOT,
                env={"KAIROS_ADMIN_TOKEN": ""},
            ).start()  # fmt: skip
            processes.append(other)
            wait_for_port("127.0.0.1", other_port, 20, process=other)
            targets["kairos bare (aiohttp client)"] = Target(
                f"http://127.0.0.1:{other_port}/bare", {}
            )
        targets["kairos full"] = Target(
            f"http://127.0.0.1:{port}/full/7", {"Authorization": f"Bearer {token}"}
        )
        cached, fresh = workdir / "cached.lua", workdir / "fresh.lua"
        cached.write_text(CACHED_CHAT)
        fresh.write_text(NEW_CHAT_EACH_TIME)
        targets["kairos ai cached"] = Target(f"http://127.0.0.1:{port}/ai/cached", {}, cached)
        targets["kairos ai background"] = Target(
            f"http://127.0.0.1:{port}/ai/background", {}, fresh
        )

        for target in targets.values():  # warm up connections, code paths and the AI cache
            run_wrk(target, 1, args.connections)
        results: dict[str, list[Result]] = {name: [] for name in targets}
        for round_number in range(1, args.rounds + 1):
            for name, target in targets.items():
                result = run_wrk(target, args.duration, args.connections)
                results[name].append(result)
                print(
                    f"round {round_number} {name:28s} {result.rps:10.0f} req/s  "
                    f"p50 {result.p50_ms:7.2f} ms  p99 {result.p99_ms:7.2f} ms",
                    file=sys.stderr,
                )
        report(results, backend_kind, args, rss_mib(gateway.pid))
    finally:
        for process in reversed(processes):
            process.stop(signal.SIGTERM)
        shutil.rmtree(workdir, ignore_errors=True)


def report(
    results: dict[str, list[Result]], backend: str, args: argparse.Namespace, rss: float
) -> None:
    medians = {
        name: Result(
            statistics.median(r.rps for r in runs),
            statistics.median(r.p50_ms for r in runs),
            statistics.median(r.p99_ms for r in runs),
        )
        for name, runs in results.items()
    }
    direct = medians["direct"]
    print(
        f"\nKairos benchmark: backend = {backend}; wrk -t1 -c{args.connections} "
        f"-d{args.duration}s, {args.rounds} interleaved rounds, medians; {os.cpu_count()} cores"
    )
    print(f"{'target':28s} {'req/s':>10s} {'vs direct':>10s} {'p50 ms':>8s} {'p99 ms':>8s}")
    for name, result in medians.items():
        print(
            f"{name:28s} {result.rps:10.0f} {result.rps / direct.rps:10.2f} "
            f"{result.p50_ms:8.2f} {result.p99_ms:8.2f}"
        )
    if "nginx proxy" in medians:
        nginx = medians["nginx proxy"]
        for name in ("kairos bare", "kairos full"):
            print(f"{name} / nginx proxy throughput: {medians[name].rps / nginx.rps:.2f}")
    bare = medians["kairos bare"].rps
    for name in ("kairos full", "kairos ai cached", "kairos ai background"):
        print(f"{name} / kairos bare throughput: {medians[name].rps / bare:.2f}")
    print(f"gateway RSS after the run: {rss:.1f} MiB")
    if args.json:
        print(json.dumps({name: vars(result) for name, result in medians.items()}))


if __name__ == "__main__":
    main()
