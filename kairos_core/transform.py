"""Request and response transformations: kairos-rs's schema, actually applied.

A route's ``request_transformation`` runs after a backend is chosen, on the upstream path (already
rendered from ``internal_path``), the client's raw query string and the request headers. Its
``response_transformation`` runs on the upstream status and headers before they reach the client.
Each compiled transform is built once per config (regexes and replacement templates are compiled
in the constructor) and is immutable, so one instance serves every request concurrently.

Headers (request and response), applied in config order:

- Headers are an ordered list of ``(name, value)`` pairs; a name may repeat (two ``Set-Cookie``).
  Names compare case-insensitively; an operation never touches pairs with other names, so their
  order and repetitions survive.
- ``add`` appends ``name: value`` only if no header of that name is present.
- ``set`` replaces every value of that name with one ``name: value`` (spelled as in the config)
  at the position of the first one, or appends it when there is none.
- ``remove`` deletes every value of that name.
- ``replace`` runs ``pattern`` → ``replacement`` over every value of that name, replacing every
  match in a value (Rust's ``replace_all``). Absent name: nothing happens.

Replacement templates use Rust ``regex`` syntax and are converted once to a Python template:
``$1`` and ``${1}`` are group 1, ``$name`` and ``${name}`` a named group, ``$0`` the whole match,
``$$`` a literal ``$``, and a ``$`` that starts no reference is literal. As in Rust, ``$name``
takes the longest run of ``[A-Za-z0-9_]``, so ``$1a`` means the group named ``1a``: write
``${1}a``. A reference to a group the pattern does not have, or to a group that did not take
part in the match, is replaced by nothing (Rust's behaviour). Patterns themselves are Python
``re`` syntax, which covers what kairos-rs configs use (Rust's ``(?<name>...)`` must be written
``(?P<name>...)``; the config checker reports the former as an invalid regular expression).

Path: ``pattern`` → ``replacement`` on the upstream path, FIRST match only (Rust's ``replace``);
no match leaves the path unchanged. If the result does not start with ``/``, a ``/`` is put in
front. The result is not otherwise re-validated: the rewrite is the operator's.

Query (config order): the raw query string (without ``?``) is split on ``&`` into pairs and each
pair on its first ``=``. A pair's name is compared to the configured name after percent-decoding
(``+`` as space), so ``api%5Fkey`` is ``api_key`` and a ``remove`` cannot be dodged by encoding.

- ``add`` appends ``name=value`` only if no pair has that name.
- ``set`` replaces every pair of that name with one ``name=value`` at the position of the first,
  or appends it.
- ``remove`` deletes every pair of that name.
- Added names and values are encoded with ``quote(..., safe="")``. Untouched pairs keep their
  order and exact bytes. Empty pieces (``a=1&&b=2``) are dropped when the query is rewritten;
  a route without query transformations passes the query string through untouched.

Status: the first ``status_code_mappings`` entry whose ``from`` equals the upstream status gives
the new status; none matching leaves it unchanged. ``condition`` is ignored, as in kairos-rs,
which parses it but never evaluates it.

Invalid configuration (``add``/``set`` without ``value``, ``replace`` without ``pattern`` and
``replacement``, a query ``replace``, a header name that is not an RFC 9110 token, a header value
or replacement containing CR, LF or NUL, a bad regex) raises ``ValueError`` (``re.error`` for a
regex) from the constructor; the config checker reports the same problems with their JSON path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import quote, unquote_plus

from kairos_core.config.models import (
    HeaderTransformation,
    QueryTransformation,
    RequestTransformation,
    ResponseTransformation,
)
from kairos_core.http import HEADER_NAME, Headers

_FORBIDDEN_VALUE_CHARS = ("\r", "\n", "\0")
_RUST_CAP_NAME = re.compile(r"[A-Za-z0-9_]+")
_RUST_CAP_NUMBER = re.compile(r"\+?[0-9]+")


@dataclass(frozen=True, slots=True)
class RequestParts:
    """What a request transformation may change: upstream path, raw query (no ``?``), headers."""

    path: str
    query: str
    headers: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class ResponseParts:
    """What a response transformation may change: status and headers."""

    status: int
    headers: tuple[tuple[str, str], ...]


def rust_replacement_to_python(replacement: str, pattern: re.Pattern[str]) -> str:
    """Convert a Rust ``regex`` replacement template into an equivalent ``re.sub`` template.

    References to groups ``pattern`` lacks become nothing, as Rust substitutes an empty string.
    Literal backslashes are escaped, since they are special only in Python templates.
    """
    out: list[str] = []
    i = 0
    while i < len(replacement):
        dollar = replacement.find("$", i)
        if dollar == -1:
            out.append(_escape_literal(replacement[i:]))
            break
        out.append(_escape_literal(replacement[i:dollar]))
        if replacement.startswith("$$", dollar):
            out.append("$")
            i = dollar + 2
            continue
        reference, end = _parse_rust_reference(replacement, dollar)
        if reference is None:
            out.append("$")
            i = dollar + 1
            continue
        out.append(_python_group(reference, pattern))
        i = end
    return "".join(out)


def _escape_literal(text: str) -> str:
    return text.replace("\\", "\\\\")


def _parse_rust_reference(template: str, dollar: int) -> tuple[str | None, int]:
    """The group name after the ``$`` at ``dollar`` and where it ends; ``None`` if there is none."""
    start = dollar + 1
    if template.startswith("{", start):
        close = template.find("}", start + 1)
        if close == -1:
            return None, start
        return template[start + 1 : close], close + 1
    match = _RUST_CAP_NAME.match(template, start)
    if match is None:
        return None, start
    return match.group(), match.end()


def _python_group(reference: str, pattern: re.Pattern[str]) -> str:
    if _RUST_CAP_NUMBER.fullmatch(reference):
        index = int(reference)
        return f"\\g<{index}>" if index <= pattern.groups else ""
    return f"\\g<{reference}>" if reference in pattern.groupindex else ""


def _check_value(value: str, what: str) -> str:
    if any(char in value for char in _FORBIDDEN_VALUE_CHARS):
        raise ValueError(f"{what} {value!r} must not contain CR, LF or NUL")
    return value


@dataclass(frozen=True, slots=True)
class _HeaderOp:
    action: Literal["add", "set", "remove", "replace"]
    name: str
    folded: str
    value: str = ""
    regex: re.Pattern[str] | None = None
    template: str = ""

    @classmethod
    def compile(cls, config: HeaderTransformation) -> _HeaderOp:
        if not HEADER_NAME.fullmatch(config.name):
            raise ValueError(f"invalid header name {config.name!r}")
        folded = config.name.lower()
        if config.action in ("add", "set"):
            if config.value is None:
                raise ValueError(f"header action {config.action!r} needs a 'value'")
            value = _check_value(config.value, f"header {config.name!r} value")
            return cls(config.action, config.name, folded, value=value)
        if config.action == "replace":
            if config.pattern is None or config.replacement is None:
                raise ValueError("header action 'replace' needs 'pattern' and 'replacement'")
            regex = re.compile(config.pattern)
            replacement = _check_value(config.replacement, f"header {config.name!r} replacement")
            template = rust_replacement_to_python(replacement, regex)
            return cls("replace", config.name, folded, regex=regex, template=template)
        return cls("remove", config.name, folded)

    def apply(self, headers: Headers) -> Headers:
        folded = self.folded
        if self.action == "add":
            if any(name.lower() == folded for name, _ in headers):
                return headers
            return [*headers, (self.name, self.value)]
        if self.action == "set":
            out: Headers = []
            placed = False
            for name, value in headers:
                if name.lower() != folded:
                    out.append((name, value))
                elif not placed:
                    out.append((self.name, self.value))
                    placed = True
            if not placed:
                out.append((self.name, self.value))
            return out
        if self.action == "remove":
            return [(name, value) for name, value in headers if name.lower() != folded]
        assert self.regex is not None
        return [
            (name, self.regex.sub(self.template, value) if name.lower() == folded else value)
            for name, value in headers
        ]


def _apply_headers(ops: tuple[_HeaderOp, ...], headers: tuple[tuple[str, str], ...]) -> Headers:
    current: Headers = list(headers)
    for op in ops:
        current = op.apply(current)
    return current


@dataclass(frozen=True, slots=True)
class _QueryOp:
    action: Literal["add", "set", "remove"]
    name: str
    encoded_pair: str

    @classmethod
    def compile(cls, config: QueryTransformation) -> _QueryOp:
        if not config.name:
            raise ValueError("query parameter name must not be empty")
        if config.action == "replace":
            raise ValueError("query action 'replace' is not supported; allowed: add, set, remove")
        if config.action == "remove":
            return cls("remove", config.name, "")
        if config.value is None:
            raise ValueError(f"query action {config.action!r} needs a 'value'")
        pair = f"{quote(config.name, safe='')}={quote(config.value, safe='')}"
        return cls(config.action, config.name, pair)

    def apply(self, pairs: list[str]) -> list[str]:
        if self.action == "add":
            if any(_pair_name(pair) == self.name for pair in pairs):
                return pairs
            return [*pairs, self.encoded_pair]
        if self.action == "set":
            out: list[str] = []
            placed = False
            for pair in pairs:
                if _pair_name(pair) != self.name:
                    out.append(pair)
                elif not placed:
                    out.append(self.encoded_pair)
                    placed = True
            if not placed:
                out.append(self.encoded_pair)
            return out
        return [pair for pair in pairs if _pair_name(pair) != self.name]


def _pair_name(pair: str) -> str:
    return unquote_plus(pair.partition("=")[0])


class CompiledRequestTransform:
    """A route's ``request_transformation``, compiled once; ``apply`` is pure."""

    __slots__ = ("_header_ops", "_path_regex", "_path_template", "_query_ops")

    def __init__(self, config: RequestTransformation) -> None:
        self._header_ops = tuple(_HeaderOp.compile(h) for h in config.headers)
        self._query_ops = tuple(_QueryOp.compile(q) for q in config.query_params)
        self._path_regex: re.Pattern[str] | None = None
        self._path_template = ""
        if config.path is not None:
            self._path_regex = re.compile(config.path.pattern)
            self._path_template = rust_replacement_to_python(
                config.path.replacement, self._path_regex
            )

    def apply(self, parts: RequestParts) -> RequestParts:
        """The transformed request parts; ``parts`` is not modified."""
        headers = parts.headers
        if self._header_ops:
            headers = tuple(_apply_headers(self._header_ops, headers))
        return RequestParts(
            path=self._rewrite_path(parts.path),
            query=self._rewrite_query(parts.query),
            headers=headers,
        )

    def _rewrite_path(self, path: str) -> str:
        if self._path_regex is None:
            return path
        rewritten = self._path_regex.sub(self._path_template, path, count=1)
        return rewritten if rewritten.startswith("/") else f"/{rewritten}"

    def _rewrite_query(self, query: str) -> str:
        if not self._query_ops:
            return query
        pairs = [pair for pair in query.split("&") if pair]
        for op in self._query_ops:
            pairs = op.apply(pairs)
        return "&".join(pairs)


class CompiledResponseTransform:
    """A route's ``response_transformation``, compiled once; ``apply`` is pure."""

    __slots__ = ("_header_ops", "_status_map")

    def __init__(self, config: ResponseTransformation) -> None:
        self._header_ops = tuple(_HeaderOp.compile(h) for h in config.headers)
        status_map: dict[int, int] = {}
        for mapping in config.status_code_mappings:
            status_map.setdefault(mapping.from_, mapping.to)  # the first mapping wins
        self._status_map = status_map

    def apply(self, parts: ResponseParts) -> ResponseParts:
        """The transformed response parts; ``parts`` is not modified."""
        headers = parts.headers
        if self._header_ops:
            headers = tuple(_apply_headers(self._header_ops, headers))
        return ResponseParts(
            status=self._status_map.get(parts.status, parts.status), headers=headers
        )
