"""kairos_ui.rendering: what the AI decisions part, the routes part and the route form show."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from html.parser import HTMLParser

from kairos_client import AiDecision, RouteInfo
from kairos_client.models import RouteTest
from kairos_ui.forms import RouteForm
from kairos_ui.rendering import Renderer
from kairos_ui.schema import RouteChoices
from kairos_ui.state import DashboardState


def rows(state: DashboardState) -> dict[str, ET.Element]:
    html = Renderer().part("decisions", state).html
    body = ET.fromstring(f"<tbody>{html}</tbody>")  # raises on markup that is not well-formed
    return {row.get("data-decision", ""): row for row in body}


def cell(row: ET.Element, field: str) -> ET.Element:
    found = row.find(f"td[@data-field='{field}']")
    assert found is not None, field
    return found


def text(element: ET.Element) -> str:
    return " ".join("".join(element.itertext()).split())


def test_fallbacks_are_set_apart_and_shadow_decisions_say_whether_they_agree() -> None:
    state = DashboardState()
    made = {"time": 1_700_000_000.0, "route": "chat", "strategy": "content_analysis"}
    state.add_decision(
        AiDecision(
            id=1,
            source="fallback:timeout",
            reason="no answer in 1500 ms; heuristic",
            backend="http://127.0.0.1:9001",
            index=0,
            status=502,
            upstream_ms=12.5,
            mode="inline",
            **made,
        )
    )
    state.add_decision(
        AiDecision(
            id=2,
            source="llm",
            backend="http://127.0.0.1:9002",
            index=1,
            shadow=True,
            routed_backend="http://127.0.0.1:9001",
            agrees=False,
            mode="shadow",
            **made,
        )
    )

    by_id = rows(state)

    assert list(by_id) == ["2", "1"]
    fallback_source = cell(by_id["1"], "source").find("span")
    assert fallback_source is not None
    assert fallback_source.get("class") == "badge source source-fallback"
    assert text(cell(by_id["1"], "outcome")) == "502 upstream 12.5 ms"
    llm_source = cell(by_id["2"], "source").find("span")
    assert llm_source is not None and llm_source.get("class") == "badge source source-selector"
    assert text(cell(by_id["2"], "outcome")) == (
        "shadow balancer sent it to http://127.0.0.1:9001 disagrees"
    )


def test_no_decision_yet_reads_as_an_empty_state() -> None:
    html = Renderer().part("decisions", DashboardState()).html
    assert "No AI routing decisions yet" in html


def inputs(html: str) -> list[dict[str, str | None]]:
    """The attributes of every ``<input>`` in ``html``."""
    found: list[dict[str, str | None]] = []

    class Inputs(HTMLParser):
        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            if tag == "input":
                found.append(dict(attrs))

    Inputs().feed(html)
    return found


def test_the_route_form_offers_the_methods_a_schema_enumerates_and_text_otherwise() -> None:
    enumerated = RouteChoices.from_schema(
        {
            "$defs": {
                "Router": {
                    "properties": {
                        "methods": {"type": "array", "items": {"$ref": "#/$defs/Method"}},
                    }
                },
                "Method": {"enum": ["GET", "QUERY"]},
            }
        }
    )

    def methods_field(choices: RouteChoices, form: RouteForm) -> list[dict[str, str | None]]:
        html = Renderer().render(
            "fragments/route_form.html",
            form=form,
            mode="create",
            issues=[],
            message=None,
            ok=False,
            original_id=None,
            config_version=None,
            choices=choices,
            csrf_token="t",
        )
        return [field for field in inputs(html) if field.get("name") == "methods"]

    boxes = methods_field(enumerated, RouteForm(methods=["QUERY", "PURGE"]))
    assert [(b.get("type"), b.get("value"), "checked" in b) for b in boxes] == [
        ("checkbox", "GET", False),
        ("checkbox", "QUERY", True),
        ("checkbox", "PURGE", True),  # the route's own, kept so that saving does not drop it
    ]
    (text,) = methods_field(RouteChoices(), RouteForm(methods=["GET", "POST"]))
    assert (text.get("type"), text.get("value")) == (None, "GET POST")


def test_a_new_route_wears_its_badges_before_its_first_figures() -> None:
    state = DashboardState()
    state.routes = [
        RouteInfo.model_validate(
            {
                "id": "inherits",
                "index": 0,
                "config": {"external_path": "/x", "internal_path": "/"},
                "policies": {"rate_limit": "500 requests / 60 s", "rate_limit_scope": "global"},
            }
        )
    ]

    html = Renderer().part("routes", state).html

    row = ET.fromstring(f"<tbody>{html}</tbody>").find("tr[@data-route='inherits']")
    assert row is not None
    badge = row.find(".//span[@class='badge badge-policy']")
    assert badge is not None
    assert (badge.text, badge.get("title")) == ("rate limit", "500 requests / 60 s (global policy)")


def test_a_route_test_without_a_report_shows_the_outcome_and_the_request_asked() -> None:
    result = RouteTest(outcome="not_found", status=404, message="no route matches")

    html = Renderer().render(
        "fragments/route_test.html",
        result=result,
        report=result.report,
        method="GET",
        path="/nowhere?x=1",
        asked_ai=False,
        csrf_token="t",
    )

    assert "not_found" in html and "no route matches" in html
    assert "GET /nowhere?x=1" in html
    assert "Full report" not in html
