"""``kairos-ui``: serve the dashboard for one gateway (DESIGN.md §11).

``kairos-ui --gateway URL [--token T] [--host 127.0.0.1] [--port 5902]``; the gateway's admin URL
defaults to ``$KAIROS_ADMIN_URL`` (else :data:`kairos_client.DEFAULT_BASE_URL`) and the token to
``$KAIROS_ADMIN_TOKEN``. The dashboard listens on loopback unless told otherwise: it can reset
breakers and edit routes, so exposing it is a decision, not a default.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

import uvicorn

from kairos_client import DEFAULT_BASE_URL

from .app import create_app

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5902
# Open SSE streams end at shutdown; this bounds how long a stuck one can hold the process.
GRACEFUL_SHUTDOWN_S = 3


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="kairos-ui",
        description="The Kairos dashboard: live metrics, routes, breakers, AI decisions, config.",
    )
    parser.add_argument(
        "--gateway",
        default=os.environ.get("KAIROS_ADMIN_URL") or DEFAULT_BASE_URL,
        help="the gateway's admin API URL (default: $KAIROS_ADMIN_URL or %(default)s)",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("KAIROS_ADMIN_TOKEN") or None,
        help="the admin API bearer token (default: $KAIROS_ADMIN_TOKEN)",
    )
    parser.add_argument(
        "--host", default=DEFAULT_HOST, help="listen address (default: %(default)s)"
    )
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help="listen port (default: %(default)s)"
    )
    parser.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        help="a host name browsers use to reach the dashboard, besides loopback (repeatable)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        hosts = [args.host] if args.host not in ("0.0.0.0", "::") else []
        app = create_app(args.gateway, args.token, allowed_hosts=[*hosts, *args.allowed_host])
    except ValueError as exc:  # a gateway URL that is not http(s)
        print(f"kairos-ui: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"kairos-ui: dashboard on http://{args.host}:{args.port}/ for {args.gateway}", flush=True)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level="warning",
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
    )
