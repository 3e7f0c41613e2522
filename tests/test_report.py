"""The study's statistics and report against independent computations (scipy, numpy, by hand).

The statistical rules themselves (seeds, budgets, monotone fits, latency, convergence, per image)
are tested in ``test_report_rules.py``; this file covers the primitives, records written before
per-set scores existed, and the files the report writes."""

from __future__ import annotations

import csv
import io
import json
import math
import statistics

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats as sps
from test_report_rules import VAL, log_curve, make

from espcn_jax.study import outputs, report, results, stats

# --- statistics ----------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [2, 3, 7])
def test_paired_interval_matches_scipy_one_sample_t(n):
    d = np.random.default_rng(n).normal(0.3, 0.2, n)
    iv = stats.paired_interval(d, 0.9)
    ref = sps.ttest_1samp(d, 0.0).confidence_interval(0.9)
    assert (iv.low, iv.high) == pytest.approx((ref.low, ref.high), rel=1e-10)
    assert iv.mean == pytest.approx(float(np.mean(d)))
    assert iv.sd == pytest.approx(statistics.stdev(d.tolist()))
    assert iv.excludes_zero == (ref.low > 0 or ref.high < 0)


def test_one_pair_has_no_interval():
    iv = stats.paired_interval([0.5])
    assert iv.mean == 0.5 and math.isnan(iv.low) and not iv.excludes_zero


def test_mean_std_is_the_sample_std():
    assert stats.mean_std([1.0, 2.0, 4.0]) == pytest.approx(
        (statistics.mean([1, 2, 4]), statistics.stdev([1, 2, 4]))
    )
    assert math.isnan(stats.mean_std([3.0])[1])


@pytest.mark.parametrize("n", [1, 2, 3, 6])
def test_seed_stat_follows_the_seed_rule(n):
    x = list(np.random.default_rng(n).normal(30, 0.1, n))
    s = stats.seed_stat(x)
    assert s.mean == pytest.approx(statistics.mean(x)) and s.n == n
    if n >= 3:
        ref = sps.ttest_1samp(x, 0.0).confidence_interval(0.95)
        assert s.kind == stats.T_INTERVAL and s.df == n - 1
        assert (s.low, s.high) == pytest.approx((ref.low, ref.high))
    elif n == 2:
        assert s.kind == stats.SEED_RANGE and (s.low, s.high) == (min(x), max(x))
        assert not s.excludes_zero and "95%" not in s.text()
    else:
        assert s.kind == stats.NO_INTERVAL and math.isnan(s.low)


def test_image_stat_counts_ties_and_needs_three_images_for_an_interval():
    s = stats.image_stat([0.2, 0.0, -0.1])
    assert (s.n_positive, s.n_negative, s.n_ties) == (1, 1, 1)
    assert s.sign_p == pytest.approx(1.0)
    two = stats.image_stat([0.2, 0.1])
    assert math.isnan(two.low) and two.label == "2 images: no interval"


def test_curve_inverse_recovers_a_log_linear_cost():
    costs = (1e3, 4e3, 1.6e4)
    curve = stats.Curve(costs, tuple(20 + 0.5 * math.log2(c) for c in costs))
    status, cost = curve.inverse(20 + 0.5 * math.log2(5e3))
    assert status == "in range" and cost == pytest.approx(5e3)
    assert curve.inverse(100.0)[0] == "above" and curve.inverse(0.0)[0] == "below"
    assert math.isnan(curve.at(2e4))  # never extrapolated
    with pytest.raises(ValueError, match="rising"):
        stats.Curve(costs, (3.0, 2.0, 4.0)).inverse(2.5)


def test_slope_per_doubling_matches_linregress():
    x = np.array([1e3, 3e3, 1e4, 4e4])
    y = np.array([28.1, 29.0, 29.8, 30.9])
    assert stats.slope_per_doubling(x, y) == pytest.approx(sps.linregress(np.log2(x), y).slope)


@pytest.mark.parametrize(
    "short, long, want",
    [(0.4, 0.42, True), (0.4, 0.2, False), (0.4, -0.4, False), (0.02, -0.02, True)],
)
def test_held_rule(short, long, want):
    assert stats.held(short, long) is want


@given(st.lists(st.tuples(st.integers(1, 20), st.integers(0, 20)), min_size=1, max_size=30))
def test_pareto_front_by_definition(points):
    costs, values = zip(*points, strict=True)
    front = stats.pareto_front(costs, values)

    def dominated(i):
        return any(
            costs[j] <= costs[i]
            and values[j] >= values[i]
            and (costs[j] < costs[i] or values[j] > values[i])
            for j in range(len(points))
        )

    assert set(front) == {i for i in range(len(points)) if not dominated(i)}
    assert [costs[i] for i in front] == sorted(costs[i] for i in front)


# --- records written before per-set scores --------------------------------------------------------

BUDGETS = (1e4, 2.5e4)


def old_records(gap: dict[float, float], seeds=(0, 1, 2), residual=True, seed=0):
    """The old record shape: top-level psnr for eval_set only, boolean match_rf, no curve."""
    rng = np.random.default_rng(seed)
    out = []
    for budget in BUDGETS:
        for s in seeds:
            base = 25 + math.log(budget / 1e4)
            psnr = {
                "lr": base + rng.normal(0, 0.05),
                "hr": base - gap[budget] + rng.normal(0, 0.05),
            }
            for family, p in psnr.items():
                out.append(
                    {
                        "point_id": f"{family}-{budget:g}-{s}-{residual}",
                        "status": "ok",
                        "family": family,
                        "depth": 3,
                        "steps": 100,
                        "residual": residual,
                        "match_rf": False,
                        "setting": "abc",
                        "budget": budget,
                        "seed": s,
                        "psnr": p,
                        "ssim": 0.8,
                        "train_loss_psnr": p + 1.0,
                        "widths": [8, 8],
                        "params": 100,
                        "conv_macs_per_lr_pixel": budget,
                        "flops": 2 * budget * 1e5,
                        "flops_xla": 2 * budget * 1e5,
                        "latency_ms": {"lr": 1.0, "hr": 4.0}[family] * budget / 1e4,
                        "throughput_images_per_s": 10.0,
                        "memory_bytes": 2**20,
                        "receptive_field_lr": 9,
                        "eval_set": "skimage:validation",
                        "bicubic_psnr": 24.5,
                    }
                )
    return out


def test_old_records_are_reported_with_what_they_lack_said():
    recs = old_records({1e4: 0.5, 2.5e4: 0.3})
    recs.append({"point_id": "x", "status": "failed", "family": "lr", "error": "ValueError: boom"})
    a = report.analyse(recs)
    assert a["sets"] == ["skimage:validation"]
    rows = a["rows"]
    assert len(rows) == 4 and rows[0]["rf_match"] == "none" and rows[0]["n_images"] is None
    for row in rows:
        ps = [
            r["psnr"]
            for r in recs
            if r.get("budget") == row["budget"] and r["family"] == row["family"]
        ]
        assert row["psnr"] == pytest.approx(statistics.mean(ps))
        assert row["psnr_std"] == pytest.approx(statistics.stdev(ps))
    text = a["conclusion"]
    assert "per-image scores not recorded" in text
    assert "Converged (validation split): not measured" in text
    assert "Failed and left out: x (ValueError: boom)." in text
    assert "not interleaved" in text
    d = a["per_set"][VAL]["differences"]["lr", "hr"][1]
    assert f"2.5e4: {d['seeds'].mean:+.3f} (" in text


def test_latest_record_wins_in_the_report():
    recs = old_records({1e4: 0.5, 2.5e4: 0.3})
    first = recs[0]
    rerun = dict(first, psnr=first["psnr"] + 10)
    rows = report.table_rows(report.split(recs + [rerun])[0])
    row = [r for r in rows if (r["family"], r["budget"]) == (first["family"], first["budget"])][0]
    ps = [
        r["psnr"]
        for r in recs
        if (r["family"], r["budget"]) == (first["family"], first["budget"])
        and r["seed"] != first["seed"]
    ] + [rerun["psnr"]]
    assert row["psnr"] == pytest.approx(statistics.mean(ps))


# --- files ----------------------------------------------------------------------------------------


def test_write_report_files(tmp_path):
    recs = make(
        log_curve({"lr": 1e3, "hr": 4e3}), sets=(VAL, "folder:/x/Set5"), curve_gain=lambda *_: 0.1
    )
    for r in recs:
        results.append(tmp_path / "results.jsonl", r)
    points = {r["point_id"]: {"median_ms": 1.0 + (r["family"] == "hr")} for r in recs}
    latency = {"lr_size": "360x640", "repeats": 10, "rounds": 3, "points": points}
    (tmp_path / "latency.json").write_text(json.dumps(latency))
    summary = outputs.write_report(tmp_path, samples=False)
    out = tmp_path / "report"
    rows = list(csv.DictReader(io.StringIO((out / "table.csv").read_text())))
    assert len(rows) == 12 and {r["set_label"] for r in rows} == {"validation split", "Set5"}
    md = (out / "report.md").read_text()
    assert summary["conclusion"] in md
    assert "## Statistical rules" in md and "## Set5 (`folder:/x/Set5`, 5 images)" in md
    assert "## Convergence (validation split)" in md and "## Latency ratios" in md
    assert "timed interleaved in one process" in md
    for name in ("psnr_vs_macs", "psnr_vs_gflops", "psnr_vs_latency", "convergence"):
        for ext in ("png", "svg"):
            assert (out / f"{name}.{ext}").stat().st_size > 1000, name
    assert (out / "conclusion.md").read_text().strip() == summary["conclusion"]
    payload = json.loads((out / "report.json").read_text())
    assert payload["conclusion_lines"] == [line[2:] for line in summary["conclusion"].splitlines()]
    assert payload["latency_ratios"][0]["ratio"] == pytest.approx(2.0)
    assert "| lr |" in summary["table_md"]


def test_a_latency_file_that_is_not_one_is_an_error(tmp_path):
    for r in old_records({1e4: 0.5, 2.5e4: 0.3}):
        results.append(tmp_path / "results.jsonl", r)
    (tmp_path / "latency.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="latency.json has no 'points' object"):
        outputs.write_report(tmp_path, samples=False)


def test_write_report_without_records_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no results"):
        outputs.write_report(tmp_path)
