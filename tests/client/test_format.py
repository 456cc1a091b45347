"""kairos_client.format_duration: a test per sentence of its rule (the CLI and the UI use it)."""

from __future__ import annotations

import pytest

from kairos_client import format_duration


@pytest.mark.parametrize(
    ("seconds", "text"), [(0, "0.0 s"), (0.25, "0.2 s"), (2.5, "2.5 s"), (9.94, "9.9 s")]
)
def test_below_ten_seconds_one_decimal_is_kept(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (9.96, "10 s"),
        (42.7, "42 s"),
        (60, "1 min 00 s"),
        (187, "3 min 07 s"),
        (3_600, "1 h 00 min"),
        (7_512, "2 h 05 min"),
        (86_400, "1 d 0 h"),
        (273_600 + 59 * 60 + 59, "3 d 4 h"),
    ],
)
def test_from_ten_seconds_on_whole_seconds_and_the_two_leading_units(
    seconds: float, text: str
) -> None:
    assert format_duration(seconds) == text


def test_a_negative_duration_reads_as_zero() -> None:
    assert format_duration(-3.2) == "0.0 s"
