"""Applying a trained model to a user's images: ``espcn_jax.load(run_dir)`` returns an
:class:`Upscaler`, a callable ``uint8 image -> uint8 image r times larger``.

Colour conventions are the literature's (MATLAB's):

- a Y model (``channels=1``) upscales the Y of ``rgb2ycbcr`` (:func:`images.rgb_to_ycbcr`, uint8)
  with the network and Cb, Cr with bicubic ``imresize`` (:func:`bicubic.upscale`, rounded), then
  converts back with ``ycbcr2rgb`` (:func:`images.ycbcr_to_rgb`); a grey image is its own Y;
- an RGB model (``channels=3``) upscales RGB; a grey image is fed as ``R = G = B``
  (:func:`data.as_rgb`) and its output made grey again (:func:`images.rgb_to_grey`);
- grey in, grey out, in the input's layout (``(H, W)`` or ``(H, W, 1)``).

The network sees ``LR / 255`` and its output times 255 is rounded as MATLAB's ``uint8()``, as in the
evaluation protocol (:mod:`espcn_jax.evaluate`), at full float32 matmul precision.

Large images are upscaled in tiles, exactly: every LR tile is computed inside a window that extends
it by :func:`receptive_radius` LR pixels on each side (clamped to the image; windows near the
border shift inward instead of shrinking, so every tile of an image shares one compiled shape). An
output pixel depends on no LR pixel farther than the radius, the window's own padding reaches no
deeper than the radius, so each tile's pixels are the whole image's pixels; the tests check this
bit for bit for every family.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from flax import nnx

from espcn_jax import bicubic, evaluate, images, models, ops, storage, subpixel

DEFAULT_TILE = 256  # LR pixels per tile side; (256 + 2 * radius)^2 LR pixels per window
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
    else:  # hr, lr_tied
        radius = BICUBIC_RADIUS + math.ceil(sum(k // 2 for k in ks) / r)
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
    fn: Callable[[np.ndarray], np.ndarray], x_HWC: np.ndarray, r: int, tile: int | None, margin: int
) -> np.ndarray:
    """``fn`` (``(h, w, C) -> (h*r, w*r, C')``, translation-equivariant with radius ``margin``)
    applied window by window: the same pixels as ``fn(x_HWC)``."""
    h, w = x_HWC.shape[:2]
    out = None
    for y0, y1, wy0, wy1 in windows(h, tile, margin):
        for x0, x1, wx0, wx1 in windows(w, tile, margin):
            sr = np.asarray(fn(x_HWC[wy0:wy1, wx0:wx1]))
            if out is None:
                out = np.empty((h * r, w * r, sr.shape[-1]), sr.dtype)
            rows = slice(r * (y0 - wy0), r * (y1 - wy0))
            cols = slice(r * (x0 - wx0), r * (x1 - wx0))
            out[r * y0 : r * y1, r * x0 : r * x1] = sr[rows, cols]
    return out


@functools.partial(jax.jit, static_argnums=(0, 3))
def _network(apply: evaluate.Apply, state, lr_HWC: jax.Array, grey: bool) -> jax.Array:
    """uint8 LR -> the model on LR / 255 -> 255 * SR rounded as MATLAB's uint8 (uint8); ``grey``:
    a grey image fed to an RGB model as R = G = B, its output made grey again."""
    x = lr_HWC[None].astype(jnp.float32) / 255.0
    if grey:
        x = jnp.repeat(x, 3, axis=-1)
    sr = images.quantize(255.0 * apply(state, x)[0].astype(jnp.float32))
    if grey:
        sr = images.rgb_to_grey(sr)[..., None]
    return sr.astype(jnp.uint8)


@functools.partial(jax.jit, static_argnums=1)
def _bicubic(lr_HWC: jax.Array, r: int) -> jax.Array:
    """MATLAB ``imresize(x, r, 'bicubic')`` of uint8 channels, rounded to uint8."""
    return images.quantize(bicubic.upscale(lr_HWC[None], r)[0]).astype(jnp.uint8)


def by_rows(fn, x: np.ndarray, rows: int = 256, out: np.ndarray | None = None) -> np.ndarray:
    """A pixelwise uint8 ``fn`` applied ``rows`` rows at a time (into ``out``, which may be ``x``),
    so that its float64 temporaries stay small on large images."""
    out = np.empty_like(x) if out is None else out
    for i in range(0, x.shape[0], rows):
        out[i : i + rows] = fn(x[i : i + rows])
    return out


def check_image(image) -> np.ndarray:
    """A uint8 ``(H, W)``, ``(H, W, 1)`` or ``(H, W, 3)`` image, as an array."""
    x = np.asarray(image)
    if x.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {x.dtype}")
    if not (x.ndim == 2 or (x.ndim == 3 and x.shape[-1] in (1, 3))):
        raise ValueError(f"image must have shape (H, W), (H, W, 1) or (H, W, 3), got {x.shape}")
    if min(x.shape[:2]) < 1:
        raise ValueError(f"image is empty: shape {x.shape}")
    return x


class Upscaler:
    """``upscaler(image) -> image``: a trained model applied to uint8 images of any size.

    ``tile``: LR pixels per tile side (None: the whole image at once). The pixels do not depend
    on it; memory does.
    """

    def __init__(self, model: nnx.Module, *, tile: int | None = DEFAULT_TILE):
        config = getattr(model, "config", None)
        if not isinstance(config, models.ModelConfig):
            raise ValueError(f"model must be a network of espcn_jax.models, got {type(model)}")
        if config.channels not in (1, 3):
            raise ValueError(f"the model has {config.channels} channels; need 1 (Y) or 3 (RGB)")
        self.model = model
        self.config = config
        self.scale = config.scale
        self.channels = config.channels
        self.tile = None if tile is None else ops.check_positive_int(tile, "tile")
        self.radius = receptive_radius(config)
        self._apply, self._state = evaluate.split_model(model)

    def network(self, lr_HWC: np.ndarray) -> np.ndarray:
        """The network alone on uint8 ``(h, w, channels)`` (or a grey ``(h, w, 1)`` for an RGB
        model): uint8 ``(h*r, w*r, channels or 1)``, tiled."""
        lr_HWC = check_image(lr_HWC)
        if lr_HWC.ndim != 3 or lr_HWC.shape[-1] not in (1, self.channels):
            raise ValueError(f"lr_HWC must be (h, w, {self.channels}), got {lr_HWC.shape}")
        grey = lr_HWC.shape[-1] != self.channels

        def run(x):
            with jax.default_matmul_precision(evaluate.PRECISION):
                return _network(self._apply, self._state, x, grey)

        return upscale_tiled(run, lr_HWC, self.scale, self.tile, self.radius)

    def __call__(self, image) -> np.ndarray:
        x = check_image(image)
        flat = x.ndim == 2
        x = x[..., None] if flat else x
        r = self.scale
        if x.shape[-1] == 1 or self.channels == 3:  # grey stays grey
            out = self.network(x)
            return out[..., 0] if flat else out
        ycbcr = by_rows(images.rgb_to_ycbcr, x)
        out = np.empty((x.shape[0] * r, x.shape[1] * r, 3), np.uint8)
        out[..., :1] = self.network(ycbcr[..., :1])
        out[..., 1:] = upscale_tiled(
            lambda w: _bicubic(w, r), ycbcr[..., 1:], r, self.tile, BICUBIC_RADIUS
        )
        return by_rows(images.ycbcr_to_rgb, out, out=out)


def load(run_dir: str | os.PathLike, *, tile: int | None = DEFAULT_TILE) -> Upscaler:
    """The trained model of a run directory (``experiments/train.py --workdir``) as an Upscaler.

    A missing directory, or one holding no readable checkpoint, is a one-line ValueError naming it.
    """
    run_dir = epath.Path(run_dir)  # local or gs://
    storage.check_reachable(run_dir, write=False)
    if not run_dir.is_dir():
        raise ValueError(f"checkpoint directory not found: {run_dir}")
    from espcn_jax import training  # the engine; imported here so that inference stays light

    try:
        model, _ = training.restore(run_dir)
    except ValueError:
        raise
    except Exception as e:  # Orbax and file-format errors carry long multi-line messages
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(f"cannot restore a trained model from {run_dir}: {first}") from None
    return Upscaler(model, tile=tile)
