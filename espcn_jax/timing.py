"""Wall-clock latency of jitted functions: warm-up, ``block_until_ready``, robust statistics.

Also :func:`tune_malloc`, which the timing drivers can call first (``--tune_malloc``): on glibc it
keeps freed memory mapped, so that steady-state calls are timed without page faults.
"""

from __future__ import annotations

import ctypes
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable

import jax

try:
    import resource
except ImportError:  # not on Windows: page faults are then not reported
    resource = None

# mallopt(3) parameters, from glibc's malloc.h.
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
INT_MAX = 2**31 - 1


def tune_malloc(
    arena_max: int = 1, mmap_max: int = 0, trim_threshold: int = INT_MAX
) -> dict | None:
    """Makes glibc's ``malloc`` recycle freed memory instead of handing it back to the kernel.

    XLA:CPU allocates every output and temporary buffer per call. With glibc's defaults, large
    blocks are ``mmap``-ed and freed heap tops are trimmed, so a call may touch fresh pages: on
    the 2-core VM of BUILD_NOTES.md each 4 KiB page costs ~2 us, so a 14.7 MB output adds ~7 ms
    (3,600 faults) to a 13 ms convolution, and how many faults a call takes depends on what ran
    before it. With one arena, no ``mmap`` (``mmap_max=0``) and trimming only above
    ``trim_threshold`` bytes, steady-state calls take no page faults and time only computation.
    The trade: the process keeps its peak heap. Call it first, before JAX allocates (arenas that
    exist stay). Returns the settings applied, or ``None`` where the C library is not glibc
    (nothing is changed).
    """
    if arena_max < 1 or mmap_max < 0 or not 0 <= trim_threshold <= INT_MAX:
        raise ValueError(
            f"tune_malloc needs arena_max >= 1, mmap_max >= 0 and 0 <= trim_threshold <= "
            f"{INT_MAX}, got arena_max={arena_max}, mmap_max={mmap_max}, "
            f"trim_threshold={trim_threshold}"
        )
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        version = libc.gnu_get_libc_version
    except (OSError, AttributeError):  # musl or another libc: leave it alone
        return None
    version.restype = ctypes.c_char_p
    settings = {
        "arena_max": (M_ARENA_MAX, arena_max),
        "mmap_max": (M_MMAP_MAX, mmap_max),
        "trim_threshold": (M_TRIM_THRESHOLD, trim_threshold),
    }
    for name, (param, value) in settings.items():
        if libc.mallopt(param, value) != 1:
            raise RuntimeError(f"mallopt refused {name}={value}")
    return {"glibc": version().decode()} | {name: value for name, (_, value) in settings.items()}


def _minor_faults() -> int | None:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt if resource else None


def time_fn(
    fn: Callable, *args, warmup: int = 2, repeats: int = 10, min_time_s: float = 0.0
) -> dict[str, float]:
    """Times ``fn(*args)`` on the current default device.

    ``fn`` should already be jitted (a plain function is jitted here). Compilation happens in the
    warm-up calls and is reported separately. Returns milliseconds: ``median_ms``, ``min_ms``,
    ``p25_ms``, ``p75_ms``, ``compile_ms`` (first call), and ``repeats`` actually run (at least
    ``repeats``, more if needed to fill ``min_time_s``); also ``minor_faults_per_call``, the
    process's page faults during the timed calls over their number (``None`` on Windows).
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
    faults = _minor_faults()
    start = time.perf_counter()
    while len(times_ms) < repeats or (time.perf_counter() - start) < min_time_s:
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times_ms.append((time.perf_counter() - t0) * 1e3)
    if faults is not None:
        faults = (_minor_faults() - faults) / len(times_ms)
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
        "minor_faults_per_call": faults,
    }


def device_info() -> dict:
    """What a benchmark ran on: this process's first local device, the device and CPU counts, JAX's version."""
    dev = jax.local_devices()[0]
    return {
        "platform": dev.platform,
        "device_kind": dev.device_kind,
        "device_count": jax.device_count(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "jax": jax.__version__,
    }
