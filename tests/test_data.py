"""Data sources and training batches: offline TFDS build, folder reader errors, aligned patches.

References are independent of the code under test: skimage.io / PIL decodes, exact integer
arithmetic and skimage.color for Y, the dihedral group written here with transposes and flips, the
supplied MATLAB LR images of Set5 (found by tests/_set5.py: ``$ESPCN_SET5_DIR`` or
../shared/data/Set5; those tests skip without it).
"""

from __future__ import annotations

import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import jax
import numpy as np
import pytest
import skimage.io
from _set5 import set5_scale_dir
from PIL import Image

from espcn_jax import bicubic, data, pipeline, skimage_photos

# --- helpers ---------------------------------------------------------------------------------------


def _forbid_network(mp: pytest.MonkeyPatch, attempts: list) -> None:
    """Makes every socket connection, TFDS download and GCS lookup fail loudly and be recorded."""

    def refuse(what):
        def f(*args, **kwargs):
            attempts.append(what)
            raise AssertionError(f"network access attempted: {what}")

        return f

    mp.setattr(socket.socket, "connect", refuse("socket.connect"))
    mp.setattr(socket, "create_connection", refuse("socket.create_connection"))
    mp.setattr(socket, "getaddrinfo", refuse("socket.getaddrinfo"))
    mp.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    mp.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core.utils import gcs_utils

    for name in ("download", "download_and_extract", "download_kaggle_data"):
        mp.setattr(tfds.download.DownloadManager, name, refuse(f"DownloadManager.{name}"))
    for name in ("is_dataset_on_gcs", "download_gcs_dataset", "gcs_listdir", "exists"):
        mp.setattr(gcs_utils, name, refuse(f"gcs_utils.{name}"))


def _dihedral_group(x_HWC: np.ndarray) -> list[np.ndarray]:
    """The 8 symmetries of the square as (transpose?) x (flip rows?) x (flip columns?)."""
    out = []
    for y in (x_HWC, x_HWC.transpose(1, 0, 2)):
        for rows in (1, -1):
            for cols in (1, -1):
                out.append(y[::rows, ::cols])
    return out


def _find(image_HWC: np.ndarray, patch_HWC: np.ndarray) -> list[tuple[int, int]]:
    """Every ``(y, x)`` with ``image[y:y+h, x:x+w] == patch``."""
    h, w = patch_HWC.shape[:2]
    first = np.all(
        image_HWC[: image_HWC.shape[0] - h + 1, : image_HWC.shape[1] - w + 1] == patch_HWC[0, 0],
        axis=-1,
    )
    return [
        (y, x)
        for y, x in np.argwhere(first)
        if np.array_equal(image_HWC[y : y + h, x : x + w], patch_HWC)
    ]


def _matlab_y(rgb: np.ndarray) -> np.ndarray:
    """``round(16 + (65.481 R + 128.553 G + 24.966 B) / 255)`` in exact integers, half rounded up."""
    red, green, blue = np.moveaxis(rgb.astype(np.int64), -1, 0)
    n = 65481 * red + 128553 * green + 24966 * blue
    return (16 * 255000 + n + 127500) // 255000


def _to_uint8(x: np.ndarray) -> np.ndarray:
    """Batch floats back to their uint8 levels (they are exactly k/255 in float32)."""
    levels = np.round(np.asarray(x, np.float64) * 255.0)
    assert np.allclose(levels, np.asarray(x, np.float64) * 255.0, atol=1e-4)
    return levels.astype(np.uint8)


def _random_source(seed: int = 0) -> data.Source:
    """A colour image and a grey one (odd sizes, so mod-crop matters), uniform noise."""
    rng = np.random.default_rng(seed)
    colour = rng.integers(0, 256, (40, 47, 3), dtype=np.uint8)
    grey = rng.integers(0, 256, (34, 38, 1), dtype=np.uint8)
    return data.Source("random", (colour, data.as_rgb(grey)), ("colour", "grey"))


def _write(path: Path, array: np.ndarray, **kwargs) -> Path:
    Image.fromarray(array.squeeze() if array.shape[-1] == 1 else array).save(path, **kwargs)
    return path


# --- scikit-image photos through TFDS --------------------------------------------------------------


def test_split_is_fixed_disjoint_and_bundled():
    assert skimage_photos.VALIDATION == ("chelsea", "coins", "gravel")
    assert set(skimage_photos.TRAIN).isdisjoint(skimage_photos.VALIDATION)
    assert set(skimage_photos.TRAIN) | set(skimage_photos.VALIDATION) == set(skimage_photos.PHOTOS)
    assert len(skimage_photos.TRAIN) == 14
    for name in skimage_photos.PHOTOS:
        assert skimage_photos.photo_path(name).is_file(), name


@pytest.fixture(scope="module")
def skimage_tfds_dir(tmp_path_factory):
    """The skimage_photos TFDS data, built with every network path refusing and recording."""
    data_dir = tmp_path_factory.mktemp("tfds")
    attempts: list = []
    with pytest.MonkeyPatch.context() as mp:
        _forbid_network(mp, attempts)
        skimage_photos.prepare(data_dir)
    assert attempts == []
    return data_dir


def test_first_build_prints_nothing_and_restores_logging(tmp_path, capfd):
    """TFDS prints "Downloading and preparing dataset ..." to stdout, where a driver's JSON goes;
    the build must keep stdout clean and leave logging and TFDS's progress bars as it found them."""
    from tensorflow_datasets.core.utils import tqdm_utils

    loggers = [logging.getLogger(name) for name in ("absl", "tensorflow")] + [logging.root]
    before = [lg.level for lg in loggers], tqdm_utils._active
    capfd.readouterr()
    builder = skimage_photos.prepare(tmp_path)
    out, _ = capfd.readouterr()
    assert builder.is_prepared()
    assert out == ""
    assert ([lg.level for lg in loggers], tqdm_utils._active) == before


def test_processes_building_the_set_at_once_all_succeed(tmp_path):
    """Two first runs starting together (a study's parallel workers, two probes) build the set
    once: the second waits on the build lock and finds it prepared (they used to race in TFDS's
    final rename: FileExistsError)."""
    code = (
        "import sys; from espcn_jax import skimage_photos; "
        "b = skimage_photos.prepare(sys.argv[1]); print(b.info.splits['train'].num_examples)"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(tmp_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-2000:]
        assert out.strip() == str(len(skimage_photos.TRAIN))


@pytest.mark.parametrize("split", ["train", "validation"])
def test_skimage_source_is_offline_and_equals_the_bundled_files(skimage_tfds_dir, split):
    attempts: list = []
    with pytest.MonkeyPatch.context() as mp:
        _forbid_network(mp, attempts)
        source = data.make_source("skimage", split=split, data_dir=skimage_tfds_dir)
    assert attempts == []
    assert source.names == tuple(sorted(skimage_photos.SPLITS[split]))
    assert source.lr is None
    for name, hr in zip(source.names, source.hr, strict=True):
        expected = skimage.io.imread(skimage_photos.photo_path(name))
        if expected.ndim == 2:
            expected = np.stack([expected] * 3, axis=-1)
        np.testing.assert_array_equal(hr, expected, err_msg=name)


def test_catalog_path_reads_the_local_builder(skimage_tfds_dir):
    """``tfds:NAME`` (the path that serves div2k) finds the same prepared data."""
    via_catalog = data.make_source(
        "tfds:skimage_photos", split="validation", data_dir=skimage_tfds_dir
    )
    direct = data.make_source("skimage", split="validation", data_dir=skimage_tfds_dir)
    assert via_catalog.names == direct.names
    for a, b in zip(via_catalog.hr, direct.hr, strict=True):
        np.testing.assert_array_equal(a, b)


def test_catalog_data_not_on_disk_is_an_error_without_download(tmp_path):
    attempts: list = []
    with pytest.MonkeyPatch.context() as mp:
        _forbid_network(mp, attempts)
        with pytest.raises(ValueError, match=r"div2k/bicubic_x3.*not prepared"):
            data.make_source("tfds:div2k/bicubic_x3", data_dir=tmp_path)
        with pytest.raises(ValueError, match="no_such_data_set"):
            data.make_source("tfds:no_such_data_set", data_dir=tmp_path)
    assert attempts == []


@pytest.mark.parametrize("name", ["imagenet", "skimage:x", "tfds:", "Folder"])
def test_unknown_source_names_it_and_lists_known(name):
    with pytest.raises(ValueError, match=rf"unknown data source '{name}'.*skimage.*folder.*tfds"):
        data.make_source(name)


def test_source_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="needs a directory"):
        data.make_source("folder")
    with pytest.raises(ValueError, match="single split"):
        data.make_source("folder", path=tmp_path, split="train")
    with pytest.raises(ValueError, match="path is only for folder"):
        data.make_source("skimage", path=tmp_path)
    with pytest.raises(ValueError, match="split 'test' not in"):
        data.tfds_source(skimage_photos.SkimagePhotos(data_dir=str(tmp_path)), "test")


# --- folders ---------------------------------------------------------------------------------------


def test_folder_reads_grey_colour_png_bmp_jpg_and_skips_other_files(tmp_path, caplog):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    grey = rng.integers(0, 256, (25, 15, 1), dtype=np.uint8)
    rgba = np.concatenate([rgb, np.full((20, 30, 1), 7, np.uint8)], axis=-1)
    _write(tmp_path / "a.png", rgb)
    _write(tmp_path / "b.BMP", grey)
    _write(tmp_path / "c.jpg", rgb, quality=95)
    _write(tmp_path / "d.png", rgba)
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE).save(tmp_path / "e.png")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / ".hidden.png").write_bytes(b"junk")
    (tmp_path / "sub").mkdir()
    with caplog.at_level(logging.WARNING):
        paths = data.list_images(tmp_path)
    assert [p.name for p in paths] == ["a.png", "b.BMP", "c.jpg", "d.png", "e.png"]
    assert "notes.txt" in caplog.text and ".hidden" not in caplog.text

    np.testing.assert_array_equal(data.load_image(paths[0]), rgb)
    np.testing.assert_array_equal(data.load_image(paths[1]), grey)
    np.testing.assert_array_equal(data.load_image(paths[2]), skimage.io.imread(paths[2]))
    np.testing.assert_array_equal(data.load_image(paths[3]), rgb)
    np.testing.assert_array_equal(data.load_image(paths[4]), skimage.io.imread(paths[4])[..., :3])

    source = data.make_source(f"folder:{tmp_path}")
    assert source.names == tuple(str(p) for p in paths) and source.lr is None
    np.testing.assert_array_equal(source.hr[1], np.concatenate([grey] * 3, axis=-1))


def test_folder_errors_name_the_file_or_directory(tmp_path):
    with pytest.raises(ValueError, match=f"directory not found: {tmp_path / 'missing'}"):
        data.list_images(tmp_path / "missing")
    (tmp_path / "readme.md").write_text("x")
    with pytest.raises(ValueError, match=f"no image files.*in {tmp_path}"):
        data.list_images(tmp_path)
    with pytest.raises(ValueError, match=f"not a directory: {tmp_path / 'readme.md'}"):
        data.list_images(tmp_path / "readme.md")

    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(ValueError, match=f"cannot read image {corrupt}"):
        data.make_source("folder", path=tmp_path)

    good = _write(tmp_path / "good.png", np.zeros((64, 64, 3), np.uint8))
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:-40])
    corrupt.unlink()
    with pytest.raises(ValueError, match=f"cannot read image {truncated}"):
        data.make_source("folder", path=tmp_path)

    sixteen = tmp_path / "deep.png"
    Image.fromarray(np.zeros((8, 8), np.uint16)).save(sixteen)
    with pytest.raises(ValueError, match=f"image {sixteen} has unsupported mode"):
        data.load_image(sixteen)


def test_image_smaller_than_the_crop_is_named(tmp_path):
    _write(tmp_path / "big.png", np.zeros((60, 60, 3), np.uint8))
    _write(tmp_path / "small.png", np.zeros((50, 70, 3), np.uint8))
    source = data.make_source("folder", path=tmp_path)
    pipeline.PatchSampler(source, scale=3, patch=16, batch_size=2, seed=0)  # 48 <= 50: fits
    # 51 > 50: small.png is skipped (tests/test_pipeline.py); 63 > 60: no image fits.
    largest = re.escape(f"the largest, {tmp_path / 'big.png'}, is 60x60")
    with pytest.raises(ValueError, match=rf"HR patch 63x63 \(LR patch 21, scale 3\): {largest}"):
        pipeline.PatchSampler(source, scale=3, patch=21, batch_size=2, seed=0)


def test_pairs_layout_and_its_errors(tmp_path, caplog):
    rng = np.random.default_rng(2)
    hr = rng.integers(0, 256, (30, 36, 3), dtype=np.uint8)
    lr = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)
    _write(tmp_path / "img_2_SRF_3_HR.png", hr)
    _write(tmp_path / "img_2_SRF_3_LR.png", lr)
    _write(tmp_path / "img_1_SRF_3_HR.png", hr[:27])
    _write(tmp_path / "img_1_SRF_3_LR.png", lr)
    pairs = data.find_pairs(tmp_path)
    assert [(h.name, lo.name) for h, lo in pairs] == [
        ("img_1_SRF_3_HR.png", "img_1_SRF_3_LR.png"),
        ("img_2_SRF_3_HR.png", "img_2_SRF_3_LR.png"),
    ]
    (tmp_path / "readme.txt").write_text("not an image")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        source = data.make_source("folder", path=tmp_path)
    skipped = [rec for rec in caplog.records if "readme.txt" in rec.getMessage()]
    assert len(skipped) == 1, caplog.text  # one warning per file, though pairs list the folder
    np.testing.assert_array_equal(source.lr[1], lr)
    with pytest.raises(
        ValueError, match=r"LR image of .*img_1_SRF_3_HR.png is 12x10, expected 1/3"
    ):
        pipeline.PatchSampler(source, scale=3, patch=4, batch_size=2, seed=0)

    _write(tmp_path / "img_3_HR.png", hr)
    with pytest.raises(ValueError, match=f"{tmp_path / 'img_3_HR.png'} has no matching LR"):
        data.find_pairs(tmp_path)
    (tmp_path / "img_3_HR.png").unlink()
    _write(tmp_path / "plain.png", hr)
    with pytest.raises(ValueError, match=f"{tmp_path / 'plain.png'} is neither"):
        data.make_source("folder", path=tmp_path)


@pytest.mark.parametrize(("r", "shape"), [(2, (37, 70)), (3, (100, 131)), (4, (9, 203))])
def test_degrade_equals_the_unpadded_matlab_downscale(r, shape):
    """degrade edge-pads to a few compiled shapes; the LR image must not change."""
    hr = np.random.default_rng(r).integers(0, 256, (*shape, 3), dtype=np.uint8)
    cropped = hr[: shape[0] // r * r, : shape[1] // r * r]
    expected = bicubic.downscale(cropped[None], r, border="edge", round_passes=True)[0]
    np.testing.assert_array_equal(pipeline.degrade(hr, r), np.asarray(expected).astype(np.uint8))


@pytest.mark.parametrize("r", [2, 3, 4])
def test_degrade_reproduces_the_supplied_matlab_lr_images(r):
    for hr_path, lr_path in data.find_pairs(set5_scale_dir(r)):
        hr, lr = data.as_rgb(data.load_image(hr_path)), data.as_rgb(data.load_image(lr_path))
        np.testing.assert_array_equal(pipeline.degrade(hr, r), lr, err_msg=str(hr_path))


# --- training batches ------------------------------------------------------------------------------


@pytest.mark.parametrize("color", ["y", "rgb"])
def test_patches_are_aligned_crops_under_one_dihedral_transform(color):
    r, p = 3, 4
    source = _random_source()
    sampler = pipeline.PatchSampler(source, scale=r, patch=p, batch_size=16, seed=7, color=color)
    hr_images, lr_images = [], []
    for hr in source.hr:  # the protocol, written out here: mod-crop, MATLAB downscale, then Y
        hr = hr[: hr.shape[0] // r * r, : hr.shape[1] // r * r]
        lr = np.asarray(bicubic.downscale(hr[None], r, round_passes=True)[0]).astype(np.uint8)
        if color == "y":
            hr, lr = (_matlab_y(x)[..., None].astype(np.uint8) for x in (hr, lr))
        hr_images.append(hr)
        lr_images.append(lr)

    seen_transforms = set()
    for step in range(6):
        batch = sampler.batch(step)
        for lr_patch, hr_patch in zip(_to_uint8(batch["lr"]), _to_uint8(batch["hr"]), strict=True):
            matches = [
                (k, g, y, x)
                for k, hr_image in enumerate(hr_images)
                for g, candidate in enumerate(_dihedral_group(hr_patch))
                for y, x in _find(hr_image, candidate)
            ]
            assert len(matches) >= 1
            k, g, y, x = matches[0]
            assert y % r == 0 and x % r == 0, "HR patch not on the LR grid"
            lr_original = _dihedral_group(lr_patch)[g]
            np.testing.assert_array_equal(
                lr_original, lr_images[k][y // r : y // r + p, x // r : x // r + p]
            )
            seen_transforms.add(g)
    assert seen_transforms == set(range(8))


def test_without_augment_patches_are_untransformed():
    sampler = pipeline.PatchSampler(
        _random_source(), scale=2, patch=5, batch_size=8, seed=0, color="rgb", augment=False
    )
    images = [hr[: hr.shape[0] // 2 * 2, : hr.shape[1] // 2 * 2] for hr in _random_source().hr]
    for hr_patch in _to_uint8(sampler.batch(3)["hr"]):
        assert any(_find(image, hr_patch) for image in images)


@pytest.mark.parametrize(("color", "channels"), [("y", 1), ("rgb", 3)])
def test_batch_shapes_dtypes_and_ranges(color, channels):
    sampler = pipeline.PatchSampler(
        _random_source(), scale=4, patch=6, batch_size=5, seed=1, color=color
    )
    batch = sampler.batch(0)
    assert batch["lr"].shape == (5, 6, 6, channels) and batch["hr"].shape == (5, 24, 24, channels)
    for x in batch.values():
        assert x.dtype == np.float32
        lo, hi = (16 / 255, 235 / 255) if color == "y" else (0.0, 1.0)
        assert lo - 1e-6 <= x.min() and x.max() <= hi + 1e-6


def test_grey_images_give_equal_rgb_channels_and_their_y():
    rng = np.random.default_rng(4)
    grey = rng.integers(0, 256, (30, 30, 1), dtype=np.uint8)
    source = data.Source("grey", (data.as_rgb(grey),), ("grey",))
    rgb = pipeline.PatchSampler(source, scale=2, patch=6, batch_size=4, seed=0, color="rgb")
    hr = _to_uint8(rgb.batch(0)["hr"])
    assert np.array_equal(hr[..., 0], hr[..., 1]) and np.array_equal(hr[..., 0], hr[..., 2])
    y = pipeline.PatchSampler(source, scale=2, patch=6, batch_size=4, seed=0, color="y")
    y_hr = _to_uint8(y.batch(0)["hr"])[..., 0].astype(np.int64)
    g = hr[..., 0].astype(np.int64)
    np.testing.assert_array_equal(y_hr, (16 * 255 + 219 * g + 127) // 255)  # 16 + 219 g / 255


def test_batches_are_a_pure_function_of_seed_and_step():
    kwargs = dict(scale=3, patch=4, batch_size=6, color="y")
    a = pipeline.PatchSampler(_random_source(), seed=11, **kwargs)
    b = pipeline.PatchSampler(_random_source(), seed=11, **kwargs)
    first = a.batch(7)
    a.batch(2)
    for other in (b.batch(7), a.batch(7)):
        for key in ("lr", "hr"):
            np.testing.assert_array_equal(first[key], other[key])
    c = pipeline.PatchSampler(_random_source(), seed=12, **kwargs)
    assert not np.array_equal(first["hr"], c.batch(7)["hr"])
    assert not np.array_equal(first["hr"], a.batch(8)["hr"])


def test_resumed_device_batches_equal_uninterrupted_ones():
    sampler = pipeline.PatchSampler(_random_source(), scale=3, patch=4, batch_size=4, seed=5)
    full = list(pipeline.device_batches(sampler, start_step=0, num_steps=10))
    resumed = list(pipeline.device_batches(sampler, start_step=5, num_steps=5))
    assert len(full) == 10 and len(resumed) == 5
    for step, (x, y) in enumerate(zip(full[5:], resumed, strict=True), start=5):
        direct = sampler.batch(step)
        for key in ("lr", "hr"):
            assert isinstance(y[key], jax.Array)
            np.testing.assert_array_equal(np.asarray(x[key]), np.asarray(y[key]))
            np.testing.assert_array_equal(np.asarray(y[key]), direct[key])


MULTI_DEVICE_SCRIPT = """
import jax, numpy as np
from espcn_jax import data, pipeline
assert jax.device_count() == 4, jax.devices()
rng = np.random.default_rng(0)
source = data.Source("r", (rng.integers(0, 256, (30, 33, 3), dtype=np.uint8),), ("r",))
sampler = pipeline.PatchSampler(source, scale=2, patch=4, batch_size=8, seed=3)
mesh = jax.make_mesh((4,), ("data",))
sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
for step, batch in enumerate(pipeline.device_batches(sampler, num_steps=3, sharding=sharding)):
    expected = sampler.batch(step)["hr"]
    shards = batch["hr"].addressable_shards
    assert len({s.device for s in shards}) == 4
    for s in shards:
        assert s.data.shape[0] == 2
        np.testing.assert_array_equal(np.asarray(s.data), expected[s.index])
print("ok")
"""


def test_batches_shard_over_a_data_axis_of_four_devices():
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu"
    )
    result = subprocess.run(
        [sys.executable, "-c", MULTI_DEVICE_SCRIPT], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


def test_prefetch_keeps_order_and_count():
    batches = [{"x": np.full((2,), k, np.float32)} for k in range(5)]
    out = [int(b["x"][0]) for b in pipeline.prefetch_to_device(batches, size=3)]
    assert out == [0, 1, 2, 3, 4]


def test_prefetch_raises_the_source_error_at_its_batch():
    def batches():
        yield {"x": np.zeros((2,), np.float32)}
        raise OSError("disk gone")

    it = pipeline.prefetch_to_device(batches(), size=2)
    assert float(next(it)["x"][0]) == 0.0
    with pytest.raises(OSError, match="disk gone"):
        next(it)


def test_prefetch_stops_its_thread_when_closed():
    pulled = []

    def endless():
        k = 0
        while True:
            pulled.append(k)
            yield {"x": np.full((1,), k, np.float32)}
            k += 1

    it = pipeline.prefetch_to_device(endless(), size=2)
    assert [int(next(it)["x"][0]) for _ in range(3)] == [0, 1, 2]
    it.close()
    settled = len(pulled)
    time.sleep(0.3)
    assert len(pulled) == settled <= 3 + 2 + 1  # read ahead by the queue, then stopped
    assert not any(t.name == "prefetch_to_device" for t in threading.enumerate())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(color="ycbcr"), "color must be one of"),
        (dict(seed=-1), "seed must be an integer >= 0, got -1"),
        (dict(seed=1.5), "seed must be an integer >= 0, got 1.5"),
        (dict(scale=0), "scale must be an integer >= 1, got 0"),
        (dict(patch=2.0), "patch must be an integer >= 1, got 2.0"),
        (dict(batch_size=0), "batch_size must be an integer >= 1, got 0"),
    ],
)
def test_sampler_argument_errors(kwargs, message):
    args = dict(scale=2, patch=4, batch_size=2, seed=0) | kwargs
    with pytest.raises(ValueError, match=message):
        pipeline.PatchSampler(_random_source(), **args)
