"""Multi-host training on this machine: 2 processes x 2 CPU devices, ``jax.distributed.initialize``
over localhost (gloo collectives), through ``experiments/train.py --distributed`` and
``experiments/sweep.py --distributed``.

Shown against a 1-process x 4-device run of the same smoke config: the same parameters after
training (each process makes only its rows of the global batch), a SIGTERM to one process making
both save the same step and exit 143, a resume that ends where the uninterrupted run does, and a
sweep point whose record process 0 alone writes. One launch serves several assertions; every
process is killed by the fixture on failure or timeout.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from espcn_jax import training
from espcn_jax.training import checkpoint

ROOT = pathlib.Path(__file__).resolve().parents[1]
CHILD = ROOT / "tests" / "_multihost_child.py"
TIMEOUT_S = 420  # per launch, on a loaded 2-core machine
pytestmark = pytest.mark.heavy


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(driver: str, args: list[str], processes: int, *, sigterm_at: int = 0) -> list[dict]:
    """Runs ``driver`` as ``processes`` processes sharing 4 CPU devices; process 1 gets SIGTERM
    before its train call ``sigterm_at`` (0: never). Returns each one's returncode/stdout/stderr.
    Every process is killed if any exceeds the timeout or the test fails."""
    env = dict(
        os.environ,
        PYTHONPATH=str(ROOT),
        JAX_PLATFORMS="cpu",
        CUDA_VISIBLE_DEVICES="",
        XLA_FLAGS=f"--xla_force_host_platform_device_count={4 // processes}",
    )
    port = _free_port()
    procs = []
    try:
        for i in range(processes):
            dist = []
            if processes > 1:
                dist = [
                    "--distributed",
                    f"--coordinator_address=127.0.0.1:{port}",
                    f"--num_processes={processes}",
                    f"--process_id={i}",
                ]
            at = sigterm_at if i == 1 else 0
            cmd = [sys.executable, str(CHILD), driver, str(at), "0.3", "--", *args, *dist]
            procs.append(
                subprocess.Popen(
                    cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
                )
            )
        out = []
        for p in procs:
            stdout, stderr = p.communicate(timeout=TIMEOUT_S)
            out.append({"returncode": p.returncode, "stdout": stdout, "stderr": stderr})
        return out
    finally:
        for p in procs:  # no orphans, whatever happened above
            if p.poll() is None:
                p.kill()
                p.wait(timeout=30)


def _tail(runs: list[dict]) -> str:
    return "\n".join(f"--- process {i}:\n{r['stderr'][-1500:]}" for i, r in enumerate(runs))


def _train_args(workdir, data_dir) -> list[str]:
    return [
        f"--workdir={workdir}",
        f"--config={ROOT / 'experiments/configs/espcn.py'}:smoke",
        f"--config.data.source=folder:{data_dir}",
        f"--config.eval.sets=folder:{data_dir}",
        "--json",
    ]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, data_dir) -> pathlib.Path:
    """The reference: 1 process x 4 devices, 8 uninterrupted steps."""
    workdir = tmp_path_factory.mktemp("one_process")
    (run,) = _launch("train", _train_args(workdir, data_dir), 1)
    assert run["returncode"] == 0, run["stderr"][-3000:]
    return workdir


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory, data_dir) -> dict:
    """2 processes x 2 devices: SIGTERM to process 1 before its train call 3, then the same
    command again (the resume)."""
    workdir = tmp_path_factory.mktemp("two_processes")
    args = _train_args(workdir, data_dir)
    stopped = _launch("train", args, 2, sigterm_at=3)
    saved = checkpoint.Checkpoints(workdir, read_only=True).latest_step()
    resumed = _launch("train", args, 2)
    return {"workdir": workdir, "stopped": stopped, "saved": saved, "resumed": resumed}


def _params(workdir) -> list[np.ndarray]:
    model, _ = training.restore(workdir)
    return [np.asarray(x) for x in jax.tree.leaves(nnx.state(model))]


def test_sigterm_to_one_process_stops_both_at_the_same_step(two_processes):
    runs = two_processes["stopped"]
    assert [r["returncode"] for r in runs] == [128 + signal.SIGTERM] * 2, _tail(runs)
    steps = set()
    for r in runs:
        (line,) = [x for x in r["stderr"].splitlines() if x.startswith("interrupted: SIGTERM")]
        steps.add(int(line.split("at step ")[1].split(":")[0]))
    (step,) = steps  # both processes name the same step ...
    assert 3 <= step < 8
    assert two_processes["saved"] == step  # ... and it is the checkpoint on disk


def test_resumed_two_process_run_equals_one_process_run(two_processes, one_process):
    """Same global batches, same mesh size: the parameters agree to float32 round-off. The
    gradient all-reduce runs over gloo across processes and in-process otherwise, and may add
    the four per-device gradients in another order: a few ulp (measured: 3e-8 on parameters of
    magnitude 0.46, one ulp) over 8 Adam steps; 2e-7 leaves margin and still fails on any
    wrong row, batch or step."""
    runs = two_processes["resumed"]
    assert [r["returncode"] for r in runs] == [0, 0], _tail(runs)
    workdir = two_processes["workdir"]
    final = json.loads((workdir / "final_eval.json").read_text())
    assert json.loads(runs[0]["stdout"]) == final and runs[1]["stdout"] == ""  # process 0 prints
    ref = json.loads((one_process / "final_eval.json").read_text())
    assert final["step"] == ref["step"] == 8
    for a, b in zip(_params(workdir), _params(one_process), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=2e-7)
    rows = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    ref_rows = [json.loads(x) for x in (one_process / "metrics.jsonl").read_text().splitlines()]
    losses = {r["step"]: r["loss"] for r in rows if "loss" in r}
    ref_losses = {r["step"]: r["loss"] for r in ref_rows if "loss" in r}
    assert sorted(losses) == sorted(ref_losses) == [2, 4, 6, 8]  # one writer, no duplicate rows
    saved = two_processes["saved"]
    for s, loss in losses.items():
        if s - 2 < saved < s:  # a log window cut by the stop: the resumed run's part only
            continue
        assert loss == pytest.approx(ref_losses[s], rel=1e-5)


def test_sweep_point_on_two_processes(tmp_path, data_dir):
    args = [
        f"--workdir={tmp_path}",
        "--preset=smoke",
        "--config.families=lr",
        "--config.seeds=0",
        f"--config.data.train=folder:{data_dir}",
        f"--config.eval.sets=folder:{data_dir}",
        "--json",
        "--noprogress",
        "--noreport",
    ]
    runs = _launch("sweep", args, 2)
    assert [r["returncode"] for r in runs] == [0, 0], _tail(runs)
    (record,) = [json.loads(x) for x in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert record["status"] == "ok", record
    assert record["device"]["processes"] == 2
    assert json.loads(runs[0]["stdout"])["ok"] == 1 and runs[1]["stdout"] == ""
