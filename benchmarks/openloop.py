"""An open-loop HTTP/1.1 load generator: GET requests at a fixed rate, latency from the due time.

    .venv/bin/python benchmarks/openloop.py URL --rate 3000 [--duration 10] [--warmup 1]
        [--connections 64] [--header "Name: value"] [--json]

A closed-loop tool (wrk) sends a connection's next request when the previous answer arrives, so
a stall of the server also stalls the load, and the requests that should have been sent during
the stall are never measured (coordinated omission). Here request ``i`` falls due at
``start + i / rate`` whatever happened before, and its latency runs from that due time to the
last byte of its response: a 20 ms stall shows as the latency of every request due during it.

How it works: ``--connections`` keep-alive connections are opened, and each used once, before
the clock starts. One thread loops: it writes every request now due on an idle connection (when
none is idle the request waits in a backlog, its latency still counted from its due time), then
waits for a response or the next due time, whichever comes first, parses what arrived with
httptools and hands each freed connection to the oldest waiting request or back to the idle set.
The wait is a ``select()`` on the epoll descriptor, whose timeout has microsecond precision (an
event loop's timers have milliseconds), with the timer slack set to 1 ns. A connection the server
closes is counted (as an error when a request was on it) and opened again.

Only requests due after ``--warmup`` seconds are measured. The report:

- ``achieved_rps``: responses to measured requests per second of the measured window; it falls
  short of ``rate`` when the server (or the generator) cannot keep up;
- ``latency_ms``: p50, p90, p99, p99.9 and max from the due time; ``service_ms``: the same from
  the moment the request was written (what a closed-loop tool reports);
- ``send_lag_ms``: how late the sender wrote the requests that found an idle connection. This is
  the generator's own delay: when its p99 nears the latencies measured, or ``cpu_percent`` (the
  generator's CPU time over the run, 100 = one core) nears 100, the generator is the bottleneck;
- ``statuses`` (count per status code), ``errors`` (connections closed or broken under a
  request), ``unfinished`` (requests still unanswered ``--drain-s`` after the last was due).

``--samples FILE`` writes every measured response's due time and latency, to see when the slow
ones happened (a stall once a second shows as a column of them). SIGTERM or SIGINT ends the run
early; the results so far are still printed.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import resource
import select
import signal
import socket
import subprocess
import sys
import time
from collections import Counter, deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httptools

clock = time.perf_counter
RECV_BYTES = 256 * 1024
PR_SET_TIMERSLACK = 29


@dataclass
class Percentiles:
    """Latency percentiles in milliseconds (nearest rank); zeros when nothing was measured."""

    p50: float = 0.0
    p90: float = 0.0
    p99: float = 0.0
    p999: float = 0.0
    max: float = 0.0

    @classmethod
    def of(cls, seconds: list[float]) -> Percentiles:
        if not seconds:
            return cls()
        ordered = sorted(seconds)

        def at(fraction: float) -> float:
            index = min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))
            return round(ordered[index] * 1000, 3)

        return cls(at(0.50), at(0.90), at(0.99), at(0.999), round(ordered[-1] * 1000, 3))


@dataclass
class Report:
    """What one run measured; see the module docstring for each figure."""

    url: str
    rate: float
    connections: int
    duration_s: float
    warmup_s: float
    measured_window_s: float = 0.0
    sent: int = 0
    completed: int = 0
    achieved_rps: float = 0.0
    latency_ms: Percentiles = field(default_factory=Percentiles)
    service_ms: Percentiles = field(default_factory=Percentiles)
    send_lag_ms: Percentiles = field(default_factory=Percentiles)
    max_backlog: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    errors: int = 0
    unfinished: int = 0
    cpu_percent: float = 0.0
    stopped_early: bool = False


class _Connection:
    """One keep-alive connection and the request on it (at most one: no pipelining)."""

    __slots__ = ("busy", "done", "due", "keep_alive", "parser", "sent", "sock")

    def __init__(self, address: tuple[str, int]) -> None:
        self.sock = socket.create_connection(address)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.parser = httptools.HttpResponseParser(self)
        self.due = 0.0
        self.sent = 0.0
        self.busy = False
        self.done = False
        self.keep_alive = True

    def on_headers_complete(self) -> None:  # httptools callback (only valid here)
        self.keep_alive = self.parser.should_keep_alive()

    def on_message_complete(self) -> None:  # httptools callback
        self.done = True


class OpenLoop:
    """One run: ``run()`` blocks for warm-up + duration (+ the drain) and returns the report."""

    def __init__(
        self,
        url: str,
        rate: float,
        duration_s: float,
        *,
        connections: int = 64,
        warmup_s: float = 1.0,
        headers: dict[str, str] | None = None,
        drain_s: float = 5.0,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or parts.hostname is None:
            raise ValueError(f"only http:// URLs with a host are supported, not {url!r}")
        self.address = (parts.hostname, parts.port or 80)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        lines = [f"GET {target} HTTP/1.1", f"Host: {parts.netloc}"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        self.request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self.report = Report(url, rate, connections, duration_s, warmup_s)
        self.interval_s = 1.0 / rate
        self.drain_s = drain_s
        self.stopped = False
        self._poller = select.epoll()
        self._by_fd: dict[int, _Connection] = {}
        self._idle: list[_Connection] = []
        self._backlog: deque[float] = deque()
        self._in_flight = 0
        self._measure_from = 0.0
        self._latencies: list[float] = []
        self._due: list[float] = []
        self._services: list[float] = []
        self._lags: list[float] = []
        self._statuses: Counter[int] = Counter()

    def stop(self) -> None:
        """End the run at the next turn of the loop (safe from a signal handler)."""
        self.stopped = True

    def samples(self) -> list[tuple[float, float]]:
        """(due time in s from the start of the measured window, latency in ms) of every
        measured response, in the order they arrived."""
        return [
            (due, latency * 1000) for due, latency in zip(self._due, self._latencies, strict=True)
        ]

    def run(self) -> Report:
        for _ in range(self.report.connections):
            connection = self._open_warm()
            self._add(connection)
            self._idle.append(connection)
        precise_timers()
        gc.collect()
        gc.disable()  # a collection would show up as the generator's own lag
        cpu_before = _cpu_seconds()
        start = clock() + 0.01
        self._measure_from = start + self.report.warmup_s
        end = self._measure_from + self.report.duration_s
        measured_until = self._loop(start, end)
        cpu_s = _cpu_seconds() - cpu_before
        gc.enable()
        report = self.report
        report.measured_window_s = round(max(0.0, measured_until - self._measure_from), 3)
        report.completed = len(self._latencies)
        if report.measured_window_s > 0:
            report.achieved_rps = round(report.completed / report.measured_window_s, 1)
        report.latency_ms = Percentiles.of(self._latencies)
        report.service_ms = Percentiles.of(self._services)
        report.send_lag_ms = Percentiles.of(self._lags)
        report.statuses = {str(code): n for code, n in sorted(self._statuses.items())}
        report.unfinished = self._in_flight + len(self._backlog)
        report.cpu_percent = round(100 * cpu_s / max(1e-9, clock() - start), 1)
        report.stopped_early = self.stopped
        for connection in self._by_fd.values():
            connection.sock.close()
        self._poller.close()
        return report

    def _loop(self, start: float, end: float) -> float:
        """Send what is due, read what arrived, wait for the next due time or a response; the
        time sending ended."""
        index, due, sending_ended = 0, start, 0.0
        idle, backlog, interval, measure_from = (
            self._idle,
            self._backlog,
            self.interval_s,
            self._measure_from,
        )
        poller, by_fd, wait = self._poller, self._by_fd, select.select
        while True:
            now = clock()
            if not sending_ended:
                while due <= now:
                    if due >= end or self.stopped:
                        sending_ended = min(now, end)
                        break
                    if idle:
                        if due >= measure_from:
                            self._lags.append(now - due)
                        self._write(idle.pop(), due, now)
                    else:
                        backlog.append(due)
                        self.report.max_backlog = max(self.report.max_backlog, len(backlog))
                    if due >= measure_from:
                        self.report.sent += 1
                    index += 1
                    due = start + index * interval
            if sending_ended:
                if (self._in_flight == 0 and not backlog) or now > sending_ended + self.drain_s:
                    return sending_ended
                timeout = 0.05
            else:
                timeout = due - now
            # select() waits with microsecond precision (epoll's own timeout is in milliseconds)
            readable, _, _ = wait([poller], [], [], max(0.0, timeout))
            if not readable:
                continue
            for fd, _ in poller.poll(0):
                connection = by_fd[fd]
                try:
                    data = connection.sock.recv(RECV_BYTES)
                except OSError:
                    data = b""
                if not data:
                    self._broken(connection)
                    continue
                try:
                    connection.parser.feed_data(data)
                except httptools.HttpParserError:
                    self._broken(connection)
                    continue
                if connection.done:
                    self._answered(connection)

    def _write(self, connection: _Connection, due: float, now: float) -> None:
        connection.due, connection.sent = due, now
        connection.busy, connection.done = True, False
        self._in_flight += 1
        with contextlib.suppress(OSError):  # the loop sees the broken connection, counts it
            connection.sock.sendall(self.request)

    def _answered(self, connection: _Connection) -> None:
        now = clock()
        connection.busy = False
        self._in_flight -= 1
        if connection.due >= self._measure_from:
            self._latencies.append(now - connection.due)
            self._due.append(connection.due - self._measure_from)
            self._services.append(now - connection.sent)
            self._statuses[connection.parser.get_status_code()] += 1
        if not connection.keep_alive:
            self._broken(connection)
            return
        self._available(connection)

    def _broken(self, connection: _Connection) -> None:
        """The server closed the connection, or it broke: count the request on it, open another."""
        if connection.busy:
            connection.busy = False
            self._in_flight -= 1
            if connection.due >= self._measure_from:
                self.report.errors += 1
        elif connection in self._idle:
            self._idle.remove(connection)
        self._poller.unregister(connection.sock)
        del self._by_fd[connection.sock.fileno()]
        connection.sock.close()
        try:
            replacement = _Connection(self.address)
        except OSError:
            return  # one connection fewer
        self._add(replacement)
        self._available(replacement)

    def _available(self, connection: _Connection) -> None:
        if self._backlog:
            self._write(connection, self._backlog.popleft(), clock())
        else:
            self._idle.append(connection)

    def _add(self, connection: _Connection) -> None:
        self._by_fd[connection.sock.fileno()] = connection
        self._poller.register(connection.sock, select.EPOLLIN)

    def _open_warm(self) -> _Connection:
        connection = _Connection(self.address)
        connection.sock.sendall(self.request)
        while not connection.done:
            data = connection.sock.recv(RECV_BYTES)
            if not data:
                raise ConnectionError(f"{self.address} closed the connection while warming up")
            connection.parser.feed_data(data)
        return connection


def precise_timers() -> None:
    """Ask Linux for 1 ns timer slack (50 µs by default), so waits end when they should."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_TIMERSLACK, 1, 0, 0, 0)


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def parse_header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep:
        raise argparse.ArgumentTypeError(f"a header is 'Name: value', not {text!r}")
    return name.strip(), value.strip()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--rate", type=float, required=True, help="requests per second")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds sent, not measured")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--header", type=parse_header, action="append", default=[])
    parser.add_argument("--drain-s", type=float, default=5.0)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--samples", type=Path, help="write 'due_s latency_ms' of every response to this file"
    )
    args = parser.parse_args(argv)
    run = OpenLoop(
        args.url,
        args.rate,
        args.duration,
        connections=args.connections,
        warmup_s=args.warmup,
        headers=dict(args.header),
        drain_s=args.drain_s,
    )
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: run.stop())
    report = run.run()
    if args.samples is not None:
        lines = (f"{due:.6f} {latency:.3f}\n" for due, latency in run.samples())
        args.samples.write_text("".join(lines))
    if args.json:
        print(json.dumps(asdict(report)))
        return
    print(format_report(report))


def format_report(report: Report) -> str:
    def line(name: str, p: Percentiles) -> str:
        return (
            f"{name:9s} p50 {p.p50:8.3f}  p90 {p.p90:8.3f}  p99 {p.p99:8.3f}  "
            f"p99.9 {p.p999:8.3f}  max {p.max:8.3f} ms"
        )

    return "\n".join(
        [
            f"{report.url}: {report.rate:.0f} req/s asked, {report.achieved_rps:.0f} answered/s "
            f"over {report.measured_window_s:.1f} s on {report.connections} connections",
            line("latency", report.latency_ms),
            line("service", report.service_ms),
            line("send lag", report.send_lag_ms),
            f"statuses {report.statuses}  errors {report.errors}  unfinished "
            f"{report.unfinished}  max backlog {report.max_backlog}  "
            f"generator CPU {report.cpu_percent:.0f}%",
        ]
    )


def spawn(
    url: str,
    rate: float,
    duration_s: float,
    *,
    connections: int = 64,
    warmup_s: float = 1.0,
    headers: dict[str, str] | None = None,
) -> subprocess.Popen[str]:
    """This generator in its own process (so the caller's work never delays a send); read its
    report with ``collect``, or end it early with ``terminate()`` first."""
    args = [sys.executable, __file__, url, "--rate", str(rate), "--duration", str(duration_s)]
    args += ["--warmup", str(warmup_s), "--connections", str(connections), "--json"]
    for name, value in (headers or {}).items():
        args += ["--header", f"{name}: {value}"]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def collect(process: subprocess.Popen[str]) -> Report:
    """Wait for a spawned generator and read its report."""
    out, err = process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"the open-loop generator failed ({process.returncode}):\n{err}")
    data: dict[str, Any] = json.loads(out)
    for name in ("latency_ms", "service_ms", "send_lag_ms"):
        data[name] = Percentiles(**data[name])
    return Report(**data)


def measure(url: str, rate: float, duration_s: float, **options: Any) -> Report:
    """``spawn`` then ``collect``: one run, in its own process."""
    return collect(spawn(url, rate, duration_s, **options))


if __name__ == "__main__":
    main()
