"""A real ``redis-server`` (the Debian package) on a free loopback port, driven from tests.

``RedisServer.start()`` runs it without persistence; ``stop()`` kills it (SIGKILL, as a crash
would) and a later ``start()`` brings it back on the same port, empty. ``pause()`` / ``resume()``
stop and continue the process (a Redis that accepts connections but never answers).
``client_commands()`` records, through ``MONITOR``, the commands clients sent (one per round
trip; what scripts run inside Redis is left out).
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from typing import Self

import redis

from .procs import LOOPBACK, ManagedProcess, free_port, wait_for_port

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


class RedisServer:
    """One redis-server process on a fixed port; restartable."""

    def __init__(self, *extra_args: str) -> None:
        self.port = free_port()
        self.url = f"redis://{LOOPBACK}:{self.port}/0"
        self.extra_args = extra_args  # e.g. ("--requirepass", "s3cret")
        self.process: ManagedProcess | None = None
        self._client: redis.Redis | None = None

    def start(self) -> Self:
        args = [
            REDIS_SERVER,
            "--port",
            str(self.port),
            "--bind",
            LOOPBACK,
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
            *self.extra_args,
        ]
        self.process = ManagedProcess(args, name=f"redis-{self.port}").start()
        wait_for_port(LOOPBACK, self.port, 10, process=self.process)
        deadline = time.monotonic() + 5
        while True:
            try:
                self.client().ping()
                return self
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def stop(self) -> None:
        """Kill the server at once (what a crash looks like to its clients)."""
        if self.process is not None:
            self.process.stop(signal.SIGKILL)
            self.process = None
        if self._client is not None:
            self._client.close()
            self._client = None

    def pause(self) -> None:
        """SIGSTOP: connections are accepted by the kernel, nothing is ever answered."""
        assert self.process is not None
        self.process.signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.signal(signal.SIGCONT)

    def client(self) -> redis.Redis:
        if self._client is None:
            password = None
            if "--requirepass" in self.extra_args:
                password = self.extra_args[self.extra_args.index("--requirepass") + 1]
            self._client = redis.Redis(
                host=LOOPBACK, port=self.port, password=password, socket_timeout=5
            )
        return self._client

    @contextlib.contextmanager
    def client_commands(self) -> Iterator[list[str]]:
        """The commands clients send while the block runs, upper-cased with their first
        argument (``["EVALSHA 3f2a...", "PUBLISH kairos:circuits"]``); filled when it ends."""
        seen: list[str] = []
        end = f"kairos-monitor-end-{time.monotonic_ns()}"
        monitor_client = redis.Redis(host=LOOPBACK, port=self.port, socket_timeout=10)
        with monitor_client.monitor() as monitor:

            def read() -> None:
                while True:
                    entry = monitor.next_command()
                    words = entry["command"].split(" ")
                    if entry["client_type"] == "lua":
                        continue
                    if words[:2] == ["ECHO", end]:
                        return
                    seen.append(" ".join([words[0].upper(), *words[1:2]]))

            reader = threading.Thread(target=read, daemon=True)
            reader.start()
            captured: list[str] = []
            try:
                yield captured
            finally:
                self.client().echo(end)
                reader.join(10)
                captured.extend(seen)
        monitor_client.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
