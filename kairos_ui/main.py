"""``kairos-ui``: the dashboard. Not built yet; the command says so instead of failing obscurely."""

from __future__ import annotations

import sys


def main() -> None:
    print(
        "kairos-ui: the dashboard is not part of this release yet; "
        "use `kairos validate`, `kairos route-test` and the admin listener's /health meanwhile.",
        file=sys.stderr,
    )
    raise SystemExit(2)
