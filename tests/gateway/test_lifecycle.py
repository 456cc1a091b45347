"""The gateway process's life: startup checks, flags, hot reload, SIGHUP, SIGTERM, descriptors.

DESIGN.md §2-§3 and ``kairos_gateway.runtime``: a config that does not validate stops startup
before any port is bound; an address that cannot be bound (either listener) is one line on stderr
and exit status 1, with nothing left running; a changed file that validates is swapped in
atomically while traffic flows; one that does not is rejected, logged, and the running config
kept; SIGHUP reloads too; SIGTERM drains requests in flight within ``server.graceful_shutdown_s``,
closes idle connections at once and marks the responses it still sends ``Connection: close``.
Nothing may leak file descriptors, whatever the request's outcome.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from kairos_cli.main import app as cli_app
from tests.support.gateway import REPO_ROOT, Gateway, backend, route
from tests.support.procs import Upstream, free_port, wait_for_port
from tests.support.rawhttp import RawConnection
from tests.support.waiting import settled_fds, wait_until

GatewayFactory = Callable[..., Gateway]
UpstreamFactory = Callable[[str], Upstream]
FD_TOLERANCE = 3
LOAD_CLIENTS = 50


def served_by(gateway: Gateway, path: str = "/svc", requests: int = 5) -> set[str | None]:
    """The ``X-Upstream`` names behind ``requests`` GETs, all of which must succeed."""
    names: set[str | None] = set()
    with gateway.client() as client:
        for _ in range(requests):
            response = client.get(path)
            assert response.status_code == 200, response.text
            names.add(response.headers.get("x-upstream"))
    return names


def with_backend(document: dict[str, Any], upstream: Upstream) -> dict[str, Any]:
    """``document`` with its first route sent to ``upstream``."""
    changed = copy.deepcopy(document)
    changed["routers"][0]["backends"] = [backend(upstream.url)]
    return changed


def count_in_log(gateway: Gateway, needle: str) -> int:
    return gateway.process.log_text().lower().count(needle.lower())


def wait_for_log_count(gateway: Gateway, needle: str, count: int, timeout_s: float = 5.0) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if count_in_log(gateway, needle) >= count:
            return gateway.process.log_text()
        time.sleep(0.05)
    raise AssertionError(
        f"{needle!r} not logged {count} time(s):\n{gateway.process.log_text()[-3000:]}"
    )


def accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def concurrent_gets(gateway: Gateway, paths: list[str], workers: int) -> list[int]:
    """GET every path, ``workers`` clients at a time (each its own connection); the statuses."""
    chunks = [paths[i::workers] for i in range(workers)]

    def run(chunk: list[str]) -> list[int]:
        with gateway.client() as client:
            return [client.get(path).status_code for path in chunk]

    with ThreadPoolExecutor(workers) as pool:
        return [status for statuses in pool.map(run, chunks) for status in statuses]


# --- startup ------------------------------------------------------------------------------------


def run_until_exit(
    config_path: Path, ports: tuple[int, ...], timeout_s: float = 15.0
) -> tuple[int | None, str, float, set[int]]:
    """Run ``python -m kairos_gateway config_path``; (exit code, stderr, seconds, bound ports)."""
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "kairos_gateway", str(config_path)],
        cwd=REPO_ROOT,
        env={**os.environ, "KAIROS_ADMIN_TOKEN": ""},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    bound: set[int] = set()
    try:
        while process.poll() is None and time.monotonic() - started < timeout_s:
            bound.update(port for port in ports if accepts("127.0.0.1", port))
            time.sleep(0.01)
        _, stderr = process.communicate(timeout=1)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return process.returncode, stderr.decode(), time.monotonic() - started, bound


def _bad_configs(port: int, admin_port: int) -> dict[str, tuple[str, str, str]]:
    """name → (file text, a marker on the offending line, a word the report must contain)."""
    head = (
        f'{{\n  "version": 1,\n  "server": {{"host": "127.0.0.1", "port": {port}}},\n'
        f'  "admin": {{"host": "127.0.0.1", "port": {admin_port}}},\n'
    )
    return {
        "semantic": (
            head + '  "routers": [\n    {\n      "external_path": "/a",\n'
            '      "internal_path": "/a",\n      "methods": ["GET"],\n'
            '      "backends": [{"host": "http://127.0.0.1", "port": 0}]\n    }\n  ]\n}\n',
            '"port": 0',
            "routers[0].backends[0].port",
        ),
        "syntax": (
            head + '  "routers": [\n    {"external_path": "/a",, }\n  ]\n}\n',
            ",,",
            "json",
        ),
        "typo": (
            head + '  "routers": [\n    {\n      "external_path": "/a",\n'
            '      "internal_path": "/a",\n      "methods": ["GET"],\n'
            '      "auth_requried": true,\n'
            '      "backends": [{"host": "http://127.0.0.1", "port": 9}]\n    }\n  ]\n}\n',
            '"auth_requried"',
            "unknown key 'auth_requried'; did you mean 'auth_required'?",
        ),
    }


@pytest.mark.parametrize("kind", ["semantic", "syntax", "typo"])
def test_invalid_config_exits_non_zero_naming_file_and_line(tmp_path: Path, kind: str) -> None:
    port, admin_port = free_port(), free_port()
    text, marker, word = _bad_configs(port, admin_port)[kind]
    path = tmp_path / "bad.json"
    path.write_text(text)
    line = next(i for i, row in enumerate(text.splitlines(), 1) if marker in row)

    code, stderr, seconds, bound = run_until_exit(path, (port, admin_port))

    assert code not in (0, None), f"exit code {code}\n{stderr}"
    assert seconds < 10, f"took {seconds:.1f} s to give up"
    assert str(path) in stderr, stderr
    assert f"line {line}" in stderr, stderr
    assert word.lower() in stderr.lower(), stderr
    assert not bound, f"bound {bound} before exiting"
    assert not accepts("127.0.0.1", port)


@pytest.mark.parametrize("taken", ["proxy", "admin"])
def test_a_taken_port_is_one_line_and_exit_1_with_nothing_left_running(
    tmp_path: Path, taken: str
) -> None:
    port, admin_port = free_port(), free_port()
    occupied = admin_port if taken == "admin" else port
    path = tmp_path / "config.json"
    document = {
        "version": 1,
        "server": {"host": "127.0.0.1", "port": port},
        "admin": {"host": "127.0.0.1", "port": admin_port},
        "routers": [route("/svc", "/svc", ["http://127.0.0.1:9"])],
    }
    path.write_text(json.dumps(document))

    with socket.create_server(("127.0.0.1", occupied)):
        code, stderr, seconds, _ = run_until_exit(path, (port, admin_port))
        other = port if taken == "admin" else admin_port
        assert not accepts("127.0.0.1", other), "a listener was left running"

    assert code == 1, stderr
    assert seconds < 10
    problems = [line for line in stderr.splitlines() if " INFO " not in line and line.strip()]
    assert problems == [
        f"✗ cannot listen on 127.0.0.1:{occupied} ({taken} listener): Address already in use"
    ], stderr
    assert "Traceback" not in stderr
    assert "proxy on http" not in stderr, "announced a listener that never served"


def test_workers_above_one_without_redis_get_the_answer_kairos_validate_gives(
    tmp_path: Path,
) -> None:
    port, admin_port = free_port(), free_port()
    document = {
        "version": 1,
        "server": {"host": "127.0.0.1", "port": port, "workers": 2},
        "admin": {"host": "127.0.0.1", "port": admin_port},
        "routers": [route("/a", "/a", ["http://127.0.0.1:9"])],
    }
    path = tmp_path / "workers.json"
    path.write_text(json.dumps(document, indent=2))
    validated = CliRunner().invoke(cli_app, ["validate", str(path), "--json"])
    assert validated.exit_code == 1, validated.stdout
    (error,) = json.loads(validated.stdout)["errors"]
    assert error["path"] == "server.workers"

    code, stderr, _, bound = run_until_exit(path, (port, admin_port))

    assert code == 1, stderr
    assert f"server.workers (line {error['line']}): {error['message']}" in stderr
    assert not bound


def test_config_warnings_are_logged_at_warning_at_start_and_on_reload(
    upstream: Upstream, gateway_factory: GatewayFactory
) -> None:
    shadowed = route("/b", "/", [upstream.url], name="second")
    shadowed["circuit_breaker"] = {"failure_threshold": 2}
    document = {"routers": [route("/a", "/", [upstream.url], name="first"), shadowed]}
    gateway = gateway_factory(document)
    wait_for_log_count(gateway, "WARNING kairos.config: warning: routers[1].circuit_breaker", 1)
    wait_for_log_count(gateway, "INFO kairos.config: recommendation: routers[0]", 1)

    changed = copy.deepcopy(gateway.document)
    changed["routers"][0].update(timeout_ms=5000, deadline_ms=1000)
    before = gateway.config_version()
    gateway.write_config(changed)
    gateway.wait_for_version_change(before)
    wait_for_log_count(gateway, "WARNING kairos.config: warning: routers[0].timeout_ms", 1)


def test_host_and_port_flags_override_the_config(upstream: Upstream, tmp_path: Path) -> None:
    override_port = free_port()
    gateway = Gateway(
        {"server": {"host": "127.0.0.2"}, "routers": [route("/svc", "/svc", [upstream.url])]},
        tmp_path,
        args=("--host", "127.0.0.1", "--port", str(override_port)),
    )
    gateway.process.start()
    try:
        wait_for_port("127.0.0.1", override_port, 20, process=gateway.process)
        wait_for_port("127.0.0.1", gateway.admin_port, 20, process=gateway.process)

        response = httpx.get(f"http://127.0.0.1:{override_port}/svc", trust_env=False)

        assert response.status_code == 200
        assert response.headers["x-upstream"] == "a"  # the conftest upstream's name
        assert not accepts("127.0.0.2", override_port)  # --host replaced server.host
        assert not accepts("127.0.0.2", gateway.port)  # --port replaced server.port
        assert not accepts("127.0.0.1", gateway.port)
    finally:
        gateway.stop()


# --- hot reload ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    started: float
    finished: float
    status: int | str
    upstream: str | None


async def _traffic_across_a_reload(
    gateway: Gateway, new_document: dict[str, Any]
) -> tuple[list[Outcome], float, float]:
    """50 clients hammer ``/svc`` while the config is rewritten; (outcomes, written, swapped)."""
    old_version = gateway.config_version()
    outcomes: list[Outcome] = []
    stop = asyncio.Event()
    limits = httpx.Limits(max_connections=LOAD_CLIENTS)
    async with httpx.AsyncClient(
        base_url=gateway.url, trust_env=False, timeout=5, limits=limits
    ) as client:

        async def worker() -> None:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    response = await client.get("/svc")
                except httpx.HTTPError as exc:
                    outcomes.append(Outcome(started, time.monotonic(), repr(exc), None))
                else:
                    upstream = response.headers.get("x-upstream")
                    finished = time.monotonic()
                    outcomes.append(Outcome(started, finished, response.status_code, upstream))

        workers = [asyncio.create_task(worker()) for _ in range(LOAD_CLIENTS)]
        await asyncio.sleep(1.0)
        written = time.monotonic()
        await asyncio.to_thread(gateway.write_config, new_document)
        await asyncio.to_thread(gateway.wait_for_version_change, old_version)
        swapped = time.monotonic()
        await asyncio.sleep(1.5)
        stop.set()
        await asyncio.gather(*workers)
    return outcomes, written, swapped


def test_reload_under_load_switches_upstream_without_a_failed_request(
    upstream_factory: UpstreamFactory, gateway_factory: GatewayFactory
) -> None:
    first, second = upstream_factory("A"), upstream_factory("B")
    gateway = gateway_factory({"routers": [route("/svc", "/svc", [first.url])]})

    outcomes, written, swapped = asyncio.run(
        _traffic_across_a_reload(gateway, with_backend(gateway.document, second))
    )

    failures = [o for o in outcomes if o.status != 200]
    assert not failures, f"{len(failures)} of {len(outcomes)} failed, e.g. {failures[:3]}"
    # answered before the file changed → the old route; sent after the swap → the new one
    before = [o.upstream for o in outcomes if o.finished < written]
    after = [o.upstream for o in outcomes if o.started > swapped]
    assert len(before) >= 10 and set(before) == {"A"}
    assert len(after) >= 10 and set(after) == {"B"}


def test_broken_config_is_rejected_and_the_running_one_kept(
    upstream_factory: UpstreamFactory, gateway_factory: GatewayFactory
) -> None:
    first, second = upstream_factory("A"), upstream_factory("B")
    gateway = gateway_factory({"routers": [route("/svc", "/svc", [first.url])]})
    initial = gateway.config_version()
    good = with_backend(gateway.document, second)
    gateway.write_config(good)
    version = gateway.wait_for_version_change(initial)
    assert served_by(gateway) == {"B"}

    temp = gateway.config_path.with_name("broken.tmp")
    temp.write_text('{"routers": [ {"external_path": ')
    os.replace(temp, gateway.config_path)
    wait_for_log_count(gateway, "rejected", 1)

    assert gateway.config_version() == version
    assert served_by(gateway) == {"B"}

    time.sleep(0.3)  # let any second event of that write be handled before counting again
    rejections = count_in_log(gateway, "rejected")
    invalid = copy.deepcopy(good)
    invalid["routers"][0]["backends"][0]["port"] = 0
    gateway.write_config(invalid)
    log = wait_for_log_count(gateway, "rejected", rejections + 1)

    assert "routers[0].backends[0].port" in log
    assert gateway.config_version() == version
    assert served_by(gateway) == {"B"}


def test_sighup_reloads_the_config(upstream_factory: UpstreamFactory, tmp_path: Path) -> None:
    first, second = upstream_factory("A"), upstream_factory("B")
    # config.json is a symlink into v1/; the file watcher follows it to v1/, so re-pointing the
    # link at v2/ is a change only a SIGHUP can make the gateway notice
    (tmp_path / "live").mkdir()
    gateway = Gateway({"routers": [route("/svc", "/svc", [first.url])]}, tmp_path / "live")
    (tmp_path / "v1").mkdir()
    os.replace(gateway.config_path, tmp_path / "v1" / "config.json")
    gateway.config_path.symlink_to(tmp_path / "v1" / "config.json")
    with gateway:
        old_version = gateway.config_version()
        (tmp_path / "v2").mkdir()
        (tmp_path / "v2" / "config.json").write_text(
            json.dumps(with_backend(gateway.document, second))
        )
        new_link = gateway.config_path.with_name("config.json.new")
        new_link.symlink_to(tmp_path / "v2" / "config.json")
        os.replace(new_link, gateway.config_path)
        time.sleep(0.6)
        assert gateway.config_version() == old_version, "reloaded before SIGHUP"
        assert served_by(gateway) == {"A"}

        os.kill(gateway.process.pid, signal.SIGHUP)

        gateway.wait_for_version_change(old_version, timeout_s=5)
        assert served_by(gateway) == {"B"}
        assert "sighup" in gateway.process.log_text().lower()


# --- shutdown -----------------------------------------------------------------------------------


def test_sigterm_lets_requests_in_flight_finish(
    upstream: Upstream, gateway_factory: GatewayFactory
) -> None:
    grace_s = 5
    gateway = gateway_factory(
        {
            "server": {"graceful_shutdown_s": grace_s},
            "routers": [route("/slow", "/_slow", [upstream.url], timeout_ms=5000)],
        }
    )
    upstream.reset_hits()
    in_flight = 20
    ready = threading.Barrier(in_flight + 1, timeout=10)

    def slow_get(_: int) -> int | str:
        with gateway.client() as client:  # built before the clock starts
            ready.wait()
            try:
                return client.get("/slow?ms=1500").status_code
            except httpx.HTTPError as exc:
                return repr(exc)

    with ThreadPoolExecutor(in_flight) as pool:
        futures = [pool.submit(slow_get, i) for i in range(in_flight)]
        ready.wait()
        sent = time.monotonic()
        while upstream.hits() < in_flight and time.monotonic() < sent + 5:
            time.sleep(0.02)
        time.sleep(max(0.0, sent + 0.3 - time.monotonic()))
        assert upstream.hits() == in_flight, "not every request reached the upstream"
        signalled = time.monotonic()
        os.kill(gateway.process.pid, signal.SIGTERM)
        statuses = [future.result() for future in futures]

    while gateway.process.running and time.monotonic() < signalled + grace_s + 2:
        time.sleep(0.02)
    exited_after = time.monotonic() - signalled
    assert statuses == [200] * in_flight, statuses
    assert not gateway.process.running, "still running after graceful_shutdown_s"
    assert gateway.process.returncode == 0, gateway.process.log_text()[-2000:]
    assert exited_after <= grace_s


def test_sigterm_closes_idle_connections_at_once_and_marks_answers_in_flight(
    upstream: Upstream, gateway_factory: GatewayFactory
) -> None:
    grace_s = 5
    gateway = gateway_factory(
        {
            "server": {"graceful_shutdown_s": grace_s},
            "routers": [
                route("/svc", "/svc", [upstream.url]),
                route("/slow", "/_slow", [upstream.url], timeout_ms=5000),
            ],
        }
    )
    idle = RawConnection(gateway.port)
    busy = RawConnection(gateway.port)
    try:
        idle.send(b"GET /svc HTTP/1.1\r\nHost: gw\r\n\r\n")
        assert idle.read_response().status == 200
        busy.send(b"GET /slow?ms=1000 HTTP/1.1\r\nHost: gw\r\n\r\n")
        deadline = time.monotonic() + 5
        while upstream.hits() < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        signalled = time.monotonic()
        os.kill(gateway.process.pid, signal.SIGTERM)

        assert idle.closed_by_server(within_s=0.5), "an idle connection outlived SIGTERM"
        answer = busy.read_response()
        assert answer.status == 200
        assert answer.header("connection") == "close"
        assert busy.closed_by_server(within_s=1)
    finally:
        idle.close()
        busy.close()
    while gateway.process.running and time.monotonic() < signalled + grace_s + 2:
        time.sleep(0.02)
    assert not gateway.process.running
    assert time.monotonic() - signalled < 3, "waited for connections that were done"
    log = gateway.process.log_text()
    assert "SIGTERM: draining 2 connection(s), up to 5 s" in log, log[-2000:]
    assert "stopped after" in log
    assert "Traceback" not in log


def test_while_draining_ready_is_503_on_new_admin_connections_and_the_delay_keeps_accepting(
    upstream: Upstream, gateway_factory: GatewayFactory
) -> None:
    gateway = gateway_factory(
        {
            "server": {"graceful_shutdown_s": 5, "shutdown_delay_s": 1.0},
            "routers": [
                route("/svc", "/svc", [upstream.url]),
                route("/slow", "/_slow", [upstream.url], timeout_ms=5000),
            ],
        }
    )
    busy = RawConnection(gateway.port)
    try:
        busy.send(b"GET /slow?ms=2500 HTTP/1.1\r\nHost: gw\r\n\r\n")
        wait_until(lambda: upstream.hits() >= 1, 5, "the slow request at the upstream")
        signalled = time.monotonic()
        os.kill(gateway.process.pid, signal.SIGTERM)
        time.sleep(0.2)
        ready = httpx.get(f"{gateway.admin_url}/ready", trust_env=False, timeout=2)
        assert ready.status_code == 503 and "draining" in ready.json()["reasons"][0]
        with gateway.client() as client:  # within shutdown_delay_s: still accepted
            late = client.get("/svc")
        assert late.status_code == 200 and late.headers["connection"] == "close"
        time.sleep(max(0.0, signalled + 1.3 - time.monotonic()))
        with pytest.raises((httpx.ConnectError, httpx.RemoteProtocolError)):  # closed after it
            httpx.get(f"{gateway.url}/svc", trust_env=False, timeout=2)
        still = httpx.get(f"{gateway.admin_url}/ready", trust_env=False, timeout=2)
        assert still.status_code == 503  # the admin listener answers until the drain ends
        assert busy.read_response().status == 200
    finally:
        busy.close()
    wait_until(lambda: not gateway.process.running, 5, "the gateway to exit")
    assert gateway.process.returncode == 0


# --- file descriptors ---------------------------------------------------------------------------


def test_descriptors_return_to_baseline_after_a_burst(
    upstream: Upstream, gateway_factory: GatewayFactory
) -> None:
    workers = 20
    gateway = gateway_factory(
        {
            "routers": [
                route("/svc", "/svc", [upstream.url]),
                route("/slow", "/_slow", [upstream.url]),
            ]
        }
    )
    # fill the upstream pool to the burst's concurrency, so pooled connections count in the baseline
    assert concurrent_gets(gateway, ["/slow?ms=200"] * workers, workers) == [200] * workers
    time.sleep(0.3)
    baseline = gateway.open_fds()

    paths = ["/svc" if i % 4 else "/missing" for i in range(200)]
    statuses = concurrent_gets(gateway, paths, workers)

    assert sorted(set(statuses)) == [200, 404]
    after = settled_fds(gateway, baseline, FD_TOLERANCE)
    assert abs(after - baseline) <= FD_TOLERANCE, f"{baseline} fds before, {after} after"


def test_descriptors_return_to_baseline_after_502_and_504(
    upstream: Upstream, upstream_factory: UpstreamFactory, gateway_factory: GatewayFactory
) -> None:
    hang, reset = upstream_factory("hang"), upstream_factory("reset")
    hang.control(mode="hang")
    reset.control(mode="reset")
    dead = f"http://127.0.0.1:{free_port()}"
    gateway = gateway_factory(
        {
            # the failures are the point here; breakers must not turn them into quick 503s
            "circuit_breaker": {"failure_threshold": 1000},
            "routers": [
                route("/svc", "/svc", [upstream.url]),
                route("/hang", "/hang", [hang.url], timeout_ms=300),
                route("/deadline", "/deadline", [hang.url], deadline_ms=300),
                route("/reset", "/reset", [reset.url]),
                route("/dead", "/dead", [dead]),
            ],
        }
    )
    assert served_by(gateway, requests=2) == {"a"}
    time.sleep(0.3)
    baseline = gateway.open_fds()

    for path, status in [("/hang", 504), ("/deadline", 504), ("/reset", 502), ("/dead", 502)]:
        assert concurrent_gets(gateway, [path] * 10, 10) == [status] * 10, path

    after = settled_fds(gateway, baseline, FD_TOLERANCE)
    assert abs(after - baseline) <= FD_TOLERANCE, f"{baseline} fds before, {after} after"
