"""espcn_jax.bicubic against a NumPy port of MATLAB's imresize written here, jax.image.resize, XLA
cost analysis, the Set5 LR images, and the unsharded result under a 4-device data-parallel mesh."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _set5 import set5_pairs
from hypothesis import given, settings
from hypothesis import strategies as st

from espcn_jax import bicubic, ops

ROOT = pathlib.Path(__file__).resolve().parents[1]
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
    q = np.floor(x)
    np.testing.assert_array_equal(
        jax.jit(lambda a: bicubic.downscale(a, 3, round_passes=True))(q),
        bicubic.downscale(q, 3, round_passes=True),
    )
    assert jitted.dtype == jnp.float32
    up = jax.jit(lambda a: bicubic.upscale(a, 3))(jitted)
    np.testing.assert_allclose(up, bicubic.upscale(jitted, 3), atol=1e-5)
    assert bicubic.upscale(x.astype(np.uint8), 2).dtype == jnp.float32


def _xla_flops(fn, x) -> float:
    cost = jax.jit(fn).lower(x).compile().cost_analysis()
    return cost.get("flops", 0.0)  # no key when nothing is computed (r = 1: copies)


@pytest.mark.parametrize("r", [1, 2, 3, 4])
@pytest.mark.parametrize("h,w,c", [(7, 5, 1), (10, 12, 3), (32, 32, 1)])
def test_flops_equal_xla_cost_analysis(r, h, w, c):
    """The analytic counts are XLA's, so XLA neither recomputes a pass inside the next one (which
    its fusion would do if a tap slice reached through the padding) nor finds sharing we miss."""
    lr = jnp.zeros((2, h, w, c))
    hr = jnp.zeros((2, h * r, w * r, c))
    want_up = 2 * bicubic.upscale_flops(h, w, c, r)
    assert _xla_flops(lambda a: bicubic.upscale(a, r), lr) == want_up
    for order in ops.ORDERS:
        assert _xla_flops(lambda a, o=order: bicubic.upscale_phases(a, r, o), lr) == want_up
    want_down = 2 * bicubic.downscale_flops(h * r, w * r, c, r)
    assert _xla_flops(lambda a: bicubic.downscale(a, r), hr) == want_down
    for border in bicubic.BORDERS:
        assert _xla_flops(lambda a, b=border: bicubic.downscale(a, r, border=b), hr) == want_down


def test_flops_count_four_taps_per_phase():
    """Hand count: each phase of x2 has 4 non-zero taps (4 multiplies, 3 adds) and the two phases
    share the centre product; x3's middle phase is a copy. Downscale: one multiply per non-zero tap,
    one add fewer."""
    h, w = 5, 6
    assert bicubic.upscale_flops(h, w, 1, 2) == (2 * 7 - 1) * ((h + 4) * w + h * 2 * w)
    assert bicubic.upscale_flops(h, w, 1, 3) == (2 * 7 - 1) * ((h + 4) * w + h * 3 * w)
    assert bicubic.upscale_flops(h, w, 2, 1) == 0
    assert bicubic.downscale_flops(4 * h, 4 * w, 1, 4) == 31 * (h * 4 * w + h * w)
    # x3: 11 taps at distances d = -5..5 from the centre, two of them zero (cubic(3/3) = 0).
    assert bicubic.downscale_flops(3 * h, 3 * w, 1, 3) == 17 * (h * 3 * w + h * w)


@pytest.mark.parametrize("r", [2, 3])
@pytest.mark.parametrize("border", bicubic.BORDERS)
def test_gradients_are_the_transposed_port(r, border):
    """Both resizers are linear maps A: their vector-Jacobian product must be A^T g, with A built
    column by column from the NumPy port on unit images."""
    h, w, c = 3, 4, 1
    rng = np.random.default_rng(r)

    def matrix(shape_in, scale):
        cols = []
        for i in range(int(np.prod(shape_in))):
            e = np.zeros(int(np.prod(shape_in)))
            e[i] = 1.0
            cols.append(imresize_ref(e.reshape(shape_in), scale, border).ravel())
        return np.stack(cols, axis=1)

    for fn, shape_in, scale in [
        (lambda a: bicubic.upscale(a, r, border=border), (h, w, c), r),
        (lambda a: bicubic.downscale(a, r, border=border), (h * r, w * r, c), 1 / r),
    ]:
        a = matrix(shape_in, scale)
        x = rng.uniform(0, 1, (1, *shape_in)).astype(np.float32)
        g = rng.uniform(-1, 1, a.shape[0]).astype(np.float32)
        _, vjp = jax.vjp(fn, jnp.asarray(x))
        (got,) = vjp(jnp.asarray(g.reshape(fn(x).shape)))
        np.testing.assert_allclose(np.ravel(got), a.T @ g, atol=1e-5)


SHARDED_SCRIPT = """
import os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
from espcn_jax import bicubic
assert jax.device_count() == 4
rng = np.random.default_rng(0)
lr = rng.uniform(0, 255, (8, 5, 7, 2)).astype(np.float32)
hr = np.floor(rng.uniform(0, 256, (8, 15, 21, 2))).astype(np.float32)
cases = [
    ("upscale", lambda v: bicubic.upscale(v, 3), lr),
    ("upscale_sym", lambda v: bicubic.upscale(v, 2, border="symmetric"), lr),
    ("phases_torch", lambda v: bicubic.upscale_phases(v, 3, "torch"), lr),
    ("downscale", lambda v: bicubic.downscale(v, 3, round_passes=True), hr),
    ("downscale_sym", lambda v: bicubic.downscale(v, 3, border="symmetric"), hr),
]
for axis_type in (AxisType.Explicit, AxisType.Auto):
    mesh = jax.make_mesh((4,), ("data",), axis_types=(axis_type,))
    with jax.set_mesh(mesh):
        for name, fn, x in cases:
            xs = jax.device_put(x, NamedSharding(mesh, P("data")))
            out = jax.jit(fn)(xs)
            assert out.sharding.spec[0] == "data", (axis_type, name, out.sharding)
            np.testing.assert_array_equal(np.asarray(out), np.asarray(fn(x)), err_msg=name)
            loss = lambda v: jnp.sum(fn(v) * jnp.arange(out.size, dtype=v.dtype).reshape(out.shape))
            grad = jax.jit(jax.grad(loss))(xs)
            np.testing.assert_allclose(np.asarray(grad), np.asarray(jax.grad(loss)(x)), rtol=1e-5, err_msg=name)
print("ok")
"""


def test_data_parallel_mesh_explicit_and_auto(tmp_path):
    """Batch sharded over 4 forced host devices, Explicit and Auto axes: same values and gradients
    as unsharded, the output still sharded over the batch (jnp.pad(mode="edge") is rejected under
    Explicit axes; the borders here are concatenated slices)."""
    script = tmp_path / "sharded.py"
    script.write_text(SHARDED_SCRIPT)
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "ok"


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


@pytest.mark.parametrize("scale", [0.9, 0.75, 0.6, 0.35, 1.5])
@pytest.mark.parametrize("c", [1, 3])
def test_host_imresize_any_scale_matches_port(scale, c):
    """The host resize of the training scale augmentation, at scales that are not 1/r, against the
    port's loops on uint8 (each pass stored as uint8). Sizes make H * s whole."""
    img = np.random.default_rng(c).integers(0, 256, (20, 40, c), dtype=np.uint8)
    got = bicubic.imresize_uint8(img, scale)
    want = imresize_ref(img, scale, uint8=True)
    assert got.dtype == np.uint8 and got.shape == want.shape
    np.testing.assert_array_equal(got, want)


def test_host_imresize_size_rule_and_errors():
    img = np.zeros((33, 10, 1), np.uint8)
    assert bicubic.imresize_uint8(img, 1 / 3).shape == (11, 4, 1)  # MATLAB: ceil(in * scale)
    assert bicubic.imresize_uint8(np.zeros((7, 5, 1), np.uint8), 0.5).shape == (4, 3, 1)
    with pytest.raises(ValueError, match="image must be uint8"):
        bicubic.imresize_uint8(img.astype(np.float32), 0.5)
    with pytest.raises(ValueError, match="scale must be a positive number, got 0"):
        bicubic.imresize_uint8(img, 0)


@pytest.mark.parametrize("r", [2, 3, 4])
def test_set5_lr_images_reproduced_by_the_host_resize(r):
    for name, hr, lr in set5_pairs(r):
        hr = hr[: hr.shape[0] // r * r, : hr.shape[1] // r * r]
        hr = hr if hr.ndim == 3 else hr[..., None]
        got = bicubic.imresize_uint8(hr, 1 / r)
        np.testing.assert_array_equal(got.reshape(lr.shape), lr, err_msg=name)
