"""kairos_ui.formatting: the dashboard's durations are the SDK's, and a missing value is a dash."""

from __future__ import annotations

from kairos_ui.formatting import MISSING, duration, until

NOW = 1_700_000_000.0


def test_uptimes_and_delays_read_as_the_cli_writes_them() -> None:
    assert duration(7_512) == "2 h 05 min"
    assert duration(None) == MISSING
    assert until(NOW + 2.5, NOW) == "in 2.5 s"
    assert until(NOW + 187, NOW) == "in 3 min 07 s"
    assert until(NOW - 1, NOW) == "due"
    assert until(None, NOW) == MISSING
