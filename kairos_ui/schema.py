"""The choices the route form offers, read from the config schema the gateway serves.

The gateway's ``GET /api/config/schema`` (SDK ``config_schema()``) is the JSON Schema of
config.json; the dashboard owns no list of methods, strategies or protocols. A router field's
choices are its ``enum`` (on the field, on its ``items`` for a list, on an ``anyOf`` branch or on
the ``$defs`` entry a ``$ref`` names) and its ``default`` when that is a string. A field the
schema does not enumerate, or a schema not fetched yet, has no choices: the form then asks for
the value as text and the gateway's validation names what it accepts.

>>> schema = {"$defs": {"Router": {"properties": {
...     "protocol": {"enum": ["http", "websocket"], "default": "http"},
...     "methods": {"type": "array", "items": {"type": "string"}}}}}}
>>> RouteChoices.from_schema(schema).protocol
Choice(values=('http', 'websocket'), default='http')
>>> RouteChoices.from_schema(schema).methods
Choice(values=(), default=None)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

_REF_PREFIX = "#/$defs/"
_MAX_DEPTH = 8  # a schema whose references loop has no enum to find, not an endless one


@dataclass(frozen=True, slots=True)
class Choice:
    """The values a field accepts (empty: the schema does not enumerate them) and its default."""

    values: tuple[str, ...] = ()
    default: str | None = None


@dataclass(frozen=True, slots=True)
class RouteChoices:
    """The enumerated fields of a router object (``routers[]`` in config.json)."""

    methods: Choice = Choice()
    load_balancing_strategy: Choice = Choice()
    protocol: Choice = Choice()

    @classmethod
    def from_schema(cls, schema: Mapping[str, Any] | None) -> RouteChoices:
        """The choices ``schema`` (config.json's JSON Schema) gives; none for a missing schema."""
        if not schema:
            return cls()
        definitions = _mapping(schema.get("$defs"))
        fields = _mapping(_mapping(definitions.get("Router")).get("properties"))

        def choice(name: str) -> Choice:
            field = _mapping(fields.get(name))
            default = field.get("default")
            return Choice(_enum(field, definitions), default if isinstance(default, str) else None)

        return cls(
            methods=choice("methods"),
            load_balancing_strategy=choice("load_balancing_strategy"),
            protocol=choice("protocol"),
        )


def _enum(
    node: Mapping[str, Any], definitions: Mapping[str, Any], depth: int = 0
) -> tuple[str, ...]:
    """The string values ``node`` enumerates, looking through ``items``, ``anyOf`` and ``$ref``."""
    values = node.get("enum")
    if isinstance(values, list):
        return tuple(value for value in values if isinstance(value, str))
    if depth >= _MAX_DEPTH:
        return ()
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith(_REF_PREFIX):
        target = _mapping(definitions.get(ref.removeprefix(_REF_PREFIX)))
        return _enum(target, definitions, depth + 1)
    items = node.get("items")
    if isinstance(items, Mapping):
        return _enum(items, definitions, depth + 1)
    branches = node.get("anyOf")
    for branch in branches if isinstance(branches, list) else ():
        if isinstance(branch, Mapping) and (found := _enum(branch, definitions, depth + 1)):
            return found
    return ()


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}
