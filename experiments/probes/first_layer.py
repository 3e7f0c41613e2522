"""Throw-away probe: the float32 train step with ESPCN's 1-channel first conv in XLA or in oneDNN.

Builds ``benchmark_train.py``'s engine step twice, once with ``OnednnConv(min_in_channels=2)``
(the first conv stays with XLA) and once with ``min_in_channels=1`` (it goes to oneDNN), plus
PyTorch's step, and times them interleaved: ``--probe_rounds`` rounds of ``--probe_steps`` blocked
steps each, the three one after another in every round, so a change of the machine's speed hits all three.
Prints one JSON object: each step's median of round medians (ms), the median of the per-round
ratios ``xla_first / onednn_first``, and PyTorch's ratio to each.

    python experiments/probes/first_layer.py --probe_rounds=30

Results and what they decided: BUILD_NOTES.md, "The first layer on oneDNN".
"""

from __future__ import annotations

import json
import os
import statistics
import sys

import jax
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import benchmark_train as bt  # noqa: E402  (experiments/, its shapes and steppers)

from espcn_jax import cli, cpu_conv, xla_cpu  # noqa: E402
from espcn_jax.training import step as step_lib  # noqa: E402

flags.DEFINE_integer("probe_rounds", 15, "Interleaved rounds.", lower_bound=1)
flags.DEFINE_integer("probe_steps", 20, "Blocked steps per step kind and round.", lower_bound=1)
FLAGS = flags.FLAGS


def engine_step(cfg, batch, min_in_channels: int) -> bt.Stepper:
    """The engine step with every conv hook's ``min_in_channels`` set (default otherwise)."""
    defaults = xla_cpu.OnednnConv.__init__.__defaults__
    xla_cpu.OnednnConv.__init__.__defaults__ = (*defaults[:-1], min_in_channels)
    try:  # make_steps builds the graph's hooks here; each keeps the min_in_channels it got
        return bt.engine_stepper(cfg, step_lib.make_mesh(), batch)[0]
    finally:
        xla_cpu.OnednnConv.__init__.__defaults__ = defaults


def main(argv: list[str]) -> None:
    del argv
    if not cpu_conv.available():
        cli.fail("first_layer.py: the oneDNN library is not available here")
    cfg = bt.config_from_flags()
    batch = bt.fixed_batch(cfg)
    steppers = {
        "xla_first": engine_step(cfg, batch, 2),
        "onednn_first": engine_step(cfg, batch, 1),
        "torch": bt.torch_stepper(cfg, batch),
    }
    if steppers["torch"] is None:
        del steppers["torch"]
    for stepper in steppers.values():
        bt.time_steps(stepper, 5)
    rounds = {name: [] for name in steppers}
    for _ in range(FLAGS.probe_rounds):
        for name, stepper in steppers.items():
            rounds[name].append(statistics.median(bt.time_steps(stepper, FLAGS.probe_steps)))
    med = {name: statistics.median(r) for name, r in rounds.items()}
    ratios = [a / b for a, b in zip(rounds["xla_first"], rounds["onednn_first"], strict=True)]
    out = {
        "jax": jax.__version__,
        "onednn_isa": hex(cpu_conv.onednn_isa()),
        "rounds": FLAGS.probe_rounds,
        "median_ms": med,
        "xla_first_over_onednn_first_paired": statistics.median(ratios),
    }
    if "torch" in med:
        out["torch_over"] = {k: med["torch"] / med[k] for k in ("xla_first", "onednn_first")}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    cli.run(main)
