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
evaluation protocol (:mod:`espcn_jax.evaluate`): in float32 (a ``bfloat16``-compute model is rebuilt
without it, :func:`evaluate.float32_model`) at ``"highest"`` matmul precision.

Large images are upscaled in tiles, exactly (:mod:`espcn_jax.tiling`): every LR tile is computed
inside a window that extends it by :func:`receptive_radius` LR pixels on each side, so every tile of
an image shares one compiled shape and the pixels equal the whole image's (tested bit for bit for
every family).
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from flax import nnx

from espcn_jax import bicubic, evaluate, images, models, ops, storage
from espcn_jax.tiling import BICUBIC_RADIUS, receptive_radius, upscale_tiled, windows

__all__ = ["BICUBIC_RADIUS", "Upscaler", "load", "receptive_radius", "upscale_tiled", "windows"]

DEFAULT_TILE = 256  # LR pixels per tile side; (256 + 2 * radius)^2 LR pixels per window


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
