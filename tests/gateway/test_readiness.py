"""Readiness (DESIGN.md §7, ``GatewayRuntime.not_ready_reasons``), one test per condition.

Ready means: the config is loaded, the proxy listener is bound, the gateway is not draining, and
under cluster mode with ``on_redis_error: deny`` Redis is reachable. Routes without a candidate
backend are listed apart and never make the gateway not ready. The real process's ``/ready``
is exercised in ``test_admin_api.py``; here the rule runs on an in-process runtime.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import pytest

from kairos_core.config import parse_config
from kairos_core.redislink import FAILURES_TO_DOWN, RedisUnavailable
from kairos_gateway.runtime import GatewayRuntime
from tests.support.redisserver import RedisServer

BACKEND = "http://127.0.0.1:9"


def runtime(tmp_path: Path, **blocks: Any) -> GatewayRuntime:
    document = {
        "routers": [
            {
                "name": "a",
                "external_path": "/a",
                "internal_path": "/a",
                "methods": ["GET"],
                "backends": [{"host": "http://127.0.0.1", "port": 9}],
            }
        ],
        **blocks,
    }
    loaded = parse_config(json.dumps(document), environ={})
    started = GatewayRuntime(loaded, tmp_path / "config.json")
    started.mark_listening()
    return started


def test_a_loaded_bound_gateway_that_is_not_draining_is_ready(tmp_path: Path) -> None:
    assert runtime(tmp_path).not_ready_reasons() == []


def test_not_ready_until_the_proxy_listener_is_bound(tmp_path: Path) -> None:
    fresh = runtime(tmp_path)
    fresh.listening = False
    assert fresh.not_ready_reasons() == ["the proxy listener is not bound yet"]


def test_not_ready_while_draining(tmp_path: Path) -> None:
    draining = runtime(tmp_path)
    assert draining.draining is False
    draining.draining = True
    assert draining.not_ready_reasons() == [
        "draining: shutting down, finishing the requests in flight"
    ]


@pytest.mark.parametrize(("policy", "ready"), [("deny", False), ("allow", True)])
async def test_unreachable_redis_matters_only_under_on_redis_error_deny(
    tmp_path: Path, redis_server: RedisServer, policy: str, ready: bool
) -> None:
    cluster = {"redis_url": redis_server.url, "on_redis_error": policy}
    clustered = runtime(tmp_path, cluster=cluster)
    assert clustered.link is not None
    await clustered.link.start()
    try:
        assert clustered.not_ready_reasons() == []
        redis_server.stop()
        for _ in range(FAILURES_TO_DOWN):
            with contextlib.suppress(RedisUnavailable):
                await clustered.link.request(lambda pipe: pipe.call("PING"))
        assert (clustered.not_ready_reasons() == []) is ready
    finally:
        await clustered.link.stop()


def test_a_route_without_a_candidate_is_listed_but_never_makes_the_gateway_not_ready(
    tmp_path: Path,
) -> None:
    one_dead = runtime(tmp_path)
    breaker = one_dead.shared.breakers.get(BACKEND)
    assert breaker is not None
    breaker.force_open()
    assert (one_dead.not_ready_reasons(), one_dead.unroutable()) == ([], ["a"])
