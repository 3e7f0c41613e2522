"""Applying trained models: MATLAB colour conversions against scikit-image, the Y / RGB / grey paths
against eager NumPy references, tiled upscaling bit-identical to whole-image upscaling for every
family, and the checkpoint round trip through the drivers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from _drivers import run_driver
from flax import nnx
from PIL import Image
from skimage.color import rgb2ycbcr, ycbcr2rgb

import espcn_jax
from espcn_jax import bicubic, data, evaluate, images, inference, models, pipeline

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
    dict(family="hr", dilations=(3, 3, 1)),  # rf_match="dilate" at r = 3
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


@pytest.mark.parametrize("fields", FAMILIES, ids=lambda f: "-".join(map(str, f.values())))
def test_radius_holds_the_receptive_field(fields):
    """The tiling margin on both sides spans the receptive field the models module reports."""
    if not hasattr(models, "receptive_field"):
        pytest.skip("models.receptive_field not available")
    for r in (2, 3, 4):
        cfg = models.ModelConfig(scale=r, **fields)
        assert 2 * inference.receptive_radius(cfg) + 1 >= models.receptive_field(cfg)


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


# --- a trained run through the drivers ------------------------------------------------------------


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny trained run (the smoke config, 2 steps, no validation) made by the train driver."""
    d = tmp_path_factory.mktemp("run") / "run"
    proc = run_driver(
        "train.py",
        "--config=experiments/configs/espcn.py:smoke",
        "--config.train.steps=2",
        "--config.eval.sets=",
        f"--workdir={d}",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return d


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """A colour JPEG, a grey PNG and a text file (skipped with a warning)."""
    d = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(5)
    Image.fromarray(_photo(rng, 40, 46, 3)).save(d / "colour.jpg", quality=95)
    Image.fromarray(_photo(rng, 37, 35, 1)[..., 0]).save(d / "grey.png")
    (d / "notes.txt").write_text("not an image")
    return d


def _one_line_error(proc, *needles, exact=False):
    """Exit 2, stdout empty, and one ``error:`` line on stderr naming the problem, last; with
    ``exact`` stderr is that line and nothing else (no log lines either)."""
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stdout == ""
    lines = [line for line in proc.stderr.splitlines() if not _is_log(line)]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and all(n in errors[0] for n in needles), proc.stderr[-2000:]
    assert lines[-1] == errors[0], proc.stderr[-2000:]
    if exact:
        assert proc.stderr.splitlines() == errors, proc.stderr[-2000:]


def _is_log(line):
    """absl/Orbax log lines (``I1125 20:17:50.198 ...``, ``WARNING:absl:...``), TF's notices."""
    return line[:1] in "IWE" and line[1:5].isdigit() or line.startswith("WARNING:absl:")


def test_evaluate_driver_on_a_checkpoint(run_dir, photos):
    proc = run_driver(
        "evaluate.py",
        "--model=checkpoint",
        f"--checkpoint={run_dir}",
        f"--data_dir={photos}",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    assert report["model"] == "checkpoint" and report["scale"] == 3
    assert report["channels"] == "y" and report["lr_source"] == "degrade"
    want = evaluate.evaluate(espcn_jax.load(run_dir).model, photos, 3)
    assert [row["file"] for row in report["images"]] == ["colour.jpg", "grey.png"]
    assert report["per_image"] == {
        "names": ["colour.jpg", "grey.png"],
        "psnr": [row["psnr"] for row in report["images"]],
        "ssim": [row["ssim"] for row in report["images"]],
    }
    np.testing.assert_allclose(report["psnr"], want["psnr"], rtol=1e-6)
    np.testing.assert_allclose(report["ssim"], want["ssim"], rtol=1e-6)
    # The restored model is the trained one: the evaluation's scores are its own.
    model = espcn_jax.load(run_dir).model
    hr = data.load_image(photos / "grey.png")[:36, :33]
    sr = _eager(model, pipeline.degrade(hr, 3))[3:-3, 3:-3, 0].astype(np.float64)
    mse = np.mean((hr[3:-3, 3:-3, 0] - sr) ** 2)
    np.testing.assert_allclose(report["images"][1]["psnr"], 10 * np.log10(255**2 / mse), atol=0.02)


def test_upscale_driver_round_trip(run_dir, photos, tmp_path):
    out = tmp_path / "out"
    args = [f"--checkpoint={run_dir}", f"--input={photos}", f"--output={out}"]
    proc = run_driver("upscale.py", *args, "--tile=7", "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    assert [Path(row["output"]).name for row in report["images"]] == ["colour.png", "grey.png"]
    assert proc.stderr.count("notes.txt") == 1  # skipped with one warning
    upscaler = espcn_jax.load(run_dir, tile=None)
    for name, mode in (("colour", "RGB"), ("grey", "L")):
        src = next(photos.glob(f"{name}.*"))
        with Image.open(out / f"{name}.png") as im:
            assert im.mode == mode  # grey in, grey out
            got = np.asarray(im)
        want = upscaler(data.load_image(src))
        np.testing.assert_array_equal(got, want.squeeze())  # tiles of 7 == whole image
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    # Never overwrite without --overwrite: one line, exit 2, files unchanged.
    _one_line_error(run_driver("upscale.py", *args), "colour.png exists", "--overwrite")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    proc = run_driver("upscale.py", *args, "--overwrite", "--tile=0")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # same pixels untiled
    assert proc.stdout.splitlines()[0].startswith("x3 with")  # the table


def _corrupt_run(run_dir, tmp_path):
    bad = tmp_path / "corrupt"
    shutil.copytree(run_dir, bad)
    for f in (bad / "checkpoints").rglob("*"):
        if f.is_file() and f.parent.name == "d":
            f.write_bytes(b"garbage")
    return bad


def test_drivers_bad_input_exit_2(run_dir, photos, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(broken / "a_fine.png")
    (broken / "b_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = tmp_path / "out"
    ok = [f"--checkpoint={run_dir}", f"--output={out}"]
    _one_line_error(run_driver("upscale.py", *ok, f"--input={broken}"), "b_broken.png")
    assert not out.exists()  # nothing written: inputs are read before the first output
    _one_line_error(run_driver("upscale.py", *ok, f"--input={tmp_path / 'nope.png'}"), "nope.png")
    _one_line_error(run_driver("upscale.py", *ok, f"--input={photos}", "--tile=-1"), "--tile")
    empty = tmp_path / "empty_run"
    empty.mkdir()
    corrupt = _corrupt_run(run_dir, tmp_path)
    # A corrupt checkpoint too: the one error line and nothing else (no Orbax warnings, no
    # "Event loop is closed" from TensorStore's reads still in flight when the restore failed).
    cases = ((tmp_path / "missing", "not found"), (empty, "empty_run"))
    cases += ((corrupt, f"checkpoint {corrupt}"),)
    one_photo = tmp_path / "one_photo"  # no skipped file, whose warning would be a second line
    one_photo.mkdir()
    shutil.copy(photos / "colour.jpg", one_photo)
    for ckpt, needle in cases:
        _one_line_error(
            run_driver(
                "upscale.py", f"--checkpoint={ckpt}", f"--input={one_photo}", f"--output={out}"
            ),
            needle,
            exact=True,
        )
        _one_line_error(
            run_driver(
                "evaluate.py",
                "--model=checkpoint",
                f"--checkpoint={ckpt}",
                f"--data_dir={one_photo}",
            ),
            needle,
            exact=True,
        )
    assert not out.exists()
    # Flags that contradict the checkpoint, checked before any image is read.
    ev = ["evaluate.py", "--model=checkpoint", f"--checkpoint={run_dir}", f"--data_dir={photos}"]
    _one_line_error(
        run_driver(*ev, "--scale=2"), "--scale=2 but the checkpoint's model upscales x3"
    )
    _one_line_error(run_driver(*ev, "--channels=3"), "channels='rgb' but the model takes 'y'")
    _one_line_error(
        run_driver("evaluate.py", f"--checkpoint={run_dir}", f"--data_dir={photos}"),
        "--checkpoint is for --model=checkpoint",
    )
    _one_line_error(
        run_driver("evaluate.py", "--model=checkpoint", f"--data_dir={photos}"),
        "--checkpoint=RUN_DIR",
    )
