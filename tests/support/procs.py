"""Run real processes on loopback for integration tests.

``ManagedProcess`` starts a command in its own process group with its output in a log file, and
stops the whole group (SIGTERM, then SIGKILL after a timeout). ``start_upstream`` and ``Upstream``
start the test upstream server of ``upstreams.py`` and steer it through its control plane.

Processes still running when the interpreter exits are killed, and the log files removed.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self, Unpack

import httpx

from .upstreams import ControlFields, HitRecord

REPO_ROOT = Path(__file__).resolve().parents[2]
LOOPBACK = "127.0.0.1"
CONTROL_TIMEOUT_S = 5.0
_LOG_TAIL_CHARS = 4000

_live_processes: weakref.WeakSet[ManagedProcess] = weakref.WeakSet()
_log_dir: Path | None = None


class ProcessExitedError(RuntimeError):
    """A managed process exited while it was expected to come up."""


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that was free a moment ago (another process may still take it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(
    host: str, port: int, timeout_s: float = 10.0, *, process: ManagedProcess | None = None
) -> None:
    """Block until host:port accepts TCP connections.

    Raises ``TimeoutError`` after ``timeout_s``, or ``ProcessExitedError`` (with the end of its log)
    as soon as ``process``, when given, has exited.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        if process is not None and not process.running:
            raise ProcessExitedError(
                f"{process.name} exited with {process.returncode} before listening on "
                f"{host}:{port}; log tail:\n{process.log_text()[-_LOG_TAIL_CHARS:]}"
            )
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"nothing accepted connections on {host}:{port} within {timeout_s} s"
                ) from None
            time.sleep(0.02)


class ManagedProcess:
    """A command run in its own process group, stdout and stderr captured to one log file.

    Use as a context manager (starts on enter if needed, stops on exit) or call ``start`` and
    ``stop``. ``log_text`` stays readable after the process has stopped.
    """

    def __init__(
        self,
        args: Sequence[str],
        *,
        name: str | None = None,
        cwd: str | Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.args = list(args)
        self.name = name or Path(self.args[0]).name
        self.cwd = cwd
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.log_path = _new_log_path(self.name)
        self._popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Self:
        if self._popen is not None:
            raise RuntimeError(f"{self.name} was already started")
        with self.log_path.open("wb") as log:
            self._popen = subprocess.Popen(
                self.args,
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _live_processes.add(self)
        return self

    @property
    def pid(self) -> int:
        return self._require_started().pid

    @property
    def running(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self._popen is None else self._popen.poll()

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 5.0) -> int | None:
        """Send ``sig`` to the process group, SIGKILL it after ``timeout_s``; the exit code.

        Whatever is left of the group once the leader has exited is killed too. Idempotent.
        """
        if self._popen is None:
            return None
        if self._popen.poll() is None:
            self._signal_group(sig)
            try:
                self._popen.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self._popen.wait()
        self._signal_group(signal.SIGKILL)
        _live_processes.discard(self)
        return self._popen.returncode

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the process itself (not its group)."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self._require_started().pid, sig)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def __enter__(self) -> Self:
        if self._popen is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else f"exited {self.returncode}"
        return f"<ManagedProcess {self.name} pid={self._popen and self._popen.pid} {state}>"

    def _require_started(self) -> subprocess.Popen[bytes]:
        if self._popen is None:
            raise RuntimeError(f"{self.name} has not been started")
        return self._popen

    def _signal_group(self, sig: int) -> None:
        # The group id is the leader's pid (start_new_session); it vanishes with its last member.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._require_started().pid, sig)


def start_upstream(name: str, *, attempts: int = 3) -> tuple[ManagedProcess, str]:
    """Start ``python -m tests.support.upstreams`` on a free loopback port; (process, base URL).

    Returns once the server answers as itself (its pid on ``GET /_control``). If another process
    grabbed the port first, it tries again on a new port, up to ``attempts`` times.
    """
    failures: list[str] = []
    for _ in range(attempts):
        port = free_port()
        url = f"http://{LOOPBACK}:{port}"
        process = ManagedProcess(
            [sys.executable, "-m", "tests.support.upstreams", "--port", str(port), "--name", name],
            name=f"upstream-{name}",
            cwd=REPO_ROOT,
        ).start()
        try:
            wait_for_port(LOOPBACK, port, process=process)
            server_pid = _call("GET", f"{url}/_control")["pid"]
        except (ProcessExitedError, httpx.HTTPError) as exc:
            process.stop()
            failures.append(str(exc))
            continue
        except BaseException:
            process.stop()
            raise
        if server_pid == process.pid:
            return process, url
        process.stop()
        failures.append(f"port {port} was answered by pid {server_pid}, not {process.pid}")
    raise RuntimeError(f"upstream {name!r} did not start in {attempts} attempts: {failures}")


class Upstream:
    """Sync handle on one test upstream: its address, its control plane and its hit counter.

    ``Upstream.start(name)`` starts a server process that ``stop`` (or leaving the ``with`` block)
    ends; ``Upstream(url)`` steers a server started elsewhere.
    """

    def __init__(self, url: str, *, process: ManagedProcess | None = None) -> None:
        self.url = url.rstrip("/")
        self.process = process
        port = httpx.URL(self.url).port
        if port is None:
            raise ValueError(f"upstream URL {url!r} has no explicit port")
        self.port: int = port

    @classmethod
    def start(cls, name: str) -> Upstream:
        process, url = start_upstream(name)
        return cls(url, process=process)

    @property
    def ws_url(self) -> str:
        return "ws" + self.url.removeprefix("http")

    def control(self, **fields: Unpack[ControlFields]) -> dict[str, Any]:
        """Replace the control state (omitted fields take their defaults); the new state."""
        state: dict[str, Any] = _call("POST", f"{self.url}/_control", json=dict(fields))
        return state

    def hits(self) -> int:
        """Requests received since the last reset, control plane excluded."""
        count: int = _call("GET", f"{self.url}/_hits")["hits"]
        return count

    def hit_log(self) -> list[HitRecord]:
        """The last 10,000 requests received, oldest first."""
        log: list[HitRecord] = _call("GET", f"{self.url}/_hits")["log"]
        return log

    def reset_hits(self) -> None:
        _call("POST", f"{self.url}/_hits/reset")

    def reset(self) -> None:
        """Back to normal behaviour with an empty hit log."""
        self.control()
        self.reset_hits()

    def stop(self) -> int | None:
        return None if self.process is None else self.process.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<Upstream {self.url}>"


_control_client: httpx.Client | None = None


def _call(method: str, url: str, *, json: object = None) -> Any:
    # One shared plain-HTTP client: a new httpx client per call loads the CA bundle (tens of ms).
    # trust_env=False: a proxy configured in the environment must never sit on loopback traffic.
    global _control_client
    if _control_client is None:
        _control_client = httpx.Client(timeout=CONTROL_TIMEOUT_S, trust_env=False, verify=False)
    response = _control_client.request(method, url, json=json)
    if response.is_error:
        raise httpx.HTTPStatusError(
            f"{method} {url} answered {response.status_code}: {response.text}",
            request=response.request,
            response=response,
        )
    return response.json()


def _new_log_path(name: str) -> Path:
    global _log_dir
    if _log_dir is None:
        _log_dir = Path(tempfile.mkdtemp(prefix="kairos-procs-"))
    safe_name = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    handle, path = tempfile.mkstemp(prefix=f"{safe_name}-", suffix=".log", dir=_log_dir)
    os.close(handle)
    return Path(path)


@atexit.register
def _cleanup() -> None:
    for process in list(_live_processes):
        process.stop(timeout_s=1.0)
    if _log_dir is not None:
        shutil.rmtree(_log_dir, ignore_errors=True)
