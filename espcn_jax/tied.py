"""An HR-space convolution is an LR-space convolution with tied weights (docs/tied.md).

Let ``z = PS_r(z_lr)``. A stride-1, size-preserving HR correlation with kernel ``V`` of shape
``(Kh, Kw, C_in, C_out)`` and pads ``(lo, hi)`` (``lo + hi = K - 1``) satisfies

    PS_r⁻¹(conv_HR(z)) = conv_LR(z_lr)

for the LR kernel ``G[u, (b, ci), (a, co)] = V[r*(u + u_min) + b - a + lo, ci, co]`` (per axis;
zero where the index leaves ``[0, K)``), with ``u_min = floor(-lo / r)``. Input phase ``b`` and
output phase ``a`` run over ``[0, r)`` and are laid out in the channel axes in the shuffle order.
The exact LR kernel size is

    k' = floor((r - 1 + K - 1 - lo) / r) - floor(-lo / r) + 1,

which for ``K = k*r`` is ``k + 1`` when ``lo mod r`` is 0 or ``r - 1`` and ``k + 2`` otherwise
(centred "SAME" pads with ``r >= 3``, e.g. ``K = 9, r = 3``: k' = 5). The note's accounting uses
``k``: it counts the LR layer a network *would* use, not the exact image of the HR one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from espcn_jax import ops


def same_pads(k: int) -> tuple[int, int]:
    """``lax`` "SAME" pads of a stride-1 correlation with kernel size ``k``."""
    return (k - 1) // 2, k - 1 - (k - 1) // 2


def _hr_pads(padding, kernel_size: tuple[int, int]) -> tuple[tuple[int, int], ...]:
    """Pads of a stride-1 HR convolution: ``"SAME"`` as ``lax``, or explicit size-preserving pairs."""
    if isinstance(padding, str):
        if padding != "SAME":
            raise ValueError(
                f"padding must be 'SAME' or size-preserving (lo, hi) pairs, got {padding!r}"
            )
        return tuple(same_pads(k) for k in kernel_size)
    pads = tuple(tuple(int(v) for v in p) for p in padding)
    if len(pads) != 2 or any(len(p) != 2 for p in pads):
        raise ValueError(f"padding must be 2 (lo, hi) pairs, got {padding!r}")
    for (lo, hi), k in zip(pads, kernel_size, strict=True):
        if lo + hi != k - 1:
            raise ValueError(
                f"padding {padding!r} is not size-preserving for kernel size {k}: the HR output "
                "must stay r times the LR grid for the tied LR form to exist"
            )
    return pads


def lr_taps(kernel_size: int, r: int, lo: int) -> tuple[int, int]:
    """``(k', u_min)``: exact LR taps and the first tap's LR offset for one axis."""
    u_min = -lo // r  # floor(-lo / r)
    u_max = (r - 1 + kernel_size - 1 - lo) // r
    return u_max - u_min + 1, u_min


def hr_conv_to_tied_lr(
    kernel_hr_HWIO: jax.Array, r: int, padding="SAME", order: str = "tf"
) -> tuple[jax.Array, tuple[tuple[int, int], tuple[int, int]]]:
    """HR kernel ``(Kh, Kw, Ci, Co)`` → ``(kernel_lr (k'h, k'w, Ci*r*r, Co*r*r), lr_padding)``.

    ``lax.conv_general_dilated(z_lr, kernel_lr, (1, 1), lr_padding)`` then equals
    ``pixel_unshuffle(conv_HR(pixel_shuffle(z_lr, r, order)), r, order)`` exactly.
    """
    r, order = ops.check_positive_int(r), ops.check_order(order)
    if jnp.ndim(kernel_hr_HWIO) != 4:
        raise ValueError(
            f"kernel_hr_HWIO must be an HWIO kernel of rank 4, got shape {jnp.shape(kernel_hr_HWIO)}"
        )
    kh, kw, ci, co = kernel_hr_HWIO.shape
    pads = _hr_pads(padding, (kh, kw))
    index, lr_padding = [], []
    for k, (lo, _) in zip((kh, kw), pads, strict=True):
        taps, u_min = lr_taps(k, r, lo)
        u = np.arange(taps)[:, None, None] + u_min
        b = np.arange(r)[None, :, None]
        a = np.arange(r)[None, None, :]
        m = r * u + b - a + lo  # (k', b, a)
        index.append(np.where((m >= 0) & (m < k), m, k))  # k marks a zero tap
        lr_padding.append((-u_min, taps - 1 + u_min))
    (ih, iw), (th, tw) = index, (index[0].shape[0], index[1].shape[0])
    padded = jnp.pad(kernel_hr_HWIO, ((0, 1), (0, 1), (0, 0), (0, 0)))
    # Axes after the gather: uh, bh, ah, uw, bw, aw, ci, co.
    g = padded[ih[:, :, :, None, None, None], iw[None, None, None, :, :, :]]
    if order == "tf":  # channels (bh, bw, ci) and (ah, aw, co)
        g = g.transpose(0, 3, 1, 4, 6, 2, 5, 7)
    else:  # channels (ci, bh, bw) and (co, ah, aw)
        g = g.transpose(0, 3, 6, 1, 4, 7, 2, 5)
    return g.reshape(th, tw, ci * r * r, co * r * r), tuple(lr_padding)


def tie_bias(bias: jax.Array, r: int, order: str = "tf") -> jax.Array:
    """HR bias ``(Co,)`` → the tied LR bias ``(Co*r*r,)`` in the shuffle order's layout."""
    r, order = ops.check_positive_int(r), ops.check_order(order)
    return jnp.tile(bias, r * r) if order == "tf" else jnp.repeat(bias, r * r)


@dataclasses.dataclass(frozen=True)
class TiedCost:
    """Cost of one HR conv layer and its LR images, per LR pixel (FLOPs = 2 × multiply-adds)."""

    hr_flops: int  # the HR layer: r*r HR pixels per LR pixel, K*K*Ci*Co MACs each
    tied_flops: int  # the exact tied LR layer, k' taps (what ``hr_conv_to_tied_lr`` builds)
    note_flops: int  # the note's accounting: k = ceil(K / r) taps, equal to hr_flops for K = k*r
    hr_params: int  # free parameters of the HR layer (= of the tied LR layer), with bias
    untied_params: int  # free parameters of an untied LR layer of the note's shape (k taps)
    untied_exact_params: int  # free parameters of an untied LR layer of the tied shape (k' taps)
    lr_kernel_size: tuple[int, int]  # k'
    note_kernel_size: tuple[int, int]  # k

    @property
    def param_ratio(self) -> float:
        """Free parameters gained by untying at the note's equal FLOPs (``r**2`` for K = k*r)."""
        return self.untied_params / self.hr_params


def tied_cost(
    kernel_size: Sequence[int],
    in_features: int,
    out_features: int,
    r: int,
    padding="SAME",
    use_bias: bool = True,
) -> TiedCost:
    """FLOPs per LR pixel and free parameters of an HR conv, its exact tied LR image, and the
    untied LR layer of the same shape. Bias adds are not counted as FLOPs here."""
    r = ops.check_positive_int(r)
    kh, kw = (int(k) for k in kernel_size)
    pads = _hr_pads(padding, (kh, kw))
    taps = tuple(lr_taps(k, r, lo)[0] for k, (lo, _) in zip((kh, kw), pads, strict=True))
    note = (-(-kh // r), -(-kw // r))
    ci, co, rr = in_features, out_features, r * r
    bias_hr, bias_lr = (co, co * rr) if use_bias else (0, 0)
    return TiedCost(
        hr_flops=2 * rr * kh * kw * ci * co,
        tied_flops=2 * taps[0] * taps[1] * ci * rr * co * rr,
        note_flops=2 * note[0] * note[1] * ci * rr * co * rr,
        hr_params=kh * kw * ci * co + bias_hr,
        untied_params=note[0] * note[1] * ci * rr * co * rr + bias_lr,
        untied_exact_params=taps[0] * taps[1] * ci * rr * co * rr + bias_lr,
        lr_kernel_size=taps,
        note_kernel_size=note,
    )
