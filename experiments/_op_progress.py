"""A pytest plugin for ``device_check.py``'s op tests: one line per finished test, written when
the test ends, to the file named by ``$ESPCN_JAX_OP_PROGRESS``.

pytest writes its ``--junitxml`` report only when the session finishes. A run stopped at its
budget that does not finish within the grace period (seen under load: interrupted, still running
30 s later) would lose every result; these lines keep the tests it did finish.
"""

from __future__ import annotations

import os

PROGRESS_ENV = "ESPCN_JAX_OP_PROGRESS"


def pytest_runtest_logreport(report) -> None:
    """``outcome nodeid`` once per test: its call, or its setup where that did not pass."""
    if report.when != "call" and not (report.when == "setup" and not report.passed):
        return
    path = os.environ.get(PROGRESS_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(f"{report.outcome} {report.nodeid}\n")
