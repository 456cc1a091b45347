"""``server.workers > 1``: Sanic's worker processes share the proxy port, and one admin process
answers the admin listener for the whole instance (DESIGN.md §8; needs ``cluster.redis_url``).

Processes, all forked from the main process once it has bound both listeners:

- **main**: Sanic's worker manager. It starts the others and stops them (at SIGTERM or SIGINT
  each drains as a single-process gateway does); a SIGHUP it receives is passed on to each.
- **N workers**: the proxy listener (the kernel hands each connection to one of them). Each has
  its own pipeline, upstream pool and breakers, kept in step with everyone's through Redis
  (:mod:`kairos_core.cluster`) exactly as separate instances are; rate-limit counters are in
  Redis.
- **the admin process**: the admin listener. It serves no proxied request. It mirrors breaker
  and health state through Redis like any member (never taking a trial lease), and learns from
  every worker, through a local queue (never through Redis: the instance's figures survive
  Redis going away), what the instance's answers need: each request's metrics sample, each AI
  decision, each local breaker transition and Redis link transition, and once a second each
  worker's config version, in-flight counts and link state. So ``/metrics``, ``/api/metrics``,
  the history, the events and the AI decision log count every worker's requests, once each.

Writes (route edits, ``PUT /api/config``, ``POST /api/config/reload``) are validated, written and
applied by the admin process, which then sends each worker SIGHUP (it reloads the file) and
answers once every live worker reports the new version (at most ``WRITE_SYNC_TIMEOUT_S``: a
worker that has not caught up by then still reloads the file when it gets to it). ``/ready`` is
200 once every worker has started; under ``on_redis_error: deny`` it is 503 while the link of
any worker, or of the admin process, is down. At SIGTERM the admin process answers ``/ready``
with 503 at once and keeps answering until the workers have stopped.

A worker that ends without saying goodbye (killed, crashed) is not restarted: the others keep
serving the port. The admin process notices within ``REPORT_EVERY_S``, logs it at ERROR and
forgets it; ``kairos_workers`` counts the workers still serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
from multiprocessing.queues import Queue
from typing import Any

from sanic import Sanic

from kairos_core.ai.decisions import Decision
from kairos_core.balancing import InFlight
from kairos_core.events import Event
from kairos_core.metrics import RequestSample
from kairos_core.state import RuntimeState
from kairos_gateway.admin import build_admin_app
from kairos_gateway.proxy_protocol import ProxyProtocol
from kairos_gateway.runtime import GatewayRuntime

log = logging.getLogger("kairos.gateway")
ADMIN_PROCESS = "KairosAdmin"
REPORT_EVERY_S = 1.0
MAX_BATCH = 256
WRITE_SYNC_TIMEOUT_S = 5.0
Feed = Queue  # of tuples: (kind, worker pid, ...)


def serve_workers(
    runtime: GatewayRuntime,
    proxy: Sanic[Any, Any],
    proxy_socket: socket.socket,
    admin_socket: socket.socket,
    workers: int,
) -> None:
    """Serve the instance with ``workers`` worker processes and one admin process; returns once
    every process has stopped."""
    feed: Feed[Any] = multiprocessing.get_context("fork").Queue()
    main_pid = os.getpid()
    reporter = WorkerReporter(runtime, feed)

    @proxy.main_process_ready
    async def start_admin_process(app: Sanic[Any, Any], _: Any) -> None:
        kwargs = {
            "runtime": runtime,
            "proxy": proxy,
            "sock": admin_socket,
            "feed": feed,
            "workers": workers,
        }
        app.manager.manage(ADMIN_PROCESS, serve_admin_process, kwargs)

        def pass_on(signum: int, frame: Any) -> None:
            if os.getpid() == main_pid:  # a process forked before its own handler is set: no
                for process in app.manager.processes:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(process.pid, signum)

        signal.signal(signal.SIGHUP, pass_on)

    proxy.before_server_start(reporter.start)
    proxy.after_server_stop(reporter.stop)
    Sanic.start_method = "fork"  # the workers inherit the bound sockets and the built runtime
    proxy.prepare(sock=proxy_socket, protocol=ProxyProtocol, workers=workers, motd=False)
    Sanic.serve(primary=proxy)


# --- in each worker -----------------------------------------------------------------------------


class WorkerReporter:
    """A worker's side of the feed: what the admin process needs, batched."""

    def __init__(self, runtime: GatewayRuntime, feed: Feed[Any]) -> None:
        self._runtime = runtime
        self._feed = feed
        self._samples: list[tuple[float, RequestSample]] = []
        self._pid = 0
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    async def start(self, app: Sanic[Any, Any], _: Any = None) -> None:
        self._pid = os.getpid()
        runtime = self._runtime
        runtime.observe = self._sample
        runtime.shared.events.subscribe(self._event)
        runtime.swap_listeners.append(self._swapped)
        if runtime.link is not None:
            runtime.link.listen(self._link_changed)
        self._send("hello")
        self._report_state()
        self._task = asyncio.get_running_loop().create_task(
            self._report_forever(), name="kairos-worker-report"
        )

    async def stop(self, app: Sanic[Any, Any], _: Any = None) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._flush()
        self._send("bye")
        self._closed = True  # what happens after (the runtime stopping) is not reported
        self._feed.close()
        await asyncio.to_thread(self._feed.join_thread)  # everything sent before exiting

    def _send(self, kind: str, *payload: Any) -> None:
        if not self._closed:
            self._feed.put((kind, self._pid, *payload))

    def _sample(self, sample: RequestSample) -> None:
        self._samples.append((time.time(), sample))
        if len(self._samples) >= MAX_BATCH:
            self._flush()

    def _flush(self) -> None:
        if self._samples:
            batch, self._samples = self._samples, []
            self._send("samples", batch)

    def _event(self, event: Event) -> None:
        data = event.data
        if event.type == "ai_decision":
            self._send("decision", dict(data))
        elif event.type == "circuit" and data.get("origin") == "local":
            self._send("transition", data["backend"], data["from"], data["to"])

    def _link_changed(self, up: bool) -> None:
        self._send("link", up)

    def _swapped(self, state: RuntimeState) -> None:
        self._report_state()

    def _report_state(self) -> None:
        runtime = self._runtime
        link_up = runtime.link.up if runtime.link is not None else True
        self._send("state", runtime.state.version, runtime.shared.in_flight.snapshot(), link_up)

    async def _report_forever(self) -> None:
        while True:
            await asyncio.sleep(REPORT_EVERY_S)
            self._flush()
            self._report_state()


# --- in the admin process -----------------------------------------------------------------------


class ReportedInFlight(InFlight):
    """In-flight counts as the workers last reported them (the admin process serves none)."""

    def __init__(self) -> None:
        super().__init__()
        self._by_worker: dict[int, dict[str, int]] = {}

    def report(self, worker: int, counts: dict[str, int]) -> None:
        self._by_worker[worker] = counts

    def forget(self, worker: int) -> None:
        self._by_worker.pop(worker, None)

    def get(self, key: str) -> int:
        return sum(counts.get(key, 0) for counts in self._by_worker.values())

    def total(self) -> int:
        return sum(sum(counts.values()) for counts in self._by_worker.values())

    def snapshot(self) -> dict[str, int]:
        merged: dict[str, int] = {}
        for counts in self._by_worker.values():
            for key, count in counts.items():
                merged[key] = merged.get(key, 0) + count
        return merged


class AdminCollector:
    """The admin process's side of the feed: the workers' figures into its runtime."""

    def __init__(self, runtime: GatewayRuntime, feed: Feed[Any], workers: int) -> None:
        self._runtime = runtime
        self._feed = feed
        self._workers = workers
        self.in_flight = ReportedInFlight()
        self._started: set[int] = set()
        self._running: set[int] = set()
        self._versions: dict[int, str] = {}
        self._heard = asyncio.Event()
        self._watch: asyncio.Task[None] | None = None

    def attach(self) -> None:
        """Make the runtime the instance's view (before it starts)."""
        runtime = self._runtime
        runtime.shared.in_flight = self.in_flight
        runtime.serves_proxy = False
        runtime.listening = False  # until every worker has started
        runtime.metrics.workers.set(0)
        runtime.propagate = self.propagate

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        reader = threading.Thread(
            target=self._read, args=(loop,), name="kairos-worker-feed", daemon=True
        )
        reader.start()
        self._watch = loop.create_task(self._watch_workers(), name="kairos-worker-watch")

    async def _watch_workers(self) -> None:
        while True:
            await asyncio.sleep(REPORT_EVERY_S)
            self.check_workers()

    def check_workers(self) -> None:
        """A worker gone without its goodbye (killed, crashed): logged at ERROR and forgotten."""
        if self._runtime.draining:
            return  # stopping: workers leave, some may be cut short
        for pid in [p for p in self._running if not _alive(p)]:
            self._forget(pid)
            log.error(
                "worker %d exited without stopping (killed or crashed) and is not restarted: "
                "%d of %d workers serve the proxy port",
                pid,
                len(self._running),
                self._workers,
            )

    async def propagate(self, version: str) -> None:
        """Have every live worker reload the file, and wait until each runs ``version``."""
        workers = [pid for pid in self._running if _alive(pid)]
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGHUP)
        deadline = time.monotonic() + WRITE_SYNC_TIMEOUT_S
        while behind := [p for p in workers if self._versions.get(p) != version and _alive(p)]:
            left = deadline - time.monotonic()
            if left <= 0:
                log.warning(
                    "config %s: worker(s) %s have not applied it within %g s; they reload the "
                    "file when they get to it",
                    version,
                    ", ".join(map(str, behind)),
                    WRITE_SYNC_TIMEOUT_S,
                )
                return
            self._heard.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._heard.wait(), left)

    async def workers_stopped(self, timeout_s: float) -> None:
        """Return once no worker runs (or after ``timeout_s``)."""
        if self._watch is not None:
            self._watch.cancel()  # workers leave now; none of them is lost
        deadline = time.monotonic() + timeout_s
        while any(_alive(pid) for pid in self._running) and time.monotonic() < deadline:
            self._heard.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._heard.wait(), 0.1)

    def _read(self, loop: asyncio.AbstractEventLoop) -> None:
        while True:
            try:
                message = self._feed.get()
            except (EOFError, OSError, ValueError):
                return
            with contextlib.suppress(RuntimeError):  # the loop has closed: the process ends
                loop.call_soon_threadsafe(self._handle, message)

    def _handle(self, message: tuple[Any, ...]) -> None:
        kind, pid, *payload = message
        runtime = self._runtime
        if kind == "samples":
            for at, sample in payload[0]:
                runtime.metrics.observe_at(at, sample)
        elif kind == "decision":
            self._decision(payload[0])
        elif kind == "transition":
            runtime.metrics.transition(*payload)
        elif kind == "link":
            self._link(pid, payload[0])
        elif kind == "state":
            version, in_flight, link_up = payload
            self._versions[pid] = version
            self.in_flight.report(pid, in_flight)
            self._link(pid, link_up)
        elif kind == "hello":
            self._started.add(pid)
            self._running.add(pid)
            runtime.metrics.workers.set(len(self._running))
            runtime.listening = len(self._started) >= self._workers
            log.info(
                "worker %d serves the proxy port (%d of %d)",
                pid,
                len(self._running),
                self._workers,
            )
        elif kind == "bye":
            self._forget(pid)
        self._heard.set()

    def _forget(self, pid: int) -> None:
        runtime = self._runtime
        self._running.discard(pid)
        self._versions.pop(pid, None)
        self.in_flight.forget(pid)
        runtime.peer_links.pop(pid, None)
        if runtime.cluster_metrics is not None:
            runtime.cluster_metrics.forget(pid)
        runtime.metrics.workers.set(len(self._running))

    def _link(self, pid: int, up: bool) -> None:
        """A worker's Redis link, from its transitions and its state reports (the first
        report tells one that went up or down before its reporter started)."""
        runtime = self._runtime
        if runtime.peer_links.get(pid) == up:
            return
        runtime.peer_links[pid] = up
        if runtime.cluster_metrics is not None:
            runtime.cluster_metrics.link_changed(up, pid)

    def _decision(self, data: dict[str, Any]) -> None:
        fields = {k: v for k, v in data.items() if k not in ("id", "status", "upstream_ms")}
        upstream_ms = data.get("upstream_ms")
        self._runtime.shared.ai.log.finish(
            Decision(**fields),
            data.get("status"),
            None if upstream_ms is None else upstream_ms / 1000,
        )


def serve_admin_process(
    runtime: GatewayRuntime,
    proxy: Sanic[Any, Any],
    sock: socket.socket,
    feed: Feed[Any],
    workers: int,
) -> None:
    """The admin process (started by Sanic's manager): the admin listener on ``sock``."""
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)  # the main process's handlers, until ours are set
    Sanic.unregister_app(proxy)  # the workers' (this process would otherwise serve it too)
    collector = AdminCollector(runtime, feed, workers)
    collector.attach()
    admin = build_admin_app(runtime)

    @admin.before_server_start
    async def start(app: Sanic[Any, Any]) -> None:
        await runtime.start()
        await collector.start()

    @admin.after_server_start
    async def own_signals(app: Sanic[Any, Any]) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, drain)

    def drain() -> None:
        if runtime.draining:
            return
        runtime.draining = True
        server = runtime.state.config.server
        grace_s = server.shutdown_delay_s + server.graceful_shutdown_s + 1
        admin.ctx.drain = asyncio.get_running_loop().create_task(stop_after(grace_s))

    async def stop_after(grace_s: float) -> None:
        try:
            await collector.workers_stopped(grace_s)
        finally:
            admin.config.GRACEFUL_SHUTDOWN_TIMEOUT = 0.5  # open event streams are cut
            admin.stop(terminate=False)

    @admin.after_server_stop
    async def stop(app: Sanic[Any, Any]) -> None:
        await runtime.stop()

    admin.prepare(sock=sock, single_process=True, motd=False)
    Sanic.serve_single(primary=admin)


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, dead but not yet reaped by its parent, does not)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            if stat.read().rsplit(b")", 1)[-1].split()[0] == b"Z":
                return False
    except OSError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
