"""How a duration reads wherever Kairos shows one to a person (the CLI and the dashboard).

>>> [format_duration(s) for s in (0.25, 9.94, 42, 187, 7_512, 273_600)]
['0.2 s', '9.9 s', '42 s', '3 min 07 s', '2 h 05 min', '3 d 4 h']

Below 10 seconds one decimal is kept (a breaker half-opening ``in 2.5 s``); from 10 seconds on,
whole seconds, and each larger unit shows with the next one down: the two leading units and
nothing smaller. A negative duration (a moment already past) reads as zero.
"""

from __future__ import annotations

_MINUTE_S = 60
_HOUR_S = 60 * _MINUTE_S
_DAY_S = 24 * _HOUR_S


def format_duration(seconds: float) -> str:
    """``seconds`` as short text: ``0.2 s``, ``42 s``, ``3 min 07 s``, ``2 h 05 min``, ``3 d 4 h``
    (see the module doc)."""
    tenths = round(max(seconds, 0.0), 1)
    if tenths < 10:
        return f"{tenths:.1f} s"
    days, rest = divmod(int(tenths), _DAY_S)
    hours, rest = divmod(rest, _HOUR_S)
    minutes, secs = divmod(rest, _MINUTE_S)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{secs} s"
