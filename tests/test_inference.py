"""Applying trained models: MATLAB colour conversions against scikit-image, the Y / RGB / grey paths
against eager NumPy references, tiled upscaling bit-identical to whole-image upscaling for every
family, and the checkpoint round trip through the drivers."""

from __future__ import annotations

import numpy as np
import pytest
from flax import nnx
from skimage.color import rgb2ycbcr, ycbcr2rgb

import espcn_jax
from espcn_jax import bicubic, images, inference, models

# --- colour conversions (MATLAB rgb2ycbcr / ycbcr2rgb on uint8) -----------------------------------


def _all_colours(step=1):
    """Every RGB triple on a grid of ``step`` (256^3 / step^3 of them), as an (N, 1, 3) image."""
    v = np.arange(0, 256, step, dtype=np.uint8)
    return np.stack(np.meshgrid(v, v, v, indexing="ij"), axis=-1).reshape(-1, 1, 3)


def _rounds_like(got, want_float, name):
    """``got`` is ``want_float`` rounded half up, wherever ``want_float`` is not within 1e-6 of a
    tie (there float64 rounding of skimage's matrix product decides)."""
    want = np.floor(want_float + 0.5)
    clear = np.abs(want_float - np.floor(want_float) - 0.5) > 1e-6
    assert clear.mean() > 0.99
    bad = (got != want) & clear
    assert not bad.any(), (
        f"{name}: {bad.sum()} differ, e.g. {got[bad][:5]} vs {want_float[bad][:5]}"
    )
    assert np.all(np.abs(got - want_float) <= 0.5 + 1e-6)


def test_rgb_to_ycbcr_matches_skimage():
    rgb = _all_colours(step=3)
    got = images.rgb_to_ycbcr(rgb)
    _rounds_like(got.astype(np.float64), rgb2ycbcr(rgb), "rgb_to_ycbcr")
    # Its Y is the protocol's Y (images.rgb_to_y, exact integers) bit for bit.
    np.testing.assert_array_equal(got[..., 0], np.asarray(images.rgb_to_y(rgb)))


def test_ycbcr_to_rgb_matches_skimage():
    ycbcr = _all_colours(step=3)  # the whole cube, most of it outside the RGB gamut: saturates
    got = images.ycbcr_to_rgb(ycbcr)
    want = np.clip(ycbcr2rgb(ycbcr.astype(np.float64)) * 255, 0, 255)
    _rounds_like(got.astype(np.float64), want, "ycbcr_to_rgb")
    # And it inverts rgb_to_ycbcr up to the rounding of YCbCr to uint8 (at most 2 levels off).
    rgb = _all_colours(step=5)
    back = images.ycbcr_to_rgb(images.rgb_to_ycbcr(rgb)).astype(int)
    assert np.abs(back - rgb).max() <= 2


def test_rgb_to_grey_is_bt601_luma():
    rgb = _all_colours(step=7)
    want = rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    _rounds_like(np.asarray(images.rgb_to_grey(rgb)), want, "rgb_to_grey")
    grey = np.arange(256, dtype=np.uint8)[:, None, None].repeat(3, axis=-1)
    np.testing.assert_array_equal(np.asarray(images.rgb_to_grey(grey))[:, 0], np.arange(256))


# --- the Y, RGB and grey paths -------------------------------------------------------------------


def _model(channels=1, r=3, seed=0, **fields):
    cfg = models.ModelConfig(scale=r, channels=channels, widths=(8, 4), **fields)
    return models.model_from_config(cfg, rngs=nnx.Rngs(seed))


def _eager(model, x_HWC):
    """The network on uint8 values / 255, outside any jit, float32 * 255 rounded half up."""
    sr = np.asarray(model(np.asarray(x_HWC, np.float32)[None] / np.float32(255)))[0]
    sr = np.asarray(sr, np.float32) * np.float32(255)
    return np.floor(np.clip(sr.astype(np.float64), 0, 255) + 0.5).astype(np.uint8)


def _close(got, want):
    """Equal uint8 images, but for the odd pixel one level off: XLA may fuse a jitted net's
    multiply-adds differently from the eager reference, moving a value across a rounding tie."""
    assert got.shape == want.shape and got.dtype == want.dtype
    diff = np.abs(got.astype(int) - want.astype(int))
    assert diff.max() <= 1 and np.mean(diff > 0) < 1e-3, (diff.max(), np.mean(diff > 0))


def _photo(rng, h, w, c):
    base = rng.uniform(0, 255, size=(h // 4 + 2, w // 4 + 2, c)).astype(np.float32)
    up = np.asarray(bicubic.upscale(base[None], 4))[0][:h, :w]
    noise = rng.normal(0, 8, size=up.shape)
    return np.clip(np.round(up + noise), 0, 255).astype(np.uint8)


def test_y_model_on_colour_image():
    """Y by the net, Cb/Cr bicubically, back to RGB: against skimage's conversions."""
    rng = np.random.default_rng(0)
    image = _photo(rng, 23, 31, 3)
    model = _model(channels=1)
    got = inference.Upscaler(model)(image)
    ycbcr = np.floor(rgb2ycbcr(image) + 0.5)  # MATLAB rgb2ycbcr on uint8 (no ties here)
    y = _eager(model, ycbcr[..., :1])
    cbcr = np.asarray(bicubic.upscale(ycbcr[None, ..., 1:].astype(np.float32), 3))[0]
    cbcr = np.floor(np.clip(cbcr, 0, 255) + 0.5)
    want = ycbcr2rgb(np.concatenate([y, cbcr], axis=-1).astype(np.float64))
    want = np.floor(np.clip(want * 255, 0, 255) + 0.5)
    assert got.shape == (69, 93, 3)
    _close(got, want.astype(np.uint8))


def test_rgb_model_on_colour_image():
    rng = np.random.default_rng(1)
    image = _photo(rng, 20, 17, 3)
    model = _model(channels=3, r=2)
    _close(inference.Upscaler(model)(image), _eager(model, image))


@pytest.mark.parametrize("channels", [1, 3])
def test_grey_in_grey_out(channels):
    rng = np.random.default_rng(2)
    grey = _photo(rng, 19, 22, 1)
    model = _model(channels=channels, r=2)
    upscaler = inference.Upscaler(model)
    out = upscaler(grey)
    assert out.shape == (38, 44, 1) and out.dtype == np.uint8
    np.testing.assert_array_equal(upscaler(grey[..., 0]), out[..., 0])  # (H, W) stays (H, W)
    if channels == 1:
        want = _eager(model, grey)
    else:  # R = G = B in, BT.601 grey of the rounded output
        rgb = _eager(model, np.repeat(grey, 3, axis=-1)).astype(np.int64)
        want = ((rgb @ [299, 587, 114] + 500) // 1000).astype(np.uint8)[..., None]
    _close(out, want)


def test_upscaler_errors():
    upscaler = inference.Upscaler(_model())
    with pytest.raises(ValueError, match="must be uint8, got float32"):
        upscaler(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ValueError, match=r"shape \(H, W\), \(H, W, 1\) or \(H, W, 3\)"):
        upscaler(np.zeros((8, 8, 4), np.uint8))
    with pytest.raises(ValueError, match="tile must be"):
        inference.Upscaler(_model(), tile=0)
    with pytest.raises(ValueError, match="must be a network of espcn_jax.models"):
        inference.Upscaler(nnx.Linear(2, 2, rngs=nnx.Rngs(0)))


# --- tiling ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "n,tile,margin", [(37, 5, 4), (12, 5, 4), (13, 5, 4), (100, 7, 0), (9, 1, 3)]
)
def test_windows_cover_each_core_with_its_margin(n, tile, margin):
    cores = inference.windows(n, tile, margin)
    assert [c[0] for c in cores] == sorted(c[0] for c in cores)
    covered = np.concatenate([np.arange(a, b) for a, b, _, _ in cores])
    np.testing.assert_array_equal(covered, np.arange(n))  # a partition, in order
    sizes = {hi - lo for _, _, lo, hi in cores}
    assert len(sizes) == 1  # one compiled window shape per image axis
    for a, b, lo, hi in cores:
        assert 0 <= lo <= a < b <= hi <= n
        assert lo == 0 or a - lo >= margin
        assert hi == n or hi - b >= margin


FAMILIES = [
    dict(family="lr"),
    dict(family="lr", residual=True, kernel_sizes=(4, 2, 3)),
    dict(family="deconv"),
    dict(family="deconv", residual=True),
    dict(family="hr"),
    dict(family="hr", residual=True, kernel_sizes=(9, 5, 5)),
    dict(family="lr_tied"),
]


@pytest.mark.parametrize("fields", FAMILIES, ids=lambda f: "-".join(map(str, f.values())))
@pytest.mark.parametrize("r", [2, 3])
def test_tiles_equal_the_whole_image(fields, r):
    """Tiles of 5 LR pixels with the receptive radius as margin give the whole image's pixels bit
    for bit; with one pixel less (r = 2, where the radius is tight) they do not, so the check can
    fail."""
    rng = np.random.default_rng(r)
    x = rng.integers(0, 256, size=(29, 35, 1), dtype=np.uint8)
    model = _model(r=r, seed=1, **fields)
    whole = inference.Upscaler(model, tile=None).network(x)
    _close(whole, _eager(model, x))
    tiled = inference.Upscaler(model, tile=5)
    assert len(inference.windows(29, 5, tiled.radius)) > 2
    np.testing.assert_array_equal(tiled.network(x), whole)
    if r == 2:
        short = inference.Upscaler(model, tile=5)
        short.radius -= 1
        assert np.any(short.network(x) != whole)


def test_tiled_colour_paths_equal_whole():
    rng = np.random.default_rng(4)
    image = rng.integers(0, 256, size=(26, 21, 3), dtype=np.uint8)
    for channels in (1, 3):
        model = _model(channels=channels, r=2, family="hr", residual=True)
        whole = inference.Upscaler(model, tile=None)
        tiled = inference.Upscaler(model, tile=4)
        np.testing.assert_array_equal(tiled(image), whole(image))
        np.testing.assert_array_equal(tiled(image[..., :1]), whole(image[..., :1]))


# --- loading a run directory ----------------------------------------------------------------------


def test_load_missing_directory(tmp_path):
    with pytest.raises(ValueError, match="checkpoint directory not found: .*nothing"):
        espcn_jax.load(tmp_path / "nothing")
