"""kairos_ui.rendering: what the AI decisions part shows for each kind of decision."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from kairos_client import AiDecision
from kairos_ui.rendering import Renderer
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
