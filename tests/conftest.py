"""Hypothesis profiles (the suite is repeatable by default; ``HYPOTHESIS_PROFILE=explore`` searches),
one XLA compilation cache for the whole run, and the shared small training folder ``data_dir``.

``repeatable`` (default) derandomizes hypothesis, so a test run, CI's included, draws the same
examples every time and a red run means a change, not a lucky draw. ``explore`` draws fresh
random examples on every run: use it when touching ops, kernels or FLOP models, and pin what it
finds with ``@example``.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import sys
import tempfile
import warnings

import numpy as np
import pytest
from hypothesis import settings
from PIL import Image

settings.register_profile("repeatable", derandomize=True, deadline=None)
settings.register_profile("explore", derandomize=False, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))

CACHE_READ_WARNING = "Error reading persistent compilation cache entry"  # jax/_src/compiler.py
CACHE_ENV = {
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",  # every program, however quick to compile
    "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
}


def pytest_configure(config):
    """One persistent XLA compilation cache per test run, shared by every pytest-xdist worker and
    every child process (drivers, multi-process runs), which inherit the environment set here:
    a program one of them compiled is loaded by the others instead of compiled again (most
    children train or evaluate the same smoke models). JAX keys an entry by the program, the
    compile options, the jax/jaxlib versions and the device, so a changed program never loads an
    old entry; the directory is new for each run and removed at its end. A cache directory set by
    the caller (``JAX_COMPILATION_CACHE_DIR``) is used as given and kept."""
    if hasattr(config, "workerinput"):  # an xdist worker: the controller set it up
        return
    if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        path = tempfile.mkdtemp(prefix="espcn_jax-test-xla-cache-")
        config._espcn_jax_cache = path  # noqa: SLF001  removed in pytest_unconfigure
        os.environ["JAX_COMPILATION_CACHE_DIR"] = path
    for key, value in CACHE_ENV.items():
        os.environ.setdefault(key, value)
    # A process reading an entry another is still writing gets a UserWarning and compiles the
    # program itself (seen once in CI); silenced in the children too, whose stderr some tests
    # require to be one error line.
    warnings.filterwarnings("ignore", message=CACHE_READ_WARNING, category=UserWarning)
    ignore = f"ignore:{CACHE_READ_WARNING}:UserWarning"
    os.environ["PYTHONWARNINGS"] = ",".join(
        filter(None, [os.environ.get("PYTHONWARNINGS"), ignore])
    )
    if "jax" in sys.modules:  # imported before this hook: its options were read already
        import jax

        jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def pytest_unconfigure(config):
    path = getattr(config, "_espcn_jax_cache", None)
    if path:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> pathlib.Path:
    """A training folder of two random 39x36 RGB PNGs, the smallest the smoke config accepts
    (modules that need other images define their own ``data_dir``)."""
    d = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for k in range(2):
        Image.fromarray(rng.integers(0, 256, (36, 39, 3), dtype=np.uint8)).save(d / f"{k}.png")
    return d
