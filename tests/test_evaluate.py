"""The evaluation protocol: against a NumPy/scikit-image re-implementation written here, the
published Set5 bicubic table, and the CLI end to end (JSON, table, errors)."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
from _drivers import run_driver
from _set5 import set5_scale_dir
from PIL import Image
from skimage.color import rgb2ycbcr
from skimage.metrics import structural_similarity

from espcn_jax import bicubic, evaluate

# Bicubic on Set5, Y, border r (SRCNN, VDSR tables): PSNR and SSIM.
PUBLISHED = {2: (33.66, 0.9299), 3: (30.39, 0.8682), 4: (28.42, 0.8104)}


def _nearest(lr_NHWC):
    """A model that is not bicubic: nearest-neighbour x2, brightened (so rounding and clipping act)."""
    return np.repeat(np.repeat(lr_NHWC, 2, axis=1), 2, axis=2) * 1.1 + 0.3


def _protocol_ref(hr, lr, r):
    """DESIGN.md §3 in NumPy: model, clip + round half up, Y (skimage), crop r, PSNR, SSIM."""
    sr = np.asarray(_nearest(lr[None].astype(np.float64)))[0]
    sr = np.floor(np.clip(sr, 0, 255) + 0.5)

    def y(x):
        if x.shape[-1] == 1:
            return x[..., 0].astype(np.float64)
        return np.floor(rgb2ycbcr(x.astype(np.float64) / 255)[..., 0] + 0.5)

    a, b = y(hr)[r:-r, r:-r], y(sr)[r:-r, r:-r]
    psnr = 10 * np.log10(255**2 / np.mean((a - b) ** 2))
    ssim = structural_similarity(
        a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255
    )
    return psnr, ssim


@pytest.mark.parametrize("c", [1, 3])
def test_evaluate_image_matches_numpy_protocol(c):
    rng = np.random.default_rng(c)
    hr = rng.integers(0, 256, size=(30, 34, c), dtype=np.uint8)
    lr = rng.integers(0, 256, size=(15, 17, c), dtype=np.uint8)
    got = evaluate.evaluate_image(hr, lr, _nearest, 2)
    np.testing.assert_allclose(got, _protocol_ref(hr, lr, 2), rtol=0, atol=1e-4)


def _write(path, array):
    Image.fromarray(array.squeeze() if array.shape[-1] == 1 else array).save(path)


def _smooth_image(rng, h, w, c):
    """A smooth-ish image, so bicubic does better than chance."""
    base = rng.uniform(0, 255, size=(h // 4 + 2, w // 4 + 2, c)).astype(np.float32)
    up = np.asarray(bicubic.upscale(base[None], 4))[0][:h, :w]
    return np.clip(np.round(up), 0, 255).astype(np.uint8)


def test_folder_evaluation_mod_crops_and_sorts(tmp_path):
    rng = np.random.default_rng(0)
    hr = _smooth_image(rng, 40, 37, 3)  # 37 is not a multiple of 3: mod-cropped to 36
    _write(tmp_path / "b.png", hr)
    _write(tmp_path / "a.bmp", hr[..., :1])
    report = evaluate.evaluate(evaluate.make_model("bicubic", 3), tmp_path, 3)
    assert report["lr_source"] == "degrade" and report["num_images"] == 2
    assert [row["file"] for row in report["images"]] == ["a.bmp", "b.png"]
    cropped = hr[:39, :36]
    lr = np.asarray(evaluate.make_lr(cropped, 3, "rgb", True))
    want = evaluate.evaluate_image(cropped, lr, evaluate.make_model("bicubic", 3), 3)
    np.testing.assert_allclose([report["images"][1]["psnr"], report["images"][1]["ssim"]], want)
    np.testing.assert_allclose(report["psnr"], np.mean([row["psnr"] for row in report["images"]]))


def test_library_errors(tmp_path):
    with pytest.raises(ValueError, match="scale must be an integer >= 2, got 1"):
        evaluate.evaluate(evaluate.make_model("bicubic", 2), tmp_path, 1)
    with pytest.raises(ValueError, match="model must be one of"):
        evaluate.make_model("lanczos", 2)
    with pytest.raises(ValueError, match="lr_source"):
        evaluate.find_images(tmp_path, "both")
    _write(tmp_path / "x.png", np.zeros((16, 16, 3), np.uint8))  # 15 - 2*3 < 11
    with pytest.raises(ValueError, match=r"x.png is too small \(16x16\) for scale 3"):
        evaluate.evaluate(evaluate.make_model("bicubic", 3), tmp_path, 3)
    with pytest.raises(ValueError, match="channels"):
        evaluate.evaluate(evaluate.make_model("bicubic", 3), tmp_path, 3, channels="ycbcr")
    with pytest.raises(ValueError, match="sr_fn must map"):
        evaluate.evaluate_image(
            np.zeros((40, 40, 1), np.uint8), np.zeros((20, 20, 1)), lambda x: x, 2
        )


# --- Set5: the published bicubic table -----------------------------------------------------------


@pytest.mark.parametrize("r", [2, 3, 4])
def test_set5_published_bicubic_table(r):
    d = set5_scale_dir(r)
    model = evaluate.make_model("bicubic", r)
    given = evaluate.evaluate(model, d, r, lr_source="given")
    degraded = evaluate.evaluate(model, d, r, lr_source="degrade")
    srcnn = evaluate.evaluate(model, d, r, lr_source="degrade", channels="y", round_lr=False)
    psnr, ssim = PUBLISHED[r]
    print(
        f"x{r}: given {given['psnr']:.4f}/{given['ssim']:.4f}, degrade {degraded['psnr']:.4f}"
        f"/{degraded['ssim']:.4f}, y float LR {srcnn['psnr']:.4f}/{srcnn['ssim']:.4f}"
    )
    assert given["num_images"] == degraded["num_images"] == 5
    assert abs(given["psnr"] - psnr) <= 0.02
    assert abs(degraded["psnr"] - psnr) <= 0.02
    # Our degradation reproduces the given LR files bit for bit, so the scores are the same.
    assert degraded["images"] == given["images"]
    # The SRCNN/VDSR code path (Y first, float LR) reproduces both columns to the printed digit.
    assert abs(srcnn["psnr"] - psnr) < 0.005
    assert abs(srcnn["ssim"] - ssim) < 0.00005


# --- the CLI -------------------------------------------------------------------------------------


run_cli = functools.partial(run_driver, "evaluate.py")


@pytest.fixture(scope="module")
def pair_dir(tmp_path_factory):
    """A tiny Set5-style directory: two HR/LR pairs (LR by our degradation) and a stray text file."""
    d = tmp_path_factory.mktemp("pairs")
    rng = np.random.default_rng(1)
    for name in ("one", "two"):
        hr = _smooth_image(rng, 36, 30, 3)
        _write(d / f"{name}_HR.png", hr)
        _write(
            d / f"{name}_LR.png", np.asarray(evaluate.make_lr(hr, 2, "rgb", True)).astype(np.uint8)
        )
    (d / "notes.txt").write_text("not an image")
    return d


def test_cli_json(pair_dir):
    proc = run_cli(f"--data_dir={pair_dir}", "--scale=2", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["model"] == "bicubic" and report["scale"] == 2
    assert report["lr_source"] == "given" and report["num_images"] == 2
    assert [row["file"] for row in report["images"]] == ["one_HR.png", "two_HR.png"]
    want = evaluate.evaluate(evaluate.make_model("bicubic", 2), pair_dir, 2)
    np.testing.assert_allclose(report["psnr"], want["psnr"], rtol=1e-6)
    np.testing.assert_allclose(report["ssim"], want["ssim"], rtol=1e-6)
    assert "notes.txt" in proc.stderr  # skipped with a warning


def test_cli_table(pair_dir):
    proc = run_cli(f"--data_dir={pair_dir}", "--scale=2", "--lr_source=degrade", "--channels=y")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "LR degrade, channels y" in lines[0]
    assert lines[-1].startswith("mean") and len(lines) == 5


def _bad_pair_dir(tmp_path):
    _write(tmp_path / "p_HR.png", np.zeros((36, 36, 3), np.uint8))
    _write(tmp_path / "p_LR.png", np.zeros((17, 18, 3), np.uint8))
    return tmp_path


def _corrupt_dir(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return tmp_path


@pytest.mark.parametrize(
    "make_dir,flags,message",
    [
        (None, ["--scale=3"], "directory not found"),
        (lambda p: p, ["--scale=3"], "no image files"),
        (lambda p: p, ["--scale=2.5"], "flag --scale=2.5"),
        (lambda p: p, ["--scale=1"], "scale must be an integer >= 2"),
        (lambda p: p, ["--model=checkpoint"], "'checkpoint' is not available yet"),
        (_bad_pair_dir, ["--scale=2"], "p_LR.png is 17x18 but HR image"),
        (_corrupt_dir, ["--scale=2"], "cannot read image"),
    ],
)
def test_cli_errors_exit_2_with_one_line(tmp_path, make_dir, flags, message):
    data_dir = tmp_path / "missing" if make_dir is None else make_dir(tmp_path)
    proc = run_cli(f"--data_dir={data_dir}", *flags)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr
    assert proc.stdout == ""
