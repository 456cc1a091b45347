"""In-process events (breaker transitions, health flips, reloads, route changes, AI decisions).

Rule: every event gets the next integer ``id`` and a wall-clock ``time``; the last
``capacity`` events (default 1,000) are kept so a reconnecting SSE client can resume after its
``Last-Event-ID``. Subscribers are synchronous callbacks run in publish order; one that raises is
logged and kept (an observer can never break the request path).
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("kairos.events")


@dataclass(frozen=True, slots=True)
class Event:
    id: int
    type: str
    time: float
    data: Mapping[str, Any]


Subscriber = Callable[[Event], None]


class EventBus:
    """Publish/subscribe with a bounded replay buffer."""

    def __init__(self, capacity: int = 1000) -> None:
        self._ids = itertools.count(1)
        self._recent: deque[Event] = deque(maxlen=capacity)
        self._subscribers: list[Subscriber] = []

    def publish(self, type_: str, data: Mapping[str, Any]) -> Event:
        event = Event(next(self._ids), type_, time.time(), dict(data))
        self._recent.append(event)
        for subscriber in list(self._subscribers):
            try:
                subscriber(event)
            except Exception:
                log.exception("event subscriber failed on %s", type_)
        return event

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        """Register ``subscriber``; returns the function that unregisters it."""
        self._subscribers.append(subscriber)

        def unsubscribe() -> None:
            if subscriber in self._subscribers:
                self._subscribers.remove(subscriber)

        return unsubscribe

    @property
    def last_id(self) -> int:
        """The id of the newest event published (0 before the first)."""
        return self._recent[-1].id if self._recent else 0

    def since(self, last_id: int) -> list[Event]:
        """Buffered events with ``id > last_id`` (oldest first)."""
        return [event for event in self._recent if event.id > last_id]
