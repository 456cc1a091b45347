"""``route-test --live``: breaker and health state of each backend, from a running gateway.

Reads ``GET /api/circuits`` on the admin listener (DESIGN.md §7) and returns a map backend key →
state for :func:`kairos_core.dryrun.plan_request`. The answer is read as a list of entries (bare,
or under ``"circuits"``), or as an object keyed by backend; each entry names its backend
(``backend`` or ``key``) and its breaker ``state``, and a backend reported unhealthy (``"healthy":
false`` or ``"health": "unhealthy"``) whose breaker is closed counts as ``unhealthy``.
"""

from __future__ import annotations

from typing import Any

import httpx

DEFAULT_ADMIN_URL = "http://127.0.0.1:5901"
TIMEOUT_S = 5.0


class LiveStateError(Exception):
    """The admin API could not give the state; ``exit_code`` follows DESIGN.md §9 (3, or 4)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


def fetch_backend_states(base_url: str, token: str | None) -> dict[str, str]:
    """Backend key → ``closed`` / ``open`` / ``half_open`` / ``unhealthy`` from the admin API."""
    url = base_url.rstrip("/") + "/api/circuits"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        response = httpx.get(url, headers=headers, timeout=TIMEOUT_S)
    except httpx.HTTPError as exc:
        raise LiveStateError(f"cannot reach the admin API at {base_url}: {exc}", 3) from exc
    if response.status_code in (401, 403):
        raise LiveStateError(
            f"the admin API at {base_url} refused the token (HTTP {response.status_code}); "
            "pass --admin-token or set KAIROS_ADMIN_TOKEN",
            4,
        )
    if response.status_code != 200:
        raise LiveStateError(f"{url} answered HTTP {response.status_code}", 3)
    try:
        document = response.json()
    except ValueError as exc:
        raise LiveStateError(f"{url} did not answer JSON", 3) from exc
    return _states(document)


def _states(document: Any) -> dict[str, str]:
    items: Any = document
    if isinstance(document, dict) and isinstance(document.get("circuits"), list | dict):
        items = document["circuits"]
    if isinstance(items, dict):
        items = [
            {"backend": key, **(value if isinstance(value, dict) else {"state": value})}
            for key, value in items.items()
        ]
    states: dict[str, str] = {}
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, dict):
            continue
        key = item.get("backend") or item.get("key")
        if not isinstance(key, str):
            continue
        state = str(item.get("state") or "closed").lower().replace("-", "_")
        unhealthy = item.get("healthy") is False or item.get("health") == "unhealthy"
        states[key] = "unhealthy" if unhealthy and state == "closed" else state
    return states
