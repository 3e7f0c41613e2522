"""The evaluation protocol of the super-resolution literature (docs/evaluation.md), for any model.

A model maps float LR images in [0, 1] to float SR images in [0, 1] (the range the training
pipeline feeds), ``(1, h, w, C) -> (1, h*r, w*r, C)``: an :class:`nnx.Module` or a plain jit-able
function. Per image:

- HR mod-cropped to a multiple of ``r``; LR either given (a ``X_LR`` image next to ``X_HR``, the
  Set5 layout, or a data source's LR) or made from HR by MATLAB's bicubic ``imresize`` on uint8
  (:func:`bicubic.downscale` with ``round_passes=True``, as :func:`pipeline.degrade` makes training
  LR; it reproduces Set5's LR files bit for bit);
- the model sees ``LR / 255``; ``255 * SR`` is clipped and rounded to uint8 as MATLAB's ``uint8()``
  (:func:`images.quantize`);
- Y by MATLAB's ``rgb2ycbcr``; ``r`` pixels cropped from every border; PSNR and SSIM per image, then
  the mean over images.

``channels`` says what the model sees: ``"rgb"`` (the colour LR image; Y is taken of the rounded
SR) or ``"y"`` (the Y of the LR image; SR is Y). By default it follows the model's
``config.channels`` (1: ``"y"``, 3: ``"rgb"``), and ``"rgb"`` for plain functions.

Grey images are scored on their grey level as it is (MATLAB's code applies ``rgb2ycbcr`` only to
three-channel images). A ``"y"`` model sees the grey level as Y; an ``"rgb"`` model sees it as
``R = G = B`` (:func:`data.as_rgb`) and its rounded output is made grey again by
:func:`images.rgb_to_grey` (``0.299 R + 0.587 G + 0.114 B``). In-memory :class:`data.Source`\\ s
store every image as RGB, so there an image whose three channels are equal counts as grey.

``round_lr=False`` with ``channels="y"`` and degraded LR is the SRCNN/VDSR MATLAB code
(``rgb2ycbcr`` on HR, ``imresize`` of the float Y down and up, round once at the end); it
reproduces the published bicubic table to the digit (BUILD_NOTES.md).

Every model is evaluated in float32: a network built with a ``bfloat16`` compute dtype (or
parameter dtype) is rebuilt without it (:func:`float32_model`; its parameters are float32, or cast
exactly), and it runs under ``jax.default_matmul_precision("highest")``, so that TPUs and TF32 GPUs
compute float32 convolutions in full precision and scores compare across devices.

Compilations are bounded. The model runs on windows of the image whose sides come from a fixed set
(:data:`WINDOWS`, LR pixels; :func:`tiling.window_tile` picks per axis the side that computes the
fewest pixels), each window extended by the network's receptive radius (:mod:`espcn_jax.tiling`),
so its rounded SR pixels are the whole image's, bit for bit. One image uses one window shape, so a
set of N sizes compiles the network at most ``min(N, len(WINDOWS) ** 2)`` times (plus one per side
shorter than the smallest window), and an ``nnx.Module`` is split into its graph (static) and its
state (a traced argument), so a new checkpoint of one architecture compiles nothing. The scoring
(Y, crop, PSNR, SSIM) is a second program per image shape that holds no model: it compiles once per
shape per process, shared by every model a sweep evaluates. ``windows=None`` runs each image whole
(one network program per shape); so do plain functions other than :func:`bicubic_model`, whose
receptive radius is unknown.

Folder rules (from :mod:`espcn_jax.data`): png/bmp/jpg/jpeg files directly in the directory;
other files are skipped with a warning on stderr; hidden files and subdirectories are ignored; an
unreadable image is a ValueError naming it. A directory whose images are named ``*_HR`` / ``*_LR``
has the pair layout; with ``lr_source="degrade"`` (or ``"auto"`` when no ``*_HR`` image has an
``*_LR`` partner) its ``*_HR`` images are evaluated with degraded LR. HR images whose size is not a
multiple of ``r`` are mod-cropped; given LR images must then be exactly ``(H // r, W // r)``.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from espcn_jax import bicubic, data, images, metrics, models, ops, tiling

LR_SOURCES = ("auto", "given", "degrade")
CHANNELS = ("rgb", "y")
SRFn = Callable[[jax.Array], jax.Array]  # (1, h, w, C) float32 in [0, 1] -> (1, h*r, w*r, C)
Model = nnx.Module | SRFn
PRECISION = "highest"  # jax.default_matmul_precision while a model runs
# LR window sides (pixels) evaluation tiles images into: steps of 1.5x and 4/3x, so that the chosen
# side computes at most ~1.5x an axis's pixels for typical radii (2x at worst) in <= 49 shapes.
WINDOWS = (32, 48, 64, 96, 128, 192, 256)


@dataclasses.dataclass(frozen=True)
class Bicubic:
    """The built-in model: :func:`bicubic.upscale` (MATLAB ``imresize`` x``scale``). Hashable by
    value (one compiled program per window shape for every instance), with its receptive radius."""

    scale: int
    receptive_radius: int = tiling.BICUBIC_RADIUS

    def __call__(self, lr_NHWC: jax.Array) -> jax.Array:
        return bicubic.upscale(lr_NHWC, self.scale)


def bicubic_model(r: int) -> SRFn:
    """The built-in model: :func:`bicubic.upscale` (MATLAB ``imresize`` x``r``)."""
    return Bicubic(r)


# The registry of --model values that need nothing but the scale. Trained models are loaded from a
# checkpoint directory instead (experiments/evaluate.py --model=checkpoint).
MODELS: dict[str, Callable[[int], SRFn]] = {"bicubic": bicubic_model}


def make_model(name: str, r: int) -> SRFn:
    if name not in MODELS:
        raise ValueError(f"model must be one of {tuple(MODELS)}, got {name!r}")
    return MODELS[name](r)


def check_eval_scale(scale) -> int:
    r = ops.check_positive_int(scale, "scale")
    if r < 2:
        raise ValueError(f"scale must be an integer >= 2, got {scale!r}")
    return r


# --- models: a static apply function and traced parameters ---------------------------------------


@dataclasses.dataclass(frozen=True)
class Apply:
    """The static half of a model: ``apply(state, lr_NHWC)``. Hashable, so jit keys on it.

    An ``nnx.Module`` contributes its ``GraphDef`` (equal for every module of one architecture), a
    plain function itself; the parameters travel separately as a traced pytree.
    """

    graphdef: Any = None
    fn: SRFn | None = None

    def __call__(self, state, lr_NHWC: jax.Array) -> jax.Array:
        if self.graphdef is not None:
            return nnx.merge(self.graphdef, state)(lr_NHWC)
        return self.fn(lr_NHWC)


def float32_model(model: nnx.Module) -> nnx.Module:
    """A network of :mod:`espcn_jax.models` with a ``bfloat16`` (any non-float32) compute or
    parameter dtype, rebuilt in float32 with the same parameters (cast exactly: float32 holds every
    bfloat16 value); any other module as it is."""
    cfg = getattr(model, "config", None)
    if not isinstance(cfg, models.ModelConfig):
        return model
    if cfg.dtype in (None, "float32") and cfg.param_dtype == "float32":
        return model
    f32 = dataclasses.replace(cfg, dtype=None, param_dtype="float32")
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: models.model_from_config(f32, rngs=nnx.Rngs(0))))

    def cast(x):
        return x.astype(jnp.float32) if jnp.issubdtype(x.dtype, jnp.floating) else x

    return nnx.merge(graphdef, jax.tree.map(cast, nnx.state(model)))


def receptive_radius(model: Model) -> int | None:
    """LR pixels an output pixel may read on each side (:func:`tiling.receptive_radius`) of a
    network of :mod:`espcn_jax.models` or of :func:`bicubic_model`; None for other models."""
    cfg = getattr(model, "config", None)
    if isinstance(cfg, models.ModelConfig):
        return tiling.receptive_radius(cfg)
    radius = getattr(model, "receptive_radius", None)
    return radius if isinstance(radius, int) else None


def split_model(model: Model) -> tuple[Apply, Any]:
    """``(apply, state)`` of an ``nnx.Module`` (``nnx.split`` of :func:`float32_model`) or a plain
    function (no state).

    The state is copied onto this process's first local device: parameters replicated over a
    training mesh (of every host) are evaluated by each process on its own, with no collective.
    """
    if isinstance(model, nnx.Module):
        graphdef, state = nnx.split(float32_model(model))
        state = jax.device_put(jax.device_get(state), jax.local_devices()[0])
        return Apply(graphdef=graphdef), state
    if not callable(model):
        raise ValueError(f"model must be an nnx.Module or a function, got {type(model).__name__}")
    return Apply(fn=model), None


def model_channels(model: Model, channels: str | None = None) -> str:
    """``channels`` checked against the model's ``config.channels`` (1: "y", 3: "rgb"), or from it."""
    if channels is not None and channels not in CHANNELS:
        raise ValueError(f"channels must be one of {CHANNELS}, got {channels!r}")
    count = getattr(getattr(model, "config", None), "channels", None)
    if count is None:
        return channels or "rgb"
    if count not in (1, 3):
        raise ValueError(f"the model has {count} channels; evaluation needs 1 (Y) or 3 (RGB)")
    own = "y" if count == 1 else "rgb"
    if channels is not None and channels != own:
        raise ValueError(f"channels={channels!r} but the model takes {own!r} (channels={count})")
    return own


# --- one image -----------------------------------------------------------------------------------


def _check_sizes(hr_name, hr: np.ndarray, lr_name, lr: np.ndarray | None, r: int) -> None:
    """``hr`` before mod-crop; ``lr`` given or None."""
    h, w = hr.shape[0] // r, hr.shape[1] // r
    need = 2 * r + 2 * metrics.SSIM_RADIUS + 1
    if min(h, w) * r < need:
        raise ValueError(
            f"image {hr_name} is too small ({hr.shape[0]}x{hr.shape[1]}) for scale {r}: need "
            f"at least {need} pixels per side after mod-crop, for an 11x11 SSIM window after "
            "cropping r pixels per border"
        )
    if lr is None:
        return
    if lr.shape[:2] != (h, w):
        raise ValueError(
            f"LR image {lr_name} is {lr.shape[0]}x{lr.shape[1]} but HR image {hr_name} "
            f"({hr.shape[0]}x{hr.shape[1]}) needs {h}x{w} at scale {r}"
        )
    if lr.shape[2] != hr.shape[2]:
        raise ValueError(
            f"LR image {lr_name} has {lr.shape[2]} channels but HR image {hr_name} has {hr.shape[2]}"
        )


def _luma(x_HWC: np.ndarray | jax.Array) -> jax.Array:
    """Y of uint8-valued RGB (MATLAB ``rgb2ycbcr``), or the grey channel as it is: ``(H, W, 1)``."""
    return images.rgb_to_y(x_HWC)[..., None] if x_HWC.shape[-1] == 3 else x_HWC


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def make_lr(hr_HWC: jax.Array, r: int, channels: str, round_lr: bool) -> jax.Array:
    """The protocol's degraded LR (values in [0, 255]) of a mod-cropped uint8 HR image, in the
    model's ``channels`` (a grey image stays grey)."""
    x = _luma(hr_HWC) if channels == "y" else hr_HWC
    return bicubic.downscale(x.astype(np.float32)[None], r, round_passes=round_lr)[0]


@functools.partial(jax.jit, static_argnums=(0, 3, 4))
def _super_resolve(apply: Apply, state, lr_HWC: jax.Array, r: int, channels: str) -> jax.Array:
    """The model on one LR window (values in [0, 255]), ``255 * SR`` rounded as MATLAB's
    ``uint8()``: uint8 ``(h*r, w*r, C)``. Traced once per architecture and window shape."""
    if channels == "y" and lr_HWC.shape[-1] == 3:
        lr_HWC = _luma(lr_HWC)
    if channels == "rgb" and lr_HWC.shape[-1] == 1:
        lr_HWC = jnp.repeat(lr_HWC, 3, axis=-1)  # a grey image as R = G = B
    lr = lr_HWC[None] / 255.0
    sr = apply(state, lr)
    want = (1, lr.shape[1] * r, lr.shape[2] * r, lr.shape[3])
    if tuple(sr.shape) != want:
        raise ValueError(f"the model must map {lr.shape} to {want}, got {tuple(sr.shape)}")
    return images.quantize(255.0 * sr[0].astype(jnp.float32)).astype(jnp.uint8)


@functools.partial(jax.jit, static_argnums=2)
def _score(hr_HWC: jax.Array, sr_HWC: jax.Array, r: int) -> tuple[jax.Array, jax.Array]:
    """PSNR and SSIM of one rounded SR image against its HR image: Y (or grey), ``r`` border
    pixels cropped. Holds no model: traced once per image shape for every model."""
    if sr_HWC.shape[-1] == 3 and hr_HWC.shape[-1] == 1:
        sr_y = images.rgb_to_grey(sr_HWC)
    else:
        sr_y = _luma(sr_HWC)[..., 0]
    hr_y = metrics.shave(_luma(hr_HWC)[..., 0], r)
    sr_y = metrics.shave(sr_y, r)
    return metrics.psnr(hr_y, sr_y), metrics.ssim(hr_y, sr_y)


def evaluate_image(
    hr_HWC: np.ndarray,
    lr_HWC: np.ndarray,
    model: Model,
    r: int,
    channels: str | None = None,
    *,
    windows: Sequence[int] | None = WINDOWS,
) -> tuple[float, float]:
    """``(psnr, ssim)`` of one mod-cropped uint8 HR image and its LR image (values in [0, 255]).

    ``hr_HWC`` with one channel is a grey image; ``lr_HWC`` has the HR image's channels, or one (Y)
    for a ``"y"`` model. A plain function ``model`` is a static jit argument (hashable: a function,
    or ``jax.jit`` of one); an ``nnx.Module``'s state is traced. ``windows``: the LR window sides
    the model runs on (module docstring); None: the whole image.
    """
    channels = model_channels(model, channels)
    apply, state = split_model(model)
    radius = receptive_radius(model)
    return _evaluate_image(apply, state, hr_HWC, lr_HWC, r, channels, radius, windows)


def _evaluate_image(
    apply, state, hr_HWC, lr_HWC, r, channels, radius, windows
) -> tuple[float, float]:
    lr = np.asarray(lr_HWC, np.float32)  # one trace for given (uint8) and degraded (float) LR

    def run(window: np.ndarray) -> jax.Array:
        with jax.default_matmul_precision(PRECISION):
            return _super_resolve(apply, state, window, r, channels)

    if radius is None or windows is None:
        sr = np.asarray(run(lr))  # on the host as tiles are: one scoring program per shape
    else:
        h, w = lr.shape[:2]
        tiles = (tiling.window_tile(h, radius, windows), tiling.window_tile(w, radius, windows))
        sr = tiling.upscale_tiled(run, lr, r, tiles, radius)
    with jax.default_matmul_precision(PRECISION):
        p, s = _score(np.asarray(hr_HWC, np.uint8), sr, r)
    return float(p), float(s)


# --- data sets -----------------------------------------------------------------------------------


def _run(
    model: Model,
    items: Iterable[tuple[str, str, np.ndarray, str | None, np.ndarray | None]],
    r: int,
    channels: str | None,
    round_lr: bool,
    windows: Sequence[int] | None,
) -> tuple[list[dict], str]:
    """Scores ``(hr_name, file, hr, lr_name, lr or None)`` items; ``(rows, resolved channels)``."""
    channels = model_channels(model, channels)
    apply, state = split_model(model)
    radius = receptive_radius(model)
    rows = []
    for hr_name, file, hr, lr_name, lr in items:
        _check_sizes(hr_name, hr, lr_name, lr, r)
        hr = images.mod_crop(hr, r)
        if lr is None:
            lr = make_lr(hr, r, channels, round_lr)
        p, s = _evaluate_image(apply, state, hr, lr, r, channels, radius, windows)
        rows.append({"file": file, "psnr": p, "ssim": s})
    return rows, channels


def _report(rows, r, source, channels, round_lr, name) -> dict:
    return {
        "psnr": float(np.mean([row["psnr"] for row in rows])),
        "ssim": float(np.mean([row["ssim"] for row in rows])),
        "num_images": len(rows),
        "scale": r,
        "lr_source": source,
        "channels": channels,
        "round_lr": round_lr,
        "data": name,
        "images": rows,
        "per_image": per_image(rows),
    }


def per_image(rows: list[dict]) -> dict[str, list]:
    """The per-image scores in the set's order as parallel lists: ``{"names": [file, ...],
    "psnr": [dB, ...], "ssim": [...]}`` (what records keep for paired per-image comparisons)."""
    return {
        "names": [row["file"] for row in rows],
        "psnr": [row["psnr"] for row in rows],
        "ssim": [row["ssim"] for row in rows],
    }


def _check_options(scale, lr_source: str) -> int:
    if lr_source not in LR_SOURCES:
        raise ValueError(f"lr_source must be one of {LR_SOURCES}, got {lr_source!r}")
    return check_eval_scale(scale)


def find_images(data_dir: str | os.PathLike, lr_source: str = "auto") -> tuple[list, str]:
    """``([(hr_path, lr_path or None), ...], resolved lr_source)`` for a directory.

    In the pair layout (images named ``*_HR`` / ``*_LR``) ``given`` needs every ``*_HR`` image's
    ``*_LR`` partner; ``degrade`` evaluates the ``*_HR`` images alone; ``auto`` is ``given`` when
    every ``*_HR`` image has its partner and ``degrade`` when none has. Other directories: every
    image is HR, ``degrade``.
    """
    if lr_source not in LR_SOURCES:
        raise ValueError(f"lr_source must be one of {LR_SOURCES}, got {lr_source!r}")
    paths = data.list_images(data_dir)
    if not data.is_pair_layout(paths):
        if lr_source == "given":
            raise ValueError(f"lr_source='given' needs *_HR / *_LR image pairs, none in {data_dir}")
        return [(p, None) for p in paths], "degrade"
    found: dict[str, dict[str, Path]] = {}
    for path in paths:
        m = data.PAIR_PATTERN.match(path.stem)
        found.setdefault(m["stem"], {})[m["kind"]] = path
    stems = sorted(found)
    hr_only = [s for s in stems if "HR" in found[s] and "LR" not in found[s]]
    lr_only = [s for s in stems if "HR" not in found[s]]
    if not any("HR" in found[s] for s in stems):
        raise ValueError(f"no *_HR images in {data_dir}, only *_LR ones")
    if lr_source == "auto":
        lr_source = "degrade" if len(hr_only) == len(stems) - len(lr_only) else "given"
    if lr_source == "degrade":
        return [(found[s]["HR"], None) for s in stems if "HR" in found[s]], "degrade"
    for s in hr_only + lr_only:
        ((kind, path),) = found[s].items()
        hint = " (--lr_source=degrade evaluates the *_HR images alone)" if kind == "HR" else ""
        raise ValueError(f"{path} has no matching {'LR' if kind == 'HR' else 'HR'} image{hint}")
    return [(found[s]["HR"], found[s]["LR"]) for s in stems], "given"


def evaluate(
    model: Model,
    data_dir: str | os.PathLike,
    scale: int,
    *,
    lr_source: str = "auto",
    channels: str | None = None,
    round_lr: bool = True,
    windows: Sequence[int] | None = WINDOWS,
) -> dict:
    """Runs the protocol on every image of ``data_dir``; returns means and per-image scores.

    Keys: ``psnr``, ``ssim`` (means over images), ``num_images``, ``images`` (``file``, ``psnr``,
    ``ssim`` per image, sorted by file name), ``per_image`` (the same as parallel lists ``names``,
    ``psnr``, ``ssim``: :func:`per_image`), ``scale``, ``lr_source`` (resolved: ``given`` or
    ``degrade``), ``channels`` (resolved), ``round_lr``, ``data`` (the directory). ``round_lr``
    only affects degraded LR. ``windows``: the LR window sides the model runs on (None: each image
    whole; the scores are the same, bit for bit). Images are read one at a time.
    """
    r = _check_options(scale, lr_source)
    model_channels(model, channels)  # bad channels fail before any image is read
    jobs, source = find_images(data_dir, lr_source)

    def items() -> Iterator:
        for hr_path, lr_path in jobs:
            lr = None if lr_path is None else data.load_image(lr_path)
            yield hr_path, Path(hr_path).name, data.load_image(hr_path), lr_path, lr

    rows, channels = _run(model, items(), r, channels, round_lr, windows)
    return _report(rows, r, source, channels, round_lr, str(data_dir))


def _grey_if_equal(hr: np.ndarray, lr: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """A Source's RGB images as grey ``(H, W, 1)`` when all their channels are equal."""

    def equal(x):
        return x is None or bool(np.all(x[..., :1] == x[..., 1:]))

    if equal(hr) and equal(lr):
        return hr[..., :1], None if lr is None else lr[..., :1]
    return hr, lr


def evaluate_source(
    model: Model,
    source: data.Source,
    scale: int,
    *,
    lr_source: str = "auto",
    channels: str | None = None,
    round_lr: bool = True,
    windows: Sequence[int] | None = WINDOWS,
) -> dict:
    """:func:`evaluate` on an in-memory :class:`data.Source` (e.g. ``data.make_source("skimage",
    split="validation")``): the same protocol and keys; ``data`` is the source's name, ``file``
    the last path component of each image's name. ``auto`` uses the source's LR images when it
    has them."""
    r = _check_options(scale, lr_source)
    model_channels(model, channels)
    if lr_source == "given" and source.lr is None:
        raise ValueError(f"lr_source='given' but data source {source.name!r} has no LR images")
    use_lr = source.lr is not None and lr_source != "degrade"

    def items() -> Iterator:
        for i, name in enumerate(source.names):
            hr, lr = _grey_if_equal(source.hr[i], source.lr[i] if use_lr else None)
            yield name, Path(name).name, hr, name if use_lr else None, lr

    rows, channels = _run(model, items(), r, channels, round_lr, windows)
    return _report(rows, r, "given" if use_lr else "degrade", channels, round_lr, source.name)
