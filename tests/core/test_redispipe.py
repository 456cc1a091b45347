"""The request path's pipelined Redis connection (``kairos_core.redispipe``): each rule of its
docstring, against a real redis-server (and the reply parser on its own), on asyncio's loop and
on uvloop's."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import uvloop

from kairos_core.redispipe import INCOMPLETE, RedisPipe, RespError, encode, parse
from tests.support.redisserver import RedisServer

Run = Callable[[Coroutine[Any, Any, Any]], Any]


@pytest.fixture
def pipe(redis_server: RedisServer) -> RedisPipe:
    return RedisPipe(redis_server.url)


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Run:
    """Run a test's body on each loop (the gateway runs uvloop, whose transports differ), and
    close the test's pipe before that loop ends."""

    def runner(body: Coroutine[Any, Any, Any]) -> Any:
        async def main() -> Any:
            try:
                return await body
            finally:
                if "pipe" in request.fixturenames:
                    request.getfixturevalue("pipe").close()

        return uvloop.run(main()) if request.param == "uvloop" else asyncio.run(main())

    return runner


@pytest.mark.parametrize(
    ("wire", "value"),
    [
        (b"+OK\r\n", "OK"),
        (b":-42\r\n", -42),
        (b"$5\r\nhe\r\no\r\n", b"he\r\no"),
        (b"$-1\r\n", None),
        (b"*-1\r\n", None),
        (b"*3\r\n:1\r\n$0\r\n\r\n*1\r\n+x\r\n", [1, b"", ["x"]]),
    ],
)
def test_every_reply_type_parses_and_a_partial_one_waits(wire: bytes, value: Any) -> None:
    assert parse(wire + b"+next\r\n", 0) == (value, len(wire))
    for cut in range(len(wire)):
        assert parse(wire[:cut], 0) == (INCOMPLETE, 0), wire[:cut]


def test_an_error_reply_parses_as_an_error() -> None:
    reply, _ = parse(b"-NOSCRIPT No matching script\r\n", 0)
    assert isinstance(reply, RespError) and str(reply) == "NOSCRIPT No matching script"


def test_commands_are_arrays_of_bulk_strings() -> None:
    assert encode(("SET", "k", 7, b"\r\n")) == (
        b"*4\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\n7\r\n$2\r\n\r\n\r\n"
    )


def test_concurrent_commands_share_one_connection_and_get_their_own_replies(
    run: Run, pipe: RedisPipe, redis_server: RedisServer
) -> None:
    async def body() -> None:
        replies = await asyncio.gather(*(pipe.call("ECHO", f"n{i}") for i in range(200)))
        assert replies == [f"n{i}".encode() for i in range(200)]
        clients = redis_server.client().client_list()
        assert len(clients) == 2  # the pipe and the test's own client

    run(body())


def test_a_caller_that_gives_up_keeps_its_place_and_the_connection_stays(
    run: Run,
    pipe: RedisPipe,
) -> None:
    async def body() -> None:
        before = await pipe.call("CLIENT", "ID")
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await pipe.call("BLPOP", "nothing-ever", "0.3")
        after = await pipe.call("ECHO", "mine")  # answered after BLPOP's nil, never with it
        assert after == b"mine"
        assert await pipe.call("CLIENT", "ID") == before

    run(body())


def test_an_error_reply_raises_and_the_connection_stays_usable(run: Run, pipe: RedisPipe) -> None:
    async def body() -> None:
        with pytest.raises(RespError, match="NOSCRIPT"):
            await pipe.call("EVALSHA", "0" * 40, 0)
        assert await pipe.call("PING") == "PONG"

    run(body())


def test_a_lost_connection_fails_what_waits_and_the_next_command_reconnects(
    run: Run, pipe: RedisPipe, redis_server: RedisServer
) -> None:
    async def body() -> None:
        assert await pipe.call("PING") == "PONG"
        waiting = asyncio.ensure_future(pipe.call("BLPOP", "nothing-ever", "5"))
        await asyncio.sleep(0.05)
        redis_server.stop()
        with pytest.raises(ConnectionError):
            await waiting
        with pytest.raises(OSError):
            await pipe.call("PING")
        redis_server.start()
        assert await pipe.call("PING") == "PONG"

    run(body())


def test_close_fails_what_waits_at_once(run: Run, pipe: RedisPipe) -> None:
    async def body() -> None:
        waiting = asyncio.ensure_future(pipe.call("BLPOP", "nothing-ever", "5"))
        await asyncio.sleep(0.05)
        pipe.close()
        with pytest.raises(ConnectionError):
            await asyncio.wait_for(waiting, 1)
        assert await pipe.call("PING") == "PONG"

    run(body())


def test_the_url_gives_the_password_and_the_database(run: Run) -> None:
    async def body() -> None:
        with RedisServer("--requirepass", "s3cret-pw") as server:
            pipe = RedisPipe(f"redis://:s3cret-pw@127.0.0.1:{server.port}/3")
            try:
                assert await pipe.call("SET", "where", "db3") == "OK"
            finally:
                pipe.close()
            assert server.client().get("where") is None
            server.client().select(3)
            assert server.client().get("where") == b"db3"
            wrong = RedisPipe(f"redis://:nope@127.0.0.1:{server.port}/0")
            with pytest.raises(RespError):
                await wrong.call("PING")
            wrong.close()

    run(body())


def test_a_unix_socket_url(run: Run, tmp_path: Path) -> None:
    async def body() -> None:
        path = tmp_path / "redis.sock"
        with RedisServer("--unixsocket", str(path), "--unixsocketperm", "700"):
            pipe = RedisPipe(f"unix://{path}?db=1")
            try:
                assert await pipe.call("PING") == "PONG"
            finally:
                pipe.close()

    run(body())
