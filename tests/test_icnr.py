"""ICNR: at initialisation the sub-pixel layer is an LR conv followed by nearest-neighbour upsampling.

References not written by the code under test: ``lax.conv_transpose`` (Flax's ``ConvTranspose``
semantics) for the transposed conv, a NumPy correlation loop for the LR conv, NumPy ``repeat`` for
nearest-neighbour upsampling. The sub-kernel is fixed by the test (a ``base_init`` returning known
values), so the reference does not depend on how the initialiser draws it.
"""

from __future__ import annotations

import itertools

import jax
import numpy as np
import pytest
from flax import nnx
from jax import lax

from espcn_jax import icnr
from espcn_jax.models import ModelConfig, build_model


def _correlate(x_HWC: np.ndarray, sub_HWIO: np.ndarray, dh: int, dw: int) -> np.ndarray:
    """z[q, p] = sum_{u, v} x[q + dh + u, p + dw + v] sub[u, v] (zero outside x), NumPy loops."""
    h, w, _ = x_HWC.shape
    th, tw, _, co = sub_HWIO.shape
    z = np.zeros((h, w, co))
    for q, p, u, v in itertools.product(range(h), range(w), range(th), range(tw)):
        i, j = q + dh + u, p + dw + v
        if 0 <= i < h and 0 <= j < w:
            z[q, p] += x_HWC[i, j] @ sub_HWIO[u, v]
    return z


def _nearest(z_HWC: np.ndarray, r: int) -> np.ndarray:
    return np.repeat(np.repeat(z_HWC, r, axis=0), r, axis=1)


def _is_nearest_of_sub_conv(y_HWC, x_HWC, sub_HWIO, r, kernel_size) -> bool:
    """Whether some LR alignment ``(dh, dw)`` makes ``y`` the nearest-neighbour upsampling of the
    correlation of ``x`` with ``sub``."""
    shifts = range(-kernel_size - 1, kernel_size + 2)
    return any(
        np.allclose(y_HWC, _nearest(_correlate(x_HWC, sub_HWIO, dh, dw), r), atol=1e-5)
        for dh, dw in itertools.product(shifts, shifts)
    )


@pytest.mark.parametrize("order", ["tf", "torch"])
@pytest.mark.parametrize(
    "r, k", [(3, 9), (3, 6), (2, 4), (4, 8), (2, 5), (3, 4), (2, 3), (2, 6), (3, 3), (4, 5)]
)
def test_transposed_icnr_is_nearest_neighbour_of_the_sub_kernel_conv(r, k, order):
    cin, cout = 2, 3
    drawn = {}

    def base_init(key, shape, dtype=np.float32):  # a known sub-kernel, recorded for the reference
        drawn["sub"] = np.random.default_rng(r * 10 + k).standard_normal(shape).astype(dtype)
        return drawn["sub"]

    kernel_z = icnr.icnr_transposed((k, k), r, "SAME", order, base_init)(
        jax.random.key(0), (k, k, cin, cout)
    )
    sub = drawn["sub"]
    assert sub.shape[2:] == (cin, cout) and min(sub.shape[:2]) >= 1
    x = np.random.default_rng(1).standard_normal((1, 6, 7, cin)).astype(np.float32)
    y = lax.conv_transpose(x, kernel_z, (r, r), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    assert y.shape == (1, 6 * r, 7 * r, cout)
    assert _is_nearest_of_sub_conv(np.asarray(y[0], np.float64), x[0], sub, r, k)
    # Every weight of the kernel comes from the sub-kernel; each sub-kernel weight is used r*r times.
    nonzero = np.asarray(kernel_z)[np.asarray(kernel_z) != 0]
    assert nonzero.size == r * r * sub.size and set(nonzero.tolist()) == set(sub.ravel().tolist())


def test_plain_init_is_not_nearest_neighbour():
    """The reference can fail: a random (non-ICNR) transposed kernel is no NN upsampling."""
    x = np.random.default_rng(1).standard_normal((1, 5, 5, 2)).astype(np.float32)
    kernel_z = np.random.default_rng(2).standard_normal((6, 6, 2, 1)).astype(np.float32)
    y = lax.conv_transpose(x, kernel_z, (3, 3), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    sub = np.ones((1, 1, 2, 1), np.float32)
    assert not _is_nearest_of_sub_conv(np.asarray(y[0], np.float64), x[0], sub, 3, 6)


@pytest.mark.parametrize("r, k", [(3, 6), (2, 4), (4, 8), (2, 5), (3, 9)])
def test_deconv_net_with_icnr_starts_as_nearest_neighbour(r, k):
    """The reported cases (r=3 K=6, r=2 K=4, r=4 K=8, r=2 K=5 were 0.55-0.62 off before)."""
    net = build_model("deconv", scale=r, kernel_sizes=(3, k), depth=2, widths=4, icnr=True,
                      rngs=nnx.Rngs(0))  # fmt: skip
    x = jax.random.normal(jax.random.key(1), (1, 5, 6, 1))
    y = np.asarray(net(x))[0]
    phase0 = _nearest(y[::r, ::r], r)
    np.testing.assert_allclose(y, phase0, atol=1e-6)
    assert np.std(y) > 1e-3  # not the trivial all-constant output


@pytest.mark.parametrize("r, k", [(3, 2), (2, 1), (4, 3)])
def test_no_icnr_kernel_raises_naming_family_scale_and_kernel(r, k):
    with pytest.raises(ValueError, match=rf"no ICNR kernel exists for a {k}x{k} .* stride {r}"):
        icnr.icnr_transposed((k, k), r)
    msg = rf"icnr=True has no ICNR kernel for family 'deconv' at scale {r} with kernel size {k}:"
    with pytest.raises(ValueError, match=msg) as info:
        ModelConfig(family="deconv", scale=r, depth=1, widths=(), kernel_sizes=k, icnr=True)
    assert "\n" not in str(info.value)


def test_shared_taps_against_a_phase_count():
    """An LR tap t is shared when every phase a has its kernel index r*t + c - a inside [0, K):
    counted here by brute force over lax.conv_transpose's response to single weights."""
    for r, k in itertools.product([1, 2, 3, 4], range(1, 13)):
        taps = icnr.shared_taps(k, r)
        # Response of each output phase to each LR input offset, for a 1-D SAME conv_transpose.
        n = 4 * k + 1
        x = np.zeros((1, n, 1, 1), np.float32)
        x[0, 2 * k] = 1.0
        used = np.zeros((r, 2 * k + 3), bool)  # phase, LR offset (output row // r - 2k + k + 1)
        for m in range(k):
            kernel = np.zeros((k, 1, 1, 1), np.float32)
            kernel[m] = 1.0
            y = np.asarray(lax.conv_transpose(x, kernel, (r, 1), "SAME",
                                              dimension_numbers=("NHWC", "HWIO", "NHWC")))  # fmt: skip
            for row in np.flatnonzero(y[0, :, 0, 0]):
                used[row % r, row // r - 2 * k + k + 1] = True
        shared = int(np.sum(np.all(used, axis=0)))
        assert len(taps) == shared, (r, k)
