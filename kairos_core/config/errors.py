"""Configuration problems: what is wrong, where (JSON path and file line), and how bad.

Every problem the loader or the validator finds is a :class:`ConfigIssue`. Errors stop a config
from loading; warnings and recommendations are reported and the config still loads (under
``--strict`` warnings become errors).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Severity(StrEnum):
    """How much a problem matters."""

    ERROR = "error"
    WARNING = "warning"
    RECOMMENDATION = "recommendation"


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    """One problem, located by JSON path (``routers[2].backends[0].port``) and file line.

    ``code`` names the rule that found it (``duplicate_route``, ``unknown_key``,
    ``unreadable``...): stable, for programs to act on; ``message`` is for people and may change.
    """

    path: str
    message: str
    severity: Severity = Severity.ERROR
    line: int | None = None
    allowed: tuple[str, ...] = ()
    code: str = "invalid"

    def __str__(self) -> str:
        where = self.path or "$"
        if self.line is not None:
            where = f"{where} (line {self.line})"
        return f"{where}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        """The stable JSON shape used by ``kairos validate --json`` and the admin API."""
        return {
            "severity": str(self.severity),
            "code": self.code,
            "path": self.path or "$",
            "line": self.line,
            "message": self.message,
            "allowed": list(self.allowed),
        }


@dataclass(slots=True)
class ConfigError(Exception):
    """The config cannot be used. ``issues`` holds every problem found, errors first."""

    issues: list[ConfigIssue] = field(default_factory=list)
    source: str = "<config>"

    def __post_init__(self) -> None:
        Exception.__init__(self, self.summary())

    @property
    def errors(self) -> list[ConfigIssue]:
        return [issue for issue in self.issues if issue.severity is Severity.ERROR]

    def summary(self) -> str:
        errors = self.errors
        lines = [f"{self.source}: {len(errors)} error(s)"]
        lines.extend(f"  {issue}" for issue in errors)
        return "\n".join(lines)


def unknown_key_message(key: str, known: Iterable[str]) -> str:
    """``unknown key 'auth_requried'; did you mean 'auth_required'?`` (no hint when nothing is
    close)."""
    hint = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    return f"unknown key {key!r}" + (f"; did you mean {hint[0]!r}?" if hint else "")
