"""Editing and persisting config.json: route edits on the document, atomic writes, redaction.

Rules: edits work on the document as written (``${VAR}`` references and ``_comment`` keys stay,
every key the edit does not touch is kept); a write goes to a temporary file in the same
directory, is flushed and fsynced, then renamed over the config (its target, when the config is
a symlink), keeping the file's permissions, so a crash at any moment leaves either the old file
or the new one, never a truncated mix. Secrets never leave through :func:`redact`: every
``secret``, ``token`` and ``api_key``, the Redis password, and the ``value`` and ``replacement``
of a transformation entry (header or query parameter) whose name says it carries a credential
(:func:`is_secret_header`: ``Authorization``, ``Cookie``, ``X-Api-Key``, anything named like a
key, token, secret or password). A document sent back with the redaction marker keeps the
running secret (:func:`restore_secrets`); a transformation entry is matched by position, else by
name.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import stat
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus, urlsplit, urlunsplit

REDACTED = "***"


def write_atomically(path: Path, document: Mapping[str, Any]) -> bytes:
    """Replace ``path`` with ``document`` (2-space JSON) so readers never see a partial file.

    Returns the bytes written."""
    text = json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    target = path.resolve()  # a symlinked config (a mounted ConfigMap) keeps its link
    directory = target.parent
    try:
        mode = stat.S_IMODE(target.stat().st_mode)
    except FileNotFoundError:
        mode = 0o644
    fd, temp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fchmod(handle.fileno(), mode)
            os.fsync(handle.fileno())
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return text.encode("utf-8")


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


SECRET_KEYS = frozenset({"secret", "token", "api_key"})
SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie"})
SECRET_NAME_WORDS = ("key", "token", "secret", "password", "passwd", "credential", "session")
_ENTRY_SECRETS = ("value", "replacement")


def is_secret_header(name: str) -> bool:
    """Whether a header (or query parameter) named ``name`` carries a credential."""
    lowered = name.lower()
    return lowered in SECRET_HEADERS or any(word in lowered for word in SECRET_NAME_WORDS)


def redact_query(query: str) -> str:
    """A raw query string with the values of credential-named parameters replaced by ``***``."""
    pairs = []
    for pair in query.split("&"):
        name, equals, _ = pair.partition("=")
        secret = equals and is_secret_header(unquote_plus(name))
        pairs.append(f"{name}={REDACTED}" if secret else pair)
    return "&".join(pairs)


def redact(document: Mapping[str, Any]) -> dict[str, Any]:
    """A copy with every secret replaced by ``***``: any ``secret``, ``token`` or ``api_key``
    value at any depth (JWT secret, admin token, AI and provider keys), the values of
    transformation entries named like credentials, and the password of ``cluster.redis_url``.
    Works on a whole config or on one router."""
    out: dict[str, Any] = _redact_node(copy.deepcopy(dict(document)))
    cluster = out.get("cluster")
    if isinstance(cluster, dict) and "redis_url" in cluster:
        cluster["redis_url"] = _redact_url_password(cluster["redis_url"])
    return out


def restore_secrets(incoming: Mapping[str, Any], running: Mapping[str, Any]) -> dict[str, Any]:
    """Put the running value back wherever ``incoming`` carries the redaction marker at a secret
    key (same JSON path in the running document; for a transformation entry, the running entry
    at the same position with the same name, else the first one with that name); other values
    are taken as sent."""
    return _restore_node(copy.deepcopy(dict(incoming)), running)  # type: ignore[no-any-return]


def _secret_entry(node: Any) -> bool:
    """A transformation entry (``{"action", "name", ...}``) whose name says it is a credential."""
    return (
        isinstance(node, dict)
        and "action" in node
        and isinstance(node.get("name"), str)
        and is_secret_header(node["name"])
    )


def _redact_node(node: Any) -> Any:
    if isinstance(node, dict):
        entry = _secret_entry(node)
        for key, value in node.items():
            secret = key in SECRET_KEYS or (entry and key in _ENTRY_SECRETS)
            if secret and isinstance(value, str) and value:
                node[key] = REDACTED
            else:
                node[key] = _redact_node(value)
    elif isinstance(node, list):
        node[:] = [_redact_node(item) for item in node]
    return node


def _restore_node(node: Any, running: Any) -> Any:
    if isinstance(node, dict):
        entry = _secret_entry(node)
        for key, value in node.items():
            original = running.get(key) if isinstance(running, dict) else None
            secret = key in SECRET_KEYS or key == "redis_url" or (entry and key in _ENTRY_SECRETS)
            if secret and isinstance(value, str) and REDACTED in value and original is not None:
                node[key] = original
            else:
                node[key] = _restore_node(value, original)
    elif isinstance(node, list):
        others = running if isinstance(running, list) else []
        node[:] = [
            _restore_node(item, _counterpart(item, i, others)) for i, item in enumerate(node)
        ]
    return node


def _counterpart(item: Any, index: int, others: list[Any]) -> Any:
    """The running list element that ``item`` (at ``index``) restores its secrets from."""
    original = others[index] if index < len(others) else None
    if not _secret_entry(item):
        return original
    name = item["name"].lower()

    def same(other: Any) -> bool:
        return _secret_entry(other) and other["name"].lower() == name

    if same(original):
        return original
    return next((other for other in others if same(other)), None)


def _redact_url_password(value: Any) -> Any:
    if not isinstance(value, str) or "@" not in value:
        return value
    parts = urlsplit(value)
    if parts.password is None:
        return value
    netloc = parts.netloc.replace(f":{parts.password}@", f":{REDACTED}@", 1)
    return urlunsplit(parts._replace(netloc=netloc))
