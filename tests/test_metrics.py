"""espcn_jax.metrics against NumPy (PSNR, written here) and scikit-image (SSIM, rgb2ycbcr)."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import skimage.data
from hypothesis import given, settings
from hypothesis import strategies as st
from skimage.color import rgb2ycbcr
from skimage.metrics import structural_similarity

from espcn_jax import images, metrics


def _psnr_ref(a, b):
    d = a.astype(np.float64) - b.astype(np.float64)
    return 10 * np.log10(255.0**2 / np.mean(d * d))


def _ssim_ref(a, b, channel_axis=None):
    return structural_similarity(
        a.astype(np.float64),
        b.astype(np.float64),
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=255,
        channel_axis=channel_axis,
    )


def _degrade(img, rng, noise):
    """A plausible reconstruction of ``img``: box-blurred, noisy, quantized."""
    x = img.astype(np.float64)
    blurred = (x + np.roll(x, 1, 0) + np.roll(x, 1, 1) + np.roll(x, (1, 1), (0, 1))) / 4
    return np.clip(np.round(blurred + rng.normal(0, noise, img.shape)), 0, 255).astype(np.uint8)


def test_quantize_is_matlab_uint8():
    # MATLAB: uint8([-3 -0.5 0.49 0.5 1.5 2.5 254.5 300]) = [0 0 0 1 2 3 255 255]
    x = np.array([-3, -0.5, 0.49, 0.5, 1.5, 2.5, 254.5, 300], np.float32)
    np.testing.assert_array_equal(images.quantize(x), [0, 0, 0, 1, 2, 3, 255, 255])


def test_rgb_to_y_matches_skimage_rgb2ycbcr():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(64, 80, 3), dtype=np.uint8)
    rgb[0, :8] = [
        [0, 0, 0],
        [255, 255, 255],
        [255, 0, 0],
        [0, 255, 0],
        [0, 0, 255],
        [128, 128, 128],
        [1, 2, 3],
        [254, 1, 77],
    ]
    want = np.floor(rgb2ycbcr(rgb.astype(np.float64) / 255)[..., 0] + 0.5)
    np.testing.assert_array_equal(images.rgb_to_y(rgb), want)
    np.testing.assert_array_equal(images.rgb_to_y(rgb.astype(np.float32)), want)
    np.testing.assert_array_equal(jax.jit(images.rgb_to_y)(rgb), want)
    assert want.min() >= 16 and want.max() <= 235


def test_rgb_to_y_rejects_non_rgb():
    with pytest.raises(ValueError, match=r"3 channels.*\(4, 4, 1\)"):
        images.rgb_to_y(np.zeros((4, 4, 1)))


def test_shave():
    x = np.arange(7 * 9 * 2).reshape(7, 9, 2)
    np.testing.assert_array_equal(metrics.shave(x, 2), x[2:5, 2:7])
    np.testing.assert_array_equal(metrics.shave(x, 0), x)
    with pytest.raises(ValueError, match="border=4"):
        metrics.shave(x, 4)
    with pytest.raises(ValueError, match="border must be >= 0"):
        metrics.shave(x, -1)


@settings(max_examples=10, deadline=None)
@given(
    h=st.integers(1, 40),
    w=st.integers(1, 40),
    c=st.sampled_from([None, 1, 3]),
    seed=st.integers(0, 2**16),
)
def test_psnr_matches_numpy(h, w, c, seed):
    rng = np.random.default_rng(seed)
    shape = (h, w) if c is None else (h, w, c)
    a = rng.integers(0, 256, size=shape, dtype=np.uint8)
    b = np.clip(a + rng.integers(-9, 10, size=shape), 0, 255).astype(np.uint8)
    if np.array_equal(a, b):
        b[0, 0] = 255 - b[0, 0] if b.ndim == 2 else 255 - b[0, 0, 0]
    np.testing.assert_allclose(metrics.psnr(a, b), _psnr_ref(a, b), rtol=0, atol=1e-4)


def test_psnr_large_image_and_edge_cases():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, size=(600, 700), dtype=np.uint8)
    b = rng.integers(0, 256, size=(600, 700), dtype=np.uint8)
    np.testing.assert_allclose(jax.jit(metrics.psnr)(a, b), _psnr_ref(a, b), atol=1e-4)
    assert np.isinf(metrics.psnr(a, a))
    with pytest.raises(ValueError, match=r"same shape.*\(600, 700\).*\(600, 699\)"):
        metrics.psnr(a, b[:, :-1])


@pytest.mark.parametrize("shape", [(11, 11), (37, 23), (40, 30, 3)])
def test_ssim_matches_skimage_on_random_images(shape):
    rng = np.random.default_rng(len(shape) + shape[0])
    a = rng.integers(0, 256, size=shape, dtype=np.uint8)
    b = _degrade(a, rng, 20)
    ch = -1 if len(shape) == 3 else None
    np.testing.assert_allclose(metrics.ssim(a, b), _ssim_ref(a, b, ch), rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ["camera", "astronaut", "coffee"])
def test_ssim_matches_skimage_on_natural_images(name):
    img = getattr(skimage.data, name)()
    if img.ndim == 3:
        img = np.asarray(images.rgb_to_y(img)).astype(np.uint8)
    img = img[100:260, 120:300]
    rng = np.random.default_rng(3)
    for noise in (0.5, 8.0):
        rec = _degrade(img, rng, noise)
        got = jax.jit(metrics.ssim)(img, rec)
        np.testing.assert_allclose(got, _ssim_ref(img, rec), rtol=0, atol=1e-5)
    np.testing.assert_allclose(metrics.ssim(img, img), 1.0, atol=1e-5)


def test_ssim_rejects_small_images():
    with pytest.raises(ValueError, match=r"at least 11x11.*\(10, 30\)"):
        metrics.ssim(np.zeros((10, 30)), np.zeros((10, 30)))
