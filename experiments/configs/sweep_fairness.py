"""A custom grid: is lr's lead a matter of receptive field or of the residual prior?

    python experiments/sweep.py --config=experiments/configs/sweep_fairness.py --workdir=DIR

The quick preset's budgets and training, for ``lr`` against ``hr`` with its receptive field as is,
matched by dilation (same width and MACs) and matched by kernels times r (less width), each with
the residual on and off: every switch is an axis, so the report shows each comparison side by side.
"""

from __future__ import annotations

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import sweep  # noqa: E402  experiments/configs/sweep.py


def get_config(arg: str | None = None):
    config = sweep.get_config(arg or "quick")
    config.families = ("lr", "hr")
    config.residual = (False, True)
    config.rf_match = ("none", "dilate", "kernel")
    config.control.steps = 0
    config.equivalence.budgets = ()
    return config
