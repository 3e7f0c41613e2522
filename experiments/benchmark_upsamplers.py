"""Times one upsampling layer computed five ways (docs/equivalence.md), side by side in one run.

The same function ``y = conv_transpose(x, kernel, strides=r, padding="SAME") + bias`` with a
kernel of ``(k*r)**2`` taps, as ``flax.nnx.ConvTranspose`` (and ``lax.conv_transpose``), as
``espcn_jax.layers.FastConvTranspose`` (LR conv + pixel shuffle, parameters copied across) and as
an explicit zero-insertion conv; plus *resize-convolution* (nearest-neighbour upsampling, then a
stride-1 HR conv with the same kernel shape: a different function with the same output shape and
receptive field) and the fast path's two pieces alone (LR conv, pixel shuffle). Every variant is
jitted, checked against ``nnx.ConvTranspose`` before it is timed, and timed with
``espcn_jax.timing.time_fn``.

    python experiments/benchmark_upsamplers.py --json
    python experiments/benchmark_upsamplers.py --scales=3 --lr_size=180x320 --rounds=1
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
from flax import nnx
from jax import lax

from espcn_jax import cli, subpixel, xla_cpu
from espcn_jax.flops import parse_size
from espcn_jax.layers import FastConvTranspose
from espcn_jax.ops import pixel_shuffle
from espcn_jax.timing import device_info, time_fn, tune_malloc

SCALES = cli.define_scales_flag(["2", "3", "4"])
LR_SIZE = cli.define_lr_size_flag("360x640", "LR input size HxW (640x360 landscape by default).")
flags.DEFINE_integer("batch", 1, "Images per call (N).", lower_bound=1)
flags.DEFINE_integer("in_channels", 32, "C_in of the upsampling layer.", lower_bound=1)
flags.DEFINE_integer("out_channels", 1, "C_out of the upsampling layer.", lower_bound=1)
flags.DEFINE_integer("k", 3, "LR kernel size: the HR kernel is (k*r) x (k*r).", lower_bound=1)
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Activation and parameter dtype.")
flags.DEFINE_integer("repeats", 3, "Timed calls per variant and round, at least.", lower_bound=1)
flags.DEFINE_integer(
    "min_time_ms", 200, "Per variant and round, call until this much time is filled.", lower_bound=0
)
flags.DEFINE_integer(
    "rounds", 3, "Rounds over all variants (interleaved against load drift).", lower_bound=1
)
flags.DEFINE_integer(
    "warmup", 2, "Untimed calls per variant before round 1 (1 later).", lower_bound=1
)
SEED = cli.define_seed_flag(help="Seed of the input and the parameters.")
JSON = cli.define_json_flag()
TUNE_MALLOC = cli.define_tune_malloc_flag()
FLAGS = flags.FLAGS

SHUFFLE_SHARE_TARGET = 0.10  # the shuffle may cost at most this fraction of the LR conv before it
SPEEDUP_FACTOR = 0.7  # FastConvTranspose must be >= 0.7 * r**2 times faster than ConvTranspose
TOLERANCE = {"float32": 1e-4, "bfloat16": 3e-2}  # max |err| / (1 + max |reference|)
DN = ("NHWC", "HWIO", "NHWC")
NOTES = {
    "conv_transpose": "flax.nnx.ConvTranspose: an lhs-dilated conv in HLO, which XLA:CPU runs as a "
    "GEMM (LR pixels x C_in) @ (C_in x K^2 C_out) into a conv matrix, then a single-threaded "
    "col2im scatter-add: no inserted zero is multiplied (see conv_matrix_mb)",
    "lax_conv_transpose": "jax.lax.conv_transpose with nnx's kernel and padding, plus the bias",
    "fast_conv_transpose": "espcn_jax.layers.FastConvTranspose, parameters copied from nnx",
    "zero_insertion": "espcn_jax.subpixel.zero_insertion_conv: zeros materialised, stride-1 conv",
    "resize_conv": "nearest jax.image.resize to HR, then a stride-1 SAME HR conv with the same "
    "(k*r)^2 kernel: a different function (not compared with ConvTranspose); its max_abs_err is "
    "against np.repeat upsampling + the same conv",
    "lr_conv": "the LR conv inside the fast path alone (xla_cpu.lr_correlation, kernel from "
    "subpixel.zero_insertion_to_lr)",
    "pixel_shuffle": "espcn_jax.ops.pixel_shuffle alone on the LR conv's output",
    "shuffle_share": "pixel_shuffle_ms / lr_conv_ms (target <= 0.10)",
    "speedup": "conv_transpose_ms / fast_conv_transpose_ms (target >= 0.7 r^2)",
    "speedup_paired": "median over rounds of the same round's conv_transpose / fast ratio",
    "speedup_best": "ratio of the fastest calls (best_ms): the least load-sensitive estimate",
    "fast_budget_ms": "conv_transpose_ms / speedup_target: the most FastConvTranspose may take; "
    "when lr_conv_ms alone exceeds it, no shuffle can meet the target",
    "round_medians_ms": "each variant's median per round (calls filling --min_time_ms, at least "
    "--repeats); *_ms is the median of these",
    "minor_faults_per_call": "page faults per timed call (median over rounds): fresh buffers "
    "cost ~2 us a 4 KiB page here; config.malloc says whether tune_malloc recycled them",
    "load_average_1min": "host load before/after timing this r: above cpu_count means contention",
    "flops": "analytic, 2 x multiply-adds as executed: conv_transpose's GEMM on XLA:CPU and the LR "
    "conv do the useful ones (each weight once per LR input pixel); zero_insertion and resize_conv "
    "multiply every tap on the HR grid (r^2 x useful); 'xla' from cost_analysis()",
    "conv_matrix_mb": "size of the conv matrix XLA:CPU's transposed conv allocates per call (N h w "
    "K^2 C_out floats): with glibc's defaults its pages are fresh on every call",
}


@dataclasses.dataclass(frozen=True)
class Config:
    scales: tuple[int, ...]
    batch: int
    lr_height: int
    lr_width: int
    in_channels: int
    out_channels: int
    k: int
    dtype: str
    repeats: int
    min_time_ms: int
    rounds: int
    warmup: int
    seed: int


def config_from_flags() -> Config:
    h, w = parse_size(LR_SIZE.value)
    return Config(
        scales=cli.parse_int_list(SCALES.value, "scales", cli.MIN_SCALE),
        batch=FLAGS.batch,
        lr_height=h,
        lr_width=w,
        in_channels=FLAGS.in_channels,
        out_channels=FLAGS.out_channels,
        k=FLAGS.k,
        dtype=FLAGS.dtype,
        repeats=FLAGS.repeats,
        min_time_ms=FLAGS.min_time_ms,
        rounds=FLAGS.rounds,
        warmup=FLAGS.warmup,
        seed=SEED.value,
    )


def jit_module(module: nnx.Module):
    """``(state, x) -> module(x)`` jitted once: split outside, merge inside (no nnx.jit)."""
    graphdef, state = nnx.split(module)
    fn = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x))
    return fn, state


def xla_flops(fn, *args) -> float | None:
    cost = fn.lower(*args).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    return float(cost["flops"]) if cost and "flops" in cost else None


def max_abs_err(a, b) -> float:
    return float(jnp.max(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32))))


def build(cfg: Config, r: int):
    """Jitted variants with their arguments, sharing one input and one set of parameters."""
    dtype = jnp.dtype(cfg.dtype)
    size = cfg.k * r
    key_x, key_b = jax.random.split(jax.random.key(cfg.seed + r))
    x = jax.random.normal(key_x, (cfg.batch, cfg.lr_height, cfg.lr_width, cfg.in_channels), dtype)
    layer_args = dict(
        in_features=cfg.in_channels,
        out_features=cfg.out_channels,
        kernel_size=(size, size),
        strides=(r, r),
        padding="SAME",
        dtype=dtype,
        param_dtype=dtype,
    )
    ct = nnx.ConvTranspose(**layer_args, rngs=nnx.Rngs(cfg.seed))
    ct.bias[...] = 0.1 * jax.random.normal(key_b, ct.bias.shape, dtype)  # a bias that shows
    fast = FastConvTranspose(**layer_args, rngs=nnx.Rngs(cfg.seed + 1))
    nnx.update(fast, nnx.state(ct, nnx.Param))  # same names and shapes: weights copy across
    kernel, bias = ct.kernel[...], ct.bias[...]

    ct_fn, ct_state = jit_module(ct)
    fast_fn, fast_state = jit_module(fast)
    hr_plan, _ = subpixel.plan((size, size), r, "SAME")
    kernel_lr = subpixel.zero_insertion_to_lr(kernel, r, "SAME", "tf")

    @jax.jit
    def lax_ct(x, kernel, bias):
        return lax.conv_transpose(x, kernel, (r, r), "SAME", dimension_numbers=DN) + bias

    @jax.jit
    def zero_insertion(x, kernel, bias):
        return subpixel.zero_insertion_conv(x, kernel, (r, r), "SAME") + bias

    def hr_conv(x_hr, kernel, bias):
        return lax.conv_general_dilated(x_hr, kernel, (1, 1), "SAME", dimension_numbers=DN) + bias

    @jax.jit
    def resize_conv(x, kernel, bias):
        n, h, w, c = x.shape
        return hr_conv(jax.image.resize(x, (n, h * r, w * r, c), "nearest"), kernel, bias)

    @jax.jit
    def lr_conv(x, kernel_lr):
        return xla_cpu.lr_correlation(x, kernel_lr, (hr_plan.lr_padding,) * 2)

    shuffle = jax.jit(lambda z: pixel_shuffle(z, r, "tf"))
    z = lr_conv(x, kernel_lr)
    variants = {
        "conv_transpose": (ct_fn, (ct_state, x)),
        "lax_conv_transpose": (lax_ct, (x, kernel, bias)),
        "fast_conv_transpose": (fast_fn, (fast_state, x)),
        "zero_insertion": (zero_insertion, (x, kernel, bias)),
        "resize_conv": (resize_conv, (x, kernel, bias)),
        "lr_conv": (lr_conv, (x, kernel_lr)),
        "pixel_shuffle": (shuffle, (z,)),
    }
    reference = ct_fn(ct_state, x)
    hr_out = reference.shape[1:3]
    errors = {
        name: max_abs_err(variants[name][0](*variants[name][1]), reference)
        for name in ("lax_conv_transpose", "fast_conv_transpose", "zero_insertion")
    }
    # LR conv then shuffle, cropped to the transposed conv's size (a no-op for SAME) + bias.
    lr_shuffled = shuffle(z)[:, : hr_out[0], : hr_out[1]] + bias
    errors["lr_conv_shuffle"] = max_abs_err(lr_shuffled, reference)
    repeated = np.repeat(np.repeat(np.asarray(x), r, axis=1), r, axis=2)
    errors["resize_conv_vs_repeat_conv"] = max_abs_err(
        resize_conv(x, kernel, bias), jax.jit(hr_conv)(jnp.asarray(repeated), kernel, bias)
    )
    scale = 1.0 + float(jnp.max(jnp.abs(reference.astype(jnp.float32))))
    bad = {k: v for k, v in errors.items() if not v <= TOLERANCE[cfg.dtype] * scale}
    if bad:
        sys.exit(f"error: r={r}: variants disagree with nnx.ConvTranspose beyond tolerance: {bad}")
    return variants, errors, hr_plan.taps


def conv_matrix_bytes(cfg: Config, r: int) -> int:
    """The buffer XLA:CPU's transposed conv fills per call: K^2 C_out values per LR pixel."""
    pixels = cfg.batch * cfg.lr_height * cfg.lr_width
    return pixels * (cfg.k * r) ** 2 * cfg.out_channels * jnp.dtype(cfg.dtype).itemsize


def analytic_flops(cfg: Config, r: int, taps: int) -> dict[str, int]:
    """2 x multiply-adds per call as each variant executes them on XLA:CPU (no bias adds, no
    shuffles, no col2im adds)."""
    n, h, w = cfg.batch, cfg.lr_height, cfg.lr_width
    cc = cfg.in_channels * cfg.out_channels
    size = cfg.k * r
    useful = 2 * n * h * w * size * size * cc
    hr_conv = 2 * n * (h * r) * (w * r) * size * size * cc  # HR grid, every tap
    lr_conv = 2 * n * h * w * taps * taps * cc * r * r
    return {
        "useful": useful,
        "conv_transpose": useful,  # the GEMM of XLA:CPU's transposed conv
        "zero_insertion": hr_conv,
        "fast_conv_transpose": lr_conv,
        "resize_conv": hr_conv,
        "lr_conv": lr_conv,
    }


def time_rounds(variants: dict, cfg: Config) -> dict[str, dict]:
    """Per variant: its median ms in each round (``rounds``), its fastest call (``best``) and its
    page faults per call in each round (``faults``). Rounds interleave the variants so that load
    from other processes drifts over all of them alike."""
    out = {name: {"rounds": [], "best": float("inf"), "faults": []} for name in variants}
    for i in range(cfg.rounds):
        for name, (fn, args) in variants.items():
            stats = time_fn(
                fn,
                *args,
                warmup=cfg.warmup if i == 0 else 1,
                repeats=cfg.repeats,
                min_time_s=cfg.min_time_ms / 1e3,
            )
            out[name]["rounds"].append(stats["median_ms"])
            out[name]["best"] = min(out[name]["best"], stats["min_ms"])
            out[name]["faults"].append(stats["minor_faults_per_call"])
    return out


def bench_scale(cfg: Config, r: int) -> dict:
    variants, errors, taps = build(cfg, r)
    load_before = os.getloadavg()[0]
    timed = time_rounds(variants, cfg)
    rounds_ms = {name: t["rounds"] for name, t in timed.items()}
    best_ms = {name: t["best"] for name, t in timed.items()}
    ms = {name: statistics.median(values) for name, values in rounds_ms.items()}
    speedup = ms["conv_transpose"] / ms["fast_conv_transpose"]
    paired = [
        slow / fast
        for slow, fast in zip(
            rounds_ms["conv_transpose"], rounds_ms["fast_conv_transpose"], strict=True
        )
    ]
    shuffle_share = ms["pixel_shuffle"] / ms["lr_conv"]
    flops = analytic_flops(cfg, r, taps)
    flops["xla"] = {name: xla_flops(fn, *args) for name, (fn, args) in variants.items()}
    return {
        "r": r,
        "kernel_size": cfg.k * r,
        "lr_taps": taps,
        "conv_matrix_mb": conv_matrix_bytes(cfg, r) / 1e6,
        **{f"{name}_ms": value for name, value in ms.items()},
        "shuffle_share": shuffle_share,
        "shuffle_meets_target": shuffle_share <= SHUFFLE_SHARE_TARGET,
        "fast_overhead_share": (ms["fast_conv_transpose"] - ms["lr_conv"]) / ms["lr_conv"],
        "speedup": speedup,
        "speedup_paired": statistics.median(paired),
        "speedup_best": best_ms["conv_transpose"] / best_ms["fast_conv_transpose"],
        "speedup_target": SPEEDUP_FACTOR * r * r,
        "fast_budget_ms": ms["conv_transpose"] / (SPEEDUP_FACTOR * r * r),
        "meets_target": speedup >= SPEEDUP_FACTOR * r * r,
        "max_abs_err": errors,
        "flops": flops,
        "round_medians_ms": rounds_ms,
        "best_ms": best_ms,
        "minor_faults_per_call": {
            name: None if None in t["faults"] else statistics.median(t["faults"])
            for name, t in timed.items()
        },
        "load_average_1min": [load_before, os.getloadavg()[0]],
    }


def print_table(report: dict) -> None:
    cfg = report["config"]
    print(
        f"device {report['device']['device_kind']} ({report['device']['platform']}), "
        f"N={cfg['batch']} LR {cfg['lr_height']}x{cfg['lr_width']}, "
        f"{cfg['in_channels']}->{cfg['out_channels']} channels, k={cfg['k']}, {cfg['dtype']}, "
        f"median over {cfg['rounds']} rounds of medians of >= {cfg['repeats']} calls "
        f"filling {cfg['min_time_ms']} ms (ms); malloc tuned: {cfg['malloc'] is not None}"
    )
    cols = [
        ("conv_transpose_ms", "convT"),
        ("lax_conv_transpose_ms", "lax.convT"),
        ("fast_conv_transpose_ms", "fast"),
        ("zero_insertion_ms", "zero-ins"),
        ("resize_conv_ms", "resize+conv"),
        ("lr_conv_ms", "LR conv"),
        ("pixel_shuffle_ms", "shuffle"),
    ]
    header = "".join(f"{title:>12}" for _, title in cols)
    print(f" r  K {header}  speedup (target)  shuffle%  load")
    for row in report["results"]:
        cells = "".join(f"{row[key]:12.2f}" for key, _ in cols)
        mark = "ok" if row["meets_target"] else "MISS"
        print(
            f"{row['r']:2d} {row['kernel_size']:2d} {cells}  {row['speedup']:6.2f} "
            f"({row['speedup_target']:.1f}) {mark:4s}  {100 * row['shuffle_share']:6.1f}  "
            f"{max(row['load_average_1min']):4.1f}"
        )
    print("resize+conv is a different function of the same shape (not checked against convT).")


def main(argv: list[str]) -> None:
    cli.check_no_positional(argv)
    cfg = config_from_flags()
    malloc = tune_malloc() if TUNE_MALLOC.value else None  # first, before JAX allocates
    report = {
        "device": device_info(),
        "config": dataclasses.asdict(cfg) | {"malloc": malloc},
        "notes": NOTES,
        "results": [bench_scale(cfg, r) for r in cfg.scales],
    }
    cli.emit(report, print_table)


if __name__ == "__main__":
    cli.run(main)
