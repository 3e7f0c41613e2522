"""The study's figures (matplotlib, Agg; each written as PNG and SVG).

- PSNR against GFLOPs, latency and parameters: one panel per group, per family the seed mean with
  a ± std bar over budgets, and the Pareto front over every network of the panel;
- training curves of every point (from its ``metrics.jsonl``);
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

from espcn_jax import bicubic, data, evaluate, images, metrics  # noqa: E402
from espcn_jax.study import report, stats  # noqa: E402

COLORS = {"lr": "tab:blue", "hr": "tab:red", "deconv": "tab:green", "lr_tied": "tab:purple"}
MARKERS = {"lr": "o", "hr": "s", "deconv": "^", "lr_tied": "v"}
AXES = {
    "gflops": ("gflops", "GFLOPs per image (useful, analytic) at the latency size", True),
    "latency": ("latency_ms", "forward latency (ms) at the latency size, this device", True),
    "params": ("params", "parameters", True),
}


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


def psnr_plot(rows: Sequence[dict], out_dir: epath.Path, axis: str) -> list[str]:
    """PSNR (mean ± std over seeds) against ``axis`` (gflops, latency, params), Pareto front."""
    key, label, log = AXES[axis]
    groups = defaultdict(list)
    for r in rows:
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
                yerr=[0 if not math.isfinite(r["psnr_std"]) else r["psnr_std"] for r in frs],
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
            ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("PSNR (dB), mean ± std over seeds")
        ax.set_title(group, fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, out_dir, f"psnr_vs_{axis}")


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
    group = sorted({report.group_of(r) for r in records}, key=str)[0]
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
