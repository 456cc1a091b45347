"""Upstream processes shared by a test module: started once, reset for each test."""

from __future__ import annotations

from .procs import Upstream


class UpstreamPool:
    """Upstream processes shared by a module's tests, each started on its first use.

    The first time a test asks for one, it is reset: normal behaviour, empty hit log.
    """

    def __init__(self) -> None:
        self._started: dict[str, Upstream] = {}
        self._handed_out: set[str] = set()

    def __getitem__(self, name: str) -> Upstream:
        upstream = self._started.get(name)
        if upstream is None:
            upstream = self._started[name] = Upstream.start(name)
        elif name not in self._handed_out:
            upstream.reset()
        self._handed_out.add(name)
        return upstream

    def next_test(self) -> None:
        self._handed_out.clear()

    def stop(self) -> None:
        for upstream in self._started.values():
            upstream.stop()
