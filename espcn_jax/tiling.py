"""Exact tiling of translation-equivariant image functions: the receptive radius of a network
and the windows that hold each tile with that radius around it.

Every LR tile is computed inside a window that extends it by the radius on each side (clamped to
the image; windows near the border shift inward instead of shrinking, so every window along an axis
has one shape). An output pixel depends on no LR pixel farther than the radius, and the window's own
padding reaches no deeper than the radius, so each tile's pixels are the whole image's pixels
(tests/test_inference.py and tests/test_evaluate.py check this bit for bit for every family).
Inference (:mod:`espcn_jax.inference`) tiles large images to bound memory; evaluation
(:mod:`espcn_jax.evaluate`) tiles every image into a fixed set of window sides to bound the number
of compiled programs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from espcn_jax import bicubic, models, subpixel

BICUBIC_RADIUS = bicubic.UPSCALE_TAPS // 2  # LR pixels read on each side by bicubic.upscale


def receptive_radius(config: models.ModelConfig) -> int:
    """LR pixels on each side of an LR pixel that its ``r x r`` output pixels may depend on.

    A ``k``-tap ``"SAME"`` conv reads ``k // 2`` pixels on its longer side. ``lr``/``deconv``: the
    sum over their LR convs (``deconv``'s transposed conv as its LR conv, :func:`subpixel.plan`).
    ``hr``/``lr_tied``: bicubic reads 2 LR pixels around each LR cell, and HR convs of total radius
    ``rho`` reach ``ceil(rho / r)`` LR cells further (``lr_tied`` computes the same function; its
    tied kernels' extra taps are structural zeros). ``residual`` adds bicubic's 2.

    A radius, not a window side: tiling needs the reach on each side of a pixel (a window of
    ``2 * radius + 1`` holds the receptive field, whose side ``models.receptive_field`` gives).
    """
    r, ks = config.scale, config.kernel_sizes
    if config.family == "lr":
        radius = sum(k // 2 for k in ks[:-1])
        if config.upsample_padding == "SAME":
            radius += ks[-1] // 2
        else:
            radius += max(max(pads) for pads in config.upsample_padding)
    elif config.family == "deconv":
        radius = sum(k // 2 for k in ks[:-1])
        axis = subpixel.plan((ks[-1], ks[-1]), r, "SAME")[0]
        lo = axis.lr_padding[0]
        radius += max(lo, axis.taps - 1 - lo)
    else:  # hr, lr_tied: a dilated kernel reaches as far as its effective (spread) size
        spans = config.effective_kernel_sizes()
        radius = BICUBIC_RADIUS + math.ceil(sum(k // 2 for k in spans) / r)
    return max(radius, BICUBIC_RADIUS) if config.residual else radius


def windows(n: int, tile: int | None, margin: int) -> list[tuple[int, int, int, int]]:
    """``(start, stop, window_start, window_stop)`` tiles covering ``range(n)`` along one axis.

    Cores of ``tile`` pixels; each window is ``tile + 2 * margin`` long and holds its core with at
    least ``margin`` pixels on every side that is not the image border. One window (the whole axis)
    when ``tile`` is None or the axis is no longer than a window.
    """
    size = None if tile is None else tile + 2 * margin
    if size is None or n <= size:
        return [(0, n, 0, n)]
    out = []
    for start in range(0, n, tile):
        stop = min(start + tile, n)
        lo = min(max(start - margin, 0), n - size)
        out.append((start, stop, lo, lo + size))
    return out


def upscale_tiled(
    fn: Callable[[np.ndarray], np.ndarray],
    x_HWC: np.ndarray,
    r: int,
    tile: int | None | tuple[int | None, int | None],
    margin: int,
) -> np.ndarray:
    """``fn`` (``(h, w, C) -> (h*r, w*r, C')``, translation-equivariant with radius ``margin``)
    applied window by window: the same pixels as ``fn(x_HWC)``. ``tile``: one for both axes, or
    ``(rows, columns)``."""
    h, w = x_HWC.shape[:2]
    tile_h, tile_w = tile if isinstance(tile, tuple) else (tile, tile)
    out = None
    for y0, y1, wy0, wy1 in windows(h, tile_h, margin):
        for x0, x1, wx0, wx1 in windows(w, tile_w, margin):
            sr = np.asarray(fn(x_HWC[wy0:wy1, wx0:wx1]))
            if out is None:
                out = np.empty((h * r, w * r, sr.shape[-1]), sr.dtype)
            rows = slice(r * (y0 - wy0), r * (y1 - wy0))
            cols = slice(r * (x0 - wx0), r * (x1 - wx0))
            out[r * y0 : r * y1, r * x0 : r * x1] = sr[rows, cols]
    return out


def window_tile(n: int, margin: int, sides: Sequence[int]) -> int | None:
    """The tile (``side - 2 * margin``) along an axis of ``n`` pixels for the window side of
    ``sides`` that computes the fewest pixels (``ceil(n / tile) * side``; ties: the larger side,
    fewer calls), among sides ``<= n`` that leave a tile; None (the whole axis as one window) when
    no side fits. Every window of the axis then has that side (:func:`windows`)."""
    best = None
    for side in sorted(sides):
        tile = side - 2 * margin
        if tile < 1 or side > n:
            continue
        cost = math.ceil(n / tile) * side if n > side else n
        if best is None or cost <= best[0]:
            best = (cost, tile)
    return None if best is None else best[1]
