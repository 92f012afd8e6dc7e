"""Reliability and security suite (issue #9): kills, hostile input, load, security.

Every test here is bounded in time and stops by itself. The figures they count
(tests/reliability/figures.py) are printed at the end of the session.
"""

from __future__ import annotations

import json
import os

from hypothesis import HealthCheck, Phase, settings

from tests.reliability import figures

# Reproducible property tests: derandomized (the same command draws the same
# examples; hypothesis also draws constants from the modules imported, so one file
# run alone draws slightly different ones than the whole suite), no example
# database, no deadline (2 shared cores), a bounded number of examples per test,
# and no shrinking, so a failing test stops in bounded time too (it reports the
# failing input as generated).
settings.register_profile(
    "reliability", derandomize=True, deadline=None, database=None, max_examples=200,
    phases=[Phase.explicit, Phase.reuse, Phase.generate], report_multiple_bugs=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.function_scoped_fixture])
settings.load_profile("reliability")


def pytest_terminal_summary(terminalreporter):
    if not figures.counts and not figures.notes:
        return
    terminalreporter.section("reliability figures")
    for name, n in sorted(figures.counts.items()):
        terminalreporter.write_line(f"{name}: {n:,}")
    for name, value in sorted(figures.notes.items()):
        terminalreporter.write_line(f"{name}: {value}")
    path = os.environ.get("RELIABILITY_FIGURES")
    if path:
        with open(path, "w", encoding="utf-8") as f:
            json.dump({"counts": dict(figures.counts), "notes": figures.notes}, f,
                      indent=2, default=str)
