"""espcn_jax.bicubic against a NumPy port of MATLAB's imresize written here, jax.image.resize, XLA
cost analysis and the Set5 LR images."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _set5 import set5_pairs
from hypothesis import given, settings
from hypothesis import strategies as st

from espcn_jax import bicubic, ops

ATOL = 1e-3  # float32 round-off on [0, 255] images


# --- NumPy port of MATLAB imresize (contributions() + resizeAlongDim), independent of the package.
def _cubic(x):
    ax = np.abs(x)
    return (1.5 * ax**3 - 2.5 * ax**2 + 1) * (ax <= 1) + (
        -0.5 * ax**3 + 2.5 * ax**2 - 4 * ax + 2
    ) * ((ax > 1) & (ax <= 2))


def _contributions(in_len, out_len, scale, border):
    """MATLAB's contributions(); indices 1-based. border: "edge" = imresize.m's clamp,
    "symmetric" = aux = [1:in_len, in_len:-1:1]."""
    kernel_width = 4.0
    if scale < 1:
        h = lambda x: scale * _cubic(scale * x)  # noqa: E731
        kernel_width /= scale
    else:
        h = _cubic
    x = np.arange(1, out_len + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1 - 1 / scale)
    left = np.floor(u - kernel_width / 2)
    p = int(np.ceil(kernel_width)) + 2
    indices = left[:, None] + np.arange(p)[None, :]
    weights = h(u[:, None] - indices)
    weights = weights / weights.sum(axis=1, keepdims=True)
    if border == "edge":
        indices = np.clip(indices, 1, in_len)
    else:
        aux = np.concatenate([np.arange(1, in_len + 1), np.arange(in_len, 0, -1)])
        indices = aux[np.mod(indices - 1, len(aux)).astype(int)]
    keep = np.any(weights != 0, axis=0)
    return weights[:, keep], indices[:, keep].astype(int)


def _resize_dim(img, dim, weights, indices):
    """out[k] = sum_p weights[k, p] * in[indices[k, p] - 1] along ``dim``, with a plain loop."""
    img = np.moveaxis(img, dim, 0)
    out = np.zeros((weights.shape[0],) + img.shape[1:])
    for k in range(weights.shape[0]):
        for p in range(weights.shape[1]):
            out[k] += weights[k, p] * img[indices[k, p] - 1]
    return np.moveaxis(out, 0, dim)


def _matlab_round_uint8(x):
    return np.clip(np.floor(x + 0.5), 0, 255)  # uint8(): half away from zero, saturated


def imresize_ref(img_HWC, scale, border="edge", uint8=False):
    """MATLAB imresize(img, scale, 'bicubic'), rows then columns; uint8=True stores each pass as uint8."""
    out = img_HWC.astype(np.float64)
    for dim in (0, 1):
        in_len = out.shape[dim]
        w, idx = _contributions(in_len, int(round(in_len * scale)), scale, border)
        out = _resize_dim(out, dim, w, idx)
        if uint8:
            out = _matlab_round_uint8(out)
    return out


def _rand(rng, shape):
    return rng.uniform(0, 255, size=shape).astype(np.float32)


# --- the tests


@pytest.mark.parametrize("border", bicubic.BORDERS)
@pytest.mark.parametrize("r", [2, 3, 4])
@pytest.mark.parametrize("hw,c", [((6, 7), 1), ((5, 8), 3)])
def test_downscale_matches_matlab_port(r, hw, c, border):
    rng = np.random.default_rng(r * 10 + c)
    x = _rand(rng, (2, hw[0] * r, hw[1] * r, c))
    got = np.asarray(bicubic.downscale(x, r, border=border))
    want = np.stack([imresize_ref(xi, 1 / r, border) for xi in x])
    assert got.shape == (2, hw[0], hw[1], c)
    np.testing.assert_allclose(got, want, rtol=0, atol=ATOL)


@pytest.mark.parametrize("border", bicubic.BORDERS)
@pytest.mark.parametrize("r", [2, 3, 4])
@pytest.mark.parametrize("hw,c", [((6, 7), 1), ((5, 4), 3), ((1, 2), 1)])
def test_upscale_matches_matlab_port(r, hw, c, border):
    rng = np.random.default_rng(r * 10 + c + hw[0])
    x = _rand(rng, (1, *hw, c))
    got = np.asarray(bicubic.upscale(x, r, border=border))
    want = imresize_ref(x[0], r, border)[None]
    assert got.shape == (1, hw[0] * r, hw[1] * r, c)
    np.testing.assert_allclose(got, want, rtol=0, atol=ATOL)


@settings(max_examples=6, deadline=None)
@given(
    r=st.integers(1, 4),
    h=st.integers(1, 5),
    w=st.integers(1, 5),
    c=st.sampled_from([1, 2, 3]),
    border=st.sampled_from(bicubic.BORDERS),
    seed=st.integers(0, 2**16),
)
def test_property_both_directions_match_port(r, h, w, c, border, seed):
    rng = np.random.default_rng(seed)
    lr = _rand(rng, (1, h, w, c))
    hr = _rand(rng, (1, h * r, w * r, c))
    np.testing.assert_allclose(
        bicubic.upscale(lr, r, border=border), imresize_ref(lr[0], r, border)[None], atol=ATOL
    )
    np.testing.assert_allclose(
        bicubic.downscale(hr, r, border=border),
        imresize_ref(hr[0], 1 / r, border)[None],
        atol=ATOL,
    )


@pytest.mark.parametrize("r", [2, 3])
def test_round_passes_is_matlab_on_uint8_exactly(r):
    rng = np.random.default_rng(r)
    x = rng.integers(0, 256, size=(1, 8 * r, 6 * r, 3)).astype(np.float32)
    got = np.asarray(bicubic.downscale(x, r, round_passes=True))
    np.testing.assert_array_equal(got[0], imresize_ref(x[0], 1 / r, "edge", uint8=True))


def test_scale_one_is_identity():
    x = _rand(np.random.default_rng(0), (1, 5, 4, 2))
    np.testing.assert_allclose(bicubic.upscale(x, 1), x, atol=1e-5)
    np.testing.assert_allclose(bicubic.downscale(x, 1), x, atol=1e-5)


@pytest.mark.parametrize("order", ops.ORDERS)
@pytest.mark.parametrize("r", [2, 3])
def test_upscale_is_shuffle_of_phases(r, order):
    x = _rand(np.random.default_rng(1), (2, 4, 5, 3))
    phases = bicubic.upscale_phases(x, r, order)
    assert phases.shape == (2, 4, 5, 3 * r * r)
    np.testing.assert_allclose(
        ops.pixel_shuffle(phases, r, order), bicubic.upscale(x, r), rtol=0, atol=1e-5
    )


@pytest.mark.parametrize("r", [2, 3])
def test_interior_matches_jax_image_resize(r):
    """jax.image.resize (Keys a=-0.5, half-pixel centres) differs only where it renormalises the
    kernel cut off by the border: the outer two LR pixels."""
    rng = np.random.default_rng(r)
    lr = _rand(rng, (1, 9, 8, 1))
    up = np.asarray(bicubic.upscale(lr, r))
    ref = np.asarray(jax.image.resize(lr, (1, 9 * r, 8 * r, 1), "bicubic"))
    m = 2 * r
    np.testing.assert_allclose(up[:, m:-m, m:-m], ref[:, m:-m, m:-m], atol=ATOL)
    hr = _rand(rng, (1, 9 * r, 8 * r, 1))
    down = np.asarray(bicubic.downscale(hr, r))
    ref = np.asarray(jax.image.resize(hr, (1, 9, 8, 1), "bicubic", antialias=True))
    np.testing.assert_allclose(down[:, 2:-2, 2:-2], ref[:, 2:-2, 2:-2], atol=ATOL)


def test_jit_matches_eager_and_keeps_dtype():
    x = _rand(np.random.default_rng(2), (1, 12, 9, 3))
    jitted = jax.jit(lambda a: bicubic.downscale(a, 3))(x)
    np.testing.assert_array_equal(jitted, bicubic.downscale(x, 3))
    assert jitted.dtype == jnp.float32
    up = jax.jit(lambda a: bicubic.upscale(a, 3))(jitted)
    np.testing.assert_allclose(up, bicubic.upscale(jitted, 3), atol=1e-5)
    assert bicubic.upscale(x.astype(np.uint8), 2).dtype == jnp.float32


@pytest.mark.parametrize("r", [2, 3, 4])
@pytest.mark.parametrize("h,w,c", [(7, 5, 1), (10, 12, 3)])
def test_flops_equal_xla_cost_analysis(r, h, w, c):
    lr = jnp.zeros((1, h, w, c))
    hr = jnp.zeros((1, h * r, w * r, c))
    up = jax.jit(lambda a: bicubic.upscale(a, r)).lower(lr).compile().cost_analysis()["flops"]
    down = jax.jit(lambda a: bicubic.downscale(a, r)).lower(hr).compile().cost_analysis()["flops"]
    assert up == bicubic.upscale_flops(h, w, c, r)
    assert down == bicubic.downscale_flops(h * r, w * r, c, r)


def test_taps_are_normalised_and_symmetric():
    for r in (2, 3, 4, 5):
        t = bicubic.downscale_taps(r)
        assert len(t) == 4 * r - r % 2
        np.testing.assert_allclose(t.sum(), 1.0)
        np.testing.assert_allclose(t, t[::-1])
        p = bicubic.upscale_taps(r)
        np.testing.assert_allclose(p.sum(axis=1), 1.0)
        np.testing.assert_allclose(p, p[::-1, ::-1])  # phase a mirrors phase r-1-a


def test_bad_input_raises():
    with pytest.raises(ValueError, match=r"divisible by r=3.*\(1, 10, 9, 1\)"):
        bicubic.downscale(jnp.zeros((1, 10, 9, 1)), 3)
    with pytest.raises(ValueError, match="border"):
        bicubic.upscale(jnp.zeros((1, 4, 4, 1)), 2, border="reflect")
    with pytest.raises(ValueError, match="r must be an integer"):
        bicubic.upscale(jnp.zeros((1, 4, 4, 1)), 0)
    with pytest.raises(ValueError, match="rank 4"):
        bicubic.upscale(jnp.zeros((4, 4, 1)), 2)
    with pytest.raises(ValueError, match="H=10"):
        bicubic.downscale_flops(10, 9, 1, 3)
    with pytest.raises(ValueError, match="c must be"):
        bicubic.upscale_flops(4, 4, 0, 2)


@pytest.mark.parametrize("r", [2, 3, 4])
def test_set5_lr_images_reproduced(r):
    """MATLAB on uint8 (edge border, each pass rounded) gives the supplied Set5 LR bit for bit."""
    down = jax.jit(lambda x: bicubic.downscale(x, r, round_passes=True))
    for name, hr, lr in set5_pairs(r):
        np.testing.assert_array_equal(down(hr[None].astype(np.float32))[0], lr, err_msg=name)
