"""The servers the benchmarks start, all on loopback, and the gateway configs they use.

- ``start_nginx``: nginx answering a fixed 200 with a 1 KiB body (the backend), or nginx as a
  keep-alive reverse proxy in front of it (the reference proxy);
- ``start_upstream``: the aiohttp test upstream (``tests/support/upstreams.py``), the backend
  when nginx is not installed, and the steerable backends of the soak;
- ``start_naive``: the naive peer, ``benchmarks/naive_proxy.py``;
- ``start_gateway``: Kairos on a config written to the work directory, admin API without token.

Every process is a ``ManagedProcess`` (own process group, output in a log file) the caller stops.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.support.procs import ManagedProcess, free_port, wait_for_port  # noqa: E402

LOOPBACK = "127.0.0.1"
BODY_BYTES = 1024
JWT_SECRET = "benchmark-secret-0123456789abcdef0123456789"
START_TIMEOUT_S = 30.0


def nginx_binary() -> str | None:
    """nginx's path, also when ``/usr/sbin`` is not on the PATH (Debian puts it there)."""
    found = shutil.which("nginx")
    if found is None and os.access("/usr/sbin/nginx", os.X_OK):
        found = "/usr/sbin/nginx"
    return found


def start_nginx(workdir: Path, port: int, backend_port: int | None = None) -> ManagedProcess:
    """One nginx worker: a fixed 200 with a ``BODY_BYTES`` body (``backend_port`` None), or a
    reverse proxy to ``backend_port`` keeping up to 64 idle upstream connections."""
    if backend_port is None:
        upstream = ""
        location = f"default_type text/plain; return 200 '{'x' * BODY_BYTES}';"
    else:
        upstream = f"upstream backend {{ server {LOOPBACK}:{backend_port}; keepalive 64; }}"
        location = "proxy_pass http://backend; proxy_http_version 1.1; "
        location += 'proxy_set_header Connection "";'
    name = f"nginx-{port}"
    conf = workdir / f"{name}.conf"
    conf.write_text(
        textwrap.dedent(
            f"""
            worker_processes 1;
            daemon off;
            pid {workdir}/{name}.pid;
            error_log {workdir}/{name}.error.log;
            events {{ worker_connections 16384; }}
            http {{
                access_log off;
                keepalive_requests 1000000;
                keepalive_timeout 600s;
                client_body_temp_path {workdir}/{name}-body;
                proxy_temp_path {workdir}/{name}-proxy;
                fastcgi_temp_path {workdir}/{name}-fcgi;
                uwsgi_temp_path {workdir}/{name}-uwsgi;
                scgi_temp_path {workdir}/{name}-scgi;
                {upstream}
                server {{
                    listen {LOOPBACK}:{port} backlog=4096;
                    location / {{ {location} }}
                }}
            }}
            """
        )
    )
    binary = nginx_binary()
    if binary is None:
        raise FileNotFoundError("nginx is not installed: apt-get install nginx-light")
    process = ManagedProcess([binary, "-c", str(conf), "-p", str(workdir)], name=name).start()
    wait_for_port(LOOPBACK, port, 10, process=process)
    return process


def start_upstream(port: int, name: str = "backend") -> ManagedProcess:
    process = ManagedProcess(
        [sys.executable, "-m", "tests.support.upstreams", "--port", str(port), "--name", name],
        name=f"upstream-{name}",
        cwd=ROOT,
    ).start()
    wait_for_port(LOOPBACK, port, START_TIMEOUT_S, process=process)
    return process


def start_naive(port: int, backend_port: int) -> ManagedProcess:
    process = ManagedProcess(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "naive_proxy.py"),
            "--port",
            str(port),
            "--upstream",
            f"http://{LOOPBACK}:{backend_port}",
        ],
        name="naive",
        cwd=ROOT,
    ).start()
    wait_for_port(LOOPBACK, port, START_TIMEOUT_S, process=process)
    return process


def start_llm(port: int) -> ManagedProcess:
    """The OpenAI-compatible stand-in of ``tests/support/llm.py`` (the AI targets' LLM)."""
    process = ManagedProcess(
        [sys.executable, "-m", "tests.support.llm", "--port", str(port)],
        name="llm-stand-in",
        cwd=ROOT,
    ).start()
    wait_for_port(LOOPBACK, port, START_TIMEOUT_S, process=process)
    return process


@dataclass
class Gateway:
    """A running Kairos: its process, proxy URL and admin URL."""

    process: ManagedProcess
    url: str
    admin_url: str
    config_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid


def start_gateway(
    workdir: Path,
    name: str,
    config: dict[str, Any],
    *,
    log_level: str = "warning",
    extra_args: list[str] | None = None,
) -> Gateway:
    """Kairos on ``config`` (its ``server`` and ``admin`` ports are used as given)."""
    path = workdir / f"{name}.json"
    path.write_text(json.dumps(config))
    port, admin_port = config["server"]["port"], config["admin"]["port"]
    process = ManagedProcess(
        [
            sys.executable,
            "-m",
            "kairos_gateway",
            str(path),
            "--log-level",
            log_level,
            *(extra_args or []),
        ],
        name=name,
        cwd=ROOT,
        env={"KAIROS_ADMIN_TOKEN": ""},
    ).start()
    wait_for_port(LOOPBACK, port, START_TIMEOUT_S, process=process)
    wait_for_port(LOOPBACK, admin_port, START_TIMEOUT_S, process=process)
    return Gateway(process, f"http://{LOOPBACK}:{port}", f"http://{LOOPBACK}:{admin_port}", path)


# --- configs ------------------------------------------------------------------------------------


def backend(port: int) -> dict[str, Any]:
    return {"host": f"http://{LOOPBACK}", "port": port}


def base_config(*, keepalive_timeout_ms: int = 600_000) -> dict[str, Any]:
    """Server and admin on free loopback ports; idle client connections kept ten minutes."""
    return {
        "version": 1,
        "server": {
            "host": LOOPBACK,
            "port": free_port(),
            "keepalive_timeout_ms": keepalive_timeout_ms,
        },
        "admin": {"host": LOOPBACK, "port": free_port()},
        "routers": [],
    }


def bare_route(backend_port: int) -> dict[str, Any]:
    """``GET /bare``: no policy at all."""
    return {
        "name": "bare",
        "backends": [backend(backend_port)],
        "external_path": "/bare",
        "internal_path": "/",
        "methods": ["GET"],
    }


def full_route(backend_port: int) -> dict[str, Any]:
    """``GET /full/{id}``: JWT, a rate limit never reached, retry, breaker, both transforms."""
    return {
        "name": "full",
        "backends": [backend(backend_port)],
        "external_path": "/full/{id}",
        "internal_path": "/{id}",
        "methods": ["GET"],
        "auth_required": True,
        "retry": {"max_retries": 2, "initial_backoff_ms": 10, "max_backoff_ms": 100},
        "circuit_breaker": {"failure_threshold": 5},
        "rate_limit": {
            "strategy": "PerIP",
            "requests_per_window": 10_000_000,
            "window_duration": 60,
            "window_type": "FixedWindow",
        },
        "request_transformation": {
            "headers": [{"action": "set", "name": "X-Bench", "value": "1"}],
            "query_params": [{"action": "add", "name": "via", "value": "kairos"}],
        },
        "response_transformation": {"headers": [{"action": "remove", "name": "Server"}]},
    }


def ai_routes(backend_port: int) -> list[dict[str, Any]]:
    """``POST /ai/cached`` (content analysis, answers cached an hour) and ``POST /ai/background``
    (every request routed at once by the fallback order while the LLM call runs off the path)."""
    tiers = [
        {**backend(backend_port), "tags": ["instant"]},
        {**backend(backend_port), "tags": ["thinking"], "weight": 1},
    ]
    common = {"backends": tiers, "internal_path": "/", "methods": ["POST"]}
    return [
        {
            **common,
            "name": "ai-cached",
            "external_path": "/ai/cached",
            "ai_policy": {"cache_ttl_s": 3600},
        },
        {
            **common,
            "name": "ai-background",
            "external_path": "/ai/background",
            "ai_policy": {"mode": "background"},
        },
    ]


def throughput_config(backend_port: int, llm_url: str) -> dict[str, Any]:
    """The comparison's gateway: the bare, full and both AI routes."""
    config = base_config()
    config["jwt"] = {"secret": JWT_SECRET, "required_claims": ["sub"]}
    config["ai"] = {"provider": "openai", "model": "stand-in", "base_url": f"{llm_url}/v1"}
    config["routers"] = [bare_route(backend_port), full_route(backend_port)]
    config["routers"] += ai_routes(backend_port)
    return config


def many_routes(backend_port: int, routes: int, prefix: str) -> list[dict[str, Any]]:
    """``routes`` parameterised routes under ``/{prefix}{i}/items/{id}`` (the swap workload)."""
    return [
        {
            "name": f"{prefix}-{i}",
            "backends": [backend(backend_port)],
            "external_path": f"/{prefix}{i}/items/{{id}}",
            "internal_path": "/{id}",
            "methods": ["GET", "POST"],
        }
        for i in range(routes)
    ]
