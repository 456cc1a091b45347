"""Reading config.json: size cap, JSON parsing, ``${VAR}`` expansion, ``_`` keys, unknown keys.

The loader turns text into a validated :class:`GatewayConfig` or a :class:`ConfigError` that
holds *every* problem found, each with its JSON path and file line. Order of work:

1. the file is refused above ``MAX_CONFIG_BYTES`` (10 MiB) before it is parsed;
2. JSON syntax errors are reported with their line and column;
3. keys beginning with ``_`` (``_comment``) are dropped at every level;
4. string values expand ``${VAR}`` and ``${VAR:-default}``; an unset variable with no default is an
   error naming the variable (secrets must not silently become empty strings);
5. keys the schema does not know are errors with a "did you mean" suggestion: a typo such as
   ``auth_requried`` must never start a route public (``strict`` turns warnings into errors);
6. the models check types, enums and required fields; the semantic rules of
   :mod:`kairos_core.config.rules` check everything else, all in one pass: routers are checked
   one by one, and when some part does not validate the rules still run on every part that does
   (a broken router hides neither the other routers' problems nor a duplicate path or an auth
   route without a ``jwt`` block).
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import json
import os
import re
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Union

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from kairos_core.config.errors import ConfigError, ConfigIssue, Severity, unknown_key_message
from kairos_core.config.models import GatewayConfig, Router
from kairos_core.config.rules import Partial, check_config

MAX_CONFIG_BYTES = 10 * 1024 * 1024
CONFIG_PATH_ENV = "KAIROS_CONFIG_PATH"
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")

Loc = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class LoadedConfig:
    """A config that loaded: the model, the non-fatal issues, and the document it came from.

    ``document`` is the JSON as written (``${VAR}`` unexpanded, ``_`` keys kept) so that the admin
    API can persist edits without baking secrets into the file. ``version`` is a short content
    hash used for ``If-Match``.
    """

    config: GatewayConfig
    issues: tuple[ConfigIssue, ...]
    source: str
    document: Mapping[str, Any]
    version: str


def format_path(loc: Loc) -> str:
    """``('routers', 2, 'port')`` → ``routers[2].port``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


class _LineMap:
    """JSON path → 1-based file line, computed only when an issue needs locating.

    The text is walked with the standard library's C scanner: a container on the way to a
    located value is indexed once (each member's key and value offsets, found by decoding and
    skipping its values), so locating every issue of a large config costs a few decodes of the
    text rather than a parse in Python. ``text`` may be a callable producing the text (the admin
    API serialises a document only when one of its issues needs a line). A path that does not
    exist in the text falls back to its nearest existing parent.
    """

    def __init__(self, text: str | Callable[[], str]) -> None:
        self._source = text
        self._text: str | None = None
        self._newlines: list[int] | None = None
        self._children: dict[int, tuple[dict[str | int, tuple[int, int]], int]] = {}

    def line(self, loc: Loc) -> int | None:
        try:
            return self._line(loc)
        except (ValueError, IndexError, RecursionError):  # a nicety; never hide the real problem
            return None

    def _line(self, loc: Loc) -> int:
        if self._text is None:
            self._text = self._source if isinstance(self._source, str) else self._source()
            self._newlines = [m.start() for m in re.finditer("\n", self._text)]
        text = self._text
        position = located = _skip_whitespace(text, 0)
        for part in loc:
            if text[position] not in "{[":
                break
            entry = self._members(text, position).get(part)
            if entry is None:
                break
            located, position = entry  # an object member is located by its key
        assert self._newlines is not None
        return bisect.bisect_left(self._newlines, located) + 1

    def _members(self, text: str, start: int, depth: int = 0) -> dict[str | int, tuple[int, int]]:
        """The container at ``start``: each key (or index) → (key offset, value offset)."""
        return self._index(text, start, depth)[0]

    def _index(
        self, text: str, start: int, depth: int
    ) -> tuple[dict[str | int, tuple[int, int]], int]:
        cached = self._children.get(start)
        if cached is not None:
            return cached
        members: dict[str | int, tuple[int, int]] = {}
        name: str | int
        closing = "}" if text[start] == "{" else "]"
        position = _skip_whitespace(text, start + 1)
        index = 0
        while text[position] != closing:
            if closing == "}":
                key_at = position
                name, position = _DECODER.raw_decode(text, position)
                position = _skip_whitespace(text, _skip_whitespace(text, position) + 1)  # ':'
            else:
                key_at, name, index = position, index, index + 1
            members[name] = (key_at, position)
            if depth < _STEP_DEPTH and text[position] in "{[":
                position = self._index(text, position, depth + 1)[1]  # skipped a member at a time
            else:
                _, position = _DECODER.raw_decode(text, position)
            position = _skip_whitespace(text, position)
            if text[position] == ",":
                position = _skip_whitespace(text, position + 1)
        self._children[start] = (members, position + 1)
        return members, position + 1


_DECODER = json.JSONDecoder()
# Containers this deep (the document, its blocks and lists) are decoded a member at a time, so
# that no single call into the C decoder lasts long on a large config (each one holds the
# interpreter: a 5,000-route list decoded in one call stalls every other thread for ~12 ms).
_STEP_DEPTH = 1


def decode_json(text: str) -> Any:
    """``json.loads(text)``, decoded a member at a time: the document's members and the elements
    of its lists (5,000 routers) are separate steps of the standard library's C decoder, so other
    threads (the event loop) wait for one router at most, never for the whole file. Same value,
    same errors: anything the steps do not handle goes to ``json.loads``."""
    try:
        position = _skip_whitespace(text, 0)
        if text[position] != "{":
            raise ValueError("not an object")
        value, position = _decode_container(text, position, 0)
        if _skip_whitespace(text, position) != len(text):
            raise ValueError("extra data")
    except (ValueError, IndexError, RecursionError):
        return json.loads(text)  # the canonical value, or the canonical error
    return value


def _decode_container(text: str, start: int, depth: int) -> tuple[Any, int]:
    is_object = text[start] == "{"
    closing = "}" if is_object else "]"
    members: dict[str, Any] = {}
    items: list[Any] = []
    position = _skip_whitespace(text, start + 1)
    if text[position] == closing:
        return (members if is_object else items), position + 1
    while True:
        key = None
        if is_object:
            key, position = _DECODER.raw_decode(text, position)
            position = _skip_whitespace(text, position)
            if not isinstance(key, str) or text[position] != ":":
                raise ValueError("not a member")
            position = _skip_whitespace(text, position + 1)
        if depth < _STEP_DEPTH and text[position] in "{[":
            value, position = _decode_container(text, position, depth + 1)
        else:
            value, position = _DECODER.raw_decode(text, position)
        if key is not None:
            members[key] = value
        else:
            items.append(value)
        position = _skip_whitespace(text, position)
        if text[position] == closing:
            return (members if is_object else items), position + 1
        if text[position] != ",":
            raise ValueError("expected ','")
        position = _skip_whitespace(text, position + 1)


def document_version(document: Mapping[str, Any]) -> str:
    """A short content hash of a config document, for ``If-Match``: the first 16 hex digits of
    the SHA-256 of its canonical JSON (sorted keys, no spaces). Hashed a member (and a list
    element) at a time, with exactly the bytes one ``json.dumps`` call would produce."""
    digest = hashlib.sha256(b"{")
    for index, key in enumerate(sorted(document)):
        digest.update(b"," if index else b"")
        digest.update(_canonical(key) + b":")
        value = document[key]
        if isinstance(value, list):
            digest.update(b"[")
            for position, item in enumerate(value):
                digest.update((b"," if position else b"") + _canonical(item))
            digest.update(b"]")
        else:
            digest.update(_canonical(value))
    digest.update(b"}")
    return digest.hexdigest()[:16]


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


_WHITESPACE = re.compile(r"[ \t\n\r]*")


def _skip_whitespace(text: str, position: int) -> int:
    match = _WHITESPACE.match(text, position)
    return match.end() if match else position


def default_config_path(environ: Mapping[str, str] | None = None) -> Path:
    """The config file when none is named: ``$KAIROS_CONFIG_PATH``, else ``./config.json``.

    ``kairos-gateway``, ``kairos validate`` and ``kairos route-test`` all start from here.
    """
    environ = os.environ if environ is None else environ
    return Path(environ.get(CONFIG_PATH_ENV) or "config.json")


def load_config(
    path: str | os.PathLike[str],
    *,
    strict: bool = False,
    environ: Mapping[str, str] | None = None,
) -> LoadedConfig:
    """Read and validate a config file. Raises :class:`ConfigError` (also for I/O problems)."""
    source = os.fspath(path)
    file = Path(source)
    try:
        size = file.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ConfigError([_too_big(size)], source=source)
        raw = file.read_bytes()
    except OSError as exc:
        raise ConfigError(
            [ConfigIssue("", f"cannot read config file: {exc.strerror or exc}", code="unreadable")],
            source=source,
        ) from exc
    return parse_config(raw, source=source, strict=strict, environ=environ)


def parse_config(
    text: str | bytes,
    *,
    source: str = "<config>",
    strict: bool = False,
    environ: Mapping[str, str] | None = None,
) -> LoadedConfig:
    """Validate config text. Raises :class:`ConfigError` holding every problem found."""
    size = len(text) if isinstance(text, bytes) else len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_CONFIG_BYTES:
        raise ConfigError([_too_big(size)], source=source)
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            issue = ConfigIssue("", f"config is not UTF-8 text (byte {exc.start})", code="not_utf8")
            raise ConfigError([issue], source=source) from exc
    try:
        document = decode_json(text)
    except json.JSONDecodeError as exc:
        issue = ConfigIssue(
            "",
            f"invalid JSON: {exc.msg} (column {exc.colno})",
            line=exc.lineno,
            code="invalid_json",
        )
        raise ConfigError([issue], source=source) from exc
    except ValueError as exc:  # e.g. an integer literal beyond Python's digit limit
        raise ConfigError(
            [ConfigIssue("", f"invalid JSON: {exc}", code="invalid_json")], source=source
        ) from exc
    except RecursionError as exc:
        raise ConfigError([_too_deep()], source=source) from exc
    return validate_document(
        document, source=source, strict=strict, environ=environ, lines=_LineMap(text)
    )


def validate_document(
    document: Any,
    *,
    source: str = "<config>",
    strict: bool = False,
    environ: Mapping[str, str] | None = None,
    lines: _LineMap | None = None,
) -> LoadedConfig:
    """Validate an already-parsed JSON document (used by the admin API and the CLI)."""
    try:
        return _validate(document, source, strict, environ, lines)
    except RecursionError as exc:
        raise ConfigError([_too_deep()], source=source) from exc
    except ValueError as exc:  # an integer beyond Python's int/str conversion limit
        raise ConfigError(
            [ConfigIssue("", f"invalid value: {exc}", code="invalid_value")], source=source
        ) from exc


def _validate(
    document: Any,
    source: str,
    strict: bool,
    environ: Mapping[str, str] | None,
    lines: _LineMap | None,
) -> LoadedConfig:
    environ = os.environ if environ is None else environ
    line_map = lines or _LineMap(lambda: json.dumps(document, indent=2, ensure_ascii=False))
    issues: list[ConfigIssue] = []
    if not isinstance(document, dict):
        issues.append(ConfigIssue("", "the config must be a JSON object", code="not_an_object"))
        raise ConfigError(issues, source=source)

    cleaned = _drop_private_keys(document)
    expanded = _expand_env(cleaned, (), environ, issues)
    _default_admin_token(expanded, environ)
    issues.extend(_unknown_keys(GatewayConfig, expanded, ()))

    config, partial = _build_model(expanded, issues)
    if config is not None:
        issues.extend(check_config(config, partial))

    located = [_locate(issue, line_map, strict) for issue in _dedupe(issues)]
    located.sort(key=lambda i: (i.severity is not Severity.ERROR, i.line or 0, i.path))
    if config is None or partial is not None or any(i.severity is Severity.ERROR for i in located):
        raise ConfigError(located, source=source)
    return LoadedConfig(config, tuple(located), source, document, document_version(document))


def _default_admin_token(data: dict[str, Any], environ: Mapping[str, str]) -> None:
    """``admin.token`` defaults to ``$KAIROS_ADMIN_TOKEN`` (from the given environment)."""
    token = environ.get("KAIROS_ADMIN_TOKEN")
    admin = data.get("admin")
    if admin is None and token:
        data["admin"] = {"token": token}
    elif isinstance(admin, dict) and "token" not in admin:
        admin["token"] = token or None


def _too_deep() -> ConfigIssue:
    return ConfigIssue("", "the config is nested too deeply", code="too_deep")


def _too_big(size: int) -> ConfigIssue:
    return ConfigIssue(
        "", f"config is {size} bytes; the limit is {MAX_CONFIG_BYTES} bytes", code="too_large"
    )


def _locate(issue: ConfigIssue, lines: _LineMap, strict: bool) -> ConfigIssue:
    severity = issue.severity
    if strict and severity is Severity.WARNING:
        severity = Severity.ERROR
    loc = _parse_path(issue.path)
    line = issue.line if issue.line is not None else lines.line(loc)
    return replace(issue, severity=severity, line=line)


def _parse_path(path: str) -> Loc:
    loc: list[str | int] = []
    for name, index in re.findall(r"([^.\[\]]+)|\[(\d+)\]", path):
        loc.append(int(index) if index else name)
    return tuple(loc)


def _dedupe(issues: list[ConfigIssue]) -> Iterator[ConfigIssue]:
    seen: set[tuple[str, str, Severity]] = set()
    for issue in issues:
        key = (issue.path, issue.message, issue.severity)
        if key not in seen:
            seen.add(key)
            yield issue


def _drop_private_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: _drop_private_keys(v)
            for k, v in value.items()
            if not (isinstance(k, str) and k.startswith("_"))
        }
    if isinstance(value, list):
        return [_drop_private_keys(v) for v in value]
    return value


def _expand_env(value: Any, loc: Loc, environ: Mapping[str, str], issues: list[ConfigIssue]) -> Any:
    if isinstance(value, dict):
        return {k: _expand_env(v, (*loc, k), environ, issues) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v, (*loc, i), environ, issues) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in environ:
            return environ[name]
        if default is not None:
            return default
        issues.append(
            ConfigIssue(
                format_path(loc),
                f"environment variable {name} is not set "
                f"(set it, or give a default with ${{{name}:-default}})",
                code="env_unset",
            )
        )
        return ""

    return _ENV_REF.sub(substitute, value)


# --- unknown keys -------------------------------------------------------------------------------


@functools.cache
def _schema_keys(model: type[BaseModel]) -> dict[str, tuple[str, type[BaseModel]] | None]:
    """Each key ``model`` accepts (alias and name) → the one model its value holds, with its
    container kind (``one`` or ``list``), or None when the value is not exactly one model."""
    keys: dict[str, tuple[str, type[BaseModel]] | None] = {}
    for name, info in model.model_fields.items():
        nested = list(_models_in(info.annotation))
        value = nested[0] if len(nested) == 1 else None
        keys[info.alias or name] = value
        keys.setdefault(name, value)
    return keys


def _models_in(annotation: Any) -> Iterator[tuple[str, type[BaseModel]]]:
    """Yield (container kind, model) for the models an annotation can hold."""
    origin = typing.get_origin(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield "one", annotation
    elif origin in (list, tuple):
        for arg in typing.get_args(annotation):
            for _, model in _models_in(arg):
                yield "list", model
    elif origin in (Union, types.UnionType):
        for arg in typing.get_args(annotation):
            yield from _models_in(arg)
    elif origin is typing.Annotated:
        yield from _models_in(typing.get_args(annotation)[0])


def _unknown_keys(model: type[BaseModel], data: Any, loc: Loc) -> Iterator[ConfigIssue]:
    if not isinstance(data, dict) or getattr(model, "open_keys", False):
        return
    known = _schema_keys(model)
    for key, value in data.items():
        if key not in known:
            yield ConfigIssue(
                format_path((*loc, key)), unknown_key_message(str(key), known), code="unknown_key"
            )
            continue
        nested = known[key]
        if nested is None:
            continue
        kind, sub_model = nested
        if kind == "list" and isinstance(value, list):
            for index, item in enumerate(value):
                yield from _unknown_keys(sub_model, item, (*loc, key, index))
        elif kind == "one":
            yield from _unknown_keys(sub_model, value, (*loc, key))


# --- pydantic errors → issues ------------------------------------------------------------------

_NOUNS = {
    "protocol": "protocol",
    "strategy": "strategy",
    "load_balancing_strategy": "load-balancing strategy",
    "window_type": "window type",
    "provider": "provider",
    "mode": "mode",
    "on_redis_error": "policy",
    "log_format": "format",
}


def _issues_from_validation(exc: ValidationError, data: Any, base: Loc) -> Iterator[ConfigIssue]:
    for error in exc.errors(include_url=False):
        loc = (*base, *_data_loc(error["loc"], data))
        message, allowed = _describe(error, loc)
        yield ConfigIssue(format_path(loc), message, Severity.ERROR, allowed=allowed, code="schema")


def _data_loc(loc: tuple[str | int, ...], data: Any) -> Loc:
    """Keep the parts of a pydantic location that index into the document (drop union tags)."""
    out: list[str | int] = []
    node = data
    for part in loc:
        indexes_list = isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        if (isinstance(node, dict) and part in node) or indexes_list:
            node = node[part]
            out.append(part)
        elif (
            isinstance(node, dict)
            and isinstance(part, str)
            and not part.startswith(("function-", "literal[", "tagged-union[", "json-or-python["))
        ):
            out.append(part)  # a missing key: name it, the line falls back to its parent
            break
    return tuple(out)


def _describe(error: ErrorDetails, loc: Loc) -> tuple[str, tuple[str, ...]]:
    kind = error["type"]
    value = error.get("input")
    ctx = error.get("ctx") or {}
    shown = json.dumps(value) if _jsonable(value) else repr(value)
    if kind == "missing":
        return "is required", ()
    if kind == "literal_error":
        allowed = tuple(re.findall(r"'([^']*)'", str(ctx.get("expected", ""))))
        noun = _NOUNS.get(str(loc[-1]) if loc else "", "value")
        return f"{noun} {shown} is not supported; allowed: {', '.join(allowed)}", allowed
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"must be an integer, got {shown}", ()
    if kind in ("float_type", "float_parsing"):
        return f"must be a number, got {shown}", ()
    if kind in ("bool_type", "bool_parsing"):
        return f"must be true or false, got {shown}", ()
    if kind == "string_type":
        return f"must be a string, got {shown}", ()
    if kind in ("list_type", "tuple_type"):
        return f"must be a list, got {shown}", ()
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return f"must be an object, got {shown}", ()
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        words = {
            "greater_than_equal": ("at least", "ge"),
            "greater_than": ("greater than", "gt"),
            "less_than_equal": ("at most", "le"),
            "less_than": ("less than", "lt"),
        }[kind]
        return f"must be {words[0]} {ctx.get(words[1])}, got {shown}", ()
    if kind == "value_error":
        return str(ctx.get("error", error["msg"])), ()
    return f"{error['msg']}, got {shown}", ()


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def _build_model(
    data: dict[str, Any], issues: list[ConfigIssue]
) -> tuple[GatewayConfig | None, Partial | None]:
    """The config model of ``data``, adding every structural error to ``issues``.

    Routers are validated one by one (a broken router does not hide the others, and no single
    validation call holds the interpreter for long on a large config). When something does not
    validate, the model of the parts that did is returned with a :class:`Partial` describing
    them, so that the semantic rules still run on everything they can check.
    """
    routers = data.get("routers")
    valid: list[tuple[int, Router]] = []
    if isinstance(routers, list):
        for index, item in enumerate(routers):
            try:
                valid.append((index, Router.model_validate(item)))
            except ValidationError as exc:
                issues.extend(_issues_from_validation(exc, item, ("routers", index)))
        data = {**data, "routers": [router for _, router in valid]}
    dropped = isinstance(routers, list) and len(valid) < len(routers)
    broken: set[str] = set()
    try:
        config = GatewayConfig.model_validate(data)
    except ValidationError as exc:
        issues.extend(_issues_from_validation(exc, data, ()))
        broken = {str(error["loc"][0]) for error in exc.errors() if error["loc"]}
        rest = {key: value for key, value in data.items() if key not in broken}
        try:
            config = GatewayConfig.model_validate({"routers": [], **rest})
        except ValidationError:
            return None, None
    if not dropped and not broken:
        return config, None
    indexes = tuple(index for index, _ in valid) if "routers" not in broken else ()
    return config, Partial(indexes, dropped, frozenset(broken))
