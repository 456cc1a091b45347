"""Fixtures that start real servers on loopback: upstreams and the gateway."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.support.gateway import Gateway
from tests.support.pool import UpstreamPool
from tests.support.procs import Upstream
from tests.support.redisserver import RedisServer


@pytest.fixture
def upstream_factory() -> Iterator[Callable[[str], Upstream]]:
    started: list[Upstream] = []

    def start(name: str) -> Upstream:
        upstream = Upstream.start(name)
        started.append(upstream)
        return upstream

    yield start
    for upstream in started:
        upstream.stop()


@pytest.fixture
def upstream(upstream_factory: Callable[[str], Upstream]) -> Upstream:
    return upstream_factory("a")


@pytest.fixture
def gateway_factory(tmp_path: Path) -> Iterator[Callable[..., Gateway]]:
    started: list[Gateway] = []

    def start(config: Mapping[str, Any], **kwargs: Any) -> Gateway:
        directory = tmp_path / f"gw{len(started)}"
        directory.mkdir()
        gateway = Gateway(config, directory, **kwargs).start()
        started.append(gateway)
        return gateway

    yield start
    for gateway in started:
        gateway.stop()


@pytest.fixture(scope="module")
def upstream_pool() -> Iterator[UpstreamPool]:
    """Upstreams shared by one module's tests (each started on first use)."""
    pool = UpstreamPool()
    yield pool
    pool.stop()


@pytest.fixture
def ups(upstream_pool: UpstreamPool) -> UpstreamPool:
    """The module's upstream pool, each upstream reset the first time this test asks for it."""
    upstream_pool.next_test()
    return upstream_pool


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A fresh redis-server (Debian package) on a free loopback port."""
    server = RedisServer().start()
    yield server
    server.stop()
