"""The study's report, computed from the records alone: tables, differences, equivalence, text.

A *group* is one curve of the study: the points that share depth, training steps, residual,
receptive-field matching and the shared settings, and differ in budget, family and seed. A *cell*
is a group at one budget: there the families are compared at matched FLOPs, seed by seed.

- :func:`table_rows`: per cell and family, PSNR/SSIM mean ± std over seeds and the costs.
- :func:`differences`: per cell and family pair ``(A, B)``, ``A - B`` in PSNR at matched FLOPs
  (paired over seeds, t-interval), and at matched latency (B's PSNR interpolated in log latency to
  A's latency, per seed, over the group's budgets; flagged when extrapolated).
- :func:`equivalences`: per group and pair, how many times A's conv MACs (or latency) B needs to
  reach A's PSNR (:func:`espcn_jax.study.stats.equivalence`).
- :func:`conclusion`: the paragraph a reader would write from those numbers, generated.
"""

from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence

import numpy as np

from espcn_jax.study import results, stats

GROUP_KEYS = ("depth", "steps", "residual", "match_rf", "setting")
PAIRS = (("lr", "hr"), ("deconv", "hr"), ("lr", "deconv"))
FAMILY_ORDER = ("lr", "deconv", "hr", "lr_tied")


def split(records: Iterable[dict]) -> tuple[list[dict], list[dict]]:
    """The latest record of each point, as ``(ok, failed)``."""
    latest = list(results.latest(records).values())
    ok = [r for r in latest if r.get("status") == results.STATUS_OK]
    failed = [r for r in latest if r.get("status") != results.STATUS_OK]
    return ok, failed


def group_of(record: dict) -> tuple:
    return tuple(record.get(k) for k in GROUP_KEYS)


def group_label(group: tuple, settings: int = 1) -> str:
    depth, steps, residual, match_rf, setting = group
    label = f"depth {depth}, {steps} steps, residual {'on' if residual else 'off'}"
    if match_rf:
        label += ", hr kernels x r"
    if settings > 1:
        label += f", setting {setting}"
    return label


def _family_key(family: str) -> tuple:
    return (FAMILY_ORDER.index(family) if family in FAMILY_ORDER else 99, family)


def _index(records: Sequence[dict]) -> dict:
    """``{group: {budget: {family: {seed: record}}}}``."""
    out: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(dict)))
    for r in records:
        out[group_of(r)][r["budget"]][r["family"]][r["seed"]] = r
    return out


def _mean(values) -> float:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else math.nan


def table_rows(records: Sequence[dict]) -> list[dict]:
    """One row per cell and family: seed statistics and mean costs (``ok`` records only)."""
    rows = []
    index = _index(records)
    settings = len({g[-1] for g in index})
    for group in sorted(index, key=str):
        for budget in sorted(index[group]):
            for family in sorted(index[group][budget], key=_family_key):
                recs = list(index[group][budget][family].values())
                psnr, psnr_sd = stats.mean_std([r["psnr"] for r in recs])
                ssim, ssim_sd = stats.mean_std([r["ssim"] for r in recs])
                tl, tl_sd = stats.mean_std([r.get("train_loss_psnr", math.nan) for r in recs])
                memory = _mean(r.get("memory_bytes") for r in recs)
                rows.append(
                    {
                        "group": group_label(group, settings),
                        "depth": group[0],
                        "steps": group[1],
                        "residual": group[2],
                        "match_rf": group[3],
                        "setting": group[4],
                        "budget": budget,
                        "family": family,
                        "n_seeds": len(recs),
                        "widths": "-".join(str(w) for w in recs[0].get("widths", [])),
                        "psnr": psnr,
                        "psnr_std": psnr_sd,
                        "ssim": ssim,
                        "ssim_std": ssim_sd,
                        "train_psnr": tl,
                        "train_psnr_std": tl_sd,
                        "params": recs[0].get("params"),
                        "conv_macs_per_lr_pixel": recs[0].get("conv_macs_per_lr_pixel"),
                        "gflops": _mean(r.get("flops") for r in recs) / 1e9,
                        "gflops_xla": _mean(r.get("flops_xla") for r in recs) / 1e9,
                        "latency_ms": _mean(r.get("latency_ms") for r in recs),
                        "throughput": _mean(r.get("throughput_images_per_s") for r in recs),
                        "memory_mb": memory / 2**20,
                        "receptive_field_lr": recs[0].get("receptive_field_lr"),
                        "train_time_s": _mean(r.get("train_time_s") for r in recs),
                    }
                )
    return rows


def _paired(cell: dict, a: str, b: str) -> list:
    return sorted(set(cell.get(a, {})) & set(cell.get(b, {})))


def differences(records: Sequence[dict], a: str, b: str, confidence: float = 0.95) -> list[dict]:
    """Per cell: ``a - b`` PSNR at matched FLOPs and at matched latency (module docstring)."""
    out = []
    index = _index(records)
    settings = len({g[-1] for g in index})
    for group in sorted(index, key=str):
        cells = index[group]
        budgets = sorted(cells)
        # b's curve over budgets, for the matched-latency comparison: seeds present at every budget
        b_seeds = [set(cells[x].get(b, {})) for x in budgets if cells[x].get(b)]
        b_budgets = [x for x in budgets if cells[x].get(b)]
        for budget in budgets:
            cell = cells[budget]
            seeds = _paired(cell, a, b)
            if not seeds:
                continue
            d_flops = [cell[a][s]["psnr"] - cell[b][s]["psnr"] for s in seeds]
            row = {
                "group": group_label(group, settings),
                "depth": group[0],
                "steps": group[1],
                "residual": group[2],
                "match_rf": group[3],
                "budget": budget,
                "a": a,
                "b": b,
                "flops": stats.paired_interval(d_flops, confidence).as_dict(),
                "latency": None,
                "train_psnr": None,
            }
            train = [
                cell[a][s].get("train_loss_psnr", math.nan)
                - cell[b][s].get("train_loss_psnr", math.nan)
                for s in seeds
            ]
            if all(math.isfinite(t) for t in train):
                row["train_psnr"] = stats.paired_interval(train, confidence).as_dict()
            common = set(seeds).intersection(*b_seeds) if b_seeds else set()
            if len(b_budgets) >= 2 and common:
                lat_b = [
                    _mean(r.get("latency_ms") for r in cells[x][b].values()) for x in b_budgets
                ]
                lat_a = _mean(cell[a][s].get("latency_ms") for s in seeds)
                diffs, fit = [], None
                for s in sorted(common):
                    fit = stats.fit_log(lat_b, [cells[x][b][s]["psnr"] for x in b_budgets])
                    diffs.append(cell[a][s]["psnr"] - fit(lat_a))
                row["latency"] = stats.paired_interval(diffs, confidence).as_dict() | {
                    "latency_a_ms": lat_a,
                    "extrapolated": not fit.inside(lat_a),
                }
            out.append(row)
    return out


def equivalences(
    records: Sequence[dict], a: str, b: str, *, n_boot: int = 2000, confidence: float = 0.95
) -> list[dict]:
    """Per group with >= 2 budgets: B's cost to reach A's PSNR, in conv MACs and in latency."""
    out = []
    index = _index(records)
    settings = len({g[-1] for g in index})
    for group in sorted(index, key=str):
        cells = index[group]
        budgets = [x for x in sorted(cells) if cells[x].get(a) and cells[x].get(b)]
        if len(budgets) < 2:
            continue
        seeds = sorted(set.intersection(*(set(_paired(cells[x], a, b)) for x in budgets)))
        if not seeds:
            continue
        psnr_a = np.array([[cells[x][a][s]["psnr"] for x in budgets] for s in seeds])
        psnr_b = np.array([[cells[x][b][s]["psnr"] for x in budgets] for s in seeds])
        row = {"group": group_label(group, settings), "a": a, "b": b, "n_seeds": len(seeds)}
        for name, key in (("macs", "conv_macs_per_lr_pixel"), ("latency", "latency_ms")):
            cost_a = [_mean(cells[x][a][s].get(key) for s in seeds) for x in budgets]
            cost_b = [_mean(cells[x][b][s].get(key) for s in seeds) for x in budgets]
            if (
                not all(c > 0 for c in cost_a + cost_b)
                or len(set(cost_a)) < 2
                or len(set(cost_b)) < 2
            ):
                row[name] = None
                continue
            eq = stats.equivalence(
                cost_a, psnr_a, cost_b, psnr_b, n_boot=n_boot, confidence=confidence
            )
            row[name] = eq.as_dict()
        out.append(row)
    return out


# --- text ----------------------------------------------------------------------------------------


def _db(x: float) -> str:
    return f"{x:+.3f} dB" if math.isfinite(x) else "n/a"


def _interval(iv: dict) -> str:
    if iv["n"] < 2 or not math.isfinite(iv["low"]):
        return f"{_db(iv['mean'])} (one seed: no interval)"
    return (
        f"{_db(iv['mean'])} ({iv['confidence']:.0%} CI {iv['low']:+.3f} to {iv['high']:+.3f}, "
        f"{iv['n']} paired seeds)"
    )


def _verdict(iv: dict, a: str, b: str) -> str:
    if iv["n"] >= 2 and math.isfinite(iv["low"]) and iv["low"] > 0:
        return f"{a} beats {b}"
    if iv["n"] >= 2 and math.isfinite(iv["high"]) and iv["high"] < 0:
        return f"{b} beats {a}"
    return "no resolved difference"


def _ratio(eq: dict | None, what: str, a: str, b: str) -> str:
    if eq is None:
        return ""
    if not math.isfinite(eq["ratio"]):
        return f"{b}'s fitted PSNR never reaches {a}'s with more {what} (flat or falling fit)"
    ci = ""
    if eq["n_boot"] and math.isfinite(eq["low"]):
        hi = f"{eq['high']:.2g}" if math.isfinite(eq["high"]) else "inf"
        ci = f" (95% bootstrap CI over seeds {eq['low']:.2g} to {hi})"
    extra = ", extrapolated beyond the measured budgets" if eq["extrapolated"] else ""
    slopes = (
        f" (fitted gain per doubling of {what}: {a} {eq['fit_a']['slope'] * math.log(2):+.3f} dB,"
        f" {b} {eq['fit_b']['slope'] * math.log(2):+.3f} dB)"
    )
    return f"{b} needs {eq['ratio']:.2g}x the {what} of {a} to reach its PSNR{ci}{extra}{slopes}"


def conclusion(
    rows: Sequence[dict],
    diffs: dict[tuple[str, str], list[dict]],
    equivs: dict[tuple[str, str], list[dict]],
    failed: Sequence[dict],
    eval_set: str | None = None,
    bicubic: float | None = None,
) -> str:
    """A paragraph computed from the tables (never written by hand)."""
    if not rows:
        return "No completed points: nothing to conclude." + _failed_text(failed)
    n_seeds = max(r["n_seeds"] for r in rows)
    families = sorted({r["family"] for r in rows}, key=_family_key)
    where = f" on {eval_set}" if eval_set else ""
    if bicubic is not None and math.isfinite(bicubic):
        where += f", where bicubic upscaling scores {bicubic:.3f} dB"
    parts = [
        f"In this run ({sum(r['n_seeds'] for r in rows)} completed points, up to {n_seeds} seeds "
        f"per network, families {', '.join(families)}; PSNR{where}):"
    ]
    for a, b in PAIRS:
        cells = diffs.get((a, b)) or []
        if not cells:
            continue
        wins = [c for c in cells if _verdict(c["flops"], a, b) == f"{a} beats {b}"]
        losses = [c for c in cells if _verdict(c["flops"], a, b) == f"{b} beats {a}"]
        means = [c["flops"]["mean"] for c in cells]
        spread = (
            f"is {_db(means[0])}"
            if len(means) == 1
            else f"ranges from {_db(min(means))} to {_db(max(means))}"
        )
        head = (
            f"At matched FLOPs, {a} beats {b} in {len(wins)} of {len(cells)} cells "
            f"(the paired 95% interval excludes zero), loses in {len(losses)}; the mean difference "
            f"{a} - {b} {spread}."
        )
        if (a, b) != ("lr", "hr"):
            parts.append(head)
            continue
        parts.append(head)
        for c in cells:
            sd = _spread(rows, c, a, b)
            parts.append(
                f"{c['group']}, budget {c['budget']:g}: {_verdict(c['flops'], a, b)} at matched "
                f"FLOPs, {a} - {b} = {_interval(c['flops'])}{sd}"
                + (
                    f"; at matched latency ({c['latency']['latency_a_ms']:.3g} ms): "
                    f"{_interval(c['latency'])}"
                    + (" (extrapolated)" if c["latency"]["extrapolated"] else "")
                    if c["latency"]
                    else ""
                )
                + (
                    f"; on the fixed training subset {a} - {b} = {_db(c['train_psnr']['mean'])}"
                    if c["train_psnr"]
                    else ""
                )
                + "."
            )
        not_win = [c for c in cells if c not in wins]
        if not_win:
            parts.append(
                f"{a} does not resolvably beat {b} at: "
                + "; ".join(f"{c['group']}, budget {c['budget']:g}" for c in not_win)
                + "."
            )
        for eq in equivs.get((a, b)) or []:
            for what, label in (("macs", "conv multiply-adds"), ("latency", "latency")):
                text = _ratio(eq.get(what), label, a, b)
                if text:
                    parts.append(f"{eq['group']}: {text}.")
    return " ".join(parts) + _failed_text(failed)


def _spread(rows: Sequence[dict], cell: dict, a: str, b: str) -> str:
    sds = {}
    for r in rows:
        if (r["group"], r["budget"]) == (cell["group"], cell["budget"]) and r["family"] in (a, b):
            sds[r["family"]] = r["psnr_std"]
    if all(math.isfinite(sds.get(f, math.nan)) for f in (a, b)):
        return f"; seed std {a} {sds[a]:.3f} dB, {b} {sds[b]:.3f} dB"
    return ""


def _failed_text(failed: Sequence[dict]) -> str:
    if not failed:
        return ""
    ids = ", ".join(f"{r.get('point_id')} ({r.get('error', 'no error recorded')})" for r in failed)
    return f" {len(failed)} point(s) failed and are left out: {ids}."


# --- tables ---------------------------------------------------------------------------------------


def _pm(mean: float, sd: float, digits: int) -> str:
    if not math.isfinite(mean):
        return "n/a"
    if not math.isfinite(sd):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {sd:.{digits}f}"


def _num(x, fmt: str) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, fmt)


def markdown_table(rows: Sequence[dict]) -> str:
    head = (
        "| group | budget | family | widths | n | PSNR (dB) | SSIM | train PSNR | params | "
        "MACs/LR px | GFLOPs (XLA) | latency (ms) | img/s | memory (MB) | RF (LR px) |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        lines.append(
            f"| {r['group']} | {r['budget']:g} | {r['family']} | {r['widths']} | {r['n_seeds']} | "
            f"{_pm(r['psnr'], r['psnr_std'], 3)} | {_pm(r['ssim'], r['ssim_std'], 4)} | "
            f"{_pm(r['train_psnr'], r['train_psnr_std'], 3)} | {_num(r['params'], ',')} | "
            f"{_num(r['conv_macs_per_lr_pixel'], '.3g')} | {_num(r['gflops_xla'], '.3g')} | "
            f"{_num(r['latency_ms'], '.3g')} | {_num(r['throughput'], '.3g')} | "
            f"{_num(r['memory_mb'], '.3g')} | {_num(r['receptive_field_lr'], '.3g')} |"
        )
    return "\n".join(lines)


def _iv_cell(iv: dict | None) -> str:
    if iv is None:
        return "n/a"
    if iv["n"] < 2 or not math.isfinite(iv["low"]):
        return f"{iv['mean']:+.3f} (n={iv['n']})"
    return f"{iv['mean']:+.3f} [{iv['low']:+.3f}, {iv['high']:+.3f}] (n={iv['n']})"


def markdown_differences(diffs: Sequence[dict]) -> str:
    lines = [
        "| group | budget | A - B | matched FLOPs: ΔPSNR [95% CI] | matched latency: ΔPSNR [95% CI] "
        "| train-subset ΔPSNR |",
        "|---|---|---|---|---|---|",
    ]
    for d in diffs:
        lat = _iv_cell(d["latency"])
        if d["latency"] and d["latency"]["extrapolated"]:
            lat += " †"
        lines.append(
            f"| {d['group']} | {d['budget']:g} | {d['a']} - {d['b']} | {_iv_cell(d['flops'])} | "
            f"{lat} | {_iv_cell(d['train_psnr'])} |"
        )
    return "\n".join(lines) + "\n\n† B's PSNR extrapolated beyond its measured latencies."


def markdown_equivalences(equivs: Sequence[dict]) -> str:
    lines = [
        "| group | A, B | B's conv MACs / A's [95% CI] | B's latency / A's [95% CI] | seeds |",
        "|---|---|---|---|---|",
    ]

    def cell(eq):
        if eq is None:
            return "n/a"
        if not math.isfinite(eq["ratio"]):
            return "never (flat fit)"
        ci = ""
        if eq["n_boot"] and math.isfinite(eq["low"]):
            ci = f" [{eq['low']:.3g}, {eq['high']:.3g}]"
        return f"{eq['ratio']:.3g}x{ci}" + (" †" if eq["extrapolated"] else "")

    for e in equivs:
        lines.append(
            f"| {e['group']} | {e['a']}, {e['b']} | {cell(e['macs'])} | {cell(e['latency'])} | "
            f"{e['n_seeds']} |"
        )
    return "\n".join(lines) + "\n\n† B's needed cost lies outside its measured range."


def csv_text(rows: Sequence[dict]) -> str:
    if not rows:
        return ""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def flat_differences(diffs: Sequence[dict]) -> list[dict]:
    """CSV-ready rows of :func:`differences`."""
    out = []
    for d in diffs:
        row = {k: d[k] for k in ("group", "budget", "a", "b")}
        for name in ("flops", "latency", "train_psnr"):
            iv = d[name] or {}
            for k in ("mean", "low", "high", "sd", "n"):
                row[f"{name}_{k}"] = iv.get(k)
        row["latency_extrapolated"] = (d["latency"] or {}).get("extrapolated")
        out.append(row)
    return out


def analyse(records: Iterable[dict], n_boot: int = 2000) -> dict:
    """Everything the report shows, computed from ``records``."""
    ok, failed = split(records)
    rows = table_rows(ok)
    families = {r["family"] for r in ok}
    pairs = [(a, b) for a, b in PAIRS if a in families and b in families]
    diffs = {p: differences(ok, *p) for p in pairs}
    equivs = {p: equivalences(ok, *p, n_boot=n_boot) for p in pairs}
    eval_set = ok[0].get("eval_set") if ok else None
    bicubic = ok[0].get("bicubic_psnr") if ok else None
    return {
        "ok": ok,
        "failed": failed,
        "rows": rows,
        "differences": diffs,
        "equivalences": equivs,
        "bicubic": ok[0].get("bicubic") if ok else None,
        "conclusion": conclusion(rows, diffs, equivs, failed, eval_set, bicubic),
    }
