"""Plumbing of experiments/benchmark_train.py and experiments/benchmark_bicubic.py on tiny sizes.

No timing assertions: the numbers are whatever they are; the keys, their consistency with one
another, the agreement checks the scripts run before timing, and bad flags are tested.
"""

from __future__ import annotations

import json
import math
import statistics

import pytest
from _drivers import run_driver

TRAIN_KEYS = (
    "jax_step_ms",
    "torch_step_ms",
    "speedup_vs_torch",
    "gflops_per_s",
    "matmul_gflops_per_s",
    "pipeline_overhead",
    "loop_step_ms",
    "loop_overhead",
)


def _positive(value) -> bool:
    return isinstance(value, float | int) and math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def train_report() -> dict:
    proc = run_driver(
        "benchmark_train.py",
        "--batch=2",
        "--patch=6",
        "--rounds=1",
        "--steps=1",
        "--warmup=1",
        "--loop_steps=2",
        "--loop_rounds=1",
        "--loop_bare_steps=1",
        "--matmul_size=8",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def test_train_json_keys_and_consistency(train_report):
    result = train_report["result"]
    for key in TRAIN_KEYS:
        assert key in train_report and train_report[key] == result[key], key
    assert _positive(result["jax_step_ms"]) and _positive(result["jax_minimal_step_ms"])
    assert _positive(result["matmul_gflops_per_s"])
    assert 0 <= result["pipeline_overhead"] < 1
    assert _positive(result["loop_ms_per_step"])
    # the engine's loop: each round's ratio is its loop step over the bare step timed beside it
    for r in result["engine_loop_rounds"]:
        assert _positive(r["loop_step_ms"]) and _positive(r["bare_step_ms"])
        assert r["ratio"] == pytest.approx(r["loop_step_ms"] / r["bare_step_ms"])
    assert result["loop_overhead"] == pytest.approx(
        statistics.median(r["ratio"] for r in result["engine_loop_rounds"])
    )
    # analytic FLOPs: forward of flops.model_cost per image x batch, x (1 + backward factor)
    assert result["train_flops"] == result["forward_flops"] * (1 + result["backward_factor"])
    assert result["gflops_per_s"] == pytest.approx(
        result["train_flops"] / result["jax_step_ms"] / 1e6
    )
    assert result["xla_step_flops"] > result["forward_flops"]
    if result["torch_step_ms"] is None:  # torch not importable
        assert result["speedup_vs_torch"] is None
    else:
        assert result["speedup_vs_torch"] == pytest.approx(
            result["torch_step_ms"] / result["jax_step_ms"]
        )
    assert train_report["config"]["batch"] == 2 and train_report["device"]["platform"] == "cpu"


def test_train_routes_side_by_side(train_report):
    """Every route of issue 14 is timed in the same rounds; jax_step_ms is the default route."""
    result = train_report["result"]
    routes = result["routes"]
    default = result["default_route"]
    assert default == ("onednn" if result["onednn"]["loaded"] else "lax")
    assert routes[default]["step_ms"] == result["jax_step_ms"]
    loaded, bf16 = result["onednn"]["loaded"], result["bf16_instructions"]
    expected = {"lax", "lax_scan4", "xla_no_ynn"} | (
        {"onednn", "onednn_scan4"} if loaded else set()
    )
    expected |= {"onednn_bf16"} if loaded and bf16 else set()
    assert set(routes) == expected
    for name, route in routes.items():
        assert _positive(route["step_ms"]) and len(route["round_medians_ms"]) == 1, name
        if result["torch_step_ms"] is not None:
            assert route["speedup_vs_torch"] == pytest.approx(
                result["torch_step_ms"] / route["step_ms"]
            )
    if "onednn_bf16" in routes and result["torch_step_ms"] is not None:
        # its peer: PyTorch under bfloat16 autocast, timed in the same rounds
        assert routes["onednn_bf16"]["speedup_vs_torch_bf16"] == pytest.approx(
            result["torch_bf16_step_ms"] / routes["onednn_bf16"]["step_ms"]
        )
    else:
        assert result["torch_bf16_step_ms"] is None
    layers = result["pieces"]
    assert list(layers) == ["1->64 5x5", "64->32 3x3", "32->9 3x3"]  # ESPCN x3 Y
    for by_route in layers.values():
        assert set(by_route["lax"]) == {"forward", "dx", "dw"}
        assert ("onednn_bf16" in by_route) == ("onednn_bf16" in routes)
        assert all(_positive(ms) for p in by_route.values() for ms in p.values())


def test_train_without_torch_gives_nulls():
    proc = run_driver(
        "benchmark_train.py",
        "--notorch",
        "--noroutes",
        "--nopieces",
        "--batch=1",
        "--patch=4",
        "--rounds=1",
        "--steps=1",
        "--warmup=1",
        "--loop_steps=2",
        "--loop_rounds=1",
        "--loop_bare_steps=1",
        "--matmul_size=4",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["torch_step_ms"] is None and report["speedup_vs_torch"] is None
    routes = report["result"]["routes"]  # the default route only, without a torch ratio
    assert list(routes) == [report["result"]["default_route"]]
    assert routes[report["result"]["default_route"]]["speedup_vs_torch"] is None


@pytest.mark.parametrize(
    "script,args,message",
    [
        ("benchmark_train.py", ["--batch=0"], "batch"),
        ("benchmark_train.py", ["--source=nowhere"], "nowhere"),
        ("benchmark_train.py", ["--scale=1"], "scale must be an integer >= 2, got 1"),
        ("benchmark_train.py", ["stray"], "unexpected positional arguments: stray"),
        ("benchmark_bicubic.py", ["--scales=2,x"], "scales"),
        ("benchmark_bicubic.py", ["--scales=1"], "scales must be integers >= 2, got '1'"),
        ("benchmark_bicubic.py", ["--channels=2"], "channels must be 1 (Y) or 3 (RGB), got 2"),
        ("benchmark_bicubic.py", ["--hr_size=12"], "hr_size"),
    ],
)
def test_bad_flags_exit_2_with_one_line(script, args, message):
    proc = run_driver(script, *args, "--rounds=1", "--json")
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and message in last
    assert proc.stdout == ""


def test_bicubic_json_and_agreement():
    proc = run_driver(
        "benchmark_bicubic.py",
        "--scales=2,3",
        "--hr_size=36x48",
        "--train_batch=2",
        "--train_patch=6x6",
        "--rounds=2",
        "--repeats=1",
        "--min_time_ms=0",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert [row["r"] for row in report["results"]] == [2, 3]
    for row in report["results"]:
        r = row["r"]
        for case in ("upscale", "downscale", "train_batch"):
            e = row[case]
            for v in ("new", "before", "resize"):
                assert _positive(e[f"{v}_ms"]) and len(e["round_medians_ms"][v]) == 2
            assert e["speedup_vs_resize"] == pytest.approx(e["resize_ms"] / e["new_ms"])
            assert e["speedup_vs_before"] == pytest.approx(e["before_ms"] / e["new_ms"])
            assert e["max_abs_err"]["before"] <= 1e-5  # the previous implementation agrees
            assert e["flops"]["new"] == e["flops"]["xla_new"]  # analytic == XLA's count
        assert row["upscale"]["shape_out"] == [1, 36 // r * r, 48 // r * r, 1]
        assert row["downscale"]["shape_out"] == [1, 36 // r, 48 // r, 1]
        assert row["train_batch"]["shape_out"] == [2, 6 * r, 6 * r, 1]
