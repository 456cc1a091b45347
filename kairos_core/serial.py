"""Core values as JSON-ready data: the one conversion every wire-facing result goes through.

Rule: a dataclass becomes a dict of its fields, a trailing ``_`` dropped from a field name
(``from_`` is ``from``, as in the config); a config issue becomes its documented dict
(:meth:`~kairos_core.config.ConfigIssue.to_dict`); mappings keep their keys as strings; tuples
and lists become lists; everything else is kept as it is.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields, is_dataclass
from typing import Any

from kairos_core.config.errors import ConfigIssue


def plain(value: Any) -> Any:
    """``value`` as plain data (rules above), recursively."""
    if isinstance(value, ConfigIssue):
        return value.to_dict()
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name.rstrip("_"): plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [plain(item) for item in value]
    return value
