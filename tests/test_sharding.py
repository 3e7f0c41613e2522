"""Data parallelism on 4 forced host devices (one subprocess): the ops under an Explicit mesh
against the shuffle's definition, and a train step of every family, sharded, against 1 device."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

from espcn_jax import models

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def child() -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "_sharding_child.py")],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("order", ["tf", "torch"])
def test_ops_under_explicit_mesh_match_definition(child, order):
    gaps = child["ops"][order]
    assert gaps["shuffle"] == gaps["unshuffle"] == gaps["convert"] == 0.0, gaps
    assert gaps["batch_spec"] == ["data"] * 3, "outputs must stay batch-sharded over 'data'"


@pytest.mark.parametrize("axis_type", ["Auto", "Explicit"])
@pytest.mark.parametrize("family", models.FAMILY_NAMES)
def test_sharded_train_step_equals_one_device(child, family, axis_type):
    gaps = child["train"][f"{family}/{axis_type}"]
    assert "error" not in gaps, gaps.get("error")
    assert gaps["devices"] == 4
    assert gaps["loss_rel"] < 1e-5, gaps
    assert gaps["param_abs"] < 1e-6, gaps
