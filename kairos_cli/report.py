"""Human-readable reports for ``kairos validate`` and ``kairos route-test``.

Output goes through a rich :class:`~rich.console.Console`, which colours it on a terminal and
writes plain text when piped (``NO_COLOR`` is honoured). Markup and highlighting are off, so
config paths such as ``routers[0]`` and user-supplied values are printed exactly.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from rich.console import Console
from rich.table import Table
from rich.text import Text

from kairos_core.config import ConfigIssue, Severity
from kairos_core.dryrun import Candidate, DryRun
from kairos_core.transform import RequestParts

LABEL_WIDTH = 10
_SEVERITY_STYLES = {
    Severity.ERROR: ("errors", "red"),
    Severity.WARNING: ("warnings", "yellow"),
    Severity.RECOMMENDATION: ("recommendations", "cyan"),
}


def make_console(*, stderr: bool = False) -> Console:
    """A console bound to the current stdout (or stderr), colour only on a terminal."""
    return Console(stderr=stderr, markup=False, highlight=False, soft_wrap=True, emoji=False)


# --- validate -----------------------------------------------------------------------------------


def print_issues(console: Console, issues: Iterable[ConfigIssue]) -> None:
    """Every issue, grouped by severity (errors first), one ``path (line N): message`` each."""
    issues = list(issues)
    for severity, (title, style) in _SEVERITY_STYLES.items():
        group = [issue for issue in issues if issue.severity is severity]
        if not group:
            continue
        console.print(Text(f"{title} ({len(group)}):", style=f"bold {style}"))
        for issue in group:
            console.print(Text.assemble("  ", (str(issue), style)))


def print_valid(
    console: Console, source: str, issues: Sequence[ConfigIssue], routes: int, backends: int
) -> None:
    console.print(Text(f"✓ {source} is valid", style="bold green"))
    print_issues(console, issues)
    console.print(f"{_count(routes, 'route')}, {_count(backends, 'backend')}")


def print_invalid(console: Console, source: str, issues: Sequence[ConfigIssue]) -> None:
    errors = sum(1 for issue in issues if issue.severity is Severity.ERROR)
    console.print(Text(f"✗ {source}: {errors} error(s)", style="bold red"))
    print_issues(console, issues)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


# --- route-test ---------------------------------------------------------------------------------


def print_dry_run(console: Console, plan: DryRun, *, live_source: str | None = None) -> None:
    """The sectioned route-test report: verdict first, then every decision of the pipeline."""
    _print_verdict(console, plan)
    note = "dry run: no traffic sent"
    if live_source is not None:
        note += f"; breaker and health state from {live_source}"
    console.print(Text(note, style="dim"))
    if plan.route_id is None:
        return
    _print_route(console, plan)
    _print_upstream(console, plan)
    _print_backends(console, plan)
    _print_auth(console, plan)
    _print_rate_limit(console, plan)
    _print_retry(console, plan)
    _print_breaker(console, plan)
    _print_timeouts(console, plan)
    _print_transforms(console, plan)
    _print_ai(console, plan)


def _print_verdict(console: Console, plan: DryRun) -> None:
    request = f"{plan.method} {plan.path}" + (f"?{plan.query}" if plan.query else "")
    if plan.outcome == "routable":
        verdict, style = "routable (forwarded; the upstream answers)", "green"
    elif plan.outcome == "preflight":
        verdict, style = "CORS preflight (answered by the gateway: 204)", "green"
    else:
        verdict, style = f"rejected: {plan.status} {plan.outcome}", "red"
    mark = "✓" if plan.routable else "✗"
    console.print(
        Text.assemble(
            (f"{mark} ", f"bold {style}"), (request, "bold"), " → ", (verdict, f"bold {style}")
        )
    )
    console.print(Text(f"  {plan.message}"))
    if plan.allowed_methods:
        console.print(Text(f"  Allow: {', '.join(plan.allowed_methods)}"))


def _section(console: Console, title: str) -> None:
    console.print()
    console.print(Text(title, style="bold"))


def _field(console: Console, label: str, value: str | Text, style: str = "") -> None:
    line = Text(f"  {label.ljust(LABEL_WIDTH)} ", style="dim")
    line.append(value if isinstance(value, Text) else Text(value, style=style))
    console.print(line)


def _print_route(console: Console, plan: DryRun) -> None:
    _section(console, "Route")
    _field(console, "id", plan.route_id or "")
    _field(console, "pattern", f"{plan.external_path} → {plan.internal_path}")
    _field(console, "methods", ", ".join(plan.methods))
    _field(console, "protocol", plan.protocol or "")
    params = ", ".join(f"{name}={value}" for name, value in plan.params.items())
    _field(console, "params", params or "none")
    if plan.host:
        _field(console, "host", plan.host)


def _print_upstream(console: Console, plan: DryRun) -> None:
    _section(console, "Upstream")
    _field(console, "path", plan.upstream_path or "")
    _field(console, "query", plan.query or "none")
    if plan.upstream_url is not None:
        _field(console, "url", plan.upstream_url, "bold")
    else:
        _field(console, "url", "none: no eligible backend", "red")


def _print_backends(console: Console, plan: DryRun) -> None:
    _section(console, f"Backends ({plan.load_balancing_strategy})")
    pick = plan.pick
    _backend_table(
        console, plan.candidates, pick.index if pick and pick.pool == "backends" else None
    )
    if plan.fallback:
        console.print(
            Text("  fallback (used only when no primary backend is eligible):", style="dim")
        )
        picked = pick.index if pick and pick.pool == "fallback" else None
        _backend_table(console, plan.fallback, picked)
    if pick is not None:
        _field(console, "pick", f"{pick.pool}[{pick.index}] {pick.key} ({pick.note})")
    else:
        _field(console, "pick", "none: every backend is open or unhealthy", "red")


def _backend_table(console: Console, candidates: Sequence[Candidate], picked: int | None) -> None:
    table = Table(box=None, padding=(0, 2, 0, 0), header_style="dim")
    for column in ("  #", "backend", "weight", "state", "pick"):
        table.add_column(column, no_wrap=True)
    for c in candidates:
        table.add_row(
            Text(f"  {c.index}"),
            Text(c.key),
            Text(str(c.weight)),
            Text(
                c.state if c.eligible else f"{c.state} (skipped)",
                style="green" if c.eligible else "red",
            ),
            Text("← pick" if c.index == picked else "", style="bold"),
        )
    console.print(table)
    for c in candidates:
        if c.description or c.tags:
            tags = f" [{', '.join(c.tags)}]" if c.tags else ""
            console.print(Text(f"  {c.index}: {c.description or ''}{tags}", style="dim"))


def _print_auth(console: Console, plan: DryRun) -> None:
    _section(console, "Auth")
    auth = plan.auth
    _field(console, "required", "yes (JWT)" if auth.required else "no")
    _field(console, "outcome", auth.outcome, "green" if auth.accepted else "red")


def _print_rate_limit(console: Console, plan: DryRun) -> None:
    _section(console, "Rate limit")
    limit = plan.rate_limit
    if limit is None:
        _field(console, "policy", "none")
        return
    _field(console, "policy", limit.description)
    _field(console, "scope", limit.scope)
    for key in limit.keys:
        _field(console, "key", f"{key.key} ({key.strategy})")
    capacity = f"{limit.capacity} requests"
    if limit.refill_per_second is not None:
        capacity += f", refilled at {_num(limit.refill_per_second)}/s"
    else:
        capacity += f" per {limit.window_duration_s} s"
    _field(console, "capacity", capacity)
    _field(console, "note", "counters are not read in a dry run", "dim")


def _print_retry(console: Console, plan: DryRun) -> None:
    _section(console, "Retry")
    retry = plan.retry
    if retry is None:
        _field(console, "policy", "none: one attempt")
        return
    _field(console, "attempts", f"{retry.attempts} (1 + {retry.attempts - 1} retries)")
    if retry.schedule:
        bound = "≤" if any(step.jitter for step in retry.schedule) else ""
        steps = ", ".join(
            f"attempt {s.attempt} after {bound}{_num(s.wait_ms)} ms" for s in retry.schedule
        )
        if bound:
            steps += " (full jitter)"
        _field(console, "schedule", steps)
    on = (
        [f"status {', '.join(map(str, retry.retry_on_status_codes))}"]
        if retry.retry_on_status_codes
        else []
    )
    if retry.retry_on_connection_error:
        on.append("connection errors")
    _field(console, "on", "; ".join(on) or "nothing")
    _field(
        console,
        "budget",
        f"{_num(retry.budget_percent)}% of recent requests "
        f"(at least {_num(retry.min_retries_per_second)}/s); "
        f"bodies up to {retry.max_replay_bytes} bytes replayed",
    )
    _field(console, "this", retry.note, "" if retry.applies else "yellow")


def _print_breaker(console: Console, plan: DryRun) -> None:
    breaker = plan.circuit_breaker
    if breaker is None:
        return
    _section(console, "Circuit breaker (per backend)")
    codes = ", ".join(map(str, breaker.failure_status_codes))
    _field(
        console,
        "opens",
        f"after {breaker.failure_threshold} consecutive failures "
        f"(connection errors, timeouts, status {codes})",
    )
    _field(
        console,
        "half-open",
        f"after {_num(breaker.reset_timeout_s)} s, "
        f"at most {breaker.half_open_max_calls} trial call(s)",
    )
    _field(console, "closes", f"after {breaker.success_threshold} consecutive successes")


def _print_timeouts(console: Console, plan: DryRun) -> None:
    timeouts = plan.timeouts
    if timeouts is None:
        return
    _section(console, "Timeouts")
    _field(console, "per try", f"{timeouts.timeout_ms} ms")
    deadline = f"{timeouts.deadline_ms} ms" if timeouts.deadline_ms is not None else "none"
    _field(console, "deadline", deadline)
    _field(console, "connect", f"{timeouts.connect_timeout_ms} ms")


def _print_transforms(console: Console, plan: DryRun) -> None:
    _section(console, "Transforms")
    request, response = plan.request_transform, plan.response_transform
    if request is None and response is None:
        _field(console, "none", "the request and response pass through unchanged")
        return
    if request is not None:
        before, after = request.before, request.after
        _field(console, "path", _before_after(before.path, after.path))
        _field(console, "query", _before_after(before.query or "(none)", after.query or "(none)"))
        _field(console, "headers", _before_after(_headers(before), _headers(after)))
    if response is not None:
        mappings = ", ".join(
            f"{m.from_} → {m.to}"
            + (f" (condition {m.condition!r} is not evaluated)" if m.condition else "")
            for m in response.status_code_mappings
        )
        if mappings:
            _field(console, "status", mappings)
        for op in response.headers:
            if op.action == "remove":
                text = f"remove {op.name}"
            elif op.action == "replace":
                text = f"replace in {op.name}: {op.pattern!r} → {op.replacement!r}"
            else:
                text = f"{op.action} {op.name}: {op.value}"
            _field(console, "response", text)


def _before_after(before: str, after: str) -> str:
    return before if before == after else f"{before} → {after}"


def _headers(parts: RequestParts) -> str:
    return "; ".join(f"{name}: {value}" for name, value in parts.headers) or "(none)"


def _print_ai(console: Console, plan: DryRun) -> None:
    ai = plan.ai_policy
    if ai is None:
        return
    _section(console, "AI selector")
    _field(console, "enabled", "yes" if ai.enabled else "no")
    _field(console, "strategy", ai.strategy + (f" (model {ai.model})" if ai.model else ""))
    _field(console, "provider", ai.provider)
    _field(
        console,
        "mode",
        f"{ai.mode}, timeout {ai.timeout_ms} ms, cache {_num(ai.cache_ttl_s)} s, "
        f"at most {ai.max_concurrent_calls} calls at once",
    )
    if ai.fallback_backend_index is not None:
        _field(console, "fallback", f"backend {ai.fallback_backend_index}")
    _field(console, "note", ai.note)
    if ai.source is not None:
        pick = f"backend {ai.pick_index}" if ai.pick_index is not None else "no single backend"
        _field(console, "offline", f"{pick} ({ai.source}): {ai.reason}")
    if ai.prompt_user is not None:
        _field(console, "prompt", "the exact messages an LLM would get:")
        console.print(Text(f"    [system] {ai.prompt_system}", style="dim"))
        for line in ai.prompt_user.splitlines():
            console.print(Text(f"    {line}"))
    if ai.live_latency_ms is not None:
        if ai.live_error is not None:
            _field(
                console, "live", f"no usable answer in {ai.live_latency_ms:.0f} ms: {ai.live_error}"
            )
        else:
            _field(
                console,
                "live",
                f"the LLM chose backend {ai.live_index} in {ai.live_latency_ms:.0f} ms: "
                f"{ai.live_reason}",
            )


def _num(value: float) -> str:
    """``100.0`` → ``100``; other floats keep up to two decimals."""
    return str(int(value)) if float(value).is_integer() else f"{value:.2f}".rstrip("0")
