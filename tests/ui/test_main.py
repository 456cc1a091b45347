"""kairos_ui.main: the command line's defaults."""

from __future__ import annotations

import pytest

from kairos_client import DEFAULT_BASE_URL
from kairos_ui.main import parse_args


def test_the_gateway_defaults_to_the_environment_then_to_the_sdk_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("KAIROS_ADMIN_URL", raising=False)
    assert parse_args([]).gateway == DEFAULT_BASE_URL
    monkeypatch.setenv("KAIROS_ADMIN_URL", "http://10.0.0.7:5901")
    assert parse_args([]).gateway == "http://10.0.0.7:5901"
    assert parse_args(["--gateway", "http://127.0.0.1:7001"]).gateway == "http://127.0.0.1:7001"
