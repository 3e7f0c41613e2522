"""The benchmark scripts' plumbing on tiny sizes: JSON schema, numerical agreement, bad flags.

No timing assertions: the numbers are measured, whatever they are; only their presence and the
agreement checks the scripts run before timing are tested here.
"""

from __future__ import annotations

import functools
import json
import math
import statistics

import pytest
from _drivers import run_driver

TIMED = [
    "conv_transpose",
    "lax_conv_transpose",
    "fast_conv_transpose",
    "zero_insertion",
    "resize_conv",
    "lr_conv",
    "pixel_shuffle",
]


run_script = functools.partial(run_driver, "benchmark_upsamplers.py")


@pytest.fixture(scope="module")
def tiny_report() -> dict:
    proc = run_script(
        "--lr_size=8x6",
        "--scales=2,3",
        "--repeats=1",
        "--min_time_ms=0",
        "--rounds=2",
        "--in_channels=3",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_json_schema(tiny_report):
    assert {"device", "config", "results"} <= set(tiny_report)
    assert tiny_report["device"]["platform"] == "cpu"
    config = tiny_report["config"]
    assert (config["lr_height"], config["lr_width"], config["in_channels"]) == (8, 6, 3)
    assert config["scales"] == [2, 3]
    assert [row["r"] for row in tiny_report["results"]] == [2, 3]
    for row in tiny_report["results"]:
        r = row["r"]
        for name in TIMED:
            value = row[f"{name}_ms"]
            assert math.isfinite(value) and value > 0, (name, value)
            assert len(row["round_medians_ms"][name]) == 2
            assert value == pytest.approx(statistics.median(row["round_medians_ms"][name]))
        assert row["speedup"] == pytest.approx(
            row["conv_transpose_ms"] / row["fast_conv_transpose_ms"]
        )
        assert row["shuffle_share"] == pytest.approx(row["pixel_shuffle_ms"] / row["lr_conv_ms"])
        assert row["speedup_target"] == pytest.approx(0.7 * r * r)
        assert row["meets_target"] == (row["speedup"] >= row["speedup_target"])
        assert row["fast_budget_ms"] == pytest.approx(row["conv_transpose_ms"] / (0.7 * r * r))
        assert row["kernel_size"] == 3 * r


def test_variants_agree_with_conv_transpose(tiny_report):
    for row in tiny_report["results"]:
        errors = row["max_abs_err"]
        assert set(errors) == {
            "lax_conv_transpose",
            "fast_conv_transpose",
            "zero_insertion",
            "lr_conv_shuffle",
            "resize_conv_vs_repeat_conv",
        }
        assert all(0 <= err < 1e-4 for err in errors.values()), errors


def test_analytic_flops(tiny_report):
    """HR-grid variants do r^2 times the useful multiply-adds; XLA:CPU's transposed-conv GEMM and
    the LR conv (k^2 taps) do the useful ones."""
    n, h, w, c_in, c_out, k = 1, 8, 6, 3, 1, 3
    for row in tiny_report["results"]:
        r, flops = row["r"], row["flops"]
        useful = 2 * n * h * w * (k * r) ** 2 * c_in * c_out
        assert flops["useful"] == useful
        for name in ("zero_insertion", "resize_conv"):
            assert flops[name] == r * r * useful
        assert row["lr_taps"] == k  # SAME with K = k*r, k odd: exactly k LR taps
        assert flops["conv_transpose"] == flops["fast_conv_transpose"] == flops["lr_conv"] == useful
        assert row["conv_matrix_mb"] == pytest.approx(n * h * w * (k * r) ** 2 * c_out * 4 / 1e6)
        assert set(flops["xla"]) == set(TIMED)


def test_page_faults_and_malloc_setting_are_reported(tiny_report):
    assert tiny_report["config"]["malloc"] is None  # glibc's defaults unless --tune_malloc
    assert tiny_report["config"]["min_time_ms"] == 0
    for row in tiny_report["results"]:
        faults = row["minor_faults_per_call"]
        assert set(faults) == set(TIMED)
        assert all(v is None or v >= 0 for v in faults.values())


def test_tune_malloc_flag_is_recorded():
    proc = run_script(
        "--lr_size=4x4", "--scales=2", "--repeats=1", "--min_time_ms=0", "--rounds=1",
        "--in_channels=2", "--tune_malloc", "--json",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    malloc = json.loads(proc.stdout)["config"]["malloc"]
    if malloc is not None:  # glibc
        assert malloc["arena_max"] == 1 and malloc["mmap_max"] == 0


def test_table_output():
    proc = run_script(
        "--lr_size=4x4", "--scales=2", "--repeats=1", "--min_time_ms=0", "--rounds=1",
        "--in_channels=2",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "speedup" in proc.stdout and "resize+conv" in proc.stdout
    assert proc.stdout.count("\n") >= 3


@pytest.mark.parametrize(
    "flag,message",
    [
        ("--scales=2,x", "scales must be integers >= 1, got 'x'"),
        ("--lr_size=8", "lr_size must be HxW"),
        ("--k=0", "--k=0"),
        ("--dtype=float16", "--dtype=float16"),
    ],
)
def test_bad_flags_fail_in_one_line(flag, message):
    proc = run_script(flag, "--json")
    assert proc.returncode == 2
    assert proc.stdout == ""
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
