"""The remote commands of ``kairos`` (DESIGN.md §9) against a real gateway, through the SDK.

Each command runs in-process through typer's ``CliRunner`` against a real ``kairos-gateway``
process, an unreachable address (exit 3) and a gateway that refuses the token (exit 4); two cases
run ``python -m kairos_cli`` as a real subprocess (a pipe, and ``--watch`` stopped by Ctrl-C).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
from pydantic import BaseModel
from typer.testing import CliRunner

from kairos_cli.main import app
from kairos_client import CircuitInfo, Health, MetricsSnapshot, Ready, RouteInfo
from tests.support.gateway import Gateway, backend, route
from tests.support.procs import LOOPBACK, REPO_ROOT, Upstream, free_port

ADMIN_TOKEN = "admin-token-for-cli-tests-0123456789"
CLEAN_ENV: dict[str, str | None] = {"KAIROS_ADMIN_URL": None, "KAIROS_ADMIN_TOKEN": None}

# Every remote command, with the arguments it needs besides --url / --token.
COMMANDS = [
    ["status"],
    ["metrics"],
    ["metrics", "--json"],
    ["routes"],
    ["routes", "--json"],
    ["circuits"],
    ["circuits", "--json"],
    ["circuits", "reset", "http://127.0.0.1:9"],
    ["circuits", "open", "http://127.0.0.1:9"],
    ["reload"],
    ["decisions"],
    ["decisions", "--json", "--limit", "3"],
]


def kairos(*args: str | Path, env: dict[str, str | None] | None = None) -> Any:
    """Run the command in-process, stdout and stderr apart, with no admin settings inherited."""
    return CliRunner().invoke(app, [str(a) for a in args], env={**CLEAN_ENV, **(env or {})})


def kairos_env() -> dict[str, str]:
    """The environment of a ``python -m kairos_cli`` subprocess."""
    drop = ("FORCE_COLOR", "NO_COLOR", "KAIROS_ADMIN_URL", "KAIROS_ADMIN_TOKEN")
    return {**{k: v for k, v in os.environ.items() if k not in drop}, "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def upstreams() -> Iterator[tuple[Upstream, Upstream]]:
    started = (Upstream.start("a"), Upstream.start("b"))
    yield started
    for upstream in started:
        upstream.stop()


def _config(upstreams: tuple[Upstream, Upstream], **extra: Any) -> dict[str, Any]:
    a, b = upstreams
    return {
        "routers": [
            route("/echo/{*rest}", "/{rest}", [a.url, b.url], name="echo", retry={}),
            route("/solo", "/solo", [b.url], name="solo"),
        ],
        **extra,
    }


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, upstreams: tuple[Upstream, Upstream]
) -> Iterator[Gateway]:
    """Shared by the module; a test that changes a breaker puts it back."""
    with Gateway(_config(upstreams), tmp_path_factory.mktemp("remote-gateway")) as gateway:
        yield gateway


@pytest.fixture(scope="module")
def token_gateway(
    tmp_path_factory: pytest.TempPathFactory, upstreams: tuple[Upstream, Upstream]
) -> Iterator[Gateway]:
    config = _config(upstreams, admin={"token": ADMIN_TOKEN})
    with Gateway(config, tmp_path_factory.mktemp("remote-token-gateway")) as gateway:
        yield gateway


def _send(gateway: Gateway, count: int) -> None:
    with gateway.client() as proxy:
        for index in range(count):
            assert proxy.get(f"/echo/{index}").status_code == 200


# --- status and metrics -------------------------------------------------------------------------


def test_status_reports_health_readiness_and_traffic(gateway: Gateway) -> None:
    _send(gateway, 3)
    result = kairos("status", "--url", gateway.admin_url)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"✓ {gateway.admin_url}: ok (kairos ")
    assert lines[1] == f"✓ ready, config {gateway.config_version()}"
    assert lines[2].endswith("2 routes, 2 backends (0 not closed)")


def test_status_labels_every_figure_with_its_window(gateway: Gateway) -> None:
    _send(gateway, 2)
    summary = kairos("status", "--url", gateway.admin_url).stdout.splitlines()[2]
    assert re.fullmatch(
        r"[\d,]+ requests since start, \d+\.\d% errors \(last 60 s\), "
        r"[\d.]+ req/s \(last 10 s\), p99 [\d.]+ ms and overhead p99 [\d.]+ ms \(last 60 s\), "
        r"\d+ in flight, 2 routes, 2 backends \(0 not closed\)",
        summary,
    ), summary


def test_status_lists_a_route_without_a_candidate_and_stays_ready(
    gateway: Gateway, upstreams: tuple[Upstream, Upstream]
) -> None:
    b = upstreams[1].url
    assert kairos("circuits", "open", b, "--url", gateway.admin_url).exit_code == 0
    try:
        result = kairos("status", "--url", gateway.admin_url)
    finally:
        assert kairos("circuits", "reset", b, "--url", gateway.admin_url).exit_code == 0
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[1].startswith("✓ ready")
    assert lines[2] == "! no candidate backend now for 'solo'"
    assert "2 backends (1 not closed)" in lines[3]


class _NotReadyAdmin(BaseHTTPRequestHandler):
    """An admin API that answers as a draining gateway does (the wire models, 503 on /ready)."""

    answers: ClassVar[dict[str, tuple[int, BaseModel]]] = {
        "/health": (200, Health(status="ok", version="0.0.0", uptime_seconds=5)),
        "/ready": (
            503,
            Ready(
                status="not_ready",
                reasons=["draining: shutting down, finishing the requests in flight"],
                config_version="abc",
            ),
        ),
        "/api/metrics": (200, MetricsSnapshot()),
    }

    def do_GET(self) -> None:
        status, model = self.answers[self.path]
        body = model.model_dump_json().encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_status_of_a_gateway_that_is_not_ready_exits_1() -> None:
    server = ThreadingHTTPServer((LOOPBACK, 0), _NotReadyAdmin)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        result = kairos("status", "--url", f"http://{LOOPBACK}:{server.server_port}")
    finally:
        server.shutdown()
        server.server_close()
    assert result.exit_code == 1
    assert "✗ not ready, config abc" in result.stdout
    assert "  draining: shutting down" in result.stdout


def test_metrics_shows_totals_percentiles_routes_and_backends(
    gateway: Gateway, upstreams: tuple[Upstream, Upstream]
) -> None:
    _send(gateway, 4)
    result = kairos("metrics", "--url", gateway.admin_url)
    assert result.exit_code == 0, result.output
    for label in (
        "requests since start",
        "errors since start",
        "error rate (last 60 s)",
        "rate (1/10/60 s)",
        "latency p50/p90/p99 (last 60 s)",
        "overhead p50/p90/p99 (last 60 s)",
        "status classes since start",
        "in flight",
        "config version",
        "routes (requests and errors since start)",
    ):
        assert label in result.stdout
    assert "2xx " in result.stdout
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines() if line.strip()}
    assert int(rows["echo"][1].replace(",", "")) >= 4  # requests
    assert rows["echo"][-1] == "retry"
    for upstream in upstreams:
        assert rows[upstream.url][1:3] == ["closed", "healthy"]


def test_metrics_json_is_the_snapshot_model(gateway: Gateway) -> None:
    _send(gateway, 5)
    result = kairos("metrics", "--json", "--url", gateway.admin_url)
    assert result.exit_code == 0, result.output
    snapshot = MetricsSnapshot.model_validate_json(result.stdout)
    assert snapshot.requests_total >= 5
    assert snapshot.status_classes["2xx"] >= 5
    assert [item.route for item in snapshot.routes] == ["echo", "solo"]
    assert snapshot.config_version == gateway.config_version()


def test_metrics_watch_refreshes_until_ctrl_c(gateway: Gateway) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "kairos_cli", "metrics", "--watch", "--interval", "0.2",
         "--url", gateway.admin_url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=kairos_env(),
        cwd=REPO_ROOT,
        # A runner started in the background ignores SIGINT; the command must see Ctrl-C.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    assert process.stdout is not None
    lines: list[str] = []

    def read() -> None:
        for line in process.stdout or []:
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 30
        while sum(line.startswith("kairos metrics: ") for line in list(lines)) < 3:
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "".join(lines)
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    reader.join(timeout=5)
    assert process.stderr is not None
    assert process.stderr.read() == ""
    frames = [line for line in lines if line.startswith(f"kairos metrics: {gateway.admin_url} at ")]
    assert len(frames) >= 3
    assert sum(line.lstrip().startswith("latency p50/p90/p99") for line in lines) == len(frames)


# --- routes, circuits, reload, decisions --------------------------------------------------------


def test_routes_lists_ids_paths_and_backends(
    gateway: Gateway, upstreams: tuple[Upstream, Upstream]
) -> None:
    result = kairos("routes", "--url", gateway.admin_url)
    assert result.exit_code == 0, result.output
    rows = [line.split() for line in result.stdout.splitlines()]
    assert ["echo", "GET", "/echo/{*rest}", upstreams[0].url, "retry"] in rows
    assert ["solo", "GET", "/solo", upstreams[1].url, "-"] in rows
    assert rows[-1] == ["2", "routes"]

    as_json = kairos("routes", "--json", "--url", gateway.admin_url)
    assert as_json.exit_code == 0
    routes = [RouteInfo.model_validate(item) for item in json.loads(as_json.stdout)]
    assert [(r.id, r.index) for r in routes] == [("echo", 0), ("solo", 1)]


def test_routes_show_the_backend_keys_and_policies_the_gateway_resolved(
    gateway_factory: Callable[..., Gateway], upstreams: tuple[Upstream, Upstream]
) -> None:
    a, b = upstreams
    scheme_host = a.url.rsplit(":", 1)[0]
    resolved = gateway_factory(
        {
            "rate_limit": {"strategy": "PerIP", "requests_per_window": 500, "window_duration": 60},
            "routers": [
                {
                    "name": "legacy",
                    "host": f"{scheme_host}/",
                    "port": a.port,
                    "external_path": "/legacy",
                    "internal_path": "/",
                    "methods": ["GET", "HEAD"],
                },
                route("/pooled", "/", [a.url], name="pooled", fallback=[backend(b.url)]),
            ],
        }
    )

    result = kairos("routes", "--url", resolved.admin_url, env={"COLUMNS": "160"})

    assert result.exit_code == 0, result.output
    rows = [line.split() for line in result.stdout.splitlines()]
    assert ["legacy", "GET,", "HEAD", "/legacy", a.url, "rate-limit", "(global)"] in rows
    assert ["pooled", "GET", "/pooled", a.url, "rate-limit", "(global)"] in rows
    assert [b.url, "(fallback)"] in rows


def test_circuits_lists_opens_and_resets_breakers(
    gateway: Gateway, upstreams: tuple[Upstream, Upstream]
) -> None:
    a = upstreams[0].url
    listed = kairos("circuits", "--url", gateway.admin_url)
    assert listed.exit_code == 0, listed.output
    rows = {line.split()[0]: line.split() for line in listed.stdout.splitlines() if line.strip()}
    assert rows[a][1:4] == ["closed", "0", "healthy"]

    opened = kairos("circuits", "open", a, "--url", gateway.admin_url)
    assert opened.exit_code == 0, opened.output
    assert re.fullmatch(
        rf"✓ {re.escape(a)}: breaker forced open, now open \(half-open in \d+ s\)\n", opened.stdout
    ), opened.stdout
    try:
        as_json = kairos("circuits", "--json", "--url", gateway.admin_url)
        states = {
            c.backend: c.state
            for c in (CircuitInfo.model_validate(item) for item in json.loads(as_json.stdout))
        }
        assert states == {a: "open", upstreams[1].url: "closed"}
        listed = kairos("circuits", "--url", gateway.admin_url)
        assert re.search(rf"^{re.escape(a)} +open +", listed.stdout, re.MULTILINE)
        assert re.search(r" \d\.\d s ago ", listed.stdout), listed.stdout
    finally:
        reset = kairos("circuits", "--url", gateway.admin_url, "reset", a)  # options first
        assert reset.exit_code == 0, reset.output
    assert reset.stdout == f"✓ {a}: breaker reset, now closed\n"


def test_an_unknown_backend_exits_1_with_the_api_error(gateway: Gateway) -> None:
    for action in ("reset", "open"):
        result = kairos("circuits", action, "http://127.0.0.1:9", "--url", gateway.admin_url)
        assert result.exit_code == 1
        assert result.stdout == ""
        assert "404 not_found: no backend 'http://127.0.0.1:9'" in result.stderr


def test_reload_says_when_a_restart_is_required(
    gateway_factory: Callable[..., Gateway], upstreams: tuple[Upstream, Upstream]
) -> None:
    gateway = gateway_factory(_config(upstreams))
    moved = json.loads(gateway.config_path.read_text())
    moved["server"]["workers"] = 1
    moved["server"]["host"] = "127.0.0.2"
    gateway.write_config(moved)
    result = kairos("reload", "--url", gateway.admin_url)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[1] == (
        "! restart required for server.host: the listeners keep the settings they started with"
    )


def test_reload_reloads_and_reports_a_rejected_file(
    gateway_factory: Callable[..., Gateway], upstreams: tuple[Upstream, Upstream]
) -> None:
    gateway = gateway_factory(_config(upstreams))
    version = gateway.config_version()
    result = kairos("reload", "--url", gateway.admin_url)
    assert result.exit_code == 0, result.output
    assert result.stdout == f"✓ reloaded, config {version}\n"

    gateway.write_config({**gateway.document, "routers": [{"external_path": "/x"}]})
    rejected = kairos("reload", "--url", gateway.admin_url)
    assert rejected.exit_code == 1
    assert f"reload rejected; the running config {version} is kept" in rejected.stderr
    assert "routers[0].internal_path" in rejected.stderr


def test_decisions_lists_recent_ai_decisions(gateway: Gateway) -> None:
    human = kairos("decisions", "--url", gateway.admin_url)
    assert human.exit_code == 0, human.output
    as_json = kairos("decisions", "--json", "--limit", "5", "--url", gateway.admin_url)
    assert as_json.exit_code == 0, as_json.output
    decisions = json.loads(as_json.stdout)
    assert isinstance(decisions, list) and len(decisions) <= 5
    if not decisions:
        assert human.stdout == "no AI decisions yet\n"


def test_route_test_live_reads_breakers_through_the_sdk(
    gateway: Gateway, upstreams: tuple[Upstream, Upstream]
) -> None:
    a, b = (u.url for u in upstreams)
    assert kairos("circuits", "open", a, "--url", gateway.admin_url).exit_code == 0
    try:
        result = kairos(
            "route-test", "GET", "/echo/1", "-c", gateway.config_path, "--live",
            "--url", gateway.admin_url, "--json",
        )  # fmt: skip
    finally:
        assert kairos("circuits", "reset", a, "--url", gateway.admin_url).exit_code == 0
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert [(c["key"], c["state"]) for c in plan["candidates"]] == [(a, "open"), (b, "closed")]
    assert plan["pick"]["key"] == b


# --- where the gateway is and who may ask -------------------------------------------------------


@pytest.mark.parametrize("args", COMMANDS, ids=" ".join)
def test_an_unreachable_gateway_exits_3(args: list[str]) -> None:
    url = f"http://{LOOPBACK}:{free_port()}"
    result = kairos(*args, "--url", url)
    assert result.exit_code == 3, result.output
    assert f"cannot reach the admin API at {url}" in result.stderr


@pytest.mark.parametrize("args", COMMANDS, ids=" ".join)
def test_a_refused_token_exits_4(token_gateway: Gateway, args: list[str]) -> None:
    result = kairos(*args, "--url", token_gateway.admin_url, "--token", "wrong")
    assert result.exit_code == 4, result.output
    assert f"the admin API at {token_gateway.admin_url} refused the token" in result.stderr
    assert "--token or set KAIROS_ADMIN_TOKEN" in result.stderr


def test_url_and_token_come_from_the_environment(token_gateway: Gateway) -> None:
    env = {"KAIROS_ADMIN_URL": token_gateway.admin_url, "KAIROS_ADMIN_TOKEN": ADMIN_TOKEN}
    result = kairos("circuits", "--json", env=env)
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)) == 2
    assert kairos("status", env={**env, "KAIROS_ADMIN_TOKEN": "wrong"}).exit_code == 4


def test_a_url_without_a_scheme_is_a_usage_error() -> None:
    result = kairos("status", "--url", "127.0.0.1:5901")
    assert result.exit_code == 2
    assert "http:// or https://" in result.stderr


def test_status_in_a_subprocess_writes_plain_text_to_the_pipe(token_gateway: Gateway) -> None:
    url = token_gateway.admin_url
    result = subprocess.run(
        [sys.executable, "-m", "kairos_cli", "status", "--url", url, "--token", ADMIN_TOKEN],
        capture_output=True,
        text=True,
        env=kairos_env(),
        cwd=REPO_ROOT,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"✓ {url}: ok (kairos ")
    assert "\x1b[" not in result.stdout
    assert result.stderr == ""
