"""A run trained on one device restores, upscales and evaluates on a host of 4 devices whose count
does not divide its batch (restore checks the batch against the 1-device mesh it builds, and
places the parameters on this process's first local device)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from _drivers import ROOT, run_driver
from PIL import Image

CHILD = """
import json, sys
import jax, numpy as np
import espcn_jax
from espcn_jax import training
assert jax.device_count() == 4, jax.devices()
model, config = training.restore(sys.argv[1])
image = np.asarray(__import__("PIL.Image").Image.open(sys.argv[2]))
out = espcn_jax.load(sys.argv[1], tile=7)(image)
from flax import nnx
devices = {str(d) for x in jax.tree.leaves(nnx.state(model)) for d in x.devices()}
# Parameters replicated over a 4-device mesh (as training leaves them) are evaluated on one device.
from espcn_jax import evaluate
from espcn_jax.training import step
mesh = step.make_mesh()
state = nnx.state(model)
spread = nnx.merge(nnx.graphdef(model), jax.device_put(state, step.replicated(mesh)))
_, local = evaluate.split_model(spread)
eval_devices = {str(d) for x in jax.tree.leaves(local) for d in x.devices()}
print(json.dumps({"batch": config.train.batch_size, "shape": list(out.shape),
                  "devices": sorted(devices), "local0": str(jax.local_devices()[0]),
                  "mesh": mesh.size, "eval_devices": sorted(eval_devices)}))
"""


def _four_devices() -> dict:
    return dict(
        os.environ,
        XLA_FLAGS="--xla_force_host_platform_device_count=4",
        JAX_PLATFORMS="cpu",
        CUDA_VISIBLE_DEVICES="",
        PYTHONPATH=str(ROOT),
    )


def _run_on_four_devices(*args: str) -> subprocess.CompletedProcess:
    """``python ARGS...`` in a child process that sees 4 CPU devices."""
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        env=_four_devices(),
        timeout=300,
        cwd=ROOT,
    )


@pytest.fixture(scope="module")
def batch6_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("batch6") / "run"
    proc = run_driver(
        "train.py",
        "--config=experiments/configs/espcn.py:smoke",
        "--config.train.steps=2",
        "--config.train.batch_size=6",
        "--config.eval.sets=",
        f"--workdir={d}",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return d


def test_batch_6_run_restores_and_evaluates_on_4_devices(batch6_run, tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (40, 37, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "photo.png")
    child = _run_on_four_devices("-c", CHILD, str(batch6_run), str(tmp_path / "photo.png"))
    assert child.returncode == 0, child.stderr[-3000:]
    got = json.loads(child.stdout.splitlines()[-1])
    assert got["batch"] == 6 and got["shape"] == [120, 111, 3]
    assert got["devices"] == [got["local0"]]  # one local device holds the restored parameters
    assert got["mesh"] == 4 and got["eval_devices"] == [got["local0"]]
    proc = _run_on_four_devices(
        str(ROOT / "experiments" / "evaluate.py"),
        "--model=checkpoint",
        f"--checkpoint={batch6_run}",
        f"--data_dir={tmp_path}",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["num_images"] == 1 and np.isfinite(report["psnr"])
