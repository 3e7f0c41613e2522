"""The study's statistics and report against independent computations (scipy, numpy, by hand)."""

from __future__ import annotations

import csv
import io
import math
import statistics

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats as sps

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


def test_fit_log_matches_linregress():
    x = np.array([1e3, 3e3, 1e4, 4e4])
    y = np.array([28.1, 29.0, 29.8, 30.9])
    fit = stats.fit_log(x, y)
    ref = sps.linregress(np.log(x), y)
    assert (fit.slope, fit.intercept) == pytest.approx((ref.slope, ref.intercept))
    assert fit.inverse(fit(2e4)) == pytest.approx(2e4)


def test_equivalence_recovers_a_known_compute_factor():
    """hr's PSNR curve is lr's shifted right by a factor 4 in cost: hr needs exactly 4x."""
    costs = np.array([1e4, 2.5e4, 5e4])
    slope, k = 1.3, 4.0
    lr = 20 + slope * np.log(costs)
    hr = 20 + slope * np.log(costs / k)
    eq = stats.equivalence(costs, lr[None].repeat(3, 0), costs, hr[None].repeat(3, 0), n_boot=50)
    assert eq.ratio == pytest.approx(k)
    assert eq.low == pytest.approx(k) and eq.high == pytest.approx(k)  # no seed noise
    assert eq.extrapolated  # 4 x the geometric-mean cost lies beyond hr's largest budget


def test_equivalence_interval_covers_the_truth_under_seed_noise():
    costs = np.array([1e4, 3e4])
    rng = np.random.default_rng(0)
    lr = 20 + 1.5 * np.log(costs) + rng.normal(0, 0.05, (5, 2))
    hr = 20 + 1.5 * np.log(costs / 2.0) + rng.normal(0, 0.05, (5, 2))
    eq = stats.equivalence(costs, lr, costs, hr, n_boot=500)
    assert eq.low < 2.0 < eq.high
    assert eq.n_seeds == 5


def test_equivalence_is_infinite_when_b_does_not_improve_with_cost():
    costs = [1e4, 2e4]
    eq = stats.equivalence(costs, [[30.0, 31.0]], costs, [[29.0, 28.0]], n_boot=10)
    assert math.isinf(eq.ratio) and eq.extrapolated


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


# --- synthetic records ---------------------------------------------------------------------------

BUDGETS = (1e4, 2.5e4)
LATENCY = {"lr": 1.0, "hr": 4.0, "deconv": 1.2}  # ms per 1e4 MACs


def synthetic(gap: dict[float, float], seeds=(0, 1, 2), noise=0.05, residual=True, seed=0):
    """lr PSNR = 25 + ln(budget/1e4) + noise; hr = lr - gap[budget] + noise; deconv = lr - 0.1."""
    rng = np.random.default_rng(seed)
    out = []
    for budget in BUDGETS:
        for s in seeds:
            base = 25 + math.log(budget / 1e4)
            psnr = {
                "lr": base + rng.normal(0, noise),
                "hr": base - gap[budget] + rng.normal(0, noise),
                "deconv": base - 0.1 + rng.normal(0, noise),
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
                        "latency_ms": LATENCY[family] * budget / 1e4,
                        "throughput_images_per_s": 10.0,
                        "memory_bytes": 2**20,
                        "receptive_field_lr": 9,
                        "eval_set": "skimage:validation",
                        "bicubic_psnr": 24.5,
                    }
                )
    return out


def test_differences_at_matched_flops_are_the_paired_seed_differences():
    recs = synthetic({1e4: 0.5, 2.5e4: 0.3})
    diffs = report.differences(recs, "lr", "hr")
    assert [d["budget"] for d in diffs] == list(BUDGETS)
    for d in diffs:
        by = {(r["family"], r["seed"]): r["psnr"] for r in recs if r["budget"] == d["budget"]}
        paired = [by["lr", s] - by["hr", s] for s in (0, 1, 2)]
        ref = sps.ttest_1samp(paired, 0.0).confidence_interval(0.95)
        assert d["flops"]["mean"] == pytest.approx(np.mean(paired))
        assert (d["flops"]["low"], d["flops"]["high"]) == pytest.approx((ref.low, ref.high))


def test_differences_at_matched_latency_interpolate_b_in_log_latency():
    recs = synthetic({1e4: 0.5, 2.5e4: 0.3})
    d = report.differences(recs, "lr", "hr")[1]  # lr at 2.5e4 runs in 2.5 ms: hr spans 4-10 ms
    hr = {(r["budget"], r["seed"]): r for r in recs if r["family"] == "hr"}
    lr = {r["seed"]: r for r in recs if r["family"] == "lr" and r["budget"] == 2.5e4}
    want = []
    for s in (0, 1, 2):
        x = np.log([hr[1e4, s]["latency_ms"], hr[2.5e4, s]["latency_ms"]])
        y = [hr[1e4, s]["psnr"], hr[2.5e4, s]["psnr"]]
        slope = (y[1] - y[0]) / (x[1] - x[0])
        want.append(lr[s]["psnr"] - (y[0] + slope * (math.log(2.5) - x[0])))
    assert d["latency"]["mean"] == pytest.approx(np.mean(want))
    assert d["latency"]["extrapolated"]  # 2.5 ms lies below hr's fastest net (4 ms)


def test_table_rows_are_seed_means_and_sample_stds():
    recs = synthetic({1e4: 0.5, 2.5e4: 0.3})
    rows = report.table_rows(recs)
    assert len(rows) == 6
    for row in rows:
        ps = [
            r["psnr"] for r in recs if (r["family"], r["budget"]) == (row["family"], row["budget"])
        ]
        assert row["psnr"] == pytest.approx(statistics.mean(ps))
        assert row["psnr_std"] == pytest.approx(statistics.stdev(ps))
        assert row["n_seeds"] == 3
    # families of a cell in a fixed order: lr, deconv, hr
    assert [r["family"] for r in rows[:3]] == ["lr", "deconv", "hr"]


def test_conclusion_reports_the_win_and_the_cells_where_lr_does_not_win():
    recs = synthetic({1e4: -1.0, 2.5e4: 1.0})  # hr better at the small budget, lr at the large
    recs.append({"point_id": "x", "status": "failed", "family": "lr", "error": "ValueError: boom"})
    a = report.analyse(recs, n_boot=50)
    text = a["conclusion"]
    assert "lr beats hr in 1 of 2 cells" in text and "loses in 1" in text
    assert (
        "lr does not resolvably beat hr at: depth 3, 100 steps, residual on, budget 10000" in text
    )
    assert "hr beats lr at matched FLOPs" in text
    assert "1 point(s) failed" in text and "ValueError: boom" in text
    assert "where bicubic upscaling scores 24.500 dB" in text
    # the numbers in the text are the table's
    d = a["differences"]["lr", "hr"][1]
    assert f"{d['flops']['mean']:+.3f} dB" in text


def test_conclusion_without_seed_replication_says_so():
    recs = synthetic({1e4: 0.5, 2.5e4: 0.5}, seeds=(0,))
    text = report.analyse(recs, n_boot=10)["conclusion"]
    assert "one seed: no interval" in text and "beats hr in 0 of 2 cells" in text


def test_latest_record_wins_in_the_report():
    recs = synthetic({1e4: 0.5, 2.5e4: 0.3})
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


def test_write_report_files(tmp_path):
    recs = synthetic({1e4: 0.5, 2.5e4: 0.3}) + synthetic(
        {1e4: -0.2, 2.5e4: 0.1}, residual=False, seed=1
    )
    for r in recs:
        results.append(tmp_path / "results.jsonl", r)
    summary = outputs.write_report(tmp_path, samples=False, n_boot=50)
    out = tmp_path / "report"
    rows = list(csv.DictReader(io.StringIO((out / "table.csv").read_text())))
    assert len(rows) == 12 and {r["family"] for r in rows} == {"lr", "hr", "deconv"}
    assert float(rows[0]["psnr"]) == pytest.approx(report.table_rows(recs)[0]["psnr"])
    md = (out / "report.md").read_text()
    assert summary["conclusion"] in md and "| lr, hr |" in md
    for name in ("psnr_vs_gflops", "psnr_vs_latency", "psnr_vs_params"):
        for ext in ("png", "svg"):
            assert (out / f"{name}.{ext}").stat().st_size > 1000
    assert (out / "conclusion.md").read_text().strip() == summary["conclusion"]
    assert "residual off" in summary["conclusion"] and "residual on" in summary["conclusion"]


def test_write_report_without_records_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no results"):
        outputs.write_report(tmp_path)
