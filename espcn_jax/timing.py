"""Wall-clock latency of jitted functions: warm-up, ``block_until_ready``, robust statistics."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import jax


def time_fn(
    fn: Callable, *args, warmup: int = 2, repeats: int = 10, min_time_s: float = 0.0
) -> dict[str, float]:
    """Times ``fn(*args)`` on the current default device.

    ``fn`` should already be jitted (a plain function is jitted here). Compilation happens in the
    warm-up calls and is reported separately. Returns milliseconds: ``median_ms``, ``min_ms``,
    ``p25_ms``, ``p75_ms``, ``compile_ms`` (first call), and ``repeats`` actually run (at least
    ``repeats``, more if needed to fill ``min_time_s``).
    """
    if not hasattr(fn, "lower"):
        fn = jax.jit(fn)
    if warmup < 1 or repeats < 1:
        raise ValueError(f"warmup and repeats must be >= 1, got warmup={warmup}, repeats={repeats}")
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    compile_ms = (time.perf_counter() - t0) * 1e3
    for _ in range(warmup - 1):
        jax.block_until_ready(fn(*args))
    times_ms: list[float] = []
    start = time.perf_counter()
    while len(times_ms) < repeats or (time.perf_counter() - start) < min_time_s:
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times_ms.append((time.perf_counter() - t0) * 1e3)
    q = (
        statistics.quantiles(times_ms, n=4, method="inclusive")
        if len(times_ms) > 1
        else times_ms * 3
    )
    return {
        "median_ms": statistics.median(times_ms),
        "min_ms": min(times_ms),
        "p25_ms": q[0],
        "p75_ms": q[2],
        "compile_ms": compile_ms,
        "repeats": len(times_ms),
    }
