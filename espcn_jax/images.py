"""Image helpers both sides of the package own: MATLAB's uint8 rounding, its luma, its ``modcrop``.

The bicubic resizer, the training pipeline and the evaluation protocol all need these, so they
live here rather than in any one of them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def quantize(x: jax.Array) -> jax.Array:
    """Clips to [0, 255] and rounds half away from zero, as MATLAB's ``uint8()``; keeps a float dtype.

    ``jnp.round`` rounds half to even; MATLAB does not, and exact halves are common after the
    dyadic x2 bicubic filters.
    """
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.float32)
    return jnp.floor(jnp.clip(x, 0.0, 255.0) + 0.5)


def _rgb_ints(x_HWC: jax.Array) -> jax.Array:
    """RGB on the last axis as int32 uint8 values (floats quantized as MATLAB's ``uint8()``)."""
    x = jnp.asarray(x_HWC)
    if x.shape[-1:] != (3,):
        raise ValueError(f"x_HWC must have 3 channels (RGB) on its last axis, got shape {x.shape}")
    if jnp.issubdtype(x.dtype, jnp.floating):
        x = quantize(x)
    return x.astype(jnp.int32)


def rgb_to_y(x_HWC: jax.Array) -> jax.Array:
    """MATLAB ``rgb2ycbcr`` luma of a uint8 RGB image: ``round(16 + (65.481 R + 128.553 G + 24.966 B)/255)``.

    ``(..., 3) -> (...)`` float32. Computed in exact integer arithmetic
    (``Y * 255000 = 4080000 + 65481 R + 128553 G + 24966 B``) so ties round as MATLAB's does; float
    inputs are first quantized to uint8 values.
    """
    rgb = _rgb_ints(x_HWC)
    n = 65481 * rgb[..., 0] + 128553 * rgb[..., 1] + 24966 * rgb[..., 2]
    y = (16 * 255000 + n + 127500) // 255000
    return y.astype(jnp.float32)


def mod_crop(image_HWC: np.ndarray, r: int) -> np.ndarray:
    """The top-left ``(H - H % r, W - W % r)`` part, as MATLAB ``modcrop``."""
    h, w = image_HWC.shape[:2]
    return image_HWC[: h - h % r, : w - w % r]


# MATLAB rgb2ycbcr on uint8, times 255000 so that it runs in exact integers: rows Y, Cb, Cr.
_YCBCR_OFFSET = np.array([16, 128, 128])
_YCBCR_MATRIX = np.array(
    [[65481, 128553, 24966], [-37797, -74203, 112000], [112000, -93786, -18214]]
)  # x 1000: MATLAB's coefficients 65.481, 128.553, ...; divided by 255 below


def rgb_to_ycbcr(rgb_HWC: np.ndarray) -> np.ndarray:
    """MATLAB ``rgb2ycbcr`` of a uint8 RGB image: uint8 ``(..., 3)`` Y, Cb, Cr (ITU-R BT.601).

    ``Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255``, ``Cb = 128 + (-37.797 R - 74.203 G +
    112 B) / 255``, ``Cr = 128 + (112 R - 93.786 G - 18.214 B) / 255``, each rounded half up in exact
    integer arithmetic (all three are positive), so Y equals :func:`rgb_to_y` bit for bit.
    """
    rgb = np.asarray(rgb_HWC)
    if rgb.dtype != np.uint8 or rgb.shape[-1:] != (3,):
        raise ValueError(f"rgb_HWC must be uint8 with 3 channels, got {rgb.dtype} {rgb.shape}")
    n = rgb.astype(np.int64) @ _YCBCR_MATRIX.T + _YCBCR_OFFSET * 255000
    return ((n + 127500) // 255000).astype(np.uint8)


def ycbcr_to_rgb(ycbcr_HWC: np.ndarray) -> np.ndarray:
    """MATLAB ``ycbcr2rgb`` of a uint8 YCbCr image: the inverse matrix in float64, rounded to uint8.

    Saturates to [0, 255] (YCbCr triples outside the RGB cube exist), rounding half away from zero
    as MATLAB's ``uint8()``.
    """
    ycbcr = np.asarray(ycbcr_HWC)
    if ycbcr.dtype != np.uint8 or ycbcr.shape[-1:] != (3,):
        raise ValueError(
            f"ycbcr_HWC must be uint8 with 3 channels, got {ycbcr.dtype} {ycbcr.shape}"
        )
    inverse = np.linalg.inv(_YCBCR_MATRIX / 255000.0)  # (ycbcr - offset) -> RGB in [0, 255]
    rgb = (ycbcr.astype(np.float64) - _YCBCR_OFFSET) @ inverse.T
    return np.floor(np.clip(rgb, 0.0, 255.0) + 0.5).astype(np.uint8)


def rgb_to_grey(x_HWC: jax.Array) -> jax.Array:
    """The grey level of RGB uint8 values, ``round(0.299 R + 0.587 G + 0.114 B)``: ``(..., 3) -> (...)``.

    The luma of :func:`rgb_to_y` without its offset and ``219 / 255`` range (MATLAB's ``rgb2gray``
    weights to three digits), so ``R = G = B = v`` gives ``v``: how an RGB model's output on a grey
    image (fed as ``R = G = B``) becomes grey again. Exact integers; float inputs are quantized first.
    """
    rgb = _rgb_ints(x_HWC)
    return ((299 * rgb[..., 0] + 587 * rgb[..., 1] + 114 * rgb[..., 2] + 500) // 1000).astype(
        jnp.float32
    )
