"""Validation of a model under training by the literature's protocol (:mod:`espcn_jax.evaluate`).

Sets are named as data sources: ``skimage:SPLIT`` (the embedded photos, e.g.
``skimage:validation``), ``folder:PATH`` (a directory of images or of Set5-style HR/LR pairs) and
``tfds:NAME`` (its ``validation`` split).
"""

from __future__ import annotations

import functools

from flax import nnx

from espcn_jax import data, evaluate


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


def evaluate_model(model: nnx.Module, source: data.Source, scale: int) -> dict:
    """Mean PSNR/SSIM of ``model`` on ``source`` by :func:`evaluate.evaluate_source` (the model's
    parameters are traced there: no recompilation per evaluation), and ``per_image``: ``{"names":
    [...], "psnr": [...], "ssim": [...]}`` in the set's image order."""
    result = evaluate.evaluate_source(model, source, scale)
    return {k: result[k] for k in ("psnr", "ssim", "num_images", "per_image")}
