"""The Redis link's up/down rule (``kairos_core.redislink``) against a real redis-server."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import pytest

from kairos_core.redislink import (
    FAILURES_TO_DOWN,
    PROBE_INTERVAL_S,
    RedisLink,
    RedisUnavailable,
    redis_address,
)
from tests.support.procs import free_port
from tests.support.redisserver import RedisServer
from tests.support.waiting import await_until


@pytest.fixture
async def links() -> AsyncIterator[list[RedisLink]]:
    made: list[RedisLink] = []
    yield made
    for link in made:
        await link.stop()


async def started(links: list[RedisLink], url: str, timeout_ms: int = 500) -> RedisLink:
    link = RedisLink(url, timeout_ms=timeout_ms)
    links.append(link)
    await link.start()
    return link


def test_the_address_in_logs_never_carries_the_password() -> None:
    assert redis_address("redis://:s3cret@cache.internal:6380/2") == "cache.internal:6380"
    assert redis_address("redis://user:pw@10.0.0.1/0") == "10.0.0.1:6379"
    assert redis_address("unix:///run/redis.sock?db=1") == "unix:/run/redis.sock"


async def test_it_starts_up_when_redis_answers(
    redis_server: RedisServer, links: list[RedisLink]
) -> None:
    link = await started(links, redis_server.url)
    assert link.up
    assert await link.request(lambda pipe: pipe.call("PING")) == "PONG"


async def test_coming_up_opens_the_request_paths_connection(
    redis_server: RedisServer, links: list[RedisLink]
) -> None:
    await started(links, redis_server.url)
    # the link's PING connection, the request path's, and this test's own client
    await await_until(lambda: len(redis_server.client().client_list()) == 3, 2, "3 clients")


async def test_it_starts_down_without_redis_and_the_request_path_never_waits(
    links: list[RedisLink], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "kairos.cluster")
    link = await started(links, f"redis://127.0.0.1:{free_port()}/0", timeout_ms=1000)
    assert not link.up
    started_at = time.perf_counter()
    with pytest.raises(RedisUnavailable, match="is down"):
        await link.request(lambda pipe: pipe.call("PING"))
    assert time.perf_counter() - started_at < 0.1  # refused at once, not after the 1 s timeout
    (line,) = [r for r in caplog.records if r.name == "kairos.cluster"]
    assert line.levelno == logging.WARNING
    assert "is unreachable" in line.getMessage()


async def test_failures_in_a_row_take_it_down_and_a_success_resets_the_count(
    redis_server: RedisServer, links: list[RedisLink]
) -> None:
    link = await started(links, redis_server.url)
    heard: list[bool] = []
    link.listen(heard.append)
    for _ in range(FAILURES_TO_DOWN - 1):
        with pytest.raises(RedisUnavailable, match="RespError: ERR unknown command"):
            await link.request(lambda pipe: pipe.call("NO-SUCH-COMMAND"))
    await link.request(lambda pipe: pipe.call("PING"))
    for _ in range(FAILURES_TO_DOWN - 1):
        with pytest.raises(RedisUnavailable):
            await link.request(lambda pipe: pipe.call("NO-SUCH-COMMAND"))
    assert link.up and heard == []
    with pytest.raises(RedisUnavailable):
        await link.request(lambda pipe: pipe.call("NO-SUCH-COMMAND"))
    assert not link.up and heard == [False]


async def test_a_redis_that_never_answers_costs_a_request_its_timeout_only(
    redis_server: RedisServer, links: list[RedisLink]
) -> None:
    link = await started(links, redis_server.url, timeout_ms=200)
    await link.request(lambda pipe: pipe.call("PING"))  # the connection is open
    redis_server.pause()
    try:
        for _ in range(FAILURES_TO_DOWN):
            started_at = time.perf_counter()
            with pytest.raises(RedisUnavailable, match="no answer within 200 ms"):
                await link.request(lambda pipe: pipe.call("PING"))
            assert time.perf_counter() - started_at < 0.200 + 0.050
        assert not link.up
        started_at = time.perf_counter()
        with pytest.raises(RedisUnavailable, match="is down"):
            await link.request(lambda pipe: pipe.call("PING"))
        assert time.perf_counter() - started_at < 0.1  # at once, not after the 200 ms timeout
    finally:
        redis_server.resume()
    await await_until(lambda: link.up, PROBE_INTERVAL_S * 4, "link up")


async def test_a_killed_redis_is_noticed_and_its_return_brings_the_link_back(
    redis_server: RedisServer, links: list[RedisLink], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "kairos.cluster")
    link = await started(links, redis_server.url)
    heard: list[bool] = []
    link.listen(heard.append)
    redis_server.stop()
    for _ in range(FAILURES_TO_DOWN):
        with pytest.raises(RedisUnavailable):
            await link.request(lambda pipe: pipe.call("PING"))
    assert heard == [False]
    redis_server.start()
    await await_until(lambda: link.up, PROBE_INTERVAL_S * 4, "link up")
    assert heard == [False, True]
    assert await link.request(lambda pipe: pipe.call("PING")) == "PONG"
    messages = [r.getMessage() for r in caplog.records if r.name == "kairos.cluster"]
    assert [m.split(" ")[3] for m in messages[-2:]] == ["is", "answers"], messages


async def test_wait_up_returns_once_redis_answers(links: list[RedisLink]) -> None:
    server = RedisServer()
    link = await started(links, server.url)
    assert not link.up
    waiter = asyncio.create_task(link.wait_up())
    await asyncio.sleep(0.1)
    assert not waiter.done()
    with server:
        await asyncio.wait_for(waiter, PROBE_INTERVAL_S * 4)
        assert link.up
