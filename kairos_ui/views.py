"""The dashboard's endpoints: pages, the browser event stream, fragments and actions.

Pages are rendered from the :class:`~kairos_ui.state.DashboardState` the relay keeps current, so
opening one costs no call to the gateway (the config page and the charts fetch fresh data).
Actions (route edits, breaker buttons, validate, reload) call the SDK and answer an HTML fragment
for htmx to swap in; a gateway error becomes a message in that fragment, never a stack trace.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from kairos_client import AsyncKairosClient, KairosAPIError, KairosAuthError, KairosError
from kairos_client.models import ValidationIssue

from .broadcast import Broadcaster
from .charts import Series, line_chart
from .forms import FormIssue, RouteForm
from .headers import SECURITY_HEADERS
from .relay import NOT_AUTHORISED, GatewayRelay, link_for
from .rendering import Renderer
from .state import DECISIONS_KEPT, DashboardState, GatewayLink

HISTORY_SECONDS = 900
SSE_PING_S = 15
SSE_SEND_TIMEOUT_S = 10


def describe(error: KairosError) -> str:
    """One line for the user about an SDK error."""
    if isinstance(error, KairosAuthError):
        return f"Not authorised: {NOT_AUTHORISED}"
    if isinstance(error, KairosAPIError):
        return f"The gateway answered {error.status} {error.type}: {error.message}"
    return f"Gateway unreachable: {error}"


def _route_issues(error: KairosAPIError) -> list[FormIssue]:
    """The gateway's objections to a route, by JSON path (its line numbers are of a file the
    user never sees, so they are left out)."""
    return [FormIssue(detail.path, detail.message) for detail in error.details]


def _route_rejection(error: KairosAPIError) -> str:
    if error.type == "validation_error":
        return "The gateway rejected the route:"
    if error.type == "precondition_failed":
        return "The config changed since this form was opened; reopen the route to edit it."
    return describe(error)


def _issue(detail: ValidationIssue) -> FormIssue:
    return FormIssue(detail.path, detail.message, detail.line)


@dataclass(frozen=True)
class Chart:
    """A chart as the template shows it: a caption, a legend and the SVG."""

    title: str
    legend: list[tuple[str, str]]
    svg: str


class Dashboard:
    """Every endpoint of the dashboard, sharing the client, the state and the renderer."""

    def __init__(
        self,
        client: AsyncKairosClient,
        state: DashboardState,
        renderer: Renderer,
        broadcaster: Broadcaster,
        relay: GatewayRelay,
    ) -> None:
        self.client = client
        self.state = state
        self.renderer = renderer
        self.broadcaster = broadcaster
        self.relay = relay

    # --- helpers --------------------------------------------------------------------------------

    def _page(
        self,
        request: Request,
        template: str,
        active: str,
        *,
        link: GatewayLink | None = None,
        **context: Any,
    ) -> HTMLResponse:
        html = self.renderer.render(
            template,
            state=self.state,
            link=link or self.state.link,
            active=active,
            csrf_token=request.state.csrf_token,
            **context,
        )
        return HTMLResponse(html)

    def _fragment(self, request: Request, template: str, **context: Any) -> HTMLResponse:
        html = self.renderer.render(template, csrf_token=request.state.csrf_token, **context)
        return HTMLResponse(html)

    def _message(self, request: Request, text: str, *, ok: bool) -> HTMLResponse:
        return self._fragment(request, "fragments/message.html", text=text, ok=ok)

    async def _after_config_change(self) -> None:
        """Show a route or config change at once, without waiting for the gateway's event."""
        with contextlib.suppress(KairosError):  # the relay's reader reports the gateway's state
            await self.relay.refresh_config()

    # --- pages ----------------------------------------------------------------------------------

    async def overview(self, request: Request) -> HTMLResponse:
        charts, problem = await self._charts()
        return self._page(request, "overview.html", "overview", link=problem, charts=charts)

    async def routes(self, request: Request) -> HTMLResponse:
        return self._page(request, "routes.html", "routes", **self._form_context(RouteForm()))

    async def backends(self, request: Request) -> HTMLResponse:
        return self._page(request, "backends.html", "backends")

    async def decisions(self, request: Request) -> HTMLResponse:
        return self._page(request, "decisions.html", "decisions", decisions_kept=DECISIONS_KEPT)

    async def config(self, request: Request) -> HTMLResponse:
        document = self.state.config
        text = json.dumps(document.config, indent=2) if document else ""
        return self._page(request, "config.html", "config", document_text=text)

    # --- live -----------------------------------------------------------------------------------

    async def events(self, request: Request) -> EventSourceResponse:
        """The browser's one SSE stream: every live part now, then each change as it happens."""
        subscription = self.broadcaster.subscribe(self.renderer.parts(self.state))

        async def stream() -> Any:
            try:
                async for fragment in subscription:
                    yield ServerSentEvent(data=fragment.html, event=fragment.event)
            finally:
                subscription.close()

        return EventSourceResponse(
            stream(),
            ping=SSE_PING_S,
            send_timeout=SSE_SEND_TIMEOUT_S,
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def charts(self, request: Request) -> HTMLResponse:
        charts, _ = await self._charts()
        return self._fragment(request, "fragments/charts.html", charts=charts)

    async def _charts(self) -> tuple[list[Chart], GatewayLink | None]:
        """The overview's SVG charts of the last 15 minutes (empty when history is unavailable)."""
        try:
            history = await self.client.metrics_history(HISTORY_SECONDS)
        except KairosError as exc:
            return [], link_for(exc)
        points = history.points
        charts = []
        for title, unit, series in (
            (
                "Requests per second",
                "req/s",
                [
                    Series("requests/s", [(p.t, p.requests) for p in points], "series-requests"),
                    Series("errors/s", [(p.t, p.errors) for p in points], "series-errors"),
                ],
            ),
            (
                "Latency",
                "ms",
                [
                    Series("p99", [(p.t, p.p99_ms) for p in points], "series-p99"),
                    Series("p50", [(p.t, p.p50_ms) for p in points], "series-p50"),
                ],
            ),
        ):
            svg = line_chart(series, title=title, unit=unit, window_s=HISTORY_SECONDS)
            charts.append(Chart(title, [(s.name, s.css_class) for s in series], svg))
        return charts, None

    async def health(self, request: Request) -> JSONResponse:
        """The dashboard's own liveness, its link to the gateway, and the open browser streams."""
        link = self.state.link
        return JSONResponse(
            {
                "status": "ok",
                "gateway": link.state,
                "detail": link.detail,
                "browsers": self.broadcaster.subscriber_count,
            }
        )

    # --- routes ---------------------------------------------------------------------------------

    def _route_form(self, request: Request, form: RouteForm, **given: Any) -> HTMLResponse:
        """The route form fragment; ``given`` overrides :meth:`_form_context`'s defaults."""
        return self._fragment(
            request, "fragments/route_form.html", **self._form_context(form, **given)
        )

    def _form_context(self, form: RouteForm, **given: Any) -> dict[str, Any]:
        """What the route form's template reads; the routes page embeds the same form empty."""
        context: dict[str, Any] = {
            "form": form,
            "mode": "create",
            "issues": [],
            "message": None,
            "ok": False,
            "original_id": None,
            "config_version": None,
        }
        context.update(given)
        context["issues"] = context["issues"] or []
        context["choices"] = self.state.route_choices
        return context

    async def route_form(self, request: Request) -> HTMLResponse:
        """``?id=`` → the edit form of that route; no id → an empty create form."""
        route_id = request.query_params.get("id")
        if not route_id:
            return self._route_form(request, RouteForm())
        try:
            # version first: if the config changes before the route is read, the save is refused
            # (412) instead of silently overwriting that change with stale contents
            version = (await self.client.config()).config_version
            info = await self.client.route(route_id)
        except KairosError as exc:
            return self._route_form(request, RouteForm(), message=describe(exc))
        return self._route_form(
            request,
            RouteForm.from_config(info.config),
            mode="edit",
            original_id=info.id,
            config_version=version,
        )

    async def create_route(self, request: Request) -> HTMLResponse:
        form = _route_form(await _submitted(request))
        router, issues = form.to_config()
        if issues:
            return self._route_form(request, form, issues=issues)
        try:
            change = await self.client.create_route(router)
        except KairosAPIError as exc:
            return self._route_form(
                request, form, issues=_route_issues(exc), message=_route_rejection(exc)
            )
        except KairosError as exc:
            return self._route_form(request, form, message=describe(exc))
        await self._after_config_change()
        created = change.route.id if change.route else router.get("name", "")
        return self._route_form(request, RouteForm(), message=f"Route {created} created.", ok=True)

    async def update_route(self, request: Request) -> HTMLResponse:
        fields = await _submitted(request)
        original_id = fields.get("original_id", "")
        version = fields.get("config_version") or None
        form = _route_form(fields)

        def again(**context: Any) -> HTMLResponse:
            return self._route_form(
                request,
                form,
                mode="edit",
                original_id=original_id,
                config_version=version,
                **context,
            )

        router, issues = form.to_config()
        if issues:
            return again(issues=issues)
        try:
            change = await self.client.update_route(original_id, router, if_match=version)
        except KairosAPIError as exc:
            return again(issues=_route_issues(exc), message=_route_rejection(exc))
        except KairosError as exc:
            return again(message=describe(exc))
        await self._after_config_change()
        saved = change.route.id if change.route else original_id
        return self._route_form(request, RouteForm(), message=f"Route {saved} saved.", ok=True)

    async def delete_route(self, request: Request) -> HTMLResponse:
        route_id = (await _submitted(request)).get("id", "")
        try:
            await self.client.delete_route(route_id)
        except KairosError as exc:
            return self._message(request, describe(exc), ok=False)
        await self._after_config_change()
        return self._message(request, f"Route {route_id} deleted.", ok=True)

    async def route_test(self, request: Request) -> HTMLResponse:
        fields = await _submitted(request)
        method = fields.get("method", "").upper() or "GET"
        path = fields.get("path", "").strip() or "/"
        token = fields.get("token", "").strip() or None
        client_ip = fields.get("client_ip", "").strip() or "127.0.0.1"
        body = fields.get("body") or None
        ai = fields.get("ai") in ("on", "true", "1")
        try:
            result = await self.client.route_test(
                method, path, token=token, client_ip=client_ip, body=body, ai=ai
            )
        except KairosError as exc:
            return self._message(request, describe(exc), ok=False)
        return self._fragment(
            request,
            "fragments/route_test.html",
            result=result,
            report=result.report,
            method=method,
            path=path,
            asked_ai=ai,
        )

    # --- circuits -------------------------------------------------------------------------------

    async def reset_circuit(self, request: Request) -> HTMLResponse:
        return await self._circuit_action(request, "reset")

    async def open_circuit(self, request: Request) -> HTMLResponse:
        return await self._circuit_action(request, "open")

    async def _circuit_action(self, request: Request, action: str) -> HTMLResponse:
        backend = (await _submitted(request)).get("backend", "")
        try:
            if action == "reset":
                info = await self.client.reset_circuit(backend)
            else:
                info = await self.client.open_circuit(backend)
        except KairosError as exc:
            return self._message(request, describe(exc), ok=False)
        verb = "reset" if action == "reset" else "forced open"
        return self._message(
            request, f"Breaker of {info.backend} {verb}: now {info.state}.", ok=True
        )

    # --- config ---------------------------------------------------------------------------------

    async def validate_config(self, request: Request) -> HTMLResponse:
        text = (await _submitted(request)).get("document", "")
        try:
            document = json.loads(text)
        except json.JSONDecodeError as exc:
            issue = FormIssue("(document)", f"not valid JSON: {exc.msg}", exc.lineno)
            return self._fragment(
                request, "fragments/validation.html", valid=False, errors=[issue], warnings=[]
            )
        if not isinstance(document, dict):
            issue = FormIssue("(document)", "must be a JSON object")
            return self._fragment(
                request, "fragments/validation.html", valid=False, errors=[issue], warnings=[]
            )
        try:
            result = await self.client.validate_config(document)
        except KairosError as exc:
            return self._message(request, describe(exc), ok=False)
        return self._fragment(
            request,
            "fragments/validation.html",
            valid=result.valid,
            errors=[_issue(i) for i in result.errors],
            warnings=[_issue(i) for i in result.warnings],
        )

    async def reload_config(self, request: Request) -> HTMLResponse:
        try:
            result = await self.client.reload()
        except KairosError as exc:
            return self._message(request, describe(exc), ok=False)
        if result.reloaded:
            await self._after_config_change()
        return self._fragment(
            request,
            "fragments/reload_result.html",
            result=result,
            errors=[_issue(i) for i in result.errors],
        )

    # --- errors ---------------------------------------------------------------------------------

    async def not_found(self, request: Request, exc: Exception) -> Response:
        return self._error_page(
            request, 404, "Not found", "There is no such page on the dashboard."
        )

    async def server_error(self, request: Request, exc: Exception) -> Response:
        response = self._error_page(
            request,
            500,
            "Something went wrong",
            "The dashboard hit an error; its log has the details.",
        )
        # Starlette answers 500s outside every middleware: add the security headers here
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    def _error_page(self, request: Request, status: int, title: str, text: str) -> Response:
        if request.headers.get("hx-request"):
            response = self._message(request, f"{title}: {text}", ok=False)
            response.status_code = status
            return response
        html = self.renderer.render(
            "error.html",
            state=self.state,
            link=self.state.link,
            active="",
            csrf_token=getattr(request.state, "csrf_token", ""),
            title=title,
            text=text,
        )
        return HTMLResponse(html, status_code=status)


@dataclass(frozen=True, slots=True)
class Submitted:
    """A submitted ``application/x-www-form-urlencoded`` form: each field's values, in order."""

    fields: dict[str, list[str]]

    def get(self, name: str, default: str = "") -> str:
        """The field's first value."""
        values = self.fields.get(name)
        return values[0] if values else default

    def get_all(self, name: str) -> list[str]:
        return list(self.fields.get(name, []))


async def _submitted(request: Request) -> Submitted:
    """The form htmx sent (URL-encoded: the dashboard uploads no file, so never multipart)."""
    body = (await request.body()).decode("utf-8", "replace")
    return Submitted(parse_qs(body, keep_blank_values=True))


def _route_form(submitted: Submitted) -> RouteForm:
    first_values = {name: submitted.get(name) for name in submitted.fields}
    return RouteForm.from_fields(first_values, submitted.get_all("methods"))
