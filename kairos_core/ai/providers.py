"""LLM providers: which endpoint a route's selector talks to, and the two wire formats.

Resolution (:func:`resolve`), for a route whose ``ai_policy.strategy`` is ``content_analysis``:

- provider = ``ai_policy.provider``, else ``ai.provider``, else ``heuristic``; model =
  ``strategy.content_analysis.model``, else ``ai.model``;
- ``openai`` and the OpenAI-compatible providers of kairos-rs map to their endpoints and key
  variables (table ``PROVIDERS``); ``anthropic`` uses the Messages API; ``ollama`` is a local
  OpenAI-compatible endpoint needing no key. ``ai.base_url`` replaces the endpoint of the ``ai``
  block's provider (Ollama, vLLM, llama.cpp, a proxy...); ``ai.api_key`` is its key, else the
  provider's variable (``OPENAI_API_KEY``...). ``ai.fallback_providers`` (and the route's) are
  tried in order after the first fails, within the same time bound;
- the offline heuristic serves instead, with the reason recorded, when the provider is
  ``heuristic``, when no model is named, or when a hosted provider has no key and no
  ``base_url`` (an unauthenticated call to a hosted API can only fail).

Calls (:class:`LlmClient`) use aiohttp, the HTTP client the gateway already has, on a session of
their own (``MAX_CONNECTIONS`` at most, never the proxy's pool), with a total timeout of
``ai.timeout_ms``. OpenAI-compatible: ``POST {base_url}/chat/completions`` with
``Authorization: Bearer``, ``temperature: 0`` and ``response_format: {"type": "json_object"}``;
the answer is ``choices[0].message.content``. Anthropic: ``POST {base_url}/v1/messages`` with
``x-api-key`` and ``anthropic-version: 2023-06-01``; the answer is the text blocks of
``content``. A non-2xx status, a body that is not the format's JSON, or a broken connection is
:class:`LlmError` (``error``); running out of time is ``timeout``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp

from kairos_core import __version__
from kairos_core.ai.prompt import Prompt
from kairos_core.config.models import AiConfig, AiPolicy

Wire = Literal["openai", "anthropic"]
MAX_CONNECTIONS = 32
MAX_ANSWER_TOKENS = 120


@dataclass(frozen=True, slots=True)
class KnownProvider:
    wire: Wire
    base_url: str
    key_variable: str | None


PROVIDERS: Mapping[str, KnownProvider] = {
    "openai": KnownProvider("openai", "https://api.openai.com/v1", "OPENAI_API_KEY"),
    "anthropic": KnownProvider("anthropic", "https://api.anthropic.com", "ANTHROPIC_API_KEY"),
    "mistral": KnownProvider("openai", "https://api.mistral.ai/v1", "MISTRAL_API_KEY"),
    "groq": KnownProvider("openai", "https://api.groq.com/openai/v1", "GROQ_API_KEY"),
    "xai": KnownProvider("openai", "https://api.x.ai/v1", "XAI_API_KEY"),
    "perplexity": KnownProvider("openai", "https://api.perplexity.ai", "PERPLEXITY_API_KEY"),
    "cohere": KnownProvider("openai", "https://api.cohere.ai/compatibility/v1", "COHERE_API_KEY"),
    "gemini": KnownProvider(
        "openai", "https://generativelanguage.googleapis.com/v1beta/openai", "GEMINI_API_KEY"
    ),
    "deepseek": KnownProvider("openai", "https://api.deepseek.com/v1", "DEEPSEEK_API_KEY"),
    "together": KnownProvider("openai", "https://api.together.xyz/v1", "TOGETHER_API_KEY"),
    "openrouter": KnownProvider("openai", "https://openrouter.ai/api/v1", "OPENROUTER_API_KEY"),
    "ollama": KnownProvider("openai", "http://127.0.0.1:11434/v1", None),
}
PROVIDER_NAMES: tuple[str, ...] = (*PROVIDERS, "heuristic")


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One LLM endpoint a call can go to."""

    provider: str
    wire: Wire
    base_url: str
    model: str
    api_key: str | None
    timeout_ms: int


@dataclass(frozen=True, slots=True)
class Resolved:
    """The endpoints to try in order; empty means the heuristic serves, for ``note``."""

    endpoints: tuple[Endpoint, ...]
    note: str

    @property
    def provider(self) -> str:
        return self.endpoints[0].provider if self.endpoints else "heuristic"

    @property
    def model(self) -> str | None:
        return self.endpoints[0].model if self.endpoints else None


def resolve(ai: AiConfig | None, policy: AiPolicy, environ: Mapping[str, str]) -> Resolved:
    """The rules above."""
    name = policy.provider or (ai.provider if ai is not None else "heuristic")
    if name == "heuristic":
        return Resolved((), "provider is 'heuristic'")
    model = policy.strategy.model or (ai.model if ai is not None else None)
    if not model:
        return Resolved((), f"no model named for provider {name!r} (set ai.model)")
    first = _endpoint(name, model, ai, ai.api_key if ai and ai.provider == name else None, environ)
    if isinstance(first, str):
        return Resolved((), first)
    others: list[Endpoint] = []
    for extra in (*policy.fallback_providers, *(ai.fallback_providers if ai else ())):
        endpoint = _endpoint(extra.provider, extra.model, ai, extra.api_key, environ)
        if isinstance(endpoint, Endpoint):
            others.append(endpoint)
    return Resolved((first, *others), f"{name} ({model})")


def _endpoint(
    name: str,
    model: str,
    ai: AiConfig | None,
    api_key: str | None,
    environ: Mapping[str, str],
) -> Endpoint | str:
    known = PROVIDERS.get(name)
    if known is None:
        return f"unknown provider {name!r}"
    own_block = ai is not None and ai.provider == name
    base_url = (ai.base_url if own_block and ai is not None else None) or known.base_url
    key = api_key or (environ.get(known.key_variable) if known.key_variable else None)
    hosted = known.key_variable is not None and not (own_block and ai and ai.base_url)
    if hosted and not key:
        return f"no API key for {name!r} (set {known.key_variable} or ai.api_key)"
    timeout_ms = ai.timeout_ms if ai is not None else AiConfig.model_fields["timeout_ms"].default
    return Endpoint(name, known.wire, base_url.rstrip("/"), model, key or None, timeout_ms)


class LlmError(Exception):
    """A call that produced no answer: ``kind`` is ``timeout`` or ``error``."""

    def __init__(self, kind: Literal["timeout", "error"], message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


class LlmClient:
    """Sends prompts to LLM endpoints on a session of its own."""

    def __init__(self, max_connections: int = MAX_CONNECTIONS) -> None:
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._max_connections),
                cookie_jar=aiohttp.DummyCookieJar(),
                headers={"User-Agent": f"kairos/{__version__}"},
            )
        return self._session

    async def complete(self, endpoint: Endpoint, prompt: Prompt) -> str:
        """The answer's text, or :class:`LlmError`."""
        url, headers, payload = _request(endpoint, prompt)
        timeout = aiohttp.ClientTimeout(total=endpoint.timeout_ms / 1000)
        try:
            async with self._get_session().post(
                url, data=json.dumps(payload), headers=headers, timeout=timeout
            ) as response:
                raw = await response.read()
                status = response.status
        except TimeoutError as exc:
            raise LlmError(
                "timeout", f"{endpoint.provider}: no answer within {endpoint.timeout_ms} ms"
            ) from exc
        except aiohttp.ClientError as exc:
            raise LlmError("error", f"{endpoint.provider}: {exc or type(exc).__name__}") from exc
        return _answer_text(endpoint, status, raw)

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
            await asyncio.sleep(0)


def _request(endpoint: Endpoint, prompt: Prompt) -> tuple[str, dict[str, str], dict[str, Any]]:
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if endpoint.wire == "anthropic":
        if endpoint.api_key:
            headers["x-api-key"] = endpoint.api_key
        headers["anthropic-version"] = "2023-06-01"
        payload: dict[str, Any] = {
            "model": endpoint.model,
            "max_tokens": MAX_ANSWER_TOKENS,
            "temperature": 0,
            "system": prompt.system,
            "messages": [{"role": "user", "content": prompt.user}],
        }
        return f"{endpoint.base_url}/v1/messages", headers, payload
    if endpoint.api_key:
        headers["Authorization"] = f"Bearer {endpoint.api_key}"
    payload = {
        "model": endpoint.model,
        "messages": [
            {"role": "system", "content": prompt.system},
            {"role": "user", "content": prompt.user},
        ],
        "temperature": 0,
        "max_tokens": MAX_ANSWER_TOKENS,
        "response_format": {"type": "json_object"},
    }
    return f"{endpoint.base_url}/chat/completions", headers, payload


def _answer_text(endpoint: Endpoint, status: int, raw: bytes) -> str:
    try:
        document = json.loads(raw)
    except ValueError:
        document = None
    if not 200 <= status < 300:
        message = _error_message(document) or raw[:120].decode("utf-8", "replace")
        raise LlmError("error", f"{endpoint.provider}: HTTP {status}: {message}")
    try:
        if endpoint.wire == "anthropic":
            blocks = document["content"]
            text = "".join(b["text"] for b in blocks if b.get("type") == "text")
        else:
            text = document["choices"][0]["message"]["content"]
    except (TypeError, KeyError, IndexError) as exc:
        raise LlmError("error", f"{endpoint.provider}: unexpected response shape") from exc
    if not isinstance(text, str):
        raise LlmError("error", f"{endpoint.provider}: the answer has no text")
    return text


def _error_message(document: Any) -> str | None:
    if isinstance(document, dict) and isinstance(document.get("error"), dict):
        message = document["error"].get("message")
        return str(message) if message is not None else None
    return None


__all__ = [
    "PROVIDERS",
    "PROVIDER_NAMES",
    "Endpoint",
    "LlmClient",
    "LlmError",
    "Resolved",
    "resolve",
]
