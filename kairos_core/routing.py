"""The route table: path patterns, specificity matching and upstream path rendering.

Patterns (``PathPattern.parse``):

- A pattern starts with ``/`` and is split on ``/`` into segments. ``/`` alone has no segments.
- ``{name}`` is a parameter; it must fill a whole segment and ``name`` must match
  ``[A-Za-z_][A-Za-z0-9_]*``. ``{*name}`` is a catch-all and must be the last segment.
  A name appears at most once per pattern.
- Any other segment is a literal, compared case-sensitively after percent-decoding (so the
  literal ``café`` matches the request segment ``caf%C3%A9``). Literals may not contain ``{`` or
  ``}``, and may not be ``.`` or ``..`` (raw or percent-encoded).
- Empty segments (``//``) are rejected, except that a trailing slash is significant: ``/users/``
  and ``/users`` are different patterns and each matches only itself.

Requests (``RouteTable.lookup``) take the raw path as received, without the query string:

- A path that does not start with ``/``, has an empty segment before the last, has a malformed
  ``%`` escape or escapes that are not UTF-8, or has a segment that decodes to something
  containing NUL or a ``.``/``..`` component (split on ``/`` and ``\\``, so ``%2e%2e``,
  ``..%2F`` and ``..%5C`` count) is a ``BadPath`` (HTTP 400), never forwarded.
- Each segment is percent-decoded before matching. ``{name}`` matches exactly one non-empty
  segment; ``{*name}`` matches one or more remaining segments, the first non-empty, so
  ``/files/{*rest}`` matches ``/files/a`` and ``/files/a/b/`` (rest ``a/b/``) but not ``/files/``.
- Specificity, not config order, picks the route: segment by segment a literal beats a
  parameter, which beats a catch-all. The search backtracks: with ``/a/{x}/c`` and ``/a/b/d``,
  ``/a/b/c`` matches the first. Among routes with the same pattern shape, a route naming the
  request host exactly beats one matching it by ``*.`` wildcard, which beats one without hosts;
  then an explicit method beats an implicit ``HEAD``; then the lowest ``order`` wins.
- The most specific route that allows the method wins (``GET /users/{id}`` serves
  ``GET /users/me`` even if ``DELETE /users/me`` exists). ``HEAD`` is allowed wherever ``GET``
  is; ``OPTIONS`` is not implicit. Methods compare case-sensitively (RFC 9110).
- If routes match the path and host but none allows the method, the result is
  ``MethodNotAllowed`` listing their methods sorted; otherwise ``NotFound``.
- Hosts: the request host is lower-cased with the port and a trailing dot removed. A route with
  hosts matches only a host equal to one of them or, for ``*.example.com``, a host ending in
  ``.example.com`` (one or more extra labels, never ``example.com`` itself). No request host
  matches only routes without hosts.

Upstream path: the internal pattern with each parameter percent-encoded as a single segment
(``quote(value, safe="")``, so ``/`` becomes ``%2F`` and a parameter can never add a segment);
a catch-all keeps its segment boundaries and encodes each segment. Literals are copied as written.
The query string is the caller's business.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar
from urllib.parse import quote, unquote

T = TypeVar("T")

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_SEPARATORS = re.compile(r"[/\\]")
_PLAIN = re.compile(r"[A-Za-z0-9_~!$&'()*+,;=:@-]*")
_UNRESERVED = re.compile(r"[A-Za-z0-9_.~-]+")


class PatternError(ValueError):
    """A route path pattern is malformed; the message names the problem and the pattern."""


@dataclass(frozen=True, slots=True)
class LiteralSegment:
    """A segment matched literally; ``text`` is as written, matching uses its decoded form."""

    text: str

    @property
    def decoded(self) -> str:
        return unquote(self.text)


@dataclass(frozen=True, slots=True)
class ParamSegment:
    """``{name}``: exactly one non-empty segment."""

    name: str


@dataclass(frozen=True, slots=True)
class CatchAllSegment:
    """``{*name}``: one or more remaining segments, only as the last segment of a pattern."""

    name: str


Segment = LiteralSegment | ParamSegment | CatchAllSegment


def _split(path: str) -> list[str]:
    """Split a path starting with '/' into raw segments; a trailing slash gives a final ''."""
    if path == "/":
        return []
    segments = path[1:].split("/")
    if "" in segments[:-1]:
        raise ValueError("empty segment")
    return segments


def _decode(segment: str) -> str:
    """Percent-decode one segment, raising ValueError if it is malformed or a traversal."""
    if _PLAIN.fullmatch(segment):  # nothing to decode, no dot, no backslash: as it is
        return segment
    if _BAD_ESCAPE.search(segment):
        raise ValueError(f"malformed percent-encoding in segment {segment!r}")
    try:
        decoded = unquote(segment, errors="strict")
    except UnicodeDecodeError:
        raise ValueError(f"segment {segment!r} does not decode to UTF-8") from None
    if "\x00" in decoded:
        raise ValueError(f"segment {segment!r} contains NUL")
    if any(part in (".", "..") for part in _SEPARATORS.split(decoded)):
        raise ValueError(f"dot segment {segment!r} (path traversal)")
    return decoded


def _parse_segment(part: str, raw: str) -> Segment:
    if len(part) >= 2 and part[0] == "{" and part[-1] == "}":
        inner = part[1:-1]
        name = inner.removeprefix("*")
        if not name:
            raise PatternError(f"empty parameter name '{part}' in {raw!r}")
        if not _IDENTIFIER.fullmatch(name):
            raise PatternError(f"parameter name {name!r} must be an identifier in {raw!r}")
        return CatchAllSegment(name) if inner.startswith("*") else ParamSegment(name)
    if "{" in part and "}" not in part:
        raise PatternError(f"unclosed '{{' in {raw!r}")
    if "{" in part or "}" in part:
        raise PatternError(f"'{{name}}' must fill a whole segment, not {part!r}, in {raw!r}")
    try:
        _decode(part)
    except ValueError as exc:
        raise PatternError(f"{exc} in {raw!r}") from None
    return LiteralSegment(part)


@dataclass(frozen=True, slots=True)
class PathPattern:
    """A parsed route path such as ``/api/{org}/users/{id}`` or ``/static/{*path}``."""

    raw: str
    segments: tuple[Segment, ...]
    param_names: tuple[str, ...]

    @classmethod
    def parse(cls, raw: str) -> PathPattern:
        """Parse ``raw``, raising ``PatternError`` that says what is wrong.

        Patterns are immutable, so a parsed one is shared: validation, the route table and every
        reload of a large config parse each distinct pattern once.
        """
        return _parse_pattern(raw)


@functools.lru_cache(maxsize=65_536)
def _parse_pattern(raw: str) -> PathPattern:
    if not raw.startswith("/"):
        raise PatternError(f"pattern must start with '/': {raw!r}")
    try:
        parts = _split(raw)
    except ValueError as exc:
        raise PatternError(f"{exc} in {raw!r}") from None
    segments = tuple(_parse_segment(part, raw) for part in parts)
    for segment, part in zip(segments[:-1], parts, strict=False):
        if isinstance(segment, CatchAllSegment):
            raise PatternError(f"catch-all '{part}' must be the last segment in {raw!r}")
    names = tuple(s.name for s in segments if not isinstance(s, LiteralSegment))
    for name in names:
        if names.count(name) > 1:
            raise PatternError(f"duplicate parameter {name!r} in {raw!r}")
    return PathPattern(raw, segments, names)


def _render(template: PathPattern, captures: Mapping[str, tuple[str, ...]]) -> str:
    parts: list[str] = []
    for segment in template.segments:
        if isinstance(segment, LiteralSegment):
            parts.append(segment.text)
        elif isinstance(segment, ParamSegment):
            parts.append(_quote("/".join(captures[segment.name])))
        else:
            parts.extend(_quote(part) for part in captures[segment.name])
    return "/" + "/".join(parts)


def _quote(value: str) -> str:
    return value if _UNRESERVED.fullmatch(value) else quote(value, safe="")


def render_internal_path(template: PathPattern, params: Mapping[str, str]) -> str:
    """Substitute decoded ``params`` into ``template``; a missing name raises ``KeyError``.

    ``{name}`` gets the whole value encoded as one segment; ``{*name}`` splits the value on
    ``/`` and encodes each piece.
    """
    return _render(template, {name: tuple(value.split("/")) for name, value in params.items()})


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteSpec(Generic[T]):
    """One route: external pattern to internal pattern, for some methods and hosts.

    ``payload`` is the caller's route object, carried through untouched. Every parameter the
    internal pattern uses must be defined by the external one (checked on construction).
    """

    route_id: str
    external: PathPattern
    internal: PathPattern
    methods: frozenset[str]
    hosts: tuple[str, ...] = ()
    order: int = 0
    payload: T

    def __post_init__(self) -> None:
        for name in self.internal.param_names:
            if name not in self.external.param_names:
                raise PatternError(
                    f"route {self.route_id!r}: internal path {self.internal.raw!r} uses "
                    f"parameter {name!r} that external path {self.external.raw!r} does not define"
                )


@dataclass(frozen=True, slots=True)
class RouteMatch(Generic[T]):
    """A successful lookup: the route, its decoded parameters and the upstream path."""

    spec: RouteSpec[T]
    params: Mapping[str, str]
    upstream_path: str


@dataclass(frozen=True, slots=True)
class MethodNotAllowed:
    """The path matched but no route there allows the method (405); ``allowed`` is sorted."""

    allowed: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class NotFound:
    """No route matches the path and host (404)."""


@dataclass(frozen=True, slots=True)
class BadPath:
    """The request path is malformed or a traversal attempt (400)."""

    reason: str


@dataclass(frozen=True, slots=True)
class _Hosts:
    exact: frozenset[str]
    suffixes: tuple[str, ...]  # '*.example.com' kept as '.example.com'

    @classmethod
    def of(cls, hosts: Sequence[str]) -> _Hosts:
        lowered = [h.lower() for h in hosts]
        return cls(
            frozenset(h for h in lowered if not h.startswith("*.")),
            tuple(h[1:] for h in lowered if h.startswith("*.")),
        )

    def rank(self, host: str | None) -> int | None:
        """0 exact, 1 wildcard, 2 any host, None no match."""
        if not self.exact and not self.suffixes:
            return 2
        if host is None:
            return None
        if host in self.exact:
            return 0
        if any(host.endswith(s) and len(host) > len(s) for s in self.suffixes):
            return 1
        return None

    def overlaps(self, other: _Hosts) -> bool:
        """Whether some host reaches both with the same rank, leaving config order to decide."""
        mine, theirs = bool(self.exact or self.suffixes), bool(other.exact or other.suffixes)
        if not (mine and theirs):
            return mine == theirs
        return bool(self.exact & other.exact) or any(
            a.endswith(b) or b.endswith(a) for a in self.suffixes for b in other.suffixes
        )


def _normalise_host(host: str | None) -> str | None:
    if not host:
        return None
    host = host.strip().lower()
    host = host[: host.find("]") + 1] if host.startswith("[") else host.partition(":")[0]
    return host.rstrip(".") or None


@dataclass(frozen=True, slots=True)
class _Candidate(Generic[T]):
    spec: RouteSpec[T]
    hosts: _Hosts


@dataclass(slots=True)
class _Node(Generic[T]):
    """A trie node; built in ``RouteTable.__init__`` and never mutated afterwards."""

    literals: dict[str, _Node[T]] = field(default_factory=dict)
    param: _Node[T] | None = None
    ends: list[_Candidate[T]] = field(default_factory=list)
    catch_alls: list[_Candidate[T]] = field(default_factory=list)


_Captures = tuple[tuple[str, ...], ...]


LOOKUP_CACHE_ENTRIES = 4096
_Answer = RouteMatch[T] | MethodNotAllowed | NotFound | BadPath


class RouteTable(Generic[T]):
    """An immutable segment trie over route specs; lookup cost depends on path depth only.

    The answers for the last ``LOOKUP_CACHE_ENTRIES`` distinct (method, path, host) asked are
    kept (the table never changes, so neither do they; the cache is emptied when full).
    """

    def __init__(self, specs: Sequence[RouteSpec[T]]) -> None:
        self._specs = tuple(specs)
        self._cache: dict[tuple[str, str, str | None], _Answer[T]] = {}
        self._root: _Node[T] = _Node()
        for spec in sorted(self._specs, key=lambda s: s.order):
            node = self._root
            candidate = _Candidate(spec, _Hosts.of(spec.hosts))
            for segment in spec.external.segments:
                if isinstance(segment, LiteralSegment):
                    node = node.literals.setdefault(segment.decoded, _Node())
                elif isinstance(segment, ParamSegment):
                    node.param = node.param or _Node()
                    node = node.param
                else:
                    node.catch_alls.append(candidate)
                    break
            else:
                node.ends.append(candidate)

    def __len__(self) -> int:
        return len(self._specs)

    def lookup(self, method: str, path: str, host: str | None = None) -> _Answer[T]:
        """Find the most specific route for ``method`` on the raw ``path`` (no query string)."""
        key = (method, path, host)
        answer = self._cache.get(key)
        if answer is None:
            answer = self._find(method, path, host)
            if len(self._cache) >= LOOKUP_CACHE_ENTRIES:
                self._cache.clear()
            self._cache[key] = answer
        return answer

    def _find(self, method: str, path: str, host: str | None) -> _Answer[T]:
        if not path.startswith("/"):
            return BadPath(f"path must start with '/': {path!r}")
        try:
            segments = [_decode(part) for part in _split(path)]
        except ValueError as exc:
            return BadPath(str(exc))
        request_host = _normalise_host(host)
        allowed: set[str] = set()
        first = _descend(self._root, segments)  # _walk's first answer, without its generators
        if first is not None:
            found = _best(first[0], first[1], method, request_host, allowed)
            if found is not None:
                return found
        for candidates, captures in _walk(self._root, segments, 0, ()):
            found = _best(candidates, captures, method, request_host, allowed)
            if found is not None:
                return found
        if not allowed:
            return NotFound()
        if "GET" in allowed:
            allowed.add("HEAD")
        return MethodNotAllowed(tuple(sorted(allowed)))


def _best(
    candidates: list[_Candidate[T]],
    captures: _Captures,
    method: str,
    request_host: str | None,
    allowed: set[str],
) -> RouteMatch[T] | None:
    """The best of one list of candidates for ``method`` and the host (``allowed`` collects
    the methods seen, for a 405)."""
    best: tuple[tuple[int, bool], _Candidate[T]] | None = None
    for candidate in candidates:
        rank = candidate.hosts.rank(request_host)
        if rank is None:
            continue
        methods = candidate.spec.methods
        allowed |= methods
        if method in methods or (method == "HEAD" and "GET" in methods):
            key = (rank, method not in methods)
            if best is None or key < best[0]:
                best = (key, candidate)
    if best is None:
        return None
    spec = best[1].spec
    named = dict(zip(spec.external.param_names, captures, strict=True))
    params = {name: "/".join(value) for name, value in named.items()}
    return RouteMatch(spec, params, _render(spec.internal, named))


def _descend(node: _Node[T], segments: list[str]) -> tuple[list[_Candidate[T]], _Captures] | None:
    """The most specific path through the trie, literal before parameter, no backtracking."""
    captures: _Captures = ()
    for segment in segments:
        child = node.literals.get(segment)
        if child is not None:
            node = child
        elif node.param is not None and segment:
            node = node.param
            captures = (*captures, (segment,))
        else:
            return None
    return (node.ends, captures) if node.ends else None


def _walk(
    node: _Node[T], segments: list[str], index: int, captures: _Captures
) -> Iterator[tuple[list[_Candidate[T]], _Captures]]:
    """Yield the route lists matching ``segments`` from ``index``, most specific first."""
    if index == len(segments):
        if node.ends:
            yield node.ends, captures
        return
    segment = segments[index]
    child = node.literals.get(segment)
    if child is not None:
        yield from _walk(child, segments, index + 1, captures)
    if node.param is not None and segment:
        yield from _walk(node.param, segments, index + 1, (*captures, (segment,)))
    if node.catch_alls and segment:
        yield node.catch_alls, (*captures, tuple(segments[index:]))


def find_conflicts(specs: Sequence[RouteSpec[T]]) -> list[tuple[RouteSpec[T], RouteSpec[T]]]:
    """Pairs (earlier, later in config order) that only config order separates.

    Two specs conflict when their external patterns have the same shape (same literals, params
    and catch-all in the same places, whatever the parameter names), they share a method and
    some host reaches both with the same rank (both without hosts, a shared exact host, or
    overlapping wildcards).
    """
    seen: dict[tuple[tuple[type, str], ...], list[tuple[RouteSpec[T], _Hosts]]] = {}
    conflicts: list[tuple[RouteSpec[T], RouteSpec[T]]] = []
    for spec in sorted(specs, key=lambda s: s.order):
        shape = tuple(
            (type(s), s.decoded if isinstance(s, LiteralSegment) else "")
            for s in spec.external.segments
        )
        hosts = _Hosts.of(spec.hosts)
        for earlier, earlier_hosts in seen.get(shape, []):
            if earlier.methods & spec.methods and earlier_hosts.overlaps(hosts):
                conflicts.append((earlier, spec))
        seen.setdefault(shape, []).append((spec, hosts))
    return conflicts
