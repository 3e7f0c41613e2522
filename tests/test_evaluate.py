"""The evaluation protocol: against a NumPy/scikit-image re-implementation written here (models fed
LR / 255, their output times 255 rounded as MATLAB's uint8), the published Set5 bicubic table, and
the CLI end to end (JSON, table, errors)."""

from __future__ import annotations

import functools
import importlib.util
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _drivers import run_driver
from _set5 import set5_scale_dir
from flax import nnx
from PIL import Image
from skimage.color import rgb2ycbcr
from skimage.metrics import structural_similarity

from espcn_jax import bicubic, data, evaluate, images, metrics, models, pipeline, tiling

# Bicubic on Set5, Y, border r (SRCNN, VDSR tables): PSNR and SSIM.
PUBLISHED = {2: (33.66, 0.9299), 3: (30.39, 0.8682), 4: (28.42, 0.8104)}


def _nearest(lr_NHWC):
    """A [0, 1] model that is not bicubic: nearest-neighbour x2, each channel with its own gain and
    brightened (so rounding, clipping and the channel mix act). On uint8 inputs, ``255 * output``
    stays >= 0.05 away from every rounding tie, so float32 and float64 round alike."""
    x = jnp.repeat(jnp.repeat(lr_NHWC, 2, axis=1), 2, axis=2)
    gain = 1.0 + 0.1669 * jnp.arange(x.shape[-1])
    return x * gain + 0.217 / 255


# --- the protocol in NumPy / scikit-image --------------------------------------------------------


def _ref_y(x, grey_hr):
    """Y (skimage's rgb2ycbcr, rounded) of an RGB uint8-valued image; grey images as they are; RGB
    output for a grey HR image: round(0.299 R + 0.587 G + 0.114 B)."""
    x = np.asarray(x, np.float64)
    if x.shape[-1] == 1:
        return x[..., 0]
    if grey_hr:
        return ((x.astype(np.int64) @ [299, 587, 114] + 500) // 1000).astype(np.float64)
    return np.floor(rgb2ycbcr(x / 255)[..., 0] + 0.5)


def _ref_scores(hr, sr_01, r):
    """PSNR (NumPy) and SSIM (scikit-image) of a float32 [0, 1] model output against uint8 HR
    (``255 * output`` in float32, as a float32 model hands it over, then MATLAB's uint8())."""
    sr = np.asarray(sr_01, np.float32) * np.float32(255)
    sr = np.floor(np.clip(sr.astype(np.float64), 0, 255) + 0.5)
    grey = hr.shape[-1] == 1
    a, b = _ref_y(hr, grey)[r:-r, r:-r], _ref_y(sr, grey)[r:-r, r:-r]
    psnr = 10 * np.log10(255**2 / np.mean((a - b) ** 2))
    ssim = structural_similarity(
        a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255
    )
    return psnr, ssim


def _ref_model_input(lr, channels):
    """What the model sees: LR / 255, Y of colour LR for a Y model, grey as R = G = B for RGB."""
    lr = np.asarray(lr, np.float64)
    if channels == "y" and lr.shape[-1] == 3:
        lr = np.floor(rgb2ycbcr(lr / 255)[..., :1] + 0.5)
    if channels == "rgb" and lr.shape[-1] == 1:
        lr = np.repeat(lr, 3, axis=-1)
    return (lr / 255).astype(np.float32)[None]


def _ref(hr, lr, model, r, channels="rgb"):
    sr = np.asarray(model(jnp.asarray(_ref_model_input(lr, channels))))[0]
    return _ref_scores(hr, sr, r)


@pytest.mark.parametrize("c", [1, 3])
def test_evaluate_image_matches_numpy_protocol(c):
    rng = np.random.default_rng(c)
    hr = rng.integers(0, 256, size=(30, 34, c), dtype=np.uint8)
    lr = rng.integers(0, 256, size=(15, 17, c), dtype=np.uint8)
    got = evaluate.evaluate_image(hr, lr, _nearest, 2)
    np.testing.assert_allclose(got, _ref(hr, lr, _nearest, 2), rtol=0, atol=1e-4)


def _write(path, array):
    Image.fromarray(array.squeeze() if array.shape[-1] == 1 else array).save(path)


def _smooth_image(rng, h, w, c):
    """A smooth-ish image, so that upscaling does better than chance."""
    base = rng.uniform(0, 255, size=(h // 4 + 2, w // 4 + 2, c)).astype(np.float32)
    up = np.asarray(bicubic.upscale(base[None], 4))[0][:h, :w]
    return np.clip(np.round(up), 0, 255).astype(np.uint8)


def _espcn(channels, seed, r=2):
    cfg = models.ModelConfig.espcn(scale=r, channels=channels, widths=(8, 4))
    return models.model_from_config(cfg, rngs=nnx.Rngs(seed))


def test_folder_pairs_against_numpy(tmp_path):
    """Given LR files, HR mod-cropped, grey and colour, file order; means are of the references."""
    rng = np.random.default_rng(0)
    images = {"b": _smooth_image(rng, 41, 37, 3), "a": _smooth_image(rng, 40, 36, 1)}
    refs = {}
    for name, hr in images.items():
        cropped = hr[:40, :36]
        lr = rng.integers(0, 256, size=(20, 18, hr.shape[-1]), dtype=np.uint8)
        _write(tmp_path / f"{name}_HR.png", hr)
        _write(tmp_path / f"{name}_LR.png", lr)
        refs[name] = _ref(cropped, lr, _nearest, 2)
    report = evaluate.evaluate(_nearest, tmp_path, 2)
    assert report["lr_source"] == "given" and report["channels"] == "rgb"
    assert [row["file"] for row in report["images"]] == ["a_HR.png", "b_HR.png"]
    for row, name in zip(report["images"], "ab", strict=True):
        np.testing.assert_allclose([row["psnr"], row["ssim"]], refs[name], atol=1e-4)
    np.testing.assert_allclose(report["psnr"], np.mean([refs[n][0] for n in "ab"]), atol=1e-4)
    np.testing.assert_allclose(report["ssim"], np.mean([refs[n][1] for n in "ab"]), atol=1e-6)


@pytest.mark.parametrize("channels", ["rgb", "y"])
def test_degraded_folder_uses_the_training_lr(tmp_path, channels):
    """Plain HR files get the LR the training pipeline makes (pipeline.degrade, MATLAB-exact)."""
    rng = np.random.default_rng(2)
    hr = _smooth_image(rng, 40, 37, 3)  # 37 is not a multiple of 2: mod-cropped to 36
    _write(tmp_path / "x.png", hr)
    model = _espcn(1 if channels == "y" else 3, seed=0)
    lr = pipeline.degrade(hr, 2)
    want = _ref(hr[:40, :36], lr, model, 2, channels)
    if channels == "y":  # rgb2ycbcr on HR, then degrade Y: the pipeline's Y LR
        lr_y = pipeline.degrade(pipeline.rgb_to_y(hr), 2)
        sr = np.asarray(model(jnp.asarray(lr_y[None] / 255.0, jnp.float32)))[0]
        want = _ref_scores(hr[:40, :36], sr, 2)
    report = evaluate.evaluate(model, tmp_path, 2)
    assert report["lr_source"] == "degrade" and report["channels"] == channels
    np.testing.assert_allclose([report["psnr"], report["ssim"]], want, atol=1e-4)


def test_rgb_model_on_grey_image():
    """An RGB net sees a grey image as R = G = B; its output is scored as grey (BT.601 weights)."""
    rng = np.random.default_rng(3)
    hr = _smooth_image(rng, 32, 30, 1)
    lr = rng.integers(0, 256, size=(16, 15, 1), dtype=np.uint8)
    model = _espcn(3, seed=1)
    got = evaluate.evaluate_image(hr, lr, model, 2)
    np.testing.assert_allclose(got, _ref(hr, lr, model, 2, "rgb"), atol=1e-4)


def test_new_parameters_do_not_retrace():
    """A second checkpoint of one architecture reuses the compiled program of each image shape."""
    traces = []

    class Counting(nnx.Module):
        def __init__(self, seed):
            self.net = _espcn(1, seed)
            self.config = self.net.config

        def __call__(self, x):
            traces.append(x.shape)
            return self.net(x)

    rng = np.random.default_rng(4)
    shapes = [(32, 30), (32, 30), (36, 40)]
    hrs = [rng.integers(0, 256, size=(*s, 3), dtype=np.uint8) for s in shapes]
    lrs = [rng.integers(0, 256, size=(s[0] // 2, s[1] // 2, 3), dtype=np.uint8) for s in shapes]
    scores = {}
    for seed in (0, 1, 2):
        model = Counting(seed)
        scores[seed] = [
            evaluate.evaluate_image(h, lo, model, 2) for h, lo in zip(hrs, lrs, strict=True)
        ]
        # The traced state is this model's: the scores are its own.
        want = [_ref(h, lo, model.net, 2, "y") for h, lo in zip(hrs, lrs, strict=True)]
        np.testing.assert_allclose(scores[seed], want, atol=1e-4)
    assert len(traces) == 2, traces  # one per image shape, whatever the parameters
    assert scores[0] != scores[1]


def test_models_run_at_highest_precision():
    """Scores compare across devices: the model is traced under default_matmul_precision=highest."""
    seen = []

    def model(x):
        seen.append(jax.config.jax_default_matmul_precision)
        return _nearest(x)

    evaluate.evaluate_image(np.zeros((30, 30, 1), np.uint8), np.zeros((15, 15, 1)), model, 2)
    assert seen == ["highest"]


def test_channels_follow_the_model():
    assert evaluate.model_channels(_espcn(1, 0)) == "y"
    assert evaluate.model_channels(_espcn(3, 0)) == "rgb"
    assert evaluate.model_channels(_nearest) == "rgb"
    with pytest.raises(ValueError, match="channels='rgb' but the model takes 'y'"):
        evaluate.model_channels(_espcn(1, 0), "rgb")


# --- folders: the pair layout -------------------------------------------------------------------


def test_hr_images_without_lr_partners_are_degraded(tmp_path):
    """A folder of `*_HR` images alone (issue: 'has no matching LR image') evaluates degraded."""
    rng = np.random.default_rng(5)
    hr = _smooth_image(rng, 36, 36, 3)
    _write(tmp_path / "img_001_SRF_3_HR.png", hr)
    model = evaluate.make_model("bicubic", 3)
    want = _ref(hr, pipeline.degrade(hr, 3), model, 3)
    for lr_source in ("auto", "degrade"):
        report = evaluate.evaluate(model, tmp_path, 3, lr_source=lr_source)
        assert report["lr_source"] == "degrade" and report["num_images"] == 1
        np.testing.assert_allclose([report["psnr"], report["ssim"]], want, atol=1e-4)
    with pytest.raises(ValueError, match="has no matching LR image .*--lr_source=degrade"):
        evaluate.evaluate(model, tmp_path, 3, lr_source="given")
    # Some HR images with partners and some without: ambiguous under auto, fine under degrade.
    _write(tmp_path / "img_002_SRF_3_HR.png", hr)
    _write(tmp_path / "img_002_SRF_3_LR.png", pipeline.degrade(hr, 3))
    with pytest.raises(ValueError, match="img_001_SRF_3_HR.png has no matching LR image"):
        evaluate.evaluate(model, tmp_path, 3)
    assert evaluate.evaluate(model, tmp_path, 3, lr_source="degrade")["num_images"] == 2


def test_degrade_ignores_given_lr(tmp_path):
    rng = np.random.default_rng(6)
    hr = _smooth_image(rng, 36, 36, 3)
    _write(tmp_path / "p_HR.png", hr)
    _write(tmp_path / "p_LR.png", np.zeros((12, 12, 3), np.uint8))  # wrong on purpose
    model = evaluate.make_model("bicubic", 3)
    report = evaluate.evaluate(model, tmp_path, 3, lr_source="degrade")
    want = _ref(hr, pipeline.degrade(hr, 3), model, 3)
    np.testing.assert_allclose([report["psnr"], report["ssim"]], want, atol=1e-4)
    assert evaluate.evaluate(model, tmp_path, 3)["psnr"] < report["psnr"] - 10  # given: zeros


# --- in-memory sources ----------------------------------------------------------------------------


def test_source_matches_folder(tmp_path):
    """An in-memory Source is scored as the same images in a folder: grey ones (stored R = G = B
    in a Source) as grey; degraded and given LR."""
    rng = np.random.default_rng(7)
    colour, grey = _smooth_image(rng, 40, 38, 3), _smooth_image(rng, 36, 34, 1)
    _write(tmp_path / "colour.png", colour)
    _write(tmp_path / "grey.png", grey)
    for channels in ("rgb", "y"):
        model = _espcn(3 if channels == "rgb" else 1, seed=2)
        from_folder = evaluate.evaluate(model, tmp_path, 2)
        source = data.folder_source(tmp_path)
        from_source = evaluate.evaluate_source(model, source, 2)
        assert from_source["images"] == from_folder["images"]
        assert from_source["data"] == source.name
        grey_row = from_folder["images"][1]
        want = _ref(grey[:36, :34], pipeline.degrade(grey, 2), model, 2, channels)
        np.testing.assert_allclose([grey_row["psnr"], grey_row["ssim"]], want, atol=1e-4)
    # Given LR equal to the degraded LR scores the same (an RGB model: a Y model takes the Y of
    # given colour LR, but degrades the Y of HR).
    model = _espcn(3, seed=2)
    lr = tuple(pipeline.degrade(hr, 2) for hr in source.hr)
    given = data.Source("mem", source.hr, source.names, lr)
    report = evaluate.evaluate_source(model, given, 2)
    assert report["lr_source"] == "given"
    assert report["images"] == evaluate.evaluate_source(model, source, 2)["images"]
    with pytest.raises(ValueError, match="has no LR images"):
        evaluate.evaluate_source(model, source, 2, lr_source="given")


def test_embedded_validation_split():
    """The validation split the trainer scores (built locally, no network): bicubic x3 beats
    nearest neighbour on every photo."""
    source = data.make_source("skimage", split="validation")
    cubic = evaluate.evaluate_source(evaluate.make_model("bicubic", 3), source, 3)

    def nearest(x):
        return jnp.repeat(jnp.repeat(x, 3, axis=1), 3, axis=2)

    near = evaluate.evaluate_source(nearest, source, 3)
    assert cubic["num_images"] == len(source) and cubic["lr_source"] == "degrade"
    for a, b in zip(cubic["images"], near["images"], strict=True):
        assert a["psnr"] > b["psnr"] + 0.5, (a, b)


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
    with pytest.raises(ValueError, match="the model must map"):
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
        _write(d / f"{name}_LR.png", pipeline.degrade(hr, 2))
    (d / "notes.txt").write_text("not an image")
    return d


def test_cli_json(pair_dir):
    proc = run_cli(f"--data_dir={pair_dir}", "--scale=2", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["model"] == "bicubic" and report["scale"] == 2
    assert report["lr_source"] == "given" and report["num_images"] == 2
    assert [row["file"] for row in report["images"]] == ["one_HR.png", "two_HR.png"]
    model = evaluate.make_model("bicubic", 2)
    refs = []
    for name in ("one", "two"):
        hr, lr = (data.load_image(pair_dir / f"{name}_{k}.png") for k in ("HR", "LR"))
        refs.append(_ref(hr, lr, model, 2))
    np.testing.assert_allclose(report["psnr"], np.mean([p for p, _ in refs]), atol=1e-4)
    np.testing.assert_allclose(report["ssim"], np.mean([s for _, s in refs]), atol=1e-6)
    assert proc.stderr.count("notes.txt") == 1  # skipped with one warning


def test_cli_table(pair_dir):
    proc = run_cli(f"--data_dir={pair_dir}", "--scale=2", "--lr_source=degrade", "--channels=1")
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
        (_bad_pair_dir, ["--scale=2"], "p_LR.png is 17x18 but HR image"),
        (_corrupt_dir, ["--scale=2"], "cannot read image"),
        (lambda p: p, ["--source=skimage"], "exactly one of --data_dir and --source"),
        (lambda p: p, ["--channels=2"], "channels must be 1 (Y) or 3 (RGB)"),
        (lambda p: p, ["--model=checkpoint"], "--model=checkpoint needs --checkpoint=RUN_DIR"),
    ],
)
def test_cli_errors_exit_2_with_one_line(tmp_path, make_dir, flags, message):
    data_dir = tmp_path / "missing" if make_dir is None else make_dir(tmp_path)
    proc = run_cli(f"--data_dir={data_dir}", *flags)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr
    assert proc.stdout == ""


# --- bounded compilations: the model on fixed window shapes, bit-identical scores ------------------


@functools.partial(jax.jit, static_argnums=(0, 4, 5))
def _fused_scores(apply, state, hr_HWC, lr_HWC, r, channels):
    """The evaluation as it was before windows: one program per image shape, model and scores
    fused, the model on the whole image. The reference the windowed evaluation must equal bit for
    bit."""
    if channels == "y" and lr_HWC.shape[-1] == 3:
        lr_HWC = evaluate._luma(lr_HWC)
    if channels == "rgb" and lr_HWC.shape[-1] == 1:
        lr_HWC = jnp.repeat(lr_HWC, 3, axis=-1)
    sr = apply(state, lr_HWC[None] / 255.0)
    sr = images.quantize(255.0 * sr[0].astype(jnp.float32))
    sr_y = images.rgb_to_grey(sr) if sr.shape[-1] == 3 and hr_HWC.shape[-1] == 1 else sr
    sr_y = evaluate._luma(sr_y)[..., 0] if sr_y.ndim == 3 else sr_y
    hr_y = metrics.shave(evaluate._luma(hr_HWC)[..., 0], r)
    sr_y = metrics.shave(sr_y, r)
    return metrics.psnr(hr_y, sr_y), metrics.ssim(hr_y, sr_y)


def _fused(hr, lr, model, r, channels):
    apply, state = evaluate.split_model(model)
    with jax.default_matmul_precision("highest"):
        p, s = _fused_scores(apply, state, hr, np.asarray(lr, np.float32), r, channels)
    return float(p), float(s)


SIZES = [(40, 44), (46, 52), (54, 60), (62, 66), (70, 74)]  # LR sides: 5 sizes, 10 axis lengths
WINDOWS = (24, 36)  # -> at most 4 window shapes


@pytest.mark.parametrize(
    "family,fields",
    [("lr", {}), ("hr", {"kernel_sizes": (5, 3)}), ("deconv", {}), ("lr", {"residual": True})],
)
def test_windows_bound_compilations_and_scores_are_bit_identical(family, fields):
    """N images of N sizes compile the network at most len(WINDOWS)^2 times; every score equals
    the whole-image fused evaluation's exactly; the scoring program holds no model, so a second
    architecture compiles no new scoring program."""
    r = 2
    cfg = models.ModelConfig(
        family=family, scale=r, depth=2, widths=(5,), activation="tanh", **fields
    )
    model = models.model_from_config(cfg, rngs=nnx.Rngs(3))
    rng = np.random.default_rng(11)
    hrs = [_smooth_image(rng, 2 * h, 2 * w, 1) for h, w in SIZES]
    lrs = [np.asarray(evaluate.make_lr(hr, r, "y", True)) for hr in hrs]
    for hr in hrs:  # every image's scoring program, compiled before the count starts
        evaluate.evaluate_image(hr, evaluate.make_lr(hr, r, "y", True), _nearest, r, "y")
    networks, scorers = evaluate._super_resolve._cache_size(), evaluate._score._cache_size()
    got = [
        evaluate.evaluate_image(h, lo, model, r, windows=WINDOWS)
        for h, lo in zip(hrs, lrs, strict=True)
    ]
    compiled = evaluate._super_resolve._cache_size() - networks
    assert 1 <= compiled <= len(WINDOWS) ** 2 < len(SIZES)
    assert evaluate._score._cache_size() == scorers
    want = [_fused(h, lo, model, r, "y") for h, lo in zip(hrs, lrs, strict=True)]
    assert got == want  # bit for bit
    whole = [
        evaluate.evaluate_image(h, lo, model, r, windows=None)
        for h, lo in zip(hrs, lrs, strict=True)
    ]
    assert whole == want


def test_bicubic_and_rgb_windows_are_bit_identical():
    """Bicubic (radius 2) and an RGB net on colour and grey images: windowed == fused whole."""
    r = 3
    rng = np.random.default_rng(12)
    net = models.model_from_config(
        models.ModelConfig.espcn(scale=r, channels=3, widths=(6, 4)), rngs=nnx.Rngs(0)
    )
    for c, (h, w) in [(3, (40, 47)), (1, (44, 38))]:
        hr = _smooth_image(rng, r * h, r * w, c)
        for model, channels in [(evaluate.bicubic_model(r), "y"), (net, "rgb")]:
            lr = np.asarray(evaluate.make_lr(hr, r, channels, True))
            got = evaluate.evaluate_image(hr, lr, model, r, channels, windows=(16, 24))
            assert got == _fused(hr, lr, model, r, channels)


@pytest.mark.parametrize("n", [7, 23, 24, 25, 40, 99, 300])
def test_window_tile_picks_a_fixed_side(n):
    tile = tiling.window_tile(n, 4, evaluate.WINDOWS)
    if tile is None:
        assert n < min(evaluate.WINDOWS)
        return
    sides = {stop - start for *_, start, stop in tiling.windows(n, tile, 4)}
    assert sides <= set(evaluate.WINDOWS) | {n} and len(sides) == 1


# --- float32 evaluation of bfloat16 models ------------------------------------------------------


def test_bfloat16_checkpoint_evaluates_as_the_float32_model(tmp_path):
    """A run trained with dtype=bfloat16 is scored exactly as the same parameters in a float32
    network (and not as its bfloat16 computation, which gives other pixels)."""
    from _train_child import ROOT

    from espcn_jax import training

    spec = importlib.util.spec_from_file_location("cfg", ROOT / "experiments/configs/espcn.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config("smoke")  # trains on the embedded photos
    config.model.dtype = "bfloat16"
    config.train.steps, config.eval.sets = 2, ""
    training.train_and_evaluate(config, tmp_path)
    model, _ = training.restore(tmp_path)
    assert model.config.dtype == "bfloat16"
    f32 = models.model_from_config(
        models.ModelConfig(**{**vars(model.config), "dtype": None}), rngs=nnx.Rngs(9)
    )
    nnx.update(f32, nnx.state(model))
    rng = np.random.default_rng(13)
    hr = [_smooth_image(rng, 48, 51, 3), np.repeat(_smooth_image(rng, 42, 45, 1), 3, axis=-1)]
    source = data.Source("two", hr, ["a.png", "b.png"], None)
    got, want = evaluate.evaluate_source(model, source, 3), evaluate.evaluate_source(f32, source, 3)
    assert got["per_image"] == want["per_image"] and got["psnr"] == want["psnr"]
    lr = jnp.asarray(evaluate.make_lr(hr[0][:48, :51], 3, "y", True))[None] / 255.0
    with jax.default_matmul_precision("highest"):
        assert model(lr).dtype == jnp.bfloat16
        assert not np.array_equal(np.asarray(model(lr), np.float32), np.asarray(f32(lr)))
