"""An LLM stand-in: one aiohttp server speaking the OpenAI chat-completions and the Anthropic
messages wire formats, steered at run time (``python -m tests.support.llm --port P``).

Endpoints:

- ``POST /v1/chat/completions`` (OpenAI): answers ``{"id", "object": "chat.completion",
  "created", "model", "choices": [{"index": 0, "message": {"role": "assistant", "content"},
  "finish_reason": "stop"}], "usage"}``; an error is ``{"error": {"message", "type", "code"}}``.
  A request must carry ``Authorization: Bearer <key>`` when a key is set (401 otherwise).
- ``POST /v1/messages`` (Anthropic): requires ``x-api-key`` (when a key is set) and
  ``anthropic-version``; answers ``{"id", "type": "message", "role": "assistant", "model",
  "content": [{"type": "text", "text"}], "stop_reason": "end_turn", "usage"}``; an error is
  ``{"type": "error", "error": {"type", "message"}}``.

What the assistant's text is, by ``behavior`` (``POST /_control``): ``good`` answers
``{"index": <index>, "reason": "<reason>"}`` (``index`` from the control state; ``-1`` means "the
first candidate listed in the prompt"), ``garbage`` answers prose, ``out_of_range`` answers index
99, ``fail`` answers HTTP ``status`` (500) with the format's error body, ``hang`` never answers.
``delay_ms`` is waited before any answer. ``GET /_calls`` lists every request received (headers
as ``[name, value]`` pairs, the JSON body); ``POST /_calls/reset`` clears it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

import httpx
from aiohttp import web

from .procs import REPO_ROOT, ManagedProcess, free_port, wait_for_port

_FIRST_CANDIDATE = re.compile(r"- index (\d+):")


@dataclass
class Control:
    behavior: str = "good"
    index: int = -1
    reason: str = "stand-in choice"
    delay_ms: int = 0
    status: int = 500
    api_key: str | None = None


class StandIn:
    def __init__(self) -> None:
        self.control = Control()
        self.calls: list[dict[str, Any]] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.openai)
        app.router.add_post("/v1/messages", self.anthropic)
        app.router.add_post("/_control", self.set_control)
        app.router.add_get("/_control", self.get_control)
        app.router.add_get("/_calls", self.get_calls)
        app.router.add_post("/_calls/reset", self.reset_calls)
        return app

    async def set_control(self, request: web.Request) -> web.Response:
        self.control = Control(**await request.json())
        return web.json_response(asdict(self.control))

    async def get_control(self, request: web.Request) -> web.Response:
        return web.json_response(asdict(self.control))

    async def get_calls(self, request: web.Request) -> web.Response:
        return web.json_response({"calls": self.calls})

    async def reset_calls(self, request: web.Request) -> web.Response:
        self.calls.clear()
        return web.json_response({"calls": []})

    async def _received(self, request: web.Request) -> dict[str, Any]:
        body = await request.json()
        self.calls.append(
            {
                "t": time.time(),
                "path": request.path,
                "headers": [[k, v] for k, v in request.headers.items()],
                "body": body,
            }
        )
        if self.control.delay_ms:
            await asyncio.sleep(self.control.delay_ms / 1000)
        if self.control.behavior == "hang":
            await asyncio.sleep(3600)
        return body  # type: ignore[no-any-return]

    def _text(self, prompt: str) -> str:
        behavior = self.control.behavior
        if behavior == "garbage":
            return "I think the second one looks nice, probably."
        if behavior == "out_of_range":
            return json.dumps({"index": 99, "reason": "out of range"})
        index = self.control.index
        if index < 0:
            first = _FIRST_CANDIDATE.search(prompt)
            index = int(first.group(1)) if first else 0
        return json.dumps({"index": index, "reason": self.control.reason})

    async def openai(self, request: web.Request) -> web.Response:
        body = await self._received(request)
        key = self.control.api_key
        if key is not None and request.headers.get("Authorization") != f"Bearer {key}":
            return _openai_error(401, "invalid api key", "invalid_request_error")
        if self.control.behavior == "fail":
            return _openai_error(self.control.status, "the model is overloaded", "server_error")
        prompt = "\n".join(str(m.get("content", "")) for m in body.get("messages", []))
        return web.json_response(
            {
                "id": "chatcmpl-standin",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model", ""),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": self._text(prompt)},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20},
            }
        )

    async def anthropic(self, request: web.Request) -> web.Response:
        body = await self._received(request)
        key = self.control.api_key
        if key is not None and request.headers.get("x-api-key") != key:
            return _anthropic_error(401, "authentication_error", "invalid x-api-key")
        if "anthropic-version" not in request.headers:
            return _anthropic_error(400, "invalid_request_error", "anthropic-version required")
        if self.control.behavior == "fail":
            return _anthropic_error(self.control.status, "api_error", "overloaded")
        prompt = "\n".join(str(m.get("content", "")) for m in body.get("messages", []))
        return web.json_response(
            {
                "id": "msg_standin",
                "type": "message",
                "role": "assistant",
                "model": body.get("model", ""),
                "content": [{"type": "text", "text": self._text(prompt)}],
                "stop_reason": "end_turn",
                "stop_sequence": None,
                "usage": {"input_tokens": 10, "output_tokens": 10},
            }
        )


def _openai_error(status: int, message: str, kind: str) -> web.Response:
    return web.json_response(
        {"error": {"message": message, "type": kind, "code": None}}, status=status
    )


def _anthropic_error(status: int, kind: str, message: str) -> web.Response:
    return web.json_response(
        {"type": "error", "error": {"type": kind, "message": message}}, status=status
    )


class LlmStandIn:
    """A running stand-in process, steered from a test."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = ManagedProcess(
            [sys.executable, "-m", "tests.support.llm", "--port", str(self.port)],
            name="llm-stand-in",
            cwd=REPO_ROOT,
        )

    def start(self) -> LlmStandIn:
        self.process.start()
        wait_for_port("127.0.0.1", self.port, 20, process=self.process)
        return self

    def stop(self) -> None:
        self.process.stop()

    def control(self, **fields: Any) -> dict[str, Any]:
        """Replace the control state; omitted fields take their defaults."""
        answer: dict[str, Any] = httpx.post(f"{self.url}/_control", json=fields).json()
        return answer

    def calls(self) -> list[dict[str, Any]]:
        calls: list[dict[str, Any]] = httpx.get(f"{self.url}/_calls").json()["calls"]
        return calls

    def reset_calls(self) -> None:
        httpx.post(f"{self.url}/_calls/reset")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    web.run_app(StandIn().app(), host="127.0.0.1", port=args.port, print=None)


if __name__ == "__main__":
    main()
