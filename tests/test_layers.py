"""FastConvTranspose is a drop-in for flax.nnx.ConvTranspose: same parameters, outputs, gradients."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from espcn_jax.layers import FastConvTranspose


def _pair(seed: int, **kwargs):
    ref = nnx.ConvTranspose(rngs=nnx.Rngs(seed), **kwargs)
    fast = FastConvTranspose(rngs=nnx.Rngs(seed), **kwargs)
    if ref.bias is not None:  # a non-zero bias, so that it is tested too
        ref.bias[...] = jnp.linspace(-1.0, 1.0, ref.bias.shape[0])
        fast.bias[...] = ref.bias[...]
    return ref, fast


def _loss(model, x):
    return jnp.sum(jnp.sin(model(x)))


def _grads(model, x):
    def f(graphdef, state, x):
        return _loss(nnx.merge(graphdef, state), x)

    graphdef, state = nnx.split(model)
    return jax.jit(jax.grad(f, argnums=(1, 2)), static_argnums=0)(graphdef, state, x)


# Every stride, padding kind and both kernel orientations; the maths over the full grid of strides,
# kernel sizes and paddings is proven in test_subpixel.py, this checks the layer's plumbing.
CASES = [
    (1, 3, "SAME", False),
    (2, 4, "SAME", False),
    (2, 1, "SAME", True),
    (2, 3, "VALID", True),
    (3, 9, "SAME", False),
    (3, 6, "SAME", True),
    (3, 4, 1, False),
    (3, 3, "VALID", False),
    (4, 9, "SAME", False),
    (4, 8, "VALID", False),
    (4, 6, ((2, 0), (1, 3)), True),
    (1, 4, "CIRCULAR", False),
    (2, 6, "CIRCULAR", True),
    (3, 9, "CIRCULAR", False),
]


@pytest.mark.parametrize("s,k,padding,transpose_kernel", CASES)
def test_same_params_outputs_and_gradients(s, k, padding, transpose_kernel):
    ref, fast = _pair(
        s + k, in_features=3, out_features=2, kernel_size=(k, k), strides=s, padding=padding,
        transpose_kernel=transpose_kernel,
    )  # fmt: skip
    # Same parameter names, shapes and initial values: weights copy across unchanged.
    ref_state, fast_state = nnx.state(ref, nnx.Param), nnx.state(fast, nnx.Param)
    assert jax.tree.structure(ref_state) == jax.tree.structure(fast_state)
    for a, b in zip(jax.tree.leaves(ref_state), jax.tree.leaves(fast_state), strict=True):
        np.testing.assert_array_equal(a, b)
    x = jax.random.normal(jax.random.key(k), (2, 5, 6, 3))
    want = ref(x)
    np.testing.assert_allclose(fast(x), want, rtol=1e-5, atol=1e-5)
    # Also under jit, through the split/merge path a train step uses.
    graphdef, state = nnx.split(fast)
    jitted = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x))
    np.testing.assert_allclose(jitted(state, x), want, rtol=1e-5, atol=1e-5)
    (g_ref_state, g_ref_x), (g_state, g_x) = _grads(ref, x), _grads(fast, x)
    np.testing.assert_allclose(g_x, g_ref_x, rtol=1e-4, atol=1e-4)
    for a, b in zip(jax.tree.leaves(g_state), jax.tree.leaves(g_ref_state), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_anisotropic_strides_mask_no_bias_and_batch_dims():
    mask = (jnp.arange(5 * 4 * 2 * 3).reshape(5, 4, 2, 3) % 3 != 0).astype(jnp.float32)
    kwargs = dict(in_features=2, out_features=3, kernel_size=(5, 4), strides=(2, 3), mask=mask,
                  use_bias=False)  # fmt: skip
    ref, fast = _pair(0, **kwargs)
    assert fast.bias is None
    for shape in [(4, 5, 2), (3, 4, 5, 2), (2, 1, 3, 4, 2)]:  # unbatched, one and two batch dims
        x = jax.random.normal(jax.random.key(1), shape)
        got = fast(x)
        assert got.shape == ref(x).shape
        np.testing.assert_allclose(got, ref(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("order", ["tf", "torch"])
def test_internal_order_changes_nothing(order):
    ref, _ = _pair(0, in_features=4, out_features=2, kernel_size=(9, 9), strides=3)
    fast = FastConvTranspose(4, 2, (9, 9), 3, order=order, rngs=nnx.Rngs(0))
    fast.bias[...] = ref.bias[...]
    x = jax.random.normal(jax.random.key(2), (1, 7, 5, 4))
    np.testing.assert_allclose(fast(x), ref(x), rtol=1e-5, atol=1e-5)


def test_dtypes_follow_flax():
    ref, fast = _pair(0, in_features=2, out_features=1, kernel_size=(4, 4), strides=2,
                      dtype=jnp.bfloat16)  # fmt: skip
    x = jax.random.normal(jax.random.key(0), (1, 4, 4, 2))
    got, want = fast(x), ref(x)
    assert got.dtype == want.dtype == jnp.bfloat16
    assert fast.kernel[...].dtype == jnp.float32
    np.testing.assert_allclose(
        got.astype(jnp.float32), want.astype(jnp.float32), rtol=2e-2, atol=5e-2
    )


def test_copies_weights_from_a_trained_conv_transpose():
    ref = nnx.ConvTranspose(3, 1, (6, 6), (2, 2), rngs=nnx.Rngs(3))
    fast = FastConvTranspose(3, 1, (6, 6), (2, 2), rngs=nnx.Rngs(99))
    nnx.update(fast, nnx.state(ref, nnx.Param))
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
    np.testing.assert_allclose(fast(x), ref(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(kernel_size=(3, 3), kernel_dilation=2), r"kernel_dilation=2"),
        (dict(kernel_size=(3, 3), kernel_dilation=(1, 2)), r"kernel_dilation=\(1, 2\)"),
        (dict(kernel_size=(3,)), r"2 spatial dimensions, got kernel_size=\(3,\)"),
        (dict(kernel_size=(3, 3, 3)), r"2 spatial dimensions, got kernel_size=\(3, 3, 3\)"),
        (dict(kernel_size=(3, 3), padding="CAUSAL"), r"padding .* got 'CAUSAL'"),
        (dict(kernel_size=(3, 3), strides=0), r"strides .* got 0"),
        (dict(kernel_size=(3, 3), mask=jnp.ones((2, 2, 2, 1))), r"mask shape \(2, 2, 2, 1\)"),
        (dict(kernel_size=(3, 3), order="nchw"), r"order must be one of .* got 'nchw'"),
    ],
)
def test_unsupported_configurations_fail_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FastConvTranspose(2, 1, rngs=nnx.Rngs(0), **kwargs)


@pytest.mark.parametrize("padding", ["SAME", "VALID", "CIRCULAR"])
def test_espcn_y_x3_layer(padding):
    """32 -> 1 channels at r = 3: 9 LR channels, which take the CPU channel-remainder path."""
    ref, fast = _pair(
        7, in_features=32, out_features=1, kernel_size=(9, 9), strides=3, padding=padding
    )
    x = jax.random.normal(jax.random.key(3), (2, 6, 5, 32))
    np.testing.assert_allclose(fast(x), ref(x), rtol=1e-5, atol=1e-5)
    (g_ref_state, g_ref_x), (g_state, g_x) = _grads(ref, x), _grads(fast, x)
    np.testing.assert_allclose(g_x, g_ref_x, rtol=1e-4, atol=1e-4)
    for a, b in zip(jax.tree.leaves(g_state), jax.tree.leaves(g_ref_state), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
