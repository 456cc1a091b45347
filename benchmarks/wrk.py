"""wrk, run and read: one closed-loop run against one URL, with the CPU its server spent.

``run_wrk`` runs ``wrk -tT -cC -dS --latency`` and reads requests/s, p50, p99, the requests
completed and the failures (non-2xx/3xx answers and socket errors) from its output. When
``cpu_pid`` is given, the CPU time (utime + stime) of that process group is read from ``/proc``
just before and just after, and divided by the requests completed; the kernel's part (stime)
is kept apart too.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.procstat import group_cpu_times


@dataclass(frozen=True)
class Load:
    """How wrk loads a target: threads, connections, seconds per run."""

    threads: int = 1
    connections: int = 64
    duration_s: int = 6

    def describe(self) -> str:
        return f"wrk -t{self.threads} -c{self.connections} -d{self.duration_s}s --latency"


@dataclass(frozen=True)
class Request:
    """What wrk sends: a URL, extra headers, and optionally a Lua script (POST bodies)."""

    url: str
    headers: dict[str, str] = field(default_factory=dict)
    script: Path | None = None


@dataclass(frozen=True)
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    failures: int
    cpu_us_per_request: float
    kernel_us_per_request: float


def run_wrk(request: Request, load: Load, cpu_pid: int | None = None) -> WrkResult:
    args = ["wrk", f"-t{load.threads}", f"-c{load.connections}", f"-d{load.duration_s}s"]
    args.append("--latency")
    for name, value in request.headers.items():
        args += ["-H", f"{name}: {value}"]
    if request.script is not None:
        args += ["-s", str(request.script)]
    before = group_cpu_times(cpu_pid) if cpu_pid is not None else (0.0, 0.0)
    completed = subprocess.run([*args, request.url], capture_output=True, text=True, check=True)
    if cpu_pid is None:
        return parse_wrk(completed.stdout)
    after = group_cpu_times(cpu_pid)
    user_s, kernel_s = after[0] - before[0], after[1] - before[1]
    return parse_wrk(completed.stdout, user_s + kernel_s, kernel_s)


def parse_wrk(
    output: str, cpu_s: float = float("nan"), kernel_s: float = float("nan")
) -> WrkResult:
    def number(pattern: str) -> float:
        match = re.search(pattern, output, re.M)
        if match is None:
            raise ValueError(f"wrk output without {pattern!r}:\n{output}")
        return float(match.group(1))

    def latency_ms(percent: str) -> float:
        match = re.search(rf"^\s+{percent}%\s+([\d.]+)(us|ms|s)\s*$", output, re.M)
        if match is None:
            return float("nan")
        value, unit = float(match.group(1)), match.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    requests = int(number(r"^\s*(\d+) requests in"))
    failures = 0
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    if non_2xx is not None:
        failures += int(non_2xx.group(1))
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    if socket_errors is not None:
        failures += sum(int(n) for n in socket_errors.groups())
    return WrkResult(
        rps=number(r"Requests/sec:\s+([\d.]+)"),
        p50_ms=latency_ms("50"),
        p99_ms=latency_ms("99"),
        requests=requests,
        failures=failures,
        cpu_us_per_request=cpu_s * 1e6 / requests if requests else float("nan"),
        kernel_us_per_request=kernel_s * 1e6 / requests if requests else float("nan"),
    )
