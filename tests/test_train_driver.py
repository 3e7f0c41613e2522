"""experiments/train.py end to end: a smoke run prints its scores; bad input exits 2 with one line
naming the problem and leaves earlier runs untouched."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def train(*args: str, devices: int = 1) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="")
    if devices > 1:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "train.py"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def smoke(data_dir, *more) -> list[str]:
    return [
        "--config=" + str(ROOT / "experiments/configs/espcn.py") + ":smoke",
        f"--config.data.source=folder:{data_dir}",
        f"--config.eval.sets=folder:{data_dir}",
        *more,
    ]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, data_dir) -> pathlib.Path:
    workdir = tmp_path_factory.mktemp("run") / "w"
    proc = train(*smoke(data_dir), f"--workdir={workdir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"folder:{data_dir}" in proc.stdout and "PSNR" in proc.stdout
    return workdir


def assert_usage_error(proc: subprocess.CompletedProcess, *words: str) -> None:
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, proc.stderr[-2000:]
    for word in words:
        assert word in lines[0], lines[0]
    assert proc.stdout == ""


@pytest.mark.parametrize(
    "flag, words",
    [
        ("--config.train.steps=0", ("config.train.steps", "0")),
        ("--config.train.patch=50", ("large enough for the HR patch 150x150",)),
        ("--config.model.family=srcnn", ("family", "srcnn")),
        ("--config.model.no_such_field=1", ("no_such_field",)),
        ("--config.model.scale=1", ("config.model.scale must be an integer >= 2, got 1",)),
        ("--config.model.channels=2", ("config.model.channels must be 1 (Y) or 3 (RGB)",)),
        ("stray", ("unexpected positional arguments: stray",)),
    ],
)
def test_bad_config_exits_2(data_dir, tmp_path, flag, words):
    assert_usage_error(train(*smoke(data_dir), flag, f"--workdir={tmp_path / 'w'}"), *words)
    assert not (tmp_path / "w" / "config.json").exists()  # nothing written for a bad config


def test_batch_not_divisible_by_devices_exits_2(data_dir, tmp_path):
    proc = train(
        *smoke(data_dir), "--config.train.batch_size=6", f"--workdir={tmp_path}", devices=4
    )
    assert_usage_error(proc, "batch_size=6", "4 devices")


def test_other_runs_workdir_exits_2_and_is_untouched(run_dir, data_dir):
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    proc = train(*smoke(data_dir), "--config.train.seed=7", f"--workdir={run_dir}")
    assert_usage_error(proc, "different config", "train.seed")
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before


def test_corrupt_checkpoint_exits_2(run_dir, data_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    for path in (copy / "checkpoints" / "8" / "state").rglob("*"):
        if path.is_file():
            path.write_bytes(b"\0garbage")
    proc = train(*smoke(data_dir), f"--workdir={copy}")
    assert_usage_error(proc, "checkpoint", "cannot be read")


def test_distributed_process_id_out_of_range_exits_2(data_dir, tmp_path):
    proc = train(
        *smoke(data_dir),
        "--distributed",
        "--num_processes=2",
        "--process_id=2",
        f"--workdir={tmp_path / 'w'}",
    )
    assert_usage_error(proc, "--process_id=2 must be < --num_processes=2")
    assert not (tmp_path / "w").exists()
