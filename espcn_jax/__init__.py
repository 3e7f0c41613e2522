"""espcn_jax: exact sub-pixel operators and compute-matched super-resolution studies in JAX.

``espcn_jax.load(run_dir)`` returns a trained model as a callable ``upscale(image) -> image``
(:class:`espcn_jax.inference.Upscaler`).
"""

import os

__version__ = "0.1.0"

# gs:// run directories through gcsfs, the client the tests run against an emulator
# (espcn_jax/storage.py says why); a value the user set is kept.
os.environ.setdefault("EPATH_USE_TF", "false")


def load(run_dir, *, tile="default"):
    """The trained model of ``run_dir`` (``experiments/train.py --workdir``) as an
    :class:`espcn_jax.inference.Upscaler`: ``upscale(uint8 grey or RGB image) -> uint8 image``.

    ``tile``: LR pixels per tile side for large images (None: whole images); the pixels do not
    depend on it. Imported on first use, so that ``import espcn_jax`` stays light.
    """
    from espcn_jax import inference

    if tile == "default":
        tile = inference.DEFAULT_TILE
    return inference.load(run_dir, tile=tile)
