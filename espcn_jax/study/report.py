"""The study's report, computed from the records alone: per-set tables, paired differences,
budget curves, compute-equivalence, matched latency, convergence, and the conclusion as a list.

A *group* is one curve of the study: the points that share depth, training steps, residual,
receptive-field matching and the shared settings, and differ in budget, family and seed. A *cell*
is a group at one budget: there the families are compared at matched MACs, seed by seed, and
image by image. Every statement follows a rule of :mod:`espcn_jax.study.stats` (``stats.RULES``,
printed in the report): intervals only with enough seeds, curves only over enough budgets, ratios
only inside the measured range, capacity wording only where a longer-training control held.

Everything is per validation set (``record["eval"][set]``); records written before per-set and
per-image scores existed give their top-level ``psnr`` for their ``eval_set`` and no image counts.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections import defaultdict
from collections.abc import Iterable, Sequence

import numpy as np

from espcn_jax.study import results, stats

GROUP_KEYS = ("depth", "steps", "residual", "rf_match", "setting", "role")
ROLE_WORDS = {
    None: "",
    "grid": "",
    "control": ", convergence control",
    "equivalence": ", lr and deconv from the same start",
}
ROLE_NAMES = {"grid": "grid", "control": "convergence control", "equivalence": "lr/deconv check"}
EXCLUDED_ROLES = ("lr_search",)  # trained to choose a learning rate: not part of the comparisons
PAIRS = (("lr", "hr"), ("deconv", "hr"), ("lr", "deconv"))
RACE_PAIRS = (("lr", "hr"), ("deconv", "hr"))  # lr vs deconv is an equivalence check instead
FAMILY_ORDER = ("lr", "deconv", "hr", "lr_tied")
RF_WORDS = {"none": "", "dilate": ", hr RF matched by dilation", "kernel": ", hr kernels x r"}


# --- records --------------------------------------------------------------------------------------


COLLAPSE_DB = 0.01  # a residual net this close to bicubic on every set learned nothing


def collapsed(record: dict) -> bool:
    """Whether a residual net's every validation score equals bicubic's to ``COLLAPSE_DB``: its
    learned branch gave up (outputs zero) during training, a failure the engine's non-finite
    guard cannot see. Measured: collapsed runs sit within 0.001 dB of bicubic, trained ones 0.4 dB
    or more above it (BUILD_NOTES, the standard run)."""
    if not record.get("residual"):
        return False
    scores, bicubic = record.get("eval") or {}, record.get("bicubic") or {}
    pairs = [
        (scores[s].get("psnr"), bicubic[s].get("psnr"))
        for s in scores
        if isinstance(scores[s], dict) and isinstance(bicubic.get(s), dict)
    ]
    return bool(pairs) and all(
        a is not None and b is not None and abs(a - b) < COLLAPSE_DB for a, b in pairs
    )


def split(records: Iterable[dict]) -> tuple[list[dict], list[dict]]:
    """The latest record of each point, as ``(ok, failed)``; learning-rate search points (role
    ``lr_search``) are left out: they chose a rate and are not part of the comparisons. A
    :func:`collapsed` run counts as failed (with that reason), as a diverged one does."""
    latest = [r for r in results.latest(records).values() if r.get("role") not in EXCLUDED_ROLES]
    ok, failed = [], []
    for r in latest:
        if r.get("status") != results.STATUS_OK:
            failed.append(r)
        elif collapsed(r):
            failed.append(
                r | {"error": "collapsed: scores bicubic's PSNR on every set (the residual "
                     "branch outputs zero); left out like a diverged run"}
            )  # fmt: skip
        else:
            ok.append(r)
    return ok, failed


def rf_match_of(record: dict) -> str:
    """``"none" | "dilate" | "kernel"``; old records have a boolean ``match_rf`` (kernels x r)."""
    if record.get("rf_match"):
        return str(record["rf_match"])
    return "kernel" if record.get("match_rf") else "none"


def group_of(record: dict) -> tuple:
    return (
        record.get("depth"),
        record.get("steps"),
        record.get("residual"),
        rf_match_of(record),
        record.get("setting"),
        record.get("role"),
    )


def group_order(group: tuple) -> tuple:
    """Grid groups first, then numbers by value (8 steps before 32), other fields as text."""
    role = group[5] not in (None, "grid")
    return (role, *((0, x, "") if isinstance(x, int | float) else (1, 0, str(x)) for x in group))


def group_label(group: tuple, settings: int = 1) -> str:
    depth, steps, residual, rf_match, setting, role = group
    label = f"depth {depth}, {_int(steps)} steps, residual {'on' if residual else 'off'}"
    label += RF_WORDS.get(rf_match, f", rf_match {rf_match}")
    label += ROLE_WORDS.get(role, f", role {role}")
    if settings > 1:
        label += f", setting {setting}"
    return label


def _int(x) -> str:
    return f"{x:,}" if isinstance(x, int) else str(x)


def set_label(name: str) -> str:
    """A readable set name: ``validation split``, ``Set5`` (a folder's name), a TFDS name."""
    if name.startswith("skimage:"):
        return (
            f"{name.split(':', 1)[1]} split" if name != "skimage:validation" else "validation split"
        )
    if name.startswith("folder:"):
        return os.path.basename(os.path.normpath(name.split(":", 1)[1])) or name
    return name.split(":", 1)[-1]


def sets_of(records: Sequence[dict]) -> list[str]:
    """Validation sets in the records' order (the first gives the top-level PSNR)."""
    out: list[str] = []
    for r in records:
        names = list(r.get("eval") or {}) or ([r["eval_set"]] if r.get("eval_set") else [])
        first = r.get("eval_set")
        if first in names:
            names.remove(first)
            names.insert(0, first)
        out += [n for n in names if n not in out]
    return out or ["(unnamed)"]


def score(record: dict, set_name: str, key: str = "psnr") -> float | None:
    scores = (record.get("eval") or {}).get(set_name)
    if isinstance(scores, dict) and scores.get(key) is not None:
        return float(scores[key])
    if set_name == record.get("eval_set", "(unnamed)") and record.get(key) is not None:
        return float(record[key])
    return None


def per_image(record: dict, set_name: str) -> dict[str, float] | None:
    """``{image name: PSNR}`` of one point on one set, or None (not recorded)."""
    scores = (record.get("eval") or {}).get(set_name) or {}
    images = scores.get("per_image") if isinstance(scores, dict) else None
    if not images or not images.get("names"):
        return None
    return dict(zip(images["names"], images["psnr"], strict=True))


def budget_unit(records: Sequence[dict]) -> str:
    """The grid budget's unit in words: ``MACs/LR px`` (conv MACs per LR pixel, the default);
    another metric is named as it is (``flops per image``), never called MACs."""
    metrics = {r.get("budget_metric", "conv_macs") for r in records}
    units = {r.get("budget_unit", "lr_pixel") for r in records}
    if metrics == {"conv_macs"} and units == {"lr_pixel"}:
        return "MACs/LR px"
    return f"{'/'.join(sorted(metrics))} per {'/'.join(sorted(units))}"


def _family_key(family: str) -> tuple:
    return (FAMILY_ORDER.index(family) if family in FAMILY_ORDER else 99, family)


def _index(records: Sequence[dict]) -> dict:
    """``{group: {budget: {family: {seed: record}}}}``."""
    out: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(dict)))
    for r in records:
        out[group_of(r)][r["budget"]][r["family"]][r["seed"]] = r
    return out


def _lr(record: dict) -> str:
    """The peak learning rate a point trained with, as text (``0.003``)."""
    x = record["lr"]
    return f"{x:g}" if isinstance(x, int | float) else str(x)


def _mean(values) -> float:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(values)) if values else math.nan


def _settings(index) -> int:
    return len({g[4] for g in index})


# --- latency --------------------------------------------------------------------------------------

INTERLEAVED, PER_POINT, MIXED = "interleaved", "per point", "mixed"


def latency_source(records: Sequence[dict], interleaved: dict | None) -> dict:
    """``{"by_point": {point_id: ms}, "interleaved": {point_id, ...}, "source", "label"}``: each
    point's latency from ``latency.json`` (every model timed interleaved in one process) where it
    has the point, else the record's own point-by-point timing; ``source`` says which holds for
    all points (``interleaved``, ``per point``) or ``mixed``."""
    points = (interleaved or {}).get("points") or {}
    by_point, inter = {}, set()
    for r in records:
        pid = r.get("point_id")
        if pid in points and points[pid].get("median_ms") is not None:
            by_point[pid] = float(points[pid]["median_ms"])
            inter.add(pid)
        elif pid is not None:
            by_point[pid] = r.get("latency_ms")
    lat = interleaved or {}
    inter_label = (
        f"timed interleaved in one process (latency.json: median of {lat.get('repeats', '?')} "
        f"repeats x {lat.get('rounds', '?')} rounds at LR {lat.get('lr_size', '?')})"
    )
    point_label = (
        "timed point by point right after each point trained, not interleaved: ratios across "
        "points are indicative only"
    )
    if records and len(inter) == len(by_point):
        source, label = INTERLEAVED, inter_label
    elif not inter:
        source, label = PER_POINT, point_label
    else:
        source = MIXED
        label = f"{len(inter)} of {len(by_point)} points {inter_label}; the others {point_label}"
    return {
        "by_point": by_point,
        "interleaved": inter,
        "source": source,
        "label": label,
        "labels": {INTERLEAVED: inter_label, PER_POINT: point_label},
    }


def _cell_latency(recs: Iterable[dict], lat: dict) -> float:
    vals = [lat["by_point"].get(r.get("point_id")) for r in recs]
    vals = [v for v in vals if v is not None and math.isfinite(v)]
    return float(np.median(vals)) if vals else math.nan


def _cell_source(recs: Iterable[dict], lat: dict) -> str:
    got = {r.get("point_id") in lat["interleaved"] for r in recs}
    return INTERLEAVED if got == {True} else PER_POINT if got == {False} else MIXED


def _cell_macs(recs: Iterable[dict]) -> float:
    recs = list(recs)
    macs = _mean(r.get("conv_macs_per_lr_pixel") for r in recs)
    return macs if math.isfinite(macs) else float(recs[0]["budget"])


# --- tables ---------------------------------------------------------------------------------------


def table_rows(records: Sequence[dict], set_name: str | None = None, lat: dict | None = None):
    """One row per cell and family on ``set_name``: the seed statistic (by the seed rule), the
    image count and the costs (``ok`` records only)."""
    set_name = set_name or sets_of(records)[0]
    lat = lat or latency_source(records, None)
    gains = point_tail_gains(records, set_name)
    rows = []
    index = _index(records)
    settings = _settings(index)
    for group in sorted(index, key=group_order):
        for budget in sorted(index[group]):
            for family in sorted(index[group][budget], key=_family_key):
                recs = list(index[group][budget][family].values())
                psnrs = [score(r, set_name) for r in recs]
                psnrs = [p for p in psnrs if p is not None]
                if not psnrs:
                    continue
                st = stats.seed_stat(psnrs)
                _, psnr_sd = stats.mean_std(psnrs)
                ssims = [score(r, set_name, "ssim") for r in recs]
                ssim, ssim_sd = stats.mean_std([s for s in ssims if s is not None])
                tl, tl_sd = stats.mean_std([r.get("train_loss_psnr", math.nan) for r in recs])
                images = [per_image(r, set_name) for r in recs]
                n_images = len(images[0]) if images and images[0] else None
                lrs = sorted({_lr(r) for r in recs if r.get("lr") is not None})
                rows.append(
                    {
                        "set": set_name,
                        "set_label": set_label(set_name),
                        "group": group_label(group, settings),
                        "depth": group[0],
                        "steps": group[1],
                        "residual": group[2],
                        "rf_match": group[3],
                        "setting": group[4],
                        "budget": budget,
                        "family": family,
                        "n_seeds": st.n,
                        "n_images": n_images,
                        "widths": "-".join(str(w) for w in recs[0].get("widths", [])),
                        "psnr": st.mean,
                        "psnr_low": st.low,
                        "psnr_high": st.high,
                        "psnr_interval": st.label,
                        "psnr_std": psnr_sd,
                        "ssim": ssim,
                        "ssim_std": ssim_sd,
                        "train_psnr": tl,
                        "train_psnr_std": tl_sd,
                        "tail_gain_db": _mean(gains.get(r["point_id"]) for r in recs),
                        "peak_lr": "/".join(lrs) if lrs else None,
                        "params": recs[0].get("params"),
                        "conv_macs_per_lr_pixel": recs[0].get("conv_macs_per_lr_pixel"),
                        "gflops": _mean(r.get("flops") for r in recs) / 1e9,
                        "gflops_xla": _mean(r.get("flops_xla") for r in recs) / 1e9,
                        "latency_ms": _cell_latency(recs, lat),
                        "latency_source": _cell_source(recs, lat),
                        "throughput": _mean(r.get("throughput_images_per_s") for r in recs),
                        "memory_mb": _mean(r.get("memory_bytes") for r in recs) / 2**20,
                        "receptive_field_lr": recs[0].get(
                            "receptive_field", recs[0].get("receptive_field_lr")
                        ),
                        "train_time_s": _mean(r.get("train_time_s") for r in recs),
                    }
                )
    return rows


# --- differences at matched MACs ------------------------------------------------------------------


def _paired_seeds(cell: dict, a: str, b: str, set_name: str) -> list:
    seeds = sorted(set(cell.get(a, {})) & set(cell.get(b, {})))
    return [
        s
        for s in seeds
        if score(cell[a][s], set_name) is not None and score(cell[b][s], set_name) is not None
    ]


def image_differences(recs_a: Sequence[dict], recs_b: Sequence[dict], set_name: str):
    """Per image, PSNR averaged over seeds, ``A - B``: :class:`stats.ImageStat`, or None when
    per-image scores are missing or the two families were scored on different images."""
    ims_a = [per_image(r, set_name) for r in recs_a]
    ims_b = [per_image(r, set_name) for r in recs_b]
    if not ims_a or not ims_b or any(i is None for i in ims_a + ims_b):
        return None
    names = set(ims_a[0])
    if any(set(i) != names for i in ims_a + ims_b):
        return None
    names = sorted(names)
    mean_a = np.mean([[i[n] for n in names] for i in ims_a], 0)
    mean_b = np.mean([[i[n] for n in names] for i in ims_b], 0)
    return stats.image_stat(mean_a - mean_b)


def _verdict(seed: stats.SeedStat, image: stats.ImageStat | None, a: str, b: str) -> str:
    """``"a higher"`` only when the seed t-interval excludes zero and, where per-image scores
    exist, the paired interval over images excludes zero in the same direction."""
    if seed.kind != stats.T_INTERVAL:
        return f"unresolved ({seed.label})"
    if not seed.excludes_zero:
        return "no resolved difference"
    winner = a if seed.mean > 0 else b
    if image is not None and not (image.excludes_zero and (image.mean > 0) == (seed.mean > 0)):
        return f"{winner} higher over seeds, not resolved over images"
    return f"{winner} higher"


def differences(records: Sequence[dict], a: str, b: str, set_name: str | None = None) -> list[dict]:
    """Per cell: ``a - b`` PSNR at matched MACs, paired over seeds and over images."""
    set_name = set_name or sets_of(records)[0]
    out = []
    index = _index(records)
    settings = _settings(index)
    for group in sorted(index, key=group_order):
        for budget in sorted(index[group]):
            cell = index[group][budget]
            seeds = _paired_seeds(cell, a, b, set_name)
            if not seeds:
                continue
            seed = stats.seed_stat(
                [score(cell[a][s], set_name) - score(cell[b][s], set_name) for s in seeds]
            )
            image = image_differences(
                [cell[a][s] for s in seeds], [cell[b][s] for s in seeds], set_name
            )
            train = [
                cell[a][s].get("train_loss_psnr", math.nan)
                - cell[b][s].get("train_loss_psnr", math.nan)
                for s in seeds
            ]
            out.append(
                {
                    "set": set_name,
                    "group_key": group,
                    "group": group_label(group, settings),
                    "steps": group[1],
                    "budget": budget,
                    "a": a,
                    "b": b,
                    "seeds": seed,
                    "images": image,
                    "train": stats.seed_stat(train) if all(map(math.isfinite, train)) else None,
                    "verdict": _verdict(seed, image, a, b),
                }
            )
    return out


def lr_deconv_equivalence(records: Sequence[dict], set_name: str | None = None) -> list[dict]:
    """lr vs deconv per cell as an equivalence check (same function class), not a race."""
    out = []
    for d in differences(records, "lr", "deconv", set_name):
        seeds = d["seeds"]
        check = stats.equivalence_check([seeds.mean] if seeds.n == 1 else _diffs(records, d))
        out.append(d | {"equivalence": check})
    return out


def _diffs(records: Sequence[dict], d: dict) -> list[float]:
    cell = _index(records)[d["group_key"]][d["budget"]]
    seeds = _paired_seeds(cell, d["a"], d["b"], d["set"])
    return [score(cell[d["a"]][s], d["set"]) - score(cell[d["b"]][s], d["set"]) for s in seeds]


# --- budget curves, compute-equivalence, matched latency ------------------------------------------


def budget_curves(records: Sequence[dict], set_name: str | None = None) -> list[dict]:
    """Per group and family: MACs per LR pixel, per-seed and mean PSNR per budget, and whether the
    curve may be read (:func:`stats.fit_reason`)."""
    set_name = set_name or sets_of(records)[0]
    out = []
    index = _index(records)
    settings = _settings(index)
    for group in sorted(index, key=group_order):
        families = sorted({f for c in index[group].values() for f in c}, key=_family_key)
        for family in families:
            budgets = [x for x in sorted(index[group]) if index[group][x].get(family)]
            macs, means, seeds, kept = [], [], [], []
            for x in budgets:
                recs = index[group][x][family]
                ps = {s: score(r, set_name) for s, r in recs.items()}
                ps = {s: p for s, p in ps.items() if p is not None}
                if not ps:
                    continue
                macs.append(_cell_macs(recs.values()))
                means.append(float(np.mean(list(ps.values()))))
                seeds.append(ps)
                kept.append(x)
            if not macs:
                continue
            order = np.argsort(macs)
            macs = [macs[i] for i in order]
            means = [means[i] for i in order]
            seeds = [seeds[i] for i in order]
            kept = [kept[i] for i in order]
            out.append(
                {
                    "set": set_name,
                    "group_key": group,
                    "group": group_label(group, settings),
                    "family": family,
                    "budgets": kept,
                    "macs": macs,
                    "psnr": means,
                    "seed_psnr": seeds,
                    "reason": stats.fit_reason(macs, means),
                    "slope_per_doubling": stats.slope_per_doubling(macs, means),
                }
            )
    return out


def compute_equivalences(records: Sequence[dict], a: str, b: str, set_name: str | None = None):
    """Per group: how many times A's MACs B needs to reach A's PSNR (rules in
    :func:`stats.compute_equivalence`); ``reason`` says why nothing is read."""
    set_name = set_name or sets_of(records)[0]
    out = []
    index = _index(records)
    settings = _settings(index)
    for group in sorted(index, key=group_order):
        cells = index[group]
        row = {"set": set_name, "group_key": group, "group": group_label(group, settings)}
        row |= {"a": a, "b": b, "n_seeds": 0, "reason": None, "readings": []}
        budgets = [x for x in sorted(cells) if _paired_seeds(cells[x], a, b, set_name)]
        if not budgets:
            continue
        seeds = sorted(
            set.intersection(*(set(_paired_seeds(cells[x], a, b, set_name)) for x in budgets))
        )
        if not seeds:
            out.append(row | {"reason": "no seed was trained at every budget of both families"})
            continue
        cost_a = [_cell_macs(cells[x][a].values()) for x in budgets]
        cost_b = [_cell_macs(cells[x][b].values()) for x in budgets]
        psnr_a = np.array([[score(cells[x][a][s], set_name) for x in budgets] for s in seeds])
        psnr_b = np.array([[score(cells[x][b][s], set_name) for x in budgets] for s in seeds])
        oa, ob = np.argsort(cost_a), np.argsort(cost_b)
        eq = stats.compute_equivalence(
            [cost_a[i] for i in oa],
            psnr_a[:, oa],
            [cost_b[i] for i in ob],
            psnr_b[:, ob],
            names=(a, b),
        )
        if eq["reason"] and len(budgets) < len(cells):
            eq["reason"] += f" (budgets where both {a} and {b} have paired seeds)"
        out.append(
            row | eq | {"n_seeds": len(seeds), "range_b": (float(min(cost_b)), float(max(cost_b)))}
        )
    return out


def matched_latency(
    records: Sequence[dict], a: str, b: str, set_name: str | None = None, lat: dict | None = None
) -> list[dict]:
    """Per group: ``A - B`` PSNR at A's latency, B interpolated in log latency inside its range.

    Read only when, for both families, latency rises with budget and PSNR (seed mean) rises with
    latency over every adjacent pair; otherwise ``reason`` says which did not.
    """
    set_name = set_name or sets_of(records)[0]
    lat = lat or latency_source(records, None)
    out = []
    index = _index(records)
    settings = _settings(index)
    for group in sorted(index, key=group_order):
        cells = index[group]
        budgets = [x for x in sorted(cells) if _paired_seeds(cells[x], a, b, set_name)]
        if not budgets:
            continue
        row = {"set": set_name, "group_key": group, "group": group_label(group, settings)}
        sources = {_cell_source(cells[x][f].values(), lat) for x in budgets for f in (a, b)}
        row |= {"a": a, "b": b, "reason": None, "readings": []}
        row["source"] = sources.pop() if len(sources) == 1 else MIXED
        if len(budgets) < 2:
            out.append(row | {"reason": f"{len(budgets)} budget: no latency curve to read"})
            continue
        curves = {}
        for fam in (a, b):
            lats = [_cell_latency(cells[x][fam].values(), lat) for x in budgets]
            psnr = [_mean(score(r, set_name) for r in cells[x][fam].values()) for x in budgets]
            if not all(math.isfinite(v) for v in lats):
                row["reason"] = f"{fam} has no latency for every budget"
                break
            bad = stats.not_rising(budgets, lats)
            if bad is not None:
                i, j = bad
                row["reason"] = (
                    f"{fam}'s latency does not rise with its budget "
                    f"({lats[i]:.3g} -> {lats[j]:.3g} ms from {_g(budgets[i])} to {_g(budgets[j])})"
                )
                break
            bad = stats.not_rising(lats, psnr)
            if bad is not None:
                i, j = bad
                row["reason"] = (
                    f"{fam}'s PSNR does not rise with latency ({psnr[i]:.3f} -> {psnr[j]:.3f} dB "
                    f"from {lats[i]:.3g} to {lats[j]:.3g} ms)"
                )
                break
            curves[fam] = (lats, psnr)
        if row["reason"]:
            out.append(row)
            continue
        lat_b = curves[b][0]
        seeds_b = set.intersection(*(set(cells[x][b]) for x in budgets))
        for x, lat_a in zip(budgets, curves[a][0], strict=True):
            reading = {"budget": x, "latency_a_ms": lat_a, "range_b": (lat_b[0], lat_b[-1])}
            if not stats.Curve(tuple(lat_b), tuple(curves[b][1])).inside(lat_a):
                out_of = "below" if lat_a < lat_b[0] else "above"
                row["readings"].append(reading | {"status": out_of, "stat": None})
                continue
            diffs = []
            for s in sorted(set(cells[x][a]) & seeds_b):
                if any(score(cells[y][b][s], set_name) is None for y in budgets):
                    continue
                if score(cells[x][a][s], set_name) is None:
                    continue
                curve = stats.Curve(
                    tuple(lat_b), tuple(score(cells[y][b][s], set_name) for y in budgets)
                )
                diffs.append(score(cells[x][a][s], set_name) - curve.at(lat_a))
            if not diffs:
                row["readings"].append(reading | {"status": "no paired seeds", "stat": None})
                continue
            row["readings"].append(reading | {"status": "in range", "stat": stats.seed_stat(diffs)})
        out.append(row)
    return out


def latency_ratios(records: Sequence[dict], lat: dict) -> list[dict]:
    """Per cell: each family's latency over ``lr``'s (cell medians) from one latency source."""
    out = []
    index = _index(records)
    settings = _settings(index)
    for group in sorted(index, key=group_order):
        for budget in sorted(index[group]):
            cell = index[group][budget]
            if "lr" not in cell:
                continue
            base = _cell_latency(cell["lr"].values(), lat)
            for fam in sorted(cell, key=_family_key):
                if fam == "lr":
                    continue
                ms = _cell_latency(cell[fam].values(), lat)
                both = {_cell_source(cell[f].values(), lat) for f in ("lr", fam)}
                out.append(
                    {
                        "group": group_label(group, settings),
                        "role": group[5],
                        "budget": budget,
                        "family": fam,
                        "latency_ms": ms,
                        "lr_latency_ms": base,
                        "ratio": ms / base if base > 0 else math.nan,
                        "source": both.pop() if len(both) == 1 else MIXED,
                    }
                )
    return out


# --- convergence ----------------------------------------------------------------------------------


def point_tail_gains(records: Sequence[dict], set_name: str) -> dict[str, float]:
    """``{point_id: validation PSNR gain over the last TAIL_FRACTION of its steps}`` on
    ``set_name``, for points whose ``curve`` is fine enough to tell."""
    out = {}
    for r in records:
        curve = r.get("curve") or []
        pts = [
            (c["step"], c["eval"][set_name]["psnr"])
            for c in curve
            if isinstance(c.get("eval"), dict) and (c["eval"].get(set_name) or {}).get("psnr")
        ]
        if pts:
            gain = stats.tail_gain(*zip(*pts, strict=True))
            if gain is not None:
                out[r["point_id"]] = gain
    return out


def convergence(records: Sequence[dict], set_name: str | None = None) -> dict:
    """Tail gains per group and the training-length controls (module docstring of stats).

    ``groups``: ``{group: {"converged": bool | None, "worst": (gain, family, budget) | None}}``;
    ``controls``: per pair of training lengths of otherwise equal groups, the lr - hr gap per
    common budget and each family's slope per doubling of MACs, short against long, and whether
    each held; ``held``: the groups whose control held everywhere (capacity wording allowed).
    """
    set_name = set_name or sets_of(records)[0]
    gains = point_tail_gains(records, set_name)
    index = _index(records)
    settings = _settings(index)
    groups = {}
    for group in index:
        worst = None
        for budget, cell in index[group].items():
            for fam, seeds in cell.items():
                g = _mean(gains.get(r["point_id"]) for r in seeds.values())
                if math.isfinite(g) and (worst is None or g > worst[0]):
                    worst = (g, fam, budget)
        covered = all(
            r["point_id"] in gains
            for c in index[group].values()
            for s in c.values()
            for r in s.values()
        )
        converged = None if worst is None or not covered else worst[0] < stats.CONVERGED_GAIN_DB
        groups[group] = {
            "label": group_label(group, settings),
            "converged": converged,
            "worst": worst,
        }
    by_base = defaultdict(list)
    for group in index:
        if group[5] in (None, "grid", "control"):  # not the lr/deconv equivalence points
            by_base[(group[0], group[2], group[3], group[4])].append(group)
    curves = budget_curves(records, set_name)
    controls = []
    for members in by_base.values():
        members = sorted(members, key=lambda g: (g[1], str(g[5])))
        for short, long in zip(members, members[1:], strict=False):
            if long[1] > short[1]:
                controls.append(_control(index, curves, short, long, set_name, settings))
    held: dict[str, dict] = {"gaps": {}, "slopes": {}}
    for c in controls:
        for kind in ("gaps", "slopes"):
            if c[kind] and all(x["held"] is True for x in c[kind]):
                for g in (c["short_key"], c["long_key"]):
                    if groups[g]["converged"] is not False:
                        held[kind].setdefault(g, c)
    return {
        "set": set_name,
        "groups": groups,
        "controls": controls,
        "held": set(held["gaps"]),
        "held_by": held,
    }


def _control(index, curves, short, long, set_name, settings) -> dict:
    gaps = []
    for a, b in PAIRS:
        for budget in sorted(set(index[short]) & set(index[long])):
            vals, counts, resolved = [], [], []
            for g in (short, long):
                cell = index[g][budget]
                seeds = _paired_seeds(cell, a, b, set_name)
                diffs = [score(cell[a][s], set_name) - score(cell[b][s], set_name) for s in seeds]
                st = stats.seed_stat(diffs)
                counts.append(len(seeds))
                vals.append(_mean(diffs))
                resolved.append(st.excludes_zero)
            if all(math.isfinite(v) for v in vals):
                # A gap held only where both lengths resolve it (a t-interval over >= 3 seeds
                # that excludes 0): a gap within noise has no size to hold, and with fewer seeds
                # (failed or collapsed runs) none can be read. Then whether it held is not known
                # (None, with the reason); a gap that moved beyond the rule did not hold.
                held, why = stats.held(*vals), None
                if min(counts) < stats.MIN_SEEDS_FOR_INTERVAL:
                    held, why = None, "seeds"
                elif held and not all(resolved):
                    held, why = None, "unresolved"
                gaps.append(
                    {"pair": (a, b), "budget": budget, "short": vals[0], "long": vals[1]}
                    | {"seeds": tuple(counts), "held": held, "why": why}
                )
    slopes = []
    common = sorted(set(index[short]) & set(index[long]))
    by = {(c["group_key"], c["family"]): c for c in curves}
    for fam in sorted(
        {f for g in (short, long) for c in index[g].values() for f in c}, key=_family_key
    ):
        vals = []
        for g in (short, long):
            c = by.get((g, fam))
            if c is None:
                break
            keep = [i for i, s in enumerate(c["macs"]) if _budget_of(index[g], fam, s) in common]
            vals.append(
                stats.slope_per_doubling([c["macs"][i] for i in keep], [c["psnr"][i] for i in keep])
            )
        if len(vals) == 2 and all(math.isfinite(v) for v in vals):
            slopes.append(
                {"family": fam, "short": vals[0], "long": vals[1], "held": stats.held(*vals)}
            )
    ok = bool(gaps or slopes) and all(x["held"] is True for x in gaps + slopes)
    return {
        "short_key": short,
        "long_key": long,
        "short": group_label(short, settings),
        "long": group_label(long, settings),
        "steps": (short[1], long[1]),
        "budgets": common,
        "k": long[1] / short[1] if short[1] else math.nan,
        "gaps": gaps,
        "slopes": slopes,
        "held": ok,
    }


def _budget_of(cells: dict, family: str, macs: float):
    for budget, cell in cells.items():
        if family in cell and _cell_macs(cell[family].values()) == macs:
            return budget
    return None


# --- the analysis ---------------------------------------------------------------------------------


def analyse(
    records: Iterable[dict], latency: dict | None = None, lr_search: dict | None = None
) -> dict:
    """Everything the report shows, computed from ``records`` (and the content of
    ``latency.json`` and ``lr_search.json``, where the sweep wrote them)."""
    ok, failed = split(records)
    sets = sets_of(ok)
    lat = latency_source(ok, latency)
    families = {r["family"] for r in ok}
    pairs = [(a, b) for a, b in RACE_PAIRS if a in families and b in families]
    per_set = {}
    for s in sets:
        per_set[s] = {
            "rows": table_rows(ok, s, lat),
            "differences": {p: differences(ok, *p, s) for p in pairs},
            "curves": budget_curves(ok, s),
            "equivalences": {p: compute_equivalences(ok, *p, s) for p in pairs},
            "matched_latency": {p: matched_latency(ok, *p, s, lat) for p in pairs},
            "lr_deconv": lr_deconv_equivalence(ok, s) if {"lr", "deconv"} <= families else [],
        }
    a = {
        "ok": ok,
        "failed": failed,
        "sets": sets,
        "latency": lat,
        "rows": [row for s in sets for row in per_set[s]["rows"]],
        "per_set": per_set,
        "convergence": convergence(ok, sets[0]) if ok else None,
        "latency_ratios": latency_ratios(ok, lat),
        "bicubic": ok[0].get("bicubic") if ok else None,
        "budget_unit": budget_unit(ok),
        "_budgets": {g: tuple(cells) for g, cells in _index(ok).items()},
        "lr_search": lr_search,
    }
    a["conclusion_lines"] = conclusion_lines(a)
    a["conclusion"] = "\n".join(f"- {line}" for line in a["conclusion_lines"])
    return a


# --- the conclusion -------------------------------------------------------------------------------


def _g(x: float) -> str:
    """3 significant digits, exponents short: ``2.5e4``, ``375``."""
    return f"{x:.3g}".replace("e+0", "e").replace("e+", "e")


def _qualifier(a: dict, group: tuple, kind: str = "gaps", budget: float | None = None) -> str:
    """How far a statement about ``group`` reaches: a difference of capacity only where a
    longer-training control held (``kind``: the family ``gaps`` or the budget ``slopes``), and
    only at the control's budgets; otherwise at this training length."""
    here = f"at this training length ({_int(group[1])} steps)"
    conv = a["convergence"]
    c = (conv or {}).get("held_by", {}).get(kind, {}).get(group)
    if c is None:
        return here
    lo, hi = c["steps"]
    what = "a capacity difference" if kind == "gaps" else "a budget curve of capacity"
    if budget is not None and budget not in c["budgets"]:
        return here
    own = [budget] if budget is not None else sorted(a["_budgets"].get(group, ()))
    if set(own) <= set(c["budgets"]):
        return f"held from {_int(lo)} to {_int(hi)} steps, so {what}"
    at = ", ".join(_g(b) for b in c["budgets"])
    return f"held from {_int(lo)} to {_int(hi)} steps at {at} ({what} there; elsewhere {here})"


def _images_text(d: dict) -> str:
    if d["images"] is None:
        return "per-image scores not recorded"
    return d["images"].text(d["a"], d["b"])


def _training_lines(a: dict) -> list[str]:
    ok, conv = a["ok"], a["convergence"]
    by_role = defaultdict(set)
    for r in ok:
        if r.get("steps") is not None:
            by_role[r.get("role") or "grid"].add(r["steps"])
    steps = "; ".join(
        f"{', '.join(_int(x) for x in sorted(v))} ({ROLE_NAMES.get(role, role)})"
        for role, v in sorted(by_role.items(), key=lambda kv: kv[0] != "grid")
    )
    lrs = defaultdict(set)
    for r in ok:
        if r.get("lr") is not None:
            lrs[r["family"]].add(_lr(r))
    lr_text = (
        "; peak learning rate "
        + ", ".join(
            f"{f} {'/'.join(sorted(v))}"
            for f, v in sorted(lrs.items(), key=lambda kv: _family_key(kv[0]))
        )
        if lrs
        else "; peak learning rate not recorded per point"
    )
    lines = [f"Training length in steps: {steps}{lr_text}."]
    states = [g for g in conv["groups"].values()]
    measured = [g for g in states if g["converged"] is not None]
    if not measured:
        conv_text = "not measured (no validation curve recorded at regular steps)"
    else:
        bad = [g for g in measured if not g["converged"]]
        worst = max((g["worst"] for g in measured), key=lambda w: w[0])
        where = f"{worst[1]}, budget {_g(worst[2])} {a['budget_unit']}"
        tail = f"{stats.TAIL_FRACTION:.0%}"
        if bad:
            conv_text = (
                f"no: validation PSNR still rose by up to {worst[0]:+.3f} dB over the last {tail} "
                f"of steps ({where}; {len(bad)} of {len(measured)} groups above "
                f"{stats.CONVERGED_GAIN_DB} dB)"
            )
        else:
            conv_text = (
                f"yes by the tail rule: at most {worst[0]:+.3f} dB gained over the last {tail} of "
                f"steps ({where}); a cosine schedule flattens every tail, so only a longer-training "
                "control shows capacity"
            )
    lines.append(f"Converged ({set_label(conv['set'])}): {conv_text}.")
    if not conv["controls"]:
        lines.append(
            "Longer-training control: none in this grid, so every result holds at its training "
            "length only (no capacity claim)."
        )
    for c in conv["controls"]:
        moved = [x for x in c["gaps"] + c["slopes"] if x["held"] is False]
        unknown = [x for x in c["gaps"] if x["held"] is None]
        n = len(c["gaps"]) + len(c["slopes"])
        what = f"{n} comparisons ({len(c['gaps'])} family gaps, {len(c['slopes'])} budget slopes)"
        if not n:
            verdict = (
                "nothing to compare (no family pair or budget slope completed at both lengths)"
            )
        elif c["held"]:
            verdict = f"all {what} held"
        elif not moved:
            x = unknown[0]
            why = (
                f"fewer than {stats.MIN_SEEDS_FOR_INTERVAL} seeds completed at one length (e.g. "
                f"{x['pair'][0]} - {x['pair'][1]} at {_g(x['budget'])}: {x['seeds'][0]} and "
                f"{x['seeds'][1]} seeds"
                if x["why"] == "seeds"
                else "the gap is not resolved at both lengths (a seed interval includes 0), so "
                f"it has no size to hold (e.g. {x['pair'][0]} - {x['pair'][1]} at "
                f"{_g(x['budget'])}"
            )
            verdict = (
                f"cannot say for {len(unknown)} of {what}: {why}, "
                f"{x['short']:+.3f} -> {x['long']:+.3f} dB)"
            )
        else:
            x = moved[0]
            name = (
                f"{x['pair'][0]} - {x['pair'][1]} at {_g(x['budget'])}"
                if "pair" in x
                else f"{x['family']}'s slope"
            )
            verdict = (
                f"{len(moved)} of {what} did not hold (e.g. {name}: {x['short']:+.3f} -> "
                f"{x['long']:+.3f} dB)"
            )
        lines.append(
            f"Longer-training control, {c['short']} -> {_int(c['steps'][1])} steps "
            f"({c['k']:.3g}x): {verdict}."
        )
    return lines


def _basis_line(a: dict) -> str:
    ok = a["ok"]
    fams = sorted({r["family"] for r in ok}, key=_family_key)
    seeds = [row["n_seeds"] for row in a["rows"]]
    images = []
    for s in a["sets"]:
        ns = {row["n_images"] for row in a["per_set"][s]["rows"]}
        n = next(iter(ns)) if len(ns) == 1 else None
        images.append(f"{set_label(s)} {n} images" if n else f"{set_label(s)} (images not counted)")
    seed_text = f"{min(seeds)}" if min(seeds) == max(seeds) else f"{min(seeds)} to {max(seeds)}"
    return (
        f"Basis: {len(ok)} completed points; families {', '.join(fams)}; {seed_text} seeds per "
        f"cell; sets: {'; '.join(images)}. Budgets are conv MACs per LR pixel."
    )


def _cells_text(stats_by_budget: Sequence[tuple[float, stats.SeedStat]]) -> str:
    """``1e4: +0.385 (+0.373 to +0.398); 3e4: ... dB (label)``: the seed rule's label once when
    every cell shares it."""
    labels = {st.label for _, st in stats_by_budget}
    parts = []
    for budget, st in stats_by_budget:
        iv = f" ({st.low:+.3f} to {st.high:+.3f})" if st.kind != stats.NO_INTERVAL else ""
        own = f" [{st.label}]" if len(labels) > 1 else ""
        parts.append(f"{_g(budget)}: {st.mean:+.3f}{iv}{own}")
    tail = f" ({labels.pop()})" if len(labels) == 1 else ""
    return "; ".join(parts) + f" dB{tail}"


def _images_compact(cells: Sequence[dict]) -> str:
    ims = [d["images"] for d in cells]
    if any(i is None for i in ims):
        return "per-image scores not recorded"
    a = cells[0]["a"]
    counts = ", ".join(f"{i.n_positive}" for i in ims)
    ns = {i.n for i in ims}
    n = f"{ns.pop()}" if len(ns) == 1 else "/".join(str(i.n) for i in ims)
    excl = sum(i.excludes_zero for i in ims)
    tested = sum(i.df is not None for i in ims)
    t = (
        f"; the paired t over images excludes 0 at {excl} of {len(ims)} budgets"
        if tested
        else f" (< {stats.MIN_IMAGES_FOR_INTERVAL} images: no interval)"
    )
    return f"per image (seed-mean PSNR), {a} higher on {counts} of {n} images{t}"


def _verdicts(cells: Sequence[dict]) -> str:
    counts: dict[str, int] = {}
    for d in cells:
        counts[d["verdict"]] = counts.get(d["verdict"], 0) + 1
    return "; ".join(f"{v} at {k} of {len(cells)} budgets" for v, k in counts.items())


def _by_group(rows: Iterable[dict]) -> dict:
    out = defaultdict(list)
    for r in rows:
        out[r["group_key"]].append(r)
    return out


def _count_range(counts: Iterable[int]) -> str:
    counts = list(counts)
    lo, hi = min(counts), max(counts)
    return f"{lo}" if lo == hi else f"{lo} to {hi}"


def _curve_lines(a: dict, s: str, tag: str, keep=lambda row: True) -> list[str]:
    lines = []
    for group, curves in _by_group(filter(keep, a["per_set"][s]["curves"])).items():
        label = curves[0]["group"]
        if all(c["reason"] is None for c in curves):
            span = max(c["macs"][-1] / c["macs"][0] for c in curves)
            slopes = ", ".join(f"{c['family']} {c['slope_per_doubling']:+.3f}" for c in curves)
            lines.append(
                f"{tag} {label}: PSNR rises with MACs for every family ({len(curves[0]['macs'])} "
                f"budgets, {span:.3g}x); least-squares gain per doubling of MACs (seed means, "
                f"{_count_range(len(x) for c in curves for x in c['seed_psnr'])} seeds): "
                f"{slopes} dB, {_qualifier(a, group, 'slopes')}."
            )
        else:
            why = "; ".join(f"{c['family']}: {c['reason']}" for c in curves if c["reason"])
            means = "; ".join(
                f"{c['family']} "
                + ", ".join(
                    f"{_g(b)}: {p:.3f}" for b, p in zip(c["budgets"], c["psnr"], strict=True)
                )
                for c in curves
            )
            lines.append(
                f"{tag} {label}: budget curves not read: {why} (seed-mean PSNR by budget: "
                f"{means} dB)."
            )
    return lines


def _deconv_text(d: dict) -> str:
    check = d["equivalence"]
    st, tol = check["stat"], check["tolerance"]
    if check["verdict"] == "cannot say":
        return f"equivalence cannot be tested with {st.label}"
    return f"{check['verdict']} within ±{tol} dB"


def _race_lines(a: dict, s: str, detail: bool = False) -> list[str]:
    """The claims about set ``s``: compact (one line per group and comparison, the conclusion)
    or in ``detail`` (one line per cell, the report's per-set section)."""
    lines = []
    tag = f"[{set_label(s)}]"
    ps = a["per_set"][s]
    pairs = list(ps["differences"])
    shown = pairs if detail else pairs[:1]  # the conclusion: the headline pair only
    for x, y in shown:
        if detail:
            for d in ps["differences"][x, y]:
                lines.append(
                    f"{tag} {d['group']}, {_g(d['budget'])} {a['budget_unit']}: {x} - {y} = "
                    f"{d['seeds'].text()}; {_images_text(d)}; {d['verdict']}, "
                    f"{_qualifier(a, d['group_key'], budget=d['budget'])}."
                )
            continue
        for group, cells in _by_group(ps["differences"][x, y]).items():
            lines.append(
                f"{tag} {cells[0]['group']}: {x} - {y} at matched {a['budget_unit']}, "
                f"{_cells_text([(d['budget'], d['seeds']) for d in cells])}; "
                f"{_images_compact(cells)}; {_verdicts(cells)}, {_qualifier(a, group)}."
            )

    def main(row: dict) -> bool:  # the conclusion reads curves of the grid's own groups only
        return detail or row["group_key"][5] in (None, "grid")

    lines += _curve_lines(a, s, tag, main)
    for pair in shown:
        for e in filter(main, ps["equivalences"][pair]):
            lines.append(f"{tag} {e['group']}: {_equivalence_text(a, e)}.")
        for m in filter(main, ps["matched_latency"][pair]):
            lines.append(f"{tag} {m['group']}: {_latency_text(m)}.")
    if detail:
        for d in ps["lr_deconv"]:
            lines.append(
                f"{tag} {d['group']}, {_g(d['budget'])} {a['budget_unit']}, lr vs deconv (same function "
                f"class, an equivalence check): lr - deconv = {d['equivalence']['stat'].text()}: "
                f"{_deconv_text(d)}; {_images_text(d)}."
            )
        return lines
    for _group, cells in _by_group(ps["lr_deconv"]).items():
        verdicts = {}
        for d in cells:
            verdicts[_deconv_text(d)] = verdicts.get(_deconv_text(d), 0) + 1
        summary = "; ".join(f"{v} at {k} of {len(cells)} budgets" for v, k in verdicts.items())
        lines.append(
            f"{tag} {cells[0]['group']}: lr vs deconv (same function class, an equivalence "
            f"check): lr - deconv "
            f"{_cells_text([(d['budget'], d['equivalence']['stat']) for d in cells])}: {summary}."
        )
    return lines


def _equivalence_text(a: dict, e: dict) -> str:
    head = f"compute-equivalence ({e['b']}'s MACs to match {e['a']}'s PSNR)"
    if e["reason"]:
        return f"{head}: cannot say: {e['reason']}"
    parts = []
    for r in e["readings"]:
        at = f"at {e['a']}'s {_g(r['cost_a'])}"
        if r["status"] == "in range":
            iv = r["interval"]
            if iv is None:
                n = len(r["seed_ratios"])
                iv_text = f"{n} of {e['n_seeds']} seeds reach it in range: no interval"
            elif iv["kind"] == stats.NO_INTERVAL:
                iv_text = iv["label"]
            else:
                iv_text = f"{iv['label']}: {_g(iv['low'])}x to {_g(iv['high'])}x"
            parts.append(f"{at}, {e['b']} needs {r['ratio']:.3g}x ({iv_text})")
        elif r["status"] == "above":
            parts.append(f"{at}: not reached within the measured range")
        else:
            parts.append(f"{at}: {e['b']}'s cheapest net already scores higher (below the range)")
    lo, hi = e["range_b"]
    return (
        f"{head}, read inside {e['b']}'s measured {_g(lo)} to {_g(hi)} MACs/LR px: "
        + "; ".join(parts)
        + f"; {_qualifier(a, e['group_key'], 'slopes')}"
    )


def _latency_text(m: dict) -> str:
    head = f"{m['a']} - {m['b']} at matched latency (timed {m['source']})"
    if m["reason"]:
        return f"{head}: cannot say: {m['reason']}"
    parts = []
    for r in m["readings"]:
        at = f"{m['a']} at {_g(r['budget'])} ({_g(r['latency_a_ms'])} ms)"
        if r["status"] == "in range":
            parts.append(f"{at}: {r['stat'].text()}")
        elif r["status"] == "no paired seeds":
            parts.append(f"{at}: no seed of {m['b']} was trained at every budget, not read")
        else:
            lo, hi = r["range_b"]
            parts.append(f"{at}: outside {m['b']}'s measured {_g(lo)} to {_g(hi)} ms, not read")
    return f"{head}: " + "; ".join(parts)


def _latency_lines(a: dict) -> list[str]:
    by = defaultdict(list)
    for r in a["latency_ratios"]:
        if r["role"] in (None, "grid"):
            by[(r["group"], r["family"], r["source"])].append(r)
    lines = []
    labels = a["latency"]["labels"]
    for (group, fam, source), rs in by.items():
        ratios = ", ".join(f"{r['ratio']:.3g}x at {_g(r['budget'])}" for r in rs)
        label = labels.get(source, "the two families timed differently: not comparable")
        lines.append(f"Latency {fam}/lr, {group}: {ratios} ({label}).")
    return lines


def _budget_span(budgets: Sequence[float]) -> str:
    if budgets[0] == budgets[-1]:
        return f"the one budget {_g(budgets[0])}"
    return f"budgets {_g(budgets[0])} to {_g(budgets[-1])}"


def _limits_line(a: dict) -> str:
    ok = a["ok"]
    budgets = sorted({r["budget"] for r in ok})
    depths = sorted({r.get("depth") for r in ok})
    scales = sorted({(r.get("model") or {}).get("scale") for r in ok} - {None})
    cannot = [
        f"anything outside {_budget_span(budgets)} {a['budget_unit']}, depth(s) "
        f"{', '.join(map(str, depths))}"
        + (f", scale x{', x'.join(map(str, scales))}" if scales else "")
        + " and the training data used"
    ]
    conv = a["convergence"]
    if not conv["held"]:
        moved = any(x["held"] is False for c in conv["controls"] for x in c["gaps"] + c["slopes"])
        why = (
            "the control's comparisons moved with longer training"
            if moved
            else "no control held"
            if conv["controls"]
            else "no longer-training control was run"
        )
        cannot.append(
            f"whether a gap or slope reflects capacity rather than training length ({why})"
        )
    if any(row["n_seeds"] < stats.MIN_SEEDS_FOR_INTERVAL for row in a["rows"]):
        cannot.append(
            "a confidence interval over seeds where a cell has fewer than "
            f"{stats.MIN_SEEDS_FOR_INTERVAL} seeds"
        )
    if any(row["n_images"] is None for row in a["rows"]):
        cannot.append("how differences spread over images where per-image scores are missing")
    if a["latency"]["source"] != INTERLEAVED:
        cannot.append("latency ratios from an interleaved run (none was recorded)")
    if not any(r.get("lr") is not None for r in ok):
        cannot.append("whether a family's result is its learning rate (not recorded per point)")
    return "The grid cannot say: " + "; ".join(cannot) + "."


def conclusion_lines(a: dict) -> list[str]:
    """The conclusion, one claim per line, each with its number, interval and basis."""
    if not a["ok"]:
        return ["No completed points: nothing to conclude.", *_failed_lines(a["failed"])]
    lines = [*_training_lines(a), *_search_lines(a.get("lr_search")), _basis_line(a)]
    bic = a["bicubic"] or {}
    for s in a["sets"]:
        if isinstance(bic.get(s), dict) and bic[s].get("psnr") is not None:
            lines.append(f"[{set_label(s)}] bicubic upscaling scores {bic[s]['psnr']:.3f} dB.")
        lines += _race_lines(a, s)
    lines += _latency_lines(a)
    lines.append(
        "Extrapolation: none; ratios and matched-latency readings are made only inside the "
        "measured ranges, and readings outside them say so."
    )
    lines.append(_limits_line(a))
    return lines + _failed_lines(a["failed"])


def search_choices(search: dict) -> list[tuple[str, dict[str, float], dict[str, bool]]]:
    """``(steps, {family: rate}, {family: at_edge})`` per searched length of an
    ``lr_search.json`` (espcn_jax/study/lr_search.py); one entry with steps ``""`` for a search at
    one length."""
    by = search.get("by_steps")
    if not by:
        return [("", search["lrs"], search.get("at_edge", {}))]
    edges = search.get("at_edge_by_steps", {})
    return [(steps, lrs, edges.get(steps, {})) for steps, lrs in by.items()]


def _search_lines(search: dict | None) -> list[str]:
    """Where the learning-rate search's choices lie in the rates it tried (lr_search.json)."""
    if not search or not search.get("table"):
        return []
    lines = []
    for steps, lrs, edge in search_choices(search):
        parts = []
        for family, rate in sorted(lrs.items(), key=lambda kv: _family_key(kv[0])):
            rows = [r for r in search["table"] if r["family"] == family]
            if steps:  # a search per training length: this length's runs
                rows = [r for r in rows if str(r.get("steps")) == steps]
            tried = sorted({row["lr"] for row in rows})
            where = (
                "an end of the rates tried: a rate beyond it was not tried"
                if edge.get(family)
                else "inside the rates tried"
            )
            parts.append(f"{family} {rate:g} of {', '.join(f'{t:g}' for t in tried)} ({where})")
        at = f" for the {int(steps):,}-step runs" if steps else ""
        lines.append(
            f"Learning rates chosen by the training-subset search{at} (never the validation "
            "sets): " + "; ".join(parts) + "."
        )
    return lines


def _failed_lines(failed: Sequence[dict]) -> list[str]:
    return [
        f"Failed and left out: {r.get('point_id')} ({r.get('error', 'no error recorded')})."
        for r in failed
    ]


# --- tables ---------------------------------------------------------------------------------------


def _num(x, fmt: str) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, fmt)


def _row_stat(r: dict) -> str:
    if not math.isfinite(r["psnr"]):
        return "n/a"
    if math.isfinite(r["psnr_low"]):
        return f"{r['psnr']:.3f} [{r['psnr_low']:.3f}, {r['psnr_high']:.3f}]"
    return f"{r['psnr']:.3f}"


def markdown_table(rows: Sequence[dict]) -> str:
    head = (
        "| group | budget | family | widths | seeds | images | PSNR (dB) [interval] | interval | "
        "SSIM | train PSNR | tail gain (dB) | peak lr | params | MACs/LR px | GFLOPs (XLA) | "
        "latency (ms) | RF (LR px) |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        lines.append(
            f"| {r['group']} | {_g(r['budget'])} | {r['family']} | {r['widths']} | {r['n_seeds']} | "
            f"{_num(r['n_images'], 'd')} | {_row_stat(r)} | {r['psnr_interval']} | "
            f"{_num(r['ssim'], '.4f')} | {_num(r['train_psnr'], '.3f')} | "
            f"{_num(r['tail_gain_db'], '+.3f')} | {r['peak_lr'] or 'n/a'} | "
            f"{_num(r['params'], ',')} | {_g(r['conv_macs_per_lr_pixel'] or math.nan)} | "
            f"{_num(r['gflops_xla'], '.3g')} | {_num(r['latency_ms'], '.3g')} | "
            f"{_num(r['receptive_field_lr'], '')} |"
        )
    return "\n".join(lines)


def markdown_differences(diffs: Sequence[dict]) -> str:
    lines = [
        "| group | budget | A - B | over seeds | over images (seed-mean PSNR per image) | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for d in diffs:
        lines.append(
            f"| {d['group']} | {_g(d['budget'])} | {d['a']} - {d['b']} | {d['seeds'].text()} | "
            f"{_images_text(d)} | {d['verdict']} |"
        )
    return "\n".join(lines)


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
        row = {k: d[k] for k in ("set", "group", "budget", "a", "b", "verdict")}
        s = d["seeds"]
        row |= {"seeds_n": s.n, "mean": s.mean, "seeds_low": s.low, "seeds_high": s.high}
        row["seeds_interval"] = s.label
        im = d["images"]
        row |= {
            "images_n": im.n if im else None,
            "images_a_higher": im.n_positive if im else None,
            "images_b_higher": im.n_negative if im else None,
            "images_low": im.low if im else None,
            "images_high": im.high if im else None,
            "images_sign_p": im.sign_p if im else None,
        }
        out.append(row)
    return out


def markdown_convergence(a: dict) -> list[str]:
    conv = a["convergence"]
    if conv is None:
        return []
    lines = [
        f"## Convergence ({set_label(conv['set'])})",
        "",
        f"Validation PSNR gained over the last {stats.TAIL_FRACTION:.0%} of training (the largest "
        "cell of each group); a longer-training control compares the same cells at k x the steps.",
        "",
        "| group | converged (tail rule) | largest tail gain | where |",
        "|---|---|---|---|",
    ]
    for g in sorted(conv["groups"].values(), key=lambda g: g["label"]):
        worst = g["worst"]
        state = {None: "not measured", True: "yes", False: "no"}[g["converged"]]
        where = f"{worst[1]}, {_g(worst[2])}" if worst else "n/a"
        gain = f"{worst[0]:+.3f} dB" if worst else "n/a"
        lines.append(f"| {g['label']} | {state} | {gain} | {where} |")
    if conv["controls"]:
        lines += [
            "",
            "| control | what | at N steps | at k x N steps | held |",
            "|---|---|---|---|---|",
        ]
        for c in conv["controls"]:
            name = f"{_int(c['steps'][0])} -> {_int(c['steps'][1])} steps"
            for x in c["gaps"]:
                what = f"{x['pair'][0]} - {x['pair'][1]} at {_g(x['budget'])}"
                verdict = {True: "yes", False: "no"}.get(
                    x["held"],
                    f"cannot say ({x['seeds'][0]} and {x['seeds'][1]} seeds)"
                    if x.get("why") == "seeds"
                    else "cannot say (not resolved)",
                )
                lines.append(
                    f"| {name} | {what} | {x['short']:+.3f} dB | {x['long']:+.3f} dB | {verdict} |"
                )
            for x in c["slopes"]:
                lines.append(
                    f"| {name} | {x['family']} dB per doubling of MACs | {x['short']:+.3f} | "
                    f"{x['long']:+.3f} | {'yes' if x['held'] else 'no'} |"
                )
    else:
        lines += ["", "No longer-training control in this grid (one training length per cell)."]
    return [*lines, ""]


def markdown_set(a: dict, s: str) -> list[str]:
    ps = a["per_set"][s]
    ns = {r["n_images"] for r in ps["rows"]}
    n = next(iter(ns)) if len(ns) == 1 and None not in ns else None
    head = f"## {set_label(s)} (`{s}`, {n} images)" if n else f"## {set_label(s)} (`{s}`)"
    lines = [head, ""]
    bic = (a["bicubic"] or {}).get(s)
    if isinstance(bic, dict) and bic.get("psnr") is not None:
        lines += [
            f"Bicubic upscaling: PSNR {bic['psnr']:.3f} dB, SSIM {bic.get('ssim', 0):.4f}.",
            "",
        ]
    lines += [
        "Per cell and family: PSNR seed mean [interval by the seed rule].",
        "",
        markdown_table(ps["rows"]),
        "",
    ]
    diffs = [d for ds in ps["differences"].values() for d in ds]
    if diffs:
        lines += ["Differences at matched MACs, paired over seeds and over images:", ""]
        lines += [markdown_differences(diffs), ""]
    lines += [f"Claims about {set_label(s)}, cell by cell:", ""]
    lines += [f"- {c}" for c in _race_lines(a, s, detail=True)] + [""]
    return lines


def markdown_latency(a: dict) -> list[str]:
    if not a["latency_ratios"]:
        return []
    lines = [
        "## Latency ratios",
        "",
        f"Source: {a['latency']['label']}.",
        "",
        "| group | budget | family | latency (ms) | lr (ms) | ratio |",
        "|---|---|---|---|---|---|",
    ]
    for r in a["latency_ratios"]:
        lines.append(
            f"| {r['group']} | {_g(r['budget'])} | {r['family']} | {_num(r['latency_ms'], '.3g')} "
            f"| {_num(r['lr_latency_ms'], '.3g')} | {_num(r['ratio'], '.3g')} |"
        )
    return [*lines, ""]


def _plain(obj):
    """JSON-ready: dataclasses as their dicts, tuple keys as strings, sets as sorted lists."""
    if hasattr(obj, "as_dict"):
        return _plain(obj.as_dict())
    if isinstance(obj, dict):
        return {(k if isinstance(k, str) else str(k)): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    if isinstance(obj, set | frozenset):
        return sorted((_plain(v) for v in obj), key=str)
    return obj


def json_view(a: dict) -> dict:
    """The analysis without the records, JSON-ready (``report.json``)."""
    per_set = {}
    for s, ps in a["per_set"].items():
        per_set[s] = {
            "rows": ps["rows"],
            "differences": [d for ds in ps["differences"].values() for d in ds],
            "curves": ps["curves"],
            "equivalences": [e for es in ps["equivalences"].values() for e in es],
            "matched_latency": [m for ms in ps["matched_latency"].values() for m in ms],
            "lr_deconv": ps["lr_deconv"],
        }
    return _plain(
        {
            "rules": list(stats.RULES),
            "sets": a["sets"],
            "latency_source": {k: v for k, v in a["latency"].items() if k != "by_point"},
            "rows": a["rows"],
            "per_set": per_set,
            "convergence": a["convergence"],
            "latency_ratios": a["latency_ratios"],
            "conclusion_lines": a["conclusion_lines"],
        }
    )
