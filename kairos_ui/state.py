"""What the dashboard knows about the gateway: the latest figures and the recent history.

One :class:`DashboardState` lives in the UI server. The relay (:mod:`kairos_ui.relay`) is its only
writer; pages and fragments read it. The histories are bounded deques, newest first, so a
dashboard left open for weeks holds the same memory as one opened a minute ago.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Literal

from kairos_client import AiDecision, ConfigDocument, MetricsSnapshot, RouteInfo
from kairos_client.models import AiRouteStats, BackendMetrics, RouteMetrics

from .schema import RouteChoices

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
class Badge:
    """One policy a route carries, as the routes table shows it (``detail``: its tooltip)."""

    text: str
    detail: str = ""


@dataclass(frozen=True, slots=True)
class RouteRow:
    """A configured route joined with its live figures (``metrics`` is None before traffic)."""

    info: RouteInfo
    metrics: RouteMetrics | None

    @property
    def badges(self) -> list[Badge]:
        """The policies in force on the route, as the gateway resolved them
        (``RouteInfo.policies``): ``auth``, ``retry``, ``AI <mode>``, ``rate limit`` (the global
        policy too, when the route inherits it)."""
        policies = self.info.policies
        badges = []
        if policies.auth_required:
            badges.append(Badge("auth"))
        if policies.retry:
            badges.append(Badge("retry"))
        if policies.ai_mode is not None:
            badges.append(Badge(f"AI {policies.ai_mode}"))
        if policies.rate_limit is not None:
            scope = "global policy" if policies.rate_limit_scope == "global" else "route policy"
            badges.append(Badge("rate limit", f"{policies.rate_limit} ({scope})"))
        return badges


@dataclass(frozen=True, slots=True)
class AiRouteRow:
    """One AI route on the decisions page: its mode and the gateway's selector-vs-fallback
    figures (``stats`` is None until the route has decided anything)."""

    route: str
    mode: str | None
    stats: AiRouteStats | None


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
    route_choices: RouteChoices = field(default_factory=RouteChoices)

    def add_decision(self, decision: AiDecision) -> bool:
        """Keep ``decision`` in id order, newest first; False when it is already kept (a replay
        repeating the seed) or older than every decision the bounded list keeps."""
        kept = self.decisions
        if any(d.id == decision.id for d in kept):
            return False
        if not kept or decision.id > kept[0].id:
            kept.appendleft(decision)
            return True
        if len(kept) == kept.maxlen and decision.id < kept[-1].id:
            return False
        ordered = sorted([*kept, decision], key=lambda d: d.id, reverse=True)
        self.decisions = deque(ordered, maxlen=kept.maxlen)
        return True

    def ai_routes(self) -> list[AiRouteRow]:
        """Every route whose AI selector is on, in config order, then routes that decided
        before their selector was turned off or the route removed."""
        if self.snapshot is None:
            return []
        stats = {s.route: s for s in self.snapshot.ai.routes}
        rows = [
            AiRouteRow(m.route, m.ai_mode, stats.pop(m.route, None))
            for m in self.snapshot.routes
            if m.has_ai
        ]
        rows.extend(AiRouteRow(route, None, s) for route, s in stats.items())
        return rows

    def route_rows(self) -> list[RouteRow]:
        figures = {m.route: m for m in self.snapshot.routes} if self.snapshot else {}
        return [RouteRow(info, figures.get(info.id)) for info in self.routes]

    def backends(self) -> list[BackendMetrics]:
        return list(self.snapshot.backends) if self.snapshot else []

    def backend_users(self) -> dict[str, list[str]]:
        """Backend key (``scheme://host:port``) → ids of the routes that send to it, primary
        or fallback (the keys as the gateway gives them in ``RouteInfo``)."""
        users: dict[str, list[str]] = {}
        for info in self.routes:
            for key in (*info.backends, *info.fallback):
                users.setdefault(key, [])
                if info.id not in users[key]:
                    users[key].append(info.id)
        return users
