"""The training loop: run directory contents, determinism, exact resume after SIGTERM / SIGKILL
between steps / SIGKILL inside a checkpoint write, the NaN guard (metrics kept on the device,
non-finite parameters never saved), the log window's mean loss, refusal of another run's workdir,
corrupt checkpoints, restore from the run directory alone, no recompilation."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _train_child import kill_at_train_call, smoke_config
from flax import nnx
from PIL import Image

from espcn_jax import data, training
from espcn_jax.training import checkpoint, optim
from espcn_jax.training import step as step_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> pathlib.Path:
    """Three 48x45 photos-like images (smooth random fields with edges)."""
    d = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:48, 0:45]
    for k in range(3):
        field = sum(
            np.sin(xx * rng.uniform(0.05, 0.4) + yy * rng.uniform(0.05, 0.4) + rng.uniform(0, 6))
            for _ in range(3)
        )
        field = (
            field[..., None] + 0.3 * rng.standard_normal((48, 45, 3)) + (xx > 20 + 5 * k)[..., None]
        )
        img = np.clip((field - field.min()) / np.ptp(field) * 255, 0, 255).astype(np.uint8)
        Image.fromarray(img).save(d / f"img{k}.png")
    return d


def _params(workdir) -> list[np.ndarray]:
    model, _ = training.restore(workdir)
    return [np.asarray(x) for x in jax.tree.leaves(nnx.state(model))]


def _assert_same_params(a, b, atol=1e-6):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x, y, atol=atol, rtol=0)


def _rows(workdir) -> list[dict]:
    lines = (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_dir) -> pathlib.Path:
    """An uninterrupted smoke run (8 steps, checkpoints at 4 and 8)."""
    workdir = tmp_path_factory.mktemp("reference")
    training.train_and_evaluate(smoke_config(data_dir), workdir)
    return workdir


def test_run_directory_contents(reference, data_dir):
    final = json.loads((reference / "final_eval.json").read_text())
    assert final["step"] == 8
    scores = final["eval"][f"folder:{data_dir}"]
    assert scores["step"] == 8 and 0 < scores["ssim"] <= 1 and scores["psnr"] > 5
    # Per-image scores in the set's image order; their means are the set's scores.
    per = scores["per_image"]
    names = [pathlib.Path(n).name for n in data.make_source(f"folder:{data_dir}").names]
    assert per["names"] == names and len(per["psnr"]) == len(per["ssim"]) == len(names)
    assert np.mean(per["psnr"]) == pytest.approx(scores["psnr"], rel=1e-12)
    assert np.mean(per["ssim"]) == pytest.approx(scores["ssim"], rel=1e-12)
    assert checkpoint.Checkpoints(reference, read_only=True).latest_step() == 8
    rows = [r for r in _rows(reference) if "loss" in r]
    assert [r["step"] for r in rows] == [2, 4, 6, 8]
    assert all(r["steps_per_s"] > 0 and r["gflops_per_s"] > 0 and r["lr"] > 0 for r in rows)
    assert final["train_loss"] == rows[-1]["loss"]
    # TensorBoard holds the same numbers as metrics.jsonl.
    tf = pytest.importorskip("tensorflow")
    from tensorflow.core.util import event_pb2

    tb = {}
    for path in reference.glob("events.out.tfevents.*"):
        for record in tf.data.TFRecordDataset(str(path)):
            event = event_pb2.Event.FromString(record.numpy())
            for v in event.summary.value:
                tb[(event.step, v.tag)] = float(tf.make_ndarray(v.tensor))
    for r in rows:
        assert tb[(r["step"], "loss")] == pytest.approx(r["loss"], rel=1e-6)


def test_restore_rebuilds_the_evaluated_model(reference, data_dir):
    """The run directory alone gives the model that final_eval.json scored."""
    from espcn_jax.training import evaluation

    model, config = training.restore(reference)
    assert training.model_config(config) == model.config
    scores = evaluation.evaluate_model(model, evaluation.load_set(f"folder:{data_dir}"), 3)
    final = json.loads((reference / "final_eval.json").read_text())
    assert scores["psnr"] == pytest.approx(final["eval"][f"folder:{data_dir}"]["psnr"], abs=1e-9)
    assert scores["per_image"] == final["eval"][f"folder:{data_dir}"]["per_image"]


def test_same_seed_same_metrics_and_params(reference, data_dir, tmp_path):
    training.train_and_evaluate(smoke_config(data_dir), tmp_path)
    key = ("loss", "grad_norm", "lr")
    assert [{k: r.get(k) for k in key} for r in _rows(tmp_path)] == [
        {k: r.get(k) for k in key} for r in _rows(reference)
    ]
    _assert_same_params(_params(tmp_path), _params(reference), atol=0)


def test_no_recompilation(data_dir, tmp_path, monkeypatch):
    made = []
    make = step_lib.make_steps
    monkeypatch.setattr(
        step_lib, "make_steps", lambda *a, **k: made.append(make(*a, **k)) or made[-1]
    )
    training.train_and_evaluate(smoke_config(data_dir), tmp_path)
    (steps,) = made
    assert steps.train_logged._cache_size() == 1  # 8 steps, checkpoints and evaluation: traced once


def test_sigterm_saves_and_resumes_exactly(reference, data_dir, tmp_path):
    kill_at_train_call(3, signal.SIGTERM)
    try:
        with pytest.raises(training.Interrupted, match="SIGTERM at step 3"):
            training.train_and_evaluate(smoke_config(data_dir), tmp_path)
    finally:
        import importlib

        importlib.reload(step_lib)
    assert checkpoint.Checkpoints(tmp_path, read_only=True).latest_step() == 3
    assert not (tmp_path / "final_eval.json").exists()
    training.train_and_evaluate(smoke_config(data_dir), tmp_path)  # the same command again
    _assert_same_params(_params(tmp_path), _params(reference))
    assert [r["step"] for r in _rows(tmp_path) if "loss" in r] == [2, 4, 6, 8]


def test_tail_steps_run_the_tail_step_and_resume_exactly(reference, data_dir, tmp_path):
    """``train.tail_steps=3``: steps 6-8 of 8 run the step traced at ``tail_precision`` (float32
    "highest" here, which equals "default" on the CPU: the parameters equal the reference's); a
    SIGTERM inside the tail resumes into the tail step and ends with the same parameters."""
    overrides = {"train.tail_steps": 3, "train.tail_precision": "highest"}
    make = step_lib.make_steps
    counts = {"train_logged": 0, "train_logged_tail": 0}

    def counting(*args, **kwargs):
        steps = make(*args, **kwargs)

        def wrap(name):
            fn = getattr(steps, name)

            def counted(*a):
                counts[name] += 1
                return fn(*a)

            return counted

        return dataclasses.replace(
            steps, train_logged=wrap("train_logged"), train_logged_tail=wrap("train_logged_tail")
        )

    step_lib.make_steps = counting
    try:
        training.train_and_evaluate(smoke_config(data_dir, **overrides), tmp_path / "whole")
    finally:
        step_lib.make_steps = make
    assert counts == {"train_logged": 5, "train_logged_tail": 3}
    _assert_same_params(_params(tmp_path / "whole"), _params(reference))

    kill_at_train_call(7, signal.SIGTERM)  # step 7: inside the tail
    try:
        with pytest.raises(training.Interrupted, match="SIGTERM at step 7"):
            training.train_and_evaluate(smoke_config(data_dir, **overrides), tmp_path / "cut")
    finally:
        import importlib

        importlib.reload(step_lib)
    training.train_and_evaluate(smoke_config(data_dir, **overrides), tmp_path / "cut")
    _assert_same_params(_params(tmp_path / "cut"), _params(tmp_path / "whole"), atol=0)


def _child(workdir, data_dir, mode) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="")
    return subprocess.run(
        [
            sys.executable,
            str(ROOT / "tests" / "_train_child.py"),
            str(workdir),
            str(data_dir),
            mode,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


@pytest.mark.parametrize("mode", ["step:7", "save:8"])
def test_sigkill_then_resume_is_exact(reference, data_dir, tmp_path, mode):
    """Killed before train call 7 (checkpoint 4 on disk) or inside the write of checkpoint 8."""
    proc = _child(tmp_path, data_dir, mode)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    ckpts = tmp_path / "checkpoints"
    assert (ckpts / "4").is_dir()
    if mode.startswith("save"):
        assert not (ckpts / "8").exists()
        assert list(ckpts.glob("8.orbax-checkpoint-tmp*")), "killed before the write began"
    training.train_and_evaluate(smoke_config(data_dir), tmp_path)
    _assert_same_params(_params(tmp_path), _params(reference))
    assert not list(ckpts.glob("*tmp*"))


def _explode_lr_from(step: int, monkeypatch) -> None:
    """An infinite lr for the update of step ``step + 1`` and later: the parameters it makes are
    not finite."""
    schedule = optim.schedule
    monkeypatch.setattr(
        optim,
        "schedule",
        lambda opt, steps: lambda s: jnp.where(s >= step, jnp.inf, schedule(opt, steps)(s)),
    )


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(data_dir, tmp_path, monkeypatch):
    """Step 5's update makes the parameters non-finite; the metrics are fetched at the log point
    6 only, and the error names the first bad step."""
    _explode_lr_from(4, monkeypatch)
    with pytest.raises(training.NonFiniteLossError, match="last good checkpoint is step 4") as e:
        training.train_and_evaluate(smoke_config(data_dir), tmp_path)
    assert "at step 5 " in str(e.value)  # step 5's update made the parameters non-finite
    assert checkpoint.Checkpoints(tmp_path, read_only=True).latest_step() == 4
    assert all(np.isfinite(x).all() for x in _params(tmp_path))


def test_non_finite_parameters_are_never_saved(data_dir, tmp_path, monkeypatch):
    """Step 4's update makes the parameters non-finite while its loss and gradient (from step
    3's parameters) are finite: the checkpoint due at step 4 is not written."""
    _explode_lr_from(3, monkeypatch)
    config = smoke_config(data_dir, **{"train.checkpoint_every_steps": 2})
    with pytest.raises(training.NonFiniteLossError, match="at step 4 .*checkpoint is step 2"):
        training.train_and_evaluate(config, tmp_path)
    assert checkpoint.Checkpoints(tmp_path, read_only=True).latest_step() == 2
    assert all(np.isfinite(x).all() for x in _params(tmp_path))


def test_logged_loss_is_the_mean_over_the_log_window(reference, data_dir, tmp_path):
    """The loss summed on the device over a window of 2 steps, against the mean of the two
    per-step losses of a run logging every step (the same steps: same seed)."""
    training.train_and_evaluate(smoke_config(data_dir, **{"train.log_every_steps": 1}), tmp_path)
    every = {r["step"]: r for r in _rows(tmp_path) if "loss" in r}
    assert sorted(every) == list(range(1, 9))
    for r in (r for r in _rows(reference) if "loss" in r):
        s = r["step"]
        assert r["loss"] == pytest.approx((every[s - 1]["loss"] + every[s]["loss"]) / 2, rel=1e-6)
        assert (r["lr"], r["grad_norm"]) == (every[s]["lr"], every[s]["grad_norm"])


def test_another_runs_workdir_is_refused(reference, data_dir):
    before = sorted(p.name for p in (reference / "checkpoints").iterdir())
    config_json = (reference / "config.json").read_text()
    with pytest.raises(ValueError, match="different config .*train.seed"):
        training.train_and_evaluate(smoke_config(data_dir, **{"train.seed": 1}), reference)
    assert sorted(p.name for p in (reference / "checkpoints").iterdir()) == before
    assert (reference / "config.json").read_text() == config_json


def test_corrupt_checkpoint_is_a_clear_error(reference, data_dir, tmp_path):
    import shutil

    shutil.copytree(reference, tmp_path, dirs_exist_ok=True)
    for path in (tmp_path / "checkpoints" / "8" / "state").rglob("*"):
        if path.is_file():
            path.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="checkpoint .*8 cannot be read"):
        training.train_and_evaluate(smoke_config(data_dir), tmp_path)
    with pytest.raises(ValueError, match="cannot be read"):
        training.restore(tmp_path)
