"""The report's statistical rules on synthetic records: what it says with 2 seeds, 2 budgets, a
flat or falling curve, a converged or still-rising curve, per-image scores, and a case where every
rule is met. References are computed here by hand or by scipy, never by the report's code."""

from __future__ import annotations

import math
import re
import zlib

import numpy as np
import pytest
from scipy import stats as sps

from espcn_jax.study import report, stats

VAL, SET5 = "skimage:validation", "folder:/data/benchmarks/Set5"
IMAGES = ("a.png", "b.png", "c.png", "d.png", "e.png")


def make(
    psnr,  # (family, budget, seed, image index, steps) -> dB
    *,
    families=("lr", "hr"),
    budgets=(1e4, 3e4, 1e5),
    seeds=(0, 1, 2),
    steps=(1000,),
    latency=lambda family, budget: {"lr": 1.0, "hr": 3.0, "deconv": 1.1}[family] * budget / 1e4,
    sets=(VAL,),
    curve_gain=None,  # (family, budget, steps) -> dB gained over the last 25% of steps
    per_image=True,
):
    out = []
    for t in steps:
        for budget in budgets:
            for s in seeds:
                for f in families:
                    evals = {}
                    for k, name in enumerate(sets):
                        ims = [psnr(f, budget, s, i, t) + k for i in range(len(IMAGES))]
                        evals[name] = {"psnr": float(np.mean(ims)), "ssim": 0.8, "step": t}
                        if per_image:
                            evals[name]["per_image"] = {
                                "names": list(IMAGES),
                                "psnr": ims,
                                "ssim": [0.8] * len(IMAGES),
                            }
                    rec = {
                        "point_id": f"{f}-{budget:g}-{s}-{t}",
                        "status": "ok",
                        "family": f,
                        "depth": 3,
                        "steps": t,
                        "residual": True,
                        "rf_match": "none",
                        "setting": "abc",
                        "budget": budget,
                        "seed": s,
                        "lr": 3e-3,
                        "psnr": evals[sets[0]]["psnr"],
                        "ssim": 0.8,
                        "eval_set": sets[0],
                        "eval": evals,
                        "widths": [8, 8],
                        "params": 100,
                        "conv_macs_per_lr_pixel": budget,
                        "flops": 2 * budget * 360 * 640,
                        "flops_xla": 2 * budget * 360 * 640,
                        "latency_ms": latency(f, budget),
                    }
                    if curve_gain is not None:
                        final = evals[sets[0]]["psnr"]
                        g = curve_gain(f, budget, t)
                        rec["curve"] = [
                            {"step": q, "eval": {sets[0]: {"psnr": final - g * (t - q) / (t / 4)}}}
                            for q in (t // 4, t // 2, 3 * t // 4, t)
                        ]
                    out.append(rec)
    return out


def noise(*key) -> float:
    return float(np.random.default_rng(zlib.crc32(repr(key).encode())).normal(0, 0.01))


def log_curve(shift: dict):
    """PSNR = 25 + 0.3 log2(budget / shift[family]) + small seed and image noise."""

    def f(family, budget, seed, image, steps):
        return (
            25
            + 0.3 * math.log2(budget / shift[family])
            + 0.02 * image
            + noise(family, budget, seed, image)
        )

    return f


def test_two_seeds_give_the_seed_range_and_no_95_percent_seed_interval():
    recs = make(log_curve({"lr": 1e3, "hr": 4e3}), seeds=(0, 1))
    a = report.analyse(recs)
    text = a["conclusion"]
    assert "seed range (2 seeds)" in text
    assert "t-interval over" not in text and "CI" not in text
    d = a["per_set"][VAL]["differences"]["lr", "hr"][0]
    by = {(r["family"], r["seed"]): r["psnr"] for r in recs if r["budget"] == 1e4}
    diffs = [by["lr", s] - by["hr", s] for s in (0, 1)]
    assert (d["seeds"].low, d["seeds"].high) == pytest.approx((min(diffs), max(diffs)))
    assert d["verdict"] == "unresolved (seed range (2 seeds))"
    for row in a["rows"]:
        assert row["psnr_interval"] == "seed range (2 seeds)"


def test_three_seeds_give_a_t_interval_with_its_df():
    recs = make(log_curve({"lr": 1e3, "hr": 4e3}))
    d = report.analyse(recs)["per_set"][VAL]["differences"]["lr", "hr"][0]
    by = {(r["family"], r["seed"]): r["psnr"] for r in recs if r["budget"] == 1e4}
    diffs = [by["lr", s] - by["hr", s] for s in (0, 1, 2)]
    ref = sps.ttest_1samp(diffs, 0.0).confidence_interval(0.95)
    assert (d["seeds"].low, d["seeds"].high) == pytest.approx((ref.low, ref.high))
    assert d["seeds"].label == "95% t-interval over 3 seeds, df 2"


def test_one_seed_gives_no_interval():
    st = stats.seed_stat([0.4])
    assert st.kind == stats.NO_INTERVAL and st.text() == "+0.400 dB (1 seed: no interval)"


def test_per_image_paired_counts_and_interval():
    """lr wins on 3 images, loses on 2; per image averaged over seeds first."""
    offsets = (0.3, 0.2, 0.1, -0.1, -0.4)

    def psnr(family, budget, seed, image, steps):
        return 25 + (offsets[image] if family == "lr" else 0) + 0.01 * seed * (family == "hr")

    recs = make(psnr, budgets=(1e4,))
    d = report.analyse(recs)["per_set"][VAL]["differences"]["lr", "hr"][0]
    im = d["images"]
    want = np.array(offsets) - 0.01  # hr's seeds 0, 1, 2 average +0.01
    ref = sps.ttest_1samp(want, 0.0).confidence_interval(0.95)
    assert (im.n, im.n_positive, im.n_negative, im.n_ties) == (5, 3, 2, 0)
    assert im.mean == pytest.approx(want.mean())
    assert (im.low, im.high) == pytest.approx((ref.low, ref.high))
    assert im.sign_p == pytest.approx(sps.binomtest(3, 5).pvalue)
    assert "lr higher on 3 of 5 images, hr on 2" in d["verdict"] or "lr higher on 3 of 5" in (
        report._images_text(d)
    )
    assert "5 images" in report.analyse(recs)["conclusion"]


def test_missing_per_image_scores_are_said_not_invented():
    recs = make(log_curve({"lr": 1e3, "hr": 4e3}), per_image=False)
    a = report.analyse(recs)
    assert a["per_set"][VAL]["differences"]["lr", "hr"][0]["images"] is None
    assert "per-image scores not recorded" in a["conclusion"]
    assert "validation split (images not counted)" in a["conclusion"]


def test_falling_latency_means_matched_latency_cannot_say():
    lat = {(1e4,): 375.0, (3e4,): 337.0, (1e5,): 500.0}

    def latency(family, budget):
        return budget / 1e4 if family == "lr" else lat[(budget,)]

    a = report.analyse(make(log_curve({"lr": 1e3, "hr": 4e3}), latency=latency))
    m = a["per_set"][VAL]["matched_latency"]["lr", "hr"][0]
    assert m["readings"] == []
    assert "hr's latency does not rise with its budget (375 -> 337 ms" in m["reason"]
    assert (
        "matched latency (timed per point): cannot say: hr's latency does not rise"
        in (a["conclusion"])
    )


def test_rising_latency_is_read_inside_the_range_only():
    """hr's latency spans 3-30 ms; lr's 1, 3, 10 ms: 1 ms is outside, 3 and 10 inside."""
    a = report.analyse(make(log_curve({"lr": 1e3, "hr": 4e3})))
    m = a["per_set"][VAL]["matched_latency"]["lr", "hr"][0]
    assert [r["status"] for r in m["readings"]] == ["below", "in range", "in range"]
    # lr at 3e4 runs 3 ms = hr at 1e4: lr - hr at matched latency is lr(3e4) - hr(1e4)
    recs = make(log_curve({"lr": 1e3, "hr": 4e3}))
    by = {(r["family"], r["budget"], r["seed"]): r["psnr"] for r in recs}
    want = np.mean([by["lr", 3e4, s] - by["hr", 1e4, s] for s in (0, 1, 2)])
    assert m["readings"][1]["stat"].mean == pytest.approx(want)


def test_two_budgets_give_no_compute_equivalence():
    a = report.analyse(make(log_curve({"lr": 1e3, "hr": 4e3}), budgets=(1e4, 2.5e4)))
    e = a["per_set"][VAL]["equivalences"]["lr", "hr"][0]
    assert e["readings"] == [] and "2 budget(s), a curve needs >= 3" in e["reason"]
    assert "compute-equivalence (hr's MACs to match lr's PSNR): cannot say" in a["conclusion"]
    assert "budget curves not read" in a["conclusion"]
    recs = make(log_curve({"lr": 1e3, "hr": 4e3}), budgets=(1e4, 2.5e4))
    lr = [
        np.mean([r["psnr"] for r in recs if (r["family"], r["budget"]) == ("lr", b)])
        for b in (1e4, 2.5e4)
    ]
    assert (
        f"seed-mean PSNR by budget: lr 1e4: {lr[0]:.3f}, 2.5e4: {lr[1]:.3f}; hr 1e4: "
        in (a["conclusion"])
    )


def test_a_narrow_span_gives_no_compute_equivalence():
    a = report.analyse(make(log_curve({"lr": 1e3, "hr": 4e3}), budgets=(1e4, 2e4, 4e4)))
    e = a["per_set"][VAL]["equivalences"]["lr", "hr"][0]
    assert "span 4x, a curve needs >= 8x" in e["reason"]


def test_a_flat_fit_is_not_monotone_and_not_read():
    def psnr(family, budget, seed, image, steps):
        if family == "hr":
            return 25.0 + 0.01 * image + noise("hr", budget, seed)
        return 25 + 0.3 * math.log2(budget / 1e3)

    a = report.analyse(make(psnr))
    e = a["per_set"][VAL]["equivalences"]["lr", "hr"][0]
    assert e["reason"].startswith("hr: PSNR does not rise") and "not monotone" in e["reason"]
    line = a["conclusion"].split("compute-equivalence")[1].split("\n")[0]
    assert "cannot say: hr: PSNR does not rise" in line and "needs" not in line


def test_a_curve_that_never_reaches_says_so():
    """hr rises but stays 1 dB below lr everywhere: not reached within the measured range."""

    def psnr(family, budget, seed, image, steps):
        return 25 + 0.1 * math.log2(budget / 1e3) - (family == "hr") + noise(family, budget, seed)

    a = report.analyse(make(psnr))
    e = a["per_set"][VAL]["equivalences"]["lr", "hr"][0]
    assert e["reason"] is None and {r["status"] for r in e["readings"]} == {"above"}
    assert a["conclusion"].count("not reached within the measured range") == 3


def test_every_rule_met_gives_an_in_range_ratio_with_an_interval():
    """hr's curve is lr's shifted right by 4x in MACs: at lr's 1e4, hr needs 4x (inside its
    1e4-1e5 range); at lr's 3e4 and 1e5 it would need 1.2e5 and 4e5: not reached."""
    a = report.analyse(make(log_curve({"lr": 1e3, "hr": 4e3})))
    e = a["per_set"][VAL]["equivalences"]["lr", "hr"][0]
    first = e["readings"][0]
    assert first["status"] == "in range" and first["ratio"] == pytest.approx(4.0, rel=0.1)
    iv = first["interval"]
    assert iv["kind"] == stats.T_INTERVAL and iv["low"] < 4.0 < iv["high"]
    assert [r["status"] for r in e["readings"][1:]] == ["above", "above"]
    text = a["conclusion"]
    assert (
        re.search(r"at lr's 1e4, hr needs (3\.9\d|4\.0\d)x", text)
        and "95% t-interval over 3 seeds, df 2" in text
    )
    assert "read inside hr's measured 1e4 to 1e5 MACs/LR px" in text
    assert "PSNR rises with MACs for every family (3 budgets, 10x)" in text
    # per-seed ratios, by hand: each seed's hr curve inverted at that seed's lr PSNR
    recs = make(log_curve({"lr": 1e3, "hr": 4e3}))
    by = {(r["family"], r["budget"], r["seed"]): r["psnr"] for r in recs}
    ratios = []
    for s in (0, 1, 2):
        hr = [by["hr", x, s] for x in (1e4, 3e4, 1e5)]
        x = np.interp(by["lr", 1e4, s], hr, np.log2([1e4, 3e4, 1e5]))
        ratios.append(2**x / 1e4)
    ref = sps.ttest_1samp(np.log2(ratios), 0.0).confidence_interval(0.95)
    assert (iv["low"], iv["high"]) == pytest.approx((2**ref.low, 2**ref.high))


def _gap(converged: bool):
    def psnr(family, budget, seed, image, steps):
        # converged: the same numbers at both lengths; not converged: everything still rising
        grow = 0 if converged else 0.5 * math.log2(steps / 1000)
        hr_extra = 0 if converged else 0.3 * math.log2(steps / 1000)
        base = 25 + 0.3 * math.log2(budget / 1e3) + grow + noise(family, budget, seed, steps)
        return base - (0.4 - hr_extra) * (family == "hr")

    return psnr


def test_converged_and_held_curves_allow_capacity_wording():
    recs = make(_gap(True), steps=(1000, 4000), curve_gain=lambda f, b, t: 0.0)
    a = report.analyse(recs)
    conv = a["convergence"]
    assert all(g["converged"] for g in conv["groups"].values())
    assert len(conv["controls"]) == 1 and conv["controls"][0]["held"]
    text = a["conclusion"]
    assert "held from 1,000 to 4,000 steps, so a capacity difference" in text
    assert "Converged (validation split): yes by the tail rule" in text
    assert "fitting capacity" not in text


def test_still_rising_curves_forbid_capacity_wording():
    recs = make(_gap(False), steps=(1000, 4000), curve_gain=lambda f, b, t: 0.2)
    a = report.analyse(recs)
    conv = a["convergence"]
    assert not any(g["converged"] for g in conv["groups"].values())
    assert not conv["controls"][0]["held"] and conv["held"] == set()
    text = a["conclusion"]
    assert "capacity difference" not in text and "fitting capacity" not in text
    assert "at this training length (1,000 steps)" in text
    assert "Converged (validation split): no: validation PSNR still rose by up to +0.200 dB" in text
    assert "did not hold" in text


def test_converged_tails_without_a_longer_control_stay_at_this_length():
    recs = make(_gap(True), curve_gain=lambda f, b, t: 0.01)
    text = report.analyse(recs)["conclusion"]
    assert "Longer-training control: none" in text and "no capacity claim" in text
    assert "(no longer-training control was run)" in text
    assert "capacity difference" not in text and "at this training length (1,000 steps)" in text


def test_tail_gain_by_hand():
    assert stats.tail_gain([250, 500, 750, 1000], [20, 21, 21.5, 21.6]) == pytest.approx(0.1)
    assert stats.tail_gain([1000], [21.0]) is None
    assert stats.tail_gain([900, 1000], [21.0, 21.1]) is None  # nothing at or before 750


def test_lr_vs_deconv_is_an_equivalence_check():
    def psnr(family, budget, seed, image, steps):
        return 25 + 0.3 * math.log2(budget / 1e3) + 0.002 * (family == "deconv") * (seed - 1)

    a = report.analyse(make(psnr, families=("lr", "hr", "deconv"), budgets=(1e4,)))
    d = a["per_set"][VAL]["lr_deconv"][0]
    assert d["equivalence"]["verdict"] == "equivalent"
    assert "lr vs deconv (same function class, an equivalence check)" in a["conclusion"]
    assert "dB (90% t-interval over 3 seeds, df 2): equivalent" in a["conclusion"]
    assert "equivalent within ±0.05 dB at 1 of 1 budgets" in a["conclusion"]
    assert ("lr", "deconv") not in a["per_set"][VAL]["differences"]  # no race
    two = report.analyse(make(psnr, families=("lr", "deconv"), budgets=(1e4,), seeds=(0, 1)))
    assert "equivalence cannot be tested with seed range (2 seeds)" in two["conclusion"]


def test_per_set_tables_and_conclusions():
    recs = make(log_curve({"lr": 1e3, "hr": 4e3}), sets=(VAL, SET5))
    a = report.analyse(recs)
    assert a["sets"] == [VAL, SET5]
    assert {r["set_label"] for r in a["rows"]} == {"validation split", "Set5"}
    set5 = [r for r in a["rows"] if r["set"] == SET5 and r["family"] == "lr"]
    assert set5[0]["psnr"] == pytest.approx(
        np.mean(
            [r["eval"][SET5]["psnr"] for r in recs if (r["family"], r["budget"]) == ("lr", 1e4)]
        )
    )
    assert set5[0]["n_images"] == 5
    assert "[Set5] depth 3, 1,000 steps" in a["conclusion"]
    assert "sets: validation split 5 images; Set5 5 images" in a["conclusion"]


def test_interleaved_latency_gives_the_ratios():
    recs = make(log_curve({"lr": 1e3, "hr": 4e3}), budgets=(1e4,))
    points = {r["point_id"]: {"median_ms": 2.0 if r["family"] == "lr" else 7.0} for r in recs}
    lat = {"lr_size": "360x640", "repeats": 20, "rounds": 5, "points": points}
    a = report.analyse(recs, latency=lat)
    (ratio,) = a["latency_ratios"]
    assert ratio["ratio"] == pytest.approx(3.5) and ratio["source"] == report.INTERLEAVED
    assert (
        "Latency hr/lr" in a["conclusion"]
        and "timed interleaved in one process" in (a["conclusion"])
    )
    plain = report.analyse(recs)
    assert plain["latency_ratios"][0]["ratio"] == pytest.approx(3.0)
    assert "not interleaved" in plain["conclusion"]


def test_conclusion_is_a_list_of_short_claims_with_basis():
    a = report.analyse(make(log_curve({"lr": 1e3, "hr": 4e3})))
    lines = a["conclusion"].splitlines()
    assert all(line.startswith("- ") for line in lines)
    assert lines[0].startswith("- Training length in steps: 1,000 (grid); peak learning rate")
    assert any(line.startswith("- Basis: 18 completed points") for line in lines)
    assert any("Extrapolation:" in line for line in lines)
    assert any(line.startswith("- The grid cannot say:") for line in lines)
    assert "FLOPs" not in a["conclusion"] and "MACs" in a["conclusion"]


def test_a_missing_point_leaves_its_seed_out_of_the_pairs():
    """hr seed 2 at 3e4 failed: that cell pairs 2 seeds (seed range), the curves drop seed 2 from
    the per-seed readings, and nothing raises."""
    recs = [
        r for r in make(log_curve({"lr": 1e3, "hr": 4e3})) if r["point_id"] != "hr-30000-2-1000"
    ]
    a = report.analyse(recs)
    cells = a["per_set"][VAL]["differences"]["lr", "hr"]
    assert [d["seeds"].n for d in cells] == [3, 2, 3]
    assert cells[1]["seeds"].kind == stats.SEED_RANGE
    e = a["per_set"][VAL]["equivalences"]["lr", "hr"][0]
    assert e["n_seeds"] == 2 and e["readings"][0]["interval"]["kind"] == stats.SEED_RANGE
    m = a["per_set"][VAL]["matched_latency"]["lr", "hr"][0]
    assert all(r["stat"] is None or r["stat"].n == 2 for r in m["readings"])


def test_rf_match_words_and_old_boolean():
    recs = make(log_curve({"lr": 1e3, "hr": 4e3}), budgets=(1e4,))
    for r in recs:
        r.pop("rf_match")
        r["match_rf"] = True
    assert "hr kernels x r" in report.analyse(recs)["conclusion"]
    for r in recs:
        r["rf_match"] = "dilate"
    assert "hr RF matched by dilation" in report.analyse(recs)["conclusion"]


def _with_role(recs, role, suffix):
    return [dict(r, role=role, point_id=r["point_id"] + suffix) for r in recs]


def test_a_control_at_one_budget_licenses_capacity_there_only():
    grid = _with_role(make(_gap(True), curve_gain=lambda *_: 0.0), "grid", "")
    control = _with_role(
        make(_gap(True), budgets=(1e4,), steps=(4000,), curve_gain=lambda *_: 0.0), "control", "-c"
    )
    a = report.analyse(grid + control)
    (c,) = a["convergence"]["controls"]
    assert c["held"] and c["budgets"] == [1e4] and c["slopes"] == []
    text = a["conclusion"]
    assert "depth 3, 4,000 steps, residual on, convergence control" in text
    assert "held from 1,000 to 4,000 steps at 1e4 (a capacity difference there; elsewhere at " in (
        text
    )
    # no slope was compared (one control budget): the budget curves stay at this length
    curve_line = [ln for ln in text.splitlines() if "PSNR rises with MACs" in ln][0]
    assert curve_line.endswith("at this training length (1,000 steps).")


def test_equivalence_points_do_not_collide_with_the_grid_and_lr_search_is_left_out():
    grid = _with_role(make(log_curve({"lr": 1e3, "hr": 4e3}), budgets=(1e4,)), "grid", "")

    def same(family, budget, seed, image, steps):
        return 30.0 + 0.001 * seed * (family == "deconv")

    eq = _with_role(make(same, families=("lr", "deconv"), budgets=(1e4,)), "equivalence", "-e")
    search = _with_role(make(same, families=("lr", "hr"), budgets=(1e4,)), "lr_search", "-s")
    a = report.analyse(grid + eq + search)
    lr_rows = [r for r in a["rows"] if r["family"] == "lr"]
    assert sorted(round(r["psnr"], 1) for r in lr_rows) == [26.0, 30.0]  # grid and equivalence
    assert len(a["ok"]) == len(grid) + len(eq)
    text = a["conclusion"]
    assert "lr and deconv from the same start: lr vs deconv (same function class" in text
    assert "equivalent within ±0.05 dB at 1 of 1 budgets" in text


def test_cell_claims_outside_the_control_budgets_stay_at_this_length():
    grid = _with_role(make(_gap(True), curve_gain=lambda *_: 0.0), "grid", "")
    control = _with_role(
        make(_gap(True), budgets=(1e4,), steps=(4000,), curve_gain=lambda *_: 0.0), "control", "-c"
    )
    a = report.analyse(grid + control)
    detail = report._race_lines(a, VAL, detail=True)
    at = {
        b: [ln for ln in detail if f"1,000 steps, residual on, {b} MACs/LR px: lr - hr" in ln][0]
        for b in ("1e4", "3e4")
    }
    assert at["1e4"].endswith("held from 1,000 to 4,000 steps, so a capacity difference.")
    assert at["3e4"].endswith("at this training length (1,000 steps).")


def test_groups_are_ordered_by_value_grid_first():
    recs = make(_gap(True), budgets=(1e4,), steps=(8, 32))
    recs += _with_role(make(_gap(True), budgets=(1e4,), steps=(4,)), "control", "-c")
    labels = [r["group"] for r in report.analyse(recs)["rows"]]
    firsts = list(dict.fromkeys(labels))
    assert [label.split(",")[1].strip() for label in firsts] == ["8 steps", "32 steps", "4 steps"]


def test_a_collapsed_residual_run_is_left_out_like_a_diverged_one():
    """A residual net scoring bicubic's PSNR on every set (its learned branch outputs zero) is a
    training failure: listed as failed with the reason, its cell keeps the other seeds."""
    recs = make(log_curve({"lr": 1e3, "hr": 4e3}))
    for r in recs:
        r["bicubic"] = {VAL: {"psnr": 24.0}}
    victim = next(r for r in recs if r["family"] == "hr" and r["budget"] == 1e4 and r["seed"] == 2)
    victim["eval"][VAL]["psnr"] = victim["psnr"] = 24.0 + 0.0004
    a = report.analyse(recs)
    assert [r["point_id"] for r in a["failed"]] == [victim["point_id"]]
    assert "collapsed" in a["failed"][0]["error"]
    assert f"Failed and left out: {victim['point_id']} (collapsed" in a["conclusion"]
    cell = next(row for row in a["rows"] if row["family"] == "hr" and row["budget"] == 1e4)
    assert cell["n_seeds"] == 2
    victim["residual"] = False  # without the residual prior, scoring bicubic is a real result
    assert not report.collapsed(victim)
    victim["residual"] = True
    victim["eval"][VAL]["psnr"] = 24.02  # 0.02 dB above bicubic: trained, if barely
    assert not report.collapsed(victim)


def test_a_control_with_nothing_to_compare_says_so():
    """A longer run whose other family all failed leaves no gap to compare: the conclusion says
    so instead of failing."""
    recs = make(log_curve({"lr": 1e3, "hr": 4e3}), budgets=(1e4,), steps=(1000, 4000))
    recs = [r for r in recs if not (r["steps"] == 4000 and r["family"] == "hr")]
    text = report.analyse(recs)["conclusion"]
    assert "nothing to compare" in text


def test_a_control_with_fewer_than_3_seeds_cannot_say_whether_a_gap_held():
    """Two of three long runs of one family failed: the gap's seed mean rests on one seed, so
    whether it held is not known and no capacity wording follows."""
    recs = make(log_curve({"lr": 1e3, "hr": 4e3}), budgets=(1e4,), steps=(1000, 4000))
    recs = [r for r in recs if not (r["steps"] == 4000 and r["family"] == "hr" and r["seed"])]
    a = report.analyse(recs)
    text = a["conclusion"]
    assert "cannot say for 1 of 1 comparisons" in text and "1 and" not in text.split("e.g.")[0]
    assert "capacity difference" not in text
    gap = a["convergence"]["controls"][0]["gaps"][0]
    assert gap["held"] is None and gap["seeds"] == (3, 1)
    assert not a["convergence"]["held"]


def test_an_unresolved_gap_has_no_size_to_hold_and_no_capacity_wording():
    """Equal families: the gap is noise at both lengths, so the control cannot say it held (the
    old rule called a noise gap that stayed small 'held', and the report a capacity difference)."""
    recs = make(log_curve({"lr": 1e3, "hr": 1e3}), budgets=(1e4,), steps=(1000, 4000))
    a = report.analyse(recs)
    gap = a["convergence"]["controls"][0]["gaps"][0]
    assert gap["held"] is None and gap["why"] == "unresolved"
    assert "it has no size to hold" in a["conclusion"]
    assert "capacity difference" not in a["conclusion"]


def test_a_gap_that_shrinks_beyond_the_rule_did_not_hold_even_if_unresolved_later():
    """lr ahead by ~0.6 dB at 1,000 steps, ~0.1 dB at 4,000: it moved by more than 25%, so it did
    not hold, whatever the longer run resolves."""

    def psnr(family, budget, seed, image, steps):
        gap = {1000: 0.6, 4000: 0.1}[steps] if family == "lr" else 0.0
        return 25 + gap + 0.02 * image + noise(family, budget, seed, image, steps)

    a = report.analyse(make(psnr, budgets=(1e4,), steps=(1000, 4000)))
    gap = a["convergence"]["controls"][0]["gaps"][0]
    assert gap["held"] is False and gap["why"] is None
    assert "did not hold" in a["conclusion"] and "capacity difference" not in a["conclusion"]
    assert (
        "rather than training length (the control's comparisons moved with longer training)"
        in (a["conclusion"])
    )


def test_log_axes_label_1_2_5_per_decade_without_overlap():
    import matplotlib.pyplot as plt

    from espcn_jax.study import figures

    assert [report._g(x) for x in (2000, 2500, 1e4, 4e4, 50, 0.2)] == [  # noqa: SLF001
        "2e3", "2.5e3", "1e4", "4e4", "50", "0.2"]  # fmt: skip

    def shown(xs):
        fig, ax = plt.subplots()
        ax.plot(xs, [1.0] * len(xs), "o")
        figures._log_x(ax)  # noqa: SLF001
        fig.canvas.draw()
        ticks = ax.xaxis.get_majorticklabels() + ax.xaxis.get_minorticklabels()
        lo, hi = ax.get_xlim()
        labels = {t.get_text() for t in ticks if t.get_text() and lo <= t.get_position()[0] <= hi}
        plt.close(fig)
        return labels

    # the standard preset's budgets: 3e3 and 4e3 collided with matplotlib's default labels
    assert shown([2.5e3, 5e3, 1e4, 4e4]) == {"5e3", "1e4", "2e4"}
    assert "1e4" in shown([9.3e3, 1.04e4])  # under a decade: every tick in view is labelled
