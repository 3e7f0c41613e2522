"""MATLAB ``imresize`` bicubic resizing by an integer scale ``r``, as fixed separable filters in JAX.

Both directions use Keys' cubic kernel (a = -0.5) with MATLAB's geometry: output pixel ``o``
(0-based) samples the input at ``(o + 0.5) / s - 0.5`` for scale ``s``, and weights are normalised to
sum to one. Samples outside the image follow ``border``:

- ``"edge"`` (default): clamp the index, i.e. replicate the end pixels. This is what MATLAB's
  ``imresize.m`` does (``indices = min(max(1, indices), in_length)``, "has the effect of replicating
  end-points"), and with ``round_passes=True`` it reproduces the LR images of the Set5 benchmark
  bit for bit.
- ``"symmetric"``: mirror with the edge repeated, ``aux = [1:n, n:-1:1]`` (the index rule of several
  Python ports of ``imresize``).

``jax.image.resize`` instead renormalises the truncated kernel at the borders. All three differ only in
the outer two LR pixels. After :func:`upscale` only the outer ``r`` HR pixels depend on the choice
(cropped by the protocol); :func:`downscale` differs in the outer one or two LR pixels.

Every 1-D pass is a sum of shifted static slices times scalar weights, which XLA fuses into one
elementwise loop (about 15x faster on CPU than the same filter as a depthwise ``lax.conv`` at
``Precision.HIGHEST``, and 20-50x faster than ``jax.image.resize``'s dense matrices: see
``experiments/benchmark_bicubic.py``). Borders are copies of edge rows concatenated to the input, so
everything runs under any sharding of the batch axis, Explicit mesh axes included.

- :func:`downscale` (antialiased, kernel stretched by ``r``): ``4r`` taps for even ``r``, ``4r - 1``
  for odd ``r``, at stride ``r``: the padded axis is viewed as ``(blocks, r)`` so that each tap is a
  plain slice.
- :func:`upscale`: an *efficient sub-pixel* filter. Output phase ``a`` of each LR pixel ``i``
  samples the LR grid at ``i + t_a`` with ``t_a = (a + 0.5)/r - 0.5`` in ``(-0.5, 0.5)``; its 4 cubic
  taps sit on ``i-2..i+1`` (``t_a < 0``) or ``i-1..i+2`` (``t_a >= 0``), and ``t_a = 0`` (odd ``r``)
  is a copy. The column pass computes the ``r`` phases on the LR grid and interleaves them into HR
  columns, the row pass likewise into HR rows (:func:`upscale_phases` regroups them as channels).
  ``jax.image.resize`` builds dense (out x in) matrices instead.

Float summation order differs from a convolution's, so results may differ from other
implementations in the last bit (XLA:CPU also contracts multiply-adds into FMAs under ``jit``);
the public functions are jitted so that eager and jitted calls agree.

All functions take float NHWC (integer input is cast to float32) and return float, unrounded unless
``round_passes`` asks for MATLAB's uint8 behaviour. The exception is :func:`imresize_uint8`: NumPy on
the host, any scale, uint8 in and out (the training scale augmentation, ``data.rescales``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from espcn_jax import ops
from espcn_jax.images import quantize

BORDERS = ("edge", "symmetric")
UPSCALE_TAPS = 5  # LR offsets -2..2 per axis: every phase's 4 non-zero taps (zeros skipped).


def cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with a = -0.5 (MATLAB ``imresize``'s ``cubic``), support |x| < 2."""
    ax = np.abs(np.asarray(x, np.float64))
    near = (1.5 * ax**3 - 2.5 * ax**2 + 1.0) * (ax <= 1)
    far = (-0.5 * ax**3 + 2.5 * ax**2 - 4.0 * ax + 2.0) * ((ax > 1) & (ax <= 2))
    return near + far


def downscale_taps(r: int) -> np.ndarray:
    """The ``(T,)`` normalised antialiasing filter of a downscale by ``r`` (float64).

    Output pixel ``i`` is centred on input ``i*r + (r-1)/2`` (0-based); the kernel stretched by ``r``,
    ``cubic(d / r) / r``, is non-zero for ``|d| < 2r``: ``T = 4r`` taps for even ``r``, ``4r - 1`` for odd.
    Tap ``k`` reads input ``i*r - pad_lo + k`` with ``pad_lo = 3r // 2``.
    """
    r = ops.check_positive_int(r)
    taps = 4 * r - r % 2
    d = (r - 1) / 2 + 3 * r // 2 - np.arange(taps)  # centre minus tap position
    w = cubic(d / r) / r
    return w / w.sum()


def _contributions(n_in: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """MATLAB ``imresize``'s ``contributions`` for one axis: ``(weights, indices)``, both
    ``(ceil(n_in * scale), taps)``, indices 0-based. Output ``o`` (1-based) samples
    ``u = o / s + (1 - 1/s) / 2``; a downscale stretches the kernel by ``1/s`` (antialiasing); rows
    are normalised; indices past an end read the end pixel (MATLAB clamps them). At ``s = 1/r``
    the rows hold the filter of :func:`downscale_taps`."""
    if not (isinstance(n_in, int | np.integer) and n_in >= 1):
        raise ValueError(f"n_in must be a positive integer, got {n_in!r}")
    if not (np.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a positive number, got {scale!r}")
    n_out = int(np.ceil(round(n_in * scale, 9)))  # 33 * (1/3) is 11.000000000000002
    stretch = min(scale, 1.0)  # the kernel is widened by 1 / scale only when shrinking
    width = 4.0 / stretch
    u = np.arange(1, n_out + 1) / scale + 0.5 * (1.0 - 1.0 / scale)
    left = np.floor(u - width / 2)
    idx = left[:, None] + np.arange(int(np.ceil(width)) + 2)[None, :]  # 1-based input positions
    w = stretch * cubic(stretch * (u[:, None] - idx))
    w /= w.sum(axis=1, keepdims=True)
    return w, np.clip(idx.astype(np.int64), 1, n_in) - 1


def imresize_uint8(image_HWC: np.ndarray, scale: float) -> np.ndarray:
    """MATLAB ``imresize(image, scale, 'bicubic')`` of a uint8 ``(H, W, C)`` image on the host: rows
    first, then columns, each pass rounded half away from zero and saturated to uint8, as MATLAB
    stores it; the output is ``ceil(H * scale) x ceil(W * scale)``. For scales that are not ``1/r``
    (:func:`downscale` covers those on the device).

    Each pass sums its taps in order, as MATLAB's ``resizeAlongDim`` does: exact halves are common
    after these filters, and a matrix product's other summation order rounds some of them the other
    way.
    """
    x = np.asarray(image_HWC)
    if x.dtype != np.uint8 or x.ndim != 3:
        raise ValueError(f"image must be uint8 (H, W, C), got {x.dtype} {x.shape}")

    def one_pass(v: np.ndarray, axis: int) -> np.ndarray:
        w, idx = _contributions(v.shape[axis], scale)
        v = np.moveaxis(v, axis, 0)
        out = np.zeros((w.shape[0],) + v.shape[1:])
        for p in range(w.shape[1]):
            out += w[:, p, None, None] * v[idx[:, p]]
        return np.moveaxis(np.floor(np.clip(out, 0.0, 255.0) + 0.5), 0, axis)

    return one_pass(one_pass(x.astype(np.float64), 0), 1).astype(np.uint8)


def upscale_taps(r: int) -> np.ndarray:
    """The ``(r, 5)`` per-phase filters of an upscale by ``r`` (float64) on LR offsets ``-2..2``.

    Phase ``a`` samples the LR grid at ``i + t_a``, ``t_a = (a + 0.5)/r - 0.5``; weight of offset ``k``
    is ``cubic(t_a - k)`` normalised (MATLAB normalises; Keys' kernel already sums to one).
    """
    r = ops.check_positive_int(r)
    t = (np.arange(r) + 0.5) / r - 0.5
    offsets = np.arange(UPSCALE_TAPS) - UPSCALE_TAPS // 2
    w = cubic(t[:, None] - offsets[None, :])
    return w / w.sum(axis=1, keepdims=True)


def _as_float(x) -> jax.Array:
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.float32)
    ops._check_rank4(x, "x_NHWC")
    return x


def _check_border(border: str) -> str:
    if border not in BORDERS:
        raise ValueError(f"border must be one of {BORDERS}, got {border!r}")
    return border


def _source_rows(j: np.ndarray, n: int, border: str) -> np.ndarray:
    """Input index read for (possibly out-of-range) index ``j`` on an axis of length ``n``.

    "edge" clamps (MATLAB's ``min(max(1, j), n)``); "symmetric" reads ``aux[j mod 2n]``,
    ``aux = [0..n-1, n-1..0]``.
    """
    if border == "edge":
        return np.clip(j, 0, n - 1)
    aux = np.concatenate([np.arange(n), np.arange(n)[::-1]])
    return aux[np.mod(j, 2 * n)]


def _pad(x: jax.Array, axis: int, lo: int, hi: int, border: str) -> jax.Array:
    """Pads one axis by concatenating copies of border rows (static slices, no ``jnp.pad``).

    Slices and concatenation along an unsharded axis are accepted by every sharding mode, including
    a mesh with Explicit axes, where ``jnp.pad(mode="edge")`` is rejected.
    """
    if lo == hi == 0:
        return x
    n = x.shape[axis]

    def rows(js: np.ndarray) -> list[jax.Array]:
        return [
            lax.slice_in_dim(x, int(i), int(i) + 1, axis=axis) for i in _source_rows(js, n, border)
        ]

    return jnp.concatenate(rows(np.arange(-lo, 0)) + [x] + rows(np.arange(n, n + hi)), axis=axis)


def _nonzero_taps(taps: np.ndarray) -> list[tuple[int, float]]:
    """``(offset, weight)`` of each tap whose float32 weight is non-zero: the executed ones."""
    cast = np.asarray(taps, np.float64).astype(np.float32)
    return [(k, float(w)) for k, w in enumerate(cast) if w != 0]


def _is_copy(taps: list[tuple[int, float]]) -> bool:
    return len(taps) == 1 and taps[0][1] == 1.0


def _combine(bank: np.ndarray, tap, dtype) -> list[jax.Array]:
    """``out[p] = sum_k bank[p, k] * tap(k)`` for each filter ``p``, summed in tap order.

    Zero taps are skipped, a lone unit tap is a copy, and a product two filters share (the centre
    tap of mirrored upscale phases) is computed once. Weights are cast to ``dtype``, as the
    convolution kernels of the previous implementation were.
    """
    products: dict[tuple[int, float], jax.Array] = {}
    outs = []
    for taps in np.atleast_2d(bank):
        nz = _nonzero_taps(taps)
        if _is_copy(nz):
            outs.append(tap(nz[0][0]))
            continue
        acc = None
        for k, w in nz:
            if (k, w) not in products:
                products[k, w] = tap(k) * jnp.asarray(w, dtype)
            acc = products[k, w] if acc is None else acc + products[k, w]
        outs.append(acc)
    return outs


def _bank(x: jax.Array, axis: int, bank: np.ndarray, n_out: int) -> list[jax.Array]:
    """``out[p][i] = sum_k bank[p, k] * x[i + k]`` along ``axis`` of an already padded ``x``.

    Shifted static slices times scalar weights: XLA fuses them into one elementwise loop, far
    faster on CPU than the equivalent depthwise ``lax.conv`` at ``Precision.HIGHEST``.
    """
    return _combine(bank, lambda k: lax.slice_in_dim(x, k, k + n_out, axis=axis), x.dtype)


def _bank_flops(bank: np.ndarray) -> int:
    """FLOPs per output position of a filter bank as :func:`_combine` runs it: one multiply per distinct
    non-zero ``(offset, weight)``, ``m - 1`` adds per filter of ``m`` taps, nothing for a copy."""
    mults: set[tuple[int, float]] = set()
    adds = 0
    for taps in np.atleast_2d(bank):
        nz = _nonzero_taps(taps)
        if not _is_copy(nz):
            mults.update(nz)
            adds += len(nz) - 1
    return len(mults) + adds


def downscale(
    x_NHWC: jax.Array, r: int, *, border: str = "edge", round_passes: bool = False
) -> jax.Array:
    """MATLAB ``imresize(x, 1/r, 'bicubic')`` (antialiased): ``(N, H, W, C) -> (N, H/r, W/r, C)``.

    Rows first, then columns (MATLAB's order for equal scales). By default float in, float out: no
    rounding anywhere. ``round_passes=True`` emulates MATLAB on a uint8 image, which stores each 1-D
    pass as uint8 (rounded half away from zero, saturated to [0, 255]): the result is then exactly
    MATLAB's LR image.
    """
    r, border = ops.check_positive_int(r), _check_border(border)
    x = _as_float(x_NHWC)
    _, hgt, wid, _ = x.shape
    if hgt % r or wid % r:
        raise ValueError(f"x_NHWC height and width must be divisible by r={r}, got shape {x.shape}")
    return _downscale(x, r, border, round_passes)


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _downscale(x: jax.Array, r: int, border: str, round_passes: bool) -> jax.Array:
    taps = downscale_taps(r)
    x = _strided_pass(x, 1, taps, r, border)
    if round_passes:
        x = quantize(x)
    x = _strided_pass(x, 2, taps, r, border)
    return quantize(x) if round_passes else x


def _strided_pass(x: jax.Array, axis: int, taps: np.ndarray, r: int, border: str) -> jax.Array:
    """One antialiasing pass: ``out[i] = sum_k taps[k] * x[i*r - lo + k]`` along ``axis``.

    The padded axis (``lo = 3r//2`` rows before, enough after to make whole blocks of ``r``) is
    reshaped into ``(blocks, r)``, so tap ``k`` is the plain slice ``[k//r : k//r + n/r, k % r]``:
    no strided slice, and no slice XLA could push through the padding's concatenation (which would
    let it recompute the previous pass inside this one).
    """
    n = x.shape[axis]
    lo = 3 * r // 2
    blocks = -(-(n + len(taps) - r) // r)  # covers every tap of every output
    x = _pad(x, axis, lo, blocks * r - n - lo, border)
    x = x.reshape(x.shape[:axis] + (blocks, r) + x.shape[axis + 1 :])
    out = n // r

    def tap(k: int) -> jax.Array:
        x_k = lax.index_in_dim(x, k % r, axis + 1, keepdims=False)
        return lax.slice_in_dim(x_k, k // r, k // r + out, axis=axis)

    (y,) = _combine(taps, tap, x.dtype)
    return y


def _lr_padded(x_NHWC, border: str) -> jax.Array:
    p = UPSCALE_TAPS // 2
    return _pad(_pad(x_NHWC, 1, p, p, border), 2, p, p, border)


def upscale_phases(
    x_NHWC: jax.Array, r: int, order: str = "tf", *, border: str = "edge"
) -> jax.Array:
    """Bicubic x``r`` before the shuffle: ``(N, h, w, C) -> (N, h, w, C*r*r)`` in shuffle ``order``.

    ``upscale(x, r) == ops.pixel_shuffle(upscale_phases(x, r, order), r, order)``. Channel
    ``(a*r + b)*C + c`` ("tf") or ``c*r*r + a*r + b`` ("torch") holds HR pixel ``(i*r + a, j*r + b)``.
    """
    r, order, border = ops.check_positive_int(r), ops.check_order(order), _check_border(border)
    return _upscale_phases(_as_float(x_NHWC), r, order, border)


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _upscale_phases(x: jax.Array, r: int, order: str, border: str) -> jax.Array:
    # Regrouped from the HR grid by a transpose, which XLA stores once: with the phases stacked
    # straight from the row pass, XLA fused (recomputed) that pass into a second consumer.
    y = _hr_blocks(x, r, border)  # (n, h, a, w, b, c)
    y = y.transpose(0, 1, 3, 2, 4, 5) if order == "tf" else y.transpose(0, 1, 3, 5, 2, 4)
    return _merge(_merge(y, 4), 3)


def upscale(x_NHWC: jax.Array, r: int, *, border: str = "edge") -> jax.Array:
    """MATLAB ``imresize(x, r, 'bicubic')`` on a float image: ``(N, h, w, C) -> (N, h*r, w*r, C)``.

    Computed on the HR grid directly: the column pass interleaves its ``r`` phases into HR columns
    (on the ``h + 4`` padded LR rows), the row pass into HR rows; stacks and merging reshapes, no
    transpose, no shuffle.
    """
    r, border = ops.check_positive_int(r), _check_border(border)
    return _upscale(_as_float(x_NHWC), r, border)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _upscale(x: jax.Array, r: int, border: str) -> jax.Array:
    return _merge(_merge(_hr_blocks(x, r, border), 3), 1)


def _merge(x: jax.Array, axis: int) -> jax.Array:
    """Merges ``axis`` and ``axis + 1``: one pair at a time, the only reshapes Explicit mesh axes
    accept next to a sharded batch axis without an ``out_sharding`` (two pairs at once raise)."""
    return x.reshape(x.shape[:axis] + (x.shape[axis] * x.shape[axis + 1],) + x.shape[axis + 2 :])


def _hr_blocks(x: jax.Array, r: int, border: str) -> jax.Array:
    """``(n, h, w, c) -> (n, h, r, w, r, c)``: HR pixel ``(i*r + a, j*r + b)`` at ``[:, i, a, j, b]``.

    Axes are only ever added (stacks) and merged by the callers (:func:`_merge`), never split.
    """
    h, w = x.shape[1:3]
    bank = upscale_taps(r)
    x = jnp.stack(_bank(_lr_padded(x, border), 2, bank, w), axis=3)  # (n, h + 4, w, b, c)
    return jnp.stack(_bank(x, 1, bank, h), axis=2)


def _check_dims(**dims) -> None:
    for name, v in dims.items():
        ops.check_positive_int(v, name)


def upscale_flops(h: int, w: int, c: int, r: int) -> int:
    """FLOPs that :func:`upscale` (and :func:`upscale_phases`) executes on an ``(h, w, c)`` LR image.

    XLA's count (multiplies and adds, 1 FLOP each): the column pass computes all ``r`` phases on
    the ``h + 4`` edge-padded LR rows, the row pass on the ``w*r`` HR columns, each
    :func:`_bank_flops` per position: ``r`` phases of 4 non-zero taps (7 FLOPs) with the centre
    product of mirrored phases shared, a copy for the phase ``t = 0`` of odd ``r``. Padding and
    interleaving move data and are not counted.
    """
    _check_dims(h=h, w=w, c=c, r=r)
    per_position = _bank_flops(upscale_taps(r))
    return c * per_position * ((h + UPSCALE_TAPS - 1) * w + h * w * r)


def downscale_flops(H: int, W: int, c: int, r: int) -> int:
    """FLOPs that :func:`downscale` executes on an ``(H, W, c)`` HR image (XLA's count).

    One multiply per non-zero tap (``4r`` for even ``r``; ``4r - 1`` less the two zeros at
    distance ``r``, ``cubic(1) = 0``, for odd ``r``) and one add fewer, per output: the row pass
    makes ``(H/r) * W * c`` outputs, the column pass ``(H/r) * (W/r) * c``. Padding is not
    counted, nor ``round_passes``' rounding.
    """
    _check_dims(H=H, W=W, c=c, r=r)
    if H % r or W % r:
        raise ValueError(f"H and W must be divisible by r={r}, got H={H}, W={W}")
    h = H // r
    return c * _bank_flops(downscale_taps(r)) * (h * W + h * (W // r))
