"""``create_app``: the dashboard as a Starlette application.

One app holds one :class:`~kairos_client.AsyncKairosClient`, one
:class:`~kairos_ui.state.DashboardState` and one :class:`~kairos_ui.relay.GatewayRelay`
(started with the app, stopped with it). URLs:

- pages: ``GET /`` (overview), ``/routes``, ``/backends`` (backends & circuits), ``/decisions``
  (AI decisions), ``/config``;
- ``GET /ui/events``: the browser's one SSE stream; its events are the live parts of
  :data:`kairos_ui.rendering.LIVE_PARTS` (``banner``, ``overview``, ``routes``, ``backends``,
  ``transitions``, ``decisions``, ``ai``, ``reloads``, ``config``);
- ``GET /ui/charts``: the overview's charts (htmx polls it every 5 s);
- ``GET /ui/routes/form[?id=ROUTE]``: the create (or edit) route form;
- ``POST /ui/routes``, ``/ui/routes/update``, ``/ui/routes/delete``: route changes;
  ``POST /ui/route-test``: the dry run;
- ``POST /ui/circuits/reset``, ``/ui/circuits/open``: breaker buttons (form field ``backend``);
- ``POST /ui/config/validate``, ``/ui/config/reload``;
- ``GET /ui/health``: the dashboard's liveness, gateway link and open browser streams;
- ``/static``: the CSS and the vendored htmx.

Every POST passes :class:`~kairos_ui.csrf.CSRFMiddleware`; every answer carries the headers of
:mod:`kairos_ui.headers`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from kairos_client import AsyncKairosClient

from .broadcast import Broadcaster
from .csrf import CSRFMiddleware
from .headers import SecurityHeadersMiddleware
from .relay import GatewayRelay
from .rendering import Renderer
from .state import DashboardState
from .views import Dashboard

STATIC_DIR = Path(__file__).parent / "static"


def create_app(
    gateway_url: str, token: str | None, *, allowed_hosts: Sequence[str] = ()
) -> Starlette:
    """The dashboard for the admin API at ``gateway_url`` (``token``: its bearer token).

    Only requests whose ``Host`` is loopback or one of ``allowed_hosts`` are served: a page on
    another site that rebinds its DNS name to this machine is refused (400) before the CSRF
    check, which compares ``Origin`` with ``Host``, could be fooled.
    """
    client = AsyncKairosClient(gateway_url, token=token or "")
    state = DashboardState()
    renderer = Renderer()
    broadcaster = Broadcaster()
    relay = GatewayRelay(client, state, renderer, broadcaster)
    dashboard = Dashboard(client, state, renderer, broadcaster, relay)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        relay.start()
        try:
            yield
        finally:
            await relay.stop()
            await client.close()

    routes = [
        Route("/", dashboard.overview),
        Route("/routes", dashboard.routes),
        Route("/backends", dashboard.backends),
        Route("/decisions", dashboard.decisions),
        Route("/config", dashboard.config),
        Route("/ui/events", dashboard.events),
        Route("/ui/charts", dashboard.charts),
        Route("/ui/health", dashboard.health),
        Route("/ui/routes/form", dashboard.route_form),
        Route("/ui/routes", dashboard.create_route, methods=["POST"]),
        Route("/ui/routes/update", dashboard.update_route, methods=["POST"]),
        Route("/ui/routes/delete", dashboard.delete_route, methods=["POST"]),
        Route("/ui/route-test", dashboard.route_test, methods=["POST"]),
        Route("/ui/circuits/reset", dashboard.reset_circuit, methods=["POST"]),
        Route("/ui/circuits/open", dashboard.open_circuit, methods=["POST"]),
        Route("/ui/config/validate", dashboard.validate_config, methods=["POST"]),
        Route("/ui/config/reload", dashboard.reload_config, methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
    ]
    return Starlette(
        routes=routes,
        middleware=[
            Middleware(SecurityHeadersMiddleware),  # outermost: every answer, refusals too
            Middleware(
                TrustedHostMiddleware,
                allowed_hosts=["127.0.0.1", "localhost", "[::1]", "::1", *allowed_hosts],
            ),
            Middleware(CSRFMiddleware),
        ],
        exception_handlers={404: dashboard.not_found, 500: dashboard.server_error},
        lifespan=lifespan,
    )
