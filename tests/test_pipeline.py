"""Patch sampling options and host placement of data preparation.

References are independent of the sampler: per-image frequencies over many steps against counts
of valid (and, with ``min_std``, non-flat) positions made here by brute force with NumPy; the
standard deviation of each returned LR patch; device placement read off the arrays JAX returns.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import numpy as np
import pytest

from espcn_jax import data, pipeline

R, P = 2, 4  # scale and LR patch of these tests


def _source(shapes, flat_rows=0, seed=0):
    """Random RGB HR images of ``shapes``; the top ``flat_rows`` HR rows of each are constant."""
    rng = np.random.default_rng(seed)
    images = []
    for h, w in shapes:
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        image[:flat_rows] = 128
        images.append(image)
    return data.Source("test", tuple(images), tuple(f"im{k}" for k in range(len(shapes))))


def _image_counts(sampler, steps):
    rows = np.concatenate([sampler.locate(s) for s in range(steps)])
    return np.bincount(rows[:, 0], minlength=len(sampler.lr)), rows


def _assert_frequencies(counts, weights):
    """Counts agree with a multinomial of ``weights`` within 4.5 standard deviations."""
    n, p = counts.sum(), np.asarray(weights, float) / np.sum(weights)
    sigma = np.sqrt(n * p * (1 - p))
    assert np.all(np.abs(counts - n * p) <= 4.5 * sigma + 1), (counts, n * p)


SHAPES = [(24, 24), (60, 90), (120, 40), (30, 200)]


def test_pixel_balance_follows_valid_positions():
    sampler = pipeline.PatchSampler(_source(SHAPES), scale=R, patch=P, batch_size=32, seed=0,
                                    balance="pixels")  # fmt: skip
    counts, _ = _image_counts(sampler, 300)
    positions = [(h // R - P + 1) * (w // R - P + 1) for h, w in SHAPES]
    _assert_frequencies(counts, positions)


def test_image_balance_gives_every_image_the_same_share():
    sampler = pipeline.PatchSampler(_source(SHAPES), scale=R, patch=P, batch_size=32, seed=0,
                                    balance="images")  # fmt: skip
    counts, rows = _image_counts(sampler, 300)
    _assert_frequencies(counts, [1] * len(SHAPES))
    for k, (h, w) in enumerate(SHAPES):  # corners still cover each image's valid range
        mine = rows[rows[:, 0] == k]
        assert mine[:, 1].min() == 0 and mine[:, 1].max() == h // R - P
        assert mine[:, 2].min() == 0 and mine[:, 2].max() == w // R - P


def _non_flat_positions(lr_y: np.ndarray, min_std: float) -> int:
    h, w = lr_y.shape[:2]
    return sum(
        np.std(lr_y[i : i + P, j : j + P].astype(np.float64)) >= min_std
        for i in range(h - P + 1)
        for j in range(w - P + 1)
    )


@pytest.mark.parametrize("balance", ["pixels", "images"])
def test_min_std_rejects_flat_patches(balance, caplog):
    """``pixels``: uniform over the accepted patches; ``images``: uniform over the images that have
    one. An image with none (the first: all flat) is skipped with a warning."""
    min_std = 3.0
    shapes = [(40, 40), (60, 90), (70, 50), (100, 60)]
    flat_rows = 50  # the top 25 LR rows of each image are constant
    with caplog.at_level(logging.WARNING, logger="espcn_jax.pipeline"):
        sampler = pipeline.PatchSampler(_source(shapes, flat_rows), scale=R, patch=P,
                                        batch_size=16, seed=1, balance=balance,
                                        min_std=min_std)  # fmt: skip
    assert any("skipping image im0: no LR patch" in r.getMessage() for r in caplog.records)
    for step in range(20):
        lr = sampler.batch(step)["lr"] * 255.0
        stds = lr.reshape(lr.shape[0], -1).std(axis=1)
        assert np.all(stds >= min_std - 1e-3), stds
    counts, rows = _image_counts(sampler, 200)
    non_flat = [_non_flat_positions(lr, min_std) for lr in sampler.lr]
    assert non_flat[0] == 0 and min(non_flat[1:]) > 0
    _assert_frequencies(counts, non_flat if balance == "pixels" else [0, 1, 1, 1])
    # Within an image, every non-flat corner is reachable and no flat one is drawn.
    rows = rows[rows[:, 0] == 3]
    assert rows[:, 1].min() >= 25 - P + 1 and rows[:, 1].max() == 50 - P
    # Without the option, flat patches are drawn: the checks above can fail.
    plain = pipeline.PatchSampler(_source(shapes, flat_rows), scale=R, patch=P, batch_size=16,
                                  seed=1, balance=balance)  # fmt: skip
    lr = plain.batch(0)["lr"] * 255.0
    assert np.any(lr.reshape(lr.shape[0], -1).std(axis=1) < min_std)


def test_options_keep_batches_a_pure_function_of_seed_and_step():
    kwargs = dict(scale=R, patch=P, batch_size=8, balance="images", min_std=3.0)
    a = pipeline.PatchSampler(_source(SHAPES, 30), seed=4, **kwargs)
    b = pipeline.PatchSampler(_source(SHAPES, 30), seed=4, **kwargs)
    first = a.batch(9)
    a.batch(3)
    for other in (b.batch(9), a.batch(9)):
        np.testing.assert_array_equal(first["hr"], other["hr"])
    assert not np.array_equal(first["hr"], a.batch(10)["hr"])


def test_too_flat_for_min_std_raises():
    flat = data.Source("flat", (np.full((40, 40, 3), 7, np.uint8),), ("flat",))
    with pytest.raises(ValueError, match="min_std=1.0 leaves no LR patch of 'flat'"):
        pipeline.PatchSampler(flat, scale=R, patch=P, batch_size=2, seed=0, min_std=1.0)


def test_small_images_are_skipped_with_a_warning(caplog):
    source = _source([(60, 60), (7, 100), (100, 7)])
    with caplog.at_level(logging.WARNING, logger="espcn_jax.pipeline"):
        sampler = pipeline.PatchSampler(source, scale=R, patch=P, batch_size=4, seed=0)
    assert sampler.names == ("im0",)
    skipped = [r.getMessage() for r in caplog.records if "skipping" in r.getMessage()]
    assert len(skipped) == 2 and "im1 (100x7)" in skipped[0] and "im2 (7x100)" in skipped[1]
    counts, _ = _image_counts(sampler, 5)
    assert counts.tolist() == [20]


def test_no_image_large_enough_names_the_patch_and_the_largest():
    source = _source([(5, 30), (7, 100), (6, 6)])  # LR 2, 3 and 3 rows: none fits 4
    with pytest.raises(ValueError, match=r"HR patch 8x8 \(LR patch 4, scale 2\).* im1, is 100x7$"):
        pipeline.PatchSampler(source, scale=R, patch=P, batch_size=4, seed=0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(balance="uniform"), "balance must be one of .* got 'uniform'"),
        (dict(min_std=-1), r"min_std must be a number in \[0, 128\) .* got -1"),
        (dict(min_std="high"), "min_std must be .* got 'high'"),
        (
            dict(rescales=(0.8, 1.2)),
            r"rescales must be distinct numbers in \(0, 1\), got \(0.8, 1.2\)",
        ),
        (dict(rescales=(0.5, 0.5)), "rescales must be distinct"),
        (dict(rescales=("half",)), r"rescales must be .* got \('half',\)"),
    ],
)
def test_option_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        pipeline.PatchSampler(_source(SHAPES), scale=R, patch=P, batch_size=2, seed=0, **kwargs)


def test_rescales_add_shrunk_copies_of_every_image():
    """Each image is followed by its copies at each factor, ceil(H * s) x ceil(W * s) (MATLAB's
    size rule), mod-cropped; too-small copies are skipped like any small image."""
    shapes = [(60, 90), (30, 200)]
    plain = pipeline.PatchSampler(_source(shapes), scale=R, patch=P, batch_size=2, seed=0)
    sampler = pipeline.PatchSampler(
        _source(shapes), scale=R, patch=P, batch_size=2, seed=0, rescales=(0.75, 0.2)
    )
    assert sampler.names == ("im0", "im0@0.75", "im0@0.2", "im1", "im1@0.75")  # im1@0.2: 6 rows
    np.testing.assert_array_equal(sampler.hr[0], plain.hr[0])
    np.testing.assert_array_equal(sampler.hr[3], plain.hr[1])
    assert [hr.shape[:2] for hr in sampler.hr] == [
        (60, 90),
        (44, 68),
        (12, 18),
        (30, 200),
        (22, 150),
    ]
    assert all(lr.shape[:2] == (hr.shape[0] // R, hr.shape[1] // R)
               for lr, hr in zip(sampler.lr, sampler.hr, strict=True))  # fmt: skip
    counts, _ = _image_counts(sampler, 400)
    assert counts.min() > 0  # every copy is drawn


HOST_SCRIPT = """
import jax, numpy as np
from espcn_jax import bicubic, data, pipeline
cpu0, cpu1 = jax.devices("cpu")
jax.config.update("jax_default_device", cpu1)
seen = []
def spy(fn):
    def wrapped(*args):
        out = fn(*args)
        seen.append(out.devices())
        return out
    return wrapped
pipeline._downscale_uint8 = spy(pipeline._downscale_uint8)
pipeline._rgb_to_y_jit = spy(pipeline._rgb_to_y_jit)
hr = np.random.default_rng(0).integers(0, 256, (30, 36, 3), dtype=np.uint8)
lr = pipeline.degrade(hr, 3)
y = pipeline.rgb_to_y(hr)
assert seen and all(d == {cpu0} for d in seen), seen
assert jax.numpy.zeros(2).devices() == {cpu1}  # the default device is still the second one
want = np.asarray(bicubic.downscale(hr[None], 3, border="edge", round_passes=True)[0])
np.testing.assert_array_equal(lr, want.astype(np.uint8))
source = data.Source("r", (hr,), ("r",))
batch = pipeline.PatchSampler(source, scale=3, patch=4, batch_size=2, seed=0).batch(0)
print("ok")
"""


def test_data_preparation_runs_on_the_host_cpu():
    """With another default device (here a second host device), LR making and Y conversion still
    run on the first CPU device: the arrays they compute are committed there."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
               JAX_PLATFORMS="cpu")  # fmt: skip
    result = subprocess.run([sys.executable, "-c", HOST_SCRIPT], env=env, capture_output=True,
                            text=True)  # fmt: skip
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]
