"""ICNR initialisation (Aitken et al. 2017) and a checkerboard measure (DESIGN.md §1.4).

A sub-pixel layer (conv to ``C*r*r`` channels, then ``PS_r``) whose ``r*r`` phase kernels are equal
computes conv followed by nearest-neighbour upsampling: no checkerboard at initialisation. Which
output channels form one phase depends on the shuffle order: "tf" puts the phase outermost
(``(a*r+b)*C + c``), so the sub-kernel is tiled; "torch" puts it innermost (``c*r*r + a*r + b``),
so each sub-kernel channel is repeated ``r*r`` times.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from espcn_jax import ops

Initializer = Callable[..., jax.Array]
_default_base_init = nnx.initializers.lecun_normal()


def icnr(r: int, order: str = "tf", base_init: Initializer = _default_base_init) -> Initializer:
    """Initializer for a ``(..., C_in, C_out*r*r)`` kernel: ``base_init`` draws one
    ``(..., C_in, C_out)`` sub-kernel, copied to all ``r*r`` phases in ``order``'s layout.

    The fan-in (and so any variance scaling in ``base_init``) is that of the sub-kernel, which
    has the same receptive field and input channels as the full kernel.
    """
    r, order = ops.check_positive_int(r), ops.check_order(order)

    def init(key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
        shape = tuple(shape)
        if len(shape) < 2 or shape[-1] % (r * r):
            raise ValueError(
                f"icnr kernel shape must end in C_out*r*r with r*r={r * r}, got shape {shape}"
            )
        sub = base_init(key, shape[:-1] + (shape[-1] // (r * r),), dtype)
        if order == "tf":
            return jnp.tile(sub, (1,) * (len(shape) - 1) + (r * r,))
        return jnp.repeat(sub, r * r, axis=-1)

    return init


def checkerboard_energy(y_NHWC: jax.Array, r: int) -> jax.Array:
    """Fraction of each image's AC energy in its period-``r`` pattern, shape ``(N,)``.

    The period-``r`` pattern is the mean over LR blocks of each of the ``r*r`` phases, minus the
    image mean: the orthogonal projection of the image onto period-``r`` signals, i.e. its DFT
    bins at multiples of ``(H/r, W/r)`` other than DC. 0 means no checkerboard (e.g. any nearest-
    neighbour upsampling), 1 a pure period-``r`` pattern. Channels are pooled; a constant image
    gives 0. On a smooth input the true signal has almost no energy there, so the measure isolates
    the artifacts of a sub-pixel layer.
    """
    r = ops.check_positive_int(r)
    y = jnp.asarray(y_NHWC, jnp.float32)
    phases = ops.pixel_unshuffle(y, r, "tf")  # (N, h, w, r*r*C) validates rank and divisibility
    n, h, w, _ = phases.shape
    phase_mean = phases.reshape(n, h * w, r * r, -1).mean(axis=1)  # (N, r*r, C)
    centred = phase_mean - phase_mean.mean(axis=1, keepdims=True)
    periodic = (centred**2).sum(axis=(1, 2)) * (h * w)
    total = ((y - y.mean(axis=(1, 2), keepdims=True)) ** 2).sum(axis=(1, 2, 3))
    return jnp.where(total > 0, periodic / jnp.where(total > 0, total, 1.0), 0.0)
