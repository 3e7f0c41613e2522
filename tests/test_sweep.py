"""experiments/sweep.py and experiments/report.py end to end, in subprocesses, as a user runs them."""

from __future__ import annotations

import json

import pytest
from _drivers import run_driver
from test_study import tiny_folders

from espcn_jax.study import results


def test_tiny_sweep_end_to_end_then_rerun_skips_everything(tmp_path):
    """The smoke grid (lr, hr x 1 budget x 2 seeds, a few steps) on tiny folders."""
    train, val = tiny_folders(tmp_path / "data")
    workdir = tmp_path / "study"
    args = (
        "--preset=smoke",
        f"--workdir={workdir}",
        f"--config.data.train={train}",
        f"--config.eval.sets={val}",
        "--noprogress",
    )
    proc = run_driver("sweep.py", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = results.read(workdir / "results.jsonl")
    assert len(records) == 4 and {r["status"] for r in records} == {"ok"}
    assert {(r["family"], r["seed"]) for r in records} == {
        (f, s) for f in ("lr", "hr") for s in (0, 1)
    }
    for r in records:
        assert r["eval_set"] == val and r["psnr"] == r["eval"][val]["psnr"]
        assert r["train_steps"] == 8 and r["config"]["train"]["steps"] == 8
        # float32, as the published studies: the default run's bfloat16 is not inherited
        assert r["precision"] == r["config"]["train"]["precision"] == "default"
        assert r["flops_xla"] > 0 and r["params"] > 0
        assert r["latency_ms"] is None and r["throughput"] is None  # latency.json times them
        assert r["rf_match"] == "none" and r["lr"] == 3e-3 and r["steps"] == 8
        assert r["receptive_field"] == r["receptive_field_lr"] and r["role"] == "grid"
    latency = json.loads((workdir / "latency.json").read_text())  # timed interleaved, at the end
    assert latency["lr_size"] == "32x48" and (latency["rounds"], latency["repeats"]) == (2, 2)
    assert set(latency["points"]) == {r["point_id"] for r in records}
    for timing in latency["points"].values():
        assert len(timing["samples_ms"]) == 4 and timing["median_ms"] > 0
    report = workdir / "report"
    for name in ("report.md", "table.csv", "differences.csv", "report.json", "conclusion.md"):
        assert (report / name).stat().st_size > 0, name
    for name in (
        "psnr_vs_gflops",
        "psnr_vs_latency",
        "psnr_vs_params",
        "training_curves",
        "samples",
    ):
        assert (report / f"{name}.png").stat().st_size > 1000, name
        assert (report / f"{name}.svg").exists()
    conclusion = (report / "conclusion.md").read_text().strip()
    assert proc.stdout.rstrip().endswith(f"output directory: {workdir}")
    assert conclusion in proc.stdout and "| lr |" in proc.stdout

    again = run_driver("sweep.py", *args, "--json", "--noreport")
    assert again.returncode == 0, again.stderr[-3000:]
    summary = json.loads(again.stdout)
    assert (summary["ok"], summary["failed"], summary["skipped"]) == (0, 0, 4)
    assert len(results.read(workdir / "results.jsonl")) == 4  # nothing appended or rewritten

    rep = run_driver(
        "report.py", f"--workdir={workdir}", f"--out_dir={tmp_path / 'r2'}", "--json", "--nosamples"
    )
    assert rep.returncode == 0, rep.stderr[-3000:]
    assert json.loads(rep.stdout)["conclusion"] == conclusion


def test_dry_run_lists_exactly_the_shard(tmp_path):
    full = run_driver("sweep.py", "--preset=quick", f"--workdir={tmp_path}", "--dry_run", "--json")
    assert full.returncode == 0, full.stderr[-2000:]
    plan = json.loads(full.stdout)
    grid = [p["point_id"] for p in plan["run"]]
    # lr, hr x 3 budgets x 3 seeds; the 4x control at one budget; lr/deconv equivalence, 1 seed
    assert len(grid) == 18 + 6 + 2
    roles = [p["role"] for p in plan["run"]]
    assert roles == ["grid"] * 18 + ["control"] * 6 + ["equivalence"] * 2
    budgets = sorted({p["budget"] for p in plan["run"] if p["role"] == "grid"})
    assert len(budgets) >= 3 and budgets[-1] / budgets[0] >= 8
    steps = {p["role"]: p["steps"] for p in plan["run"]}
    assert steps["control"] >= 2 * steps["grid"] and len(plan["lr_search"]) == 6
    one = run_driver(
        "sweep.py", "--preset=quick", f"--workdir={tmp_path}", "--dry_run", "--shard=1/3", "--json"
    )
    assert [p["point_id"] for p in json.loads(one.stdout)["run"]] == grid[1::3]
    table = run_driver(
        "sweep.py", "--preset=quick", f"--workdir={tmp_path}", "--dry_run", "--shard=1/3"
    )  # without --json: a table of the same points
    assert table.returncode == 0, table.stderr[-2000:]
    assert "9 of 26 points in shard 1/3" in table.stdout
    assert all(point_id in table.stdout for point_id in grid[1::3])
    assert "learning-rate search first: 6 short runs" in table.stdout


def test_standard_preset_is_at_least_4_budgets_over_16x(tmp_path):
    proc = run_driver(
        "sweep.py", "--preset=standard", f"--workdir={tmp_path}", "--dry_run", "--json",
        "--config.eval.set5=/data/Set5",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    plan = json.loads(proc.stdout)
    run = plan["run"]
    grid = [p for p in run if p["role"] == "grid"]
    budgets = sorted({p["budget"] for p in grid})
    assert len(budgets) >= 4 and budgets[-1] / budgets[0] >= 16
    assert {p["family"] for p in grid} == {"lr", "hr"} and len({p["seed"] for p in grid}) >= 3
    assert any(p["role"] == "control" for p in run)
    # the rates are searched at every length a run trains (each run uses its own length's)
    assert {p["steps"] for p in plan["lr_search"]} == {p["steps"] for p in run}


@pytest.mark.parametrize(
    "args, message",
    [
        (("--preset=quick", "--shard=3/2"), "shard must be i/n"),
        (("--preset=quick", "--config=experiments/configs/sweep.py:paper"), "not both"),
        (("--workdir=/nonexistent",), "--preset"),
        (
            ("--preset=quick", "--config.model.scale=1"),
            "config.model.scale must be an integer >= 2",
        ),
        (("--preset=quick", "stray"), "unexpected positional arguments: stray"),
        (("--preset=quick", "--config.rf_match=dilated"), "rf_match: 'dilated' is not one of"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
    if not any(a.startswith("--workdir") for a in args):
        args = (*args, f"--workdir={tmp_path}")
    proc = run_driver("sweep.py", *args, "--dry_run")
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last


def test_report_of_an_empty_workdir_is_a_usage_error(tmp_path):
    proc = run_driver("report.py", f"--workdir={tmp_path}")
    assert proc.returncode == 2 and "no results" in proc.stderr.strip().splitlines()[-1]


@pytest.mark.heavy
def test_search_curve_control_and_equivalence_with_the_real_engine(tmp_path):
    """The smoke grid with everything beside it switched on, trained by the engine: the search's
    rates reach the records, each curve point has the training PSNR of a kept checkpoint, and the
    equivalence pair (lr and deconv from the same function) scores identically."""
    train, val = tiny_folders(tmp_path / "data")
    workdir = tmp_path / "study"
    args = (
        "--preset=smoke", f"--workdir={workdir}", f"--config.data.train={train}",
        f"--config.eval.sets={val}", "--config.eval.curve_points=2",
        "--config.lr_search.rates=0.001,0.01", "--config.lr_search.steps=4",
        "--config.lr_search.extend=1",
        "--config.control.steps=16", "--config.equivalence.budgets=2000",
        "--config.equivalence.seeds=0", "--config.seeds=0", "--noprogress", "--noreport",
    )  # fmt: skip
    proc = run_driver("sweep.py", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    searched = json.loads((workdir / "lr_search.json").read_text())
    chosen = searched["lrs"]
    for family in ("lr", "hr"):  # a best at an end of the rates tried steps once past it
        tried = sorted({row["lr"] for row in searched["table"] if row["family"] == family})
        up, down = pytest.approx([1e-3, 1e-2, 1e-1]), pytest.approx([1e-4, 1e-3, 1e-2])
        assert tried == up or tried == down, tried
        assert searched["at_edge"][family] == (chosen[family] in (tried[0], tried[-1]))
    records = results.read(workdir / "results.jsonl")
    assert {r["role"] for r in records} == {"grid", "control", "equivalence"}
    assert {r["status"] for r in records} == {"ok"}
    for r in records:
        if r["role"] != "equivalence":
            assert r["lr"] == chosen[r["family"]]
        half = r["steps"] // 2
        assert [c["step"] for c in r["curve"]] == [half, r["steps"]]
        assert all(isinstance(c["train_psnr"], float) for c in r["curve"])
        assert r["curve"][-1]["eval"][val]["psnr"] == pytest.approx(r["psnr"])
    eq = {r["family"]: r for r in records if r["role"] == "equivalence"}
    assert eq["lr"]["psnr"] == pytest.approx(eq["deconv"]["psnr"], abs=1e-4)
    latency = json.loads((workdir / "latency.json").read_text())
    assert set(latency["points"]) == {r["point_id"] for r in records}
