"""The SDK is typed for its users: a script using both clients passes ``mypy --strict``.

The snippet is only type-checked, never run; a deliberately wrong snippet proves mypy looks at the
SDK's real signatures rather than seeing ``Any``.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from tests.support.procs import REPO_ROOT

USAGE = """
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

from kairos_client import (
    AiDecision,
    AsyncKairosClient,
    CircuitInfo,
    ConfigDocument,
    Event,
    Health,
    KairosAPIError,
    KairosAuthError,
    KairosClient,
    KairosConnectionError,
    KairosError,
    MetricsHistory,
    MetricsSnapshot,
    Ready,
    ReloadResult,
    RouteChange,
    RouteInfo,
    ValidationIssue,
    ValidationResult,
    models,
)

ROUTE = {"name": "echo", "host": "http://127.0.0.1", "port": 9001,
         "external_path": "/echo", "internal_path": "/", "methods": ["GET"]}


def sync_usage() -> float:
    with KairosClient("http://127.0.0.1:5901", token="t", timeout=2.0) as client:
        health: Health = client.health()
        ready: Ready = client.ready()
        snapshot: MetricsSnapshot = client.metrics()
        history: MetricsHistory = client.metrics_history(seconds=60)
        text: str = client.prometheus()
        routes: list[RouteInfo] = client.routes()
        one: RouteInfo = client.route("echo")
        created: RouteChange = client.create_route(ROUTE, if_match=ready.config_version)
        updated: RouteChange = client.update_route("echo", ROUTE)
        deleted: RouteChange = client.delete_route("echo", if_match=None)
        document: ConfigDocument = client.config()
        schema: dict[str, Any] = client.config_schema()
        replaced: ReloadResult = client.put_config(document.config)
        checked: ValidationResult = client.validate_config(document.config)
        issues: list[ValidationIssue] = checked.errors + checked.warnings
        reloaded: ReloadResult = client.reload()
        circuits: list[CircuitInfo] = client.circuits()
        reset: CircuitInfo = client.reset_circuit(circuits[0].backend)
        opened: CircuitInfo = client.open_circuit("http://127.0.0.1:9001")
        decisions: list[AiDecision] = client.ai_decisions(limit=10)
        events: Iterator[Event] = client.events(last_event_id=3, types=["circuit"])
        for event in events:
            identifier: int = event.id
            break
        point: models.MetricsPoint = history.points[0]
        del text, routes, one, created, updated, deleted, replaced, issues, reloaded, reset
        del opened, decisions, identifier, point, schema
        return health.uptime_seconds + snapshot.latency_ms.p99


async def async_usage() -> list[str]:
    async with AsyncKairosClient() as client:
        health: Health = await client.health()
        snapshot: MetricsSnapshot = await client.metrics()
        circuits: list[CircuitInfo] = await client.circuits()
        change: RouteChange = await client.create_route(ROUTE)
        reloaded: ReloadResult = await client.reload()
        schema: dict[str, Any] = await client.config_schema()
        stream: AsyncIterator[Event] = client.events(reconnect=False, max_reconnect_delay_s=1.0)
        seen: list[str] = [health.status, snapshot.config_version, change.config_version]
        async for event in stream:
            seen.append(event.type)
            break
        del circuits, reloaded, schema
        return seen


def errors() -> int:
    try:
        sync_usage()
    except KairosAuthError as exc:
        return exc.status
    except KairosAPIError as exc:
        details: tuple[ValidationIssue, ...] = exc.details
        return len(details) + len(exc.type) + len(exc.message)
    except KairosConnectionError:
        return 3
    except KairosError:
        return 1
    return 0


async def closes() -> None:
    client = AsyncKairosClient(timeout=1.0)
    await client.close()
    KairosClient().close()


asyncio.run(async_usage())
"""

MISUSE = """
from kairos_client import KairosClient

with KairosClient() as client:
    total: str = client.metrics().requests_total
    client.route(42)
    client.events(last_event_id="abc")
"""


def _mypy(tmp_path: Path, source: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "usage.py"
    script.write_text(textwrap.dedent(source))
    return subprocess.run(
        [
            sys.executable, "-m", "mypy", "--strict", "--no-incremental",
            "--cache-dir", str(tmp_path / ".mypy_cache"), str(script),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip


def test_a_script_using_both_clients_passes_mypy_strict(tmp_path: Path) -> None:
    result = _mypy(tmp_path, USAGE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_sees_the_real_signatures(tmp_path: Path) -> None:
    result = _mypy(tmp_path, MISUSE)
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout.count("error:") == 3, result.stdout
