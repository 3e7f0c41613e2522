"""The evaluation protocol of the super-resolution literature (DESIGN.md §3), for any ``sr_fn``.

Per image: HR mod-cropped to a multiple of ``r``; LR either given (a ``X_LR`` image next to
``X_HR``, the Set5 layout) or made from HR by MATLAB's bicubic ``imresize`` on uint8
(:func:`bicubic.downscale` with ``round_passes=True``, as :func:`pipeline.degrade` makes training
LR; it reproduces Set5's LR files bit for bit);
``SR = sr_fn(LR)`` clipped and rounded to uint8 (:func:`images.quantize`); Y by MATLAB's
``rgb2ycbcr`` (grey images used as they are); ``r`` pixels cropped from every border; PSNR and SSIM
per image, then the mean over images.

``channels`` says what the model sees: ``"rgb"`` (the colour LR image; Y is taken of the rounded SR)
or ``"y"`` (the Y of the LR image; SR is Y). ``round_lr=False`` with ``channels="y"`` and degraded LR
is the SRCNN/VDSR MATLAB code (``rgb2ycbcr`` on HR, ``imresize`` of the float Y down and up, round
once at the end); it reproduces the published bicubic table to the digit (BUILD_NOTES.md).

Folder rules (from :mod:`espcn_jax.data`): png/bmp/jpg/jpeg files directly in the directory;
other files are skipped with a warning on stderr; hidden files and subdirectories are ignored; an
unreadable image is a ValueError naming it. HR images whose size is not a multiple of ``r`` are
mod-cropped; given LR images must then be exactly ``(H // r, W // r)``.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np

from espcn_jax import bicubic, data, images, metrics, ops

LR_SOURCES = ("auto", "given", "degrade")
CHANNELS = ("rgb", "y")
SRFn = Callable[[jax.Array], jax.Array]  # (1, h, w, C) float32 in [0, 255] -> (1, h*r, w*r, C)


def bicubic_model(r: int) -> SRFn:
    """The built-in model: :func:`bicubic.upscale` (MATLAB ``imresize`` x``r``), jitted."""
    return jax.jit(lambda lr_NHWC: bicubic.upscale(lr_NHWC, r))


# The registry of --model values. A trained checkpoint slots in here as "checkpoint" once training
# exists; its factory will also take the checkpoint path.
MODELS: dict[str, Callable[[int], SRFn]] = {"bicubic": bicubic_model}


def make_model(name: str, r: int) -> SRFn:
    if name == "checkpoint":
        raise ValueError(
            "model 'checkpoint' is not available yet (training does not exist); "
            f"accepted: {', '.join(MODELS)}"
        )
    if name not in MODELS:
        raise ValueError(f"model must be one of {tuple(MODELS)}, got {name!r}")
    return MODELS[name](r)


def check_eval_scale(scale) -> int:
    r = ops.check_positive_int(scale, "scale")
    if r < 2:
        raise ValueError(f"scale must be an integer >= 2, got {scale!r}")
    return r


def find_images(data_dir: str | os.PathLike, lr_source: str = "auto") -> tuple[list, str]:
    """``([(hr_path, lr_path or None), ...], resolved lr_source)`` for a directory.

    ``auto`` is ``given`` when the directory has the ``*_HR`` / ``*_LR`` layout, else ``degrade``.
    In the pair layout ``degrade`` evaluates the ``*_HR`` images only.
    """
    if lr_source not in LR_SOURCES:
        raise ValueError(f"lr_source must be one of {LR_SOURCES}, got {lr_source!r}")
    paths = data.list_images(data_dir)
    paired = data.is_pair_layout(paths)
    if lr_source == "given" and not paired:
        raise ValueError(f"lr_source='given' needs *_HR / *_LR image pairs, none in {data_dir}")
    if paired:
        pairs = data.find_pairs(data_dir)
        if lr_source == "degrade":
            return [(hr, None) for hr, _ in pairs], "degrade"
        return list(pairs), "given"
    return [(p, None) for p in paths], "degrade"


def _check_sizes(hr_path, hr: np.ndarray, lr_path, lr: np.ndarray | None, r: int) -> None:
    """``hr`` before mod-crop; ``lr`` given or None."""
    h, w = hr.shape[0] // r, hr.shape[1] // r
    need = 2 * r + 2 * metrics.SSIM_RADIUS + 1
    if min(h, w) * r < need:
        raise ValueError(
            f"image {hr_path} is too small ({hr.shape[0]}x{hr.shape[1]}) for scale {r}: need "
            f"at least {need} pixels per side after mod-crop, for an 11x11 SSIM window after "
            "cropping r pixels per border"
        )
    if lr is None:
        return
    if lr.shape[:2] != (h, w):
        raise ValueError(
            f"LR image {lr_path} is {lr.shape[0]}x{lr.shape[1]} but HR image {hr_path} "
            f"({hr.shape[0]}x{hr.shape[1]}) needs {h}x{w} at scale {r}"
        )
    if lr.shape[2] != hr.shape[2]:
        raise ValueError(
            f"LR image {lr_path} has {lr.shape[2]} channels but HR image {hr_path} has {hr.shape[2]}"
        )


def _luma(x_HWC: np.ndarray | jax.Array) -> jax.Array:
    """Y of uint8-valued RGB (MATLAB ``rgb2ycbcr``), or the grey channel as it is: ``(H, W, 1)``."""
    return images.rgb_to_y(x_HWC)[..., None] if x_HWC.shape[-1] == 3 else x_HWC


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def make_lr(hr_HWC: jax.Array, r: int, channels: str, round_lr: bool) -> jax.Array:
    """The protocol's degraded LR of a mod-cropped uint8 HR image, in the model's ``channels``."""
    x = _luma(hr_HWC) if channels == "y" else hr_HWC
    return bicubic.downscale(x.astype(np.float32)[None], r, round_passes=round_lr)[0]


@functools.partial(jax.jit, static_argnums=(2, 3, 4))
def _scores(hr_HWC, lr_HWC, sr_fn: SRFn, r: int, channels: str) -> tuple[jax.Array, jax.Array]:
    """One image, traced once per shape: model, rounding, Y, border crop, PSNR and SSIM."""
    if channels == "y" and lr_HWC.shape[-1] == 3:
        lr_HWC = _luma(lr_HWC)
    lr = lr_HWC[None]
    sr = sr_fn(lr)
    want = (1, lr.shape[1] * r, lr.shape[2] * r, lr.shape[3])
    if tuple(sr.shape) != want:
        raise ValueError(f"sr_fn must map {lr.shape} to {want}, got {tuple(sr.shape)}")
    hr_y = metrics.shave(_luma(hr_HWC)[..., 0], r)
    sr_y = metrics.shave(_luma(images.quantize(sr[0]))[..., 0], r)
    return metrics.psnr(hr_y, sr_y), metrics.ssim(hr_y, sr_y)


def evaluate_image(
    hr_HWC: np.ndarray, lr_HWC: np.ndarray, sr_fn: SRFn, r: int, channels: str = "rgb"
) -> tuple[float, float]:
    """``(psnr, ssim)`` of one mod-cropped uint8 HR image and its LR image (model ``channels``).

    ``sr_fn`` is traced inside one jitted function per image shape, so it must be jit-able and
    hashable (a function, or ``jax.jit`` of one).
    """
    if channels not in CHANNELS:
        raise ValueError(f"channels must be one of {CHANNELS}, got {channels!r}")
    lr = np.asarray(lr_HWC, np.float32)  # one trace for given (uint8) and degraded (float) LR
    p, s = _scores(np.asarray(hr_HWC, np.uint8), lr, sr_fn, r, channels)
    return float(p), float(s)


def evaluate(
    sr_fn: SRFn,
    data_dir: str | os.PathLike,
    scale: int,
    *,
    lr_source: str = "auto",
    channels: str = "rgb",
    round_lr: bool = True,
) -> dict:
    """Runs the protocol on every image of ``data_dir``; returns means and per-image scores.

    Keys: ``psnr``, ``ssim`` (means over images), ``num_images``, ``images`` (``file``, ``psnr``,
    ``ssim`` per image, sorted by file name), ``scale``, ``lr_source`` (resolved: ``given`` or
    ``degrade``), ``channels``, ``round_lr``, ``data_dir``. ``round_lr`` only affects degraded LR.
    """
    r = check_eval_scale(scale)
    if channels not in CHANNELS:
        raise ValueError(f"channels must be one of {CHANNELS}, got {channels!r}")
    jobs, source = find_images(data_dir, lr_source)
    rows = []
    for hr_path, lr_path in jobs:
        hr = data.load_image(hr_path)
        lr = None if lr_path is None else data.load_image(lr_path)
        _check_sizes(hr_path, hr, lr_path, lr, r)
        hr = images.mod_crop(hr, r)
        if lr is None:
            lr = make_lr(hr, r, channels, round_lr)
        p, s = evaluate_image(hr, lr, sr_fn, r, channels)
        rows.append({"file": Path(hr_path).name, "psnr": p, "ssim": s})
    return {
        "psnr": float(np.mean([row["psnr"] for row in rows])),
        "ssim": float(np.mean([row["ssim"] for row in rows])),
        "num_images": len(rows),
        "scale": r,
        "lr_source": source,
        "channels": channels,
        "round_lr": round_lr,
        "data_dir": str(data_dir),
        "images": rows,
    }
