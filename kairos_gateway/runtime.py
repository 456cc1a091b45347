"""The running gateway's moving parts: current state, upstream pool, reloads, access log.

Reload rule (DESIGN.md §2): the config file is watched; a changed file that validates is compiled
into a new :class:`RuntimeState` and swapped in atomically, so requests already in flight finish
on the state they started with; a file that does not validate is rejected, its report logged, and
the running config kept. ``SIGHUP`` triggers the same reload. In-flight counts are carried over.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import time
from pathlib import Path

from watchfiles import awatch

from kairos_core.config import ConfigError, LoadedConfig, load_config
from kairos_core.pipeline import Pipeline, RequestRecord
from kairos_core.state import RuntimeState, SharedState, compile_state
from kairos_core.upstream import AiohttpUpstream

log = logging.getLogger("kairos.gateway")
access_log = logging.getLogger("kairos.access")


class GatewayRuntime:
    """Owns the pipeline and everything that outlives one request."""

    def __init__(
        self, loaded: LoadedConfig, config_path: Path, *, log_format: str = "text"
    ) -> None:
        self.config_path = config_path
        self.started = time.monotonic()
        self.upstream = AiohttpUpstream()
        self.shared = SharedState(upstream=self.upstream)
        state = compile_state(loaded, self.shared)
        self.pipeline = Pipeline(state, self.upstream, on_record=self._write_access_log)
        self._log_format = log_format
        self._watcher: asyncio.Task[None] | None = None
        self._reload_lock = asyncio.Lock()
        self._starts = 0
        self._tasks: set[asyncio.Task[bool]] = set()

    @property
    def state(self) -> RuntimeState:
        return self.pipeline.state

    async def start(self) -> None:
        """Called by each listener before it serves; the shared work runs once."""
        self._starts += 1
        if self._starts > 1:
            return
        self._configure_health()
        self._watcher = asyncio.create_task(self._watch_config(), name="kairos-config-watch")
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop = asyncio.get_running_loop()
            loop.add_signal_handler(
                signal.SIGHUP, lambda: asyncio.ensure_future(self.reload("sighup"))
            )

    def _reload_soon(self) -> None:
        task = asyncio.create_task(self.reload("SIGHUP"))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        self._starts -= 1
        if self._starts > 0:
            return
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        if self.shared.health is not None:
            await self.shared.health.stop()
        await self.upstream.close()

    async def reload(self, reason: str) -> bool:
        """Load the file again; swap on success, keep the running config on failure."""
        async with self._reload_lock:
            try:
                loaded = await asyncio.to_thread(load_config, self.config_path)
            except ConfigError as exc:
                self.shared.events.publish(
                    "reload",
                    {"result": "rejected", "errors": [str(issue) for issue in exc.errors]},
                )
                log.error(
                    "config reload (%s) rejected; keeping the running config\n%s", reason, exc
                )
                return False
            if loaded.version == self.state.version:
                return True
            self.pipeline.swap(compile_state(loaded, self.shared))
            self._configure_health()
            log.info("config reloaded (%s): version %s", reason, loaded.version)
            self.shared.events.publish("reload", {"result": "ok", "version": loaded.version})
            return True

    def not_ready_reasons(self) -> list[str]:
        """Why the gateway cannot serve every route now (empty when ready)."""
        shared = self.shared
        reasons = []
        for route_id, route in self.state.routes.items():
            backends = (*route.backends, *route.fallback)
            if not any(
                shared.is_healthy(b.key)
                and ((breaker := shared.breakers.get(b.key)) is None or breaker.admits())
                for b in backends
            ):
                reasons.append(f"route {route_id!r} has no backend that is healthy and admitting")
        return reasons

    def _configure_health(self) -> None:
        if self.shared.health is not None:
            state = self.state
            self.shared.health.configure(state.health_targets(), state.config.health_check)

    async def _watch_config(self) -> None:
        target = await asyncio.to_thread(self.config_path.resolve)
        async for changes in awatch(target.parent, debounce=200, step=50, recursive=False):
            if any(Path(path).name == target.name for _, path in changes):
                await self.reload("file changed")

    def _write_access_log(self, record: RequestRecord) -> None:
        if not access_log.isEnabledFor(logging.INFO):
            return
        fields = {
            "request_id": record.request_id,
            "client_ip": record.client_ip,
            "method": record.method,
            "path": record.path,
            "route": record.route_id,
            "backend": record.backend,
            "status": record.status,
            "error": record.error_type,
            "duration_ms": _ms(record.duration_s),
            "upstream_ms": None
            if record.upstream_s is None
            else round(record.upstream_s * 1000, 3),
            "attempts": record.attempts,
            "bytes": record.bytes_sent,
        }
        if self._log_format == "json":
            access_log.info(json.dumps(fields))
        else:
            access_log.info(" ".join(f"{k}={'-' if v is None else v}" for k, v in fields.items()))


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)
