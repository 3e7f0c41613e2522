"""The study's figures (matplotlib, Agg; each written as PNG and SVG).

- PSNR against MACs per LR pixel (the budget axis): one panel per group and validation set, per
  family every seed as a point and the seed mean as a curve with the interval the seed rule allows
  (:func:`espcn_jax.study.stats.seed_stat`: t-interval with >= 3 seeds, the seed range with 2,
  nothing with 1), never ± 1 SD;
- PSNR against GFLOPs, latency and parameters on the first set, same intervals, with the Pareto
  front over every network of the panel;
- validation PSNR against training step (the recorded ``curve``): whether training converged;
- training losses of every point (from its ``metrics.jsonl``);
- a sample grid on one validation image: LR, bicubic, each family's output, HR, and a zoomed crop.
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from collections.abc import Callable, Sequence

import matplotlib

matplotlib.use("Agg")  # no display: files only
import jax  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from etils import epath  # noqa: E402
from matplotlib import ticker  # noqa: E402

from espcn_jax import bicubic, data, evaluate, images, metrics  # noqa: E402
from espcn_jax.study import report, stats  # noqa: E402

COLORS = {"lr": "tab:blue", "hr": "tab:red", "deconv": "tab:green", "lr_tied": "tab:purple"}
MARKERS = {"lr": "o", "hr": "s", "deconv": "^", "lr_tied": "v"}
AXES = {
    "gflops": ("gflops", "GFLOPs per image (useful, analytic) at the latency size", True),
    "latency": ("latency_ms", "forward latency (ms) at the latency size, this device", True),
    "params": ("params", "parameters", True),
}


def _log_x(ax) -> None:
    """A log x axis labelled at 1, 2 and 5 times each power of ten where it spans more than a
    decade (matplotlib's default labels every minor tick there, and they overlap), and at every
    tick where it spans less; each label written as the tables write numbers (``report._g``:
    ``2e3``, ``1e4``, ``50``)."""
    ax.set_xscale("log")
    ax.autoscale_view()
    lo, hi = ax.get_xlim()
    keep = {1, 2, 5} if hi > 10 * lo else set(range(1, 10))

    def label(x: float, _pos) -> str:
        if x <= 0:
            return ""
        mantissa = round(x / 10 ** math.floor(math.log10(x) + 1e-9))
        return report._g(x) if mantissa in keep else ""  # noqa: SLF001

    ax.xaxis.set_major_formatter(ticker.FuncFormatter(label))
    ax.xaxis.set_minor_formatter(ticker.FuncFormatter(label))


def _save(fig, out_dir: epath.Path, name: str) -> list[str]:
    paths = []
    for ext in ("png", "svg"):
        path = out_dir / f"{name}.{ext}"
        with path.open("wb") as f:
            fig.savefig(f, format=ext, dpi=120, bbox_inches="tight")
        paths.append(os.fspath(path))
    plt.close(fig)
    return paths


def _panels(n: int):
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 4.0 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, axes.flat


def _bars(rows: Sequence[dict]) -> tuple[list[float], list[float]]:
    """Error bars (below, above the mean) from the rows' interval (zero where there is none)."""
    lo = [r["psnr"] - r["psnr_low"] if math.isfinite(r["psnr_low"]) else 0.0 for r in rows]
    hi = [r["psnr_high"] - r["psnr"] if math.isfinite(r["psnr_high"]) else 0.0 for r in rows]
    return lo, hi


def _short_reason(reason: str) -> str:
    """A few words for a plot title from :func:`espcn_jax.study.stats.fit_reason`'s sentence."""
    for key, words in (("not monotone", "not monotone"), ("budget(s)", "< 3 budgets")):
        if key in reason:
            return words
    return "span < 8x" if "span" in reason else reason[:30]


def _interval_words(rows: Sequence[dict]) -> str:
    kinds = sorted({r["psnr_interval"] for r in rows})
    return "; ".join(kinds)


def psnr_plot(rows: Sequence[dict], out_dir: epath.Path, axis: str) -> list[str]:
    """PSNR (seed mean, interval by the seed rule) against ``axis`` (gflops, latency, params), on
    the first validation set of ``rows``, with the Pareto front."""
    key, label, log = AXES[axis]
    first = rows[0]["set"] if rows else None
    groups = defaultdict(list)
    for r in rows:
        if r["set"] != first:
            continue
        if r.get(key) is not None and math.isfinite(r[key]) and math.isfinite(r["psnr"]):
            groups[r["group"]].append(r)
    if not groups:
        return []
    fig, axes = _panels(len(groups))
    for ax, (group, grows) in zip(axes, groups.items(), strict=False):
        by_family = defaultdict(list)
        for r in grows:
            by_family[r["family"]].append(r)
        for family, frs in sorted(by_family.items(), key=lambda kv: report._family_key(kv[0])):
            frs = sorted(frs, key=lambda r: r[key])
            ax.errorbar(
                [r[key] for r in frs],
                [r["psnr"] for r in frs],
                yerr=_bars(frs),
                color=COLORS.get(family),
                marker=MARKERS.get(family, "o"),
                capsize=3,
                label=family,
            )
        front = stats.pareto_front([r[key] for r in grows], [r["psnr"] for r in grows])
        ax.step(
            [grows[i][key] for i in front],
            [grows[i]["psnr"] for i in front],
            where="post",
            color="0.4",
            linestyle="--",
            linewidth=1,
            label="Pareto front",
        )
        if log:
            _log_x(ax)
        ax.set_xlabel(label)
        ax.set_ylabel(f"PSNR (dB) on {report.set_label(first)}, seed mean")
        ax.set_title(f"{group}\nbars: {_interval_words(grows)}", fontsize=8)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, out_dir, f"psnr_vs_{axis}")


def budget_plot(analysis: dict, out_dir: epath.Path) -> list[str]:
    """PSNR against MACs per LR pixel, per group and set: seeds as points, the seed mean as a
    curve with the seed rule's interval; the title says whether the curve may be read."""
    panels = []
    for s in analysis["sets"]:
        ps = analysis["per_set"][s]
        by_group = defaultdict(list)
        for c in ps["curves"]:
            by_group[c["group"]].append(c)
        for group, curves in by_group.items():
            rows = [r for r in ps["rows"] if r["group"] == group]
            panels.append((s, group, curves, rows))
    if not panels:
        return []
    fig, axes = _panels(len(panels))
    for ax, (s, group, curves, rows) in zip(axes, panels, strict=False):
        notes = []
        for c in sorted(curves, key=lambda c: report._family_key(c["family"])):
            fam = c["family"]
            frs = sorted((r for r in rows if r["family"] == fam), key=lambda r: r["budget"])
            for x, seeds in zip(c["macs"], c["seed_psnr"], strict=True):
                ax.scatter(
                    [x] * len(seeds),
                    list(seeds.values()),
                    color=COLORS.get(fam),
                    marker=MARKERS.get(fam, "o"),
                    s=12,
                    alpha=0.45,
                    linewidths=0,
                )
            ax.errorbar(
                c["macs"],
                c["psnr"],
                yerr=_bars(frs) if len(frs) == len(c["macs"]) else None,
                color=COLORS.get(fam),
                marker=MARKERS.get(fam, "o"),
                capsize=3,
                label=f"{fam}: {_interval_words(frs)}",
            )
            if c["reason"]:
                notes.append(f"{fam}: not read ({_short_reason(c['reason'])})")
        _log_x(ax)
        ax.set_xlabel("conv MACs per LR pixel (the budget)")
        ax.set_ylabel(f"PSNR (dB) on {report.set_label(s)}")
        title = f"{report.set_label(s)}: {group}\n" + (
            "; ".join(notes) if notes else "every curve rises: read inside the range"
        )
        ax.set_title(title, fontsize=7)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, out_dir, "psnr_vs_macs")


def convergence_plot(records: Sequence[dict], set_name: str, out_dir: epath.Path) -> list[str]:
    """Validation PSNR on ``set_name`` against training step from each point's ``curve``: per
    group, the seed mean of every family and budget (records without curves are left out)."""
    groups: dict = defaultdict(lambda: defaultdict(list))
    train: dict = defaultdict(lambda: defaultdict(list))
    for r in records:
        pts = [
            (c["step"], c["eval"][set_name]["psnr"])
            for c in r.get("curve") or []
            if (c.get("eval") or {}).get(set_name, {}).get("psnr") is not None
        ]
        label = report.group_label(report.group_of(r))
        if len(pts) >= 2:
            groups[label][(r["family"], r["budget"])].append(dict(pts))
        fit = [(c["step"], c["train_psnr"]) for c in r.get("curve") or [] if c.get("train_psnr")]
        if len(fit) >= 2:
            train[label][(r["family"], r["budget"])].append(dict(fit))
    if not groups:
        return []
    fig, axes = _panels(len(groups))
    for ax, (group, lines) in zip(axes, sorted(groups.items()), strict=False):
        budgets = sorted({b for _, b in lines})
        for (fam, budget), curves in sorted(lines.items()):
            steps = sorted(set.intersection(*(set(c) for c in curves)))
            ax.plot(
                steps,
                [np.mean([c[t] for c in curves]) for t in steps],
                color=COLORS.get(fam),
                marker=MARKERS.get(fam, "o"),
                markersize=3,
                alpha=0.35 + 0.65 * (budgets.index(budget) + 1) / len(budgets),
                label=f"{fam} {report._g(budget)} ({len(curves)} seeds)",
            )
        for (fam, budget), curves in sorted(train[group].items()):
            if budget not in budgets:
                continue
            steps = sorted(set.intersection(*(set(c) for c in curves)))
            ax.plot(
                steps,
                [np.mean([c[t] for c in curves]) for t in steps],
                color=COLORS.get(fam),
                linestyle=":",
                linewidth=1,
                alpha=0.35 + 0.65 * (budgets.index(budget) + 1) / len(budgets),
            )
        start = (1 - stats.TAIL_FRACTION) * max(t for c in lines.values() for d in c for t in d)
        right = ax.get_xlim()[1]
        ax.axvspan(start, right, color="0.9", zorder=0, label="tail (convergence rule)")
        ax.set_xlim(right=right)
        ax.set_xlabel("training step")
        ax.set_ylabel(
            f"PSNR (dB), seed mean: {report.set_label(set_name)} (solid), training subset (dotted)"
        )
        ax.set_title(group, fontsize=8)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    return _save(fig, out_dir, "convergence")


def _read_metrics(path: epath.Path) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            out.append(row)
    return out


LOSS_KEYS = ("train_loss", "loss", "train/loss")


def training_curves(records: Sequence[dict], out_dir: epath.Path) -> list[str]:
    """Training loss against step for every point with a ``metrics.jsonl`` in its workdir."""
    groups = defaultdict(list)
    for r in records:
        rows = _read_metrics(epath.Path(r["workdir"]) / "metrics.jsonl") if r.get("workdir") else []
        curve = [
            (row["step"], row[k]) for row in rows for k in LOSS_KEYS if k in row and "step" in row
        ]
        if curve:
            groups[report.group_label(report.group_of(r))].append((r, curve))
    if not groups:
        return []
    fig, axes = _panels(len(groups))
    styles = ("-", "--", ":", "-.")
    for ax, (group, curves) in zip(axes, groups.items(), strict=False):
        seeds = sorted({r["seed"] for r, _ in curves})
        for r, curve in sorted(curves, key=lambda rc: (rc[0]["family"], rc[0]["budget"])):
            steps, loss = zip(*sorted(curve), strict=True)
            ax.plot(
                steps,
                loss,
                color=COLORS.get(r["family"]),
                linestyle=styles[seeds.index(r["seed"]) % len(styles)],
                alpha=0.4 + 0.6 * (r["budget"] == max(x["budget"] for x, _ in curves)),
                linewidth=1,
                label=f"{r['family']} b{r['budget']:g} s{r['seed']}",
            )
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("training loss (MSE, [0, 1] pixels)")
        ax.set_title(group, fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=6, ncol=2)
    return _save(fig, out_dir, "training_curves")


def _crop_box(y_HW: np.ndarray, size: int) -> tuple[int, int]:
    """Top-left corner of the ``size`` square with the most gradient energy (texture to see)."""
    gy, gx = np.gradient(y_HW.astype(np.float64))
    energy = np.cumsum(np.cumsum(np.pad(gy**2 + gx**2, ((1, 0), (1, 0))), 0), 1)
    h, w = y_HW.shape
    best, corner = -1.0, (0, 0)
    step = max(1, size // 4)
    for i in range(0, h - size + 1, step):
        for j in range(0, w - size + 1, step):
            e = (
                energy[i + size, j + size]
                - energy[i, j + size]
                - energy[i + size, j]
                + energy[i, j]
            )
            if e > best:
                best, corner = e, (i, j)
    return corner


def sample_grid(
    records: Sequence[dict],
    source: data.Source,
    restore_fn: Callable[[str], tuple],
    out_dir: epath.Path,
    scale: int,
) -> list[str]:
    """LR, bicubic, each family's output and HR on ``source``'s first image, with a zoomed crop.

    One network per family: the first group's largest budget, lowest seed.
    """
    if not records:
        return []
    groups = {report.group_of(r) for r in records}
    group = sorted(groups, key=lambda g: (g[-1] not in (None, "grid"), str(g)))[0]
    recs = [r for r in records if report.group_of(r) == group]
    budget = max(r["budget"] for r in recs)
    chosen = {}
    for r in sorted(recs, key=lambda r: r["seed"]):
        if r["budget"] == budget and r["family"] not in chosen:
            chosen[r["family"]] = r
    hr = images.mod_crop(source.hr[0], scale)
    grey = True
    panels = []
    hr_y = np.asarray(evaluate._luma(hr))[..., 0]
    lr_y = np.asarray(evaluate.make_lr(hr, scale, "y", True))  # (h, w, 1) float in [0, 255]
    panels.append(("LR (nearest)", np.kron(lr_y[..., 0], np.ones((scale, scale))), None))
    up = np.asarray(bicubic.upscale(lr_y[None] / 255.0, scale))[0, ..., 0] * 255
    panels.append(("bicubic", up, None))
    for family in sorted(chosen, key=report._family_key):
        r = chosen[family]
        model, _ = restore_fn(r["workdir"])
        if model.config.channels != 1:
            grey = False
            break
        with jax.default_matmul_precision("highest"):
            sr = np.asarray(model(lr_y[None] / 255.0))[0, ..., 0] * 255
        panels.append((f"{family} (b {budget:g}, s {r['seed']})", sr, None))
    if not grey:  # RGB models: the grid shows Y of the RGB pipeline's input only
        panels = panels[:2]
    panels.append(("HR", hr_y.astype(np.float64), None))
    border = scale
    ref = metrics.shave(hr_y.astype(np.float32), border)
    titled = []
    for title, img, _ in panels:
        q = np.clip(np.round(img), 0, 255)
        if title != "HR" and not title.startswith("LR"):
            p = float(metrics.psnr(ref, metrics.shave(q.astype(np.float32), border)))
            title = f"{title}\n{p:.2f} dB"
        titled.append((title, q))
    size = max(16, min(hr_y.shape) // 5)
    i, j = _crop_box(hr_y, size)
    n = len(titled)
    aspect = hr_y.shape[0] / hr_y.shape[1]
    fig, axes = plt.subplots(
        2,
        n,
        figsize=(2.6 * n, 2.6 * aspect + 3.2),
        squeeze=False,
        gridspec_kw={"height_ratios": [aspect, 1.0]},
    )
    for k, (title, img) in enumerate(titled):
        axes[0, k].imshow(img, cmap="gray", vmin=0, vmax=255)
        axes[0, k].add_patch(
            plt.Rectangle((j, i), size, size, fill=False, edgecolor="yellow", linewidth=1)
        )
        axes[0, k].set_title(title, fontsize=8)
        axes[1, k].imshow(
            img[i : i + size, j : j + size], cmap="gray", vmin=0, vmax=255, interpolation="nearest"
        )
        for ax in axes[:, k]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(f"{source.names[0].split('/')[-1]} (Y), x{scale}; bottom: zoomed crop", fontsize=9)
    return _save(fig, out_dir, "samples")
