"""Remote commands: the running gateway through the SDK (DESIGN.md §9).

``kairos status``, ``kairos metrics [--json] [--watch] [--interval S]``, ``kairos routes``,
``kairos circuits [reset|open BACKEND]``, ``kairos reload`` and ``kairos decisions [--limit N]``
talk to the admin API with :class:`kairos_client.KairosClient` only. Each takes ``--url``
(``$KAIROS_ADMIN_URL``, default :data:`kairos_client.DEFAULT_BASE_URL`) and ``--token``
(``$KAIROS_ADMIN_TOKEN``); the listing commands take ``--json`` to print the SDK's models.

Exit codes: 0 ok; 1 the gateway answered with an error (an unknown backend, a rejected reload,
``status`` of a gateway that is not ready), the message on stderr; 2 usage error; 3 the admin API
is unreachable; 4 it refused the token.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Annotated, NoReturn

import typer
from pydantic import BaseModel
from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from kairos_cli.report import make_console
from kairos_client import (
    DEFAULT_BASE_URL,
    AiDecision,
    CircuitInfo,
    KairosAuthError,
    KairosClient,
    KairosConnectionError,
    KairosError,
    MetricsSnapshot,
    RouteInfo,
    format_duration,
)
from kairos_client.models import Percentiles

EXIT_OK, EXIT_API_ERROR, EXIT_UNREACHABLE, EXIT_UNAUTHORISED = 0, 1, 3, 4
DEFAULT_WATCH_INTERVAL_S = 2.0
DEFAULT_DECISIONS_LIMIT = 20
_STATE_STYLES = {"closed": "green", "half_open": "yellow", "open": "red"}

app = typer.Typer()
circuits_app = typer.Typer(invoke_without_command=True)
app.add_typer(circuits_app, name="circuits")

UrlOption = Annotated[
    str | None,
    typer.Option(
        "--url", envvar="KAIROS_ADMIN_URL", help=f"Admin API URL (default {DEFAULT_BASE_URL})."
    ),
]
TokenOption = Annotated[
    str | None, typer.Option("--token", envvar="KAIROS_ADMIN_TOKEN", help="Admin API token.")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON (the SDK's models).")]


def exit_code_for(error: KairosError) -> int:
    """The §9 exit code of an SDK error: 3 unreachable, 4 token refused, 1 anything else."""
    if isinstance(error, KairosConnectionError):
        return EXIT_UNREACHABLE
    if isinstance(error, KairosAuthError):
        return EXIT_UNAUTHORISED
    return EXIT_API_ERROR


@contextmanager
def _admin(url: str | None, token: str | None) -> Iterator[KairosClient]:
    """A client on the admin API; SDK errors end the command with their exit code."""
    try:
        client = KairosClient(url, token)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--url") from None
    try:
        with client:
            yield client
    except KairosError as exc:
        message = str(exc)
        if isinstance(exc, KairosAuthError):
            message = (
                f"the admin API at {client.base_url} refused the token ({exc}); "
                "pass --token or set KAIROS_ADMIN_TOKEN"
            )
        _fail(message, exit_code_for(exc))


def _fail(message: str, code: int) -> NoReturn:
    make_console(stderr=True).print(f"✗ {message}", style="red")
    raise typer.Exit(code)


def _echo_models(models: Sequence[BaseModel]) -> None:
    typer.echo(json.dumps([model.model_dump(mode="json") for model in models], indent=2))


# --- status -------------------------------------------------------------------------------------


@app.command()
def status(url: UrlOption = None, token: TokenOption = None) -> None:
    """Is the gateway up and ready, and how is traffic: one line each.

    Exit 0 ready, 1 not ready, 3 unreachable, 4 token refused.
    """
    console = make_console()
    with _admin(url, token) as client:
        health, ready, snapshot = client.health(), client.ready(), client.metrics()
        console.print(
            Text(
                f"✓ {client.base_url}: {health.status} (kairos {health.version}, "
                f"up {format_duration(health.uptime_seconds)})",
                style="bold green",
            )
        )
    if ready.status == "ready":
        console.print(Text(f"✓ ready, config {ready.config_version}", style="green"))
    else:
        console.print(Text(f"✗ not ready, config {ready.config_version}", style="bold red"))
        for reason in ready.reasons:
            console.print(Text(f"  {reason}", style="red"))
    if ready.unroutable:
        routes = ", ".join(repr(route_id) for route_id in ready.unroutable)
        console.print(Text(f"! no candidate backend now for {routes}", style="yellow"))
    console.print(_summary_line(snapshot))
    if ready.status != "ready":
        raise typer.Exit(EXIT_API_ERROR)


def _summary_line(snapshot: MetricsSnapshot) -> str:
    """One line of traffic figures, each labelled with its window: totals count since the
    gateway started, rates and percentiles cover the last seconds (DESIGN.md §7)."""
    open_breakers = sum(1 for b in snapshot.backends if b.circuit.state != "closed")
    return (
        f"{snapshot.requests_total:,} requests since start, "
        f"{snapshot.error_rate:.1%} errors (last 60 s), "
        f"{snapshot.requests_per_second.per_10s:.1f} req/s (last 10 s), "
        f"p99 {snapshot.latency_ms.p99:.1f} ms and overhead p99 "
        f"{snapshot.overhead_ms.p99:.2f} ms (last 60 s), "
        f"{snapshot.in_flight} in flight, {_count(len(snapshot.routes), 'route')}, "
        f"{_count(len(snapshot.backends), 'backend')} ({open_breakers} not closed)"
    )


# --- metrics ------------------------------------------------------------------------------------


@app.command()
def metrics(
    url: UrlOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
    watch: Annotated[bool, typer.Option("--watch", help="Refresh until Ctrl-C.")] = False,
    interval: Annotated[
        float, typer.Option("--interval", min=0.1, help="Seconds between refreshes (--watch).")
    ] = DEFAULT_WATCH_INTERVAL_S,
) -> None:
    """Totals, rates, latency and overhead percentiles, routes and backends with breakers."""
    console = make_console()
    with _admin(url, token) as client:
        if as_json:
            typer.echo(client.metrics().model_dump_json(indent=2))
        elif watch:
            _watch(client, console, interval)
        else:
            console.print(_metrics_view(client.base_url, client.metrics()))


def _watch(client: KairosClient, console: Console, interval_s: float) -> None:
    """Redraw in place on a terminal; elsewhere (a pipe, a log) print one frame per refresh."""
    try:
        if console.is_terminal:
            view = _metrics_view(client.base_url, client.metrics())
            with Live(view, console=console, auto_refresh=False) as live:
                while True:
                    time.sleep(interval_s)
                    live.update(_metrics_view(client.base_url, client.metrics()), refresh=True)
        else:
            while True:
                console.print(_metrics_view(client.base_url, client.metrics()))
                time.sleep(interval_s)
    except KeyboardInterrupt:
        return


def _metrics_view(base_url: str, snapshot: MetricsSnapshot) -> RenderableType:
    rates = snapshot.requests_per_second
    totals = Table(show_header=False, box=None, padding=(0, 2))
    totals.add_column(style="bold")
    totals.add_column()
    totals.add_row("requests since start", f"{snapshot.requests_total:,}")
    totals.add_row("errors since start", f"{snapshot.errors_total:,}")
    totals.add_row("error rate (last 60 s)", f"{snapshot.error_rate:.1%}")
    totals.add_row(
        "rate (1/10/60 s)", f"{rates.per_1s:.1f} / {rates.per_10s:.1f} / {rates.per_60s:.1f} req/s"
    )
    totals.add_row("latency p50/p90/p99 (last 60 s)", _percentiles(snapshot.latency_ms))
    totals.add_row("overhead p50/p90/p99 (last 60 s)", _percentiles(snapshot.overhead_ms, digits=2))
    classes = ", ".join(
        f"{name} {count:,}" for name, count in sorted(snapshot.status_classes.items())
    )
    totals.add_row("status classes since start", classes or "-")
    totals.add_row("in flight", str(snapshot.in_flight))
    totals.add_row("rate limited since start", f"{snapshot.rate_limited_total:,}")
    totals.add_row(
        "retries since start",
        f"{snapshot.retries_total:,} (budget exhausted {snapshot.retry_budget_exhausted_total:,})",
    )
    totals.add_row("uptime", format_duration(snapshot.uptime_seconds))
    totals.add_row("config version", snapshot.config_version or "-")

    routes = _table(title="routes (requests and errors since start)")
    columns = (
        "route",
        "requests",
        "errors",
        "req/s 10 s",
        "p50 ms 60 s",
        "p99 ms 60 s",
        "features",
    )
    for column in columns:
        routes.add_column(column, no_wrap=column == "route")
    for route in snapshot.routes:
        features = [
            name
            for name, on in (
                ("auth", route.auth_required),
                ("retry", route.has_retry),
                ("rate-limit", route.has_rate_limit),
                ("ai", route.has_ai),
            )
            if on
        ]
        routes.add_row(
            route.route,
            f"{route.requests_total:,}",
            f"{route.errors_total:,}",
            f"{route.requests_per_second.per_10s:.1f}",
            f"{route.latency_ms.p50:.1f}",
            f"{route.latency_ms.p99:.1f}",
            ", ".join(features) or "-",
        )

    backends = _table(title="backends (requests and failures since start)")
    for column in (
        "backend",
        "breaker",
        "health",
        "in flight",
        "requests",
        "failures",
        "p99 ms 60 s",
    ):
        backends.add_column(column, no_wrap=column in ("backend", "breaker"))
    for backend in snapshot.backends:
        backends.add_row(
            backend.backend,
            _state(backend.circuit.state),
            _health(backend.healthy),
            str(backend.in_flight),
            f"{backend.requests_total:,}",
            f"{backend.failures_total:,}",
            f"{backend.latency_ms.p99:.1f}",
        )
    heading = Text(f"kairos metrics: {base_url} at {datetime.now():%H:%M:%S}", style="bold")
    return Group(heading, totals, routes, backends)


def _percentiles(values: Percentiles, digits: int = 1) -> str:
    return f"{values.p50:.{digits}f} / {values.p90:.{digits}f} / {values.p99:.{digits}f} ms"


# --- routes -------------------------------------------------------------------------------------


@app.command()
def routes(url: UrlOption = None, token: TokenOption = None, as_json: JsonOption = False) -> None:
    """The gateway's routes: id, methods, path, backends and features."""
    with _admin(url, token) as client:
        items = client.routes()
    if as_json:
        _echo_models(items)
        return
    table = _table()
    for column in ("id", "methods", "path", "backends", "features"):
        table.add_column(column, no_wrap=column in ("id", "path", "backends"))
    for route in items:
        table.add_row(
            route.id,
            ", ".join(route.policies.methods),
            str(route.config.get("external_path", "")),
            "\n".join(_route_backends(route)),
            ", ".join(_route_features(route)) or "-",
        )
    console = make_console()
    console.print(table)
    console.print(_count(len(items), "route"))


def _route_backends(route: RouteInfo) -> list[str]:
    """The backend keys the gateway gives, fallbacks marked."""
    return [*route.backends, *(f"{key} (fallback)" for key in route.fallback)]


def _route_features(route: RouteInfo) -> list[str]:
    """The policies in force as the gateway resolved them (a global rate limit included)."""
    policies = route.policies
    features = []
    if policies.auth_required:
        features.append("auth")
    if policies.retry:
        features.append("retry")
    if policies.rate_limit is not None:
        global_ = policies.rate_limit_scope == "global"
        features.append("rate-limit (global)" if global_ else "rate-limit")
    if policies.ai_mode is not None:
        features.append(f"ai {policies.ai_mode}")
    return features


# --- circuits -----------------------------------------------------------------------------------


@circuits_app.callback()
def circuits(
    ctx: typer.Context,
    url: UrlOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Every backend's breaker; `circuits reset|open BACKEND` closes or forces one open."""
    if ctx.invoked_subcommand is not None:
        return
    with _admin(url, token) as client:
        items = client.circuits()
    if as_json:
        _echo_models(items)
        return
    table = _table()
    for column in ("backend", "breaker", "failures", "health", "in flight", "opened", "half-open"):
        table.add_column(column, no_wrap=column in ("backend", "breaker", "opened", "half-open"))
    now = time.time()
    for circuit in items:
        table.add_row(
            circuit.backend,
            _state(circuit.state),
            str(circuit.failures),
            _health(circuit.healthy),
            str(circuit.in_flight),
            _ago(circuit.opened_at, now),
            _in(circuit.next_half_open_at, now),
        )
    console = make_console()
    console.print(table)
    console.print(_count(len(items), "backend"))


@circuits_app.command("reset")
def circuits_reset(
    ctx: typer.Context,
    backend: Annotated[str, typer.Argument(help="Backend key, e.g. http://127.0.0.1:9001.")],
    url: UrlOption = None,
    token: TokenOption = None,
) -> None:
    """Close a backend's breaker."""
    with _admin(*_inherited(ctx, url, token)) as client:
        circuit = client.reset_circuit(backend)
    _print_circuit("reset", circuit)


@circuits_app.command("open")
def circuits_open(
    ctx: typer.Context,
    backend: Annotated[str, typer.Argument(help="Backend key, e.g. http://127.0.0.1:9001.")],
    url: UrlOption = None,
    token: TokenOption = None,
) -> None:
    """Force a backend's breaker open (it half-opens after its reset timeout)."""
    with _admin(*_inherited(ctx, url, token)) as client:
        circuit = client.open_circuit(backend)
    _print_circuit("forced open", circuit)


def _inherited(
    ctx: typer.Context, url: str | None, token: str | None
) -> tuple[str | None, str | None]:
    """Options given before the subcommand (``kairos circuits --url U reset B``) count too."""
    parent = ctx.parent.params if ctx.parent is not None else {}
    return url or parent.get("url"), token or parent.get("token")


def _print_circuit(action: str, circuit: CircuitInfo) -> None:
    line = Text.assemble(
        (f"✓ {circuit.backend}: breaker {action}, now ", "bold green"), _state(circuit.state)
    )
    if circuit.next_half_open_at is not None:
        line.append(f" (half-open {_in(circuit.next_half_open_at, time.time())})")
    make_console().print(line)


def _state(state: str) -> Text:
    return Text(state, style=_STATE_STYLES.get(state, ""))


# --- reload -------------------------------------------------------------------------------------


@app.command()
def reload(url: UrlOption = None, token: TokenOption = None) -> None:
    """Reload the config file; an invalid file is rejected and the running config kept.

    Exit 0 reloaded, 1 rejected (the errors on stderr).
    """
    with _admin(url, token) as client:
        result = client.reload()
    if result.reloaded:
        console = make_console()
        console.print(Text(f"✓ reloaded, config {result.config_version}", style="bold green"))
        if result.restart_required:
            console.print(
                Text(
                    f"! restart required for {', '.join(result.restart_required)}: the "
                    "listeners keep the settings they started with",
                    style="yellow",
                )
            )
        return
    errors = make_console(stderr=True)
    errors.print(
        Text(
            f"✗ reload rejected; the running config {result.config_version} is kept",
            style="bold red",
        )
    )
    for issue in result.errors:
        where = f"{issue.path} (line {issue.line})" if issue.line else issue.path
        errors.print(Text(f"  {where}: {issue.message}", style="red"))
    raise typer.Exit(EXIT_API_ERROR)


# --- decisions ----------------------------------------------------------------------------------


@app.command()
def decisions(
    url: UrlOption = None,
    token: TokenOption = None,
    limit: Annotated[
        int, typer.Option("--limit", min=1, help="How many, newest first.")
    ] = DEFAULT_DECISIONS_LIMIT,
    as_json: JsonOption = False,
) -> None:
    """Recent AI routing decisions: route, chosen backend, source, latency and reason."""
    with _admin(url, token) as client:
        items = client.ai_decisions(limit=limit)
    if as_json:
        _echo_models(items)
        return
    console = make_console()
    if not items:
        console.print("no AI decisions yet")
        return
    table = _table()
    for column in ("time", "route", "backend", "source", "ms", "reason"):
        table.add_column(column, no_wrap=column in ("time", "backend", "source"))
    for decision in items:
        table.add_row(*_decision_row(decision))
    console.print(table)


def _decision_row(decision: AiDecision) -> tuple[str, ...]:
    return (
        f"{datetime.fromtimestamp(decision.time):%H:%M:%S}",
        decision.route,
        decision.backend or "-",
        decision.source,
        f"{decision.latency_ms:.1f}",
        decision.reason or "-",
    )


# --- formatting ---------------------------------------------------------------------------------


def _table(title: str | None = None) -> Table:
    return Table(
        title=title,
        title_justify="left",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        padding=(0, 1, 0, 0),
    )


def _health(healthy: bool) -> Text:
    return Text("healthy", style="green") if healthy else Text("unhealthy", style="red")


def _count(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _ago(timestamp: float | None, now: float) -> str:
    return "-" if timestamp is None else f"{format_duration(now - timestamp)} ago"


def _in(timestamp: float | None, now: float) -> str:
    return "-" if timestamp is None else f"in {format_duration(timestamp - now)}"
