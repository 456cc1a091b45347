"""The chaos suite's summary: each test appends a row of outcome counts to one file, and the
run prints the table at its end (rows from every xdist worker)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

SUMMARY_ENV = "KAIROS_CHAOS_SUMMARY"


def pytest_configure(config: Any) -> None:
    if SUMMARY_ENV not in os.environ:  # the controller sets it; xdist workers inherit it
        handle, path = tempfile.mkstemp(prefix="kairos-chaos-", suffix=".jsonl")
        os.close(handle)
        os.environ[SUMMARY_ENV] = path


def record_row(row: dict[str, Any]) -> None:
    with open(os.environ[SUMMARY_ENV], "a", encoding="utf-8") as summary:
        summary.write(json.dumps(row) + "\n")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    path = Path(os.environ.get(SUMMARY_ENV, ""))
    if not path.is_file():
        return
    rows = [json.loads(line) for line in path.read_text().splitlines() if line]
    if not rows:
        return
    reporter = terminalreporter
    reporter.section("chaos: outcomes per mode (50 concurrent clients)")
    for row in sorted(rows, key=lambda r: r["mode"]):
        outcomes = ", ".join(f"{k}: {v}" for k, v in sorted(row["outcomes"].items()))
        reporter.write_line(
            f"{row['mode']:16s} requests {row['requests']:5d}  slowest {row['slowest_s']:5.2f} s"
            f"  fds {row['fds_delta']:+4d}  RSS {row['rss_delta_mib']:+5.1f} MiB  {outcomes}"
        )
