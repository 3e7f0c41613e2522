"""Hypothesis profiles (the suite is repeatable by default; ``HYPOTHESIS_PROFILE=explore`` searches)
and the shared small training folder ``data_dir``.

``repeatable`` (default) derandomizes hypothesis, so a test run, CI's included, draws the same
examples every time and a red run means a change, not a lucky draw. ``explore`` draws fresh
random examples on every run: use it when touching ops, kernels or FLOP models, and pin what it
finds with ``@example``.
"""

from __future__ import annotations

import os
import pathlib

import numpy as np
import pytest
from hypothesis import settings
from PIL import Image

settings.register_profile("repeatable", derandomize=True, deadline=None)
settings.register_profile("explore", derandomize=False, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> pathlib.Path:
    """A training folder of two random 39x36 RGB PNGs, the smallest the smoke config accepts
    (modules that need other images define their own ``data_dir``)."""
    d = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for k in range(2):
        Image.fromarray(rng.integers(0, 256, (36, 39, 3), dtype=np.uint8)).save(d / f"{k}.png")
    return d
