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

import dataclasses
import os
import pathlib
import runpy
import signal
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]


def signal_at_train_call(n: int, slow_s: float, signum: int = signal.SIGTERM) -> None:
    """Patches ``step.make_steps``: the loop's train call ``n`` first sends ``signum`` to this
    process; it and every later call first sleep ``slow_s`` seconds."""
    from espcn_jax.training import step as step_lib

    make = step_lib.make_steps

    def patched(*args, **kwargs):
        steps = make(*args, **kwargs)
        calls = [0]

        def train_logged(state, log, batch):
            calls[0] += 1
            if calls[0] == n:
                os.kill(os.getpid(), signum)
            if calls[0] >= n:
                time.sleep(slow_s)
            return steps.train_logged(state, log, batch)

        return dataclasses.replace(steps, train_logged=train_logged)

    step_lib.make_steps = patched


if __name__ == "__main__":
    driver, signal_at, slow_s, sep, *args = sys.argv[1:]
    assert sep == "--", sys.argv
    name, _, at = signal_at.rpartition(":")
    if int(at):
        signal_at_train_call(int(at), float(slow_s), signal.Signals[f"SIG{name or 'TERM'}"])
    script = ROOT / "experiments" / f"{driver}.py"
    sys.argv = [str(script), *args]
    sys.path.insert(0, str(script.parent))
    runpy.run_path(str(script), run_name="__main__")  # the driver's own __main__ block
