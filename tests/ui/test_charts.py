"""kairos_ui.charts: the SVG is well-formed XML and draws what the module docstring promises."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET

import pytest

from kairos_ui.charts import Series, line_chart, sparkline

SVG = "{http://www.w3.org/2000/svg}"
NOW = 1_700_000_000.0


def parse(svg: str) -> ET.Element:
    root = ET.fromstring(svg)  # raises on anything that is not well-formed XML
    assert root.tag == f"{SVG}svg"
    return root


def polylines(root: ET.Element, index: int | None = None) -> list[ET.Element]:
    lines = root.iter(f"{SVG}polyline")
    if index is None:
        return list(lines)
    return [line for line in lines if f"series-{index}" in line.get("class", "").split()]


def coords(line: ET.Element) -> list[tuple[float, float]]:
    pairs = (pair.split(",") for pair in line.get("points", "").split())
    return [(float(x), float(y)) for x, y in pairs]


def texts(root: ET.Element, css_class: str) -> list[str]:
    return [
        el.text or "" for el in root.iter(f"{SVG}text") if css_class in el.get("class", "").split()
    ]


def every_second(seconds: range, value: float = 1.0) -> list[tuple[float, float]]:
    return [(NOW - 900 + s, value) for s in seconds]


def viewbox(root: ET.Element) -> tuple[float, float]:
    _, _, width, height = (float(n) for n in root.get("viewBox", "").split())
    return width, height


def test_one_polyline_per_continuous_series_with_its_classes() -> None:
    root = parse(
        line_chart(
            [
                Series("2xx", every_second(range(901), 5.0), css_class="ok"),
                Series("5xx", every_second(range(901), 1.0), css_class="bad"),
            ],
            title="Requests",
        )
    )
    assert len(polylines(root)) == 2
    first, second = polylines(root, 0), polylines(root, 1)
    assert len(first) == len(second) == 1
    assert first[0].get("class") == "series series-0 ok"
    assert second[0].get("class") == "series series-1 bad"
    assert root.get("role") == "img"
    assert root.get("aria-label") == "Requests: 2xx, 5xx"
    assert root.findtext(f"{SVG}title") == "Requests: 2xx, 5xx"


@pytest.mark.parametrize(
    "values",
    [
        [0.0] * 50,
        [1e300, 7e300, 3e300],
        [-5.0, 3.0, -1e9, 2.0],
        [math.nan, 1.0, math.inf, 2.0, -math.inf, 3.0],
        [0.001, 0.0004],
    ],
    ids=["zeros", "huge", "negative", "non-finite", "tiny"],
)
def test_every_point_lies_inside_the_viewbox(values: list[float]) -> None:
    points = [(NOW - len(values) + i, v) for i, v in enumerate(values)]
    points.append((NOW - 5000, 1e308))  # far outside the window: dropped, not squeezed in
    root = parse(line_chart([Series("r", points)], width=300, height=100))
    width, height = viewbox(root)
    drawn = [xy for line in polylines(root) for xy in coords(line)]
    assert drawn
    for x, y in drawn:
        assert 0 <= x <= width
        assert 0 <= y <= height


def test_zero_values_lie_on_the_baseline_under_a_top_of_one() -> None:
    root = parse(line_chart([Series("idle", every_second(range(60), 0.0))], height=160))
    assert texts(root, "y-label") == ["0", "0.5", "1"]
    baseline = 160 - 14
    assert {y for line in polylines(root) for _, y in coords(line)} == {baseline}


def test_a_value_at_the_top_touches_the_top_gridline() -> None:
    root = parse(line_chart([Series("r", [(NOW - 1, 0.0), (NOW, 50.0)])], unit="ms"))
    assert texts(root, "y-label") == ["0 ms", "25 ms", "50 ms"]
    (line,) = polylines(root)
    assert coords(line)[-1][1] == 14.0


def test_malicious_text_is_escaped_and_stays_text() -> None:
    name = '<script>alert("x")</script>'
    svg = line_chart(
        [Series(name, every_second(range(10)), css_class='x" onload="alert(1)')],
        title="R&D <b>",
        unit="<i>",
    )
    assert "<script" not in svg
    assert "<b>" not in svg
    assert "<i>" not in svg
    root = parse(svg)
    (line,) = polylines(root)
    assert line.findtext(f"{SVG}title") == name
    assert line.get("onload") is None
    assert line.get("class") == 'series series-0 x" onload="alert(1)'
    assert root.findtext(f"{SVG}title") == f"R&D <b>: {name}"
    assert texts(root, "y-label")[-1] == "1 <i>"


def test_control_characters_are_dropped_so_the_xml_stays_well_formed() -> None:
    root = parse(line_chart([Series("a\x00b\x1bc", every_second(range(3)))]))
    assert polylines(root)[0].findtext(f"{SVG}title") == "abc"


@pytest.mark.parametrize(
    "series",
    [[], [Series("r", [])], [Series("r", [(NOW, math.nan), (math.inf, 1.0)])]],
    ids=["no-series", "no-points", "only-non-finite"],
)
def test_empty_state(series: list[Series]) -> None:
    root = parse(line_chart(series, title="Latency"))
    assert texts(root, "empty") == ["no data yet"]
    assert polylines(root) == []
    assert root.get("aria-label") in {"Latency", "Latency: r"}


def test_a_single_point_is_a_dot_at_the_right_edge() -> None:
    root = parse(line_chart([Series("r", [(NOW, 3.0)])], width=640))
    (line,) = polylines(root)
    first, second = coords(line)
    assert first == second
    assert first[0] == 640 - 4
    assert line.get("stroke-linecap") == "round"


def test_missing_seconds_break_the_line() -> None:
    points = every_second(range(10)) + every_second(range(20, 30)) + every_second(range(40, 41))
    root = parse(line_chart([Series("r", points), Series("s", every_second(range(41)))]))
    runs = polylines(root, 0)
    assert [len(coords(line)) for line in runs] == [10, 10, 2]  # the lone sample is doubled
    assert len(polylines(root, 1)) == 1


def test_a_dropped_non_finite_sample_is_a_gap() -> None:
    points = [(NOW - 3, 1.0), (NOW - 2, math.nan), (NOW - 1, 1.0), (NOW, 1.0)]
    assert len(polylines(parse(line_chart([Series("r", points)])))) == 2


def test_coarse_sampling_is_not_mistaken_for_gaps() -> None:
    points = [(NOW - 5 * i, 1.0) for i in range(20)]
    assert len(polylines(parse(line_chart([Series("r", points)])))) == 1


@pytest.mark.parametrize(
    ("peak", "top_label"),
    [
        (0.7, "0.8"),
        (1.0, "1"),
        (7.0, "8"),
        (42.0, "50"),
        (100.0, "100"),
        (101.0, "200"),
        (250.0, "300"),
        (1234.0, "2k"),
        (5.5e6, "6M"),
        (7e300, "8e+300"),
        (-3.0, "1"),
    ],
)
def test_y_max_is_rounded_up(peak: float, top_label: str) -> None:
    root = parse(line_chart([Series("r", [(NOW - 1, 0.0), (NOW, peak)])]))
    labels = texts(root, "y-label")
    assert len(labels) == 3
    assert labels[0] == "0"
    assert labels[-1] == top_label


@pytest.mark.parametrize(
    ("window_s", "labels"),
    [
        (900, ["-15m", "-10m", "-5m", "now"]),
        (3600, ["-1h", "-40m", "-20m", "now"]),
        (90, ["-90s", "-1m", "-30s", "now"]),
    ],
)
def test_x_labels_cover_the_window(window_s: int, labels: list[str]) -> None:
    root = parse(line_chart([Series("r", [(NOW, 1.0)])], window_s=window_s))
    assert texts(root, "x-label") == labels


def test_x_axis_ends_at_the_newest_point_and_drops_older_ones() -> None:
    points = [(NOW - 1000, 9e9), (NOW - 450, 1.0), (NOW, 2.0)]
    root = parse(line_chart([Series("r", points)], width=408, window_s=900))
    (line,) = polylines(root)
    assert [x for x, _ in coords(line)] == [204.0, 404.0]
    assert texts(root, "y-label")[-1] == "2"  # the old spike no longer sets the scale


def test_sizes_must_be_positive() -> None:
    with pytest.raises(ValueError, match="window_s must be a positive number, got 0"):
        line_chart([], window_s=0)
    with pytest.raises(ValueError, match="width"):
        sparkline([1.0], width=-1)


def test_sparkline_is_a_fixed_size_decorative_polyline() -> None:
    root = parse(sparkline([1.0, 4.0, 2.0, 0.0], width=120, height=24))
    assert root.get("aria-hidden") == "true"
    assert (root.get("width"), root.get("height")) == ("120", "24")
    (line,) = polylines(root)
    drawn = coords(line)
    assert len(drawn) == 4
    assert all(0 <= x <= 120 and 0 <= y <= 24 for x, y in drawn)
    assert min(y for _, y in drawn) == drawn[1][1]  # the peak is highest


def test_sparkline_breaks_on_non_finite_values_and_handles_edges() -> None:
    assert len(polylines(parse(sparkline([1.0, math.nan, 2.0, 3.0])))) == 2
    assert polylines(parse(sparkline([]))) == []
    (dot,) = polylines(parse(sparkline([5.0])))
    assert len(set(coords(dot))) == 1
    flat = polylines(parse(sparkline([0.0, 0.0], height=24)))[0]
    assert {y for _, y in coords(flat)} == {22.5}
