"""kairos-rs's published configs load here with the same meaning (../fixtures/kairos-rs/README.md).

Each file gives the result its README row states; the valid ones keep kairos-rs's meaning (legacy
routes, ``_comment`` keys, rate-limit and AI policy spellings).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kairos_core.config import (
    Backend,
    ConfigError,
    GatewayConfig,
    LoadedConfig,
    Severity,
    load_config,
    route_ids,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "kairos-rs"

VALID = (
    "config.json",
    "config_advanced.json",
    "config_ai_test.json",
    "crates_kairos-gateway_config.json",
    "examples_http_routing_config.json",
    "examples_websocket_routing_config.json",
)
INVALID = "config_multi_protocol.json"


@pytest.fixture(autouse=True)
def _no_admin_token_in_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KAIROS_ADMIN_TOKEN", raising=False)


def load(name: str) -> LoadedConfig:
    return load_config(FIXTURES / name, environ={})


def config_of(name: str) -> GatewayConfig:
    return load(name).config


def line_of(name: str, needle: str) -> int:
    lines = (FIXTURES / name).read_text().splitlines()
    return next(i for i, line in enumerate(lines) if needle in line) + 1


def readme_expectations() -> dict[str, str]:
    """file name → the README's "expected result" column."""
    rows = re.findall(
        r"^\|\s*([\w.-]+\.json)\s*\|[^|]*\|\s*([^|]+?)\s*\|$",
        (FIXTURES / "README.md").read_text(),
        flags=re.MULTILINE,
    )
    return dict(rows)


def test_readme_table_covers_every_fixture_and_matches_these_tests() -> None:
    expected = readme_expectations()
    assert set(expected) == {p.name for p in FIXTURES.glob("*.json")}
    assert "MIT License" in (FIXTURES / "LICENSE").read_text()
    assert set(expected) == {*VALID, INVALID}
    for name in VALID:
        assert expected[name] == "valid (warnings allowed)"
    assert expected[INVALID].startswith("invalid")


@pytest.mark.parametrize("name", VALID)
def test_valid_fixture_loads_with_only_warnings(name: str) -> None:
    loaded = load(name)
    assert loaded.source == str(FIXTURES / name)
    assert all(issue.severity is not Severity.ERROR for issue in loaded.issues)
    assert all(issue.path and issue.line for issue in loaded.issues)


@pytest.mark.parametrize("name", VALID)
def test_route_ids_are_unique(name: str) -> None:
    ids = route_ids(config_of(name).routers)
    assert len(ids) == len(set(ids)) == len(config_of(name).routers)


def test_multi_protocol_fixture_is_invalid_with_one_located_error_per_problem() -> None:
    with pytest.raises(ConfigError) as info:
        load(INVALID)
    errors = {issue.path: issue for issue in info.value.errors}
    ftp, dns = errors["routers[2].protocol"], errors["routers[3].protocol"]
    assert "ftp" in ftp.message and "not supported" in ftp.message
    assert "dns" in dns.message and "not supported" in dns.message
    assert ftp.allowed == dns.allowed == ("http", "websocket")
    strategy = errors["rate_limit.strategy"]
    assert "'sliding_window'" in strategy.message and "not supported" in strategy.message
    assert ftp.line == line_of(INVALID, '"protocol": "ftp"')
    assert dns.line == line_of(INVALID, '"protocol": "dns"')
    assert strategy.line == line_of(INVALID, '"strategy": "sliding_window"')
    assert all(issue.line is not None for issue in info.value.errors)
    assert not any(path.startswith(("routers[0]", "routers[1]")) for path in errors)
    typo = errors["rate_limit.requests_per_minute"]
    assert typo.message == "unknown key 'requests_per_minute'; did you mean 'requests_per_window'?"
    assert typo.line == line_of(INVALID, '"requests_per_minute"')


def test_legacy_host_port_route_becomes_one_backend_with_weight_one() -> None:
    router = config_of("config.json").routers[0]
    assert router.backends is None
    assert router.effective_backends == (Backend(host="http://localhost", port=3000, weight=1),)


def test_config_json_keeps_its_meaning() -> None:
    config = config_of("config.json")
    assert config.rate_limit is not None
    assert config.rate_limit.strategies == ("PerIP",)
    assert config.rate_limit.window_type == "SlidingWindow"
    assert (config.rate_limit.requests_per_window, config.rate_limit.burst_allowance) == (100, 20)
    assert config.jwt is not None and config.jwt.required_claims == ("sub",)
    assert [r.auth_required for r in config.routers] == [False, False, False, True, False]
    websocket = config.routers[4]
    assert websocket.protocol == "websocket"
    assert websocket.effective_backends[0].host == "ws://localhost"
    assert config.routers[2].external_path == "/cats/{id}"


def test_comment_keys_are_ignored() -> None:
    loaded = load("config_advanced.json")
    assert "_comment" in loaded.document["routers"][0]
    assert not any("_comment" in issue.path for issue in loaded.issues)
    assert not any(issue.severity is Severity.ERROR for issue in loaded.issues)


def test_advanced_fixture_keeps_its_strategies() -> None:
    config = config_of("config_advanced.json")
    assert config.rate_limit is not None
    assert config.rate_limit.strategies == ("PerIPAndRoute",)
    assert config.rate_limit.window_type == "SlidingWindow"
    assert [r.load_balancing_strategy for r in config.routers] == [
        "round_robin",
        "round_robin",
        "weighted",
        "ip_hash",
        "random",
    ]
    assert [b.weight for b in config.routers[2].effective_backends] == [2, 1]
    retry = config.routers[2].retry
    assert retry is not None
    assert (retry.max_retries, retry.max_backoff_ms, retry.retry_on_status_codes) == (
        2,
        2000,
        (503, 504),
    )


def test_ai_fixture_keeps_its_policy() -> None:
    config = config_of("config_ai_test.json")
    assert config.ai is not None and (config.ai.provider, config.ai.model) == ("openai", "gpt-4o")
    policy = config.routers[0].ai_policy
    assert policy is not None and policy.enabled
    assert (policy.strategy.kind, policy.strategy.model) == ("content_analysis", "gpt-3.5-turbo")
    assert (policy.provider, policy.fallback_backend_index) == ("openai", 0)
    assert len(config.routers[0].effective_backends) == 2
