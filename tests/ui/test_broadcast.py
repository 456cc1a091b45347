"""The fan-out to browsers: bounded queues, a slow browser dropped, the others untouched."""

from __future__ import annotations

import asyncio

import pytest

from kairos_ui.broadcast import Broadcaster, Fragment, Subscription


async def drain(subscription: Subscription, limit: int) -> list[Fragment]:
    received = []
    async for fragment in subscription:
        received.append(fragment)
        if len(received) == limit:
            break
    return received


async def test_every_subscriber_gets_the_initial_state_then_each_publish() -> None:
    broadcaster = Broadcaster(queue_size=8)
    first = broadcaster.subscribe([Fragment("banner", "")])
    second = broadcaster.subscribe([Fragment("banner", "")])

    broadcaster.publish([Fragment("overview", "<p>1</p>"), Fragment("routes", "<tr></tr>")])

    for subscription in (first, second):
        names = [f.event for f in await drain(subscription, 3)]
        assert names == ["banner", "overview", "routes"]


async def test_a_subscriber_that_falls_behind_is_dropped_and_the_others_keep_up() -> None:
    broadcaster = Broadcaster(queue_size=4)
    slow = broadcaster.subscribe()
    fast = broadcaster.subscribe()
    received: list[Fragment] = []

    async def read_fast() -> None:
        async for fragment in fast:
            received.append(fragment)

    reader = asyncio.create_task(read_fast())
    for number in range(10):
        broadcaster.publish([Fragment("overview", str(number))])
        await asyncio.sleep(0)  # the fast reader runs between publishes; the slow one never

    assert slow.dropped
    assert broadcaster.subscriber_count == 1
    assert [f.html for f in received] == [str(n) for n in range(10)]
    assert await drain(slow, 100) == []  # its stream ends: the browser reconnects afresh
    reader.cancel()


async def test_a_closed_subscription_receives_nothing_more() -> None:
    broadcaster = Broadcaster()
    subscription = broadcaster.subscribe()
    subscription.close()

    broadcaster.publish([Fragment("overview", "x")])

    assert broadcaster.subscriber_count == 0


def test_a_queue_must_hold_something() -> None:
    with pytest.raises(ValueError, match="queue_size"):
        Broadcaster(queue_size=0)
