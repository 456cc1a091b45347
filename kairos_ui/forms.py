"""The route form: a router object of config.json as HTML fields, and back, without loss.

The common keys get their own fields; every other key of the router (retry, transformations,
AI policy...) lives in the *other settings* JSON field, so editing a route never drops what the
form has no field for. Backends are one per line: ``host:port`` as config.json spells them
(``http://127.0.0.1:9001``, ``ws://chat.internal:8080``), then ``key=value`` pairs in shell
quoting, the value read as JSON when it parses (``weight=2``, ``tags='["users"]'``) and as a
string otherwise (``health_check_path=/health``)::

    http://127.0.0.1:9001 weight=2 health_check_path=/health description='users service'

A field left empty (no protocol, no balancing strategy chosen) stays out of the JSON, so the
gateway's default applies and a route keeps the keys it was written with. The choices the form
offers come from the gateway's config schema (:mod:`kairos_ui.schema`), never from lists of its
own. The form checks only what it must to build the JSON (a backend ``scheme://host:port``, a
JSON object); every rule about routes is the gateway's, whose validation errors the page shows by
JSON path.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

# Keys with a field of their own; legacy ``host`` + ``port`` become the first backend line.
_FIELD_KEYS = frozenset(
    {
        "name",
        "external_path",
        "internal_path",
        "methods",
        "protocol",
        "backends",
        "load_balancing_strategy",
        "auth_required",
        "timeout_ms",
        "host",
        "port",
    }
)
_BACKEND_KEYS = ("host", "port")
_METHOD_SEPARATORS = re.compile(r"[\s,]+")


@dataclass(frozen=True, slots=True)
class FormIssue:
    """A problem to show next to the form: where (a JSON path or a field) and what."""

    path: str
    message: str
    line: int | None = None


@dataclass
class RouteForm:
    """The values of the route form's fields, as the browser sends and shows them."""

    name: str = ""
    external_path: str = ""
    internal_path: str = ""
    methods: list[str] = field(default_factory=lambda: ["GET"])
    protocol: str = ""
    backends: str = ""
    load_balancing_strategy: str = ""
    auth_required: bool = False
    timeout_ms: str = ""
    other: str = "{}"

    def method_choices(self, offered: Iterable[str]) -> list[str]:
        """The methods ``offered`` (the schema's), then any other method the route already has."""
        choices = list(offered)
        return [*choices, *(m for m in self.methods if m not in choices)]

    @classmethod
    def from_config(cls, router: Mapping[str, Any]) -> RouteForm:
        """The form showing an existing router object (as ``GET /api/routes/{id}`` gives it)."""
        lines = []
        if "host" in router and "port" in router:
            lines.append(_backend_line({"host": router["host"], "port": router["port"]}))
        for entry in router.get("backends") or []:
            if isinstance(entry, Mapping):
                lines.append(_backend_line(entry))
        other = {key: value for key, value in router.items() if key not in _FIELD_KEYS}
        timeout = router.get("timeout_ms")
        return cls(
            name=str(router.get("name") or ""),
            external_path=str(router.get("external_path") or ""),
            internal_path=str(router.get("internal_path") or ""),
            methods=[str(m).upper() for m in router.get("methods") or []],
            protocol=str(router.get("protocol") or ""),
            backends="\n".join(lines),
            load_balancing_strategy=str(router.get("load_balancing_strategy") or ""),
            auth_required=bool(router.get("auth_required")),
            timeout_ms="" if timeout is None else str(timeout),
            other=json.dumps(other, indent=2) if other else "{}",
        )

    @classmethod
    def from_fields(cls, fields: Mapping[str, str], methods: list[str]) -> RouteForm:
        """The form as submitted: ``methods`` are the values of the checked boxes, or the text
        of the methods field (``GET POST``, ``GET, POST``) when the schema lists no methods."""
        return cls(
            name=fields.get("name", "").strip(),
            external_path=fields.get("external_path", "").strip(),
            internal_path=fields.get("internal_path", "").strip(),
            methods=[m.upper() for value in methods for m in _METHOD_SEPARATORS.split(value) if m],
            protocol=fields.get("protocol", "").strip(),
            backends=fields.get("backends", ""),
            load_balancing_strategy=fields.get("load_balancing_strategy", "").strip(),
            auth_required=fields.get("auth_required", "") in ("on", "true", "1"),
            timeout_ms=fields.get("timeout_ms", "").strip(),
            other=fields.get("other", "").strip() or "{}",
        )

    def to_config(self) -> tuple[dict[str, Any], list[FormIssue]]:
        """The router object to send, and the problems that stop the form from building it."""
        issues: list[FormIssue] = []
        try:
            other = json.loads(self.other)
        except ValueError as exc:
            other = {}
            issues.append(FormIssue("other settings", f"not valid JSON: {exc}"))
        if not isinstance(other, dict):
            other = {}
            issues.append(FormIssue("other settings", "must be a JSON object ({...})"))
        clashing = sorted(_FIELD_KEYS & other.keys())
        if clashing:
            issues.append(
                FormIssue("other settings", f"set {', '.join(clashing)} with the fields above")
            )
        router: dict[str, Any] = {}
        if self.name:
            router["name"] = self.name
        if self.external_path:
            router["external_path"] = self.external_path
        if self.internal_path:
            router["internal_path"] = self.internal_path
        if self.methods:
            router["methods"] = self.methods
        if self.protocol:
            router["protocol"] = self.protocol
        backends = []
        for number, line in enumerate(self.backends.splitlines(), start=1):
            if line.strip():
                backend, problem = _parse_backend_line(line)
                if problem:
                    issues.append(FormIssue("backends", problem, number))
                else:
                    backends.append(backend)
        if backends:
            router["backends"] = backends
        if self.load_balancing_strategy:
            router["load_balancing_strategy"] = self.load_balancing_strategy
        if self.auth_required:
            router["auth_required"] = True
        if self.timeout_ms:
            try:
                router["timeout_ms"] = int(self.timeout_ms)
            except ValueError:
                issues.append(
                    FormIssue("timeout_ms", f"must be a whole number, got {self.timeout_ms!r}")
                )
        for key, value in other.items():
            if key not in _FIELD_KEYS:
                router[key] = value
        return router, issues


def _backend_line(entry: Mapping[str, Any]) -> str:
    url = f"{entry.get('host', '')}:{entry.get('port', '')}"
    options = [f"{key}={_quote(value)}" for key, value in entry.items() if key not in _BACKEND_KEYS]
    return " ".join([url, *options])


def _quote(value: Any) -> str:
    if isinstance(value, str) and not _reads_as_json(value):
        return shlex.quote(value)
    return shlex.quote(json.dumps(value))


def _reads_as_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def _parse_backend_line(line: str) -> tuple[dict[str, Any], str]:
    """A backend entry from ``host:port key=value...``, or an empty dict and what is wrong.

    ``host`` is everything before the last ``:``, kept as written (the gateway judges its
    scheme and name); ``port`` is the number after it.
    """
    try:
        words = shlex.split(line)
    except ValueError as exc:
        return {}, f"{exc} in {line.strip()!r}"
    url, *options = words
    host, colon, port = url.rpartition(":")
    scheme, separator, name = host.partition("://")
    if not (colon and scheme and separator and name and port.isascii() and port.isdigit()):
        return {}, f"{url!r} is not a backend URL like http://127.0.0.1:9001 (scheme://host:port)"
    backend: dict[str, Any] = {"host": host, "port": int(port)}
    for option in options:
        key, equals, raw = option.partition("=")
        if not equals or not key:
            return {}, f"{option!r} is not key=value"
        if key in _BACKEND_KEYS:
            return {}, f"{key} belongs in the URL, not in {option!r}"
        try:
            backend[key] = json.loads(raw)
        except ValueError:
            backend[key] = raw
    return backend, ""
