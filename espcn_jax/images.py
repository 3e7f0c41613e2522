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


def rgb_to_y(x_HWC: jax.Array) -> jax.Array:
    """MATLAB ``rgb2ycbcr`` luma of a uint8 RGB image: ``round(16 + (65.481 R + 128.553 G + 24.966 B)/255)``.

    ``(..., 3) -> (...)`` float32. Computed in exact integer arithmetic
    (``Y * 255000 = 4080000 + 65481 R + 128553 G + 24966 B``) so ties round as MATLAB's does; float
    inputs are first quantized to uint8 values.
    """
    x = jnp.asarray(x_HWC)
    if x.shape[-1:] != (3,):
        raise ValueError(f"x_HWC must have 3 channels (RGB) on its last axis, got shape {x.shape}")
    if jnp.issubdtype(x.dtype, jnp.floating):
        x = quantize(x)
    rgb = x.astype(jnp.int32)
    n = 65481 * rgb[..., 0] + 128553 * rgb[..., 1] + 24966 * rgb[..., 2]
    y = (16 * 255000 + n + 127500) // 255000
    return y.astype(jnp.float32)


def mod_crop(image_HWC: np.ndarray, r: int) -> np.ndarray:
    """The top-left ``(H - H % r, W - W % r)`` part, as MATLAB ``modcrop``."""
    h, w = image_HWC.shape[:2]
    return image_HWC[: h - h % r, : w - w % r]
