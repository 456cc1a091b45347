"""The AI backend selector seen from outside (DESIGN.md §6): a real gateway, real upstreams, and
an LLM stand-in speaking the OpenAI and Anthropic wire formats (``tests.support.llm``).

Which backend served a request is read from the echo upstream's answer (``server``); what the
selector decided, from ``GET /api/ai/decisions``; how many LLM calls were made and what they
carried, from the stand-in's own log.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from tests.support.gateway import Gateway, backend
from tests.support.llm import LlmStandIn
from tests.support.pool import UpstreamPool
from tests.support.waiting import wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]
FIXTURE = REPO_ROOT / "tests" / "fixtures" / "kairos-rs" / "config_ai_test.json"
QUICK = "What's the capital of France? Quick answer."
DEEP = "Explain step by step why the proof by induction works, and compare approaches. " * 30
NO_KEYS = {"OPENAI_API_KEY": "", "ANTHROPIC_API_KEY": ""}

StartGateway = Callable[..., Gateway]


@pytest.fixture(scope="module")
def llm() -> Iterator[LlmStandIn]:
    stand_in = LlmStandIn().start()
    yield stand_in
    stand_in.stop()


@pytest.fixture
def fresh_llm(llm: LlmStandIn) -> LlmStandIn:
    llm.control()
    llm.reset_calls()
    return llm


def ai_route(ups: UpstreamPool, name: str = "chat", **policy: Any) -> dict[str, Any]:
    return {
        "name": name,
        "external_path": f"/{name}",
        "internal_path": "/v1/chat",
        "methods": ["POST", "GET"],
        "backends": [
            backend(ups["a"].url, tags=["instant"], description="small fast model"),
            backend(ups["b"].url, tags=["thinking"], description="large reasoning model"),
        ],
        "circuit_breaker": {"failure_threshold": 1000},
        "ai_policy": {
            "strategy": {"content_analysis": {"model": "stand-in-1"}},
            "timeout_ms": 1000,
            **policy,
        },
    }


def openai(llm: LlmStandIn, **extra: Any) -> dict[str, Any]:
    return {"provider": "openai", "model": "m", "base_url": f"{llm.url}/v1", **extra}


def start(factory: StartGateway, *routers: dict[str, Any], **top: Any) -> Gateway:
    return factory({"routers": list(routers), **top}, env=NO_KEYS)


def ask(gateway: Gateway, text: str = QUICK, path: str = "/chat", **kwargs: Any) -> httpx.Response:
    body = {"model": "any", "messages": [{"role": "user", "content": text}]}
    with gateway.client() as client:
        return client.post(path, json=body, **kwargs)


def served_by(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    return str(response.json()["server"])


def decisions(gateway: Gateway) -> list[dict[str, Any]]:
    body = httpx.get(f"{gateway.admin_url}/api/ai/decisions?limit=1000", trust_env=False).json()
    return list(reversed(body["decisions"]))  # oldest first


# --- the LLM decides ----------------------------------------------------------------------------


def test_the_backend_the_llm_chooses_receives_the_request(
    ups: UpstreamPool, fresh_llm: LlmStandIn, gateway_factory: StartGateway
) -> None:
    fresh_llm.control(index=1, reason="needs the big model")
    gateway = start(gateway_factory, ai_route(ups), ai=openai(fresh_llm))
    assert served_by(ask(gateway)) == "b"  # the heuristic alone would pick a (instant tier)
    assert ups["b"].hits() == 1 and ups["a"].hits() == 0
    wait_until(lambda: len(decisions(gateway)) == 1)
    (made,) = decisions(gateway)
    assert (made["source"], made["backend"], made["index"]) == ("llm", ups["b"].url, 1)
    assert (made["reason"], made["status"], made["mode"]) == ("needs the big model", 200, "inline")
    assert made["upstream_ms"] > 0
    (call,) = fresh_llm.calls()
    assert call["path"] == "/v1/chat/completions"
    assert call["body"]["response_format"] == {"type": "json_object"}
    metrics = httpx.get(f"{gateway.admin_url}/metrics", trust_env=False).text
    assert 'kairos_ai_decisions_total{route="chat",source="llm"} 1.0' in metrics


def test_the_anthropic_messages_api(
    ups: UpstreamPool, fresh_llm: LlmStandIn, gateway_factory: StartGateway
) -> None:
    fresh_llm.control(index=1, api_key="anthropic-key")
    anthropic = {"provider": "anthropic", "model": "claude-x", "base_url": fresh_llm.url,
                 "api_key": "anthropic-key"}  # fmt: skip
    gateway = start(gateway_factory, ai_route(ups), ai=anthropic)
    assert served_by(ask(gateway)) == "b"
    (call,) = fresh_llm.calls()
    headers = {name.lower(): value for name, value in call["headers"]}
    assert call["path"] == "/v1/messages"
    assert (headers["x-api-key"], headers["anthropic-version"]) == ("anthropic-key", "2023-06-01")
    assert (
        call["body"]["model"] == "stand-in-1"  # the route's model wins
        and "Candidates:" in call["body"]["messages"][0]["content"]
    )
    assert decisions(gateway)[0]["source"] == "llm"


def test_no_credential_cookie_or_email_reaches_the_llm(
    ups: UpstreamPool, fresh_llm: LlmStandIn, gateway_factory: StartGateway
) -> None:
    gateway = start(gateway_factory, ai_route(ups), ai=openai(fresh_llm))
    secret = "client-secret-token-0123456789abcdef"
    response = ask(
        gateway,
        "Reply to carol.jones@example.com, card 4111 1111 1111 1111, key sk-live-ABCDEFGH1234",
        headers={
            "Authorization": f"Bearer {secret}",
            "Cookie": "session=s3ssion",
            "X-Api-Key": "xk",
        },
    )
    assert response.status_code == 200
    (call,) = fresh_llm.calls()
    names = {name.lower() for name, _ in call["headers"]}
    assert not names & {"authorization", "cookie", "x-api-key"}
    sent = json.dumps(call)
    for leaked in (
        secret,
        "s3ssion",
        "carol.jones@example.com",
        "4111 1111",
        "sk-live-ABCDEFGH1234",
    ):
        assert leaked not in sent
    assert "[email]" in sent and "[card]" in sent and "[token]" in sent


# --- bounded --------------------------------------------------------------------------------------


def test_a_slow_llm_costs_at_most_the_timeout(
    ups: UpstreamPool, fresh_llm: LlmStandIn, gateway_factory: StartGateway
) -> None:
    fresh_llm.control(delay_ms=3000, index=1)
    gateway = start(gateway_factory, ai_route(ups, timeout_ms=300), ai=openai(fresh_llm))
    started = time.monotonic()
    assert served_by(ask(gateway)) == "a"  # the heuristic's pick (a quick question)
    elapsed = time.monotonic() - started
    (made,) = decisions(gateway)
    assert made["source"] == "fallback:timeout" and "heuristic" in made["reason"]
    assert 300 <= made["latency_ms"] <= 400, made  # timeout_ms + 100 ms
    assert elapsed < 1.5, elapsed  # end to end, on a loaded machine


@pytest.mark.parametrize(
    ("behavior", "source"),
    [
        ("garbage", "fallback:invalid"),
        ("out_of_range", "fallback:invalid"),
        ("fail", "fallback:error"),
    ],
)
def test_unusable_answers_fall_back_with_their_source(
    ups: UpstreamPool,
    fresh_llm: LlmStandIn,
    gateway_factory: StartGateway,
    behavior: str,
    source: str,
) -> None:
    fresh_llm.control(behavior=behavior)
    gateway = start(gateway_factory, ai_route(ups), ai=openai(fresh_llm))
    assert served_by(ask(gateway, DEEP)) == "b"  # the heuristic: a deep question, thinking tier
    (made,) = decisions(gateway)
    assert made["source"] == source and "heuristic" in made["reason"]


def test_an_answer_naming_an_open_breaker_backend_is_rejected(
    ups: UpstreamPool, fresh_llm: LlmStandIn, gateway_factory: StartGateway
) -> None:
    fresh_llm.control(index=1)
    gateway = start(gateway_factory, ai_route(ups), ai=openai(fresh_llm))
    opened = httpx.post(f"{gateway.admin_url}/api/circuits/{ups['b'].url}/open", trust_env=False)
    assert opened.status_code == 200
    assert served_by(ask(gateway)) == "a"
    (made,) = decisions(gateway)
    assert made["source"] == "fallback:invalid" and "not a candidate" in made["reason"]
    (call,) = fresh_llm.calls()
    prompt = call["body"]["messages"][1]["content"]
    assert "index 0:" in prompt and "index 1:" not in prompt  # only candidates are offered
    assert ups["b"].hits() == 0


def test_identical_concurrent_requests_share_one_call(
    ups: UpstreamPool, fresh_llm: LlmStandIn, gateway_factory: StartGateway
) -> None:
    fresh_llm.control(index=1, delay_ms=500)
    gateway = start(gateway_factory, ai_route(ups, max_concurrent_calls=2), ai=openai(fresh_llm))
    with ThreadPoolExecutor(50) as pool:
        servers = list(pool.map(lambda _: served_by(ask(gateway)), range(50)))
    assert servers == ["b"] * 50
    assert len(fresh_llm.calls()) == 1
    wait_until(lambda: len(decisions(gateway)) == 50)
    sources = [d["source"] for d in decisions(gateway)]
    assert set(sources) <= {"llm", "cache"} and sources.count("llm") > 1  # waiters shared it


def test_a_repeated_request_is_served_from_the_cache(
    ups: UpstreamPool, fresh_llm: LlmStandIn, gateway_factory: StartGateway
) -> None:
    fresh_llm.control(index=1)
    gateway = start(gateway_factory, ai_route(ups), ai=openai(fresh_llm))
    assert [served_by(ask(gateway)) for _ in range(3)] == ["b", "b", "b"]
    assert served_by(ask(gateway, "a different question")) == "b"
    assert len(fresh_llm.calls()) == 2
    assert [d["source"] for d in decisions(gateway)] == ["llm", "cache", "cache", "llm"]


def test_over_max_concurrent_calls_falls_back_at_once(
    ups: UpstreamPool, fresh_llm: LlmStandIn, gateway_factory: StartGateway
) -> None:
    fresh_llm.control(index=1, delay_ms=800)
    gateway = start(gateway_factory, ai_route(ups, max_concurrent_calls=1), ai=openai(fresh_llm))
    with ThreadPoolExecutor(2) as pool:
        slow = pool.submit(ask, gateway, "first question")
        time.sleep(0.3)
        started = time.monotonic()
        quick = ask(gateway, "second question")
        assert time.monotonic() - started < 0.5
        assert quick.status_code == 200 and slow.result().status_code == 200
    sources = {d["source"] for d in decisions(gateway)}
    assert sources == {"llm", "fallback:busy"}
    assert len(fresh_llm.calls()) == 1


# --- modes ----------------------------------------------------------------------------------------


def test_background_mode_adds_no_wait_and_later_requests_follow_the_llm(
    ups: UpstreamPool, fresh_llm: LlmStandIn, gateway_factory: StartGateway
) -> None:
    fresh_llm.control(index=1, delay_ms=1000)
    gateway = start(
        gateway_factory, ai_route(ups, mode="background", timeout_ms=2000), ai=openai(fresh_llm)
    )
    for _ in range(5):
        started = time.monotonic()
        assert served_by(ask(gateway)) == "a"  # the fallback order: the heuristic's instant tier
        assert time.monotonic() - started < 0.2
    wait_until(lambda: len(fresh_llm.calls()) == 1 and served_by(ask(gateway)) == "b", 5)
    assert served_by(ask(gateway)) == "b"
    sources = [d["source"] for d in decisions(gateway)]
    assert sources[:5] == ["fallback:pending"] * 5 and sources[-1] == "cache"
    assert len(fresh_llm.calls()) == 1


def test_shadow_mode_never_changes_routing_and_reports_agreement(
    ups: UpstreamPool, fresh_llm: LlmStandIn, gateway_factory: StartGateway
) -> None:
    fresh_llm.control(index=1)
    gateway = start(gateway_factory, ai_route(ups, mode="shadow"), ai=openai(fresh_llm))
    servers = [served_by(ask(gateway, f"question {i}")) for i in range(10)]
    assert servers == ["a", "b"] * 5  # round robin, untouched by the LLM's opinion
    wait_until(lambda: len(decisions(gateway)) == 10)
    made = decisions(gateway)
    assert all(d["shadow"] and d["source"] == "llm" and d["backend"] == ups["b"].url for d in made)
    assert sum(d["agrees"] for d in made) == 5
    snapshot = httpx.get(f"{gateway.admin_url}/api/metrics", trust_env=False).json()
    (route,) = snapshot["ai"]["routes"]
    assert (route["shadow_decisions"], route["shadow_agreement_rate"]) == (10, 0.5)
    (figures,) = snapshot["routes"]
    assert (figures["has_ai"], figures["ai_mode"]) == (True, "shadow")


# --- no LLM ---------------------------------------------------------------------------------------


def test_without_an_ai_block_the_heuristic_routes_offline(
    ups: UpstreamPool, gateway_factory: StartGateway
) -> None:
    gateway = start(gateway_factory, ai_route(ups))
    assert served_by(ask(gateway, QUICK)) == "a"
    assert served_by(ask(gateway, DEEP)) == "b"
    made = decisions(gateway)
    assert [d["source"] for d in made] == ["heuristic", "heuristic"]
    assert "instant" in made[0]["reason"] and "thinking" in made[1]["reason"]
    assert "offline heuristic selects" in gateway.process.log_text()


def test_the_kairos_rs_ai_fixture_loads_and_routes_without_a_key(
    ups: UpstreamPool, gateway_factory: StartGateway
) -> None:
    document = json.loads(FIXTURE.read_text())
    for target, upstream in zip(
        document["routers"][0]["backends"], (ups["a"], ups["b"]), strict=True
    ):
        target.update(backend(upstream.url))
    gateway = gateway_factory(document, env=NO_KEYS)
    response = ask(gateway, path="/api/v1/smart-router")
    assert served_by(response) == "a"  # fallback_backend_index 0: the backends have no tags
    (made,) = decisions(gateway)
    assert made["source"] == "heuristic" and "fallback_backend_index 0" in made["reason"]
    assert "OPENAI_API_KEY" in gateway.process.log_text()


# --- strategies without an LLM --------------------------------------------------------------------


def test_latency_prediction_moves_traffic_away_from_a_slow_backend(
    ups: UpstreamPool, gateway_factory: StartGateway
) -> None:
    ups["a"].control(delay_ms=150)
    gateway = start(gateway_factory, ai_route(ups, strategy="latency_prediction"))
    servers = [served_by(ask(gateway)) for _ in range(20)]
    assert servers[:2] == ["a", "b"]  # each probed once
    assert servers[2:].count("b") == 18
    assert {d["source"] for d in decisions(gateway)} == {"latency_prediction"}


def test_anomaly_detection_moves_traffic_away_from_a_failing_backend(
    ups: UpstreamPool, gateway_factory: StartGateway
) -> None:
    gateway = start(gateway_factory, ai_route(ups, strategy="anomaly_detection"))
    warm = [served_by(ask(gateway)) for _ in range(12)]
    assert warm.count("a") == warm.count("b") == 6
    ups["a"].control(mode="fail", status=500)
    statuses = []
    for _ in range(20):
        with gateway.client() as client:
            statuses.append(client.post("/chat", json={"q": 1}).status_code)
    assert statuses.count(500) <= 2  # a is avoided after its first failure
    avoided = [d for d in decisions(gateway) if "avoiding backend 0" in d["reason"]]
    assert len(avoided) >= 15


# --- dry run --------------------------------------------------------------------------------------


def test_route_test_with_ai_shows_the_prompt_and_the_live_answer(
    ups: UpstreamPool, fresh_llm: LlmStandIn, gateway_factory: StartGateway
) -> None:
    fresh_llm.control(index=1, reason="the thinking tier")
    gateway = start(gateway_factory, ai_route(ups), ai=openai(fresh_llm))
    body = {"method": "POST", "path": "/chat", "body": json.dumps({"prompt": QUICK}), "ai": True}
    report = httpx.post(f"{gateway.admin_url}/api/route-test", json=body, trust_env=False).json()
    plan = report["report"]["ai_policy"]
    assert (plan["live_index"], plan["live_reason"]) == (1, "the thinking tier")
    assert plan["live_latency_ms"] > 0 and plan["live_error"] is None
    assert (plan["source"], plan["pick_index"]) == ("heuristic", 0)
    assert QUICK in plan["prompt_user"] and "Candidates:" in plan["prompt_user"]
    assert len(fresh_llm.calls()) == 1
    assert decisions(gateway) == []  # a dry run decides nothing


def test_kairos_route_test_ai_asks_the_llm(
    ups: UpstreamPool, fresh_llm: LlmStandIn, tmp_path: Path
) -> None:
    fresh_llm.control(index=1, reason="deep enough")
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"routers": [ai_route(ups)], "ai": openai(fresh_llm)}))
    result = subprocess.run(
        [sys.executable, "-m", "kairos_cli", "route-test", "POST", "/chat", "-c", str(config),
         "-d", json.dumps({"prompt": QUICK}), "--ai"],
        capture_output=True, text=True, cwd=REPO_ROOT, env={**os.environ, **NO_KEYS}, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "the LLM chose backend 1" in result.stdout and "deep enough" in result.stdout
    assert "[system] You are the routing brain" in result.stdout
    assert len(fresh_llm.calls()) == 1


# --- refused requests never reach the LLM ---------------------------------------------------------

AUTH_SECRET = "ai-selector-tests-jwt-secret-5c1e8a3f9b2d7064"


def test_a_request_refused_with_401_or_429_never_reaches_the_llm(
    ups: UpstreamPool, fresh_llm: LlmStandIn, gateway_factory: StartGateway
) -> None:
    fresh_llm.control(index=1)
    no_cache = {"cache_ttl_s": 0}  # every request that gets through asks the LLM
    gateway = start(
        gateway_factory,
        ai_route(ups, "private", **no_cache) | {"auth_required": True},
        ai_route(ups, "limited", **no_cache)
        | {"rate_limit": {"strategy": "PerIP", "requests_per_window": 1, "window_duration": 60}},
        ai=openai(fresh_llm),
        jwt={"secret": AUTH_SECRET},
    )
    claims = {"sub": "ada", "exp": int(time.time()) + 300}
    forged = jwt.encode(claims, "not-the-secret-0123456789abcdefghijkl", algorithm="HS256")

    for authorization in (None, f"Bearer {forged}"):
        headers = {"Authorization": authorization} if authorization else {}
        refused = ask(gateway, "first secret question", "/private", headers=headers)
        assert refused.status_code == 401, refused.text
        assert refused.json()["type"] == "authentication_error"
    assert served_by(ask(gateway, "first limited question", "/limited")) == "b"
    assert len(fresh_llm.calls()) == 1  # the one request that passed the limit
    limited = ask(gateway, "second limited question", "/limited")
    assert limited.status_code == 429, limited.text
    assert limited.json()["type"] == "rate_limit_error"
    assert len(fresh_llm.calls()) == 1

    valid = jwt.encode(claims, AUTH_SECRET, algorithm="HS256")
    allowed = ask(
        gateway, "second secret question", "/private", headers={"Authorization": f"Bearer {valid}"}
    )
    assert served_by(allowed) == "b"  # the same route does ask the LLM once authenticated
    calls = fresh_llm.calls()
    assert len(calls) == 2
    prompts = json.dumps([call["body"] for call in calls])
    assert "first secret question" not in prompts and "second limited question" not in prompts
    assert ups["a"].hits() + ups["b"].hits() == 2
    assert {d["route"] for d in decisions(gateway)} == {"private", "limited"}
    assert len(decisions(gateway)) == 2
