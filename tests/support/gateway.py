"""A real ``kairos-gateway`` process on free loopback ports, driven from tests."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Self

import httpx

from .procs import ManagedProcess, ProcessExitedError, free_port, wait_for_port

REPO_ROOT = Path(__file__).resolve().parents[2]


def backend(url: str, **extra: Any) -> dict[str, Any]:
    """A config backend entry for an upstream base URL like ``http://127.0.0.1:4242``."""
    scheme_host, port = url.rsplit(":", 1)
    return {"host": scheme_host, "port": int(port), **extra}


def route(
    external: str,
    internal: str,
    upstreams: list[str],
    methods: list[str] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    return {
        "external_path": external,
        "internal_path": internal,
        "methods": methods or ["GET"],
        "backends": [backend(u) for u in upstreams],
        **extra,
    }


class Gateway:
    """``kairos-gateway`` started on ``config`` (a dict written to ``directory/config.json``)."""

    def __init__(
        self,
        config: Mapping[str, Any],
        directory: Path,
        *,
        env: Mapping[str, str] | None = None,
        args: tuple[str, ...] = (),
    ) -> None:
        self.port = free_port()
        self.admin_port = free_port()
        self.config_path = directory / "config.json"
        document = dict(config)
        document.setdefault("version", 1)
        document["server"] = {"host": "127.0.0.1", "port": self.port, **document.get("server", {})}
        document["admin"] = {
            "host": "127.0.0.1",
            "port": self.admin_port,
            **document.get("admin", {}),
        }
        self.write_config(document)
        self.process = ManagedProcess(
            [sys.executable, "-m", "kairos_gateway", str(self.config_path), *args],
            name="kairos-gateway",
            cwd=REPO_ROOT,
            env={"KAIROS_ADMIN_TOKEN": "", **(env or {})},
        )
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin_url = f"http://127.0.0.1:{self.admin_port}"

    def write_config(self, document: Mapping[str, Any]) -> None:
        """Write the config atomically (temp file + rename), as an operator's editor would."""
        self.document = dict(document)
        temp = self.config_path.with_suffix(".tmp")
        temp.write_text(json.dumps(document, indent=2))
        os.replace(temp, self.config_path)

    def start(self) -> Self:
        self.process.start()
        try:
            wait_for_port("127.0.0.1", self.port, 20, process=self.process)
            wait_for_port("127.0.0.1", self.admin_port, 20, process=self.process)
        except (TimeoutError, ProcessExitedError) as exc:
            self.process.stop()
            raise RuntimeError(f"gateway did not start:\n{self.process.log_text()}") from exc
        return self

    def stop(self) -> int | None:
        return self.process.stop()

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, trust_env=False, timeout=10, **kwargs)

    def config_version(self) -> str:
        body = httpx.get(f"{self.admin_url}/ready", trust_env=False).json()
        return str(body["config_version"])

    def wait_for_version_change(self, old: str, timeout_s: float = 10) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            current = self.config_version()
            if current != old:
                return current
            time.sleep(0.05)
        raise TimeoutError(f"config version stayed {old}:\n{self.process.log_text()}")

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.process.pid}/fd"))

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
