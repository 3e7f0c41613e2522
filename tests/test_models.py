"""Network families: exact conversions, receptive fields, gradients, ICNR, config errors.

References not written by the code under test: ESPCN written in PyTorch (the ``lr`` family),
``flax.nnx.ConvTranspose`` (the deconv layer's meaning), Keys' cubic kernel re-derived here (the
bicubic receptive field), gradient probes (receptive fields), the ESPCN paper's layer shapes, and
conversion identities that must hold exactly.
"""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from espcn_jax import models
from espcn_jax.models import (
    FAMILIES,
    ModelConfig,
    build_model,
    deconv_to_lr,
    hr_to_lr_tied,
    lr_to_deconv,
)

SMALL = dict(depth=3, widths=(6, 4))


def _x(shape, seed=0):
    return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


@functools.partial(jax.jit, static_argnums=0)
def _apply_split(graphdef, state, x):
    return nnx.merge(graphdef, state)(x)


def apply(net: nnx.Module, x: jax.Array) -> jax.Array:
    """The forward pass, jitted (one compile per config: cheaper than eager op-by-op here)."""
    return _apply_split(*nnx.split(net), x)


def _max_err(a, b) -> float:
    return float(jnp.max(jnp.abs(a - b)) / (1.0 + jnp.max(jnp.abs(b))))


# ------------------------------------------------------------------------------------------------
# Registry, config, shapes


@pytest.mark.parametrize(
    "scale, channels, kernels", [(1, 1, (5, 3, 3)), (2, 3, (5, 3, 3)), (3, 1, (5, 3, 3)),
                                 (4, 3, (3, 1)), (3, 1, (3,))]
)  # fmt: skip
def test_lr_family_is_torch_espcn(scale, channels, kernels):
    """The ``lr`` net ("torch" shuffle order) against the same ESPCN written in PyTorch: Conv2d
    layers (padding k // 2), tanh between them, F.pixel_shuffle; weights copied across."""
    torch = pytest.importorskip("torch")
    depth = len(kernels)
    cfg = ModelConfig(family="lr", scale=scale, channels=channels, depth=depth,
                      widths=(6, 4)[: depth - 1], kernel_sizes=kernels, order="torch")  # fmt: skip
    net = models.model_from_config(cfg, rngs=nnx.Rngs(4))
    for conv in net.convs:  # non-zero biases, so that they are compared too
        conv.bias.set_value(_x(conv.bias.shape, seed=conv.bias.shape[0]))
    x = _x((2, 6, 7, channels), seed=1)
    z = torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy())
    for i, conv in enumerate(net.convs):
        weight = torch.from_numpy(np.asarray(conv.kernel[...]).transpose(3, 2, 0, 1).copy())
        bias = torch.from_numpy(np.asarray(conv.bias[...]).copy())
        z = torch.nn.functional.conv2d(z, weight, bias, padding=weight.shape[-1] // 2)
        z = torch.tanh(z) if i < depth - 1 else z
    want = torch.nn.functional.pixel_shuffle(z, scale).numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(apply(net, x), want, rtol=1e-5, atol=1e-5)


def test_per_layer_lists():
    cfg = ModelConfig(family="hr", depth=4, widths=[8, 6, 4], kernel_sizes=[9, 1, 1, 5])
    assert cfg.widths == (8, 6, 4) and cfg.kernel_sizes == (9, 1, 1, 5)  # SRCNN-like 9-1-1-5
    assert ModelConfig(family="lr", depth=4, widths=16).widths == (16, 16, 16)
    assert ModelConfig(family="lr", depth=1).widths == ()


def test_espcn_is_one_line_with_the_paper_shapes():
    cfg = ModelConfig.espcn(scale=3)
    net = models.model_from_config(cfg, rngs=nnx.Rngs(0))
    shapes = [conv.kernel[...].shape for conv in net.convs]
    assert shapes == [(5, 5, 1, 64), (3, 3, 64, 32), (3, 3, 32, 9)]
    assert (cfg.activation, cfg.residual) == ("tanh", False)
    # No activation after the last layer: its output is unbounded, tanh's would be in (-1, 1).
    big = net.convs[-1].kernel[...] * 1e3
    net.convs[-1].kernel.set_value(big)
    assert float(jnp.max(jnp.abs(apply(net, _x((1, 6, 6, 1)))))) > 1.0


def test_default_kernel_sizes():
    assert ModelConfig(family="lr", scale=3).kernel_sizes == (5, 3, 3)
    assert ModelConfig(family="hr", scale=3).kernel_sizes == (5, 3, 3)
    assert ModelConfig(family="deconv", scale=3).kernel_sizes == (5, 3, 9)  # FSRCNN's 9x9 at x3
    assert ModelConfig(family="deconv", scale=2, depth=2, widths=8).kernel_sizes == (5, 6)


def test_ml_collections_config_unpacks():
    cd = ml_collections.ConfigDict(
        dict(family="deconv", scale=2, channels=3, depth=3, widths=[8, 4], activation="relu")
    )
    cfg = ModelConfig(**cd.to_dict())
    assert (cfg.family, cfg.scale, cfg.channels, cfg.widths) == ("deconv", 2, 3, (8, 4))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_bfloat16_computation_follows_float32(family):
    """dtype="bfloat16" computes in bfloat16 from the same float32 parameters: the output is the
    float32 net's to bfloat16 precision."""
    low = build_model(family, scale=2, dtype="bfloat16", rngs=nnx.Rngs(0), **SMALL)
    high = build_model(family, scale=2, rngs=nnx.Rngs(0), **SMALL)
    assert low.convs[0].kernel[...].dtype == jnp.float32
    x = _x((1, 6, 5, 1))
    y = apply(low, x)
    assert y.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(y, np.float32), apply(high, x), rtol=0.05, atol=0.05)


# ------------------------------------------------------------------------------------------------
# Exact conversions


@pytest.mark.parametrize(
    "scale, channels, kernels, order, residual, activation",
    [
        (2, 1, (5, 3, 3), "tf", False, "tanh"),
        (3, 3, (5, 3, 3), "torch", True, "relu"),
        (4, 1, (3, 3), "tf", True, "tanh"),
        (3, 1, (4, 2, 9), "tf", False, "silu"),  # even kernels: asymmetric SAME pads
        (2, 3, (9, 5, 5), "torch", False, "tanh"),  # SRCNN-like 9-5-5
    ],
)
def test_hr_to_lr_tied_reproduces_hr(scale, channels, kernels, order, residual, activation):
    cfg = ModelConfig(
        family="hr", scale=scale, channels=channels, depth=len(kernels),
        widths=(5, 4)[: len(kernels) - 1], kernel_sizes=kernels, order=order, residual=residual,
        activation=activation,
    )  # fmt: skip
    hr = models.model_from_config(cfg, rngs=nnx.Rngs(1))
    tied_net = hr_to_lr_tied(hr)
    assert isinstance(tied_net, models.LRTiedNet)
    x = _x((2, 6, 7, channels), seed=3)
    y_hr, y_tied = apply(hr, x), apply(tied_net, x)
    assert y_tied.shape == y_hr.shape
    assert _max_err(y_tied, y_hr) < 1e-5
    # The tied net owns copies: changing it leaves the hr net alone.
    tied_net.convs[0].kernel.set_value(tied_net.convs[0].kernel[...] * 0)
    assert _max_err(apply(hr, x), y_hr) == 0.0


def test_lr_tied_built_directly_equals_hr_with_same_seed():
    hr = build_model("hr", scale=3, rngs=nnx.Rngs(7), **SMALL)
    tied_net = build_model("lr_tied", scale=3, rngs=nnx.Rngs(7), **SMALL)
    x = _x((1, 5, 5, 1))
    assert _max_err(apply(tied_net, x), apply(hr, x)) < 1e-5


@pytest.mark.parametrize(
    "scale, k_deconv, order, residual",
    [(3, 9, "tf", False), (2, 6, "torch", True), (2, 9, "tf", False), (3, 4, "torch", False),
     (4, 12, "tf", True), (2, 3, "tf", False)],
)  # fmt: skip
def test_deconv_to_lr_identical_output(scale, k_deconv, order, residual):
    cfg = ModelConfig(
        family="deconv", scale=scale, channels=3, kernel_sizes=(5, 3, k_deconv), order=order,
        residual=residual, **SMALL,
    )  # fmt: skip
    net = models.model_from_config(cfg, rngs=nnx.Rngs(2))
    net.deconv.bias.set_value(_x((3,), seed=9))  # a non-zero bias must convert too
    x = _x((2, 5, 6, 3), seed=4)
    y = apply(net, x)
    lr_net = deconv_to_lr(net)
    assert isinstance(lr_net, models.LRNet)
    assert _max_err(apply(lr_net, x), y) < 1e-6
    # The deconv layer means what flax.nnx.ConvTranspose means with the same parameters.
    ref = nnx.ConvTranspose(4, 3, (k_deconv, k_deconv), (scale, scale), padding="SAME",
                            rngs=nnx.Rngs(0))  # fmt: skip
    nnx.update(ref, nnx.state(net.deconv))

    @jax.jit
    def reference(x):
        hidden = x
        for conv in net.convs:
            hidden = jnp.tanh(conv(hidden))
        return ref(hidden) + (models.bicubic.upscale(x, scale) if residual else 0.0)

    assert _max_err(y, reference(x)) < 1e-5


@pytest.mark.parametrize(
    "bias, scale, order",
    [("default", 3, "tf"), ("channel", 3, "tf"), ("none", 3, "tf"), ("channel", 2, "torch")],
)
def test_deconv_init_lr_is_the_lr_net_of_the_same_seed(bias, scale, order):
    """init='lr': the deconv net starts as the lr net of the same seed, for every bias option;
    the default init does not (its fan-in is (3r)^2 C, not 9 C)."""
    fields = dict(scale=scale, order=order, upsample_bias=bias, **SMALL)
    lr = build_model("lr", rngs=nnx.Rngs(4), **fields)
    deconv = build_model("deconv", init="lr", rngs=nnx.Rngs(4), **fields)
    other = build_model("deconv", rngs=nnx.Rngs(4), **fields)
    x = _x((2, 6, 7, 1), seed=3)
    y = apply(lr, x)
    assert _max_err(apply(deconv, x), y) < 1e-6
    assert _max_err(apply(other, x), y) > 1e-2
    if bias != "default":
        lr.bias is None or lr.bias.set_value(_x((1,), seed=8))  # a bias must convert too
        back = lr_to_deconv(lr)
        assert isinstance(back, models.DeconvNet)
        assert _max_err(apply(back, x), apply(lr, x)) < 1e-6
        assert _max_err(apply(deconv_to_lr(back), x), apply(lr, x)) < 1e-6


def test_lr_channel_bias_is_tied_over_phases():
    lr = build_model("lr", scale=2, upsample_bias="channel", rngs=nnx.Rngs(0), **SMALL)
    none = build_model("lr", scale=2, upsample_bias="none", rngs=nnx.Rngs(0), **SMALL)
    assert lr.convs[-1].bias is None and none.bias is None and lr.bias.shape == (1,)
    lr.bias.set_value(jnp.asarray([0.25]))
    x = _x((1, 4, 5, 1))
    assert _max_err(apply(lr, x) - 0.25, apply(none, x)) < 1e-6


def _train(net: nnx.Module, xs: jax.Array, ys: jax.Array, lr: float = 3e-3) -> nnx.Module:
    """Adam on MSE, one step per leading index of ``xs``/``ys`` (plain optax under one
    ``lax.scan``: the test's own loop)."""
    graphdef, params = nnx.split(net)
    tx = optax.adam(lr)

    def step(carry, batch):
        params, opt_state = carry

        def loss(p):
            return jnp.mean((nnx.merge(graphdef, p)(batch[0]) - batch[1]) ** 2)

        grads = jax.grad(loss)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), None

    run = jax.jit(lambda params: jax.lax.scan(step, (params, tx.init(params)), (xs, ys))[0][0])
    return nnx.merge(graphdef, run(params))


def test_lr_and_deconv_train_identically_from_the_converted_start():
    """The note's first claim at the training level: lr and deconv (K = 3r) from the converted
    initialisation, the bias tied per channel in both, the same batches and an elementwise
    optimiser (Adam) follow the same trajectory: 300 steps later the outputs agree to float
    tolerance. With lr's own per-phase bias (one more parameter per phase) they do not."""
    r, steps = 3, 300
    fields = dict(scale=r, depth=3, widths=(6, 4), residual=True)
    xs = jax.random.uniform(jax.random.key(1), (steps, 4, 8, 8, 1))
    noise = 0.05 * jax.random.normal(jax.random.key(3), (steps, 4, 8 * r, 8 * r, 1))
    ys = jnp.repeat(jnp.repeat(xs, r, axis=2), r, axis=3) + noise  # a target nets must learn
    x_test = jax.random.uniform(jax.random.key(2), (2, 11, 13, 1))
    out = {}
    for bias in ("channel", "default"):
        start = build_model("lr", upsample_bias=bias, rngs=nnx.Rngs(5), **fields)
        deconv = build_model("deconv", init="lr", upsample_bias=bias, rngs=nnx.Rngs(5), **fields)
        before = _max_err(apply(deconv, x_test), apply(start, x_test))
        lr, deconv = _train(start, xs, ys), _train(deconv, xs, ys)
        moved = _max_err(apply(lr, x_test), apply(start, x_test))
        out[bias] = (before, _max_err(apply(deconv, x_test), apply(lr, x_test)), moved)
    before, after, moved = out["channel"]
    assert before < 1e-6 and moved > 1e-2  # it trained
    assert after < 1e-4
    assert out["default"][1] > 1e-3  # per-phase bias: another function class's trajectory


def test_converters_reject_the_wrong_family():
    lr = build_model("lr", scale=2, rngs=nnx.Rngs(0), **SMALL)
    with pytest.raises(ValueError, match="model must be an HRNet, got LRNet"):
        hr_to_lr_tied(lr)
    with pytest.raises(ValueError, match="model must be a DeconvNet, got LRNet"):
        deconv_to_lr(lr)


# ------------------------------------------------------------------------------------------------
# Receptive fields: d y[0, I, J, 0] / d x is zero outside the window, non-zero on its edges.


def _keys_cubic_support(s: float) -> set[int]:
    """LR samples ``j`` with a non-zero Keys (a = -0.5) weight at position ``s``: |s - j| < 2,
    except the kernel's zeros at |s - j| = 1."""
    return {j for j in range(int(np.floor(s)) - 2, int(np.floor(s)) + 3)
            if abs(s - j) < 2 and not np.isclose(abs(s - j), 1.0)}  # fmt: skip


def _bicubic_rows(q_lo: int, q_hi: int, r: int) -> tuple[int, int]:
    """Extent of LR rows feeding HR rows ``q_lo..q_hi`` (MATLAB geometry (q + 0.5)/r - 0.5)."""
    rows = set().union(*(_keys_cubic_support((q + 0.5) / r - 0.5) for q in range(q_lo, q_hi + 1)))
    return min(rows), max(rows)


def _expected_window(family: str, kernels: tuple[int, ...], r: int, q: int) -> tuple[int, int]:
    """LR rows that HR output row ``q`` depends on (interior pixel, odd kernels)."""
    radius = [(k - 1) // 2 for k in kernels]
    if family == "lr":
        return q // r - sum(radius), q // r + sum(radius)
    if family == "deconv":
        # K = 3r, "SAME": zero-insertion pad lo = 2r - 1, so output q = r*m + a reads the inserted
        # samples at q - lo + t, t < 3r, i.e. LR rows m-1..m+1 for every phase a.
        return q // r - 1 - sum(radius[:-1]), q // r + 1 + sum(radius[:-1])
    return _bicubic_rows(q - sum(radius), q + sum(radius), r)  # hr and lr_tied


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("r", [2, 3])
def test_receptive_field(family, r):
    kernels = (5, 3, 3) if family != "deconv" else (5, 3, 3 * r)
    net = build_model(family, scale=r, kernel_sizes=kernels, rngs=nnx.Rngs(0), **SMALL)
    h = 15
    q = (h // 2) * r + (r - 1)  # last phase of the middle LR pixel: an asymmetric case
    graphdef, state = nnx.split(net)
    pixel = jax.jit(jax.grad(lambda x: nnx.merge(graphdef, state)(x)[0, q, q, 0]))
    g = pixel(_x((1, h, h, 1)))[0, :, :, 0]
    rows = np.flatnonzero(np.any(np.asarray(g) != 0, axis=1))
    cols = np.flatnonzero(np.any(np.asarray(g) != 0, axis=0))
    lo, hi = _expected_window(family, kernels, r, q)
    assert 0 < lo and hi < h - 1, "the window must be interior for this test"
    assert (rows.min(), rows.max()) == (lo, hi)
    assert (cols.min(), cols.max()) == (lo, hi)


def _gradient_field(net: nnx.Module, h: int) -> int:
    """Widest support, in LR pixels, of d y[0, q, q, 0] / d x over the r phases q of the middle
    LR pixel (rows and columns): the receptive field measured by a gradient probe."""
    r = net.config.scale
    graphdef, state = nnx.split(net)
    probe = jax.jit(jax.grad(lambda x, q: nnx.merge(graphdef, state)(x)[0, q, q, 0]))
    x = _x((1, h, h, net.config.channels), seed=5)
    widest = 0
    for a in range(r):
        g = np.asarray(probe(x, (h // 2) * r + a))[0].any(axis=-1)
        for support in (np.flatnonzero(g.any(axis=1)), np.flatnonzero(g.any(axis=0))):
            if not support.size:  # a phase that reads no input (deconv with K < r)
                continue
            assert 0 < support.min() and support.max() < h - 1, "window must be interior"
            widest = max(widest, support.max() - support.min() + 1)
    return widest


@pytest.mark.parametrize(
    "fields",
    [
        dict(family="lr", scale=3, kernel_sizes=(5, 3, 3)),  # ESPCN: 9
        dict(family="lr", scale=2, depth=1, kernel_sizes=1, residual=True),  # the bicubic's 4
        dict(family="lr", scale=2, kernel_sizes=(5, 3, 2), upsample_padding=((1, 0), (0, 1))),
        dict(family="hr", scale=3, kernel_sizes=(5, 3, 3)),
        dict(family="hr", scale=3, kernel_sizes=(15, 9, 9)),  # kernels scaled by r
        dict(family="hr", scale=2, kernel_sizes=(4, 3, 2), residual=True),
        dict(family="lr_tied", scale=2, kernel_sizes=(5, 3, 3)),
        dict(family="deconv", scale=3, kernel_sizes=(5, 3, 9)),
        dict(family="deconv", scale=3, kernel_sizes=(3, 3, 6)),
        dict(family="deconv", scale=2, kernel_sizes=(3, 1, 5), residual=True),
        dict(family="deconv", scale=4, depth=1, widths=(), kernel_sizes=(3,)),
        dict(family="hr", scale=3, kernel_sizes=(5, 3, 3), dilations=(3, 3, 1)),  # rf_match
        dict(family="hr", scale=2, kernel_sizes=(5, 3, 3), dilations=2, residual=True),
        dict(family="hr", scale=4, kernel_sizes=(3, 3, 2), dilations=(4, 1, 3)),
        dict(family="lr_tied", scale=3, kernel_sizes=(5, 3, 3), dilations=(3, 3, 1)),
    ],
)
def test_receptive_field_is_the_gradient_support(fields):
    fields = {"depth": 3, "widths": (4, 3), **fields}
    net = build_model(rngs=nnx.Rngs(0), **fields)
    expected = models.receptive_field(net.config)
    assert _gradient_field(net, h=expected + 8) == expected


def test_receptive_field_of_the_paper_nets():
    """ESPCN's 5-3-3 sees 9x9 LR pixels; the hr net with the same kernels on the HR grid 7x7 at
    x3 (9 HR pixels, plus the bicubic's reach), with kernels scaled by r 14x14."""
    assert models.receptive_field(ModelConfig.espcn(scale=3)) == 9
    assert models.receptive_field(ModelConfig(family="hr", scale=3)) == 7
    assert models.receptive_field(ModelConfig(family="hr", scale=3, kernel_sizes=(15, 9, 9))) == 14
    # hidden convs dilated by r: lr's conv window, plus the bicubic's reach
    assert models.receptive_field(ModelConfig(family="hr", scale=3, dilations=(3, 3, 1))) == 11


def test_dilated_hr_keeps_width_and_parameters():
    plain = build_model("hr", scale=3, rngs=nnx.Rngs(0), **SMALL)
    dilated = build_model("hr", scale=3, dilations=(3, 3, 1), rngs=nnx.Rngs(0), **SMALL)
    shapes = lambda net: [p.shape for p in jax.tree.leaves(nnx.state(net, nnx.Param))]  # noqa: E731
    assert shapes(plain) == shapes(dilated)
    x = _x((1, 9, 9, 1))
    assert _max_err(apply(hr_to_lr_tied(dilated), x), apply(dilated, x)) < 1e-6
    # the dilated conv is lax's rhs_dilation of the same kernel (an independent reference)
    conv = dilated.convs[0]
    up = models.bicubic.upscale(x, 3)
    ref = jax.lax.conv_general_dilated(
        up, conv.kernel[...], (1, 1), "SAME", rhs_dilation=(3, 3),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    ) + conv.bias[...]  # fmt: skip
    assert _max_err(conv(up), ref) < 1e-6


# ------------------------------------------------------------------------------------------------
# Gradients flow to every parameter, ICNR


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_gradients_reach_every_parameter(family):
    net = build_model(family, scale=2, channels=3, residual=True, rngs=nnx.Rngs(0), **SMALL)
    x, target = _x((2, 5, 5, 3), 1), _x((2, 10, 10, 3), 2)
    graphdef, state = nnx.split(net)
    loss = lambda state: jnp.mean((nnx.merge(graphdef, state)(x) - target) ** 2)  # noqa: E731
    leaves = jax.tree.leaves(jax.jit(jax.grad(loss))(state))
    assert len(leaves) == 2 * net.config.depth  # kernel and bias of every layer
    for g in leaves:
        assert bool(jnp.all(jnp.isfinite(g))) and float(jnp.max(jnp.abs(g))) > 0


@pytest.mark.parametrize("family", ["lr", "deconv"])
@pytest.mark.parametrize("order", ["tf", "torch"])
def test_icnr_output_is_nearest_neighbour_at_init(family, order):
    r = 3
    x = _x((1, 6, 5, 3))
    for icnr in (True, False):
        net = build_model(family, scale=r, channels=3, icnr=icnr, order=order, rngs=nnx.Rngs(0),
                          **SMALL)  # fmt: skip
        y = np.asarray(apply(net, x))
        phase0 = np.repeat(np.repeat(y[:, ::r, ::r], r, axis=1), r, axis=2)
        assert np.allclose(y, phase0, atol=1e-6) == icnr


# ------------------------------------------------------------------------------------------------
# Bad configuration: one clear ValueError naming the argument and the value


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(family="cnn"), "family must be one of .* got 'cnn'"),
        (dict(activation="swish"), "activation must be one of .* got 'swish'"),
        (dict(depth=0), "depth must be an integer >= 1, got 0"),
        (dict(depth=2.5), "depth must be an integer >= 1, got 2.5"),
        (dict(widths=0), "widths must be an integer >= 1, got 0"),
        (dict(widths=(64, -3)), "widths must be an integer >= 1, got -3"),
        (dict(widths=(64,)), r"widths must have 2 entries, got 1: \(64,\)"),
        (dict(scale=0), "scale must be an integer >= 1, got 0"),
        (dict(scale=1.5), "scale must be an integer >= 1, got 1.5"),
        (dict(channels=0), "channels must be an integer >= 1, got 0"),
        (dict(kernel_sizes=(5, 3)), r"kernel_sizes must have 3 entries, got 2: \(5, 3\)"),
        (dict(order="nchw"), "order must be one of .* got 'nchw'"),
        (dict(residual="yes"), "residual must be True or False, got 'yes'"),
        (dict(dtype="int32"), "dtype must name a floating dtype, got 'int32'"),
        (dict(family="hr", icnr=True), "icnr applies to families 'lr' and 'deconv', not 'hr'"),
        (dict(upsample_padding=((0, 0), (1, 1))), "upsample_padding must be 'SAME' or"),
        (dict(family="deconv", upsample_padding="VALID"), "upsample_padding must be 'SAME' for"),
        (dict(dilations=(1, 3, 1)), "dilations apply to the HR convs of families 'hr' and"),
        (dict(family="hr", dilations=(3, 0, 1)), "dilations must be an integer >= 1, got 0"),
        (dict(upsample_bias="phase"), "upsample_bias must be one of .* got 'phase'"),
        (dict(family="hr", upsample_bias="none"), "upsample_bias='none' applies to families"),
        (dict(init="lr"), "init='lr' applies to family 'deconv', not 'lr'"),
        (dict(family="deconv", kernel_sizes=(5, 3, 8), init="lr"), "init='lr' needs a transposed"),
    ],
)
def test_bad_config_names_argument_and_value(fields, message):
    with pytest.raises(ValueError, match=message) as info:
        ModelConfig(**fields)
    assert "\n" not in str(info.value)
    family = fields.pop("family", "lr")
    with pytest.raises(ValueError, match=message):
        build_model(family, rngs=nnx.Rngs(0), **fields)


def test_bad_input_shape_and_mismatched_config():
    net = build_model("lr", scale=2, rngs=nnx.Rngs(0), **SMALL)
    with pytest.raises(ValueError, match=re.escape("x_NHWC must have shape (N, h, w, 1), got")):
        net(_x((1, 4, 4, 3)))
    with pytest.raises(ValueError, match="config.family must be 'hr' for HRNet, got 'lr'"):
        models.HRNet(ModelConfig(family="lr"), rngs=nnx.Rngs(0))
