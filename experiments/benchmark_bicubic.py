"""Times ``espcn_jax.bicubic`` against its previous implementation and ``jax.image.resize``.

Side by side in one run, in interleaved rounds (so that load from other processes drifts over all
variants alike), for each scale ``r``:

- ``upscale``: an LR image of ``(H/r, W/r)`` to the HR size (1080p, 1 channel by default);
- ``downscale``: the HR image to ``(H/r, W/r)``;
- ``train_batch``: ``upscale`` of a training batch (16 LR patches of 32x32 by default), the
  residual's cost in an ESPCN train step.

Variants: ``new`` (``bicubic.upscale`` / ``bicubic.downscale``: shifted slices times scalar taps),
``before`` (the depthwise ``lax.conv`` at ``Precision.HIGHEST`` that the package used before, kept
here as a private copy) and ``resize`` (``jax.image.resize(..., "bicubic")``, antialiased when
downscaling: dense resize matrices). Each is checked before timing: ``new`` against ``before``
everywhere, and against ``resize`` away from the borders (``resize`` renormalises the kernel there).

    python experiments/benchmark_bicubic.py --json
    python experiments/benchmark_bicubic.py --scales=3 --rounds=1
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import sys

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from jax import lax

from espcn_jax import bicubic, cli
from espcn_jax.flops import parse_size
from espcn_jax.ops import convert_order, pixel_shuffle
from espcn_jax.timing import device_info, time_fn, tune_malloc

SCALES = cli.define_scales_flag(["2", "3", "4"])
flags.DEFINE_string("hr_size", "1080x1920", "HR size HxW (rounded down to multiples of r).")
CHANNELS = cli.define_channels_flag()
flags.DEFINE_string("train_patch", "32x32", "LR patch HxW of the training-batch case.")
flags.DEFINE_integer("train_batch", 16, "Patches in the training-batch case.", lower_bound=1)
flags.DEFINE_integer("repeats", 3, "Timed calls per variant and round, at least.", lower_bound=1)
flags.DEFINE_integer(
    "min_time_ms", 200, "Per variant and round, call until this much time is filled.", lower_bound=0
)
flags.DEFINE_integer(
    "rounds", 3, "Rounds over all variants (interleaved against load drift).", lower_bound=1
)
flags.DEFINE_integer("warmup", 2, "Untimed calls per variant before round 1.", lower_bound=1)
SEED = cli.define_seed_flag(help="Seed of the images.")
JSON = cli.define_json_flag()
TUNE_MALLOC = cli.define_tune_malloc_flag()
FLAGS = flags.FLAGS

SPEEDUP_TARGET = 5.0  # new must be >= 5x faster than jax.image.resize (upscale and downscale)
TOLERANCE = 1e-5  # max |new - before| on [0, 1] images (float32 summation order, FMA)
CASES = ("upscale", "downscale", "train_batch")
VARIANTS = ("new", "before", "resize")
NOTES = {
    "new": "espcn_jax.bicubic: per 1-D pass, shifted static slices times scalar taps (one fused "
    "XLA loop); borders by concatenated edge rows",
    "before": "the previous espcn_jax.bicubic: jnp.pad(mode='edge') + depthwise lax.conv at "
    "Precision.HIGHEST per pass (upscale: 5-tap phase conv + pixel shuffle)",
    "resize": "jax.image.resize(..., 'bicubic'), antialias=True when downscaling (dense matrices; "
    "renormalised kernel at the borders)",
    "speedup_vs_resize": "resize_ms / new_ms (target >= 5 for upscale and downscale)",
    "speedup_vs_before": "before_ms / new_ms",
    "round_medians_ms": "each variant's median per round; *_ms is the median of these",
    "max_abs_err": "new vs before (whole image) and vs resize (interior, 2r HR / 2 LR pixels "
    "cropped), on uniform [0, 1) images",
    "flops": "analytic FLOPs of new (bicubic.upscale_flops / downscale_flops, equal to XLA's) and "
    "XLA's cost_analysis count of each variant",
}


# --- the previous implementation (depthwise lax.conv), kept as the "before" variant -------------
def _depthwise(x_NHWC, kernel_HWIO: np.ndarray, strides):
    return lax.conv_general_dilated(
        x_NHWC,
        jnp.asarray(kernel_HWIO, x_NHWC.dtype),
        window_strides=strides,
        padding="VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=x_NHWC.shape[-1],
        precision=lax.Precision.HIGHEST,
    )


def _edge_pad(x, axis: int, lo: int, hi: int):
    widths = [(0, 0)] * x.ndim
    widths[axis] = (lo, hi)
    return jnp.pad(x, widths, mode="edge")


def before_upscale(x_NHWC, r: int):
    c = x_NHWC.shape[-1]
    taps = bicubic.upscale_taps(r)  # (a, k)
    t = bicubic.UPSCALE_TAPS
    p = t // 2
    rows = np.tile(taps.T.reshape(t, 1, 1, r), (1, 1, 1, c))
    x = _depthwise(_edge_pad(x_NHWC, 1, p, p), rows, (1, 1))
    cols = np.tile(taps.T.reshape(1, t, 1, r), (1, 1, 1, c * r))
    x = _depthwise(_edge_pad(x, 2, p, p), cols, (1, 1))
    return pixel_shuffle(convert_order(x, r, "torch", "tf"), r, "tf")


def before_downscale(x_NHWC, r: int):
    c = x_NHWC.shape[-1]
    taps = bicubic.downscale_taps(r)
    lo = 3 * r // 2
    hi = len(taps) - r - lo
    col = np.tile(taps.reshape(-1, 1, 1, 1), (1, 1, 1, c))
    x = _depthwise(_edge_pad(x_NHWC, 1, lo, hi), col, (r, 1))
    return _depthwise(_edge_pad(x, 2, lo, hi), col.reshape(1, -1, 1, c), (1, r))


# --- the benchmark -------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Config:
    scales: tuple[int, ...]
    hr_height: int
    hr_width: int
    channels: int
    train_batch: int
    train_patch: tuple[int, int]
    repeats: int
    min_time_ms: int
    rounds: int
    warmup: int
    seed: int


def config_from_flags() -> Config:
    hgt, wid = parse_size(FLAGS.hr_size, "hr_size")
    scales = cli.parse_int_list(SCALES.value, "scales", cli.MIN_SCALE)
    too_big = [r for r in scales if r > min(hgt, wid)]
    if too_big:
        raise ValueError(f"scales must not exceed the hr_size {hgt}x{wid}, got {too_big}")
    return Config(
        scales=scales,
        hr_height=hgt,
        hr_width=wid,
        channels=CHANNELS.value,
        train_batch=FLAGS.train_batch,
        train_patch=parse_size(FLAGS.train_patch, "train_patch"),
        repeats=FLAGS.repeats,
        min_time_ms=FLAGS.min_time_ms,
        rounds=FLAGS.rounds,
        warmup=FLAGS.warmup,
        seed=SEED.value,
    )


def xla_flops(fn, *args) -> float:
    cost = fn.lower(*args).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    return float(cost.get("flops", 0.0)) if cost else 0.0


def build(cfg: Config, r: int) -> dict[str, dict]:
    """Per case: the three jitted variants, their input, the analytic FLOPs of ``new`` and the
    agreement checks (exits if ``new`` disagrees with ``before``)."""
    h, w, c = cfg.hr_height // r, cfg.hr_width // r, cfg.channels
    ph, pw = cfg.train_patch
    rng = np.random.default_rng(cfg.seed + r)
    lr = jnp.asarray(rng.uniform(0, 1, (1, h, w, c)).astype(np.float32))
    hr = jnp.asarray(rng.uniform(0, 1, (1, h * r, w * r, c)).astype(np.float32))
    batch = jnp.asarray(rng.uniform(0, 1, (cfg.train_batch, ph, pw, c)).astype(np.float32))

    def up_variants(shape):
        n, hh, ww, cc = shape
        return {
            "new": jax.jit(lambda x: bicubic.upscale(x, r)),
            "before": jax.jit(lambda x: before_upscale(x, r)),
            "resize": jax.jit(lambda x: jax.image.resize(x, (n, hh * r, ww * r, cc), "bicubic")),
        }

    down = {
        "new": jax.jit(lambda x: bicubic.downscale(x, r)),
        "before": jax.jit(lambda x: before_downscale(x, r)),
        "resize": jax.jit(lambda x: jax.image.resize(x, (1, h, w, c), "bicubic", antialias=True)),
    }
    cases = {
        "upscale": (up_variants(lr.shape), lr, bicubic.upscale_flops(h, w, c, r), 2 * r),
        "downscale": (down, hr, bicubic.downscale_flops(h * r, w * r, c, r), 2),
        "train_batch": (
            up_variants(batch.shape),
            batch,
            cfg.train_batch * bicubic.upscale_flops(ph, pw, c, r),
            2 * r,
        ),
    }
    out = {}
    for name, (fns, x, flops, crop) in cases.items():
        y = {v: np.asarray(fn(x)) for v, fn in fns.items()}
        interior = (slice(None), slice(crop, -crop), slice(crop, -crop))
        errors = {
            "before": float(np.max(np.abs(y["new"] - y["before"]))),
            "resize_interior": float(np.max(np.abs(y["new"][interior] - y["resize"][interior])))
            if min(y["new"].shape[1:3]) > 2 * crop
            else None,
        }
        if not errors["before"] <= TOLERANCE:
            sys.exit(f"error: r={r} {name}: new and before differ by {errors['before']}")
        out[name] = {
            "fns": fns,
            "x": x,
            "shape_in": list(x.shape),
            "shape_out": list(y["new"].shape),
            "errors": errors,
            "flops": {"new": flops} | {f"xla_{v}": xla_flops(fn, x) for v, fn in fns.items()},
        }
    return out


def time_rounds(cases: dict[str, dict], cfg: Config) -> dict[tuple[str, str], dict]:
    """Round-robin over every (case, variant): per round its median, and its fastest call."""
    timed = {(c, v): {"rounds": [], "best": float("inf")} for c in cases for v in VARIANTS}
    for i in range(cfg.rounds):
        for (case, variant), acc in timed.items():
            stats = time_fn(
                cases[case]["fns"][variant],
                cases[case]["x"],
                warmup=cfg.warmup if i == 0 else 1,
                repeats=cfg.repeats,
                min_time_s=cfg.min_time_ms / 1e3,
            )
            acc["rounds"].append(stats["median_ms"])
            acc["best"] = min(acc["best"], stats["min_ms"])
    return timed


def bench_scale(cfg: Config, r: int) -> dict:
    cases = build(cfg, r)
    load_before = os.getloadavg()[0]
    timed = time_rounds(cases, cfg)
    row: dict = {"r": r}
    for case, info in cases.items():
        ms = {v: statistics.median(timed[case, v]["rounds"]) for v in VARIANTS}
        best = {v: timed[case, v]["best"] for v in VARIANTS}
        paired = [
            res / new
            for res, new in zip(
                timed[case, "resize"]["rounds"], timed[case, "new"]["rounds"], strict=True
            )
        ]
        entry = {
            "shape_in": info["shape_in"],
            "shape_out": info["shape_out"],
            **{f"{v}_ms": ms[v] for v in VARIANTS},
            "speedup_vs_resize": ms["resize"] / ms["new"],
            "speedup_vs_before": ms["before"] / ms["new"],
            "speedup_vs_resize_paired": statistics.median(paired),
            "speedup_vs_resize_best": best["resize"] / best["new"],
            "round_medians_ms": {v: timed[case, v]["rounds"] for v in VARIANTS},
            "best_ms": best,
            "max_abs_err": info["errors"],
            "flops": info["flops"],
        }
        if case != "train_batch":
            entry["meets_target"] = entry["speedup_vs_resize"] >= SPEEDUP_TARGET
        row[case] = entry
    row["load_average_1min"] = [load_before, os.getloadavg()[0]]
    return row


def print_table(report: dict) -> None:
    cfg = report["config"]
    print(
        f"device {report['device']['device_kind']}: HR {cfg['hr_height']}x{cfg['hr_width']}x"
        f"{cfg['channels']}, training batch {cfg['train_batch']}x{cfg['train_patch']}, median over "
        f"{cfg['rounds']} rounds (ms)"
    )
    print(" r case                new    before    resize  x resize  x before")
    for row in report["results"]:
        for case in CASES:
            e = row[case]
            print(
                f"{row['r']:2d} {case:13s} {e['new_ms']:9.3f} {e['before_ms']:9.3f} "
                f"{e['resize_ms']:9.3f} {e['speedup_vs_resize']:9.1f} {e['speedup_vs_before']:9.1f}"
            )


def main(argv: list[str]) -> None:
    cli.check_no_positional(argv)
    cfg = config_from_flags()
    malloc = tune_malloc() if TUNE_MALLOC.value else None  # first, before JAX allocates
    report = {
        "device": device_info(),
        "config": dataclasses.asdict(cfg) | {"malloc": malloc, "speedup_target": SPEEDUP_TARGET},
        "notes": NOTES,
        "results": [bench_scale(cfg, r) for r in cfg.scales],
    }
    cli.emit(report, print_table)


if __name__ == "__main__":
    cli.run(main)
