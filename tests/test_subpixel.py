"""The three faces of the upsampling layer agree, against a NumPy scatter loop and TensorFlow."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax import lax

from espcn_jax import subpixel

RTOL, ATOL = 1e-5, 1e-5


def scatter_reference(x, kernel_t, strides, pads):
    """Transposed conv by its definition: x[i, j] adds x[i, j] * kernel_t to output (s*i, s*j) + (m, n).

    The full scatter has ``(n - 1)*s + K`` samples per axis; Flax's pads ``(lo, hi)`` of the
    zero-inserted input select output ``o`` = full sample ``o + K - 1 - lo`` (zero outside).
    """
    x = np.asarray(x, np.float64)
    kernel_t = np.asarray(kernel_t, np.float64)
    n, h, w, _ = x.shape
    kh, kw, _, co = kernel_t.shape
    sh, sw = strides
    full = np.zeros((n, (h - 1) * sh + kh, (w - 1) * sw + kw, co))
    for i in range(h):
        for j in range(w):
            full[:, i * sh : i * sh + kh, j * sw : j * sw + kw] += np.einsum(
                "nc,hwco->nhwo", x[:, i, j], kernel_t
            )
    (lo_h, hi_h), (lo_w, hi_w) = pads
    out_h = (h - 1) * sh + 1 + lo_h + hi_h - kh + 1
    out_w = (w - 1) * sw + 1 + lo_w + hi_w - kw + 1
    out = np.zeros((n, out_h, out_w, co))
    for o in range(out_h):
        p = o + kh - 1 - lo_h
        if not 0 <= p < full.shape[1]:
            continue
        for q in range(out_w):
            pw = q + kw - 1 - lo_w
            if 0 <= pw < full.shape[2]:
                out[:, o, q] = full[:, p, pw]
    return out


def _random(shape, seed):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _faces(x, kernel_t, strides, padding, order):
    kernel_z = subpixel.transpose_to_zero_insertion(kernel_t)
    return {
        "conv_transpose": subpixel.conv_transpose(x, kernel_t, strides, padding),
        "zero_insertion": subpixel.zero_insertion_conv(x, kernel_z, strides, padding),
        "lr_shuffle": subpixel.fast_conv_transpose(x, kernel_z, strides, padding, order),
        "lax": lax.conv_transpose(
            x, kernel_z, strides, subpixel.resolve_padding(padding, kernel_z.shape[:2], strides),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        ),
    }  # fmt: skip


PADDINGS = ["SAME", "VALID", ((1, 2), (0, 3)), 2, ((-1, 1), (3, -1))]


@pytest.mark.parametrize("s", [1, 2, 3, 4])
@pytest.mark.parametrize("k", range(1, 10))
def test_three_faces_agree_with_scatter_loop(s, k):
    x = _random((2, 4, 5, 3), seed=s * 10 + k)
    kernel_t = _random((k, k, 3, 2), seed=k)
    order = "tf" if k % 2 else "torch"  # both orders are covered across k; the property test mixes
    for padding in PADDINGS:
        pads = subpixel.resolve_padding(padding, (k, k), (s, s))
        out_sizes = [
            (n - 1) * s + 1 + lo + hi - k + 1 for n, (lo, hi) in zip((4, 5), pads, strict=True)
        ]
        if min(out_sizes) < 1:
            continue
        want = scatter_reference(x, kernel_t, (s, s), pads)
        for name, got in _faces(x, kernel_t, (s, s), padding, order).items():
            np.testing.assert_allclose(
                got, want, rtol=RTOL, atol=ATOL, err_msg=f"{name} {padding=} {order=}"
            )


@settings(max_examples=25, deadline=None)
@given(
    sh=st.integers(1, 4),
    sw=st.integers(1, 4),
    kh=st.integers(1, 9),
    kw=st.integers(1, 9),
    h=st.integers(1, 6),
    w=st.integers(1, 6),
    ci=st.integers(1, 4),
    co=st.integers(1, 4),
    pad=st.one_of(
        st.sampled_from(["SAME", "VALID"]),
        st.tuples(
            st.tuples(st.integers(-2, 9), st.integers(-2, 9)),
            st.tuples(st.integers(-2, 9), st.integers(-2, 9)),
        ),
    ),
    order=st.sampled_from(["tf", "torch"]),
)
def test_three_faces_property(sh, sw, kh, kw, h, w, ci, co, pad, order):
    pads = subpixel.resolve_padding(pad, (kh, kw), (sh, sw))
    sizes = [(n - 1) * s + 1 + lo + hi - k + 1 for n, s, k, (lo, hi) in
             zip((h, w), (sh, sw), (kh, kw), pads, strict=True)]  # fmt: skip
    if min(sizes) < 1:
        with pytest.raises(ValueError, match="empty output"):
            subpixel.fast_conv_transpose(
                jnp.ones((1, h, w, ci)), jnp.ones((kh, kw, ci, co)), (sh, sw), pad, order
            )
        return
    x = _random((1, h, w, ci), seed=h * 7 + w)
    kernel_t = _random((kh, kw, ci, co), seed=kh * 11 + kw)
    want = scatter_reference(x, kernel_t, (sh, sw), pads)
    for name, got in _faces(x, kernel_t, (sh, sw), pad, order).items():
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL, err_msg=name)


def _tf():
    tf = pytest.importorskip("tensorflow")
    tf.config.set_visible_devices([], "GPU")
    return tf


@pytest.mark.parametrize("s,k", [(2, 4), (3, 9), (3, 6), (4, 8), (2, 3), (3, 2)])
def test_conv_transpose_matches_tensorflow(s, k):
    tf = _tf()
    n, h, w, ci, co = 2, 5, 6, 3, 4
    x = _random((n, h, w, ci), seed=s)
    kernel_t = _random((k, k, ci, co), seed=k)
    tf_filters = np.swapaxes(kernel_t, 2, 3)  # TF wants (h, w, out, in)
    # TF "VALID": the full scatter, i.e. Flax pads (K - 1, K - 1).
    full = ((h - 1) * s + k, (w - 1) * s + k)
    want = tf.nn.conv2d_transpose(x, tf_filters, (n, *full, co), s, "VALID").numpy()
    got = subpixel.conv_transpose(x, kernel_t, s, ((k - 1, k - 1), (k - 1, k - 1)))
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    # TF "SAME" (output n*s): the gradient of a SAME conv, before-pad floor(max(K - s, 0) / 2).
    before = max(k - s, 0) // 2
    pads = []
    for size in (h, w):
        lo = k - 1 - before
        pads.append((lo, size * s - (size - 1) * s - 1 - lo + k - 1))
    want = tf.nn.conv2d_transpose(x, tf_filters, (n, h * s, w * s, co), s, "SAME").numpy()
    got = subpixel.fast_conv_transpose(x, subpixel.transpose_to_zero_insertion(kernel_t), s, pads)
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("order", ["tf", "torch"])
@pytest.mark.parametrize("padding", PADDINGS)
def test_converters_are_exact_inverses(order, padding):
    for s, k in itertools.product([1, 2, 3, 4], [1, 2, 5, 6, 9]):
        kernel_z = _random((k, k, 3, 2), seed=s + k)
        lr = subpixel.zero_insertion_to_lr(kernel_z, s, padding, order)
        ph, pw = subpixel.plan((k, k), s, padding)
        assert lr.shape == (ph.taps, pw.taps, 3, 2 * s * s)
        # A permutation plus structural zeros: every weight appears exactly once.
        assert np.count_nonzero(np.asarray(lr)) == kernel_z.size
        np.testing.assert_array_equal(np.sort(np.asarray(lr)[np.asarray(lr) != 0]),
                                      np.sort(kernel_z.ravel()))  # fmt: skip
        back = subpixel.lr_to_zero_insertion(lr, (k, k), s, padding, order)
        np.testing.assert_array_equal(back, kernel_z)
        kernel_t = subpixel.zero_insertion_to_transpose(kernel_z)
        np.testing.assert_array_equal(subpixel.transpose_to_lr(kernel_t, s, padding, order), lr)
        np.testing.assert_array_equal(
            subpixel.lr_to_transpose(lr, (k, k), s, padding, order), kernel_t
        )
        # And the other way round, on LR kernels whose structural zeros are zero.
        mask = np.asarray(subpixel.zero_insertion_to_lr(np.ones_like(kernel_z), s, padding, order))
        lr_any = _random(lr.shape, seed=k) * mask
        z = subpixel.lr_to_zero_insertion(lr_any, (k, k), s, padding, order)
        np.testing.assert_array_equal(subpixel.zero_insertion_to_lr(z, s, padding, order), lr_any)


def test_lr_kernel_size_is_ceil_k_over_s_for_valid_and_odd_same():
    """The note's claim: kernel (k*r)^2 at stride r is a k^2 LR conv (no wasted taps)."""
    for r, k in itertools.product([2, 3, 4], [1, 3, 5]):
        for padding in ["VALID", "SAME"]:
            ph, pw = subpixel.plan((k * r, k * r), r, padding)
            assert (ph.taps, pw.taps) == (k, k), (r, k, padding)
    # Even k with SAME puts phase 0 off the LR grid: one extra (structurally zero) tap.
    assert subpixel.plan((6, 6), 3, "SAME")[0].taps == 3


def test_jit_and_grad_match_lax():
    x = _random((2, 5, 4, 3), seed=0)
    kernel_z = _random((6, 6, 3, 2), seed=1)

    def loss(fn, x, kz):
        return jnp.sum(jnp.sin(fn(x, kz)))

    def ours(x, kz):
        return subpixel.fast_conv_transpose(x, kz, 3, "SAME")

    def ref(x, kz):
        return lax.conv_transpose(x, kz, (3, 3), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))

    got = jax.jit(jax.grad(lambda x, kz: loss(ours, x, kz), argnums=(0, 1)))(x, kernel_z)
    want = jax.grad(lambda x, kz: loss(ref, x, kz), argnums=(0, 1))(x, kernel_z)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(jax.jit(ours)(x, kernel_z), ref(x, kernel_z), rtol=RTOL, atol=ATOL)


def test_bfloat16_runs_in_bfloat16_to_its_precision():
    x, kernel_t = _random((1, 4, 5, 2), seed=3), _random((4, 4, 2, 3), seed=4)
    kernel_z = subpixel.transpose_to_zero_insertion(kernel_t)
    y = subpixel.fast_conv_transpose(
        jnp.asarray(x, jnp.bfloat16), jnp.asarray(kernel_z, jnp.bfloat16), 2
    )
    assert y.dtype == jnp.bfloat16
    want = scatter_reference(x, kernel_t, (2, 2), subpixel.resolve_padding("SAME", (4, 4), (2, 2)))
    np.testing.assert_allclose(np.asarray(y, np.float32), want, rtol=0.03, atol=0.1)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: subpixel.plan((3, 3), 0), r"strides must be 2 integers >= 1, got 0"),
        (lambda: subpixel.plan((3, 3), 1.5), r"strides .* got 1\.5"),
        (lambda: subpixel.plan((0, 3), 2), r"kernel_size .* got \(0, 3\)"),
        (lambda: subpixel.plan((3, 3), 2, "FULL"), r"padding .* got 'FULL'"),
        (lambda: subpixel.plan((3, 3), 2, ((1, 2),)), r"padding .* got \(\(1, 2\),\)"),
        (lambda: subpixel.zero_insertion_to_lr(jnp.ones((3, 3, 2)), 2), r"kernel_z_HWIO .* rank 4"),
        (lambda: subpixel.zero_insertion_to_lr(jnp.ones((3, 3, 2, 1)), 2, order="nchw"),
         r"order must be one of .* got 'nchw'"),
        (lambda: subpixel.lr_to_zero_insertion(jnp.ones((2, 2, 2, 4)), (4, 4), 2),
         r"kernel_lr_HWIO shape \(2, 2, 2, 4\) does not fit"),
        (lambda: subpixel.fast_conv_transpose(jnp.ones((4, 4, 2)), jnp.ones((3, 3, 2, 1)), 2),
         r"x must be an NHWC array of rank 4, got shape \(4, 4, 2\)"),
        (lambda: subpixel.fast_conv_transpose(jnp.ones((1, 4, 4, 3)), jnp.ones((3, 3, 2, 1)), 2),
         r"x has 3 channels but the kernel expects 2"),
    ],
)  # fmt: skip
def test_bad_input_names_argument_and_value(call, match):
    with pytest.raises(ValueError, match=match):
        call()
