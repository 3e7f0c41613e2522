"""``FastConvTranspose``: ``flax.nnx.ConvTranspose`` executed at LR-convolution cost.

``lax.conv_transpose`` lowers to an lhs-dilated convolution over the zero-inserted grid. Run as
such it multiplies the inserted zeros (``r*r`` times the useful work); XLA:CPU instead runs it as a
GEMM into a buffer of ``K*K*C_out`` values per input pixel plus a single-threaded col2im
scatter-add, which skips the zeros but moves ``K*K`` times the output's data. This layer keeps
Flax's constructor, parameter names, shapes and initialisation (so weights and checkpoints copy
across unchanged) and computes the same function as an LR correlation plus a periodic shuffle
(:mod:`espcn_jax.subpixel`): no zeros, no scatter. BUILD_NOTES.md has the measured speedups.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn import dtypes

from espcn_jax import ops, subpixel, xla_cpu

_default_kernel_init = nnx.initializers.lecun_normal()
_default_bias_init = nnx.initializers.zeros_init()


class FastConvTranspose(nnx.Module):
    """Drop-in for ``nnx.ConvTranspose`` on 2-D inputs (``(*batch, H, W, C)``), same outputs.

    Supported: any kernel size and strides, padding ``"SAME"``, ``"VALID"``, ``"CIRCULAR"``, ints
    or ``(lo, hi)`` pairs, ``transpose_kernel``, ``mask``, ``use_bias``, dtypes, ``precision``,
    ``preferred_element_type``. ``kernel_dilation`` > 1, ``"CAUSAL"`` padding and other than two
    spatial dimensions raise ``ValueError`` here rather than compute something else.
    ``order`` picks the internal shuffle layout; it changes speed, never results.
    ``conv_general_dilated`` runs the LR correlation, a hook as in ``nnx.Conv``; by default
    :func:`espcn_jax.xla_cpu.conv_general_dilated` (on the CPU backend, a channel past a block of
    8 as tap matmuls; elsewhere ``lax.conv_general_dilated``).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: int | Sequence[int],
        strides: int | Sequence[int] | None = None,
        *,
        padding: str | int | Sequence[int | tuple[int, int]] = "SAME",
        kernel_dilation: int | Sequence[int] | None = None,
        use_bias: bool = True,
        mask: jax.Array | None = None,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        precision: Any = None,
        kernel_init=_default_kernel_init,
        bias_init=_default_bias_init,
        transpose_kernel: bool = False,
        promote_dtype=dtypes.promote_dtype,
        preferred_element_type: Any = None,
        rngs: nnx.Rngs,
        kernel_metadata: Mapping[str, Any] = MappingProxyType({}),
        bias_metadata: Mapping[str, Any] = MappingProxyType({}),
        order: str = "tf",
        conv_general_dilated=xla_cpu.conv_general_dilated,
    ):
        kernel_size = (kernel_size,) if isinstance(kernel_size, int) else tuple(kernel_size)
        if len(kernel_size) != 2:
            raise ValueError(
                f"FastConvTranspose supports 2 spatial dimensions, got kernel_size={kernel_size!r}"
            )
        if ops.check_ints(
            1 if kernel_dilation is None else kernel_dilation, "kernel_dilation", 2, 1
        ) != (1, 1):
            raise ValueError(
                f"FastConvTranspose does not support kernel_dilation={kernel_dilation!r}; "
                "use nnx.ConvTranspose"
            )
        self.circular = padding == "CIRCULAR"
        # Validates padding, strides and kernel size at construction, and fixes the LR plan.
        self.plan = subpixel.plan(kernel_size, 1 if strides is None else strides, (
            "VALID" if self.circular else padding
        ))  # fmt: skip
        self.order = ops.check_order(order)
        self.kernel_size = kernel_size
        self.in_features = in_features
        self.out_features = out_features
        self.strides = strides
        self.padding = padding
        self.kernel_dilation = kernel_dilation
        self.use_bias = use_bias
        self.mask = mask
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.precision = precision
        self.transpose_kernel = transpose_kernel
        self.promote_dtype = promote_dtype
        self.preferred_element_type = preferred_element_type
        self.conv_general_dilated = conv_general_dilated
        if transpose_kernel:
            self.kernel_shape = kernel_size + (out_features, in_features)
        else:
            self.kernel_shape = kernel_size + (in_features, out_features)
        if mask is not None and tuple(mask.shape) != self.kernel_shape:
            raise ValueError(
                f"mask shape {tuple(mask.shape)} must equal the kernel shape {self.kernel_shape}"
            )
        self.kernel = nnx.Param(
            kernel_init(rngs.params(), self.kernel_shape, param_dtype), **kernel_metadata
        )
        self.bias: nnx.Param | None
        if use_bias:
            self.bias = nnx.Param(
                bias_init(rngs.params(), (out_features,), param_dtype), **bias_metadata
            )
        else:
            self.bias = nnx.data(None)

    def __call__(self, inputs: jax.Array) -> jax.Array:
        batch_shape = inputs.shape[:-3]
        x = inputs.reshape((-1,) + inputs.shape[-3:])
        kernel = self.kernel[...]
        if self.mask is not None:
            kernel = kernel * self.mask
        if self.transpose_kernel:  # stored (K, K, out, in), scatter orientation
            kernel = kernel[::-1, ::-1].swapaxes(2, 3)
        bias = self.bias[...] if self.bias is not None else None
        x, kernel, bias = self.promote_dtype((x, kernel, bias), dtype=self.dtype)
        ph, pw = self.plan
        strides, padding = (ph.stride, pw.stride), (ph.padding, pw.padding)
        y = subpixel.fast_conv_transpose(
            x, kernel, strides, padding, self.order, self.precision, self.preferred_element_type,
            self.conv_general_dilated,
        )  # fmt: skip
        if self.circular:
            y = _wrap_periodic(
                y, (x.shape[1] * ph.stride, x.shape[2] * pw.stride), self.transpose_kernel
            )
        if bias is not None:
            y = y + bias
        return y.reshape(batch_shape + y.shape[1:]) if len(batch_shape) != 1 else y


def _wrap_periodic(y_NHWC: jax.Array, period: tuple[int, int], transpose_kernel: bool) -> jax.Array:
    """Folds a VALID transposed-conv output onto a torus of size ``period`` (``n*s`` per axis).

    Matches ``nnx.ConvTranspose``'s ``"CIRCULAR"`` mode: the output is padded to a whole number of
    periods (the odd sample goes after the data with ``transpose_kernel``, before it otherwise)
    and the periods are summed.
    """
    pads = [(0, 0)]
    for size, p in zip(y_NHWC.shape[1:3], period, strict=True):
        extra = -(size - p) % (2 * p)
        pads.append(
            (extra // 2, extra - extra // 2)
            if transpose_kernel
            else (extra - extra // 2, extra // 2)
        )
    y = jnp.pad(y_NHWC, pads + [(0, 0)])
    n, hh, ww, c = y.shape
    y = y.reshape(n, hh // period[0], period[0], ww, c).sum(axis=1)
    return y.reshape(n, period[0], ww // period[1], period[1], c).sum(axis=2)
