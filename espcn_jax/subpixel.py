"""One upsampling layer, three faces (docs/equivalence.md), and exact converters between them.

For stride ``s`` and a spatial kernel of size ``K`` (per axis):

1. **transposed convolution** with a *scatter* kernel ``kernel_t``: every LR sample ``x[i]`` adds
   ``x[i] * kernel_t[m]`` to output ``s*i + m`` (``tf.nn.conv2d_transpose``, PyTorch
   ``ConvTranspose2d``, the gradient of a strided convolution);
2. **sub-pixel (zero-insertion) convolution** with ``kernel_z = flip(kernel_t)``: insert ``s - 1``
   zeros between LR samples, pad, correlate with stride 1. This is what ``lax.conv_transpose`` and
   ``flax.nnx.ConvTranspose`` compute (``transpose_kernel=False``), so *their* kernel is ``kernel_z``;
3. **LR convolution + periodic shuffle**: an LR correlation with a kernel ``(Th, Tw, C_in,
   C_out*sh*sw)`` followed by the shuffle. Output sample ``s*Q + a`` of phase ``a`` reads
   ``y[s*Q + a] = sum_t x[Q - lo_lr + t] * kernel_z[s*t + c - a]`` with ``c = lo mod s`` and
   ``lo_lr = lo // s`` (``lo``: the zero-insertion padding before the first sample). Every weight of
   ``kernel_z`` appears exactly once, so the converters are permutations (plus structural zeros).

Padding follows ``flax.nnx.ConvTranspose``: ``"SAME"``/``"VALID"`` as ``lax.conv_transpose`` resolves
them, or explicit ``(lo, hi)`` pads of the zero-inserted input (an int, or a sequence of ints/pairs).
``T = ceil(K/s)`` taps when ``c == s - 1`` (``"VALID"``, and ``"SAME"`` when ``K/s`` is odd);
otherwise up to one more, whose structural zeros are the only work that the LR face wastes.
Kernels are HWIO; activations NHWC.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from espcn_jax import ops

Padding = str | int | Sequence[int | tuple[int, int]]
_DN = ("NHWC", "HWIO", "NHWC")


@dataclasses.dataclass(frozen=True)
class AxisPlan:
    """How one spatial axis of a stride-``stride`` transposed conv maps onto the LR grid."""

    kernel_size: int  # K: taps of the zero-insertion kernel
    stride: int  # s
    padding: tuple[int, int]  # (lo, hi) pads of the zero-inserted input, lax semantics
    offset: int  # c = lo mod s: kernel_z index of phase 0 at LR tap 0
    taps: int  # T: LR kernel taps
    lr_padding: tuple[int, int]  # pads of the LR correlation (may be negative: a crop)
    crop: int  # HR samples computed past the end of the output, dropped after the shuffle

    def hr_size(self, n: int) -> int:
        """Output length for an input of length ``n`` (as ``lax.conv_transpose``)."""
        lo, hi = self.padding
        return (n - 1) * self.stride + 1 + lo + hi - self.kernel_size + 1

    def lr_index(self) -> np.ndarray:
        """``(T, s)`` int array: the ``kernel_z`` tap used by LR tap ``t`` for phase ``a``; ``K``
        marks a structural zero."""
        t = np.arange(self.taps)[:, None]
        a = np.arange(self.stride)[None, :]
        m = self.stride * t + self.offset - a
        return np.where((m >= 0) & (m < self.kernel_size), m, self.kernel_size)


def resolve_padding(
    padding: Padding, kernel_size: Sequence[int], strides: Sequence[int]
) -> tuple[tuple[int, int], ...]:
    """Explicit ``(lo, hi)`` pads of the zero-inserted input, as ``flax.nnx.ConvTranspose`` uses them.

    ``"SAME"`` gives an output of ``n*s``, ``"VALID"`` one of ``n*s + max(K - s, 0)``
    (``lax.conv_transpose``); ints and pairs are taken as the pads themselves.
    """
    rank = len(kernel_size)
    if isinstance(padding, str):
        if padding not in ("SAME", "VALID"):
            raise ValueError(
                f"padding must be 'SAME', 'VALID', an int or (lo, hi) pairs, got {padding!r}"
            )
        pads = []
        for k, s in zip(kernel_size, strides, strict=True):
            if padding == "SAME":
                total = k + s - 2
                lo = k - 1 if s > k - 1 else -(-total // 2)
            else:
                total = k + s - 2 + max(k - s, 0)
                lo = k - 1
            pads.append((lo, total - lo))
        return tuple(pads)
    if isinstance(padding, int) and not isinstance(padding, bool):
        return ((padding, padding),) * rank
    try:
        items = list(padding)
    except TypeError:
        items = []
    pads = []
    for p in items:
        if isinstance(p, int) and not isinstance(p, bool):
            pads.append((p, p))
        elif (
            isinstance(p, tuple | list)
            and len(p) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in p)
        ):
            pads.append((int(p[0]), int(p[1])))
    if len(items) != rank or len(pads) != rank:
        raise ValueError(
            f"padding must be 'SAME', 'VALID', an int or {rank} ints/(lo, hi) pairs, got {padding!r}"
        )
    return tuple(pads)


def plan(kernel_size: Sequence[int], strides: int | Sequence[int], padding: Padding = "SAME"):
    """Per-axis :class:`AxisPlan` for a 2-D transposed conv (kernel ``(Kh, Kw)``)."""
    kernel_size = ops.check_ints(kernel_size, "kernel_size", 2, 1)
    strides = ops.check_ints(strides, "strides", 2, 1)
    plans = []
    for k, s, (lo, hi) in zip(
        kernel_size, strides, resolve_padding(padding, kernel_size, strides), strict=True
    ):
        c = lo % s
        taps = (k + s - 2 - c) // s + 1
        lr_lo = lo // s
        delta = lo + hi + 2 - k - s  # output length is n*s + delta
        extra = -(-delta // s)  # LR output length is n + extra
        lr_hi = extra - lr_lo + taps - 1
        plans.append(AxisPlan(k, s, (lo, hi), c, taps, (lr_lo, lr_hi), s * extra - delta))
    return tuple(plans)


def _check_kernel(kernel: jax.Array, name: str) -> None:
    if jnp.ndim(kernel) != 4:
        raise ValueError(f"{name} must be an HWIO kernel of rank 4, got shape {jnp.shape(kernel)}")


def transpose_to_zero_insertion(kernel_t_HWIO: jax.Array) -> jax.Array:
    """Scatter kernel (face 1) → zero-insertion kernel (face 2, Flax's): a spatial flip."""
    _check_kernel(kernel_t_HWIO, "kernel_t_HWIO")
    return kernel_t_HWIO[::-1, ::-1]


def zero_insertion_to_transpose(kernel_z_HWIO: jax.Array) -> jax.Array:
    """Inverse of :func:`transpose_to_zero_insertion` (the flip is an involution)."""
    _check_kernel(kernel_z_HWIO, "kernel_z_HWIO")
    return kernel_z_HWIO[::-1, ::-1]


def zero_insertion_to_lr(
    kernel_z_HWIO: jax.Array,
    strides: int | Sequence[int],
    padding: Padding = "SAME",
    order: str = "tf",
) -> jax.Array:
    """Zero-insertion kernel ``(Kh, Kw, Ci, Co)`` → LR kernel ``(Th, Tw, Ci, Co*sh*sw)``.

    The output channels are laid out for :func:`espcn_jax.ops.pixel_shuffle` in ``order``.
    Apply it with :func:`lr_conv_shuffle` and the same ``strides``/``padding``.
    """
    _check_kernel(kernel_z_HWIO, "kernel_z_HWIO")
    ph, pw = plan(kernel_z_HWIO.shape[:2], strides, padding)
    order = ops.check_order(order)
    kh, kw, ci, co = kernel_z_HWIO.shape
    padded = jnp.pad(kernel_z_HWIO, ((0, 1), (0, 1), (0, 0), (0, 0)))  # index K is a zero tap
    idx_h, idx_w = ph.lr_index(), pw.lr_index()  # (Th, sh), (Tw, sw)
    g = padded[idx_h[:, None, :, None], idx_w[None, :, None, :]]  # Th, Tw, sh, sw, Ci, Co
    if order == "tf":
        g = g.transpose(0, 1, 4, 2, 3, 5)  # Th, Tw, Ci, (sh, sw, Co)
    else:
        g = g.transpose(0, 1, 4, 5, 2, 3)  # Th, Tw, Ci, (Co, sh, sw)
    return g.reshape(ph.taps, pw.taps, ci, ph.stride * pw.stride * co)


def lr_to_zero_insertion(
    kernel_lr_HWIO: jax.Array,
    kernel_size: Sequence[int],
    strides: int | Sequence[int],
    padding: Padding = "SAME",
    order: str = "tf",
) -> jax.Array:
    """Inverse of :func:`zero_insertion_to_lr`: LR kernel → zero-insertion kernel of ``kernel_size``.

    LR taps that no zero-insertion weight maps to (the structural zeros) are ignored.
    """
    _check_kernel(kernel_lr_HWIO, "kernel_lr_HWIO")
    ph, pw = plan(kernel_size, strides, padding)
    order = ops.check_order(order)
    th, tw, ci, cos = kernel_lr_HWIO.shape
    sh, sw = ph.stride, pw.stride
    if (th, tw) != (ph.taps, pw.taps) or cos % (sh * sw):
        raise ValueError(
            f"kernel_lr_HWIO shape {kernel_lr_HWIO.shape} does not fit kernel_size "
            f"{tuple(kernel_size)}, strides {(sh, sw)}, padding {padding!r}: expected "
            f"({ph.taps}, {pw.taps}, C_in, C_out*{sh * sw})"
        )
    co = cos // (sh * sw)
    split = (sh, sw, co) if order == "tf" else (co, sh, sw)
    g = kernel_lr_HWIO.reshape(th, tw, ci, *split)
    g = g.transpose(0, 1, 3, 4, 2, 5) if order == "tf" else g.transpose(0, 1, 4, 5, 2, 3)
    # g: Th, Tw, sh, sw, Ci, Co. Weight m sits at phase a = (c - m) mod s, tap t = (m - c + a) / s.
    m_h, m_w = np.arange(ph.kernel_size), np.arange(pw.kernel_size)
    a = (ph.offset - m_h) % sh
    b = (pw.offset - m_w) % sw
    t_h, t_w = (m_h - ph.offset + a) // sh, (m_w - pw.offset + b) // sw
    return g[t_h[:, None], t_w[None, :], a[:, None], b[None, :]]


def transpose_to_lr(kernel_t_HWIO, strides, padding: Padding = "SAME", order: str = "tf"):
    """Scatter (transposed-conv) kernel → LR kernel: flip, then :func:`zero_insertion_to_lr`."""
    return zero_insertion_to_lr(transpose_to_zero_insertion(kernel_t_HWIO), strides, padding, order)


def lr_to_transpose(kernel_lr_HWIO, kernel_size, strides, padding: Padding = "SAME", order="tf"):
    """Inverse of :func:`transpose_to_lr`."""
    kernel_z = lr_to_zero_insertion(kernel_lr_HWIO, kernel_size, strides, padding, order)
    return zero_insertion_to_transpose(kernel_z)


def _checked_plan(
    x: jax.Array, kernel: jax.Array, name: str, kernel_size, strides, padding
) -> tuple[AxisPlan, AxisPlan]:
    """Validates a face's input and kernel (named ``name``) and returns the plan of its axes."""
    _check_kernel(kernel, name)
    plans = plan(kernel_size, strides, padding)
    if jnp.ndim(x) != 4:
        raise ValueError(f"x must be an NHWC array of rank 4, got shape {jnp.shape(x)}")
    if x.shape[-1] != kernel.shape[2]:
        raise ValueError(
            f"x has {x.shape[-1]} channels but the kernel expects {kernel.shape[2]} input channels"
        )
    out = tuple(p.hr_size(n) for p, n in zip(plans, x.shape[1:3], strict=True))
    if min(out) < 1:
        raise ValueError(
            f"x of shape {x.shape} gives an empty output {out} with padding "
            f"{tuple(p.padding for p in plans)}"
        )
    return plans


def conv_transpose(
    x_NHWC: jax.Array,
    kernel_t_HWIO: jax.Array,
    strides: int | Sequence[int],
    padding: Padding = "SAME",
    precision=None,
) -> jax.Array:
    """Face 1: the transposed convolution of a scatter kernel (gradient of a strided conv).

    Equals ``flax.nnx.ConvTranspose(..., transpose_kernel=True)`` whose stored kernel is
    ``kernel_t_HWIO.swapaxes(2, 3)``; ``padding`` has Flax's meaning.
    """
    ph, pw = _checked_plan(
        x_NHWC, kernel_t_HWIO, "kernel_t_HWIO", kernel_t_HWIO.shape[:2], strides, padding
    )
    return lax.conv_transpose(
        x_NHWC,
        kernel_t_HWIO.swapaxes(2, 3),
        (ph.stride, pw.stride),
        (ph.padding, pw.padding),
        dimension_numbers=_DN,
        transpose_kernel=True,
        precision=precision,
    )


def zero_insertion_conv(
    x_NHWC: jax.Array,
    kernel_z_HWIO: jax.Array,
    strides: int | Sequence[int],
    padding: Padding = "SAME",
    precision=None,
) -> jax.Array:
    """Face 2, literally: materialise the zero-inserted HR image, then a stride-1 correlation."""
    ph, pw = _checked_plan(
        x_NHWC, kernel_z_HWIO, "kernel_z_HWIO", kernel_z_HWIO.shape[:2], strides, padding
    )
    n, h, w, c = x_NHWC.shape
    sh, sw = ph.stride, pw.stride
    dilated = jnp.zeros((n, (h - 1) * sh + 1, (w - 1) * sw + 1, c), x_NHWC.dtype)
    dilated = dilated.at[:, ::sh, ::sw].set(x_NHWC)
    return lax.conv_general_dilated(
        dilated, kernel_z_HWIO, (1, 1), (ph.padding, pw.padding), dimension_numbers=_DN,
        precision=precision,
    )  # fmt: skip


def lr_conv_shuffle(
    x_NHWC: jax.Array,
    kernel_lr_HWIO: jax.Array,
    kernel_size: Sequence[int],
    strides: int | Sequence[int],
    padding: Padding = "SAME",
    order: str = "tf",
    precision=None,
    preferred_element_type=None,
    conv_general_dilated=lax.conv_general_dilated,
) -> jax.Array:
    """Face 3: LR correlation with ``kernel_lr_HWIO`` (from :func:`zero_insertion_to_lr`), the
    periodic shuffle, and a crop to the transposed conv's output size.

    ``kernel_size`` is that of the zero-insertion kernel the LR kernel stands for.
    ``conv_general_dilated`` runs the correlation (a hook as in ``nnx.Conv``; e.g.
    :func:`espcn_jax.xla_cpu.conv_general_dilated`).
    """
    ph, pw = _checked_plan(x_NHWC, kernel_lr_HWIO, "kernel_lr_HWIO", kernel_size, strides, padding)
    order = ops.check_order(order)
    if kernel_lr_HWIO.shape[:2] != (ph.taps, pw.taps):
        raise ValueError(
            f"kernel_lr_HWIO has {kernel_lr_HWIO.shape[:2]} taps, the plan for kernel_size "
            f"{tuple(kernel_size)} needs {(ph.taps, pw.taps)}"
        )
    z = conv_general_dilated(
        x_NHWC, kernel_lr_HWIO, (1, 1), (ph.lr_padding, pw.lr_padding), dimension_numbers=_DN,
        precision=precision, preferred_element_type=preferred_element_type,
    )  # fmt: skip
    y = ops.shuffle_2d(z, ph.stride, pw.stride, order)
    if ph.crop or pw.crop:
        y = y[:, : y.shape[1] - ph.crop, : y.shape[2] - pw.crop]
    return y


def fast_conv_transpose(
    x_NHWC: jax.Array,
    kernel_z_HWIO: jax.Array,
    strides: int | Sequence[int],
    padding: Padding = "SAME",
    order: str = "tf",
    precision=None,
    preferred_element_type=None,
    conv_general_dilated=lax.conv_general_dilated,
) -> jax.Array:
    """``lax.conv_transpose(x, kernel_z, strides, padding)`` computed in LR space (face 3)."""
    kernel_lr = zero_insertion_to_lr(kernel_z_HWIO, strides, padding, order)
    return lr_conv_shuffle(
        x_NHWC, kernel_lr, kernel_z_HWIO.shape[:2], strides, padding, order, precision,
        preferred_element_type, conv_general_dilated,
    )  # fmt: skip
