"""kairos_ui.schema: the route form's choices, read from the config schema the gateway serves,
and fetched by the relay once per config version."""

from __future__ import annotations

from typing import Any, get_args

from kairos_client import ConfigDocument
from kairos_core.config import config_schema
from kairos_core.config.models import PROTOCOLS, BalancingStrategy
from kairos_ui.broadcast import Broadcaster
from kairos_ui.relay import GatewayRelay
from kairos_ui.rendering import Renderer
from kairos_ui.schema import Choice, RouteChoices
from kairos_ui.state import DashboardState


def test_the_gateway_schema_gives_the_strategies_and_protocols_with_their_defaults() -> None:
    choices = RouteChoices.from_schema(config_schema())

    assert choices.load_balancing_strategy == Choice(get_args(BalancingStrategy), "round_robin")
    assert choices.protocol == Choice(PROTOCOLS, "http")


def test_enums_are_found_through_items_any_of_and_refs() -> None:
    schema = {
        "$defs": {
            "Router": {
                "properties": {
                    "methods": {"type": "array", "items": {"enum": ["GET", "POST"]}},
                    "protocol": {"anyOf": [{"type": "null"}, {"$ref": "#/$defs/Protocol"}]},
                    "load_balancing_strategy": {"$ref": "#/$defs/Loop"},
                }
            },
            "Protocol": {"enum": ["http", "websocket"], "default": "http"},
            "Loop": {"$ref": "#/$defs/Loop"},
        }
    }

    choices = RouteChoices.from_schema(schema)

    assert choices.methods == Choice(("GET", "POST"))
    assert choices.protocol == Choice(("http", "websocket"))  # the field sets no default
    assert choices.load_balancing_strategy == Choice()  # a loop of references ends


def test_no_schema_or_an_unexpected_shape_offers_no_choices() -> None:
    assert RouteChoices.from_schema(None) == RouteChoices()
    assert RouteChoices.from_schema({"$defs": []}) == RouteChoices()
    assert RouteChoices.from_schema({"$defs": {"Router": {"properties": {"methods": 3}}}}) == (
        RouteChoices()
    )


class _Admin:
    """The SDK calls the relay makes to refresh the config, counted."""

    def __init__(self) -> None:
        self.version = "v1"
        self.schema_calls = 0

    async def config(self) -> ConfigDocument:
        return ConfigDocument(config={"routers": []}, config_version=self.version, source="-")

    async def routes(self) -> list[Any]:
        return []

    async def config_schema(self) -> dict[str, Any]:
        self.schema_calls += 1
        return config_schema()


async def test_the_relay_reads_the_schema_once_per_config_version() -> None:
    admin = _Admin()
    state = DashboardState()
    relay = GatewayRelay(admin, state, Renderer(), Broadcaster())  # type: ignore[arg-type]

    await relay.refresh_config()
    await relay.refresh_config()
    assert admin.schema_calls == 1
    assert state.route_choices.protocol.values == PROTOCOLS

    admin.version = "v2"
    await relay.refresh_config()
    assert admin.schema_calls == 2
