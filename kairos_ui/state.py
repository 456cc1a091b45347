"""What the dashboard knows about the gateway: the latest figures and the recent history.

One :class:`DashboardState` lives in the UI server. The relay (:mod:`kairos_ui.relay`) is its only
writer; pages and fragments read it. The histories are bounded deques, newest first, so a
dashboard left open for weeks holds the same memory as one opened a minute ago.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

from kairos_client import AiDecision, ConfigDocument, MetricsSnapshot, RouteInfo
from kairos_client.models import BackendMetrics, RouteMetrics

TRANSITIONS_KEPT = 50
RELOADS_KEPT = 20
DECISIONS_KEPT = 100

LinkState = Literal["connecting", "connected", "unreachable", "unauthorised"]


@dataclass(frozen=True, slots=True)
class GatewayLink:
    """Whether the UI server reaches the gateway, and if not, why (one line for the banner)."""

    state: LinkState = "connecting"
    detail: str = ""

    @property
    def problem(self) -> bool:
        return self.state in ("unreachable", "unauthorised")


@dataclass(frozen=True, slots=True)
class Transition:
    """One breaker state change, from a gateway ``circuit`` event."""

    time: float
    backend: str
    from_state: str
    to_state: str


@dataclass(frozen=True, slots=True)
class ReloadRecord:
    """One config apply or rejection, from a gateway ``reload`` event."""

    time: float
    result: str
    reason: str
    version: str | None
    errors: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RouteRow:
    """A configured route joined with its live figures (``metrics`` is None before traffic)."""

    info: RouteInfo
    metrics: RouteMetrics | None

    @property
    def badges(self) -> list[str]:
        """Which policies the route carries: ``auth``, ``retry``, ``AI``, ``rate limit``."""
        config: dict[str, Any] = self.info.config
        if self.metrics is not None:
            flags = (
                self.metrics.auth_required,
                self.metrics.has_retry,
                self.metrics.has_ai,
                self.metrics.has_rate_limit,
            )
        else:
            ai_policy = config.get("ai_policy")
            flags = (
                bool(config.get("auth_required")),
                config.get("retry") is not None,
                isinstance(ai_policy, dict) and bool(ai_policy.get("enabled")),
                config.get("rate_limit") is not None,
            )
        names = ("auth", "retry", "AI", "rate limit")
        return [name for name, on in zip(names, flags, strict=True) if on]


@dataclass
class DashboardState:
    """The latest snapshot, the configured routes and the recent events; see the module doc."""

    link: GatewayLink = GatewayLink()
    snapshot: MetricsSnapshot | None = None
    routes: list[RouteInfo] = field(default_factory=list)
    config: ConfigDocument | None = None
    transitions: deque[Transition] = field(default_factory=lambda: deque(maxlen=TRANSITIONS_KEPT))
    reloads: deque[ReloadRecord] = field(default_factory=lambda: deque(maxlen=RELOADS_KEPT))
    decisions: deque[AiDecision] = field(default_factory=lambda: deque(maxlen=DECISIONS_KEPT))

    def route_rows(self) -> list[RouteRow]:
        figures = {m.route: m for m in self.snapshot.routes} if self.snapshot else {}
        return [RouteRow(info, figures.get(info.id)) for info in self.routes]

    def backends(self) -> list[BackendMetrics]:
        return list(self.snapshot.backends) if self.snapshot else []

    def backend_users(self) -> dict[str, list[str]]:
        """Backend key (``scheme://host:port``) → ids of the routes that send to it."""
        users: dict[str, list[str]] = {}
        for info in self.routes:
            for key in _backend_keys(info.config):
                users.setdefault(key, [])
                if info.id not in users[key]:
                    users[key].append(info.id)
        return users


def _backend_keys(router: dict[str, Any]) -> list[str]:
    entries: list[Any] = []
    if "host" in router and "port" in router:
        entries.append(router)
    for pool in ("backends", "fallback"):
        value = router.get(pool)
        if isinstance(value, list):
            entries.extend(value)
    return [
        f"{entry['host']}:{entry['port']}"
        for entry in entries
        if isinstance(entry, dict) and "host" in entry and "port" in entry
    ]
