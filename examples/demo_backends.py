"""Demo backends for `make run`: three small HTTP services in one process.

    python examples/demo_backends.py [--ports 9001,9002,9003] [--host 127.0.0.1]

The services are named users, orders and llm-ish (in port order). Each one serves the same
endpoints and names itself in every body and in `X-Upstream`, so a balanced route shows which
backend answered:

    GET /users, GET /users/{id}    a small user directory (404 for an unknown id)
    GET /orders                    a few orders
    GET /health                    {"status": "ok"}
    GET /stream?count=N            server-sent events, one word every 100 ms, then [DONE]
    anything else                  echo of the method, path, query, headers and body size

Ctrl-C or SIGTERM stops all three.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal

from aiohttp import web

SERVICE_NAMES = ("users", "orders", "llm-ish")
USERS = {
    1: {"id": 1, "name": "Ada Lovelace", "email": "ada@example.com"},
    2: {"id": 2, "name": "Alan Turing", "email": "alan@example.com"},
    3: {"id": 3, "name": "Grace Hopper", "email": "grace@example.com"},
}
ORDERS = [
    {"id": "o-1001", "user_id": 1, "total_cents": 4200, "status": "shipped"},
    {"id": "o-1002", "user_id": 3, "total_cents": 1999, "status": "pending"},
]
STREAM_WORDS = ("Kairos", "keeps", "traffic", "flowing", "while", "backends", "misbehave", ".")
STREAM_INTERVAL_S = 0.1
SERVICE = web.AppKey("service", str)


def reply(request: web.Request, body: object, status: int = 200) -> web.Response:
    return web.json_response({"service": request.app[SERVICE], "data": body}, status=status)


async def list_users(request: web.Request) -> web.Response:
    return reply(request, list(USERS.values()))


async def get_user(request: web.Request) -> web.Response:
    user_id = request.match_info["id"]
    user = USERS.get(int(user_id)) if user_id.isdigit() else None
    if user is None:
        return reply(request, {"error": f"user {user_id!r} not found"}, status=404)
    return reply(request, user)


async def list_orders(request: web.Request) -> web.Response:
    return reply(request, ORDERS)


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "service": request.app[SERVICE]})


async def stream(request: web.Request) -> web.StreamResponse:
    raw_count = request.query.get("count", "")
    count = int(raw_count) if raw_count.isdigit() else len(STREAM_WORDS)
    response = web.StreamResponse(headers={"Cache-Control": "no-cache"})
    response.content_type = "text/event-stream"
    await response.prepare(request)
    for i in range(count):
        token = STREAM_WORDS[i % len(STREAM_WORDS)]
        event = {"service": request.app[SERVICE], "i": i, "token": token}
        await response.write(f"data: {json.dumps(event)}\n\n".encode())
        await asyncio.sleep(STREAM_INTERVAL_S)
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


async def echo(request: web.Request) -> web.Response:
    body_bytes = 0
    async for chunk in request.content.iter_any():
        body_bytes += len(chunk)
    info = {"method": request.method, "path": request.path, "query": request.query_string}
    return reply(request, {**info, "headers": dict(request.headers), "body_bytes": body_bytes})


async def stamp_service(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["X-Upstream"] = request.app[SERVICE]


def create_app(service: str) -> web.Application:
    app = web.Application()
    app[SERVICE] = service
    app.on_response_prepare.append(stamp_service)
    app.router.add_get("/users", list_users)
    app.router.add_get("/users/{id}", get_user)
    app.router.add_get("/orders", list_orders)
    app.router.add_get("/health", health)
    app.router.add_get("/stream", stream)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


async def serve(host: str, ports: list[int]) -> None:
    runners: list[web.AppRunner] = []
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        for service, port in zip(SERVICE_NAMES, ports, strict=False):
            runner = web.AppRunner(create_app(service), shutdown_timeout=1.0)
            await runner.setup()
            runners.append(runner)
            try:
                await web.TCPSite(runner, host, port).start()
            except OSError as exc:
                raise SystemExit(f"demo backend {service}: {exc.strerror}") from None
            print(f"demo backend {service:<8} http://{host}:{port}", flush=True)
        await stop.wait()
        print("demo backends stopping", flush=True)
    finally:
        for runner in runners:
            await runner.cleanup()


def parse_ports(text: str) -> list[int]:
    try:
        ports = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of ports"
        ) from None
    if not 1 <= len(ports) <= len(SERVICE_NAMES) or not all(0 < p < 65536 for p in ports):
        raise argparse.ArgumentTypeError(f"give 1 to {len(SERVICE_NAMES)} ports in 1..65535")
    return ports


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the Kairos demo backends.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--ports", type=parse_ports, default=[9001, 9002, 9003])
    args = parser.parse_args()
    asyncio.run(serve(args.host, args.ports))


if __name__ == "__main__":
    main()
