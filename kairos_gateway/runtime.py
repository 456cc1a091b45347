"""The running gateway's moving parts: current state, upstream pool, reloads, metrics, log.

Reload rule (DESIGN.md §2): the config file is watched (its inode, size and modification time,
checked once a second: an editor's rename-over, an in-place write and a Kubernetes ConfigMap's
symlink swap all show, and nothing else in the directory wakes the gateway); a changed file that
validates is compiled
into a new :class:`RuntimeState` and swapped in atomically, so requests already in flight finish
on the state they started with; a file that does not validate is rejected, its report logged, and
the running config kept. ``SIGHUP`` triggers the same reload. Admin API edits go the other way:
validated first, written atomically, then swapped in; the file watcher then sees a file whose
content is already running and does nothing.

Start settings (``server.host``/``port``/``workers``, ``admin.host``/``port``,
``cluster.redis_url``/``key_prefix``) are read only at start: a change that reaches them is
applied everywhere else and reported as "restart required" (a WARNING line, the ``reload`` event
and the admin API's reload result).

Cluster mode (``cluster.redis_url``): rate-limit counters in Redis
(:class:`~kairos_core.redislimits.RedisLimits`), breaker and health-check state kept in step
with the other workers and instances (:class:`~kairos_core.cluster.Cluster`), both over one
:class:`~kairos_core.redislink.RedisLink` whose state is ``/ready``'s Redis condition.
``cluster.redis_timeout_ms`` and ``on_redis_error`` apply at every reload.

Proxied requests never wait for a config change: reading, validating and compiling a config run
in a worker thread, with the cyclic garbage collector paused (its passes would hold the
interpreter); only the swap itself (pointing the shared breakers at the new policies, one
reference assignment, health-check targets) runs on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from kairos_core import __version__
from kairos_core.admin import AdminService, VersionConflict, if_match_allows
from kairos_core.cluster import Cluster, ClusterMetrics
from kairos_core.config import (
    ConfigError,
    ConfigIssue,
    LoadedConfig,
    Severity,
    load_config,
    validate_document,
)
from kairos_core.config.models import ClusterConfig
from kairos_core.config.rules import restart_required
from kairos_core.config.store import write_atomically
from kairos_core.events import Event
from kairos_core.forwarding import is_loopback
from kairos_core.h1client import H1Upstream
from kairos_core.metrics import Metrics, RequestSample
from kairos_core.pipeline import Pipeline, RequestRecord
from kairos_core.redislimits import RedisLimits
from kairos_core.redislink import RedisLink
from kairos_core.state import RuntimeState, SharedState, build_state, compile_state
from kairos_core.upstream import AiohttpUpstream, UpstreamClient
from kairos_gateway.accesslog import AccessLog

log = logging.getLogger("kairos.gateway")
config_log = logging.getLogger("kairos.config")
_STATE_CODES = {"closed": 0, "open": 1, "half_open": 2}
CONFIG_POLL_S = 1.0


class GatewayRuntime:
    """Owns the pipeline and everything that outlives one request."""

    def __init__(
        self,
        loaded: LoadedConfig,
        config_path: Path,
        *,
        log_format: str = "text",
        upstream_client: str = "h1",
    ) -> None:
        self.config_path = config_path
        self.started = time.monotonic()
        self._started_config = loaded.config  # what the listeners were bound with
        self.upstream: UpstreamClient = (
            AiohttpUpstream() if upstream_client == "aiohttp" else H1Upstream()
        )
        settings = loaded.config.cluster
        self.link: RedisLink | None = None
        self.counters: RedisLimits | None = None
        if settings.redis_url:
            self.link = RedisLink(settings.redis_url, timeout_ms=settings.redis_timeout_ms)
            self.counters = RedisLimits(self.link, settings.key_prefix, settings.on_redis_error)
        self.shared = SharedState(upstream=self.upstream, counters=self.counters)
        self.metrics = Metrics(__version__)
        self.cluster: Cluster | None = None
        self.cluster_metrics = ClusterMetrics(self.metrics.registry) if self.link else None
        self.shared.events.subscribe(self._count_event)
        # Multi-worker instances (kairos_gateway.workers) set these after the fork:
        self.serves_proxy = True  # false in the admin process: it never takes a trial lease
        self.observe: Callable[[RequestSample], None] = self.metrics.observe
        self.peer_links: dict[int, bool] = {}  # each worker's Redis link, as the admin sees it
        self.swap_listeners: list[Callable[[RuntimeState], None]] = []
        self.propagate: Callable[[str], Awaitable[None]] | None = None  # a write reaches workers
        state = compile_state(loaded, self.shared)
        self.pipeline = Pipeline(state, self.upstream, on_record=self._on_record)
        self.admin = AdminService(self)
        self.admin_host: str | None = None  # where the admin listener is bound (set by main)
        self.access_log = AccessLog(log_format)
        self.listening = False  # the proxy listener is bound (see mark_listening)
        self.draining = False  # set at SIGTERM / SIGINT, before any listener closes: /ready 503
        self._background: set[asyncio.Task[Any]] = set()
        self._reload_lock = asyncio.Lock()
        self._written_digest: str | None = None  # of the bytes the last admin edit wrote
        self._starts = 0

    @property
    def state(self) -> RuntimeState:
        return self.pipeline.state

    @property
    def uptime_s(self) -> float:
        return time.monotonic() - self.started

    async def start(self) -> None:
        """Called by each listener before it serves; the shared work runs once."""
        self._starts += 1
        if self._starts > 1:
            return
        if self.link is not None and self.cluster_metrics is not None:
            self.link.listen(self.cluster_metrics.link_changed)
            await self.link.start()
            prefix = self.state.config.cluster.key_prefix
            self.cluster = Cluster(self.link, self.shared, prefix, trials=self.serves_proxy)
            await self.cluster.start()
        self._configure_health()
        self._spawn(self._watch_config(), "kairos-config-watch")
        self._spawn(self._tick_forever(), "kairos-metrics-tick")
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop = asyncio.get_running_loop()
            loop.add_signal_handler(signal.SIGHUP, self._reload_on_signal)

    async def stop(self) -> None:
        self._starts -= 1
        if self._starts > 0:
            return
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        self.access_log.flush()
        if self.shared.health is not None:
            await self.shared.health.stop()
        if self.cluster is not None:
            await self.cluster.stop()
        if self.link is not None:
            await self.link.stop()
        await self.shared.ai.close()
        await self.upstream.close()

    # --- config changes -----------------------------------------------------------------------

    async def reload(self, reason: str) -> LoadedConfig:
        """Load the file again; swap on success. Raises ConfigError and keeps the running config."""
        async with self._reload_lock, _collector_paused():
            try:
                changed = await asyncio.to_thread(self._load_if_changed)
                if changed is None:
                    return self.state.loaded
                loaded = changed
                self._guard_admin(loaded)
            except ConfigError as exc:
                self._rejected(reason, exc)
                raise
            if loaded.version != self.state.version:
                self._swap(await asyncio.to_thread(build_state, loaded, self.shared), reason)
                if self.propagate is not None:
                    await self.propagate(loaded.version)
            return loaded

    async def apply_edit(
        self,
        edit: Callable[[LoadedConfig], Mapping[str, Any]],
        reason: str,
        *,
        if_match: str | None = None,
    ) -> tuple[LoadedConfig, LoadedConfig]:
        """Apply ``edit`` to the running config: validate, persist atomically, swap in.

        ``edit`` gets the config running when the lock is taken, so concurrent edits never build
        on a stale document. ``if_match`` guards against lost updates across requests. Returns
        (before, after). Raises :class:`ConfigError` (nothing written, running config kept) or
        :class:`VersionConflict`; whatever ``edit`` raises propagates.
        """
        async with self._reload_lock, _collector_paused():
            before = self.state.loaded
            if if_match is not None and not if_match_allows(if_match, before.version):
                raise VersionConflict(before.version)
            state = await asyncio.to_thread(self._build_edit, edit, before)
            loaded = state.loaded
            self._guard_admin(loaded)
            written = await asyncio.to_thread(write_atomically, self.config_path, loaded.document)
            self._swap(state, reason)
            self._written_digest = hashlib.sha256(written).hexdigest()
            if self.propagate is not None:
                await self.propagate(loaded.version)
            return before, loaded

    def _load_if_changed(self) -> LoadedConfig | None:
        """The file's config, or None when the file holds exactly what the last admin edit wrote
        (that config is running: the file watcher's echo of an edit costs one read)."""
        if self._written_digest is not None:
            with contextlib.suppress(OSError):
                digest = hashlib.sha256(self.config_path.read_bytes()).hexdigest()
                if digest == self._written_digest:
                    return None
        return load_config(self.config_path)

    def _build_edit(
        self, edit: Callable[[LoadedConfig], Mapping[str, Any]], before: LoadedConfig
    ) -> RuntimeState:
        """The state ``edit`` leads to (in a worker thread: nothing here touches live state)."""
        document = edit(before)
        loaded = validate_document(dict(document), source=str(self.config_path))
        return build_state(loaded, self.shared)

    def _swap(self, state: RuntimeState, reason: str) -> None:
        loaded = state.loaded
        state.configure_breakers()
        self.pipeline.swap(state)
        self._configure_cluster(loaded.config.cluster)
        self._configure_health()
        self.metrics.reload("success")
        pending = self.restart_required(loaded)
        if pending:
            log.warning(
                "config applied (%s): version %s; restart required for %s (the listeners keep "
                "the settings they started with)",
                reason,
                loaded.version,
                ", ".join(pending),
            )
        else:
            log.info("config applied (%s): version %s", reason, loaded.version)
        log_config_issues(loaded)
        for listener in self.swap_listeners:
            listener(state)
        self.shared.events.publish(
            "reload",
            {
                "result": "success",
                "reason": reason,
                "version": loaded.version,
                "restart_required": pending,
            },
        )

    def restart_required(self, loaded: LoadedConfig) -> list[str]:
        """The start settings ``loaded`` changes from the config this process started with
        (they apply only at the next restart)."""
        return restart_required(self._started_config, loaded.config)

    def _rejected(self, reason: str, exc: ConfigError) -> None:
        self.metrics.reload("failure")
        self.shared.events.publish(
            "reload",
            {"result": "failure", "reason": reason, "errors": [str(e) for e in exc.errors]},
        )
        log.error("config reload (%s) rejected, running config kept\n%s", reason, exc)

    def _reload_on_signal(self) -> None:
        self._spawn(self._reload_quietly("SIGHUP"), "kairos-sighup-reload")

    async def _reload_quietly(self, reason: str) -> None:
        try:
            await self.reload(reason)
        except ConfigError:
            pass  # logged and counted by reload(); the running config stays
        except Exception:
            log.exception("config reload (%s) failed; the running config stays", reason)

    def _guard_admin(self, loaded: LoadedConfig) -> None:
        """A config may not leave an admin listener on a non-loopback address without a token
        (the listener stays where it was bound, whatever the new config says)."""
        exposed = self.admin_host is not None and not is_loopback(self.admin_host)
        if exposed and not loaded.config.admin.token:
            message = f"the admin listener is bound to {self.admin_host!r}; it needs a token"
            issue = ConfigIssue("admin.token", message, code="admin_needs_token")
            raise ConfigError([issue], source=loaded.source)

    async def _watch_config(self) -> None:
        seen = _identity(self.config_path)
        while True:
            await asyncio.sleep(CONFIG_POLL_S)
            current = _identity(self.config_path)
            if current != seen:
                seen = current
                await self._reload_quietly("file changed")

    # --- readiness, health, metrics -------------------------------------------------------------

    def not_ready_reasons(self) -> list[str]:
        """Why a load balancer should not send traffic here now (empty when ready).

        Ready: the config is loaded (it is, once this object exists), the proxy listener is
        bound, the gateway is not draining, and under cluster mode with ``on_redis_error: deny``
        Redis is reachable. Routes without a candidate backend do not count (see
        :meth:`unroutable`): one dead upstream must not take every replica out of rotation.
        """
        reasons = []
        if not self.listening:
            reasons.append("the proxy listener is not bound yet")
        if self.draining:
            reasons.append("draining: shutting down, finishing the requests in flight")
        cluster = self.state.config.cluster
        if cluster.redis_url and cluster.on_redis_error == "deny" and not self.cluster_ready():
            reasons.append("cluster Redis is unreachable and cluster.on_redis_error is 'deny'")
        return reasons

    def unroutable(self) -> list[str]:
        """Ids of the routes with no healthy, admitting backend (primary or fallback) now."""
        return self.state.unroutable()

    def cluster_ready(self) -> bool:
        """Whether the shared cluster state (Redis) is reachable (always, without a cluster):
        from this process and, in a multi-worker instance's admin process, from every worker."""
        return self.link is None or (self.link.up and all(self.peer_links.values()))

    def _configure_cluster(self, settings: ClusterConfig) -> None:
        """What a reload may change of cluster mode: the Redis timeout and the error policy
        (the URL and key prefix wait for a restart); new backends read their shared state."""
        if self.link is not None and self.counters is not None and self.cluster is not None:
            self.link.timeout_s = settings.redis_timeout_ms / 1000
            self.counters.on_redis_error = settings.on_redis_error
            self.cluster.rejoin_soon()

    def mark_listening(self) -> None:
        """Both listeners are bound (called by ``main`` once their sockets are)."""
        self.listening = True

    def refresh_gauges(self) -> None:
        shared = self.shared
        self.metrics.set_backend_gauges(
            (b.backend, _STATE_CODES[b.state], shared.healthy(b.backend)) for b in shared.breakers
        )
        self.metrics.tick(shared.in_flight.total(), len(asyncio.all_tasks()))

    def _configure_health(self) -> None:
        if self.shared.health is not None:
            state = self.state
            self.shared.health.configure(state.health_targets(), state.config.health_check)

    async def _tick_forever(self) -> None:
        """Once a second: gauges, a history point, and a ``snapshot`` event."""
        while True:
            await asyncio.sleep(1 - time.time() % 1)
            self.refresh_gauges()
            try:
                await self.admin.publish_snapshot()
            except Exception:
                log.exception("building the metrics snapshot failed")

    def _count_event(self, event: Event) -> None:
        if event.type == "ai_decision":
            data = event.data
            self.metrics.ai_decision(data["route"], data["source"], data["latency_ms"] / 1000)
        elif event.type == "circuit":
            data = event.data
            if data.get("origin") == "cluster":  # counted where it happened
                log.info(
                    "circuit %s: %s -> %s (cluster)", data["backend"], data["from"], data["to"]
                )
                return
            self.metrics.transition(data["backend"], data["from"], data["to"])
            log.warning("circuit %s: %s -> %s", data["backend"], data["from"], data["to"])

    def _spawn(self, coroutine: Any, name: str) -> None:
        task = asyncio.create_task(coroutine, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # --- per request ------------------------------------------------------------------------------

    def _on_record(self, record: RequestRecord) -> None:
        self.observe(record.sample())
        self.access_log.add(record)


@contextlib.asynccontextmanager
async def _collector_paused() -> AsyncIterator[None]:
    """Pause the cyclic garbage collector while a config is read and built; on success, freeze
    what is alive afterwards (mostly the new config, which lives until the next change).

    Building a large config allocates hundreds of thousands of objects. With the collector on,
    every young-generation pass over them holds the interpreter for 10-30 ms (the gateway runs
    with a high gen-0 threshold), so the worker thread's passes would stall the event loop as
    surely as work on the loop itself. Frozen, like everything built at start-up, the new
    config is never scanned by later passes either.
    """
    enabled = gc.isenabled()
    interval = sys.getswitchinterval()
    gc.disable()
    sys.setswitchinterval(0.001)
    try:
        yield
        gc.freeze()  # reached only when the change went through
    finally:
        sys.setswitchinterval(interval)
        if enabled:
            gc.enable()


def log_config_issues(loaded: LoadedConfig) -> None:
    """Log a running config's issues: every warning at WARNING (a typo must not hide in INFO
    lines), recommendations at INFO."""
    for issue in loaded.issues:
        level = logging.INFO if issue.severity is Severity.RECOMMENDATION else logging.WARNING
        config_log.log(level, "%s: %s", issue.severity, issue)


def _identity(path: Path) -> tuple[int, int, int] | None:
    """What changes when the file does: inode, size, modification time (None: unreadable)."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_ino, info.st_size, info.st_mtime_ns
