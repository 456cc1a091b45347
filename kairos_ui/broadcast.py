"""Fan-out of rendered HTML fragments to every connected browser.

Rule: each browser gets its own queue of at most ``queue_size`` fragments. ``publish`` never
waits: a browser whose queue is full (it reads slower than the gateway speaks) is dropped on the
spot. Its stream ends, its ``EventSource`` reconnects and starts again from the current state, so
one slow tab can cost itself a reconnect but never delays the others or grows memory.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass

DEFAULT_QUEUE_SIZE = 64


@dataclass(frozen=True, slots=True)
class Fragment:
    """One SSE message: ``event`` names the ``sse-swap`` target, ``html`` is what it shows."""

    event: str
    html: str


class Subscription:
    """One browser's stream: iterate it for fragments; it ends once the browser is dropped."""

    def __init__(self, broadcaster: Broadcaster, queue_size: int) -> None:
        self._broadcaster = broadcaster
        self._queue: asyncio.Queue[Fragment | None] = asyncio.Queue(queue_size)
        self.dropped = False

    def offer(self, fragment: Fragment) -> bool:
        """Queue ``fragment``; False (and the subscription is ended) when the queue is full."""
        if self.dropped:
            return False
        try:
            self._queue.put_nowait(fragment)
        except asyncio.QueueFull:
            self._end()
            return False
        return True

    def _end(self) -> None:
        self.dropped = True
        while not self._queue.empty():
            self._queue.get_nowait()
        self._queue.put_nowait(None)

    def close(self) -> None:
        """The browser went away: stop delivering to it."""
        self._broadcaster.unsubscribe(self)

    async def __aiter__(self) -> AsyncIterator[Fragment]:
        while True:
            fragment = await self._queue.get()
            if fragment is None:
                return
            yield fragment


class Broadcaster:
    """The set of browser subscriptions and the non-blocking publish to all of them."""

    def __init__(self, queue_size: int = DEFAULT_QUEUE_SIZE) -> None:
        if queue_size < 1:
            raise ValueError(f"queue_size must be at least 1, got {queue_size}")
        self._queue_size = queue_size
        self._subscriptions: set[Subscription] = set()

    @property
    def subscriber_count(self) -> int:
        return len(self._subscriptions)

    def subscribe(self, initial: Iterable[Fragment] = ()) -> Subscription:
        """A new browser stream, starting with ``initial`` (the current state of each part)."""
        subscription = Subscription(self, self._queue_size)
        for fragment in initial:
            subscription.offer(fragment)
        self._subscriptions.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        self._subscriptions.discard(subscription)

    def publish(self, fragments: Iterable[Fragment]) -> None:
        """Queue ``fragments`` for every browser; drop those that cannot keep up."""
        batch = list(fragments)
        for subscription in list(self._subscriptions):
            if not all(subscription.offer(fragment) for fragment in batch):
                self.unsubscribe(subscription)
