"""XLA:CPU-specific execution and cost quirks, kept out of the networks and the FLOP model's core.

Three things live here, all about how XLA:CPU (jax 0.10, YNNPACK convolutions) runs our graphs:

1. **The channel-remainder split** (an execution trick). YNNPACK computes conv output channels in
   blocks of 8, so a 9-channel conv (the ESPCN Y x3 sub-pixel layer) costs about as much as a
   16-channel one (32 -> 9 channels, 3x3, 360x640 input, 2-core CPU: 15.3 ms, vs 7.8 ms for 8 and
   13.3 ms for 16). One channel past a block is cheaper as per-tap matmuls plus shifted sums
   (~3 ms) when the conv reads more than 16 input channels; with 16 or fewer the plain conv is
   faster (1 -> 9: 6.0 vs 8.2 ms, 16 -> 9: 11.0 vs 13.9; 17 -> 9: 29.5 vs 20.0, 32 -> 9: 15.2 vs
   13.0; BUILD_NOTES.md). :func:`lr_correlation` is that conv; :func:`conv_general_dilated` is
   the same as a ``conv_general_dilated`` hook, :class:`FastConvTranspose`'s default.
   :func:`use_channel_split` is the one switch for the networks: it routes a net's upsampling
   layer (``lr``'s sub-pixel ``nnx.Conv``, ``deconv``'s transposed conv) through the split, on
   the CPU backend only; ``models.model_from_config`` calls it, so ``lr`` and ``deconv`` nets of
   equal widths run the same LR convolution. Results are the same up to float32 summation order.
2. **oneDNN convolutions for training** (an execution trick): :class:`OnednnConv` runs a
   float32 NHWC conv and its two gradients as oneDNN custom calls (``espcn_jax/cpu_conv.py``),
   about twice as fast as XLA's own convs in the ESPCN train step (notes/speed.md);
   :func:`use_onednn_convs` routes a net's convs through it, which ``training.step.make_steps``
   does on the CPU backend when the library was built (a float32 conv reading one channel only
   where oneDNN runs AVX-512 kernels: :func:`onednn_min_in_channels`). Same results up to
   summation order. Traced under ``jax.default_matmul_precision("bfloat16")`` on a CPU with
   bfloat16 instructions, the custom calls take bfloat16 operands (float32 accumulation and
   results: :func:`cpu_conv.operands_for`), TPU's one-pass arithmetic.
3. **What XLA's cost analysis counts** for those graphs, which ``flops_xla`` mirrors (the budget a
   study matches never depends on them): the split's extra work (:func:`split_cost`), a cheap
   producer that XLA recomputes for both halves of a split (:data:`XLA_DUPLICATED`), and a 1x1
   conv from 1 to 1 channel that XLA's simplifier turns into a multiply (:func:`mac_flops`).
"""

from __future__ import annotations

import dataclasses
import functools
import operator
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax
from jax.sharding import Mesh, PartitionSpec

from espcn_jax import cpu_conv

CHANNEL_BLOCK = 8  # YNNPACK's output-channel block on XLA:CPU
SPLIT_MIN_IN_CHANNELS = 17  # below this the plain conv is faster (measured, see above)
# Activations cheap enough that XLA's fusion recomputes "bias add + activation" in each consumer
# instead of storing it once: it does so for the two consumers of the channel split, so XLA counts
# that producer twice. Measured in tests/test_flops.py.
XLA_DUPLICATED = frozenset({"identity", "relu"})
_DN = cpu_conv.NHWC


def splits_last_channel(channels: int, in_channels: int) -> bool:
    """Whether :func:`lr_correlation` computes the last of ``channels`` outputs (of a conv reading
    ``in_channels``) as tap matmuls: on the CPU backend, one channel past a block, > 16 inputs."""
    return (
        jax.default_backend() == "cpu"
        and channels % CHANNEL_BLOCK == 1
        and channels > 1
        and in_channels >= SPLIT_MIN_IN_CHANNELS
    )


def lr_correlation(
    x_NHWC: jax.Array,
    kernel_HWIO: jax.Array,
    padding: tuple[tuple[int, int], tuple[int, int]],
    precision=None,
    preferred_element_type=None,
) -> jax.Array:
    """Stride-1 correlation, as ``lax.conv_general_dilated`` (explicit, possibly negative pads),
    with the last channel split off when :func:`splits_last_channel` says so."""

    def conv(kernel):
        return lax.conv_general_dilated(
            x_NHWC, kernel, (1, 1), padding, dimension_numbers=_DN, precision=precision,
            preferred_element_type=preferred_element_type,
        )  # fmt: skip

    if not splits_last_channel(kernel_HWIO.shape[-1], kernel_HWIO.shape[-2]):
        return conv(kernel_HWIO)
    th, tw = kernel_HWIO.shape[:2]
    taps = jnp.einsum(  # (N, H, W, th, tw): every tap of the last channel at every input pixel
        "nhwc,ijc->nhwij", x_NHWC, kernel_HWIO[..., -1], precision=precision,
        preferred_element_type=preferred_element_type,
    )  # fmt: skip
    taps = lax.pad(
        taps,
        jnp.zeros((), taps.dtype),
        ((0, 0, 0), *((lo, hi, 0) for lo, hi in padding), (0, 0, 0), (0, 0, 0)),
    )
    out_h, out_w = taps.shape[1] - th + 1, taps.shape[2] - tw + 1
    shifted = [taps[:, i : i + out_h, j : j + out_w, i, j] for i in range(th) for j in range(tw)]
    last = functools.reduce(operator.add, shifted)
    return jnp.concatenate([conv(kernel_HWIO[..., :-1]), last[..., None]], axis=-1)


def conv_general_dilated(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding,
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers=None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision=None,
    preferred_element_type=None,
    out_sharding=None,
) -> jax.Array:
    """``lax.conv_general_dilated`` that runs a plain 2-D NHWC correlation as :func:`lr_correlation`.

    A drop-in for the ``conv_general_dilated`` hook of ``nnx.Conv`` and :class:`FastConvTranspose`.
    Anything else (strides, dilations, groups, other layouts, a sharding) goes to
    ``lax.conv_general_dilated`` unchanged.
    """
    plain = (
        cpu_conv.is_plain_2d(
            lhs,
            rhs,
            lhs_dilation,
            dimension_numbers,
            feature_group_count,
            batch_group_count,
            out_sharding,
        )
        and tuple(window_strides) == (1, 1)
        and tuple(rhs_dilation or (1, 1)) == (1, 1)
    )
    if plain and splits_last_channel(rhs.shape[-1], rhs.shape[-2]):
        if isinstance(padding, str):
            padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], (1, 1), padding)
        return lr_correlation(
            lhs, rhs, tuple(map(tuple, padding)), precision, preferred_element_type
        )
    return lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
        feature_group_count, batch_group_count, precision=precision,
        preferred_element_type=preferred_element_type, out_sharding=out_sharding,
    )  # fmt: skip


def use_channel_split(model: nnx.Module) -> nnx.Module:
    """Routes ``model``'s upsampling layer (``lr``'s sub-pixel ``nnx.Conv``, ``deconv``'s
    ``FastConvTranspose``) through :func:`conv_general_dilated`, on the CPU backend; elsewhere
    leaves it unchanged. Returns ``model`` (changed in place). Parameters are untouched."""
    if jax.default_backend() != "cpu":
        return model
    family = getattr(getattr(model, "config", None), "family", None)
    if family == "lr":
        model.convs[-1].conv_general_dilated = conv_general_dilated
    elif family == "deconv":
        model.deconv.conv_general_dilated = conv_general_dilated
    return model


def uses_channel_split(config) -> bool:
    """Whether a ``models.model_from_config`` net of ``config`` has its upsampling layer routed
    through the split on this backend (``lr`` and ``deconv``; the rule itself is per layer)."""
    return jax.default_backend() == "cpu" and config.family in ("lr", "deconv")


# ------------------------------------------------------------------------------------------------
# oneDNN convolutions for training (espcn_jax/cpu_conv.py)


def onednn_min_in_channels() -> int:
    """The fewest input channels of a float32 conv that :class:`OnednnConv` runs in oneDNN here:
    1 where oneDNN runs its AVX-512 kernels (:func:`cpu_conv.avx512_kernels`), 2 elsewhere.

    ESPCN's first conv reads one channel. On an Intel Xeon (oneDNN's ``avx512_core`` kernels)
    its oneDNN forward and weight gradient took 0.38 and 0.49 ms against XLA's 0.83 and 1.34
    (1 -> 64, 5x5, B16 32x32), and routing it to oneDNN made the whole float32 step 1.08-1.12x
    faster (paired rounds, BUILD_NOTES "The first layer on oneDNN"). On the AMD EPYC of earlier
    sessions oneDNN's weight gradient for it took 4.0 ms against XLA's 0.8, so there it stays with
    XLA. With bfloat16 operands every conv goes to oneDNN."""
    return 1 if cpu_conv.avx512_kernels() else 2


@dataclasses.dataclass(frozen=True)
class OnednnConv:
    """A ``conv_general_dilated`` hook (``nnx.Conv``, :class:`FastConvTranspose`) that runs what
    :func:`cpu_conv.supports` (float32 NHWC x HWIO, no groups) as oneDNN custom calls on the CPU
    backend when the library is loaded, and everything else through ``fallback``.

    XLA cannot partition a custom call, so under a ``mesh`` (or else the ambient ``jax.set_mesh``
    one) the call runs inside ``jax.shard_map`` over the batch axis (each device convolves its
    shard; the weight gradient is summed across shards by the shard_map's transpose; with
    Explicit axes this also gives the outputs their sharded types); a batch the mesh does not
    divide goes to ``fallback``. Frozen and hashable: it is a static field of the graph."""

    fallback: Callable = lax.conv_general_dilated
    mesh: Mesh | None = None
    # Float32 convs reading fewer input channels stay with ``fallback``; None: this CPU's
    # :func:`onednn_min_in_channels` (ESPCN's first layer reads one). bfloat16 ones never do.
    min_in_channels: int | None = None

    def _min_in_channels(self) -> int:
        return self.min_in_channels or onednn_min_in_channels()

    def __call__(self, lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                 dimension_numbers=None, feature_group_count=1, batch_group_count=1,
                 precision=None, preferred_element_type=None, out_sharding=None):  # fmt: skip
        args = (lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers)
        groups = (feature_group_count, batch_group_count)
        mesh = self.mesh if self.mesh is not None else jax.sharding.get_abstract_mesh()
        mesh = None if mesh.empty else mesh
        operands = cpu_conv.operands_for(precision)
        fast = (
            cpu_conv.supports(*args, *groups, preferred_element_type, out_sharding)
            and (mesh is None or lhs.shape[0] % mesh.size == 0)
            and (operands == "bfloat16" or rhs.shape[-2] >= self._min_in_channels())
            and cpu_conv.available()
        )
        if not fast:
            return self.fallback(*args, *groups, precision=precision,
                                 preferred_element_type=preferred_element_type,
                                 out_sharding=out_sharding)  # fmt: skip

        def conv(x, w):
            return cpu_conv.conv(x, w, window_strides, padding, rhs_dilation, operands)

        if mesh is None:
            return conv(lhs, rhs)
        batch = PartitionSpec(mesh.axis_names)
        return jax.shard_map(
            conv, mesh=mesh, in_specs=(batch, PartitionSpec()), out_specs=batch, check_vma=False
        )(lhs, rhs)


def use_onednn_convs(model: nnx.Module, mesh: Mesh | None = None) -> nnx.Module:
    """Routes every ``nnx.Conv`` and :class:`FastConvTranspose` of ``model`` through
    :class:`OnednnConv` (keeping the channel split as the fallback of layers that had it), on the
    CPU backend when :func:`cpu_conv.available`; otherwise leaves ``model`` unchanged. Returns
    ``model`` (changed in place); parameters are untouched. Used by the train step
    (``training.step.make_steps``); ``models.model_from_config`` nets stay plain ``lax`` (XLA's
    cost analysis, which ``flops`` mirrors, counts nothing for a custom call)."""
    if not cpu_conv.available():
        return model
    from espcn_jax.layers import FastConvTranspose  # noqa: PLC0415 (layers imports this module)

    for _, node in nnx.iter_graph(model):
        if isinstance(node, nnx.Conv | FastConvTranspose):
            fallback = node.conv_general_dilated
            if isinstance(fallback, OnednnConv):
                fallback = fallback.fallback
            node.conv_general_dilated = OnednnConv(fallback, mesh)
    return model


# ------------------------------------------------------------------------------------------------
# What XLA's cost analysis counts (mirrored by flops.flops_xla)


def mac_flops(macs: int, taps: int, cin: int, cout: int) -> int:
    """XLA's FLOPs for ``macs`` multiply-adds of a conv with ``taps`` kernel taps: 2 each, except
    that its simplifier turns a 1x1 conv from 1 to 1 channel into an elementwise multiply (1 each).
    """
    return macs if taps * cin * cout == 1 else 2 * macs


def duplicated_producer(activation: str, activation_flops: int) -> int:
    """FLOPs per element of a hidden layer's bias add + activation that XLA recomputes for the
    second consumer of a split conv (0 when it stores it once)."""
    return 1 + activation_flops if activation in XLA_DUPLICATED else 0


def split_cost(size, taps: tuple[int, int], out: tuple[int, int], cin: int, cout: int, producer):
    """``(conv_out, xla_extra, executed_extra)`` of an LR correlation of ``cout`` channels over an
    input of ``size`` run by :func:`lr_correlation`: when it splits off the last channel, that
    channel runs as per-tap matmuls over every input pixel (no padding skipped) plus ``taps - 1``
    shifted adds per output pixel, and XLA recomputes a cheap producer of the input
    (``producer`` FLOPs per input element, :func:`duplicated_producer`) for the second consumer.
    """
    if not splits_last_channel(cout, cin):
        return cout, 0, 0
    n_taps = taps[0] * taps[1]
    macs = size[0] * size[1] * n_taps * cin
    adds = (n_taps - 1) * out[0] * out[1] + producer * size[0] * size[1] * cin
    return cout - 1, mac_flops(macs, n_taps, cin, 1) + adds, 2 * macs + adds
