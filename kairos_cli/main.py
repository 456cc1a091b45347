"""The ``kairos`` command (DESIGN.md §9): validate, route-test, init, config schema.

Exit codes: 0 success; 1 the config is invalid, the request would be rejected, or ``init``
refused to overwrite a file; 2 usage error, unreadable file or (for route-test) bad config;
3 ``--live`` could not reach the admin API; 4 the admin API refused the token.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
from enum import StrEnum
from importlib.resources import files
from pathlib import Path
from typing import Annotated, Any, NoReturn
from urllib.parse import urlsplit

import typer

from kairos_cli import remote
from kairos_cli.live import LiveStateError, fetch_backend_states
from kairos_cli.report import make_console, print_dry_run, print_invalid, print_valid
from kairos_client import DEFAULT_BASE_URL
from kairos_core import __version__
from kairos_core.config import (
    ConfigError,
    ConfigIssue,
    GatewayConfig,
    LoadedConfig,
    Severity,
    default_config_path,
    load_config,
)
from kairos_core.config import config_schema as schema_of_config
from kairos_core.dryrun import DryRun, ask_live, plan_request
from kairos_core.selection import BackendStates
from kairos_core.state import RuntimeState, compile_state

EXIT_OK, EXIT_REJECTED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3

app = typer.Typer(
    name="kairos",
    help="Kairos gateway tools: check a config, dry-run a request, start a config.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="The config language.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(remote.app)


class Template(StrEnum):
    """Starting configs shipped in ``kairos_cli/templates``."""

    basic = "basic"
    resilient = "resilient"
    ai = "ai"


def _version(value: bool) -> None:
    if value:
        typer.echo(f"kairos {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Kairos gateway tools: check a config, dry-run a request, start a config."""


# --- validate -----------------------------------------------------------------------------------


@app.command()
def validate(
    config: Annotated[
        Path | None,
        typer.Argument(
            help="Config file to check.", show_default="$KAIROS_CONFIG_PATH or ./config.json"
        ),
    ] = None,
    strict: Annotated[bool, typer.Option("--strict", help="Treat warnings as errors.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON document.")] = False,
) -> None:
    """Check a config: every error and warning with its JSON path and file line.

    Exit 0 valid, 1 invalid, 2 unreadable file.
    """
    config = config or default_config_path()
    source = str(config)
    try:
        loaded = _load(config, strict=strict)
    except _Unreadable as exc:
        if as_json:
            _echo_json(_validation_document(False, source, exc.issues))
            raise typer.Exit(EXIT_USAGE) from None
        _fail(f"✗ {source}: {exc.issues[0].message}", EXIT_USAGE)
    except ConfigError as exc:
        if as_json:
            _echo_json(_validation_document(False, source, exc.issues))
        else:
            print_invalid(make_console(), source, exc.issues)
        raise typer.Exit(EXIT_REJECTED) from None
    routes, backends = _summary(loaded.config)
    if as_json:
        document = _validation_document(True, source, loaded.issues)
        document["summary"] = {"routes": routes, "backends": backends}
        _echo_json(document)
    else:
        print_valid(make_console(), source, loaded.issues, routes, backends)


class _Unreadable(Exception):
    def __init__(self, issues: list[ConfigIssue]) -> None:
        super().__init__(issues[0].message)
        self.issues = issues


def _load(path: Path, *, strict: bool) -> LoadedConfig:
    """``load_config``, with a missing or unreadable file raised as :class:`_Unreadable`."""
    problem = None
    if not path.exists():
        problem = "file not found"
    elif path.is_dir():
        problem = "is a directory, not a config file"
    elif not os.access(path, os.R_OK):
        problem = "permission denied"
    if problem is not None:
        issue = ConfigIssue("", f"cannot read config file: {problem}", code="unreadable")
        raise _Unreadable([issue])
    try:
        return load_config(path, strict=strict)
    except ConfigError as exc:
        # load_config reports I/O failures as a single root issue; they are not config errors.
        if len(exc.issues) == 1 and exc.issues[0].code == "unreadable":
            raise _Unreadable(exc.issues) from exc
        raise


def _validation_document(
    valid: bool, source: str, issues: list[ConfigIssue] | tuple[ConfigIssue, ...]
) -> dict[str, Any]:
    def of(severity: Severity) -> list[dict[str, Any]]:
        return [issue.to_dict() for issue in issues if issue.severity is severity]

    return {
        "valid": valid,
        "source": source,
        "errors": of(Severity.ERROR),
        "warnings": of(Severity.WARNING),
        "recommendations": of(Severity.RECOMMENDATION),
    }


def _summary(config: GatewayConfig) -> tuple[int, int]:
    """Routes, and distinct backends (``scheme://host:port``, fallbacks included)."""
    keys = {
        backend.key
        for router in config.routers
        for backend in (*router.effective_backends, *router.fallback)
    }
    return len(config.routers), len(keys)


def _echo_json(document: Any) -> None:
    typer.echo(json.dumps(document, indent=2))


# --- route-test ---------------------------------------------------------------------------------


@app.command("route-test")
def route_test(
    method: Annotated[str, typer.Argument(help="HTTP method, e.g. GET.")],
    path: Annotated[
        str, typer.Argument(help="Request path with query (/api/users/42?x=1), or a full URL.")
    ],
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            help="Config file.",
            show_default="$KAIROS_CONFIG_PATH or ./config.json",
        ),
    ] = None,
    header: Annotated[
        list[str] | None,
        typer.Option("--header", "-H", help="Request header 'Name: value' (repeatable)."),
    ] = None,
    ip: Annotated[str, typer.Option("--ip", help="Client IP address.")] = "127.0.0.1",
    data: Annotated[str | None, typer.Option("--data", "-d", help="Request body.")] = None,
    token: Annotated[
        str | None, typer.Option("--token", help="JWT sent as 'Authorization: Bearer'.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON document.")] = False,
    live: Annotated[
        bool,
        typer.Option("--live", help="Use the running gateway's breaker and health state."),
    ] = False,
    ai: Annotated[
        bool,
        typer.Option(
            "--ai", help="Show the AI prompt; with an LLM configured, ask it and show the answer."
        ),
    ] = False,
    url: Annotated[
        str, typer.Option("--url", envvar="KAIROS_ADMIN_URL", help="Admin API, for --live.")
    ] = DEFAULT_BASE_URL,
    admin_token: Annotated[
        str | None,
        typer.Option(
            "--admin-token",
            "--token-admin",
            envvar="KAIROS_ADMIN_TOKEN",
            help="Admin API token, for --live.",
        ),
    ] = None,
) -> None:
    """Dry-run a request: route, upstream URL, backends and pick, auth, limits, retries.

    No traffic is sent. Exit 0 routable, 1 would be rejected, 2 usage error or bad config,
    3 --live could not reach the admin API, 4 the admin API refused the token.
    """
    config = config or default_config_path()
    headers = [_parse_header(value) for value in header or []]
    try:
        ipaddress.ip_address(ip)
    except ValueError:
        raise typer.BadParameter(f"not an IP address: {ip!r}", param_hint="--ip") from None
    host = None
    if "://" in path:
        parts = urlsplit(path)
        host = parts.netloc or None
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")

    try:
        loaded = _load(config, strict=False)
    except _Unreadable as exc:
        _fail(f"✗ {config}: {exc.issues[0].message}", EXIT_USAGE)
    except ConfigError as exc:
        print_invalid(make_console(stderr=True), str(config), exc.issues)
        raise typer.Exit(EXIT_USAGE) from None

    backend_states = None
    if live:
        try:
            backend_states = fetch_backend_states(url, admin_token)
        except LiveStateError as exc:
            _fail(f"✗ --live: {exc.message}", exc.exit_code)

    state = compile_state(loaded)
    body = data.encode() if data is not None else None
    plan = plan_request(
        state,
        method.upper(),
        path,
        headers=headers,
        client_ip=ip,
        token=token,
        body=body,
        host=host,
        states=backend_states,
        prompt=ai,
    )
    if ai:
        plan = asyncio.run(_ask_live(state, plan, headers, body, backend_states))
    if as_json:
        _echo_json(plan.to_dict())
    else:
        print_dry_run(make_console(), plan, live_source=url if live else None)
    raise typer.Exit(EXIT_OK if plan.routable else EXIT_REJECTED)


async def _ask_live(
    state: RuntimeState,
    plan: DryRun,
    headers: list[tuple[str, str]],
    body: bytes | None,
    states: BackendStates | None,
) -> DryRun:
    try:
        return await ask_live(state, plan, headers=headers, body=body, states=states)
    finally:
        await state.shared.ai.close()


def _parse_header(value: str) -> tuple[str, str]:
    name, colon, rest = value.partition(":")
    if not colon or not name.strip():
        raise typer.BadParameter(f"expected 'Name: value', got {value!r}", param_hint="-H")
    return name.strip(), rest.strip()


def _fail(message: str, code: int) -> NoReturn:
    make_console(stderr=True).print(message, style="red")
    raise typer.Exit(code)


# --- init ---------------------------------------------------------------------------------------


@app.command()
def init(
    path: Annotated[Path, typer.Argument(help="Where to write the config.")] = Path("config.json"),
    template: Annotated[
        Template, typer.Option("--template", "-t", help="Starting point.")
    ] = Template.basic,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
) -> None:
    """Write a commented starting config that validates.

    Exit 0 written; 1 the file exists (pass --force) or cannot be written.
    """
    if path.exists() and not force:
        _fail(f"✗ {path} already exists; pass --force to overwrite it", EXIT_REJECTED)
    text = files("kairos_cli").joinpath("templates", f"{template.value}.json").read_text("utf-8")
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        _fail(f"✗ cannot write {path}: {exc.strerror or exc}", EXIT_REJECTED)
    console = make_console()
    console.print(f"✓ wrote {path} (template {template.value})", style="bold green")
    console.print(f"  check it:  kairos validate {path}")
    console.print(f"  run it:    kairos-gateway {path}")


# --- config schema ------------------------------------------------------------------------------


@config_app.command("schema")
def config_schema() -> None:
    """Print the JSON Schema of config.json."""
    _echo_json(schema_of_config())


def main() -> None:
    """Console-script entry point (``kairos``)."""
    app(prog_name="kairos")
