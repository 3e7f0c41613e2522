"""The device sampler against the host sampler (``PatchSampler.batch``, NumPy slicing and
``np.rot90``: the independent reference), bit for bit; the fused train step; the loop's switch.

Multi-device and multi-process cases run in children (tests/_device_sampler_child.py).
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _train_child import kill_at_train_call, smoke_config
from flax import nnx
from PIL import Image

from espcn_jax import data, device_sampler, models, pipeline, training
from espcn_jax.training import config as cfg_lib
from espcn_jax.training import step as step_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHAPES = [(26, 31), (60, 90), (120, 40), (30, 200), (8, 8)]  # the last is too small: skipped


def _source(shapes=SHAPES, seed=0, flat=True):
    """Random RGB HR images whose top third is flat if ``flat`` (``min_std`` rejects patches)."""
    rng = np.random.default_rng(seed)
    images = []
    for h, w in shapes:
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        image[: h // 3 if flat else 0] = 77
        images.append(image)
    return data.Source("test", tuple(images), tuple(f"im{k}" for k in range(len(shapes))))


def _assert_bitwise_equal(device: dict, host: dict) -> None:
    for key in ("lr", "hr"):
        got = np.asarray(device[key])
        assert got.dtype == host[key].dtype == np.float32 and got.shape == host[key].shape, key
        np.testing.assert_array_equal(got.view(np.uint32), host[key].view(np.uint32), err_msg=key)


CASES = [  # scale, patch, color, augment, balance, min_std, rescales
    (2, 4, "y", True, "pixels", 0.0, ()),
    (3, 5, "rgb", True, "images", 0.0, ()),
    (4, 3, "y", False, "images", 20.0, ()),
    (2, 6, "rgb", False, "pixels", 0.0, ()),
    (3, 4, "y", True, "pixels", 12.0, (0.8, 0.6)),
    (4, 5, "rgb", True, "pixels", 10.0, ()),
]


@pytest.mark.parametrize("scale,patch,color,augment,balance,min_std,rescales", CASES)
def test_batches_equal_the_host_samplers_bit_for_bit(
    scale, patch, color, augment, balance, min_std, rescales
):
    sampler = pipeline.PatchSampler(
        _source(), scale=scale, patch=patch, batch_size=24, seed=3, color=color,
        augment=augment, balance=balance, min_std=min_std, rescales=rescales,
    )  # fmt: skip
    feed = device_sampler.DeviceSampler(sampler, step_lib.make_mesh())
    make = jax.jit(feed.make_batch)
    transforms = set()
    for step in (0, 1, 7, 123_456):
        _assert_bitwise_equal(make(feed.inputs(step)), sampler.batch(step))
        transforms |= set(sampler.locate(step)[:, 3].tolist())
    assert transforms == (set(range(8)) if augment else {0})  # every transform was compared
    assert make._cache_size() == 1


def test_every_transform_on_one_image_against_numpy():
    """Each of the 8 transforms at every corner row of one image, against ``np.rot90``/flip."""
    sampler = pipeline.PatchSampler(_source([(30, 33)], flat=False), scale=3, patch=4, batch_size=8, seed=0,
                                    color="rgb")  # fmt: skip
    feed = device_sampler.DeviceSampler(sampler, step_lib.make_mesh())
    lr, hr = sampler.lr[0], sampler.hr[0]
    corners = [(0, 0), (6, 7), (3, 1)]  # the bottom-right valid corner is (6, 7)
    for i, j in corners:
        rows = np.array([[0, i, j, t] for t in range(8)], np.int32)
        got = jax.jit(feed.make_batch)({"images": feed.images, "rows": jnp.asarray(rows)})
        for t in range(8):
            want_lr = np.rot90(lr[i : i + 4, j : j + 4], t % 4)
            want_hr = np.rot90(hr[3 * i : 3 * i + 12, 3 * j : 3 * j + 12], t % 4)
            if t >= 4:
                want_lr, want_hr = want_lr[:, ::-1], want_hr[:, ::-1]
            np.testing.assert_array_equal(np.rint(np.asarray(got["lr"][t]) * 255), want_lr)
            np.testing.assert_array_equal(np.rint(np.asarray(got["hr"][t]) * 255), want_hr)


def test_size_limit_refuses_with_one_line():
    sampler = pipeline.PatchSampler(_source(), scale=2, patch=4, batch_size=4, seed=0)
    nbytes = device_sampler.packed_nbytes(sampler)
    assert nbytes == sum(x.size for x in sampler.lr + sampler.hr)  # uint8, one channel
    with pytest.raises(ValueError, match=r"MiB per device, over the device sampler's limit"):
        device_sampler.DeviceSampler(sampler, step_lib.make_mesh(), max_bytes=nbytes - 1)
    device_sampler.DeviceSampler(sampler, step_lib.make_mesh(), max_bytes=nbytes)


def _tiny_steps(mesh, feed=None):
    cfg = models.ModelConfig(family="lr", scale=2, depth=2, widths=4, activation="relu")
    return step_lib.make_steps(
        cfg, optax.adam(1e-2), seed=0, mesh=mesh,
        batch_fn=None if feed is None else feed.make_batch,
        inputs_sharding=None if feed is None else feed.inputs_sharding,
    )  # fmt: skip


def test_fused_step_equals_the_step_on_host_batches():
    """Same batches -> the same losses; parameters to float rounding (the fused step is another
    XLA program: measured 1 ulp apart after 4 steps). The images are an argument of the step (new
    pixels change the result without a retrace), never re-transferred, never donated."""
    sampler = pipeline.PatchSampler(_source(), scale=2, patch=5, batch_size=8, seed=1)
    mesh = step_lib.make_mesh()
    feed = device_sampler.DeviceSampler(sampler, mesh)
    fused, plain = _tiny_steps(mesh, feed), _tiny_steps(mesh)
    a, b = fused.init(), plain.init()
    for step in range(3):
        inputs = feed.inputs(step)
        with jax.transfer_guard("disallow"):  # images already on the device, committed
            a, metrics_a = fused.train(a, inputs)
        b, metrics_b = plain.train(b, jax.device_put(sampler.batch(step)))
        assert float(metrics_a["loss"]) == float(metrics_b["loss"])
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-8)
    assert not any(x.is_deleted() for x in jax.tree.leaves(feed.images))
    lr = feed.images["lr"]
    other = dict(inputs, images={**feed.images, "lr": {**lr, "pixels": 255 - lr["pixels"]}})
    _, metrics_other = fused.train(fused.init(), other)
    assert float(metrics_other["loss"]) != float(metrics_a["loss"])
    assert fused.train._cache_size() == 1


def test_process_rows_single_process():
    mesh = step_lib.make_mesh()
    assert pipeline.process_rows(step_lib.batch_sharding(mesh), 8) == slice(0, 8)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> pathlib.Path:
    d = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for k in range(3):
        img = rng.integers(0, 256, (48, 45, 3), dtype=np.uint8)
        Image.fromarray(img).save(d / f"img{k}.png")
    return d


def _losses(workdir) -> list[float]:
    rows = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


def _final_params(workdir) -> list[np.ndarray]:
    model, _ = training.restore(workdir)
    return [np.asarray(x) for x in jax.tree.leaves(nnx.state(model))]


@pytest.mark.heavy
def test_training_with_either_sampler_is_the_same_run(data_dir, tmp_path, caplog):
    """The smoke run with each sampler: the same loss curve and parameters to float rounding; a
    run is resumed with the sampler it started with (exact resume); the limit falls back in one
    line."""
    runs = {}  # the smoke config: 8 steps, checkpoints at 4 and 8
    for sampler in ("host", "device"):
        runs[sampler] = tmp_path / sampler
        training.train_and_evaluate(smoke_config(data_dir, **{"data.sampler": sampler}),
                                    runs[sampler])  # fmt: skip
    np.testing.assert_allclose(_losses(runs["host"]), _losses(runs["device"]), rtol=1e-6)
    for x, y in zip(_final_params(runs["host"]), _final_params(runs["device"]), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)

    resumed, config = tmp_path / "resumed", smoke_config(data_dir, **{"data.sampler": "device"})
    kill_at_train_call(3, signal.SIGTERM)
    try:
        with pytest.raises(training.Interrupted, match="SIGTERM at step 3"):
            training.train_and_evaluate(config, resumed)
    finally:
        importlib.reload(step_lib)
    training.train_and_evaluate(config, resumed)  # exact resume: the batch of step s is (seed, s)'s
    for x, y in zip(_final_params(resumed), _final_params(runs["device"]), strict=True):
        np.testing.assert_array_equal(x, y)
    with pytest.raises(ValueError, match="differs in data.sampler"):
        cfg_lib.check_workdir_config(smoke_config(data_dir, **{"data.sampler": "device"}),
                                     runs["host"])  # fmt: skip

    config = smoke_config(data_dir, **{"data.sampler": "device", "data.device_sampler_max_mb": 0.0})
    with caplog.at_level(logging.WARNING):
        training.train_and_evaluate(config, tmp_path / "fallback")
    lines = [r.getMessage() for r in caplog.records if "device_sampler_max_mb" in r.getMessage()]
    assert len(lines) == 1 and "batches come from the host sampler" in lines[0], lines
    assert _losses(tmp_path / "fallback") == _losses(runs["host"])  # the host sampler's step


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("sampler", "gpu", "config.data.sampler must be one of ('host', 'device'), got 'gpu'"),
        ("device_sampler_max_mb", -1.0, "config.data.device_sampler_max_mb must be >= 0, got -1.0"),
    ],
)
def test_config_errors(data_dir, field, value, message):
    with pytest.raises(ValueError) as e:
        cfg_lib.check(smoke_config(data_dir, **{f"data.{field}": value}))
    assert str(e.value) == message


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _children(num_processes: int, devices_per_process: int, logs: pathlib.Path) -> list[dict]:
    """Runs the child in ``num_processes`` processes; their JSON reports (stdout, stderr: logs/)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="")
    port = _free_port()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "tests" / "_device_sampler_child.py"),
                str(k),
                str(num_processes),
                str(devices_per_process),
                str(port),
            ],
            stdout=open(logs / f"{k}.out", "w"),
            stderr=open(logs / f"{k}.err", "w"),
            env=env,
        )
        for k in range(num_processes)
    ]
    try:  # a process that fails leaves its peers waiting: stop them all
        deadline = time.monotonic() + 300
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            if any(p.poll() not in (None, 0) for p in procs):
                break
            time.sleep(0.5)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for k, p in enumerate(procs):
        p.wait()
        assert p.returncode == 0, (logs / f"{k}.err").read_text()[-3000:]
    return [json.loads((logs / f"{k}.out").read_text().splitlines()[-1]) for k in range(len(procs))]


@pytest.mark.heavy
def test_four_devices_one_process(tmp_path):
    (report,) = _children(1, 4, tmp_path)
    assert report["rows"] == [[0, 12]] and report["batches_equal"] and report["losses_close"]
    assert report["batch_collectives"] == 0  # each device gathers its own rows


@pytest.mark.heavy
def test_two_processes_two_devices_each(tmp_path):
    """jax.distributed over localhost: each process supplies its rows only, the batches equal the
    host sampler's rows, and a fused data-parallel step equals a one-process step."""
    reports = _children(2, 2, tmp_path)
    assert [r["rows"] for r in reports] == [[[0, 6]], [[6, 12]]]
    assert all(r["batches_equal"] and r["losses_close"] for r in reports), reports
    assert all(r["batch_collectives"] == 0 for r in reports), reports
