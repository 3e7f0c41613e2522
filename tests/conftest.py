"""Hypothesis profiles: the suite is repeatable by default; ``HYPOTHESIS_PROFILE=explore`` searches.

``repeatable`` (default) derandomizes hypothesis, so a test run, CI's included, draws the same
examples every time and a red run means a change, not a lucky draw. ``explore`` draws fresh
random examples on every run: use it when touching ops, kernels or FLOP models, and pin what it
finds with ``@example``.
"""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("repeatable", derandomize=True, deadline=None)
settings.register_profile("explore", derandomize=False, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))
