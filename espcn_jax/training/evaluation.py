"""Validation of a model under training by the literature's protocol (:mod:`espcn_jax.evaluate`).

Sets are named as data sources: ``skimage:SPLIT`` (the embedded photos, e.g.
``skimage:validation``), ``folder:PATH`` (a directory of images or of Set5-style HR/LR pairs) and
``tfds:NAME`` (its ``validation`` split).
"""

from __future__ import annotations

import functools

import jax
import numpy as np
from flax import nnx

from espcn_jax import data, evaluate, images


@functools.cache
def load_set(name: str) -> data.Source:
    kind, _, arg = name.partition(":")
    if kind == "skimage":
        return data.make_source("skimage", split=arg or "validation")
    if kind == "folder":
        return data.make_source(name)
    if kind == "tfds":
        return data.make_source(name, split="validation")
    raise ValueError(
        f"config.eval.sets: unknown set {name!r}; use skimage:SPLIT, folder:PATH, tfds:NAME"
    )


def evaluate_model(model: nnx.Module, source: data.Source, scale: int, channels: str) -> dict:
    """Mean PSNR/SSIM (Y, ``scale`` pixels shaved) of ``model`` (``[0, 1]`` in and out) on a set.

    TODO(infer): use ``espcn_jax.evaluate``'s model-aware entry point once it lands; today's
    ``evaluate_image`` takes an ``sr_fn`` on ``[0, 255]`` as a static argument, so this recompiles
    per image shape at every evaluation.
    """
    graphdef, params = nnx.split(model)
    sr_fn = jax.jit(lambda lr: nnx.merge(graphdef, params)(lr / 255.0) * 255.0)
    rows = []
    for k, hr in enumerate(source.hr):
        hr = images.mod_crop(hr, scale)
        if source.lr is not None:
            lr = source.lr[k]
        else:
            lr = np.asarray(evaluate.make_lr(hr, scale, channels, True))
        rows.append(evaluate.evaluate_image(hr, lr, sr_fn, scale, channels))
    psnr, ssim = np.mean(rows, axis=0)
    return {"psnr": float(psnr), "ssim": float(ssim), "num_images": len(rows)}
