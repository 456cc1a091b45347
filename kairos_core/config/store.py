"""Editing and persisting config.json: route edits on the document, atomic writes, redaction.

Rules: edits work on the document as written (``${VAR}`` references and ``_comment`` keys stay,
every key the edit does not touch is kept); a write goes to a temporary file in the same
directory, is flushed and fsynced, then renamed over the config, so a crash at any moment leaves
either the old file or the new one, never a truncated mix. Secrets (``jwt.secret``,
``admin.token``, ``ai.api_key``, provider keys, the Redis password) never leave through
:func:`redact`; a document sent back with the redaction marker keeps the running secret
(:func:`restore_secrets`).
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

REDACTED = "***"
_SECRET_PATHS: tuple[tuple[str, ...], ...] = (
    ("jwt", "secret"),
    ("admin", "token"),
    ("ai", "api_key"),
)


def write_atomically(path: Path, document: Mapping[str, Any]) -> None:
    """Replace ``path`` with ``document`` (2-space JSON) so readers never see a partial file."""
    text = json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    directory = path.resolve().parent
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _routers(document: Mapping[str, Any]) -> list[Any]:
    routers = document.get("routers")
    return list(routers) if isinstance(routers, list) else []


def with_route_added(document: Mapping[str, Any], route: Mapping[str, Any]) -> dict[str, Any]:
    new = copy.deepcopy(dict(document))
    new["routers"] = [*_routers(new), dict(route)]
    return new


def with_route_replaced(
    document: Mapping[str, Any], index: int, route: Mapping[str, Any]
) -> dict[str, Any]:
    new = copy.deepcopy(dict(document))
    routers = _routers(new)
    routers[index] = dict(route)
    new["routers"] = routers
    return new


def with_route_removed(document: Mapping[str, Any], index: int) -> dict[str, Any]:
    new = copy.deepcopy(dict(document))
    routers = _routers(new)
    del routers[index]
    new["routers"] = routers
    return new


def redact(document: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of the document with every secret replaced by ``***``."""
    out = copy.deepcopy(dict(document))
    for path in _SECRET_PATHS:
        _replace_at(out, path, lambda value: REDACTED if value else value)
    for providers in (_get(out, ("ai", "fallback_providers")),):
        for provider in providers if isinstance(providers, list) else ():
            if isinstance(provider, dict) and provider.get("api_key"):
                provider["api_key"] = REDACTED
    for router in _routers(out):
        policy = router.get("ai_policy") if isinstance(router, dict) else None
        for provider in (policy or {}).get("fallback_providers", []) or []:
            if isinstance(provider, dict) and provider.get("api_key"):
                provider["api_key"] = REDACTED
    _replace_at(out, ("cluster", "redis_url"), _redact_url_password)
    return out


def restore_secrets(incoming: Mapping[str, Any], running: Mapping[str, Any]) -> dict[str, Any]:
    """Put the running secrets back where ``incoming`` carries the redaction marker."""
    out = copy.deepcopy(dict(incoming))
    for path in (*_SECRET_PATHS, ("cluster", "redis_url")):
        value = _get(out, path)
        if isinstance(value, str) and REDACTED in value:
            original = _get(running, path)
            _replace_at(out, path, lambda _, kept=original: kept)
    return out


def _get(document: Any, path: tuple[str, ...]) -> Any:
    node = document
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _replace_at(document: dict[str, Any], path: tuple[str, ...], change: Any) -> None:
    node: Any = document
    for key in path[:-1]:
        if not isinstance(node, dict) or not isinstance(node.get(key), dict):
            return
        node = node[key]
    if isinstance(node, dict) and path[-1] in node:
        node[path[-1]] = change(node[path[-1]])


def _redact_url_password(value: Any) -> Any:
    if not isinstance(value, str) or "@" not in value:
        return value
    parts = urlsplit(value)
    if parts.password is None:
        return value
    netloc = parts.netloc.replace(f":{parts.password}@", f":{REDACTED}@", 1)
    return urlunsplit(parts._replace(netloc=netloc))
