"""The CPU channel split computes what ``lax.conv_general_dilated`` computes, and routing a net
through it (``xla_cpu.use_channel_split``) changes no output or gradient.

References: ``lax.conv_general_dilated`` itself, ``nnx.Conv`` without the hook, and the family's
net built without :func:`models.model_from_config`. Cases sweep output channels and input channels
across the split's thresholds, so that both paths are compared whatever the thresholds are.
"""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax

from espcn_jax import xla_cpu
from espcn_jax.models import FAMILIES, ModelConfig, model_from_config

DN = ("NHWC", "HWIO", "NHWC")
CHANNEL_CASES = list(itertools.product([1, 8, 9, 17], [4, 17]))  # (out, in) channels


def _random(shape, seed):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def test_the_cases_reach_the_split_on_cpu():
    """Without this the equality tests below could pass on the plain path alone."""
    taken = [xla_cpu.splits_last_channel(o, i) for o, i in CHANNEL_CASES]
    assert any(taken) == (jax.default_backend() == "cpu") and not all(taken)


@pytest.mark.parametrize("channels, in_channels", CHANNEL_CASES)
@pytest.mark.parametrize("padding", [((1, 1), (1, 1)), ((0, 2), (-1, 3)), ((2, -1), (0, 0))])
def test_lr_correlation_equals_lax_conv(channels, in_channels, padding):
    x = _random((2, 6, 7, in_channels), seed=channels)
    kernel = _random((3, 2, in_channels, channels), seed=1)

    def ref(x, kernel):
        return lax.conv_general_dilated(x, kernel, (1, 1), padding, dimension_numbers=DN)

    np.testing.assert_allclose(
        xla_cpu.lr_correlation(x, kernel, padding), ref(x, kernel), rtol=1e-5, atol=1e-5
    )
    got = jax.grad(lambda x, k: jnp.sum(jnp.sin(xla_cpu.lr_correlation(x, k, padding))), (0, 1))(
        x, kernel
    )
    want = jax.grad(lambda x, k: jnp.sum(jnp.sin(ref(x, k))), (0, 1))(x, kernel)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("out_features", [8, 9, 17])
@pytest.mark.parametrize("padding", ["SAME", "VALID", ((1, 0), (2, 1)), 1])
def test_nnx_conv_through_the_hook(out_features, padding):
    """nnx.Conv with ``conv_general_dilated=xla_cpu.conv_general_dilated`` is nnx.Conv: same
    parameters, outputs and gradients, jitted."""
    make = functools.partial(nnx.Conv, 17, out_features, (3, 3), padding=padding)
    plain = make(rngs=nnx.Rngs(0))
    routed = make(conv_general_dilated=xla_cpu.conv_general_dilated, rngs=nnx.Rngs(0))
    x = _random((2, 6, 7, 17), seed=out_features)

    def loss(conv, x):
        return jnp.sum(jnp.sin(conv(x)))

    np.testing.assert_allclose(routed(x), plain(x), rtol=1e-5, atol=1e-5)
    (g_routed, gx_routed), (g_plain, gx_plain) = (
        nnx.jit(nnx.grad(loss, argnums=(0, 1)))(conv, x) for conv in (routed, plain)
    )
    np.testing.assert_allclose(gx_routed, gx_plain, rtol=1e-4, atol=1e-4)
    for a, b in zip(jax.tree.leaves(g_routed), jax.tree.leaves(g_plain), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"window_strides": (2, 1)},
        {"rhs_dilation": (2, 2)},
        {"lhs_dilation": (1, 2), "padding": ((1, 1), (1, 1))},
        {"feature_group_count": 3},
        {"dimension_numbers": ("NCHW", "OIHW", "NCHW")},
    ],
)
def test_the_hook_defers_to_lax_otherwise(kwargs):
    """Strides, dilations, groups or another layout: exactly lax's op (bit for bit)."""
    args = {"window_strides": (1, 1), "padding": "SAME", **kwargs}
    x = _random((1, 6, 7, 18), seed=3)
    groups = args.get("feature_group_count", 1)
    kernel = _random((3, 3, 18 // groups, 9), seed=4)
    if "dimension_numbers" in args:
        x, kernel = x.transpose(0, 3, 1, 2), kernel.transpose(3, 2, 0, 1)
    else:
        args["dimension_numbers"] = DN
    np.testing.assert_array_equal(
        jax.jit(lambda x, k: xla_cpu.conv_general_dilated(x, k, **args))(x, kernel),
        jax.jit(lambda x, k: lax.conv_general_dilated(x, k, **args))(x, kernel),
    )


@pytest.mark.parametrize(
    "config",
    [
        ModelConfig(family="lr", scale=3, widths=(8, 17)),  # 9 LR channels from 17: split on CPU
        ModelConfig(family="deconv", scale=3, widths=(8, 20), kernel_sizes=(3, 3, 6)),
        ModelConfig(family="lr", scale=2, channels=3, widths=(4, 24), residual=True),
    ],
)
def test_a_routed_net_computes_the_plain_net(config):
    """model_from_config (upsampling layer on the split, on CPU) equals the family's net with
    plain lax convolutions and the same seed: outputs and parameter gradients."""
    routed = model_from_config(config, rngs=nnx.Rngs(3))
    plain = FAMILIES[config.family](config, rngs=nnx.Rngs(3))
    if config.family == "deconv":  # FastConvTranspose's default is the split: undo it here
        plain.deconv.conv_general_dilated = lax.conv_general_dilated
    x = jax.random.normal(jax.random.key(0), (2, 7, 6, config.channels))

    def grads(net):
        graphdef, state = nnx.split(net)
        f = lambda s: jnp.sum(jnp.sin(nnx.merge(graphdef, s)(x)))  # noqa: E731
        return jax.jit(jax.value_and_grad(f))(state)

    (v_routed, g_routed), (v_plain, g_plain) = grads(routed), grads(plain)
    np.testing.assert_allclose(v_routed, v_plain, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(g_routed), jax.tree.leaves(g_plain), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
