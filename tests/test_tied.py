"""An HR convolution is a tied LR convolution (docs/tied.md); ICNR and the checkerboard measure."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from espcn_jax import icnr, tied

DN = ("NHWC", "HWIO", "NHWC")


def hr_conv_reference(z_hr, kernel, pads):
    """Stride-1 correlation by its definition, zero padding, float64."""
    z_hr = np.asarray(z_hr, np.float64)
    (lo_h, hi_h), (lo_w, hi_w) = pads
    zp = np.pad(z_hr, ((0, 0), (lo_h, hi_h), (lo_w, hi_w), (0, 0)))
    kh, kw = kernel.shape[:2]
    n, h, w, _ = z_hr.shape
    out = np.zeros((n, h, w, kernel.shape[3]))
    for i, j in itertools.product(range(kh), range(kw)):
        out += np.einsum("nhwc,co->nhwo", zp[:, i : i + h, j : j + w], kernel[i, j])
    return out


def shuffle_reference(z, r, order):
    """Pixel shuffle by the index formulas of docs/equivalence.md (both orders)."""
    n, h, w, crr = z.shape
    c = crr // (r * r)
    out = np.zeros((n, h * r, w * r, c), z.dtype)
    for a, b, ch in itertools.product(range(r), range(r), range(c)):
        src = (a * r + b) * c + ch if order == "tf" else ch * r * r + a * r + b
        out[:, a::r, b::r, ch] = z[..., src]
    return out


def _random(shape, seed):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("order", ["tf", "torch"])
@pytest.mark.parametrize("r", [1, 2, 3, 4])
def test_tied_lr_conv_reproduces_hr_conv(r, order):
    for k in [1, 2, 3, 4, 5, 6, 9]:
        kernel = _random((k, k, 2, 3), seed=k)
        z_lr = _random((2, 4, 5, 2 * r * r), seed=r + k)
        pads = tuple(((k - 1) // 2, k - 1 - (k - 1) // 2) for _ in range(2))
        want = hr_conv_reference(shuffle_reference(z_lr, r, order), kernel, pads)
        kernel_lr, lr_pads = tied.hr_conv_to_tied_lr(kernel, r, "SAME", order)
        got_lr = lax.conv_general_dilated(z_lr, kernel_lr, (1, 1), lr_pads, dimension_numbers=DN)
        got = shuffle_reference(np.asarray(got_lr), r, order)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=f"{k=}")
        # The LR kernel is exactly the size the module's formula says.
        assert kernel_lr.shape == (
            *tied.tied_cost((k, k), 2, 3, r).lr_kernel_size,
            2 * r * r,
            3 * r * r,
        )


def test_tied_network_with_bias_and_activation_and_explicit_pads():
    """Two HR layers (bias, tanh between them) equal their tied LR image end to end."""
    r, order = 3, "torch"
    k1, k2 = _random((5, 5, 1, 4), 0), _random((4, 3, 4, 2), 1)
    b1, b2 = _random((4,), 2), _random((2,), 3)
    pads2 = ((2, 1), (0, 2))  # size-preserving, not centred
    z_lr = _random((1, 6, 7, r * r), 4)
    hr = shuffle_reference(z_lr, r, order)
    want = (
        hr_conv_reference(np.tanh(hr_conv_reference(hr, k1, ((2, 2), (2, 2))) + b1), k2, pads2) + b2
    )
    g1, p1 = tied.hr_conv_to_tied_lr(k1, r, "SAME", order)
    g2, p2 = tied.hr_conv_to_tied_lr(k2, r, pads2, order)
    h = jnp.tanh(
        lax.conv_general_dilated(z_lr, g1, (1, 1), p1, dimension_numbers=DN)
        + tied.tie_bias(b1, r, order)
    )
    y = lax.conv_general_dilated(h, g2, (1, 1), p2, dimension_numbers=DN) + tied.tie_bias(
        b2, r, order
    )
    np.testing.assert_allclose(
        shuffle_reference(np.asarray(y), r, order), want, rtol=1e-5, atol=1e-5
    )


def test_exact_kernel_size_formula():
    # K = k*r: k + 1 taps when lo mod r is 0 or r - 1, k + 2 otherwise (docs/tied.md).
    for r, k in itertools.product([2, 3, 4], [1, 2, 3]):
        big_k = k * r
        for lo in range(big_k):
            taps, _ = tied.lr_taps(big_k, r, lo)
            brute = {(p + m - lo) // r for p in range(r) for m in range(big_k)}
            assert taps == len(brute) == max(brute) - min(brute) + 1
            assert taps == (k + 1 if lo % r in (0, r - 1) else k + 2)


def test_cost_statement():
    c = tied.tied_cost((9, 9), 32, 16, 3)
    assert c.note_kernel_size == (3, 3) and c.lr_kernel_size == (5, 5)
    assert c.hr_flops == c.note_flops == 2 * 9 * 81 * 32 * 16  # equal FLOPs at the note's k
    assert c.tied_flops == 2 * 25 * (32 * 9) * (16 * 9)  # what the exact embedding executes
    assert c.hr_params == 81 * 32 * 16 + 16
    assert c.untied_params == 9 * 32 * 9 * 16 * 9 + 16 * 9
    assert c.param_ratio == pytest.approx(9.0)  # r**2 more free parameters at equal FLOPs
    assert tied.tied_cost((4, 4), 8, 8, 2, use_bias=False).param_ratio == pytest.approx(4.0)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: tied.hr_conv_to_tied_lr(jnp.ones((3, 3, 1, 1)), 0), r"r must be an integer >= 1, got 0"),
        (lambda: tied.hr_conv_to_tied_lr(jnp.ones((3, 3, 1, 1)), 2.5), r"r must be .* got 2\.5"),
        (lambda: tied.hr_conv_to_tied_lr(jnp.ones((3, 3, 1)), 2), r"kernel_hr_HWIO .* rank 4"),
        (lambda: tied.hr_conv_to_tied_lr(jnp.ones((3, 3, 1, 1)), 2, "VALID"), r"padding .* got 'VALID'"),
        (lambda: tied.hr_conv_to_tied_lr(jnp.ones((3, 3, 1, 1)), 2, ((0, 0), (1, 1))),
         r"not size-preserving for kernel size 3"),
        (lambda: tied.hr_conv_to_tied_lr(jnp.ones((3, 3, 1, 1)), 2, order="dcr"), r"order .* got 'dcr'"),
    ],
)  # fmt: skip
def test_tied_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize("order", ["tf", "torch"])
@pytest.mark.parametrize("r", [2, 3, 4])
def test_icnr_is_conv_then_nearest_upsampling(r, order):
    init = icnr.icnr(r, order)
    kernel = init(jax.random.key(r), (3, 3, 4, 2 * r * r))
    x = _random((2, 5, 6, 4), seed=r)
    y = shuffle_reference(
        np.asarray(lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=DN)),
        r,
        order,
    )
    # The sub-kernel is the first C_out output channels in "tf" order, every r*r-th in "torch".
    sub = kernel[..., :2] if order == "tf" else kernel[..., :: r * r]
    low = np.asarray(lax.conv_general_dilated(x, sub, (1, 1), "SAME", dimension_numbers=DN))
    nearest = low.repeat(r, axis=1).repeat(r, axis=2)
    np.testing.assert_allclose(y, nearest, rtol=1e-6, atol=1e-6)
    assert float(icnr.checkerboard_energy(y, r).max()) < 1e-10


@pytest.mark.parametrize("order", ["tf", "torch"])
@pytest.mark.parametrize(
    "base,variance",  # the variance each base gives a layer of this fan-in (k*k*C_in), by definition
    [
        (jax.nn.initializers.lecun_normal(), lambda fan_in: 1.0 / fan_in),
        (jax.nn.initializers.he_uniform(), lambda fan_in: 2.0 / fan_in),
        (jax.nn.initializers.normal(0.05), lambda fan_in: 0.05**2),
    ],
)
def test_icnr_weights_have_the_base_init_variance(base, variance, order):
    """ICNR copies one sub-kernel to the r*r phases, so its weights must be distributed as the base
    initialiser's for a layer of the same fan-in: mean 0 and the base's variance (checked over 8
    keys, 8 * 3*3*32*2 independent draws; the bound is 6 standard errors of a normal sample
    variance, so a sub-kernel rescaled (e.g. by 1/r, a 0.89 relative error) fails)."""
    r, shape = 3, (3, 3, 32, 2 * 9)
    fan_in = 3 * 3 * 32
    kernels = [icnr.icnr(r, order, base)(jax.random.key(seed), shape) for seed in range(8)]
    # The r*r phases are copies; the independent draws are one phase's sub-kernel per key.
    draws = np.concatenate(
        [np.asarray(k[..., :2] if order == "tf" else k[..., :: r * r]).ravel() for k in kernels]
    )
    n = draws.size
    assert n == 8 * fan_in * 2
    assert abs(draws.mean()) < 6 * np.sqrt(variance(fan_in) / n)
    assert draws.var() == pytest.approx(variance(fan_in), rel=6 * np.sqrt(2 / n))
    with pytest.raises(ValueError, match=r"C_out\*r\*r with r\*r=9, got shape \(3, 3, 4, 8\)"):
        icnr.icnr(3)(jax.random.key(0), (3, 3, 4, 8))


def _checkerboard_fft(y, r):
    """Reference: DFT power at the non-DC multiples of (H/r, W/r), over the total non-DC power."""
    y = np.asarray(y, np.float64)
    n, h, w, _ = y.shape
    power = np.abs(np.fft.fft2(y, axes=(1, 2))) ** 2  # (N, H, W, C)
    mask = np.zeros((h, w), bool)
    mask[:: h // r, :: w // r] = True
    mask[0, 0] = False
    total = power.sum(axis=(1, 2, 3)) - power[:, 0, 0].sum(axis=-1)
    return power[:, mask].sum(axis=(1, 2)) / total


def test_checkerboard_energy_matches_fft_reference():
    rng = np.random.default_rng(0)
    for r, c in [(2, 1), (3, 3), (4, 2)]:
        smooth = np.cumsum(np.cumsum(rng.standard_normal((3, 8 * r, 6 * r, c)), 1), 2)
        pattern = rng.standard_normal((1, r, r, c))
        y = smooth + 0.5 * np.tile(pattern, (1, 8, 6, 1))
        np.testing.assert_allclose(
            icnr.checkerboard_energy(y, r), _checkerboard_fft(y, r), rtol=1e-4
        )
    pure = np.tile(np.array([[1.0, -1.0], [-1.0, 1.0]])[None, :, :, None], (2, 4, 4, 1))
    np.testing.assert_allclose(icnr.checkerboard_energy(pure, 2), [1.0, 1.0], rtol=1e-6)
    np.testing.assert_array_equal(icnr.checkerboard_energy(np.ones((1, 4, 4, 1)), 2), [0.0])
    with pytest.raises(ValueError, match=r"divisible by r=3"):
        icnr.checkerboard_energy(np.ones((1, 4, 4, 1)), 3)
