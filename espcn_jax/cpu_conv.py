"""2-D convolutions on the CPU through oneDNN, as an XLA FFI custom call with a custom VJP.

XLA:CPU (jax 0.10) lowers convolutions to YNNPACK fusions and the weight gradient to a conv with an
image-sized window; oneDNN's forward, backward-data and backward-weights primitives (the ones
PyTorch's CPU convs use) are about 2-3x faster on the ESPCN layers (notes/speed.md). This module
runs one NHWC x HWIO -> NHWC correlation (any strides, explicit non-negative padding, dilated
kernels) as three custom calls:

    y  = conv(x, w)              espcn_onednn_conv_fwd
    dx = conv_T(dy, w)           espcn_onednn_conv_bwd_data
    dw = corr(x, dy)             espcn_onednn_conv_bwd_weights

The handlers live in ``espcn_jax/onednn/conv.cc``; the package's install compiles them into
``espcn_jax/onednn/libespcn_onednn.so`` against the ``onednn-cpu-gomp`` wheel (setup.py). When the
library is missing or does not load, :func:`available` is False (one log line says why) and
callers use ``lax``. :func:`supports` says which convolutions this path runs; the caller falls back
for the rest. Second derivatives are not defined (the backward custom calls have no VJP).

Inputs, outputs and gradients are float32. ``operands="bfloat16"`` rounds the two operands of each
of the three convolutions (``x`` and ``w``; ``dy`` and ``w``; ``x`` and ``dy``) to bfloat16 and
accumulates in float32, which oneDNN runs on AVX512-BF16 / AMX hardware: the one-pass bfloat16
arithmetic of a TPU's default precision (``jax.default_matmul_precision("bfloat16")``).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import importlib.metadata
import logging
import os
from collections.abc import Sequence

import jax
import numpy as np
from jax import lax

LIBRARY_NAME = "libespcn_onednn.so"
LIBRARY_DIR = os.path.join(os.path.dirname(__file__), "onednn")
ONEDNN_DIST = "onednn-cpu-gomp"  # the wheel that ships libdnnl.so.3
TARGETS = {
    "espcn_onednn_conv_fwd": "EspcnOnednnConvFwd",
    "espcn_onednn_conv_bwd_data": "EspcnOnednnConvBwdData",
    "espcn_onednn_conv_bwd_weights": "EspcnOnednnConvBwdWeights",
}
DISABLE_ENV = "ESPCN_JAX_NO_ONEDNN"  # set to 1: never load the library (plain lax everywhere)
log = logging.getLogger(__name__)

Pads = tuple[tuple[int, int], tuple[int, int]]


def _libdnnl_path() -> str | None:
    """``libdnnl.so.3`` from the ``onednn-cpu-gomp`` distribution's file list, if installed."""
    try:
        files = importlib.metadata.files(ONEDNN_DIST) or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in files:
        if f.name == "libdnnl.so.3":
            return str(f.locate())
    return None


@contextlib.contextmanager
def _passive_openmp():
    """``OMP_WAIT_POLICY=PASSIVE`` (unless set) while GNU OpenMP loads with oneDNN, which reads it
    once then: idle OpenMP threads sleep instead of spinning on the cores XLA's own threads
    run the rest of the step on (measured in notes/speed.md). Restored afterwards, so another
    OpenMP runtime loaded later (PyTorch's) keeps its defaults."""
    key, before = "OMP_WAIT_POLICY", os.environ.get("OMP_WAIT_POLICY")
    if before is None:
        os.environ[key] = "PASSIVE"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)


@functools.cache
def _load() -> tuple[bool, str]:
    """Loads the library and registers its targets once. Returns ``(ok, why)``."""
    if os.environ.get(DISABLE_ENV, "") not in ("", "0"):
        return False, f"{DISABLE_ENV} is set"
    path = os.path.join(LIBRARY_DIR, LIBRARY_NAME)
    if not os.path.exists(path):
        return False, f"{path} was not built (pip install builds it with g++; see setup.py)"
    try:
        dnnl = _libdnnl_path()
        with _passive_openmp():
            if dnnl is not None:  # by soname, so the dynamic loader reuses it for our library
                ctypes.CDLL(dnnl, mode=ctypes.RTLD_GLOBAL)
            lib = ctypes.CDLL(path)
        for target, symbol in TARGETS.items():
            jax.ffi.register_ffi_target(
                target, jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu"
            )
        version = lib.espcn_onednn_version()
    except (OSError, AttributeError, RuntimeError, ValueError) as err:
        return False, f"{path} did not load: {err}"
    return True, f"oneDNN {version // 10000}.{version // 100 % 100}.{version % 100}"


def available() -> bool:
    """Whether the oneDNN convolutions can run here (library built and loaded, CPU backend).
    Logs one line the first time it says no for a reason other than the backend."""
    if jax.default_backend() != "cpu":
        return False
    ok, why = _load()
    if not ok:
        _warn_once(why)
    return ok


@functools.cache
def _warn_once(why: str) -> None:
    log.warning("oneDNN convolutions off, convolutions run as plain lax: %s", why)


def library_info() -> dict:
    """``{"loaded": bool, "detail": str}`` for reports (benchmarks, notes)."""
    ok, why = _load()
    return {"loaded": ok, "detail": why, "path": os.path.join(LIBRARY_DIR, LIBRARY_NAME)}


NHWC = ("NHWC", "HWIO", "NHWC")  # the layout of every conv in the package


def is_plain_2d(lhs, rhs, lhs_dilation, dimension_numbers, feature_group_count,
                batch_group_count, out_sharding) -> bool:  # fmt: skip
    """Whether a ``lax.conv_general_dilated`` call is a 2-D NHWC x HWIO correlation with no input
    dilation, no groups and no sharding annotation (strides, padding and kernel dilation free)."""
    return (
        lhs.ndim == 4
        and rhs.ndim == 4
        and tuple(lhs_dilation or (1, 1)) == (1, 1)
        and feature_group_count == 1
        and batch_group_count == 1
        and out_sharding is None
        and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
        == lax.conv_dimension_numbers(lhs.shape, rhs.shape, NHWC)
    )


def supports(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
             feature_group_count, batch_group_count, preferred_element_type,
             out_sharding) -> bool:  # fmt: skip
    """Whether :func:`conv` runs this ``lax.conv_general_dilated`` call: :func:`is_plain_2d`,
    float32 operands, non-negative padding."""
    return (
        is_plain_2d(
            lhs,
            rhs,
            lhs_dilation,
            dimension_numbers,
            feature_group_count,
            batch_group_count,
            out_sharding,
        )
        and lhs.dtype == np.float32
        and rhs.dtype == np.float32
        and preferred_element_type in (None, np.float32)
        and all(
            p >= 0
            for pair in explicit_padding(lhs, rhs, window_strides, padding, rhs_dilation)
            for p in pair
        )  # fmt: skip
        and min(lhs.shape) > 0
        and min(rhs.shape) > 0
    )


def explicit_padding(lhs, rhs, window_strides, padding, rhs_dilation=None) -> Pads:
    """``padding`` (``"SAME"``, ``"VALID"``, ... or pairs) as two ``(low, high)`` pairs."""
    if isinstance(padding, str):
        dil = tuple(rhs_dilation or (1, 1))
        window = [(k - 1) * d + 1 for k, d in zip(rhs.shape[:2], dil, strict=True)]
        padding = lax.padtype_to_pads(lhs.shape[1:3], window, window_strides, padding)
    (a, b), (c, d) = padding
    return (int(a), int(b)), (int(c), int(d))


def _attrs(strides, pads: Pads, dilation) -> dict:
    (pt, pb), (pl, pr) = pads
    return {
        "stride_h": np.int64(strides[0]),
        "stride_w": np.int64(strides[1]),
        "pad_top": np.int64(pt),
        "pad_bottom": np.int64(pb),
        "pad_left": np.int64(pl),
        "pad_right": np.int64(pr),
        "dilation_h": np.int64(dilation[0]),
        "dilation_w": np.int64(dilation[1]),
    }


def _out_shape(x_shape, w_shape, strides, pads: Pads, dilation) -> tuple[int, ...]:
    n, h, w, _ = x_shape
    kh, kw, _, o = w_shape
    sizes = []
    for size, k, s, (lo, hi), d in zip((h, w), (kh, kw), strides, pads, dilation, strict=True):
        sizes.append((size + lo + hi - ((k - 1) * d + 1)) // s + 1)
    return (n, sizes[0], sizes[1], o)


OPERANDS = ("float32", "bfloat16")  # the operand dtypes the custom calls take (results: float32)
# /proc/cpuinfo flags of CPUs with bfloat16 dot-product instructions (oneDNN's avx512_core_bf16
# and avx512_core_amx kernels): the only CPUs where bfloat16 operands are used, and where their
# speed was measured (BUILD_NOTES.md, "bfloat16 convolutions")
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The first ``flags`` line of ``/proc/cpuinfo`` (empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


@functools.cache
def native_bf16() -> bool:
    """Whether this CPU has bfloat16 dot-product instructions (:data:`BF16_FLAGS`)."""
    return bool(BF16_FLAGS & cpu_flags())


AVX512_CORE = 0x27  # dnnl_cpu_isa_avx512_core's bits (oneapi/dnnl/dnnl_types.h: ISAs are bit sets)


@functools.cache
def onednn_isa() -> int:
    """The instruction set oneDNN's kernels use here (``dnnl_get_effective_cpu_isa``, a
    ``dnnl_cpu_isa_t`` bit set), or 0 when the library is not loaded."""
    if not _load()[0]:
        return 0
    lib = ctypes.CDLL(os.path.join(LIBRARY_DIR, LIBRARY_NAME))  # the loaded one; dlsym sees libdnnl
    return int(lib.dnnl_get_effective_cpu_isa())


def avx512_kernels() -> bool:
    """Whether oneDNN runs its AVX-512 (``avx512_core`` or newer) kernels here."""
    return onednn_isa() & AVX512_CORE == AVX512_CORE


def operands_for(precision=None) -> str:
    """The operand dtype of a convolution traced now with ``precision`` (its ``precision``
    argument): ``"bfloat16"`` when that is None, the ambient ``jax.default_matmul_precision`` is
    ``"bfloat16"`` and :func:`native_bf16`; else ``"float32"``. Like XLA's own precision setting,
    ``"bfloat16"`` asks for the fastest arithmetic at least that precise: a CPU without bfloat16
    instructions computes in float32."""
    ambient = jax.config.jax_default_matmul_precision
    bf16 = precision is None and ambient == "bfloat16" and native_bf16()
    return "bfloat16" if bf16 else "float32"


def _call(target: str, shape, *args, **attrs):
    out = jax.ShapeDtypeStruct(shape, np.float32)
    return jax.ffi.ffi_call(target, out, vmap_method="sequential")(*args, **attrs)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _conv(x, w, strides, pads, dilation, operands):
    return _conv_fwd(x, w, strides, pads, dilation, operands)[0]


def _conv_fwd(x, w, strides, pads, dilation, operands):
    x, w = x.astype(operands), w.astype(operands)
    shape = _out_shape(x.shape, w.shape, strides, pads, dilation)
    y = _call("espcn_onednn_conv_fwd", shape, x, w, **_attrs(strides, pads, dilation))
    return y, (x, w)  # the operands as the backward convolutions read them


def _conv_bwd(strides, pads, dilation, operands, res, dy):
    x, w = res
    dy = dy.astype(operands)
    attrs = _attrs(strides, pads, dilation)
    dx = _call("espcn_onednn_conv_bwd_data", x.shape, dy, w, **attrs)
    dw = _call("espcn_onednn_conv_bwd_weights", w.shape, x, dy, **attrs)
    return dx, dw


_conv.defvjp(_conv_fwd, _conv_bwd)


def conv(
    x_NHWC: jax.Array,
    kernel_HWIO: jax.Array,
    window_strides: Sequence[int] = (1, 1),
    padding: str | Sequence[tuple[int, int]] = "VALID",
    rhs_dilation: Sequence[int] | None = None,
    operands: str = "float32",
) -> jax.Array:
    """``lax.conv_general_dilated(x, kernel, window_strides, padding, rhs_dilation=...,
    dimension_numbers=("NHWC", "HWIO", "NHWC"))`` run by oneDNN (float32; check :func:`supports`
    and :func:`available` first). ``operands="bfloat16"``: each convolution's operands rounded to
    bfloat16, float32 accumulation and results (the module docstring)."""
    ok, why = _load()
    if not ok:
        raise RuntimeError(f"oneDNN convolutions are not available: {why}")
    if operands not in OPERANDS:
        raise ValueError(f"operands must be one of {OPERANDS}, got {operands!r}")
    pads = explicit_padding(x_NHWC, kernel_HWIO, window_strides, padding, rhs_dilation)
    strides = tuple(int(s) for s in window_strides)
    dilation = tuple(int(d) for d in (rhs_dilation or (1, 1)))
    return _conv(x_NHWC, kernel_HWIO, strides, pads, dilation, operands)
