"""The naive peer: the pass-through a user writes instead of deploying a gateway.

    .venv/bin/python benchmarks/naive_proxy.py --port 8000 --upstream http://127.0.0.1:9000

One catch-all Sanic route, one shared ``aiohttp.ClientSession``, the body streamed back. Run by
the harness as one process (``single_process``, Sanic's access log off, as Kairos at warning).
"""

from __future__ import annotations

import argparse
from typing import Any

import aiohttp
from sanic import Request, Sanic

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "host"}
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]

args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
args.add_argument("--port", type=int, required=True)
args.add_argument("--upstream", required=True)
options = args.parse_args()
app: Sanic[Any, Any] = Sanic("naive_proxy")


@app.before_server_start
async def open_session(app: Sanic[Any, Any]) -> None:
    app.ctx.session = aiohttp.ClientSession(options.upstream, auto_decompress=False)


@app.route("/", methods=METHODS, name="root")
@app.route("/<path:path>", methods=METHODS)
async def proxy(request: Request, path: str = "") -> None:
    headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
    target = request.path + (f"?{request.query_string}" if request.query_string else "")
    async with app.ctx.session.request(
        request.method, target, headers=headers, data=request.body or None
    ) as upstream:
        kept = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP}
        response = await request.respond(status=upstream.status, headers=kept)
        async for chunk in upstream.content.iter_any():
            await response.send(chunk)
        await response.eof()


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=options.port, single_process=True, access_log=False, motd=False)
