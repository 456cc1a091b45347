"""The ``kairos`` command (DESIGN.md §9): output and exit codes of validate, route-test, init and
config schema.

Most cases run in-process through typer's ``CliRunner``; a handful run ``python -m kairos_cli`` as a
real subprocess to pin exit codes and what a pipe (or a terminal) receives.
"""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from typer.testing import CliRunner

from kairos_cli.main import app
from kairos_core.config import load_config
from kairos_core.dryrun import plan_request
from kairos_core.state import compile_state
from tests.support.procs import LOOPBACK, REPO_ROOT, free_port

SECRET = "k3Jq9vXw2LmN8pRt5YzA7bCd4EfGh6Ui-cli"
B1, B2 = "http://127.0.0.1:9001", "http://127.0.0.1:9002"
ANSI_ESCAPE = "\x1b["

CONFIG: dict[str, Any] = {
    "jwt": {"secret": SECRET},
    "rate_limit": {"strategy": "PerIP", "requests_per_window": 100, "window_duration": 60},
    "routers": [
        {
            "name": "users",
            "backends": [
                {"host": "http://127.0.0.1", "port": 9001},
                {"host": "http://127.0.0.1", "port": 9002},
            ],
            "external_path": "/api/users/{id}",
            "internal_path": "/users/{id}",
            "methods": ["GET", "POST"],
            "retry": {"max_retries": 3, "initial_backoff_ms": 100},
        },
        {
            "name": "me",
            "host": "http://127.0.0.1",
            "port": 9003,
            "external_path": "/api/me",
            "internal_path": "/me",
            "methods": ["GET"],
            "auth_required": True,
        },
    ],
}


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    names = (
        "KAIROS_ADMIN_TOKEN",
        "KAIROS_ADMIN_URL",
        "KAIROS_CONFIG_PATH",
        "FORCE_COLOR",
        "NO_COLOR",
    )
    for name in names:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return write_config(tmp_path / "config.json", CONFIG)


def write_config(path: Path, document: dict[str, Any]) -> Path:
    path.write_text(json.dumps(document, indent=2))
    return path


def line_of(path: Path, needle: str) -> int:
    return next(n for n, line in enumerate(path.read_text().splitlines(), 1) if needle in line)


def kairos(*args: str | Path) -> Any:
    """Run the command in-process; stdout and stderr stay separate."""
    return CliRunner().invoke(app, [str(a) for a in args])


def kairos_process(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run ``python -m kairos_cli`` with its output on pipes, as in a shell pipeline."""
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "NO_COLOR")}
    env["TERM"] = "xterm-256color"
    return subprocess.run(
        [sys.executable, "-m", "kairos_cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO_ROOT,
        timeout=60,
    )


def bad_port_config(tmp_path: Path) -> Path:
    document = json.loads(json.dumps(CONFIG))
    document["routers"][0]["backends"][1]["port"] = 0
    return write_config(tmp_path / "bad.json", document)


# --- validate ------------------------------------------------------------------------------------


def test_validate_valid_config_exits_0_with_a_plain_summary(config: Path) -> None:
    result = kairos_process("validate", config)
    assert result.returncode == 0, result.stderr
    assert f"✓ {config} is valid" in result.stdout
    assert "2 routes, 3 backends" in result.stdout
    assert ANSI_ESCAPE not in result.stdout + result.stderr


def test_validate_invalid_config_exits_1_naming_path_and_line(tmp_path: Path) -> None:
    path = bad_port_config(tmp_path)
    result = kairos_process("validate", path)
    assert result.returncode == 1
    assert f"✗ {path}: 1 error(s)" in result.stdout
    line = line_of(path, '"port": 0')
    expected = f"routers[0].backends[1].port (line {line}): must be between 1 and 65535, got 0"
    assert expected in result.stdout
    assert ANSI_ESCAPE not in result.stdout + result.stderr


def test_validate_missing_file_exits_2(tmp_path: Path) -> None:
    result = kairos_process("validate", tmp_path / "absent.json")
    assert result.returncode == 2
    assert "cannot read config file: file not found" in result.stderr


def test_validate_on_a_terminal_is_coloured(config: Path) -> None:
    controller, terminal = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "NO_COLOR")}
    env.update(TERM="xterm-256color", COLUMNS="120")
    with subprocess.Popen(
        [sys.executable, "-m", "kairos_cli", "validate", str(config)],
        stdout=terminal,
        stderr=terminal,
        env=env,
        cwd=REPO_ROOT,
    ) as process:
        os.close(terminal)
        output = b""
        while True:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # the pty reports EIO once the child has closed it
                break
            if not chunk:
                break
            output += chunk
        assert process.wait(timeout=60) == 0
    os.close(controller)
    assert ANSI_ESCAPE.encode() in output


def test_validate_directory_is_unreadable(tmp_path: Path) -> None:
    result = kairos("validate", tmp_path)
    assert result.exit_code == 2
    assert "cannot read config file" in result.stderr


def test_validate_json_document_of_a_valid_config(config: Path) -> None:
    result = kairos("validate", config, "--json")
    assert result.exit_code == 0
    document = json.loads(result.stdout)
    assert set(document) == {
        "valid",
        "source",
        "errors",
        "warnings",
        "recommendations",
        "summary",
    }
    assert (document["valid"], document["source"], document["errors"]) == (True, str(config), [])
    assert document["summary"] == {"routes": 2, "backends": 3}
    assert all(issue["severity"] == "recommendation" for issue in document["recommendations"])


def test_validate_json_document_of_an_invalid_config(tmp_path: Path) -> None:
    path = bad_port_config(tmp_path)
    result = kairos("validate", path, "--json")
    assert result.exit_code == 1
    document = json.loads(result.stdout)
    assert set(document) == {"valid", "source", "errors", "warnings", "recommendations"}
    assert document["valid"] is False
    assert document["errors"] == [
        {
            "severity": "error",
            "code": "bad_port",
            "path": "routers[0].backends[1].port",
            "line": line_of(path, '"port": 0'),
            "message": "must be between 1 and 65535, got 0",
            "allowed": [],
        }
    ]


def test_validate_json_of_a_missing_file_exits_2(tmp_path: Path) -> None:
    result = kairos("validate", tmp_path / "absent.json", "--json")
    assert result.exit_code == 2
    document = json.loads(result.stdout)
    assert document["valid"] is False
    assert "file not found" in document["errors"][0]["message"]


def test_an_unknown_key_is_an_error_with_its_suggestion(tmp_path: Path) -> None:
    document = json.loads(json.dumps(CONFIG))
    document["routers"][0]["retyr"] = {}
    path = write_config(tmp_path / "typo.json", document)
    result = kairos("validate", path)
    assert result.exit_code == 1
    assert "errors (1):" in result.stdout
    assert (
        f"routers[0].retyr (line {line_of(path, 'retyr')}): unknown key 'retyr'; "
        "did you mean 'retry'?"
    ) in result.stdout


def test_strict_turns_a_warning_into_an_error(tmp_path: Path) -> None:
    document = json.loads(json.dumps(CONFIG))
    document["routers"][0].update(timeout_ms=5000, deadline_ms=1000)
    path = write_config(tmp_path / "warning.json", document)
    relaxed = kairos("validate", path)
    assert relaxed.exit_code == 0
    assert "warnings (1):" in relaxed.stdout
    strict = kairos("validate", path, "--strict")
    assert strict.exit_code == 1
    assert "errors (1):" in strict.stdout
    assert f"routers[0].timeout_ms (line {line_of(path, 'timeout_ms')})" in strict.stdout


def test_validate_invalid_json_shows_the_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{\n  "routers": [\n    oops\n  ]\n}\n')
    result = kairos("validate", path)
    assert result.exit_code == 1
    assert "(line 3): invalid JSON" in result.stdout


def test_validate_and_route_test_read_kairos_config_path(
    config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("KAIROS_CONFIG_PATH", str(config))

    validated = kairos("validate")
    planned = kairos("route-test", "GET", "/api/users/7")

    assert validated.exit_code == 0, validated.output
    assert f"✓ {config} is valid" in validated.stdout
    assert planned.exit_code == 0, planned.output
    assert f"{B1}/users/7" in planned.stdout


def test_a_named_config_wins_over_kairos_config_path(
    config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KAIROS_CONFIG_PATH", str(tmp_path / "absent.json"))
    assert kairos("validate", config).exit_code == 0
    assert kairos("route-test", "GET", "/api/users/7", "-c", config).exit_code == 0
    missing = kairos("validate")
    assert missing.exit_code == 2
    assert f"{tmp_path / 'absent.json'}: cannot read config file: file not found" in missing.stderr


def test_without_kairos_config_path_the_config_is_config_json_here(
    config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(config.parent)
    assert kairos("validate").exit_code == 0
    assert kairos("route-test", "GET", "/api/users/7").exit_code == 0


# --- route-test ----------------------------------------------------------------------------------


def test_route_test_routable_request(config: Path) -> None:
    result = kairos_process("route-test", "GET", "/api/users/42?x=1&y=2", "-c", config)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "routable" in out and "no traffic sent" in out
    assert "id=42" in out
    assert f"{B1}/users/42?x=1&y=2" in out
    assert ANSI_ESCAPE not in out


def test_route_test_unknown_path_exits_1(config: Path) -> None:
    result = kairos_process("route-test", "GET", "/nowhere", "-c", config)
    assert result.returncode == 1
    assert "404 route_not_found" in result.stdout


def test_route_test_sections(config: Path) -> None:
    out = kairos("route-test", "GET", "/api/users/7", "-c", config).stdout
    for section in ("Route", "Upstream", "Backends", "Auth", "Rate limit", "Retry"):
        assert f"\n{section}" in out
    for section in ("Circuit breaker", "Timeouts", "Transforms"):
        assert f"\n{section}" in out
    assert "← pick" in out


def test_route_test_method_not_allowed_lists_allowed(config: Path) -> None:
    result = kairos("route-test", "DELETE", "/api/users/1", "-c", config)
    assert result.exit_code == 1
    assert "405 method_not_allowed" in result.stdout
    assert "Allow: GET, HEAD, POST" in result.stdout


def test_route_test_traversal_is_rejected(config: Path) -> None:
    result = kairos("route-test", "GET", "/api/users/%2e%2e/me", "-c", config)
    assert result.exit_code == 1
    assert "400 bad_request" in result.stdout


def test_route_test_auth_route_without_token(config: Path) -> None:
    result = kairos("route-test", "GET", "/api/me", "-c", config)
    assert result.exit_code == 1
    assert "401 authentication_error" in result.stdout
    assert "missing bearer token" in result.stdout


def test_route_test_auth_route_with_a_valid_token(config: Path) -> None:
    token = jwt.encode({"sub": "alice"}, SECRET, algorithm="HS256")
    result = kairos("route-test", "GET", "/api/me", "-c", config, "--token", token)
    assert result.exit_code == 0
    assert "ok (sub=alice)" in result.stdout
    header = kairos(
        "route-test", "GET", "/api/me", "-c", config, "-H", f"Authorization: Bearer {token}"
    )
    assert header.exit_code == 0


def test_route_test_shows_the_rate_limit_key(config: Path) -> None:
    out = kairos("route-test", "GET", "/api/users/1", "-c", config, "--ip", "10.9.8.7").stdout
    assert "kairos_rl:global:ip=10.9.8.7 (PerIP)" in out
    assert "100 requests / 60 s" in out


def test_route_test_shows_the_retry_schedule(config: Path) -> None:
    out = kairos("route-test", "GET", "/api/users/1", "-c", config).stdout
    assert "attempt 2 after ≤100 ms, attempt 3 after ≤200 ms, attempt 4 after ≤400 ms" in out


def test_route_test_post_notes_idempotency(config: Path) -> None:
    out = kairos("route-test", "post", "/api/users/1", "-c", config, "-d", "{}").stdout
    assert "POST is not idempotent" in out


def test_route_test_json_is_the_dry_run_document(config: Path) -> None:
    result = kairos(
        "route-test", "GET", "/api/users/42?x=1", "-c", config, "-H", "X-Trace: 1", "--json"
    )
    assert result.exit_code == 0
    document = json.loads(result.stdout)
    state = compile_state(load_config(config))
    expected = plan_request(state, "GET", "/api/users/42?x=1", headers=[("X-Trace", "1")])
    assert document == json.loads(json.dumps(expected.to_dict()))
    assert document["upstream_url"] == f"{B1}/users/42?x=1"
    assert [s["wait_ms"] for s in document["retry"]["schedule"]] == [100, 200, 400]


def test_route_test_json_of_a_rejection_exits_1(config: Path) -> None:
    result = kairos("route-test", "GET", "/nowhere", "-c", config, "--json")
    assert result.exit_code == 1
    assert json.loads(result.stdout)["outcome"] == "route_not_found"


def test_route_test_accepts_a_full_url(config: Path) -> None:
    result = kairos("route-test", "GET", "http://gw.local:5900/api/users/5?q=1", "-c", config)
    assert result.exit_code == 0
    assert f"{B1}/users/5?q=1" in result.stdout


def test_route_test_bad_config_exits_2(tmp_path: Path) -> None:
    result = kairos("route-test", "GET", "/api/users/1", "-c", bad_port_config(tmp_path))
    assert result.exit_code == 2
    assert "routers[0].backends[1].port" in result.stderr


def test_route_test_missing_config_exits_2(tmp_path: Path) -> None:
    result = kairos("route-test", "GET", "/", "-c", tmp_path / "absent.json")
    assert result.exit_code == 2
    assert "file not found" in result.stderr


@pytest.mark.parametrize(
    "args",
    [["-H", "no colon here"], ["--ip", "not-an-ip"], ["--nope"]],
    ids=["header", "ip", "unknown-option"],
)
def test_route_test_usage_errors_exit_2(config: Path, args: list[str]) -> None:
    assert kairos("route-test", "GET", "/api/users/1", "-c", config, *args).exit_code == 2


# --- route-test --live ---------------------------------------------------------------------------


class _AdminHandler(BaseHTTPRequestHandler):
    circuits: Any = None
    token = "admin-token-0123456789"

    def do_GET(self) -> None:
        if self.headers.get("Authorization") != f"Bearer {self.token}":
            self._send(401, {"error": "unauthorised", "type": "authentication_error"})
        elif self.path == "/api/circuits":
            self._send(200, self.circuits)
        else:
            self._send(404, {"error": "not found"})

    def _send(self, status: int, document: Any) -> None:
        body = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Keep the test output quiet."""


@pytest.fixture
def admin_url() -> Iterator[str]:
    server = ThreadingHTTPServer((LOOPBACK, 0), _AdminHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://{LOOPBACK}:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_live_uses_the_gateway_breaker_state(config: Path, admin_url: str) -> None:
    _AdminHandler.circuits = {
        "circuits": [
            {"backend": B1, "state": "open", "admitting": False, "half_open_in_s": 12.0},
            {"backend": B2, "state": "closed"},
        ]
    }
    args = ["route-test", "GET", "/api/users/1", "-c", config, "--live", "--url", admin_url]
    result = kairos(*args, "--admin-token", _AdminHandler.token, "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert [(c["key"], c["state"], c["eligible"]) for c in document["candidates"]] == [
        (B1, "open", False),
        (B2, "closed", True),
    ]
    assert document["pick"]["key"] == B2
    human = kairos(*args, "--admin-token", _AdminHandler.token)
    assert f"breaker and health state from {admin_url}" in human.stdout
    assert "open (skipped)" in human.stdout


def test_live_every_backend_open_would_be_rejected(config: Path, admin_url: str) -> None:
    _AdminHandler.circuits = {
        "circuits": [
            {"backend": B1, "state": "open", "admitting": False, "half_open_in_s": 3.0},
            {"backend": B2, "state": "open", "admitting": False, "half_open_in_s": 5.0},
        ]
    }
    result = kairos(
        "route-test", "GET", "/api/users/1", "-c", config, "--live",
        "--url", admin_url, "--admin-token", _AdminHandler.token,
    )  # fmt: skip
    assert result.exit_code == 1
    assert "503 circuit_open" in result.stdout


def test_live_with_a_refused_token_exits_4(config: Path, admin_url: str) -> None:
    result = kairos(
        "route-test", "GET", "/api/users/1", "-c", config, "--live", "--url", admin_url,
        "--admin-token", "wrong",
    )  # fmt: skip
    assert result.exit_code == 4
    assert "refused the token" in result.stderr


def test_live_against_an_unreachable_gateway_exits_3(config: Path) -> None:
    url = f"http://{LOOPBACK}:{free_port()}"
    result = kairos_process(
        "route-test", "GET", "/api/users/1", "-c", config, "--live", "--url", url
    )
    assert result.returncode == 3
    assert f"cannot reach the admin API at {url}" in result.stderr


# --- init ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("template", ["basic", "resilient", "ai"])
def test_init_writes_a_config_that_validates(
    tmp_path: Path, template: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-the-environment")  # else: "no LLM will serve"
    path = tmp_path / f"{template}.json"
    result = kairos("init", path, "--template", template)
    assert result.exit_code == 0
    assert f"wrote {path}" in result.stdout
    assert "_comment" in json.loads(path.read_text())
    validated = kairos("validate", path, "--json")
    assert validated.exit_code == 0, validated.stdout
    document = json.loads(validated.stdout)
    assert (document["errors"], document["warnings"]) == ([], [])


def test_validate_says_when_no_llm_will_serve(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    path = tmp_path / "ai.json"
    kairos("init", path, "--template", "ai")
    document = json.loads(kairos("validate", path, "--json").stdout)
    (warning,) = document["warnings"]
    assert warning["path"] == "routers[0].ai_policy"
    assert "OPENAI_API_KEY" in warning["message"] and "offline heuristic" in warning["message"]


def test_init_template_routes_users_to_the_local_backend(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    kairos("init", path)
    result = kairos("route-test", "GET", "/api/users/42", "-c", path, "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["upstream_url"] == f"{B1}/users/42"


def test_init_ai_template_has_an_ai_policy(tmp_path: Path) -> None:
    path = tmp_path / "ai.json"
    kairos("init", path, "-t", "ai")
    document = json.loads(path.read_text())
    assert document["ai"] == {
        "_comment": document["ai"]["_comment"],
        "provider": "openai",
        "model": "gpt-4o-mini",
        "api_key": "${OPENAI_API_KEY:-}",
        "timeout_ms": 1500,
    }
    plan = json.loads(
        kairos("route-test", "POST", "/v1/chat/completions", "-c", path, "--json").stdout
    )
    assert plan["ai_policy"]["enabled"] is True
    assert all(c["description"] and c["tags"] for c in plan["candidates"])


def test_init_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text("keep me")
    result = kairos("init", path)
    assert result.exit_code == 1
    assert "already exists" in result.stderr and "--force" in result.stderr
    assert path.read_text() == "keep me"
    assert kairos("init", path, "--force").exit_code == 0
    assert "_comment" in json.loads(path.read_text())


def test_init_unknown_template_is_a_usage_error(tmp_path: Path) -> None:
    result = kairos("init", tmp_path / "c.json", "--template", "fancy")
    assert result.exit_code == 2
    for name in ("basic", "resilient", "ai"):
        assert name in result.stderr
    assert not (tmp_path / "c.json").exists()


# --- config schema, --version --------------------------------------------------------------------


def test_config_schema_is_json_schema_of_the_config() -> None:
    result = kairos("config", "schema")
    assert result.exit_code == 0
    schema = json.loads(result.stdout)
    assert "routers" in schema["properties"]
    assert "routers" in schema["required"]
    methods = schema["$defs"]["Router"]["properties"]["methods"]["items"]["enum"]
    assert methods == ["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "TRACE"]


def test_version() -> None:
    result = kairos("--version")
    assert result.exit_code == 0
    assert result.stdout.startswith("kairos ")
