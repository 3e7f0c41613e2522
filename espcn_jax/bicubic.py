"""MATLAB ``imresize`` bicubic resizing by an integer scale ``r``, as fixed convolutions in JAX.

Both directions use Keys' cubic kernel (a = -0.5) with MATLAB's geometry: output pixel ``o``
(0-based) samples the input at ``(o + 0.5) / s - 0.5`` for scale ``s``, and weights are normalised to
sum to one. Samples outside the image follow ``border``:

- ``"edge"`` (default): clamp the index, i.e. replicate the end pixels. This is what MATLAB's
  ``imresize.m`` does (``indices = min(max(1, indices), in_length)``, "has the effect of replicating
  end-points"), and with ``round_passes=True`` it reproduces the LR images of the Set5 benchmark
  bit for bit.
- ``"symmetric"``: mirror with the edge repeated, ``aux = [1:n, n:-1:1]`` (the index rule of several
  Python ports of ``imresize``, and what DESIGN.md §2 assumed); ``jnp.pad(mode="symmetric")``.

``jax.image.resize`` instead renormalises the truncated kernel at the borders. All three differ only in
the outer two LR pixels. After :func:`upscale` only the outer ``r`` HR pixels depend on the choice
(cropped by the protocol); :func:`downscale` differs in the outer one or two LR pixels.

- :func:`downscale` (antialiased, kernel stretched by ``r``): a fixed separable depthwise convolution
  with stride ``r`` on the padded input; ``4r`` taps for even ``r``, ``4r - 1`` for odd ``r``.
- :func:`upscale`: an *efficient sub-pixel convolution*. Output phase ``a`` of each LR pixel ``i``
  samples the LR grid at ``i + t_a`` with ``t_a = (a + 0.5)/r - 0.5`` in ``(-0.5, 0.5)``; its 4 cubic
  taps sit on ``i-2..i+1`` (``t_a < 0``) or ``i-1..i+2`` (``t_a >= 0``). We run all phases as one
  5-tap separable depthwise conv on the LR grid (one zero tap per phase, executed and counted), then
  :func:`ops.pixel_shuffle`. ``jax.image.resize`` would build dense (out x in) matrices instead
  (DESIGN.md §2: 2.41 GFLOP per channel for x3 to 1080p).

All functions take float NHWC (integer input is cast to float32) and return float, unrounded unless
``round_passes`` asks for MATLAB's uint8 behaviour.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from espcn_jax import ops
from espcn_jax.images import quantize

BORDERS = ("edge", "symmetric")
UPSCALE_TAPS = 5  # LR taps i-2..i+2 per axis shared by all r phases (one of them zero per phase).


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


def _pad(x: jax.Array, axis: int, lo: int, hi: int, border: str) -> jax.Array:
    """Pads one axis: "edge" clamps indices; "symmetric" reads ``aux[j mod 2n]``, ``aux = [0..n-1, n-1..0]``."""
    widths = [(0, 0)] * x.ndim
    widths[axis] = (lo, hi)
    return jnp.pad(x, widths, mode=border)


def _depthwise(x_NHWC: jax.Array, kernel_HWIO: np.ndarray, strides: tuple[int, int]) -> jax.Array:
    """Depthwise VALID correlation; kernel ``(kh, kw, 1, C*m)``, output channel ``c*m + j``."""
    return lax.conv_general_dilated(
        x_NHWC,
        jnp.asarray(kernel_HWIO, x_NHWC.dtype),
        window_strides=strides,
        padding="VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=x_NHWC.shape[-1],
        precision=lax.Precision.HIGHEST,
    )


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
    _, hgt, wid, c = x.shape
    if hgt % r or wid % r:
        raise ValueError(f"x_NHWC height and width must be divisible by r={r}, got shape {x.shape}")
    taps = downscale_taps(r)
    lo = 3 * r // 2
    hi = len(taps) - r - lo
    col = np.tile(taps.reshape(-1, 1, 1, 1), (1, 1, 1, c))  # (T, 1, 1, C)
    x = _depthwise(_pad(x, 1, lo, hi, border), col, (r, 1))
    if round_passes:
        x = quantize(x)
    x = _depthwise(_pad(x, 2, lo, hi, border), col.reshape(1, -1, 1, c), (1, r))
    return quantize(x) if round_passes else x


def upscale_phases(
    x_NHWC: jax.Array, r: int, order: str = "tf", *, border: str = "edge"
) -> jax.Array:
    """Bicubic x``r`` before the shuffle: ``(N, h, w, C) -> (N, h, w, C*r*r)`` in shuffle ``order``.

    ``upscale(x, r) == ops.pixel_shuffle(upscale_phases(x, r, order), r, order)``. Channel
    ``(a*r + b)*C + c`` ("tf") or ``c*r*r + a*r + b`` ("torch") holds HR pixel ``(i*r + a, j*r + b)``.
    """
    r, order, border = ops.check_positive_int(r), ops.check_order(order), _check_border(border)
    x = _as_float(x_NHWC)
    c = x.shape[-1]
    phase_taps = upscale_taps(r)  # (a, k)
    p = UPSCALE_TAPS // 2
    # Rows: C -> C*r channels (c*r + a); columns: C*r -> C*r*r channels ((c*r + a)*r + b) = "torch".
    rows = np.tile(phase_taps.T.reshape(UPSCALE_TAPS, 1, 1, r), (1, 1, 1, c))
    x = _depthwise(_pad(x, 1, p, p, border), rows, (1, 1))
    cols = np.tile(phase_taps.T.reshape(1, UPSCALE_TAPS, 1, r), (1, 1, 1, c * r))
    x = _depthwise(_pad(x, 2, p, p, border), cols, (1, 1))
    return ops.convert_order(x, r, "torch", order)


def upscale(x_NHWC: jax.Array, r: int, *, border: str = "edge") -> jax.Array:
    """MATLAB ``imresize(x, r, 'bicubic')`` on a float image: ``(N, h, w, C) -> (N, h*r, w*r, C)``."""
    return ops.pixel_shuffle(upscale_phases(x_NHWC, r, "tf", border=border), r, "tf")


def _check_dims(**dims) -> None:
    for name, v in dims.items():
        ops.check_positive_int(v, name)


def upscale_flops(h: int, w: int, c: int, r: int) -> int:
    """FLOPs (2 x multiply-adds) that :func:`upscale` executes on an ``(h, w, c)`` LR image.

    Counts every tap of both separable passes, zero taps included: rows ``5 * h*w*c*r`` MACs, columns
    ``5 * h*w*c*r*r`` MACs. Padding and the shuffle move data and are not counted.
    """
    _check_dims(h=h, w=w, c=c, r=r)
    return 2 * UPSCALE_TAPS * h * w * c * (r + r * r)


def downscale_flops(H: int, W: int, c: int, r: int) -> int:
    """FLOPs (2 x multiply-adds) that :func:`downscale` executes on an ``(H, W, c)`` HR image.

    ``T`` taps (``4r`` or ``4r - 1``): the row pass makes ``(H/r) * W * c`` outputs, the column pass
    ``(H/r) * (W/r) * c``, each ``T`` MACs. Padding is not counted.
    """
    _check_dims(H=H, W=W, c=c, r=r)
    if H % r or W % r:
        raise ValueError(f"H and W must be divisible by r={r}, got H={H}, W={W}")
    taps = 4 * r - r % 2
    h = H // r
    return 2 * taps * c * (h * W + h * (W // r))
