"""Active health checks: probe each backend that has a ``health_check_path``.

Rule: every ``interval_s`` (10) the checker sends ``GET <backend><health_check_path>`` with a
``timeout_ms`` (1000) limit; a 2xx or 3xx answer is a pass, anything else (other statuses,
connection errors, timeouts) a failure. ``unhealthy_threshold`` (3) consecutive failures mark a
healthy backend unhealthy; ``healthy_threshold`` (2) consecutive passes bring it back. Backends
start healthy (traffic flows while the first probes run), backends without a path are always
healthy, and state survives reloads for backends that keep their probe. A backend is therefore
out within ``unhealthy_threshold × interval_s`` of failing, and back within
``healthy_threshold × interval_s`` of recovering. Probes never share the request path's timeouts
or retries, and the first probe runs at once.

Sharing (cluster mode, :mod:`kairos_core.cluster`): before each probe the checker asks its
``gate`` whether this process is the backend's prober (one prober per backend across the
cluster); when it is not, it skips the probe. After each probe it runs, it hands the backend's
status to ``on_status`` (to publish); a status another process's probe produced is taken as is
with :meth:`HealthChecker.apply_remote` (a flip it brings is told to ``on_remote_change``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from kairos_core.config.models import HealthCheckConfig
from kairos_core.upstream import UpstreamClient, UpstreamError, UpstreamRequest

log = logging.getLogger("kairos.health")
HealthSink = Callable[[str, bool], None]
ProbeGate = Callable[[str], Awaitable[bool]]
StatusSink = Callable[[str, "BackendHealth"], None]


@dataclass(slots=True)
class BackendHealth:
    """What the API and dashboard show for one probed backend."""

    url: str
    healthy: bool = True
    consecutive_passes: int = 0
    consecutive_failures: int = 0
    last_error: str | None = None


class HealthChecker:
    """One probe task per backend with a ``health_check_path``."""

    def __init__(
        self,
        upstream: UpstreamClient,
        on_change: HealthSink | None = None,
        *,
        on_remote_change: HealthSink | None = None,
    ) -> None:
        self._upstream = upstream
        self._on_change = on_change or (lambda backend, healthy: None)
        self._on_remote_change = on_remote_change or self._on_change
        self.gate: ProbeGate | None = None  # set by a cluster sync: is this process the prober?
        self.on_status: StatusSink | None = None  # set by a cluster sync: publish a status
        self._config = HealthCheckConfig()
        self._status: dict[str, BackendHealth] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def configure(self, targets: Mapping[str, str], config: HealthCheckConfig) -> None:
        """Probe exactly ``targets`` (backend key → probe URL); must run inside the event loop."""
        restart_all = config != self._config
        self._config = config
        for key in list(self._tasks):
            status = self._status.get(key)
            if key not in targets or restart_all or (status and status.url != targets[key]):
                self._tasks.pop(key).cancel()
                if key not in targets:
                    self._status.pop(key, None)
        for key, url in targets.items():
            status = self._status.get(key)
            if status is None or status.url != url:
                self._status[key] = BackendHealth(url)
            if key not in self._tasks:
                self._tasks[key] = asyncio.create_task(
                    self._probe_forever(key), name=f"health {key}"
                )

    @property
    def config(self) -> HealthCheckConfig:
        return self._config

    def apply_remote(
        self, key: str, healthy: bool, passes: int, failures: int, last_error: str | None
    ) -> None:
        """Take the status another process's probe produced for a backend probed here too."""
        status = self._status.get(key)
        if status is None:
            return
        status.consecutive_passes = passes
        status.consecutive_failures = failures
        status.last_error = last_error
        if status.healthy != healthy:
            status.healthy = healthy
            log.warning(
                "backend %s is now %s (probed by another process: %s)",
                key,
                "healthy" if healthy else "unhealthy",
                last_error or "probe passed",
            )
            self._on_remote_change(key, healthy)

    def is_healthy(self, backend: str) -> bool:
        status = self._status.get(backend)
        return status is None or status.healthy

    def detail(self) -> dict[str, BackendHealth]:
        """Each probed backend's check: healthy, consecutive passes and failures, last error."""
        return dict(self._status)

    async def stop(self) -> None:
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _probe_forever(self, key: str) -> None:
        while True:
            status = self._status.get(key)
            if status is None:
                return
            if self.gate is None or await self.gate(key):
                error = await self._probe(status.url)
                self._record(key, status, error)
                if self.on_status is not None:
                    self.on_status(key, status)
            await asyncio.sleep(self._config.interval_s)

    async def _probe(self, url: str) -> str | None:
        timeout_s = self._config.timeout_ms / 1000
        request = UpstreamRequest.for_url(
            "GET", url, [("User-Agent", "kairos-health")], None, timeout_s, timeout_s
        )
        try:
            async with asyncio.timeout(timeout_s):
                response = await self._upstream.send(request)
                try:
                    async for _ in response.iter_chunks():
                        pass
                finally:
                    await response.close()
        except TimeoutError:
            return f"no answer within {self._config.timeout_ms} ms"
        except UpstreamError as exc:
            return exc.message
        if 200 <= response.status < 400:
            return None
        return f"status {response.status}"

    def _record(self, key: str, status: BackendHealth, error: str | None) -> None:
        status.last_error = error
        if error is None:
            status.consecutive_passes += 1
            status.consecutive_failures = 0
            flip = (
                not status.healthy and status.consecutive_passes >= self._config.healthy_threshold
            )
        else:
            status.consecutive_failures += 1
            status.consecutive_passes = 0
            flip = (
                status.healthy and status.consecutive_failures >= self._config.unhealthy_threshold
            )
        if flip:
            status.healthy = not status.healthy
            log.warning(
                "backend %s is now %s (%s)",
                key,
                "healthy" if status.healthy else "unhealthy",
                error or "probe passed",
            )
            self._on_change(key, status.healthy)
