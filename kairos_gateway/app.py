"""The proxy listener's Sanic app: lifecycle only; requests are served by ``ProxyProtocol``.

Sanic binds, accepts and runs the process; :class:`~kairos_gateway.proxy_protocol.ProxyProtocol`
speaks HTTP/1.1 on every connection. The app starts and stops the runtime, and owns the shutdown
signals. At SIGTERM or SIGINT:

1. ``runtime.draining`` becomes true at once: ``/ready`` answers 503 from then on, and every
   response says ``Connection: close``; one INFO line says how many connections are drained;
2. for ``server.shutdown_delay_s`` (0 by default) the proxy listener still accepts, so a load
   balancer polling ``/ready`` stops sending before the listener closes (Traefik's
   ``requestAcceptGraceTimeout``);
3. the proxy listener stops accepting, idle connections close, and requests in flight get up to
   ``server.graceful_shutdown_s`` to finish — the admin listener keeps answering all the while;
4. then the process stops (what is left is cut) and one more line says how long it took.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from typing import Any

from sanic import HTTPResponse, Request, Sanic

from kairos_gateway.proxy_protocol import ProxyListener
from kairos_gateway.runtime import GatewayRuntime

log = logging.getLogger("kairos.gateway")


def build_proxy_app(runtime: GatewayRuntime) -> Sanic[Any, Any]:
    app: Sanic[Any, Any] = Sanic("kairos_proxy", configure_logging=False)
    listener = ProxyListener(runtime)
    app.ctx.proxy_listener = listener
    app.config.MOTD = False
    app.config.ACCESS_LOG = False
    app.config.NOISY_EXCEPTIONS = False
    app.config.GRACEFUL_SHUTDOWN_TIMEOUT = runtime.state.config.server.graceful_shutdown_s

    async def unreachable(request: Request) -> HTTPResponse:
        raise AssertionError("the proxy listener's requests are served by ProxyProtocol")

    # Sanic's router refuses to start without a route; ProxyProtocol never dispatches to it
    app.add_route(unreachable, "/", name="unreachable")

    def drain(signum: int) -> None:
        if runtime.draining:
            return
        runtime.draining = True
        server = runtime.state.config.server
        listener.drain_started_at = time.monotonic()
        log.info(
            "%s: draining %d connection(s), up to %g s",
            signal.Signals(signum).name,
            len(listener.connections),
            server.shutdown_delay_s + server.graceful_shutdown_s,
        )
        task = asyncio.get_running_loop().create_task(
            drain_then_stop(server.shutdown_delay_s, server.graceful_shutdown_s)
        )
        app.ctx.drain_task = task  # kept referenced until the process stops

    async def drain_then_stop(delay_s: float, grace_s: float) -> None:
        try:
            await asyncio.sleep(delay_s)
            await listener.drain(grace_s)
        finally:
            app.config.GRACEFUL_SHUTDOWN_TIMEOUT = 0.5  # what is left (admin streams) is cut
            app.stop(terminate=False)

    @app.before_server_start
    async def start(app: Sanic[Any, Any]) -> None:
        await runtime.start()

    @app.after_server_start
    async def own_signals(app: Sanic[Any, Any]) -> None:
        # replaces the handlers Sanic just installed, so the flag is set before anything closes
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signum, drain, signum)

    @app.after_server_stop
    async def stop(app: Sanic[Any, Any]) -> None:
        await runtime.stop()
        started = listener.drain_started_at
        drained_s = time.monotonic() - started if started is not None else 0.0
        log.info(
            "stopped after %.1f s of draining; %d connection(s) cut at the deadline",
            drained_s,
            listener.cut_connections,
        )

    return app
