"""Throw-away probe: where the engine's train step spends its time on the CPU.

Times ``benchmark_train.py``'s engine step (ESPCN x3 Y, batch 16 of 32x32, Adam; ``--precision``)
three ways, each over ``--probe_steps`` blocked steps after a warm-up:

- ``step_ms``: the wall time of one step (median);
- ``onednn``: each oneDNN primitive's own execution time per step, from ``ONEDNN_VERBOSE=1``'s
  ``exec`` lines (a child process, as oneDNN reads the variable when it loads), summed by
  primitive and shape;
- ``xla``: the XLA:CPU thunks that are not custom calls (fusions, copies: the "glue"), and the
  host's dispatch of the jitted call (``PjitFunction``), per step, from a ``jax.profiler`` trace.

Prints one JSON object. ``rest_ms`` is what is left of ``step_ms`` after the three, not
attributed (waits between thunks are part of it).

    python experiments/probes/step_time.py
    python experiments/probes/step_time.py --precision=bfloat16

Results: BUILD_NOTES.md, "The first layer on oneDNN".
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import statistics
import subprocess
import sys
import tempfile

import jax
from absl import flags

EXPERIMENTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, EXPERIMENTS)
import benchmark_train as bt  # noqa: E402  (experiments/, its shapes and steppers)

from espcn_jax import cli  # noqa: E402
from espcn_jax.training import step as step_lib  # noqa: E402

flags.DEFINE_integer("probe_steps", 50, "Timed steps of each measurement.", lower_bound=1)
flags.DEFINE_enum("precision", "default", ["default", "bfloat16"], "make_steps(precision=...).")
flags.DEFINE_bool("verbose_child", False, "Internal: the ONEDNN_VERBOSE child's mode.")
FLAGS = flags.FLAGS
MARK = "--- timed steps ---"


def stepper(cfg) -> bt.Stepper:
    batch = bt.fixed_batch(cfg)
    s = bt.engine_stepper(cfg, step_lib.make_mesh(), batch, precision=FLAGS.precision)[0]
    bt.time_steps(s, 10)
    return s


def onednn_times() -> dict[str, float]:
    """ms per step of each oneDNN primitive (kind, implementation, problem), from a child."""
    args = [sys.executable, os.path.abspath(__file__), "--verbose_child"]
    args += [f"--precision={FLAGS.precision}", f"--probe_steps={FLAGS.probe_steps}"]
    args += [f"--{name}={getattr(FLAGS, name)}" for name in ("scale", "batch", "patch", "lr")]
    env = dict(os.environ, ONEDNN_VERBOSE="1")
    out = subprocess.run(args, env=env, capture_output=True, text=True, check=True).stdout
    totals: collections.Counter = collections.Counter()
    for line in out.split(MARK, 1)[1].splitlines():
        f = line.split(",")
        if len(f) > 9 and f[0] == "onednn_verbose" and f[1] == "exec":
            # exec lines: onednn_verbose,exec,cpu,primitive,implementation,prop_kind,
            # memory descriptors,attributes,auxiliary,problem,time (ms)
            name = f[3] if f[3] == "reorder" else f"{f[3]} {f[5]}"
            totals[f"{name} {f[9]} ({f[4]})"] += float(f[-1])
    return {k: v / FLAGS.probe_steps for k, v in totals.most_common()}


def profile(s: bt.Stepper) -> dict:
    """Per step: the non-custom-call XLA thunks by name, and the host's dispatch."""
    with tempfile.TemporaryDirectory() as d:
        jax.profiler.start_trace(d, create_perfetto_trace=True)
        bt.time_steps(s, FLAGS.probe_steps)
        jax.profiler.stop_trace()
        (path,) = glob.glob(os.path.join(d, "**", "*.trace.json.gz"), recursive=True)
        with gzip.open(path) as f:
            events = [e for e in json.load(f)["traceEvents"] if e.get("ph") == "X"]
    glue: collections.Counter = collections.Counter()
    dispatch = []
    for e in events:
        name = e["name"]
        if name.startswith("PjitFunction"):
            dispatch.append(e)
        elif not (name.startswith(("ThunkExecutor", "$", "Pjit")) or "ffi_call" in name):
            if "fusion" in name or name.startswith(("wrapped_", "copy", "all-reduce")):
                glue[name] += e["dur"]
    n = FLAGS.probe_steps
    # nested PjitFunction events: count the outermost (the longest of each start time)
    outer: dict[float, float] = {}
    for e in dispatch:
        outer[e["ts"]] = max(outer.get(e["ts"], 0.0), e["dur"])
    return {
        "glue_ms": sum(glue.values()) / n / 1e3,
        "glue_top_ms": {k: v / n / 1e3 for k, v in glue.most_common(8)},
        "dispatch_ms": sum(outer.values()) / n / 1e3,
    }


def main(argv: list[str]) -> None:
    del argv
    cfg = bt.config_from_flags()
    s = stepper(cfg)
    if FLAGS.verbose_child:
        print(MARK, flush=True)
        bt.time_steps(s, FLAGS.probe_steps)
        return
    step_ms = statistics.median(bt.time_steps(s, FLAGS.probe_steps))
    xla = profile(s)
    onednn = onednn_times()
    out = {
        "precision": FLAGS.precision,
        "step_ms": step_ms,
        "onednn_ms": sum(onednn.values()),
        **xla,
        "onednn": onednn,
    }
    out["rest_ms"] = step_ms - out["onednn_ms"] - out["glue_ms"] - out["dispatch_ms"]
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    cli.run(main)
