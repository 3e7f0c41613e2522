"""PSNR and SSIM on the Y channel, as the super-resolution literature computes them (docs/evaluation.md).

Images are ``(H, W)`` or ``(H, W, C)`` arrays holding uint8 values (any dtype; floats in [0, 255]).
Everything is jit-able JAX; metrics are per image, so average per-image values over a data set
(never one PSNR over a batch).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

SSIM_SIGMA = 1.5
SSIM_RADIUS = 5  # int(3.5 * sigma + 0.5): scikit-image's 11-tap window for sigma = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03


def shave(x_HW: jax.Array, border: int) -> jax.Array:
    """Crops ``border`` pixels from each side of the first two (spatial) axes."""
    if border < 0:
        raise ValueError(f"border must be >= 0, got {border}")
    h, w = jnp.shape(x_HW)[:2]
    if 2 * border >= min(h, w):
        raise ValueError(f"border={border} leaves nothing of an image of shape {jnp.shape(x_HW)}")
    return x_HW[border : h - border, border : w - border]


def _check_pair(a, b) -> tuple[jax.Array, jax.Array]:
    a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
    if a.shape != b.shape:
        raise ValueError(f"images must have the same shape, got {a.shape} and {b.shape}")
    if a.ndim not in (2, 3):
        raise ValueError(f"images must be (H, W) or (H, W, C), got shape {a.shape}")
    return a, b


def psnr(a: jax.Array, b: jax.Array, data_range: float = 255.0) -> jax.Array:
    """``10 log10(data_range^2 / MSE)`` in dB over all pixels of one image; ``inf`` when identical.

    The squared error is summed per row, then over rows, so float32 keeps ~7 digits on large images.
    """
    a, b = _check_pair(a, b)
    sq = jnp.square(a - b).reshape(a.shape[0], -1)
    mse = jnp.sum(jnp.sum(sq, axis=1)) / sq.size
    return 10.0 * jnp.log10(data_range**2 / mse)


def _gaussian_taps() -> np.ndarray:
    d = np.arange(-SSIM_RADIUS, SSIM_RADIUS + 1)
    g = np.exp(-0.5 * (d / SSIM_SIGMA) ** 2)
    return g / g.sum()


def _blur_valid(x_NHW: jax.Array) -> jax.Array:
    """Separable 11x11 Gaussian of each of N maps, VALID: window positions fully inside the image."""
    g = _gaussian_taps().astype(np.float32)
    dn = ("NHWC", "HWIO", "NHWC")
    hi = lax.Precision.HIGHEST
    x = x_NHW[..., None]
    x = lax.conv_general_dilated(
        x, g.reshape(-1, 1, 1, 1), (1, 1), "VALID", dimension_numbers=dn, precision=hi
    )
    x = lax.conv_general_dilated(
        x, g.reshape(1, -1, 1, 1), (1, 1), "VALID", dimension_numbers=dn, precision=hi
    )
    return x[..., 0]


def ssim(a: jax.Array, b: jax.Array, data_range: float = 255.0) -> jax.Array:
    """Mean SSIM (Wang et al. 2004) with an 11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03.

    Equals ``skimage.metrics.structural_similarity(a, b, gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=255)``: population (co)variances and the mean over the
    positions where the window lies inside the image (scikit-image crops 5 pixels per side). For
    ``(H, W, C)`` the per-channel SSIMs are averaged (scikit-image's ``channel_axis=-1``). Both images
    are shifted by ``-data_range/2`` first: variances are shift-invariant, and smaller second moments
    lose less to float32 cancellation in ``E[x^2] - E[x]^2``.
    """
    a, b = _check_pair(a, b)
    if min(a.shape[:2]) < 2 * SSIM_RADIUS + 1:
        raise ValueError(f"images must be at least 11x11 for SSIM, got shape {a.shape}")
    # Channels to the front: (C, H, W); the five moment maps of every channel blurred as one batch.
    x = jnp.moveaxis(a.reshape(a.shape[:2] + (-1,)), -1, 0) - data_range / 2
    y = jnp.moveaxis(b.reshape(b.shape[:2] + (-1,)), -1, 0) - data_range / 2
    c = x.shape[0]
    moments = _blur_valid(jnp.concatenate([x, y, x * x, y * y, x * y], axis=0))
    mx, my, mxx, myy, mxy = (moments[i * c : (i + 1) * c] for i in range(5))
    vx, vy, vxy = mxx - mx * mx, myy - my * my, mxy - mx * my
    ux, uy = mx + data_range / 2, my + data_range / 2
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return jnp.mean(s)
