"""The compute-budget study: train families x depths x budgets x seeds at matched FLOPs, report.

    python experiments/sweep.py --preset=quick --workdir=/tmp/study          # CPU, embedded data
    python experiments/sweep.py --preset=paper --workdir=gs://BUCKET/study \\
        --config.data.train=tfds:div2k/bicubic_x3 --shard=0/8                 # machine 0 of 8
    python experiments/sweep.py --config=my_sweep.py --workdir=DIR            # a custom grid
    python experiments/sweep.py --preset=quick --workdir=DIR --dry_run        # list the points

``--preset=NAME`` is ``--config=experiments/configs/sweep.py:NAME``; either takes overrides such as
``--config.seeds=0,1,2``, ``--config.families=lr,hr`` or
``--config.eval.sets=skimage:validation,folder:/data/Set5`` (the first set gives the headline PSNR). Each point trains in
``WORKDIR/points/<point_id>`` and appends one record to ``WORKDIR/results.jsonl`` (with
``--shard=i/n``: ``results.shard-i-of-n.jsonl``; n machines share one grid and one workdir, and
the report merges their files). Re-running skips completed points and resumes a half-trained one
from its checkpoint; a failed point is recorded and the sweep goes on. At the end the report
(``experiments/report.py``) is written to ``WORKDIR/report``; stdout gets the table, the conclusion
and that directory (``--json``: one JSON object).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import jax
from absl import flags, logging
from ml_collections import config_flags

from espcn_jax import cli, storage
from espcn_jax.study import grid, outputs, results, runner
from espcn_jax.study.point import Context
from espcn_jax.training import Interrupted

HERE = Path(__file__).resolve().parent
SWEEP_CONFIG = HERE / "configs" / "sweep.py"
ENGINE_CONFIG = HERE / "configs" / "espcn.py"
PRESETS = ("quick", "paper", "smoke")

flags.DEFINE_string(
    "workdir", None, "Directory for points, results.jsonl and the report (local or gs://)."
)
flags.DEFINE_enum(
    "preset", None, list(PRESETS), "Shorthand for --config=experiments/configs/sweep.py:PRESET."
)
config_flags.DEFINE_config_file(
    "config", None, "Sweep config file (a get_config() module).", lock_config=True
)
flags.DEFINE_string("shard", "0/1", "Run every n-th point starting at i (i/n), for n machines.")
flags.DEFINE_bool("report", True, "Write the report when the sweep ends.")
flags.DEFINE_bool(
    "dry_run", False, "Print the (sharded) points, widths solved, and exit without training."
)
flags.DEFINE_bool("progress", True, "Progress bar over points on stderr.")
JSON = cli.define_json_flag()
flags.DEFINE_bool(
    "distributed",
    False,
    "Call jax.distributed.initialize() first: one point spans every host of a TPU slice or a "
    "Slurm job (run the same command on every host; process 0 writes the records and report).",
)
FLAGS = flags.FLAGS


def expand_preset(argv: list[str]) -> list[str]:
    """Rewrites ``--preset=NAME`` as ``--config=<sweep.py>:NAME`` (absl parses the rest)."""
    presets = [a for a in argv if a.startswith("--preset=")]
    has_config = any(a == "--config" or a.startswith("--config=") for a in argv)
    if not presets:
        return argv
    if has_config:
        cli.fail("give --preset or --config, not both")
    name = presets[-1].split("=", 1)[1]
    return [argv[0], f"--config={SWEEP_CONFIG}:{name}", *argv[1:]]  # before --config.x overrides


def engine_config(preset: str | None):
    """The training engine's ``experiments/configs/espcn.py`` ``get_config(preset)``."""
    spec = importlib.util.spec_from_file_location("espcn_engine_config", ENGINE_CONFIG)
    if spec is None or not ENGINE_CONFIG.exists():
        raise ValueError(f"training config {ENGINE_CONFIG} not found")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(preset) if preset else module.get_config()


def check_config(sweep) -> None:
    """The drivers' bounds on the fields that are flags elsewhere (--scale, --channels)."""
    cli.check_sr_scale(sweep.model.scale, "config.model.scale")
    cli.check_channels(sweep.model.channels, "config.model.channels")


def dry_run_table(plan: dict) -> str:
    index, count = plan["shard"]
    lines = [f"{len(plan['run'])} of {plan['points']} points in shard {index}/{count}:"]
    head = f"{'point_id':<44} {'family':<7} {'depth':>5} {'widths':<12} {'budget':>9} {'steps':>6}"
    lines.append(head + " seed")
    for p in plan["run"]:
        widths = ",".join(str(w) for w in p["widths"])
        lines.append(
            f"{p['point_id']:<44} {p['family']:<7} {p['depth']:>5} {widths:<12} "
            f"{p['budget']:>9.4g} {p['steps']:>6} {p['seed']}"
        )
    return "\n".join(lines)


def summary_table(summary: dict) -> str:
    counts = f"{summary['ok']} ok, {summary['failed']} failed, {summary['skipped']} skipped"
    lines = [f"results: {summary['results']} ({counts})"]
    if "report" in summary:
        rep = summary["report"]
        lines += ["", rep["table_md"], "", rep["conclusion"], "", f"report: {rep['out_dir']}"]
    lines.append(f"output directory: {summary['workdir']}")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    cli.check_no_positional(argv)
    if FLAGS.workdir is None:
        raise ValueError("--workdir is required")
    if FLAGS.config is None:
        raise ValueError("give --preset=quick|paper|smoke or --config=FILE")
    sweep = FLAGS.config
    check_config(sweep)
    index, count = grid.parse_shard(FLAGS.shard)
    if FLAGS.distributed:
        jax.distributed.initialize()
    points = grid.expand(sweep)
    mine = grid.shard(points, index, count)
    if FLAGS.dry_run:
        plan = {"points": len(points), "shard": [index, count], "run": [p.as_dict() for p in mine]}
        cli.emit(plan, dry_run_table)
        return
    workdir = FLAGS.workdir
    storage.check_reachable(workdir)  # one line, before any point, if a gs:// workdir is not
    path = os.path.join(workdir, results.filename((index, count)))
    logging.info(
        "sweep: %d points, shard %d/%d runs %d; results -> %s",
        len(points),
        index,
        count,
        len(mine),
        path,
    )
    ctx = Context(sweep, engine_config(sweep.get("engine_preset")), workdir)
    try:
        counts = runner.run(mine, ctx, path, progress=FLAGS.progress)
    except Interrupted as e:
        print(f"interrupted: {e}; run the same command again to resume", file=sys.stderr)
        sys.exit(128 + e.signum)
    summary = {
        "workdir": workdir,
        "results": path,
        "points": len(points),
        "shard": [index, count],
        **counts,
    }
    if jax.process_index() != 0:
        return
    if FLAGS.report:
        summary["report"] = outputs.write_report(workdir)
    if JSON.value:
        summary.get("report", {}).pop("table_md", None)
    cli.emit(summary, summary_table)


if __name__ == "__main__":
    sys.argv = expand_preset(sys.argv)
    cli.run(main)
