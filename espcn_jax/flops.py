"""Cost of a network per LR image: multiply-adds, FLOPs, parameters, XLA's own count and latency.

Costs are counted per image of a stated LR size ``(h, w)``, per layer:

- ``conv_macs``: the multiply-adds of the convolutions only, as the field's tables (FSRCNN, CARN)
  count them: per conv, output pixels x ``k*k*C_in*C_out`` in the layer's native form (the
  transposed conv: input pixels x ``K*K*C_in*C_out``; ``lr_tied``: the ``hr`` net's convs), borders
  not discounted; no bias, activation, bicubic or residual. What the width solver matches by
  default: the activation never changes the widths.
- ``flops`` (*useful*): 2 x the multiply-adds whose input is a real sample (not padding, not an
  inserted zero) and whose weight is a real parameter (not a structural zero of a re-indexed
  kernel), plus 1 per bias add and per residual add, plus the activation's elementwise cost. The
  cost of the maths, whatever runs it.
- ``flops_xla``: what XLA's cost model (``compiled.cost_analysis()["flops"]``) counts for the graph
  of ``models.model_from_config`` as lowered on this backend: for a convolution, 2 x the
  multiply-adds on taps that land on a real input sample (padding and ``lhs_dilation`` holes
  skipped, zero *weights* counted). It differs from ``flops`` where a layer runs a re-indexed
  kernel with structural zeros (``deconv`` with ``K`` not giving whole LR taps, every ``lr_tied``
  layer), and by XLA:CPU's quirks modelled in :mod:`espcn_jax.xla_cpu` (the channel split's extra
  work and recomputed producer; a 1x1 conv from 1 to 1 channel counted as a multiply). Tested
  equal to XLA's figure (up to its float32 accumulation: 1 ulp, ~1e-7 relative).
- ``flops_executed``: the dense work of the op as run, every tap of every output (padding and
  structural zeros included). ``flops_executed_naive`` adds, for the transposed conv, what
  ``lax.conv_transpose`` / ``nnx.ConvTranspose`` executes when run as the lhs-dilated conv it
  lowers to (~r^2 x; XLA:CPU's transposed-conv kernel skips the zeros but scatters through a
  ``K^2*C_out``-per-pixel buffer instead).

What else is counted in the FLOP columns: the bicubic resize as :func:`bicubic.upscale_flops` (its
executed 5-tap filters); the shuffle is a permutation (0). Activations cost what XLA counts for the
lowered elementwise ops, in ``ACTIVATION_COST`` (FLOPs, transcendentals) per element: ``tanh`` is 1
transcendental and 0 FLOPs, ``relu`` 1 FLOP (a max), ``silu`` 4 + 1, ... Costs are for float32
computation: with ``dtype="bfloat16"`` XLA adds 1 FLOP per converted element.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from espcn_jax import bicubic, subpixel, tied, timing, xla_cpu
from espcn_jax.models import ACTIVATIONS, ModelConfig

# (FLOPs, transcendentals) per element, as XLA's HloCostAnalysis counts the lowered jax.nn ops.
ACTIVATION_COST: dict[str, tuple[int, int]] = {
    "tanh": (0, 1),
    "relu": (1, 0),
    "leaky_relu": (3, 0),
    "elu": (3, 1),
    "sigmoid": (3, 1),
    "silu": (4, 1),
    "gelu": (8, 1),
    "identity": (0, 0),
}
assert set(ACTIVATION_COST) == set(ACTIVATIONS)


@dataclasses.dataclass(frozen=True)
class LayerCost:
    """One op of the forward pass on one image. FLOP columns as in the module docstring."""

    name: str  # "conv0", "deconv", "bicubic", "shuffle", "residual", ...
    op: str  # what runs, e.g. "conv 5x5 1->64 on 360x640"
    params: int
    flops: int
    flops_xla: int
    flops_executed: int
    transcendentals: int = 0
    flops_executed_naive: int | None = None  # the transposed conv run as lax.conv_transpose
    conv_macs: int = 0  # the field's convention: dense multiply-adds of a conv, borders included


@dataclasses.dataclass(frozen=True)
class ModelCost:
    """Per-layer and total cost of ``config`` on one LR image of ``lr_size = (h, w)``."""

    config: ModelConfig
    lr_size: tuple[int, int]
    layers: tuple[LayerCost, ...]

    def total(self, field: str) -> int:
        return sum(getattr(layer, field) or 0 for layer in self.layers)

    @property
    def conv_macs(self) -> int:
        return self.total("conv_macs")

    @property
    def flops(self) -> int:
        return self.total("flops")

    @property
    def flops_xla(self) -> int:
        return self.total("flops_xla")

    @property
    def flops_executed(self) -> int:
        return self.total("flops_executed")

    @property
    def params(self) -> int:
        return self.total("params")

    @property
    def transcendentals(self) -> int:
        return self.total("transcendentals")

    @property
    def output_pixels(self) -> int:
        r = self.config.scale
        return self.lr_size[0] * r * self.lr_size[1] * r

    def as_dict(self) -> dict:
        """JSON-ready totals, per-output-pixel figures and the per-layer breakdown."""
        return {
            "lr_size": list(self.lr_size),
            "conv_macs": self.conv_macs,
            "flops": self.flops,
            "flops_xla_model": self.flops_xla,
            "flops_executed": self.flops_executed,
            "transcendentals": self.transcendentals,
            "params": self.params,
            "flops_per_output_pixel": self.flops / self.output_pixels,
            "layers": [
                {k: v for k, v in dataclasses.asdict(layer).items() if v is not None}
                for layer in self.layers
            ],
        }


def parse_size(text: str, name: str = "lr_size") -> tuple[int, int]:
    """``"360x640"`` -> ``(360, 640)`` (height x width, positive integers)."""
    parts = str(text).lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"{name} must be HxW with positive integers, e.g. 360x640, got {text!r}")
    return int(parts[0]), int(parts[1])


def check_lr_size(lr_size) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in lr_size)
        ok = (h, w) == tuple(lr_size) and h >= 1 and w >= 1
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"lr_size must be two integers (h, w) >= 1, got {lr_size!r}")
    return h, w


@functools.lru_cache(maxsize=4096)
def _tap_counts(
    n: int, k: int, pads: tuple[int, int], dilation: int = 1, kernel_dilation: int = 1
) -> tuple[np.ndarray, int]:
    """Per kernel tap, how many outputs read a real sample along one axis; and the output length.

    The input of length ``n`` is dilated by ``dilation`` (holes between samples), padded by
    ``pads = (lo, hi)`` and correlated with ``k`` taps ``kernel_dilation`` apart at stride 1:
    output ``o``, tap ``t`` reads dilated position ``o - lo + t * kernel_dilation``, real iff inside
    ``[0, (n-1)*dilation]`` and on a sample.
    """
    lo, hi = pads
    n_dilated = (n - 1) * dilation + 1
    n_out = n_dilated + lo + hi - (k - 1) * kernel_dilation
    p = np.arange(n_out)[:, None] - lo + kernel_dilation * np.arange(k)[None, :]
    real = (p >= 0) & (p < n_dilated) & (p % dilation == 0)
    counts = real.sum(axis=0)
    counts.flags.writeable = False
    return counts, n_out


def _real_taps(
    size: tuple[int, int], kernel: tuple[int, int], pads, dilation: int = 1, kernel_dilation=1
):
    """``(taps_h, taps_w)`` real-sample counts per tap, and the output size."""
    (ch, oh), (cw, ow) = (
        _tap_counts(n, k, tuple(p), dilation, kernel_dilation)
        for n, k, p in zip(size, kernel, pads, strict=True)
    )
    return np.outer(ch, cw), (oh, ow)


def _act(name: str, elements: int, act: str) -> LayerCost:
    f, t = ACTIVATION_COST[act]
    n = elements
    return LayerCost(name, f"{act} on {n} elements", 0, f * n, f * n, f * n, t * n)


def _conv(
    name: str,
    size,
    k: int,
    cin: int,
    cout: int,
    pads,
    where: str,
    split_producer=None,
    *,
    dilation: int = 1,
    bias: bool = True,
) -> LayerCost:
    """A dense stride-1 conv (``k`` taps ``dilation`` apart), with a bias unless ``bias=False``:
    useful == XLA's count (but for 1x1x1x1 kernels); executed counts padding taps too.
    ``split_producer`` (FLOPs per input element of the op feeding it), when not None: the conv
    runs as :func:`xla_cpu.lr_correlation`. Dilation changes which taps fall on padding, not the
    dense multiply-adds (``conv_macs``)."""
    taps, (oh, ow) = _real_taps(size, (k, k), pads, kernel_dilation=dilation)
    macs_per_out = int(taps.sum()) * cin  # multiply-adds per out channel
    bias = oh * ow * cout if bias else 0
    conv_out, xla_extra, executed_extra = cout, 0, 0
    if split_producer is not None:
        conv_out, xla_extra, executed_extra = xla_cpu.split_cost(
            size, (k, k), (oh, ow), cin, cout, split_producer
        )
    xla = xla_cpu.mac_flops(macs_per_out * conv_out, k * k, cin, conv_out) + xla_extra + bias
    executed = 2 * oh * ow * k * k * cin * conv_out + executed_extra + bias
    dil = f" dilation {dilation}" if dilation != 1 else ""
    op = f"conv {k}x{k}{dil} {cin}->{cout} on {where} {size[0]}x{size[1]}"
    params = k * k * cin * cout + (cout if bias else 0)
    macs = oh * ow * k * k * cin * cout
    useful = 2 * macs_per_out * cout + bias
    return LayerCost(name, op, params, useful, xla, executed, conv_macs=macs)


def _deconv(
    size, k: int, cin: int, cout: int, r: int, split_producer=None, *, bias: bool = True
) -> LayerCost:
    """Stride-``r`` transposed conv ("SAME"), run by FastConvTranspose as LR conv + shuffle.

    ``split_producer``: None, or the elementwise cost per input element of the op that computes
    this layer's input, when the LR conv runs as :func:`xla_cpu.lr_correlation`.
    """
    plans = subpixel.plan((k, k), r, "SAME")
    pads = [p.padding for p in plans]
    taps_z, (oh, ow) = _real_taps(size, (k, k), pads, dilation=r)
    has_bias, bias = bias, (oh * ow * cout if bias else 0)
    useful = 2 * int(taps_z.sum()) * cin * cout + bias
    naive = 2 * oh * ow * k * k * cin * cout + bias
    t_h, t_w = plans[0].taps, plans[1].taps
    taps_lr, (lh, lw) = _real_taps(size, (t_h, t_w), [p.lr_padding for p in plans])
    conv_out, xla_extra, executed_extra = cout * r * r, 0, 0
    if split_producer is not None:
        conv_out, xla_extra, executed_extra = xla_cpu.split_cost(
            size, (t_h, t_w), (lh, lw), cin, cout * r * r, split_producer
        )
    macs_lr = int(taps_lr.sum()) * cin * conv_out
    xla = xla_cpu.mac_flops(macs_lr, t_h * t_w, cin, conv_out) + xla_extra + bias
    executed = 2 * lh * lw * t_h * t_w * cin * conv_out + executed_extra + bias
    op = f"conv_transpose {k}x{k}/{r} {cin}->{cout} as LR conv {t_h}x{t_w} {cin}->{cout * r * r}"
    params = k * k * cin * cout + (cout if has_bias else 0)
    macs = size[0] * size[1] * k * k * cin * cout
    return LayerCost(
        "deconv", op, params, useful, xla, executed, flops_executed_naive=naive, conv_macs=macs
    )


def _tied(name: str, size, k: int, cin: int, cout: int, r: int, dilation: int = 1) -> LayerCost:
    """An HR conv run as its tied LR image: the useful count is the HR conv's. A dilated HR
    kernel is tied as its dense form (span ``d*(k-1)+1``, zeros between the taps)."""
    span = dilation * (k - 1) + 1
    hr_size = (size[0] * r, size[1] * r)
    pads = (tied.same_pads(span),) * 2
    hr = _conv(name, hr_size, k, cin, cout, pads, "HR", dilation=dilation)
    lo = tied.same_pads(span)[0]
    t, u_min = tied.lr_taps(span, r, lo)
    taps_lr, (lh, lw) = _real_taps(size, (t, t), ((-u_min, t - 1 + u_min),) * 2)
    c_in, c_out = cin * r * r, cout * r * r
    bias = lh * lw * c_out
    xla = xla_cpu.mac_flops(int(taps_lr.sum()) * c_in * c_out, t * t, c_in, c_out) + bias
    executed = 2 * lh * lw * t * t * c_in * c_out + bias
    op = f"tied conv {t}x{t} {c_in}->{c_out} on LR {size[0]}x{size[1]} (HR {k}x{k} {cin}->{cout})"
    return dataclasses.replace(hr, op=op, flops_xla=xla, flops_executed=executed)


def _fixed(name: str, op: str, flops: int) -> LayerCost:
    return LayerCost(name, op, 0, flops, flops, flops)


def model_cost(config: ModelConfig, lr_size) -> ModelCost:
    """Analytic per-layer cost of ``config`` on one LR image of ``lr_size = (h, w)``."""
    h, w = check_lr_size(lr_size)
    r, c, fam, act = config.scale, config.channels, config.family, config.activation
    hr = (h * r, w * r)
    layers: list[LayerCost] = []
    if fam in ("hr", "lr_tied") or config.residual:
        kind = "upscale_phases" if fam == "lr_tied" else "upscale"
        layers.append(_fixed("bicubic", f"bicubic.{kind} x{r}", bicubic.upscale_flops(h, w, c, r)))
    channels, kernels = config.layer_channels(), config.kernel_sizes
    # On CPU the upsampling layer may run as xla_cpu's channel split; XLA then recomputes a cheap
    # previous layer's bias add + activation for the split's two parts.
    split = None
    if xla_cpu.uses_channel_split(config):
        split = xla_cpu.duplicated_producer(act, ACTIVATION_COST[act][0]) if config.depth > 1 else 0
    spans, dilations = config.effective_kernel_sizes(), config.dilations
    bias_after_shuffle = config.upsample_bias == "channel" and fam == "lr"
    for i, ((cin, cout), k) in enumerate(zip(channels, kernels, strict=True)):
        last = i == config.depth - 1
        d = dilations[i]
        if fam == "hr":
            pads = (tied.same_pads(spans[i]),) * 2
            layers.append(_conv(f"conv{i}", hr, k, cin, cout, pads, "HR", dilation=d))
        elif fam == "lr_tied":
            layers.append(_tied(f"conv{i}", (h, w), k, cin, cout, r, d))
        elif fam == "deconv" and last:
            has_bias = config.upsample_bias != "none"
            layers.append(_deconv((h, w), k, cin, cout, r, split, bias=has_bias))
        else:
            pads = config.upsample_padding if last else "SAME"
            pads = (tied.same_pads(k),) * 2 if pads == "SAME" else pads
            has_bias = not last or config.upsample_bias == "default"
            split_here = split if last else None
            layers.append(
                _conv(f"conv{i}", (h, w), k, cin, cout, pads, "LR", split_here, bias=has_bias)
            )
        if not last:
            grid = hr if fam == "hr" else (h, w)
            per_image = grid[0] * grid[1] * cout * (r * r if fam == "lr_tied" else 1)
            layers.append(_act(f"act{i}", per_image, act))
    if fam in ("lr", "lr_tied"):
        layers.append(_fixed("shuffle", f"pixel_shuffle x{r} (a permutation)", 0))
    if bias_after_shuffle:  # one bias per output channel, tied over the r*r phases
        bias_layer = _fixed("bias", "add the per-channel bias", hr[0] * hr[1] * c)
        layers.append(dataclasses.replace(bias_layer, params=c))
    if config.residual:
        layers.append(_fixed("residual", "add bicubic upscale", hr[0] * hr[1] * c))
    return ModelCost(config, (h, w), tuple(layers))


def count_params(model: nnx.Module) -> int:
    """Sum of the sizes of ``model``'s ``nnx.Param`` arrays."""
    return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))


def _forward(model: nnx.Module):
    """``(jitted f(state, x), state)``: the forward pass as a pure function of the parameters."""
    graphdef, state = nnx.split(model)
    return jax.jit(lambda state, x: nnx.merge(graphdef, state)(x)), state


def xla_cost(model: nnx.Module, lr_shape) -> dict[str, float]:
    """XLA's ``flops`` and ``transcendentals`` for one forward pass on an ``lr_shape`` input.

    ``compile().cost_analysis()`` returns a dict in jax 0.10 (a list of per-module dicts in older
    versions; both are handled). The parameters are traced arguments, as in training.
    """
    fwd, state = _forward(model)
    x = jax.ShapeDtypeStruct(tuple(lr_shape), jnp.float32)
    cost = fwd.lower(state, x).compile().cost_analysis()
    if isinstance(cost, list | tuple):
        cost = {k: sum(c.get(k, 0.0) for c in cost) for k in ("flops", "transcendentals")}
    return {k: float(cost.get(k, 0.0)) for k in ("flops", "transcendentals")}


def measure_latency(
    model: nnx.Module,
    lr_shape,
    *,
    warmup: int = 2,
    repeats: int = 10,
    min_time_s: float = 0.0,
    seed: int = 0,
) -> dict[str, float]:
    """Forward-pass latency on the default device, this process's first local device unless set
    (``timing.time_fn``: warm-up, median of N).

    The model is split once and ``jax.jit`` merges it inside (not ``nnx.jit``, which adds per-call overhead); the input
    is standard-normal float32 of ``lr_shape = (N, h, w, C)``. Milliseconds.
    """
    fwd, state = _forward(model)
    x = jax.random.normal(jax.random.key(seed), tuple(lr_shape), jnp.float32)
    return timing.time_fn(fwd, state, x, warmup=warmup, repeats=repeats, min_time_s=min_time_s)
