"""The UI server's one connection to the gateway's event stream, fanned out to every browser.

:class:`GatewayRelay` runs two background tasks for the life of the app:

- the *reader* seeds :class:`~kairos_ui.state.DashboardState` through the SDK (metrics, routes,
  config, the config schema the route form reads its choices from, AI decisions), then follows
  ``events()``: ``snapshot`` → the live figures, ``circuit`` → the transitions list, ``reload`` →
  the reload history, ``ai_decision`` → the decisions table, ``route`` (or a snapshot carrying a
  new ``config_version``) → routes and config fetched again, with the schema once per config
  version (and on every reconnection: the gateway may have been upgraded).
  When the gateway cannot be reached, refuses the token or ends the stream, the banner part says so
  and the reader tries again after a backoff (0.5 s doubling to ``max_backoff_s``, back to 0.5 s
  once connected). It resumes with ``Last-Event-ID``, so no transition is missed across a blip;
  the first connection asks for the gateway's whole replay buffer, so the lists start filled.
- the *publisher* renders the parts marked changed and broadcasts them. Marks made within
  ``coalesce_s`` of each other go out as one render, so a replay burst of a thousand events costs
  a handful of renders, and no renders happen while no browser is connected.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Iterable
from typing import Any, cast

from pydantic import ValidationError

from kairos_client import (
    AiDecision,
    AsyncKairosClient,
    Event,
    KairosAPIError,
    KairosAuthError,
    KairosError,
    MetricsSnapshot,
)

from .broadcast import Broadcaster
from .rendering import LIVE_PARTS, SNAPSHOT_PARTS, Renderer
from .schema import RouteChoices
from .state import DECISIONS_KEPT, DashboardState, GatewayLink, ReloadRecord, Transition

log = logging.getLogger("kairos.ui")

INITIAL_BACKOFF_S = 0.5
DEFAULT_MAX_BACKOFF_S = 5.0
DEFAULT_COALESCE_S = 0.2
STREAM_ENDED = "the gateway ended its event stream"
NOT_AUTHORISED = (
    "the gateway refused the admin token; start kairos-ui with the right --token "
    "(or KAIROS_ADMIN_TOKEN)"
)


def link_for(error: KairosError) -> GatewayLink:
    """The banner state for an SDK error: unauthorised for a refused token, else unreachable."""
    if isinstance(error, KairosAuthError):
        return GatewayLink("unauthorised", NOT_AUTHORISED)
    if isinstance(error, KairosAPIError):
        return GatewayLink("unreachable", f"the admin API answered {error.status} {error.type}")
    return GatewayLink("unreachable", str(error))


class GatewayRelay:
    """Keeps ``state`` current from the gateway and pushes changed parts to ``broadcaster``."""

    def __init__(
        self,
        client: AsyncKairosClient,
        state: DashboardState,
        renderer: Renderer,
        broadcaster: Broadcaster,
        *,
        max_backoff_s: float = DEFAULT_MAX_BACKOFF_S,
        coalesce_s: float = DEFAULT_COALESCE_S,
    ) -> None:
        self._client = client
        self._state = state
        self._renderer = renderer
        self._broadcaster = broadcaster
        self._max_backoff_s = max_backoff_s
        self._coalesce_s = coalesce_s
        self._dirty: set[str] = set()
        self._changed = asyncio.Event()
        self._known_version: str | None = None
        self._schema_version: str | None = None  # the config version the schema was read at
        self._seeded_at = 0.0  # gateway event times before this are replays (same clock assumed)
        self._tasks: list[asyncio.Task[None]] = []

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._read_forever(), name="kairos-ui-reader"),
            asyncio.create_task(self._publish_forever(), name="kairos-ui-publisher"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    # --- what views call ------------------------------------------------------------------------

    def mark(self, parts: Iterable[str]) -> None:
        """Schedule ``parts`` for a render and broadcast."""
        self._dirty.update(parts)
        self._changed.set()

    async def refresh_config(self) -> None:
        """Fetch the config and the routes again (after a change), and the config schema once
        per config version; raises the SDK's errors."""
        document = await self._client.config()
        routes = await self._client.routes()
        if document.config_version != self._schema_version:
            schema = await self._client.config_schema()
            self._state.route_choices = RouteChoices.from_schema(schema)
            self._schema_version = document.config_version
        self._state.config = document
        self._state.routes = routes
        self._known_version = document.config_version
        self.mark(("routes", "backends", "config"))

    # --- reader ---------------------------------------------------------------------------------

    async def _read_forever(self) -> None:
        delay_s = INITIAL_BACKOFF_S
        last_event_id = 0  # first connection: the gateway's whole replay buffer
        while True:
            try:
                await self._seed()
                self._set_link(GatewayLink("connected"))
                delay_s = INITIAL_BACKOFF_S
                events = cast(
                    AsyncGenerator[Event, None],
                    self._client.events(last_event_id=last_event_id, reconnect=False),
                )
                async with contextlib.aclosing(events):
                    async for event in events:
                        last_event_id = event.id
                        await self._handle(event)
                link = GatewayLink("unreachable", STREAM_ENDED)
            except KairosError as exc:
                link = link_for(exc)
            except Exception:  # a bug here must not end live updates for good
                log.exception("reading the gateway's event stream failed")
                link = GatewayLink("unreachable", "the dashboard failed to read the event stream")
            self._set_link(link)
            await asyncio.sleep(delay_s)
            delay_s = min(delay_s * 2, self._max_backoff_s)

    async def _seed(self) -> None:
        self._seeded_at = time.time()
        self._schema_version = None
        snapshot = await self._client.metrics()
        decisions = await self._client.ai_decisions(DECISIONS_KEPT)
        await self.refresh_config()
        self._state.snapshot = snapshot
        self._state.decisions.clear()
        for decision in reversed(decisions):  # oldest first: each one goes on top
            self._state.add_decision(decision)
        self.mark(LIVE_PARTS)

    def _set_link(self, link: GatewayLink) -> None:
        if link == self._state.link:
            return
        if link.problem:
            log.warning("gateway %s: %s; retrying in the background", link.state, link.detail)
        else:
            log.info("gateway %s", link.state)
        self._state.link = link
        self.mark(("banner",))

    async def _handle(self, event: Event) -> None:
        data: dict[str, Any] = event.data
        # Replayed events older than the seed only fill the histories: the seed already holds
        # newer figures, routes and config, so they never overwrite it or trigger refetches.
        replayed = event.time < self._seeded_at
        try:
            if event.type == "snapshot" and replayed:
                return
            if event.type == "snapshot":
                await self._on_snapshot(MetricsSnapshot.model_validate(data))
            elif event.type == "circuit":
                transition = Transition(event.time, data["backend"], data["from"], data["to"])
                self._state.transitions.appendleft(transition)
                self.mark(("transitions",))
            elif event.type == "reload":
                self._state.reloads.appendleft(_reload_record(event))
                self.mark(("reloads",))
                fresh = data.get("version") != self._known_version
                if data.get("result") == "success" and fresh and not replayed:
                    await self.refresh_config()
            elif event.type == "route" and not replayed:
                await self.refresh_config()
            elif event.type == "ai_decision":
                self._on_decision(AiDecision.model_validate(data))
        except (KeyError, TypeError, ValidationError) as exc:
            log.warning("ignored a malformed %r event %s: %s", event.type, event.id, exc)

    async def _on_snapshot(self, snapshot: MetricsSnapshot) -> None:
        self._state.snapshot = snapshot
        self.mark(SNAPSHOT_PARTS)
        if snapshot.config_version and snapshot.config_version != self._known_version:
            await self.refresh_config()

    def _on_decision(self, decision: AiDecision) -> None:
        if self._state.add_decision(decision):  # False: the replay repeating a seeded one
            self.mark(("decisions",))

    # --- publisher ------------------------------------------------------------------------------

    async def _publish_forever(self) -> None:
        while True:
            await self._changed.wait()
            await asyncio.sleep(self._coalesce_s)
            self._changed.clear()
            dirty, self._dirty = self._dirty, set()
            if not self._broadcaster.subscriber_count:
                continue
            names = [name for name in LIVE_PARTS if name in dirty]
            try:
                fragments = self._renderer.parts(self._state, names)
            except Exception:  # a template bug costs one update, not every later one
                log.exception("rendering %s failed", ", ".join(names))
                continue
            self._broadcaster.publish(fragments)


def _reload_record(event: Event) -> ReloadRecord:
    data: dict[str, Any] = event.data
    errors = data.get("errors") or []
    return ReloadRecord(
        time=event.time,
        result=str(data["result"]),
        reason=str(data.get("reason", "")),
        version=data.get("version"),
        errors=tuple(str(error) for error in errors),
    )
