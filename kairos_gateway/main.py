"""``kairos-gateway [CONFIG]``: validate the config, then serve the proxy and admin listeners.

A config that does not validate is reported (the same issues ``kairos validate`` prints, the
``server.workers`` rule included) and the process exits with status 1 before binding any port;
``server.workers`` above 1 runs that many worker processes on the proxy listener and one admin
process (:mod:`kairos_gateway.workers`);
the warnings of one that does are logged at WARNING. Both listeners are bound before either is
announced or served: if one address cannot be bound (in use, not local, not permitted), one line
on stderr names it and the reason, and the process exits with status 1 with nothing running.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import socket
import sys
from pathlib import Path

from sanic import Sanic
from sanic.server.socket import bind_socket

from kairos_core import __version__
from kairos_core.config import ConfigError, default_config_path, load_config
from kairos_core.forwarding import is_loopback
from kairos_gateway.accesslog import BatchedStreamHandler
from kairos_gateway.admin import build_admin_app
from kairos_gateway.app import build_proxy_app
from kairos_gateway.proxy_protocol import ProxyProtocol
from kairos_gateway.runtime import GatewayRuntime, log_config_issues
from kairos_gateway.workers import serve_workers

LISTEN_BACKLOG = 1024


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="kairos-gateway", description="Kairos: a resilience-first HTTP gateway."
    )
    parser.add_argument(
        "config",
        nargs="?",
        default=str(default_config_path()),
        help="config file (default: $KAIROS_CONFIG_PATH or ./config.json)",
    )
    parser.add_argument("--host", help="proxy listener host (overrides server.host)")
    parser.add_argument("--port", type=int, help="proxy listener port (overrides server.port)")
    parser.add_argument("--admin-host", help="admin listener host (overrides admin.host)")
    parser.add_argument("--admin-port", type=int, help="admin listener port (overrides admin.port)")
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    parser.add_argument("--log-format", default="text", choices=["text", "json"])
    parser.add_argument(
        "--upstream-client",
        default="h1",
        choices=["h1", "aiohttp"],
        help="upstream HTTP client: Kairos's keep-alive HTTP/1.1 client (default) or aiohttp",
    )
    parser.add_argument("--version", action="version", version=f"kairos-gateway {__version__}")
    return parser.parse_args(argv)


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.name == "kairos.access":
            try:
                document = {"time": self.formatTime(record), **json.loads(message)}
                return json.dumps(document)
            except ValueError:
                pass
        return json.dumps(
            {
                "time": self.formatTime(record),
                "level": record.levelname.lower(),
                "logger": record.name,
                "message": message,
            }
        )


def configure_logging(level: str, log_format: str) -> None:
    formatter: logging.Formatter = (
        _JsonFormatter()
        if log_format == "json"
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    batched = BatchedStreamHandler(sys.stderr)  # the access log writes a batch at a time
    batched.setFormatter(formatter)
    access = logging.getLogger("kairos.access")
    access.handlers[:] = [batched]
    access.propagate = False
    for noisy in ("sanic.root", "sanic.server", "sanic.access", "websockets"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    configure_logging(args.log_level, args.log_format)
    path = Path(args.config)
    try:
        loaded = load_config(path)
    except ConfigError as exc:
        print(f"✗ {path}: the config is invalid; nothing was started.", file=sys.stderr)
        for issue in exc.issues:
            print(f"  {issue.severity}: {issue}", file=sys.stderr)
        raise SystemExit(1) from None
    log_config_issues(loaded)

    config = loaded.config
    runtime = GatewayRuntime(
        loaded, path, log_format=args.log_format, upstream_client=args.upstream_client
    )
    runtime.admin_host = args.admin_host or config.admin.host
    proxy = build_proxy_app(runtime)
    proxy_host, proxy_port = args.host or config.server.host, args.port or config.server.port
    admin_host = args.admin_host or config.admin.host
    admin_port = args.admin_port or config.admin.port
    if not is_loopback(admin_host) and not config.admin.token:
        print(
            f"✗ refusing to serve the admin API on non-loopback host {admin_host!r} without a "
            "token: set admin.token or KAIROS_ADMIN_TOKEN",
            file=sys.stderr,
        )
        raise SystemExit(1)
    proxy_socket = bind_listener("proxy", proxy_host, proxy_port)
    try:
        admin_socket = bind_listener("admin", admin_host, admin_port)
    except SystemExit:
        proxy_socket.close()
        raise
    runtime.mark_listening()  # both listeners are bound: /ready may say so
    proxy.ctx.proxy_listener.socket = proxy_socket
    workers = config.server.workers
    admin = build_admin_app(runtime) if workers == 1 else None  # else the admin process's
    logging.getLogger("kairos.gateway").info(
        "kairos %s: proxy on http://%s:%d (%d worker%s), admin on http://%s:%d, %d route(s)",
        __version__,
        proxy_host,
        proxy_port,
        workers,
        "" if workers == 1 else "s",
        admin_host,
        admin_port,
        len(config.routers),
    )
    # Everything built so far lives as long as the process: keep it out of the collector's scans,
    # and collect young objects less often (each request allocates many short-lived ones).
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
    if admin is None:
        serve_workers(runtime, proxy, proxy_socket, admin_socket, workers)
        return
    proxy.prepare(sock=proxy_socket, protocol=ProxyProtocol, single_process=True, motd=False)
    admin.prepare(sock=admin_socket, single_process=True, motd=False)
    Sanic.serve_single(primary=proxy)


def bind_listener(name: str, host: str, port: int) -> socket.socket:
    """A listening socket on host:port, or one line on stderr and exit status 1."""
    try:
        return bind_socket(host, port, backlog=LISTEN_BACKLOG)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        print(f"✗ cannot listen on {host}:{port} ({name} listener): {reason}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
