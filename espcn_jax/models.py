"""Super-resolution network families at matched compute (docs/flops.md), built by family name.

Every family maps an LR batch ``(N, h, w, C)`` to ``(N, h*r, w*r, C)``. ``depth`` counts the conv
layers, the upsampling layer included; ``widths`` are the ``depth - 1`` hidden feature widths.

- ``lr`` (ESPCN): ``depth - 1`` LR convs, an LR conv to ``C*r*r``, the periodic shuffle ``PS_r``.
- ``hr`` (SRCNN/VDSR): fixed bicubic ``x r`` (:func:`bicubic.upscale`), then ``depth`` HR convs.
- ``deconv`` (FSRCNN): ``depth - 1`` LR convs, then a stride-``r`` transposed conv to ``C``,
  executed as :class:`layers.FastConvTranspose` (LR conv + shuffle). Its kernel is ``3r x 3r`` by
  default: the note's ``K = k*r`` with ``k = 3``, so each output phase gets exactly 3x3 LR taps
  (FSRCNN's 9x9 at ``r = 3``) and its useful cost equals the ``lr`` family's 3x3 sub-pixel layer.
  Padding is ``"SAME"`` in Flax's ``ConvTranspose`` sense: the output is exactly ``(h*r, w*r)``.
- ``lr_tied``: the exact LR-space image of an ``hr`` net (docs/tied.md). Its parameters *are* the
  HR kernels (same tree as ``hr``); each call ties them into LR kernels with
  :func:`tied.hr_conv_to_tied_lr` and runs LR input -> :func:`bicubic.upscale_phases` -> tied LR
  convs -> ``PS_r``. Build it from an ``hr`` net with :func:`hr_to_lr_tied`.

Default kernel sizes: 5 for the first layer, 3 after it (ESPCN), ``3r`` for the deconv layer. All
hidden convs are ``"SAME"``. Activations follow every layer but the last (ESPCN has none there).
``residual=True`` adds ``bicubic.upscale(x)`` to the output. ``icnr=True`` initialises the sub-pixel
layer with ICNR (:func:`icnr.icnr` for ``lr``'s last conv, :func:`icnr.icnr_transposed` for
``deconv``'s transposed conv; a ``deconv`` kernel smaller than ``r`` has none and is refused).

Fairness options (docs/fairness.md):

- ``dilations`` (``hr``/``lr_tied``): per-layer kernel dilation of the HR convs. Dilated by ``r``,
  an HR conv keeps its width, parameters and multiply-adds but reaches ``r`` times as far, so an
  ``hr`` net sees as many LR pixels as an ``lr`` net with the same kernels.
- ``upsample_bias``: the last layer's bias. ``"default"``: the family's own (``lr``: one per
  output channel and phase, ``C*r*r``; ``deconv``: one per channel). ``"channel"``: one per output
  channel (``lr`` then adds it after the shuffle, tied over the phases, as ``deconv`` does).
  ``"none"``: no bias (``lr`` and ``deconv``).
- ``init="lr"`` (``deconv``): the transposed kernel is the exact conversion of the ``lr`` net's
  initialisation with the same seed (:func:`lr_to_deconv`), so ``lr`` and ``deconv`` start from
  the same function (with the same ``upsample_bias``, ``"channel"`` or ``"none"``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from espcn_jax import bicubic, icnr, ops, subpixel, tied, xla_cpu
from espcn_jax.layers import FastConvTranspose

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "tanh": jnp.tanh,
    "relu": jax.nn.relu,
    "leaky_relu": jax.nn.leaky_relu,
    "elu": jax.nn.elu,
    "sigmoid": jax.nn.sigmoid,
    "silu": jax.nn.silu,
    "gelu": jax.nn.gelu,
    "identity": lambda x: x,
}
FAMILY_NAMES = ("lr", "hr", "deconv", "lr_tied")  # the keys of FAMILIES, in a fixed order
UPSAMPLE_BIAS = ("default", "channel", "none")
INITS = ("default", "lr")
_DN = ("NHWC", "HWIO", "NHWC")

PadPairs = tuple[tuple[int, int], tuple[int, int]]


def _per_layer(value, name: str, count: int) -> tuple[int, ...]:
    """An int (every layer) or a sequence of ``count`` ints >= 1, as a tuple."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) != count:
            raise ValueError(f"{name} must have {count} entries, got {len(value)}: {value!r}")
        return tuple(ops.check_positive_int(v, name) for v in value)
    return (ops.check_positive_int(value, name),) * count


def default_kernel_sizes(family: str, depth: int, scale: int) -> tuple[int, ...]:
    """5 for the first layer, then 3 (ESPCN); the transposed conv of ``deconv`` gets ``3*scale``."""
    sizes = [5] + [3] * (depth - 1)
    if family == "deconv":
        sizes[-1] = 3 * scale
    return tuple(sizes)


def _check_pads(padding, kernel_size: int) -> str | PadPairs:
    """``"SAME"`` or explicit ``((lo, hi), (lo, hi))`` LR pads, ``lo + hi == kernel_size - 1``."""
    if padding == "SAME":
        return "SAME"
    try:
        pads = tuple((int(lo), int(hi)) for lo, hi in padding)
    except (TypeError, ValueError):
        pads = ()
    if len(pads) != 2 or any(lo < 0 or hi < 0 or lo + hi != kernel_size - 1 for lo, hi in pads):
        raise ValueError(
            f"upsample_padding must be 'SAME' or ((lo, hi), (lo, hi)) with lo + hi = "
            f"{kernel_size - 1} (grid-preserving), got {padding!r}"
        )
    return pads  # type: ignore[return-value]


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Everything that defines a network; ml_collections configs unpack into it.

    ``widths``: one int for every hidden layer, or ``depth - 1`` ints. ``kernel_sizes``: ``None``
    (family defaults), one int, or ``depth`` ints. ``upsample_padding``: pads of ``lr``'s sub-pixel
    conv (``"SAME"`` or explicit grid-preserving pairs, as :func:`deconv_to_lr` produces); every
    other family is ``"SAME"`` throughout. ``dtype``: computation dtype (``None``: as the inputs and
    ``param_dtype`` promote).
    """

    family: str = "lr"
    scale: int = 3
    channels: int = 1
    depth: int = 3
    widths: int | tuple[int, ...] = (64, 32)
    kernel_sizes: int | tuple[int, ...] | None = None
    activation: str = "tanh"
    residual: bool = False
    icnr: bool = False
    order: str = "tf"
    upsample_padding: str | PadPairs = "SAME"
    dtype: str | None = None
    param_dtype: str = "float32"
    dilations: int | tuple[int, ...] | None = None
    upsample_bias: str = "default"
    init: str = "default"

    def __post_init__(self):
        def put(name, value):
            object.__setattr__(self, name, value)

        if self.family not in FAMILY_NAMES:
            raise ValueError(f"family must be one of {FAMILY_NAMES}, got {self.family!r}")
        put("scale", ops.check_positive_int(self.scale, "scale"))
        put("channels", ops.check_positive_int(self.channels, "channels"))
        depth = ops.check_positive_int(self.depth, "depth")
        put("depth", depth)
        put("widths", () if depth == 1 else _per_layer(self.widths, "widths", depth - 1))
        if self.kernel_sizes is None:
            put("kernel_sizes", default_kernel_sizes(self.family, depth, self.scale))
        else:
            put("kernel_sizes", _per_layer(self.kernel_sizes, "kernel_sizes", depth))
        if self.dilations is None:
            put("dilations", (1,) * depth)
        else:
            put("dilations", _per_layer(self.dilations, "dilations", depth))
            if self.family not in ("hr", "lr_tied") and set(self.dilations) != {1}:
                raise ValueError(
                    f"dilations apply to the HR convs of families 'hr' and 'lr_tied', not "
                    f"{self.family!r}: got {self.dilations!r}"
                )
        if self.upsample_bias not in UPSAMPLE_BIAS:
            raise ValueError(
                f"upsample_bias must be one of {UPSAMPLE_BIAS}, got {self.upsample_bias!r}"
            )
        if self.upsample_bias != "default" and self.family not in ("lr", "deconv"):
            raise ValueError(
                f"upsample_bias={self.upsample_bias!r} applies to families 'lr' and 'deconv', "
                f"not {self.family!r}"
            )
        if self.init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {self.init!r}")
        if self.init == "lr":
            k = self.kernel_sizes[-1]
            if self.family != "deconv":
                raise ValueError(f"init='lr' applies to family 'deconv', not {self.family!r}")
            taps = subpixel.plan((k, k), self.scale, "SAME")[0].taps
            if taps * self.scale != k or self.icnr:
                raise ValueError(
                    f"init='lr' needs a transposed kernel size that is a multiple of the scale "
                    f"{self.scale} (got {k}) and icnr=False: only then is every LR weight one "
                    "transposed weight"
                )
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"activation must be one of {tuple(ACTIVATIONS)}, got {self.activation!r}"
            )
        ops.check_order(self.order)
        if self.family == "lr":
            put("upsample_padding", _check_pads(self.upsample_padding, self.kernel_sizes[-1]))
        elif self.upsample_padding != "SAME":
            raise ValueError(
                f"upsample_padding must be 'SAME' for family {self.family!r}, "
                f"got {self.upsample_padding!r}"
            )
        for name in ("residual", "icnr"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.icnr and self.family not in ("lr", "deconv"):
            raise ValueError(f"icnr applies to families 'lr' and 'deconv', not {self.family!r}")
        if self.icnr and self.family == "deconv":
            k = self.kernel_sizes[-1]
            if not icnr.shared_taps(k, self.scale):
                raise ValueError(
                    f"icnr=True has no ICNR kernel for family 'deconv' at scale {self.scale} with "
                    f"kernel size {k}: no LR tap feeds all {self.scale**2} output phases (it needs kernel size >= scale)"
                )
        for name in ("dtype", "param_dtype"):
            value = getattr(self, name)
            if value is None and name == "dtype":
                continue
            try:
                dt = jnp.dtype(value)
            except TypeError:
                dt = None
            if dt is None or not jnp.issubdtype(dt, jnp.floating):
                raise ValueError(f"{name} must name a floating dtype, got {value!r}")
            put(name, dt.name)

    @classmethod
    def espcn(cls, scale: int = 3, channels: int = 1, **overrides) -> ModelConfig:
        """Shi et al. 2016: 5x5x64 -> tanh -> 3x3x32 -> tanh -> 3x3x(C r^2) -> PS_r."""
        fields = dict(depth=3, widths=(64, 32), kernel_sizes=(5, 3, 3), activation="tanh")
        return cls(**{"family": "lr", "scale": scale, "channels": channels, **fields, **overrides})

    def replace(self, **changes) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    def layer_channels(self) -> tuple[tuple[int, int], ...]:
        """``(C_in, C_out)`` of every conv layer in its native form (``lr``'s last: ``C*r*r``)."""
        c, r = self.channels, self.scale
        last = c * r * r if self.family == "lr" else c
        features = (c, *self.widths, last)
        return tuple(zip(features[:-1], features[1:], strict=True))

    def activation_fn(self) -> Callable[[jax.Array], jax.Array]:
        return ACTIVATIONS[self.activation]

    def effective_kernel_sizes(self) -> tuple[int, ...]:
        """Per layer, the span of a kernel in its grid's pixels: ``d * (k - 1) + 1``."""
        return tuple(
            d * (k - 1) + 1 for k, d in zip(self.kernel_sizes, self.dilations, strict=True)
        )


def _check_input(x_NHWC: jax.Array, config: ModelConfig) -> None:
    if jnp.ndim(x_NHWC) != 4 or x_NHWC.shape[-1] != config.channels:
        raise ValueError(
            f"x_NHWC must have shape (N, h, w, {config.channels}), got {jnp.shape(x_NHWC)}"
        )


def _convs(
    config: ModelConfig, count: int, rngs: nnx.Rngs, last_padding="SAME", last_init=None
) -> nnx.List:
    """The first ``count`` conv layers of ``config`` as ``nnx.Conv``; the options apply to layer
    ``depth - 1`` (the sub-pixel conv of ``lr``) when ``count`` reaches it."""
    layers = []
    channels = config.layer_channels()[:count]
    for i, ((cin, cout), k) in enumerate(zip(channels, config.kernel_sizes, strict=False)):
        last = i == config.depth - 1
        options = {"kernel_init": last_init} if last and last_init is not None else {}
        if last and config.upsample_bias != "default":
            options["use_bias"] = False  # "channel": added after the shuffle; "none": no bias
        if config.dilations[i] != 1:
            options["kernel_dilation"] = (config.dilations[i],) * 2
        layers.append(
            nnx.Conv(
                cin,
                cout,
                (k, k),
                padding=last_padding if last else "SAME",
                dtype=config.dtype,
                param_dtype=config.param_dtype,
                rngs=rngs,
                **options,
            )
        )
    return nnx.List(layers)


def _hidden(convs: Sequence[nnx.Conv], act: Callable, x: jax.Array) -> jax.Array:
    for conv in convs:
        x = act(conv(x))
    return x


class LRNet(nnx.Module):
    """ESPCN: LR convs, a sub-pixel conv to ``C*r*r`` channels, ``PS_r`` (shuffle ``order``)."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        _expect(config, "lr")
        self.config = config
        init = None
        if config.icnr:
            init = icnr.icnr(config.scale, order=config.order)
        self.convs = _convs(config, config.depth, rngs, config.upsample_padding, init)
        self.bias = nnx.data(None)  # "channel": one bias per output channel, after the shuffle
        if config.upsample_bias == "channel":
            self.bias = nnx.Param(jnp.zeros((config.channels,), config.param_dtype))

    def __call__(self, x_NHWC: jax.Array) -> jax.Array:
        cfg = self.config
        _check_input(x_NHWC, cfg)
        z = self.convs[-1](_hidden(self.convs[:-1], cfg.activation_fn(), x_NHWC))
        y = ops.pixel_shuffle(z, cfg.scale, cfg.order)
        if self.bias is not None:
            y = y + self.bias[...].astype(y.dtype)
        return y + bicubic.upscale(x_NHWC, cfg.scale).astype(y.dtype) if cfg.residual else y


class HRNet(nnx.Module):
    """SRCNN/VDSR style: fixed bicubic ``x r``, then ``depth`` HR convs."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        _expect(config, "hr")
        self.config = config
        self.convs = _convs(config, config.depth, rngs)

    def __call__(self, x_NHWC: jax.Array) -> jax.Array:
        cfg = self.config
        _check_input(x_NHWC, cfg)
        up = bicubic.upscale(x_NHWC, cfg.scale)
        y = self.convs[-1](_hidden(self.convs[:-1], cfg.activation_fn(), up))
        return y + up.astype(y.dtype) if cfg.residual else y


class DeconvNet(nnx.Module):
    """FSRCNN style: LR convs, then a stride-``r`` transposed conv run in LR space."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        _expect(config, "deconv")
        self.config = config
        r, k = config.scale, config.kernel_sizes[-1]
        cin, cout = config.layer_channels()[-1]
        kwargs = {"use_bias": config.upsample_bias != "none"}
        if config.icnr:
            kwargs["kernel_init"] = icnr.icnr_transposed((k, k), r, "SAME", config.order)
        if config.init == "lr":  # the lr net of these rngs, its sub-pixel kernel converted
            start = LRNet(_lr_image_config(config), rngs=rngs)
            self.convs = nnx.List(list(start.convs)[:-1])
            kernel = subpixel.lr_to_zero_insertion(
                start.convs[-1].kernel[...], (k, k), r, "SAME", config.order
            )
            kwargs["kernel_init"] = lambda key, shape, dtype: kernel.astype(dtype)
        else:
            self.convs = _convs(config, config.depth - 1, rngs)
        self.deconv = FastConvTranspose(
            cin,
            cout,
            (k, k),
            (r, r),
            padding="SAME",
            order=config.order,
            dtype=config.dtype,
            param_dtype=config.param_dtype,
            rngs=rngs,
            **kwargs,
        )

    def __call__(self, x_NHWC: jax.Array) -> jax.Array:
        cfg = self.config
        _check_input(x_NHWC, cfg)
        y = self.deconv(_hidden(self.convs, cfg.activation_fn(), x_NHWC))
        return y + bicubic.upscale(x_NHWC, cfg.scale).astype(y.dtype) if cfg.residual else y


class LRTiedNet(nnx.Module):
    """An ``hr`` net computed in LR space with tied kernels; :class:`HRNet`'s parameter tree."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        _expect(config, "lr_tied")
        self.config = config
        self.convs = _convs(config, config.depth, rngs)  # HR kernels: parameter holders only

    def __call__(self, x_NHWC: jax.Array) -> jax.Array:
        cfg = self.config
        _check_input(x_NHWC, cfg)
        r, act = cfg.scale, cfg.activation_fn()
        up = bicubic.upscale_phases(x_NHWC, r, cfg.order)  # (N, h, w, C*r*r)
        z = up
        for i, conv in enumerate(self.convs):
            kernel_hr = _dilate_kernel(conv.kernel[...], cfg.dilations[i])
            kernel_lr, padding_lr = tied.hr_conv_to_tied_lr(kernel_hr, r, "SAME", cfg.order)
            bias = tied.tie_bias(conv.bias[...], r, cfg.order)
            z, kernel_lr, bias = nnx.nn.dtypes.promote_dtype((z, kernel_lr, bias), dtype=cfg.dtype)
            z = lax.conv_general_dilated(z, kernel_lr, (1, 1), padding_lr, dimension_numbers=_DN)
            z = z + bias
            if i < cfg.depth - 1:
                z = act(z)
        if cfg.residual:
            z = z + up.astype(z.dtype)
        return ops.pixel_shuffle(z, r, cfg.order)


def _dilate_kernel(kernel_HWIO: jax.Array, dilation: int) -> jax.Array:
    """The dense kernel of a dilated one: ``dilation - 1`` zero taps between its taps."""
    if dilation == 1:
        return kernel_HWIO
    kh, kw, ci, co = kernel_HWIO.shape
    d = dilation  # pads and reshapes only: no scatter, nothing for XLA to count as FLOPs
    holes = jnp.pad(
        kernel_HWIO[:, None, :, None], ((0, 0), (0, d - 1), (0, 0), (0, d - 1), (0, 0), (0, 0))
    )
    dense = holes.reshape(kh * d, kw * d, ci, co)
    return dense[: (kh - 1) * d + 1, : (kw - 1) * d + 1]


FAMILIES: dict[str, type[nnx.Module]] = {
    "lr": LRNet,
    "hr": HRNet,
    "deconv": DeconvNet,
    "lr_tied": LRTiedNet,
}
assert tuple(FAMILIES) == FAMILY_NAMES


def _expect(config: ModelConfig, family: str) -> None:
    if not isinstance(config, ModelConfig) or config.family != family:
        got = config.family if isinstance(config, ModelConfig) else type(config).__name__
        raise ValueError(
            f"config.family must be {family!r} for {FAMILIES[family].__name__}, got {got!r}"
        )


def _bicubic_support(q: int, r: int) -> tuple[int, int]:
    """First and last LR sample with a non-zero weight in HR sample ``q`` of ``bicubic.upscale``:
    MATLAB geometry ``s = (q + 0.5)/r - 0.5``, Keys' cubic (zero at distances 1 and >= 2)."""
    # In units of 1/(2r): distance 2r * |s - j| = |2q + 1 - r - 2rj|.
    lo = -(-(2 * q + 1 - r - 4 * r) // (2 * r))  # smallest j with distance <= 2 (checked below)
    js = [
        j
        for j in range(lo - 1, lo + 6)
        if abs(2 * q + 1 - r - 2 * r * j) < 4 * r and abs(2 * q + 1 - r - 2 * r * j) != 2 * r
    ]
    return min(js), max(js)


def receptive_field(config: ModelConfig) -> int:
    """Side, in LR pixels, of the input window that one output pixel depends on: the widest over
    output phases and both axes (interior pixels; the residual's bicubic window included).

    ``lr``: ``1 + sum(k - 1)``. ``deconv``: the hidden convs' plus the LR taps of the transposed
    conv that reach the phase (3 for ``K = 3r``). ``hr``/``lr_tied``: the HR window
    ``1 + sum(k - 1)`` HR pixels, mapped through the bicubic upscale: about ``sum(k - 1)/r + 3``
    LR pixels, a third of ``lr``'s at ``r = 3`` with equal kernels (dilate ``hr``'s convs by ``r``,
    or scale its kernels by ``r``, to match). Dilated kernels count by their span
    ``d * (k - 1) + 1``: the window's extent, though a dilated tap skips the pixels between.
    """
    r, kernels = config.scale, config.kernel_sizes
    hidden = [tied.same_pads(k) for k in kernels[: config.depth - 1]]
    lo_h, hi_h = sum(lo for lo, _ in hidden), sum(hi for _, hi in hidden)
    widest = 0
    for axis in range(2):
        for a in range(r):  # output sample q = a of LR pixel 0
            if config.family in ("hr", "lr_tied"):
                pads = [tied.same_pads(k) for k in config.effective_kernel_sizes()]
                lo_hr, hi_hr = sum(lo for lo, _ in pads), sum(hi for _, hi in pads)
                ends = [_bicubic_support(q, r) for q in range(a - lo_hr, a + hi_hr + 1)]
                first, last = min(e[0] for e in ends), max(e[1] for e in ends)
            elif config.family == "lr":
                pads = config.upsample_padding
                lo, hi = tied.same_pads(kernels[-1]) if pads == "SAME" else pads[axis]
                first, last = -lo_h - lo, hi_h + hi
            else:  # deconv: the LR taps t that hold a real weight for phase a
                plan = subpixel.plan((kernels[-1],) * 2, r, "SAME")[axis]
                taps = [t for t in range(plan.taps) if plan.lr_index()[t, a] != plan.kernel_size]
                shift = -plan.lr_padding[0]
                if not taps:  # K < r: this phase is the bias alone (and the residual)
                    first, last = (0, -1) if not config.residual else _bicubic_support(a, r)
                else:
                    first, last = shift + min(taps) - lo_h, shift + max(taps) + hi_h
            if config.residual:
                res_first, res_last = _bicubic_support(a, r)
                first, last = min(first, res_first), max(last, res_last)
            widest = max(widest, last - first + 1)
    return widest


def model_from_config(config: ModelConfig, *, rngs: nnx.Rngs) -> nnx.Module:
    """The family's net for ``config``, its upsampling layer run as this backend runs it fastest
    (:func:`xla_cpu.use_channel_split`: the same function, a CPU execution choice)."""
    return xla_cpu.use_channel_split(FAMILIES[config.family](config, rngs=rngs))


def build_model(family: str = "lr", *, rngs: nnx.Rngs, **fields) -> nnx.Module:
    """``build_model("hr", scale=2, depth=4, widths=32, rngs=nnx.Rngs(0))``; see ModelConfig."""
    return model_from_config(ModelConfig(family=family, **fields), rngs=rngs)


def _empty(config: ModelConfig) -> nnx.Module:
    """A net of ``config`` with abstract (shape-only) parameters, to be filled by ``nnx.update``."""
    return nnx.eval_shape(lambda: model_from_config(config, rngs=nnx.Rngs(0)))


def hr_to_lr_tied(model: HRNet) -> LRTiedNet:
    """The ``lr_tied`` net computing exactly ``model``'s function in LR space (shares no arrays)."""
    if not isinstance(model, HRNet):
        raise ValueError(f"model must be an HRNet, got {type(model).__name__}")
    tied_net = _empty(model.config.replace(family="lr_tied"))
    nnx.update(tied_net, jax.tree.map(jnp.copy, nnx.state(model)))
    return tied_net


def _lr_image_config(config: ModelConfig) -> ModelConfig:
    """The ``lr`` config whose sub-pixel conv is the LR face of ``deconv`` config's transposed conv
    (:func:`subpixel.plan`: its taps and LR padding)."""
    r, k = config.scale, config.kernel_sizes[-1]
    plan_h, plan_w = subpixel.plan((k, k), r, "SAME")
    assert plan_h.crop == plan_w.crop == 0, "'SAME' transposed convs need no crop"
    lr_pads = (plan_h.lr_padding, plan_w.lr_padding)
    return config.replace(
        family="lr",
        kernel_sizes=(*config.kernel_sizes[:-1], plan_h.taps),
        upsample_padding="SAME" if lr_pads == (tied.same_pads(plan_h.taps),) * 2 else lr_pads,
        icnr=False,
        init="default",
    )


def lr_to_deconv(model: LRNet, kernel_size: int | None = None) -> DeconvNet:
    """The ``deconv`` net with the same output as ``model`` (inverse of :func:`deconv_to_lr`).

    ``kernel_size``: the transposed kernel's ``K`` (default ``r`` times the LR kernel's). Exact when
    ``model``'s sub-pixel conv is the LR face of a ``K x K`` transposed conv (taps and padding as
    :func:`subpixel.plan` gives them) and its bias is ``"channel"`` or ``"none"`` (a per-phase bias
    has no transposed form).
    """
    if not isinstance(model, LRNet):
        raise ValueError(f"model must be an LRNet, got {type(model).__name__}")
    cfg = model.config
    r = cfg.scale
    k = kernel_size if kernel_size is not None else r * cfg.kernel_sizes[-1]
    if cfg.upsample_bias == "default":
        raise ValueError(
            "lr_to_deconv needs upsample_bias 'channel' or 'none': lr's per-phase bias "
            "(C*r*r values) has no transposed-conv form"
        )
    deconv_cfg = cfg.replace(
        family="deconv", kernel_sizes=(*cfg.kernel_sizes[:-1], k), upsample_padding="SAME"
    )
    image = _lr_image_config(deconv_cfg)
    if (image.kernel_sizes[-1], image.upsample_padding) != (
        cfg.kernel_sizes[-1],
        cfg.upsample_padding,
    ):
        raise ValueError(
            f"lr's sub-pixel conv ({cfg.kernel_sizes[-1]} taps, padding {cfg.upsample_padding!r})"
            f" is not the LR face of a {k}x{k} 'SAME' transposed conv at scale {r}"
        )
    net = _empty(deconv_cfg)
    nnx.update(net.convs, jax.tree.map(jnp.copy, nnx.state(model.convs[:-1])))
    kernel = subpixel.lr_to_zero_insertion(
        model.convs[-1].kernel[...], (k, k), r, "SAME", cfg.order
    )
    update = {"kernel": kernel}
    if cfg.upsample_bias == "channel":
        update["bias"] = jnp.copy(model.bias[...])
    nnx.update(net.deconv, update)
    return net


def deconv_to_lr(model: DeconvNet) -> LRNet:
    """The ``lr`` net with the same output: the transposed kernel re-indexed into an LR kernel."""
    if not isinstance(model, DeconvNet):
        raise ValueError(f"model must be a DeconvNet, got {type(model).__name__}")
    cfg = model.config
    r, k = cfg.scale, cfg.kernel_sizes[-1]
    plan_h, plan_w = subpixel.plan((k, k), r, "SAME")
    assert plan_h.crop == plan_w.crop == 0, "'SAME' transposed convs need no crop"
    lr_net = _empty(
        cfg.replace(
            family="lr",
            kernel_sizes=(*cfg.kernel_sizes[:-1], plan_h.taps),
            upsample_padding=(plan_h.lr_padding, plan_w.lr_padding),
            icnr=False,
            init="default",
        )
    )
    state = jax.tree.map(jnp.copy, nnx.state(model.convs))
    kernel_lr = subpixel.zero_insertion_to_lr(model.deconv.kernel[...], r, "SAME", cfg.order)
    nnx.update(lr_net.convs, state)
    nnx.update(lr_net.convs[-1], {"kernel": kernel_lr})
    if cfg.upsample_bias == "default":  # deconv's per-channel bias, copied to every phase
        bias_lr = tied.tie_bias(model.deconv.bias[...], r, cfg.order)
        nnx.update(lr_net.convs[-1], {"bias": bias_lr})
    elif cfg.upsample_bias == "channel":  # lr keeps it per channel too
        nnx.update(lr_net, {"bias": jnp.copy(model.deconv.bias[...])})
    return lr_net
