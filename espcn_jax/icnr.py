"""ICNR initialisation (Aitken et al. 2017) and a checkerboard measure (docs/icnr.md).

A sub-pixel layer (conv to ``C*r*r`` channels, then ``PS_r``) whose ``r*r`` phase kernels are equal
computes conv followed by nearest-neighbour upsampling: no checkerboard at initialisation. Which
output channels form one phase depends on the shuffle order: "tf" puts the phase outermost
(``(a*r+b)*C + c``), so the sub-kernel is tiled; "torch" puts it innermost (``c*r*r + a*r + b``),
so each sub-kernel channel is repeated ``r*r`` times.

A stride-``r`` transposed conv is the same layer with its LR kernel re-indexed
(:mod:`espcn_jax.subpixel`); when ``K`` is not an odd multiple of ``r`` some LR taps are structural
zeros for some phases, and equal phase kernels can only use the taps real for *every* phase
(:func:`shared_taps`): :func:`icnr_transposed` draws the sub-kernel on those (e.g. ``K = 6`` at
``r = 3``: one LR tap per axis, so the 6x6 kernel starts as a 1x1 conv plus nearest-neighbour
upsampling). With no shared tap (``K < r``, or ``K = 1``) no ICNR kernel exists.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from espcn_jax import ops, subpixel

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


def shared_taps(kernel_size: int, r: int, padding: subpixel.Padding = "SAME") -> range:
    """LR taps (along one axis) of a stride-``r`` transposed conv of ``kernel_size`` taps that hold
    a real weight for every one of the ``r`` phases; empty if there is none."""
    (axis, _) = subpixel.plan((kernel_size, kernel_size), r, padding)
    (real,) = np.nonzero(np.all(axis.lr_index() != axis.kernel_size, axis=1))
    return range(int(real[0]), int(real[-1]) + 1) if real.size else range(0)


def icnr_transposed(
    kernel_size,
    r: int,
    padding: subpixel.Padding = "SAME",
    order: str = "tf",
    base_init: Initializer = _default_base_init,
) -> Initializer:
    """ICNR for the zero-insertion kernel ``(Kh, Kw, C_in, C_out)`` of a stride-``r`` transposed
    conv (``nnx.ConvTranspose``, :class:`layers.FastConvTranspose`) with ``padding``.

    ``base_init`` draws a sub-kernel over the :func:`shared_taps`; it is copied to every phase of
    the LR kernel (zeros elsewhere), which maps back onto the transposed kernel exactly: at init the
    layer computes that LR conv followed by nearest-neighbour upsampling. Raises ValueError if an
    axis has no shared tap.
    """
    r, order = ops.check_positive_int(r), ops.check_order(order)
    kh, kw = ops.check_ints(kernel_size, "kernel_size", 2, 1)
    plan_h, plan_w = subpixel.plan((kh, kw), r, padding)
    taps_h, taps_w = shared_taps(kh, r, padding), shared_taps(kw, r, padding)
    if not taps_h or not taps_w:
        raise ValueError(
            f"no ICNR kernel exists for a {kh}x{kw} transposed conv at stride {r} with padding "
            f"{padding!r}: no LR tap feeds all {r * r} output phases"
        )
    sub_init = icnr(r, order, base_init)

    def init(key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
        if len(shape) != 4 or tuple(shape[:2]) != (kh, kw):
            raise ValueError(
                f"icnr_transposed expects a ({kh}, {kw}, C_in, C_out) kernel, got {shape}"
            )
        cin, cout = shape[2], shape[3] * r * r
        sub = sub_init(key, (len(taps_h), len(taps_w), cin, cout), dtype)
        kernel_lr = jnp.zeros((plan_h.taps, plan_w.taps, cin, cout), dtype)
        kernel_lr = kernel_lr.at[taps_h.start : taps_h.stop, taps_w.start : taps_w.stop].set(sub)
        return subpixel.lr_to_zero_insertion(kernel_lr, (kh, kw), r, padding, order)

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
