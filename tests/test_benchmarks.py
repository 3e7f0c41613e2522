"""The benchmark scripts' plumbing on tiny sizes: JSON schema, numerical agreement, bad flags.

No timing assertions: the numbers are measured, whatever they are; only their presence and the
agreement checks the scripts run before timing are tested here. Both scripts follow the drivers'
convention (espcn_jax.cli): stdout is only the result (``json.loads`` reads it whole with
``--json``), and a bad flag exits 2 with one line on stderr before any data is read.
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
run_data = functools.partial(run_driver, "benchmark_data.py")
NOISE = (
    "Downloading and preparing",  # TFDS's build announcement (it prints it on stdout)
    "oneDNN",  # TensorFlow's C++ start-up notice
    "cpu_feature_guard",
    "Unable to initialize backend",  # JAX probing for a TPU
    "absl::InitializeLog",
    "Generating splits",  # TFDS's progress bars
)


def assert_one_error_line(proc, message: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    assert proc.stderr.splitlines() == [proc.stderr.strip()], proc.stderr  # one line, nothing else
    assert proc.stderr.startswith("error: ") and message in proc.stderr, proc.stderr


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
        ("--scales=2,x", "scales must be integers >= 2, got 'x'"),
        ("--scales=1,2", "scales must be integers >= 2, got '1'"),
        ("--lr_size=8", "lr_size must be HxW"),
        ("--k=0", "--k=0"),
        ("--dtype=float16", "--dtype=float16"),
        ("--seed=-1", "--seed=-1"),
        ("extra", "unexpected positional arguments: extra"),
    ],
)
def test_bad_flags_fail_in_one_line(flag, message):
    assert_one_error_line(run_script(flag, "--json"), message)


# --- benchmark_data.py ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fresh_data_dir(tmp_path_factory):
    """An empty TFDS data directory: the first run builds the skimage photos into it."""
    return tmp_path_factory.mktemp("espcn_jax_data")


def _rounded_ratio_matches(ratio: float, over: float, under: float) -> bool:
    """`ratio` (printed to 0.01) is over / under, both printed to 0.1, within their rounding."""
    # each printed value is off by at most half its last unit
    slack = 0.005 + 0.05 / under + 0.05 * over / under**2
    return abs(ratio - over / under) <= slack * (1 + 1e-9)


DATA_TINY = ("--steps=1", "--windows=1", "--batch_size=2", "--patch=4", "--scale=2")


def test_data_benchmark_builds_its_data_and_prints_only_json(fresh_data_dir, monkeypatch):
    monkeypatch.setenv("ESPCN_JAX_DATA_DIR", str(fresh_data_dir))
    assert list(fresh_data_dir.iterdir()) == []
    proc = run_data(*DATA_TINY, "--json")
    assert proc.returncode == 0, proc.stderr
    assert (fresh_data_dir / "skimage_photos" / "1.0.0").is_dir()  # built in this run
    report = json.loads(proc.stdout)  # the whole of stdout is one JSON object
    assert report["source"] == "tfds:skimage_photos/1.0.0[train]" and report["images"] == 14
    assert (report["scale"], report["patch"], report["batch_size"]) == (2, 4, 2)
    assert (report["channels"], report["color"]) == (1, "y")
    rates = ("sampler_batches_per_s", "pipeline_batches_per_s", "train_steps_per_s",
             "fed_train_steps_per_s", "device_sampler_batches_per_s",
             "device_fed_train_steps_per_s")  # fmt: skip
    for key in rates:
        assert math.isfinite(report[key]) and report[key] > 0, key
    for ratio, over, under in (
        ("pipeline_over_train_ratio", "pipeline_batches_per_s", "train_steps_per_s"),
        ("device_over_host_sampler_ratio", "device_sampler_batches_per_s", "sampler_batches_per_s"),
    ):
        assert _rounded_ratio_matches(report[ratio], report[over], report[under]), ratio
    for noise in NOISE:
        assert noise not in proc.stdout + proc.stderr, noise


def test_data_benchmark_table(fresh_data_dir, monkeypatch):
    monkeypatch.setenv("ESPCN_JAX_DATA_DIR", str(fresh_data_dir))
    proc = run_data(*DATA_TINY, "--channels=3")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("tfds:skimage_photos/1.0.0[train] (14 images), x2")
    assert "batches/s" in proc.stdout and "steps/s" in proc.stdout and "rgb" in proc.stdout
    assert "device sampler kernel" in proc.stdout and "device / host sampler" in proc.stdout
    with pytest.raises(json.JSONDecodeError):
        json.loads(proc.stdout)


@pytest.mark.parametrize(
    "flag,message",
    [
        ("--scale=0", "flag --scale=0: scale must be an integer >= 2, got 0"),
        ("--scale=1", "flag --scale=1: scale must be an integer >= 2, got 1"),
        ("--seed=-1", "--seed=-1"),
        ("--patch=0", "--patch=0"),
        ("--channels=2", "channels must be 1 (Y) or 3 (RGB), got 2"),
        ("--source=imagenet", "unknown data source 'imagenet'"),
        ("--nosuchflag", "nosuchflag"),
        ("stray", "unexpected positional arguments: stray"),
    ],
)
def test_data_benchmark_bad_flags_fail_before_loading_data(flag, message, tmp_path, monkeypatch):
    monkeypatch.setenv("ESPCN_JAX_DATA_DIR", str(tmp_path))
    assert_one_error_line(run_data(flag, "--json"), message)
    assert list(tmp_path.iterdir()) == []  # nothing was built or read
