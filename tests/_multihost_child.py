"""One process of a multi-host run on this machine (tests/test_multihost.py): runs a driver in
``experiments/`` (``train.py`` or ``sweep.py``) with its command-line arguments, optionally after
arranging for this process alone to receive SIGTERM.

    python _multihost_child.py DRIVER SIGNAL_AT SLOW_S -- DRIVER_ARGS...

``SIGNAL_AT``: 0, or N to send SIGTERM to this process just before its train call N (1-based),
or ``INT:N`` for SIGINT; from then on each train call first sleeps ``SLOW_S`` seconds, a slower
host, so that the other processes hear of the notice before the run ends (the notice takes
~0.5 s to go round).
"""

from __future__ import annotations

import pathlib
import runpy
import signal
import sys

from _train_child import kill_at_train_call  # this directory is the script's sys.path[0]

ROOT = pathlib.Path(__file__).resolve().parents[1]


if __name__ == "__main__":
    driver, signal_at, slow_s, sep, *args = sys.argv[1:]
    assert sep == "--", sys.argv
    name, _, at = signal_at.rpartition(":")
    if int(at):
        signum = signal.Signals[f"SIG{name or 'TERM'}"]
        kill_at_train_call(int(at), signum, slow_s=float(slow_s))
    script = ROOT / "experiments" / f"{driver}.py"
    sys.argv = [str(script), *args]
    sys.path.insert(0, str(script.parent))
    runpy.run_path(str(script), run_name="__main__")  # the driver's own __main__ block
