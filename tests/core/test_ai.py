"""The AI selector's parts, one test per rule of their docstrings: what a request summary keeps
and masks (``ai.request``), the heuristic (``ai.heuristic``), the prompt and the strict reading
of answers (``ai.prompt``), the local strategies (``ai.strategies``), provider resolution
(``ai.providers``) and the decision log (``ai.decisions``)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kairos_core.ai import heuristic, strategies
from kairos_core.ai.decisions import Decision, DecisionLog
from kairos_core.ai.prompt import CandidateView, InvalidAnswer, build_prompt, parse_answer
from kairos_core.ai.providers import resolve
from kairos_core.ai.request import PREVIEW_CHARS, mask, summarize
from kairos_core.config.models import AiConfig, AiPolicy, Backend
from kairos_core.selection import BackendStats

INSTANT = Backend(host="http://instant", port=1, tags=("instant",))
THINKING = Backend(host="http://thinking", port=2, tags=("thinking",))
CODER = Backend(host="http://coder", port=3, description="A coding model for programming help")
PLAIN = Backend(host="http://plain", port=4)


def chat(text: str, **extra: Any) -> bytes:
    return json.dumps(
        {"model": "m", "messages": [{"role": "user", "content": text}], **extra}
    ).encode()


# --- request summary ------------------------------------------------------------------------------


def test_only_safe_headers_are_kept() -> None:
    headers = [
        ("Content-Type", "application/json"),
        ("Authorization", "Bearer secret-token"),
        ("Cookie", "session=abc"),
        ("X-Api-Key", "k"),
        ("User-Agent", "curl/8"),
    ]
    summary = summarize("r", "POST", "/chat", "", headers, b"{}")
    assert summary.headers == (("content-type", "application/json"), ("user-agent", "curl/8"))


def test_text_comes_from_chat_messages_in_both_shapes() -> None:
    openai = chat("hello there")
    anthropic = json.dumps(
        {
            "system": "be brief",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hi claude"}]}],
        }
    ).encode()
    assert summarize("r", "POST", "/", "", [], openai).text == "hello there"
    assert summarize("r", "POST", "/", "", [], anthropic).text == "be brief\nhi claude"


def test_json_values_under_secret_names_are_redacted() -> None:
    body = json.dumps({"api_key": "abc123", "password": "hunter2", "query": "weather"}).encode()
    text = summarize("r", "POST", "/", "", [], body).text
    assert "abc123" not in text and "hunter2" not in text
    assert "[redacted]" in text and "weather" in text


@pytest.mark.parametrize(
    ("raw", "masked"),
    [
        ("write to alice.smith+x@example.co.uk today", "write to [email] today"),
        ("card 4111 1111 1111 1111 please", "card [card] please"),
        ("card 4111-1111-1111-1111", "card [card]"),
        ("use Bearer abc.def-ghi now", "use Bearer [token] now"),
        ("token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln", "token [token]"),
        ("key sk-proj-ABCDEFGH12345678", "key [token]"),
        ("id 0123456789abcdef0123456789abcdef01", "id [token]"),
        ("call me at 555-1234", "call me at 555-1234"),
    ],
)
def test_masking(raw: str, masked: str) -> None:
    assert mask(raw) == masked


def test_a_streamed_body_is_not_previewed_but_its_size_counts() -> None:
    summary = summarize("r", "POST", "/", "", [], None, declared_bytes=5000)
    assert (summary.previewed, summary.text, summary.body_bytes) == (False, "", 5000)


def test_the_preview_is_cut() -> None:
    summary = summarize("r", "POST", "/", "", [], chat("x " * 2000))
    assert len(summary.preview) == PREVIEW_CHARS


def test_fingerprint_is_equal_for_equal_requests_only() -> None:
    def fp(route: str = "r", path: str = "/a", query: str = "", body: bytes = b"b") -> str:
        return summarize(route, "POST", path, query, [], body).fingerprint

    assert fp() == fp()
    assert len({fp(), fp(route="s"), fp(path="/b"), fp(query="x=1"), fp(body=b"c")}) == 5


# --- heuristic ------------------------------------------------------------------------------------

TIERS = [(0, INSTANT), (1, THINKING)]


def test_a_quick_question_goes_to_the_instant_tier() -> None:
    pick = heuristic.choose("What's the capital of France? Quick answer please.", TIERS)
    assert pick.index == 0


def test_a_long_reasoning_question_goes_to_the_thinking_tier() -> None:
    text = "Explain step by step why the proof works, and compare it to induction. " * 20
    assert heuristic.choose(text, TIERS).index == 1


def test_length_alone_makes_a_request_deep() -> None:
    assert heuristic.choose("lorem ipsum " * 400, TIERS).index == 1


def test_a_streamed_body_counts_by_its_declared_size() -> None:
    assert heuristic.choose("", TIERS, chars=10_000).index == 1
    assert heuristic.choose("", TIERS).index == 0


def test_code_goes_to_a_backend_described_as_coding() -> None:
    text = "```python\ndef f(x):\n    return x\n```\nwhy does this fail?"
    assert heuristic.choose(text, [(0, PLAIN), (2, CODER)]).index == 2


def test_backends_without_tags_or_description_give_no_opinion() -> None:
    pick = heuristic.choose("anything", [(0, PLAIN), (1, Backend(host="http://b", port=5))])
    assert (pick.index, pick.among) == (None, None)


def test_equal_best_scores_narrow_the_choice() -> None:
    other = Backend(host="http://other", port=9, tags=("fast",))
    pick = heuristic.choose("hi", [(0, INSTANT), (1, THINKING), (2, other)])
    assert (pick.index, pick.among) == (None, (0, 2))


def test_the_reason_names_the_tier_and_the_markers() -> None:
    pick = heuristic.choose("Please explain why, step by step", TIERS)
    assert "deep request" in pick.reason and "explain" in pick.reason


# --- prompt -------------------------------------------------------------------------------------


def _views() -> list[CandidateView]:
    fresh = BackendStats(samples=3, latency_ms=42.0, age_s=1.0)
    return [
        CandidateView(0, INSTANT, "closed", fresh, 2),
        CandidateView(1, THINKING, "half_open", BackendStats(), 0),
    ]


def test_the_prompt_shows_the_request_and_each_candidate() -> None:
    headers = [("Content-Type", "application/json"), ("Authorization", "Bearer s3cret")]
    summary = summarize("chat", "POST", "/v1/chat", "", headers, chat("mail bob@example.com"))
    prompt = build_prompt("chat", summary, _views())
    assert "POST /v1/chat" in prompt.user and "content-type: application/json" in prompt.user
    assert "mail [email]" in prompt.user
    assert "s3cret" not in prompt.user and "bob@example.com" not in prompt.user
    assert "index 0:" in prompt.user and "tags: [instant]" in prompt.user
    assert "breaker closed, recent latency 42 ms, 2 in flight" in prompt.user
    assert "breaker half_open, no latency yet, 0 in flight" in prompt.user
    assert '{"index"' in prompt.system


def test_a_streamed_body_is_described_not_shown() -> None:
    summary = summarize("chat", "POST", "/", "", [], None, declared_bytes=123)
    assert "123 bytes, streamed (not shown)" in build_prompt("chat", summary, _views()).user


def test_a_good_answer_is_read() -> None:
    answer = parse_answer('{"index": 1, "reason": "deep"}', [0, 1], 2)
    assert (answer.index, answer.reason) == (1, "deep")
    assert parse_answer('```json\n{"index": 0}\n```', [0, 1], 2).index == 0


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("backend one please", "not JSON"),
        ("[1]", "not a JSON object"),
        ('{"index": "1"}', "not an integer"),
        ('{"index": true}', "not an integer"),
        ('{"index": 1.0}', "not an integer"),
        ('{"index": 7}', "out of range"),
        ('{"index": -1}', "out of range"),
        ('{"index": 1}', "not a candidate"),
    ],
)
def test_unusable_answers_are_rejected(text: str, why: str) -> None:
    with pytest.raises(InvalidAnswer, match=why):
        parse_answer(text, [0], 2)


# --- strategies -----------------------------------------------------------------------------------


def seen(
    latency: float, errors: float = 0.0, *, samples: int = 10, age: float = 1.0, **kw: Any
) -> BackendStats:
    return BackendStats(
        samples=samples,
        latency_ms=latency,
        baseline_latency_ms=kw.get("baseline_latency", latency),
        error_rate=errors,
        baseline_error_rate=kw.get("baseline_errors", errors),
        age_s=age,
    )


def test_a_stale_candidate_with_nothing_in_flight_is_probed_first() -> None:
    pick = strategies.latency_prediction([(0, seen(5), 0), (1, seen(500, age=30.0), 0)])
    assert pick.index == 1 and "probing" in pick.reason
    never = strategies.latency_prediction([(0, seen(5), 0), (1, BackendStats(), 0)])
    assert never.index == 1


def test_a_probe_in_flight_leaves_the_stale_candidate_out() -> None:
    pick = strategies.latency_prediction(
        [(0, seen(50), 0), (1, BackendStats(), 1), (2, seen(10), 0)]
    )
    assert pick.index == 2


def test_latency_prediction_picks_the_lowest_predicted_cost() -> None:
    assert strategies.latency_prediction([(0, seen(200), 0), (1, seen(20), 0)]).index == 1


def test_in_flight_requests_raise_the_predicted_cost() -> None:
    assert strategies.latency_prediction([(0, seen(30), 0), (1, seen(20), 3)]).index == 0


def test_equal_costs_go_to_the_balancer() -> None:
    pick = strategies.latency_prediction([(0, seen(20), 0), (1, seen(20), 0)])
    assert (pick.index, pick.among) == (None, (0, 1))


def test_an_error_outlier_among_siblings_is_avoided() -> None:
    pick = strategies.anomaly_detection(
        [(0, seen(20, 0.0), 0), (1, seen(20, 0.9), 0), (2, seen(22, 0.05), 0)]
    )
    assert pick.among == (0, 2) and "backend 1" in pick.reason


def test_a_latency_outlier_among_siblings_is_avoided() -> None:
    pick = strategies.anomaly_detection([(0, seen(20), 0), (1, seen(400), 0), (2, seen(25), 0)])
    assert pick.among == (0, 2)


def test_with_two_candidates_each_is_judged_against_its_own_baseline() -> None:
    failing_lately = seen(20, 0.8, baseline_errors=0.05)
    always_slowish = seen(300, baseline_latency=280)
    pick = strategies.anomaly_detection([(0, failing_lately, 0), (1, always_slowish, 0)])
    assert (pick.index, pick.among) == (1, (1,))
    too_few = seen(20, 0.8, baseline_errors=0.05, samples=3)
    assert strategies.anomaly_detection([(0, too_few, 0), (1, always_slowish, 0)]).among is None


def test_when_every_candidate_is_an_outlier_none_is_avoided() -> None:
    bad = seen(20, 0.9, baseline_errors=0.0)
    pick = strategies.anomaly_detection([(0, bad, 0), (1, bad, 0)])
    assert (pick.index, pick.among) == (None, None)


# --- providers ----------------------------------------------------------------------------------


def policy(**fields: Any) -> AiPolicy:
    return AiPolicy.model_validate(fields)


def test_no_ai_block_means_the_heuristic() -> None:
    resolved = resolve(None, policy(), {})
    assert (resolved.provider, resolved.endpoints) == ("heuristic", ())


def test_a_hosted_provider_without_a_key_falls_back_to_the_heuristic() -> None:
    resolved = resolve(AiConfig(provider="openai", model="gpt-4o"), policy(), {})
    assert resolved.provider == "heuristic" and "OPENAI_API_KEY" in resolved.note


def test_the_key_comes_from_the_provider_variable() -> None:
    ai = AiConfig(provider="groq", model="llama")
    (endpoint,) = resolve(ai, policy(), {"GROQ_API_KEY": "gk"}).endpoints
    assert (endpoint.wire, endpoint.base_url, endpoint.api_key) == (
        "openai",
        "https://api.groq.com/openai/v1",
        "gk",
    )


def test_base_url_points_the_ai_blocks_provider_elsewhere_without_a_key() -> None:
    ai = AiConfig(provider="openai", model="llama3", base_url="http://127.0.0.1:11434/v1/")
    (endpoint,) = resolve(ai, policy(), {}).endpoints
    assert (endpoint.base_url, endpoint.api_key) == ("http://127.0.0.1:11434/v1", None)


def test_the_routes_model_and_provider_win() -> None:
    ai = AiConfig(provider="openai", model="gpt-4o", api_key="k")
    route = policy(strategy={"content_analysis": {"model": "claude-x"}}, provider="anthropic")
    (endpoint,) = resolve(ai, route, {"ANTHROPIC_API_KEY": "ak"}).endpoints
    assert (endpoint.provider, endpoint.wire, endpoint.model, endpoint.api_key) == (
        "anthropic",
        "anthropic",
        "claude-x",
        "ak",
    )


def test_fallback_providers_follow_in_order() -> None:
    ai = AiConfig.model_validate(
        {
            "provider": "openai",
            "model": "a",
            "api_key": "k",
            "fallback_providers": [{"provider": "mistral", "model": "b", "api_key": "m"}],
        }
    )
    assert [e.provider for e in resolve(ai, policy(), {}).endpoints] == ["openai", "mistral"]


# --- decisions ----------------------------------------------------------------------------------


def decision(source: Any = "llm", **fields: Any) -> Decision:
    return Decision(route="chat", request_id="r", strategy="content_analysis", mode="inline",
                    source=source, reason="", latency_ms=1.0, **fields)  # fmt: skip


def test_a_finished_decision_is_joined_to_its_outcome_and_published() -> None:
    published: list[Decision] = []
    log = DecisionLog(published.append)
    made = decision()
    log.finish(made, 200, 0.0123)
    assert (made.status, made.upstream_ms, made.id) == (200, 12.3, 1)
    assert published == [made] and log.recent(5) == [made]


def test_routed_outcomes_are_compared_by_group() -> None:
    log = DecisionLog()
    for status in (200, 200, 502):
        log.finish(decision("llm"), status, 0.01)
    log.finish(decision("fallback:timeout"), 200, 0.05)
    (stats,) = log.routes()
    assert (stats.selector.requests, stats.selector.success_rate) == (3, 0.6667)
    assert (stats.fallback.requests, stats.fallback.success_rate, stats.fallback.p50_ms) == (
        1,
        1.0,
        50.0,
    )


def test_shadow_decisions_count_agreement_not_outcomes() -> None:
    log = DecisionLog()
    log.finish(decision(shadow=True, agrees=True), None, None)
    log.finish(decision(shadow=True, agrees=False), None, None)
    (stats,) = log.routes()
    assert (stats.shadow_decisions, stats.shadow_agreement_rate) == (2, 0.5)
    assert stats.selector.requests == 0
    assert log.shadow_agreement_rate() == 0.5


def test_the_log_keeps_the_newest_decisions() -> None:
    log = DecisionLog(capacity=3)
    made = [decision() for _ in range(5)]
    for item in made:
        log.finish(item, 200, 0.0)
    assert log.recent(10) == made[:1:-1]
    assert log.total == 5
