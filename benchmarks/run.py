"""Kairos performance harness: the same load, direct and through each proxy, interleaved.

    .venv/bin/python benchmarks/run.py [--duration 6] [--rounds 3] [--connections 64]
        [--threads 1] [--latency-duration 8] [--latency-rounds 2]
        [--idle-connections 10000] [--swaps 20] [--aiohttp] [--json]

Everything runs as real processes on loopback:

- the backend: nginx answering ``return 200`` with a 1 KiB body (when nginx is installed, else
  the aiohttp test upstream, and the report says so);
- ``nginx proxy``: nginx as a keep-alive reverse proxy in front of it, the reference proxy;
- ``naive``: ``benchmarks/naive_proxy.py``, Sanic + one aiohttp session, what a user writes
  instead of a gateway;
- ``kairos bare``: a route without policies, the gateway at ``--log-level warning``;
  ``kairos bare info``: the same route on a second gateway at ``--log-level info`` (access log
  on); ``kairos full``: JWT, a rate limit never reached, retry policy, breaker, request and
  response transformations; ``kairos ai cached``: an AI route whose answer is cached (every
  request decided from the cache); ``kairos ai background``: background mode, every request new
  (routed at once by the fallback order, LLM calls off the request path; the LLM is the
  stand-in of ``tests/support/llm.py``).

Sections:

1. Throughput (``--rounds``, 0 skips it): each round runs wrk (``-t1 -c64`` by default) against
   every target in turn, so drift of a shared machine hits all targets alike. Per target, the
   medians over rounds of requests/s, p50, p99, and the CPU time of the proxy's process group
   (utime + stime from ``/proc``, before and after each wrk run) per request completed; for
   nginx its master and worker. Ratios to the naive peer and to the nginx proxy, and the
   issue's targets, each met or missed.
2. Added latency (``--latency-rounds``, 0 skips it): the open-loop generator of
   ``benchmarks/openloop.py`` sends at half of ``kairos bare``'s median requests/s, to direct,
   nginx proxy and kairos bare in turn; latency counts from each request's due time. Kairos's
   p50 and p99 minus direct's are the latency it adds. The generator reports its own achieved
   rate, CPU and send lag, so a run where it was the bottleneck shows.
3. ``--idle-connections N``: N idle keep-alive connections to a fresh gateway (see
   ``benchmarks/scale.py``): its RSS, and the latency of a small load beside them.
4. ``--swaps N``: N config swaps between two 1,000-route configs (``PUT /api/config``) under
   load: failed requests and the worst latency.

Progress goes to stderr; the report to stdout (``--json``: one JSON document instead, the text
report then goes to stderr). Needs wrk (``apt-get install wrk nginx-light``; ``make bench``
installs both). Nothing here runs in the test suite.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import jwt as pyjwt

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import openloop, scale, servers  # noqa: E402
from benchmarks.procstat import (  # noqa: E402
    busy_cpu_seconds,
    group_cpu_seconds,
    raise_fd_limit,
    rss_mb,
)
from benchmarks.wrk import Load, Request, WrkResult, run_wrk  # noqa: E402
from tests.support.procs import ManagedProcess, free_port  # noqa: E402

DIRECT, NGINX, NAIVE = "direct", "nginx proxy", "naive"
BARE, BARE_INFO, FULL = "kairos bare", "kairos bare info", "kairos full"
AI_CACHED, AI_BACKGROUND, BARE_AIOHTTP = (
    "kairos ai cached",
    "kairos ai background",
    "kairos bare aiohttp client",
)

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


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- the environment ----------------------------------------------------------------------------


@dataclass
class Target:
    """A URL to load and the process group whose CPU time it costs."""

    name: str
    request: Request
    cpu_pid: int


@dataclass
class Environment:
    """Everything the sections share: the backend, the proxies and their targets."""

    workdir: Path
    backend: str
    backend_port: int
    targets: dict[str, Target] = field(default_factory=dict)
    processes: list[ManagedProcess] = field(default_factory=list)
    gateway_pids: dict[str, int] = field(default_factory=dict)

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop(signal.SIGTERM)


class Neighbours:
    """How much CPU the processes outside the benchmark take: the harness's own (and its waited
    children: wrk, the open-loop generator) and the servers' process groups are subtracted
    from the machine's busy time (``/proc/stat``)."""

    def __init__(self, env: Environment) -> None:
        self.env = env

    def mark(self) -> tuple[float, float, float]:
        return time.monotonic(), busy_cpu_seconds(), self._ours()

    def percent_since(self, mark: tuple[float, float, float]) -> float:
        """Other processes' CPU since ``mark``, in % of the whole machine."""
        started, machine, ours = mark
        elapsed = time.monotonic() - started
        other = (busy_cpu_seconds() - machine) - (self._ours() - ours)
        return max(0.0, round(100 * other / (elapsed * (os.cpu_count() or 1)), 1))

    def wait_quiet(self, below_percent: float, timeout_s: float) -> None:
        """Wait (up to ``timeout_s``) until others take less than ``below_percent`` over 3 s."""
        if below_percent <= 0:
            return
        deadline = time.monotonic() + timeout_s
        while True:
            mark = self.mark()
            time.sleep(3)
            busy = self.percent_since(mark)
            if busy < below_percent:
                return
            if time.monotonic() > deadline:
                log(f"other processes still use {busy:.0f}% of the machine; going on anyway")
                return
            log(f"waiting for a quiet machine: other processes use {busy:.0f}%")

    def _ours(self) -> float:
        who = (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
        usage = sum(u.ru_utime + u.ru_stime for u in map(resource.getrusage, who))
        return usage + sum(group_cpu_seconds(p.pid) for p in self.env.processes if p.running)


def start_environment(workdir: Path, with_aiohttp: bool) -> Environment:
    backend_port = free_port()
    if servers.nginx_binary() is not None:
        backend = servers.start_nginx(workdir, backend_port)
        env = Environment(workdir, "nginx return 200, 1 KiB body", backend_port)
    else:
        backend = servers.start_upstream(backend_port)
        env = Environment(workdir, "aiohttp test upstream (nginx is not installed)", backend_port)
    env.processes.append(backend)
    try:
        _start_targets(env, with_aiohttp)
    except BaseException:
        env.stop()
        raise
    return env


def _start_targets(env: Environment, with_aiohttp: bool) -> None:
    backend_url = f"http://{servers.LOOPBACK}:{env.backend_port}/"
    env.targets[DIRECT] = Target(DIRECT, Request(backend_url), env.processes[0].pid)
    if servers.nginx_binary() is not None:
        port = free_port()
        nginx = servers.start_nginx(env.workdir, port, env.backend_port)
        env.processes.append(nginx)
        env.targets[NGINX] = Target(NGINX, Request(f"http://{servers.LOOPBACK}:{port}/"), nginx.pid)
    port = free_port()
    naive = servers.start_naive(port, env.backend_port)
    env.processes.append(naive)
    env.targets[NAIVE] = Target(NAIVE, Request(f"http://{servers.LOOPBACK}:{port}/"), naive.pid)

    llm_port = free_port()
    env.processes.append(servers.start_llm(llm_port))
    config = servers.throughput_config(env.backend_port, f"http://{servers.LOOPBACK}:{llm_port}")
    gateway = servers.start_gateway(env.workdir, "kairos", config)
    env.processes.append(gateway.process)
    env.gateway_pids["kairos"] = gateway.pid
    info_config = servers.base_config()
    info_config["routers"] = [servers.bare_route(env.backend_port)]
    info = servers.start_gateway(env.workdir, "kairos-info", info_config, log_level="info")
    env.processes.append(info.process)
    env.gateway_pids["kairos-info"] = info.pid

    token = pyjwt.encode({"sub": "bench", "exp": time.time() + 3600}, servers.JWT_SECRET, "HS256")
    cached, fresh = env.workdir / "cached.lua", env.workdir / "fresh.lua"
    cached.write_text(CACHED_CHAT)
    fresh.write_text(NEW_CHAT_EACH_TIME)
    targets = [
        Target(BARE, Request(f"{gateway.url}/bare"), gateway.pid),
        Target(BARE_INFO, Request(f"{info.url}/bare"), info.pid),
        Target(FULL, Request(f"{gateway.url}/full/7", {"Authorization": f"Bearer {token}"}), 0),
        Target(AI_CACHED, Request(f"{gateway.url}/ai/cached", script=cached), 0),
        Target(AI_BACKGROUND, Request(f"{gateway.url}/ai/background", script=fresh), 0),
    ]
    if with_aiohttp:
        other_config = servers.base_config()
        other_config["routers"] = [servers.bare_route(env.backend_port)]
        other = servers.start_gateway(
            env.workdir, "kairos-aiohttp", other_config, extra_args=["--upstream-client", "aiohttp"]
        )
        env.processes.append(other.process)
        targets.insert(2, Target(BARE_AIOHTTP, Request(f"{other.url}/bare"), other.pid))
    for target in targets:
        target.cpu_pid = target.cpu_pid or gateway.pid
        env.targets[target.name] = target


# --- throughput ---------------------------------------------------------------------------------


@dataclass
class Throughput:
    """One target's medians over the rounds (and every round, for the JSON)."""

    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us_per_request: float
    kernel_us_per_request: float
    busy_percent: float
    failures: int
    other_cpu_percent: list[float]
    rounds: list[WrkResult]

    @classmethod
    def of(cls, rounds: list[WrkResult], other_cpu_percent: list[float]) -> Throughput:
        return cls(
            rps=statistics.median(r.rps for r in rounds),
            p50_ms=statistics.median(r.p50_ms for r in rounds),
            p99_ms=statistics.median(r.p99_ms for r in rounds),
            cpu_us_per_request=statistics.median(r.cpu_us_per_request for r in rounds),
            kernel_us_per_request=statistics.median(r.kernel_us_per_request for r in rounds),
            busy_percent=statistics.median(r.cpu_us_per_request * r.rps / 1e4 for r in rounds),
            failures=sum(r.failures for r in rounds),
            other_cpu_percent=other_cpu_percent,
            rounds=rounds,
        )


def measure_throughput(
    env: Environment, load: Load, rounds: int, quiet: Callable[[], None]
) -> dict[str, Throughput]:
    log(f"warm-up: 1 s of {load.describe()} per target")
    for target in env.targets.values():  # connections, code paths, the AI cache
        run_wrk(target.request, Load(load.threads, load.connections, 1))
    results: dict[str, list[WrkResult]] = {name: [] for name in env.targets}
    others: dict[str, list[float]] = {name: [] for name in env.targets}
    neighbours = Neighbours(env)
    for round_number in range(1, rounds + 1):
        quiet()
        for name, target in env.targets.items():
            mark = neighbours.mark()
            result = run_wrk(target.request, load, target.cpu_pid)
            others[name].append(neighbours.percent_since(mark))
            results[name].append(result)
            log(
                f"round {round_number} {name:27s} {result.rps:9.0f} req/s  "
                f"p50 {result.p50_ms:6.2f} ms  p99 {result.p99_ms:6.2f} ms  "
                f"CPU {result.cpu_us_per_request:6.1f} µs/req "
                f"({result.cpu_us_per_request * result.rps / 1e4:3.0f}% busy)  "
                f"failures {result.failures}  others {others[name][-1]:.0f}%"
            )
    return {name: Throughput.of(runs, others[name]) for name, runs in results.items()}


# --- added latency ------------------------------------------------------------------------------


@dataclass
class OpenLoopTarget:
    """One target's open-loop figures, medians over the rounds."""

    achieved_rps: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    send_lag_p99_ms: float
    generator_cpu_percent: float
    failures: int
    rounds: list[openloop.Report]


@dataclass
class AddedLatency:
    rate: float
    duration_s: float
    connections: int
    targets: dict[str, OpenLoopTarget]
    added_p50_ms: float
    added_p99_ms: float
    generator_limited: bool


def measure_added_latency(
    env: Environment,
    saturation_rps: float,
    duration_s: float,
    rounds: int,
    connections: int,
    quiet: Callable[[], None],
) -> AddedLatency:
    rate = round(saturation_rps / 2)
    names = [name for name in (DIRECT, NGINX, BARE) if name in env.targets]
    reports: dict[str, list[openloop.Report]] = {name: [] for name in names}
    for round_number in range(1, rounds + 1):
        quiet()
        for name in names:
            target = env.targets[name]
            report = openloop.measure(
                target.request.url,
                rate,
                duration_s,
                connections=connections,
                headers=target.request.headers,
            )
            reports[name].append(report)
            log(
                f"open loop {round_number} {name:13s} {report.achieved_rps:7.0f}/{rate} req/s  "
                f"p50 {report.latency_ms.p50:6.3f} ms  p99 {report.latency_ms.p99:6.3f} ms  "
                f"max {report.latency_ms.max:6.1f} ms  send lag p99 "
                f"{report.send_lag_ms.p99:5.3f} ms  generator CPU {report.cpu_percent:.0f}%"
            )
    targets = {
        name: OpenLoopTarget(
            achieved_rps=statistics.median(r.achieved_rps for r in runs),
            p50_ms=statistics.median(r.latency_ms.p50 for r in runs),
            p99_ms=statistics.median(r.latency_ms.p99 for r in runs),
            max_ms=max(r.latency_ms.max for r in runs),
            send_lag_p99_ms=statistics.median(r.send_lag_ms.p99 for r in runs),
            generator_cpu_percent=max(r.cpu_percent for r in runs),
            failures=sum(failures(r) for r in runs),
            rounds=runs,
        )
        for name, runs in reports.items()
    }
    direct, bare = targets[DIRECT], targets[BARE]
    limited = any(
        r.achieved_rps < 0.98 * rate or r.cpu_percent > 90 for r in reports[DIRECT]
    )  # against the fastest server, falling short can only be the generator
    return AddedLatency(
        rate=rate,
        duration_s=duration_s,
        connections=connections,
        targets=targets,
        added_p50_ms=round(bare.p50_ms - direct.p50_ms, 3),
        added_p99_ms=round(bare.p99_ms - direct.p99_ms, 3),
        generator_limited=limited,
    )


def failures(report: openloop.Report) -> int:
    """Answers other than 2xx, broken connections and unanswered requests."""
    bad = sum(n for code, n in report.statuses.items() if not code.startswith("2"))
    return bad + report.errors + report.unfinished


# --- the targets ------------------------------------------------------------------------


@dataclass
class Check:
    """One of the issue's targets: ``value`` against ``bound`` (at least, or at most)."""

    name: str
    value: float
    bound: float
    at_least: bool
    unit: str = ""

    @property
    def met(self) -> bool:
        return self.value >= self.bound if self.at_least else self.value <= self.bound

    def line(self) -> str:
        sign = "≥" if self.at_least else "≤"
        verdict = "met" if self.met else "MISSED"
        value = f"{self.value:.2f}{self.unit}"
        bound = f"{sign} {self.bound:g}{self.unit}"
        return f"  {self.name:42s} {value:>12s}  target {bound:12s} {verdict}"


def ratio(results: dict[str, Throughput], over: str, under: str) -> float | None:
    if over not in results or under not in results:
        return None
    return results[over].rps / results[under].rps


def checks_of(report: dict[str, Any]) -> list[Check]:
    checks: list[Check] = []
    throughput: dict[str, Throughput] | None = report.get("throughput")
    if throughput:
        pairs = [
            ("kairos bare ÷ naive", BARE, NAIVE, 4.0),
            ("kairos bare ÷ nginx proxy", BARE, NGINX, 0.5),
            ("kairos full ÷ kairos bare", FULL, BARE, 0.8),
            ("kairos bare info ÷ kairos bare (warning)", BARE_INFO, BARE, 0.9),
        ]
        for name, over, under, bound in pairs:
            value = ratio(throughput, over, under)
            if value is not None:
                checks.append(Check(name, value, bound, at_least=True))
        bare_cpu = throughput[BARE].cpu_us_per_request
        checks.insert(2, Check("kairos bare CPU per request", bare_cpu, 90, False, " µs"))
    latency: AddedLatency | None = report.get("latency")
    if latency is not None:
        for name, added, bound in (
            ("p50", latency.added_p50_ms, 0.3),
            ("p99", latency.added_p99_ms, 2.0),
        ):
            checks.append(
                Check(f"latency added at half saturation, {name}", added, bound, False, " ms")
            )
    idle: scale.IdleResult | None = report.get("idle")
    if idle is not None:
        checks.append(
            Check(
                f"RSS with {idle.connections:,} idle connections",
                idle.rss_with_idle_mb,
                300,
                at_least=False,
                unit=" MB",
            )
        )
    swaps: scale.SwapResult | None = report.get("swaps")
    if swaps is not None:
        checks.append(
            Check(
                f"failed requests during {swaps.swaps} swaps",
                swaps.during.failed,
                0,
                False,
            )
        )
    return checks


# --- the report ---------------------------------------------------------------------------------


def machine_facts() -> dict[str, Any]:
    def first_line(args: list[str]) -> str:
        try:
            done = subprocess.run(args, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return "not installed"
        return (
            (done.stdout + done.stderr).strip().splitlines()[0]
            if done.stdout or done.stderr
            else ""
        )

    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    commit = first_line(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    dirty = first_line(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"])
    return {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "commit": commit + (" (with uncommitted changes)" if dirty else ""),
        "cores": os.cpu_count(),
        "cpu": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "nginx": first_line([servers.nginx_binary() or "nginx", "-v"]),
        "wrk": first_line(["wrk", "-v"]).split(" Copyright")[0],
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
    }


def print_report(report: dict[str, Any], out: Any) -> None:
    def say(text: str = "") -> None:
        print(text, file=out)

    facts = report["machine"]
    say(f"Kairos benchmark, {facts['date']}, commit {facts['commit']}")
    say(
        f"machine: {facts['cores']} cores ({facts['cpu']}), Linux {facts['kernel']}, "
        f"Python {facts['python']}, {facts['nginx']}, {facts['wrk']}"
    )
    load = facts["load_average_before"]
    say(f"load average before the run: {load[0]} {load[1]} {load[2]} (1, 5, 15 min)")
    throughput: dict[str, Throughput] | None = report.get("throughput")
    if throughput:
        per_run = [x for t in throughput.values() for x in t.other_cpu_percent]
        say(
            "CPU used by other processes during the wrk runs: mean "
            f"{statistics.mean(per_run):.1f}% of the machine, median "
            f"{statistics.median(per_run):.1f}%, max {max(per_run):.1f}% "
            "(what the benchmark's processes left idle, others may take)"
        )
        if statistics.median(per_run) > 10:
            say("WARNING: the machine was not quiet; compare these figures with care")
    if throughput:
        settings = report["settings"]
        say()
        say(
            f"Throughput: {settings['load']}, {settings['rounds']} interleaved rounds, medians; "
            f"backend: {report['backend']}"
        )
        say(
            f"{'target':27s} {'req/s':>9s} {'× naive':>8s} {'× nginx proxy':>13s} {'p50 ms':>7s} "
            f"{'p99 ms':>7s} {'CPU µs/req':>10s} {'kernel':>6s} {'busy':>5s} {'failed':>6s}"
        )
        for name, result in throughput.items():
            vs_naive = ratio(throughput, name, NAIVE)
            vs_nginx = ratio(throughput, name, NGINX)
            say(
                f"{name:27s} {result.rps:9,.0f} {_maybe(vs_naive):>8s} {_maybe(vs_nginx):>13s} "
                f"{result.p50_ms:7.2f} {result.p99_ms:7.2f} "
                f"{result.cpu_us_per_request:10.1f} {result.kernel_us_per_request:6.1f} "
                f"{result.busy_percent:4.0f}% {result.failures:6d}"
            )
        say(
            "(CPU µs/req: the proxy's process group per request, for direct the backend's; "
            "kernel: the part spent in system calls; busy: its CPU time over the run, in % of "
            "one core: a one-process proxy that wrk saturates and that gets a core to itself is "
            "near 100%)"
        )
        bare = throughput[BARE].rps
        for name in (FULL, AI_CACHED, AI_BACKGROUND, BARE_AIOHTTP, BARE_INFO):
            if name in throughput:
                say(f"{name} ÷ kairos bare: {throughput[name].rps / bare:.2f}")
    latency: AddedLatency | None = report.get("latency")
    if latency is not None:
        say()
        say(
            f"Added latency: open loop at {latency.rate:,.0f} req/s (half of kairos bare's "
            f"req/s), {latency.connections} connections, {latency.duration_s:g} s, median of "
            f"{len(latency.targets[DIRECT].rounds)} rounds; latency from each request's due time"
        )
        say(
            f"{'target':13s} {'answered/s':>10s} {'p50 ms':>7s} {'p99 ms':>7s} {'max ms':>7s} "
            f"{'failed':>6s} {'generator: CPU':>14s} {'send lag p99':>12s}"
        )
        for name, t in latency.targets.items():
            say(
                f"{name:13s} {t.achieved_rps:10,.0f} {t.p50_ms:7.3f} {t.p99_ms:7.3f} "
                f"{t.max_ms:7.1f} {t.failures:6d} {t.generator_cpu_percent:13.0f}% "
                f"{t.send_lag_p99_ms:9.3f} ms"
            )
        say(
            f"added by kairos bare: p50 {latency.added_p50_ms:+.3f} ms, "
            f"p99 {latency.added_p99_ms:+.3f} ms"
        )
        if latency.generator_limited:
            say("WARNING: the generator fell short against direct: it was the bottleneck")
    idle: scale.IdleResult | None = report.get("idle")
    if idle is not None:
        say()
        for line in scale.describe_idle(idle):
            say(line)
    swaps: scale.SwapResult | None = report.get("swaps")
    if swaps is not None:
        say()
        for line in scale.describe_swaps(swaps):
            say(line)
    checks: list[Check] = report["checks"]
    if checks:
        say()
        say("Issue targets")
        for check in checks:
            say(check.line())
    end = facts.get("load_average_after")
    if end:
        say()
        say(f"load average after the run: {end[0]} {end[1]} {end[2]}")


def _maybe(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def to_json(report: dict[str, Any]) -> str:
    def default(value: Any) -> Any:
        if hasattr(value, "__dataclass_fields__"):
            data = asdict(value)
            if isinstance(value, Check):
                data["met"] = value.met
            return data
        raise TypeError(f"{type(value).__name__} is not JSON serialisable")

    return json.dumps(report, default=default, indent=2)


# --- main ---------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=6, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (0: skip)")
    parser.add_argument("--connections", type=int, default=64, help="wrk -c and open-loop")
    parser.add_argument("--threads", type=int, default=1, help="wrk -t")
    parser.add_argument("--latency-duration", type=float, default=8, help="open-loop seconds")
    parser.add_argument(
        "--latency-rounds", type=int, default=2, help="open-loop rounds (0: skip the section)"
    )
    parser.add_argument(
        "--idle-connections", type=int, default=0, help="idle keep-alive connections (0: skip)"
    )
    parser.add_argument("--idle-rate", type=float, default=500, help="req/s of the load beside")
    parser.add_argument("--swaps", type=int, default=0, help="config swaps under load (0: skip)")
    parser.add_argument("--swap-routes", type=int, default=1000)
    parser.add_argument("--swap-rate", type=float, default=1000, help="req/s during the swaps")
    parser.add_argument(
        "--aiohttp", action="store_true", help="also a gateway on the aiohttp upstream client"
    )
    parser.add_argument(
        "--quiet-below",
        type=float,
        default=0,
        metavar="PERCENT",
        help="before each round, wait until other processes use less of the machine (0: never)",
    )
    parser.add_argument("--quiet-wait-s", type=float, default=600, help="longest such wait")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.rounds and shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install wrk (or make bench)")
    if args.idle_connections:
        wanted = args.idle_connections + 4096  # the gateway inherits the limit
        if raise_fd_limit(wanted) < wanted:
            raise SystemExit(
                f"the fd limit cannot be raised to {wanted}: lower --idle-connections "
                "or raise the hard limit (ulimit -Hn)"
            )
    report: dict[str, Any] = {"machine": machine_facts(), "checks": []}
    load = Load(args.threads, args.connections, args.duration)
    report["settings"] = {"load": load.describe(), "rounds": args.rounds, **vars(args)}
    workdir = Path(tempfile.mkdtemp(prefix="kairos-bench-"))
    env = start_environment(workdir, args.aiohttp)
    report["backend"] = env.backend
    try:
        neighbours = Neighbours(env)

        def quiet() -> None:
            neighbours.wait_quiet(args.quiet_below, args.quiet_wait_s)

        if args.rounds:
            report["throughput"] = measure_throughput(env, load, args.rounds, quiet)
            if args.latency_rounds:
                report["latency"] = measure_added_latency(
                    env,
                    report["throughput"][BARE].rps,
                    args.latency_duration,
                    args.latency_rounds,
                    args.connections,
                    quiet,
                )
            report["gateway_rss_mb"] = {
                name: round(rss_mb(pid), 1) for name, pid in env.gateway_pids.items()
            }
        if args.idle_connections:
            quiet()
            report["idle"] = scale.measure_idle_connections(
                workdir, env.backend_port, args.idle_connections, args.idle_rate, log
            )
        if args.swaps:
            quiet()
            report["swaps"] = scale.measure_config_swaps(
                workdir, env.backend_port, args.swaps, args.swap_routes, args.swap_rate, log
            )
    finally:
        env.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    report["machine"]["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    report["checks"] = checks_of(report)
    if args.json:
        print_report(report, sys.stderr)
        print(to_json(report))
    else:
        print_report(report, sys.stdout)


if __name__ == "__main__":
    main()
