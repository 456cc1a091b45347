"""The connection to the cluster's Redis and whether it is usable now (DESIGN.md §8).

Rule: the link is **up** or **down**, like a breaker for Redis itself.

- It starts down and comes up at the first PING Redis answers (:meth:`RedisLink.start` sends
  one and returns within ``STARTUP_TIMEOUT_S`` either way). Coming up opens the request path's
  connection at once, so that the first request does not pay for the connect.
- While up, a call made on the request path (:meth:`RedisLink.request`, on the pipelined
  connection of :mod:`kairos_core.redispipe`) waits at most ``timeout_ms``
  (``cluster.redis_timeout_ms``); a call made off it (:meth:`RedisLink.call`, on redis-py's
  client: pub/sub, leases, state loads) waits at most ``BACKGROUND_TIMEOUT_S``. A call that
  fails (connection refused or lost, timeout, an error reply) raises :class:`RedisUnavailable`;
  ``FAILURES_TO_DOWN`` (3) failures in a row take the link down, a call that succeeds resets
  the count.
- While down, request-path calls raise :class:`RedisUnavailable` at once, without trying Redis
  (so a dead Redis never slows a request down), and a background probe PINGs every
  ``PROBE_INTERVAL_S`` (0.5 s); the first answer brings the link back up.
- Each transition logs one line (WARNING down, INFO up) and is told to every listener
  (metrics, and the cluster sync, which reloads the shared state when the link comes back).

Neither client retries on its own (one call is one attempt) nor decodes replies. Going down
closes the request path's connection (what waits on it fails at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar
from urllib.parse import urlsplit

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from kairos_core.redispipe import RedisPipe, RespError

log = logging.getLogger("kairos.cluster")
T = TypeVar("T")
Listener = Callable[[bool], None]

FAILURES_TO_DOWN = 3
PROBE_INTERVAL_S = 0.5
BACKGROUND_TIMEOUT_S = 1.0
STARTUP_TIMEOUT_S = 1.0


class RedisUnavailable(Exception):
    """Redis did not answer this call (the link is down, or the call failed or timed out)."""


def redis_address(url: str) -> str:
    """Where a Redis URL points, without its credentials (for logs and errors)."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return f"unix:{parts.path}"
    return f"{parts.hostname or 'localhost'}:{parts.port or 6379}"


class RedisLink:
    """One Redis client (a connection pool) and its up/down state."""

    def __init__(self, url: str, *, timeout_ms: int = 20) -> None:
        self.url = url
        self.address = redis_address(url)
        self.timeout_s = timeout_ms / 1000
        self.client: Redis = Redis.from_url(
            url,
            socket_connect_timeout=BACKGROUND_TIMEOUT_S,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
        )
        self.pipe = RedisPipe(url, connect_timeout_s=BACKGROUND_TIMEOUT_S)
        self.up = False
        self._failures = 0
        self._listeners: list[Listener] = []
        self._probe: asyncio.Task[None] | None = None
        self._opening: asyncio.Task[None] | None = None
        self._came_up = asyncio.Event()

    def listen(self, listener: Listener) -> None:
        """Call ``listener(up)`` at every transition."""
        self._listeners.append(listener)

    async def start(self) -> None:
        """PING once (bounded); down and probing in the background if Redis does not answer."""
        try:
            await self.call(lambda r: r.ping(), STARTUP_TIMEOUT_S)  # up on success
        except RedisUnavailable as exc:
            self._go_down(str(exc))

    async def stop(self) -> None:
        if self._opening is not None:
            with contextlib.suppress(Exception):
                await self._opening
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe
            self._probe = None
        self.pipe.close()
        with contextlib.suppress(Exception):
            await self.client.aclose()

    async def request(self, operation: Callable[[RedisPipe], Awaitable[T]]) -> T:
        """One call on the request path: at once :class:`RedisUnavailable` while down, else
        bounded by ``timeout_ms``."""
        if not self.up:
            raise RedisUnavailable(f"cluster Redis {self.address} is down")
        return await self._call(lambda: operation(self.pipe), self.timeout_s)

    async def call(
        self, operation: Callable[[Redis], Awaitable[T]], timeout_s: float = BACKGROUND_TIMEOUT_S
    ) -> T:
        """One call off the request path (tried even while down: it may be what finds Redis
        back), bounded by ``timeout_s``."""
        return await self._call(lambda: operation(self.client), timeout_s)

    async def wait_up(self) -> None:
        """Return once the link is up."""
        while not self.up:
            self._came_up.clear()
            await self._came_up.wait()

    def failed(self, reason: str) -> None:
        """A call that talks to Redis outside :meth:`call` (pub/sub) lost it."""
        self._failed(reason)

    async def _call(self, operation: Callable[[], Awaitable[T]], timeout_s: float) -> T:
        try:
            async with asyncio.timeout(timeout_s):
                result = await operation()
        except (RedisError, RespError, OSError, TimeoutError) as exc:
            reason = _reason(exc, timeout_s)
            self._failed(reason)
            raise RedisUnavailable(f"cluster Redis {self.address}: {reason}") from exc
        self._failures = 0
        if not self.up:
            self._go_up()
        return result

    def _failed(self, reason: str) -> None:
        self._failures += 1
        if self.up and self._failures >= FAILURES_TO_DOWN:
            self._go_down(reason)

    def _go_down(self, reason: str) -> None:
        self.up = False
        self.pipe.close()
        log.warning(
            "cluster Redis %s is unreachable (%s): requests that need it get "
            "cluster.on_redis_error until it answers",
            self.address,
            reason,
        )
        self._tell(False)
        if self._probe is None or self._probe.done():
            self._probe = asyncio.get_running_loop().create_task(
                self._probe_until_up(), name="kairos-redis-probe"
            )

    def _go_up(self) -> None:
        was_probing = self._probe is not None
        self.up = True
        self._failures = 0
        self._came_up.set()
        self._opening = asyncio.get_running_loop().create_task(self._open_pipe())
        if was_probing:
            log.info("cluster Redis %s answers again: shared state resumes", self.address)
        else:
            log.info("cluster Redis %s is up", self.address)
        self._tell(True)

    def _tell(self, up: bool) -> None:
        for listener in list(self._listeners):
            try:
                listener(up)
            except Exception:
                log.exception("a Redis link listener failed")

    async def _open_pipe(self) -> None:
        """The request path's connection, opened now rather than by the first request."""
        with contextlib.suppress(OSError, RespError, TimeoutError):
            await self.pipe.open()

    async def _probe_until_up(self) -> None:
        while not self.up:
            await asyncio.sleep(PROBE_INTERVAL_S)
            with contextlib.suppress(RedisUnavailable):
                await self.call(lambda r: r.ping())
        self._probe = None


def _reason(exc: BaseException, timeout_s: float) -> str:
    if isinstance(exc, TimeoutError) and not str(exc):
        return f"no answer within {timeout_s * 1000:g} ms"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
