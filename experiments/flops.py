"""Cost of one network: conv multiply-adds, analytic FLOPs (useful / XLA's model / executed), XLA's
own count, params, receptive field, latency; or, with ``--budget``, the width whose cost comes
nearest a budget, then its cost.

    python experiments/flops.py --family=lr --depth=3 --width=64 --scale=3 --channels=1 \\
        --lr_size=360x640 --json
    python experiments/flops.py --family=hr --depth=3 --budget=5.2e9 --json     # MACs per image
    python experiments/flops.py --family=deconv --budget=22624 --budget_unit=lr_pixel --json

``--width`` is one width for every hidden layer or a comma list (``--width=64,32``);
``--budget`` is in ``--metric`` (``conv_macs`` by default: the convs' multiply-adds, as the
field's tables count them; or ``flops``, ``flops_xla``, ``flops_executed``) per ``--budget_unit``
(``image`` of ``--lr_size``, ``output_pixel``, ``lr_pixel``), with widths from ``--scheme``
(``uniform``, ``taper``). ESPCN x3 is 22624 conv MACs per LR pixel.
"""

from __future__ import annotations

import dataclasses
import math

import jax
from absl import flags
from flax import nnx

from espcn_jax import cli, flops, solver
from espcn_jax.models import ModelConfig, model_from_config, receptive_field
from espcn_jax.timing import tune_malloc

flags.DEFINE_string("family", "lr", "Network family: lr, hr, deconv, lr_tied.")
flags.DEFINE_integer("depth", 3, "Conv layers, the upsampling layer included.")
flags.DEFINE_list("width", None, "Hidden width(s): one int, or depth-1 ints. Or give --budget.")
flags.DEFINE_string("budget", None, "Budget in --metric per --budget_unit; runs the solver.")
flags.DEFINE_enum("metric", solver.DEFAULT_METRIC, list(solver.METRICS), "What --budget counts.")
flags.DEFINE_enum("budget_unit", "image", list(solver.BUDGET_UNITS), "What --budget is per.")
flags.DEFINE_enum("scheme", "uniform", list(solver.WIDTH_SCHEMES), "Solver width scheme.")
SCALE = cli.define_scale_flag()
CHANNELS = cli.define_channels_flag()
LR_SIZE = cli.define_lr_size_flag(help="LR image size HxW (360x640 is 1080p output at x3).")
flags.DEFINE_list("kernel_sizes", None, "Per-layer kernel sizes (default: 5, then 3; deconv 3r).")
flags.DEFINE_string("activation", "tanh", "Hidden activation: tanh, relu, silu, ...")
flags.DEFINE_bool("residual", False, "Add the bicubic upscale of the input to the output.")
flags.DEFINE_bool("latency", True, "Measure the jitted forward pass on the default device.")
flags.DEFINE_integer("repeats", 10, "Timed calls for the latency (median reported).")
JSON = cli.define_json_flag()
TUNE_MALLOC = cli.define_tune_malloc_flag()
FLAGS = flags.FLAGS


def _ints(items: list[str] | None, name: str) -> tuple[int, ...] | None:
    if items is None:
        return None
    try:
        return tuple(int(v) for v in items)
    except ValueError:
        raise ValueError(f"{name} must be integers separated by commas, got {items!r}") from None


def _budget(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"budget must be a positive number, e.g. 5.2e9, got {text!r}")
    return value


def config_from_flags(lr_size: tuple[int, int]) -> tuple[ModelConfig, dict | None]:
    """The network to cost, and the solver's report when ``--budget`` chose its widths."""
    if (FLAGS.width is None) == (FLAGS.budget is None):
        raise ValueError("give exactly one of --width and --budget")
    if FLAGS.repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {FLAGS.repeats}")
    fields = dict(
        family=FLAGS.family,
        depth=FLAGS.depth,
        scale=SCALE.value,
        channels=CHANNELS.value,
        kernel_sizes=_ints(FLAGS.kernel_sizes, "kernel_sizes"),
        activation=FLAGS.activation,
        residual=FLAGS.residual,
    )
    if FLAGS.width is not None:
        widths = _ints(FLAGS.width, "width")
        return ModelConfig(widths=widths[0] if len(widths) == 1 else widths, **fields), None
    base = ModelConfig(widths=1, **fields)
    budget = solver.budget_per_image(_budget(FLAGS.budget), FLAGS.budget_unit, lr_size, base.scale)
    solution = solver.solve_width(budget, base, lr_size, scheme=FLAGS.scheme, metric=FLAGS.metric)
    report = solution.as_dict() | {"budget_given": float(FLAGS.budget), "unit": FLAGS.budget_unit}
    return solution.config, report


def cost_report(config: ModelConfig, lr_size: tuple[int, int], latency: bool, repeats: int) -> dict:
    """Analytic and XLA costs of ``config`` on one LR image, and its measured latency."""
    model = model_from_config(config, rngs=nnx.Rngs(0))
    lr_shape = (1, *lr_size, config.channels)
    cost = flops.model_cost(config, lr_size)
    xla = flops.xla_cost(model, lr_shape)
    out = {
        "family": config.family,
        "config": dataclasses.asdict(config),
        "lr_size": list(lr_size),
        "hr_size": [lr_size[0] * config.scale, lr_size[1] * config.scale],
        "conv_macs": cost.conv_macs,
        "flops_analytic": cost.flops,
        "flops_xla": xla["flops"],
        "flops_xla_model": cost.flops_xla,
        "flops_executed": cost.flops_executed,
        "flops_per_output_pixel": cost.flops / cost.output_pixels,
        "transcendentals_xla": xla["transcendentals"],
        "transcendentals": cost.transcendentals,
        "params": cost.params,
        "params_module": flops.count_params(model),
        "receptive_field": receptive_field(config),
        "device": jax.devices()[0].device_kind,
        "platform": jax.default_backend(),
        "layers": cost.as_dict()["layers"],
    }
    if latency:
        timing = flops.measure_latency(model, lr_shape, repeats=repeats)
        out["latency_ms"] = timing["median_ms"]
        out["latency"] = timing
        out["gflops_per_s"] = cost.flops / timing["median_ms"] / 1e6
    else:
        out["latency_ms"] = None
    return out


def print_table(report: dict) -> None:
    print(f"{report['family']} {report['config']['widths']} on LR {report['lr_size']}:")
    for layer in report["layers"]:
        print(f"  {layer['name']:<9} {layer['flops']:>16,} {layer['params']:>10,}  {layer['op']}")
    keys = ("conv_macs", "flops_analytic", "flops_xla", "flops_executed", "params")
    for key in (*keys, "receptive_field", "latency_ms"):
        print(f"  {key:<16} {report[key]}")


def main(argv: list[str]) -> None:
    cli.check_no_positional(argv)
    malloc = tune_malloc() if TUNE_MALLOC.value else None  # first, before JAX allocates
    lr_size = flops.parse_size(LR_SIZE.value, "lr_size")
    config, solution = config_from_flags(lr_size)
    report = cost_report(config, lr_size, FLAGS.latency, FLAGS.repeats) | {"malloc": malloc}
    if solution is not None:
        report["solver"] = solution
        report["widths"] = list(config.widths)
    cli.emit(report, print_table)


if __name__ == "__main__":
    cli.run(main)
