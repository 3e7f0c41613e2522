"""Equal compute is not equal time: matched ``lr``, ``hr`` and ``deconv`` nets side by side.

For each budget (``--metric``, conv multiply-adds by default) the solver picks each family's width
(same depth, scheme, activation), then every net is costed (conv MACs, analytic useful / executed
FLOPs, XLA's count, params, receptive field) and timed at 1080p output (LR 360x640 at x3 by
default) with ``flops.measure_latency``. Achieved GFLOP/s (useful FLOPs / median latency) is
reported against a large float32 matmul's GFLOP/s measured in the same run, so the fractions are
comparable across families on this backend. ``--json`` prints one JSON object, else a table.

    python experiments/benchmark_models.py --json
    python experiments/benchmark_models.py --budgets=22624 --lr_size=90x160 --repeats=3 --json
"""

from __future__ import annotations

import platform

import jax
import jax.numpy as jnp
from absl import flags
from flax import nnx

from espcn_jax import cli, flops, solver
from espcn_jax.models import model_from_config, receptive_field
from espcn_jax.timing import time_fn, tune_malloc

flags.DEFINE_list(
    "budgets", ["5e3", "22624", "5e4"], "Budgets in --metric per --budget_unit (ESPCN: 22624)."
)
flags.DEFINE_enum("metric", solver.DEFAULT_METRIC, list(solver.METRICS), "What a budget counts.")
flags.DEFINE_enum("budget_unit", "lr_pixel", list(solver.BUDGET_UNITS), "What a budget is per.")
flags.DEFINE_list("families", ["lr", "hr", "deconv"], "Families to match.")
flags.DEFINE_integer("depth", 3, "Conv layers of every net.")
flags.DEFINE_enum("scheme", "uniform", list(solver.WIDTH_SCHEMES), "Solver width scheme.")
SCALE = cli.define_scale_flag()
CHANNELS = cli.define_channels_flag()
flags.DEFINE_string("activation", "tanh", "Hidden activation.")
LR_SIZE = cli.define_lr_size_flag(help="LR size HxW of the timed image (1080p output at x3).")
flags.DEFINE_integer("repeats", 5, "Timed calls per net (median reported).")
flags.DEFINE_integer("matmul_size", 2048, "n of the n x n x n float32 matmul reference.")
JSON = cli.define_json_flag()
TUNE_MALLOC = cli.define_tune_malloc_flag()
FLAGS = flags.FLAGS


def _positive_floats(items: list[str], name: str) -> list[float]:
    values = []
    for item in items:
        try:
            value = float(item)
        except ValueError:
            value = -1.0
        if not value > 0:
            raise ValueError(f"{name} must be positive numbers, got {item!r}")
        values.append(value)
    if not values:
        raise ValueError(f"{name} must list at least one number, got ''")
    return values


def matmul_gflops(n: int, repeats: int) -> dict:
    """GFLOP/s of an ``n x n @ n x n`` float32 matmul (``2 n^3`` FLOPs), the backend's roofline."""
    if n < 1:
        raise ValueError(f"matmul_size must be >= 1, got {n}")
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    t = time_fn(jax.jit(jnp.matmul), a, b, repeats=repeats)
    return {
        "n": n,
        "flops": 2 * n**3,
        "ms": t["median_ms"],
        "gflops_per_s": 2 * n**3 / t["median_ms"] / 1e6,
    }


def bench_net(config, lr_size: tuple[int, int], repeats: int, peak: float) -> dict:
    model = model_from_config(config, rngs=nnx.Rngs(0))
    shape = (1, *lr_size, config.channels)
    cost = flops.model_cost(config, lr_size)
    t = flops.measure_latency(model, shape, repeats=repeats)
    gflops = cost.flops / t["median_ms"] / 1e6
    return {
        "widths": list(config.widths),
        "conv_macs": cost.conv_macs,
        "flops_analytic": cost.flops,
        "flops_xla": flops.xla_cost(model, shape)["flops"],
        "flops_xla_model": cost.flops_xla,
        "flops_executed": cost.flops_executed,
        "params": cost.params,
        "receptive_field": receptive_field(config),
        "latency_ms": t["median_ms"],
        "latency_p25_ms": t["p25_ms"],
        "latency_p75_ms": t["p75_ms"],
        "gflops_per_s": gflops,
        "fraction_of_matmul": gflops / peak,
    }


def main(argv: list[str]) -> None:
    cli.check_no_positional(argv)
    malloc = tune_malloc() if TUNE_MALLOC.value else None  # first, before JAX allocates
    lr_size = flops.parse_size(LR_SIZE.value, "lr_size")
    budgets = _positive_floats(FLAGS.budgets, "budgets")
    if FLAGS.repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {FLAGS.repeats}")
    fields = dict(scale=SCALE.value, channels=CHANNELS.value, activation=FLAGS.activation)
    matched = []
    for budget in budgets:  # solve everything first: a bad flag fails before any timing
        per_image = solver.budget_per_image(budget, FLAGS.budget_unit, lr_size, SCALE.value)
        sols = solver.match_budget(
            per_image, FLAGS.families, FLAGS.depth, lr_size, scheme=FLAGS.scheme,
            metric=FLAGS.metric, **fields,
        )  # fmt: skip
        matched.append((budget, per_image, sols))
    matmul = matmul_gflops(FLAGS.matmul_size, FLAGS.repeats)
    rows = []
    for budget, per_image, sols in matched:
        nets = {
            fam: bench_net(sol.config, lr_size, FLAGS.repeats, matmul["gflops_per_s"])
            for fam, sol in sols.items()
        }
        base = nets.get("lr")
        for net in nets.values():
            if base is not None:
                net["latency_vs_lr"] = net["latency_ms"] / base["latency_ms"]
        rows.append({"budget": budget, "budget_per_image": per_image, "nets": nets})
    report = {
            "device": {
                "platform": jax.default_backend(),
                "kind": jax.devices()[0].device_kind,
                "processor": platform.processor() or platform.machine(),
            },
            "config": {
                "lr_size": list(lr_size),
                "budget_unit": FLAGS.budget_unit,
                "metric": FLAGS.metric,
                "depth": FLAGS.depth,
                "scheme": FLAGS.scheme,
                "repeats": FLAGS.repeats,
                "malloc": malloc,
                **fields,
            },
            "matmul": matmul,
            "results": rows,
        }  # fmt: skip
    cli.emit(report, print_table)


def print_table(report: dict) -> None:
    cfg = report["config"]
    print(f"{report['device']['kind']}, LR {cfg['lr_size']}, x{cfg['scale']}, budgets in "
          f"{cfg['metric']} per {cfg['budget_unit']}; matmul "
          f"{report['matmul']['gflops_per_s']:.1f} GFLOP/s")  # fmt: skip
    print(f"{'budget':>10} {'family':<7} {'widths':<12} {'conv MACs':>14} {'params':>9} "
          f"{'RF':>3} {'ms':>9} {'vs lr':>6}")  # fmt: skip
    for row in report["results"]:
        for family, net in row["nets"].items():
            widths = ",".join(map(str, net["widths"]))
            print(f"{row['budget']:>10.4g} {family:<7} {widths:<12} {net['conv_macs']:>14,} "
                  f"{net['params']:>9,} {net['receptive_field']:>3} {net['latency_ms']:>9.2f} "
                  f"{net.get('latency_vs_lr', float('nan')):>6.2f}")  # fmt: skip


if __name__ == "__main__":
    cli.run(main)
