"""The compute-budget study: train families x depths x budgets x seeds at matched FLOPs, report.

    python experiments/sweep.py --preset=quick --workdir=/tmp/study          # CPU, embedded data
    python experiments/sweep.py --preset=paper --workdir=gs://BUCKET/study \\
        --config.data.train=tfds:div2k/bicubic_x3 --shard=0/8                 # machine 0 of 8
    python experiments/sweep.py --config=my_sweep.py --workdir=DIR            # a custom grid
    python experiments/sweep.py --preset=quick --workdir=DIR --dry_run        # list the points
    python experiments/sweep.py --preset=quick --workdir=DIR --lr_search      # the search only
    python experiments/sweep.py --preset=quick --workdir=DIR --latency_only   # after the shards

``--preset=NAME`` is ``--config=experiments/configs/sweep.py:NAME``; either takes overrides such as
``--config.seeds=0,1,2``, ``--config.families=lr,hr`` or
``--config.eval.sets=skimage:validation,folder:/data/Set5`` (the first set gives the headline PSNR). Each point trains in
``WORKDIR/points/<point_id>`` and appends one record to ``WORKDIR/results.jsonl`` (with
``--shard=i/n``: ``results.shard-i-of-n.jsonl``; n machines share one grid and one workdir, and
the report merges their files). Re-running skips completed points and resumes a half-trained one
from its checkpoint; a failed point is recorded and the sweep goes on.

Before the grid, a config with ``lr_search.rates`` runs the learning-rate search (short runs in
``WORKDIR/lr_search``, scored on the training subset, never the validation sets) once and writes
``WORKDIR/lr_search.json``; every point then trains at its family's chosen rate. A sharded sweep
needs it first (``--lr_search``, one machine). After the grid, every completed point's forward pass
is timed interleaved in this one process (``WORKDIR/latency.json``); a sharded sweep does it as a
final step (``--latency_only``, one machine, after every shard). At the end the report
(``experiments/report.py``) is written to ``WORKDIR/report``; stdout gets the table, the conclusion
and that directory (``--json``: one JSON object).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import jax
import numpy as np
from absl import flags, logging
from jax.experimental import multihost_utils
from ml_collections import config_flags

from espcn_jax import cli, storage
from espcn_jax.study import grid, lr_search, report, results, runner
from espcn_jax.study.point import Context
from espcn_jax.training import Interrupted

HERE = Path(__file__).resolve().parent
SWEEP_CONFIG = HERE / "configs" / "sweep.py"
ENGINE_CONFIG = HERE / "configs" / "espcn.py"
PRESETS = ("quick", "standard", "paper", "smoke")

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
flags.DEFINE_bool(
    "lr_search", False, "Run the learning-rate search only, write WORKDIR/lr_search.json, exit."
)
flags.DEFINE_bool(
    "latency_only",
    False,
    "Time every completed point interleaved (WORKDIR/latency.json) and exit: a sharded sweep's "
    "final step.",
)
JSON = cli.define_json_flag()
cli.define_distributed_flags("one point")
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


# The study's train-step precision unless its sweep config sets engine.train.precision: float32
# (XLA's "default"), what the published studies trained at. The default training run's
# "bfloat16" is not inherited. Set here, not in the sweep config, so that sweeps' setting hashes
# (and so the point ids of existing work directories) stay as they were.
STUDY_PRECISION = "default"


def engine_config(preset: str | None):
    """The training engine's ``experiments/configs/espcn.py`` ``get_config(preset)``, with
    ``train.precision`` set to :data:`STUDY_PRECISION` (the sweep's ``engine`` overrides apply
    after it)."""
    spec = importlib.util.spec_from_file_location("espcn_engine_config", ENGINE_CONFIG)
    if spec is None or not ENGINE_CONFIG.exists():
        raise ValueError(f"training config {ENGINE_CONFIG} not found")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(preset) if preset else module.get_config()
    config.train.precision = STUDY_PRECISION
    return config


def check_config(sweep) -> None:
    """The drivers' bounds on the fields that are flags elsewhere (--scale, --channels)."""
    cli.check_sr_scale(sweep.model.scale, "config.model.scale")
    cli.check_channels(sweep.model.channels, "config.model.channels")


def _point_rows(points: list[dict]) -> list[str]:
    head = f"{'point_id':<60} {'family':<7} {'role':<11} {'depth':>5} {'widths':<10} {'budget':>9}"
    lines = [head + f" {'steps':>6} {'rf':<6} {'lr':>7} seed"]
    for p in points:
        widths = ",".join(str(w) for w in p["widths"])
        lr = "engine" if p["lr"] is None else format(p["lr"], ".2g")
        lines.append(
            f"{p['point_id']:<60} {p['family']:<7} {p['role']:<11} {p['depth']:>5} {widths:<10} "
            f"{p['budget']:>9.4g} {p['steps']:>6} {p['rf_match']:<6} {lr:>7} {p['seed']}"
        )
    return lines


def dry_run_table(plan: dict) -> str:
    index, count = plan["shard"]
    lines = []
    if plan.get("lr_search"):
        lines += [f"learning-rate search first: {len(plan['lr_search'])} short runs:"]
        lines += _point_rows(plan["lr_search"]) + [""]
        lines += ["then the grid (rates shown are the config's until the search has run):"]
    lines.append(f"{len(plan['run'])} of {plan['points']} points in shard {index}/{count}:")
    lines += _point_rows(plan["run"])
    work = sum(p["steps"] for p in plan["run"] + plan.get("lr_search", []))
    lines.append(f"total: {work} training steps")
    return "\n".join(lines)


def lr_table(searched: dict) -> str:
    lines = [f"{'family':<7} {'steps':>7} {'lr':>8} {'train PSNR':>10} runs failed"]
    for row in searched["table"]:
        psnr = "-" if row["train_psnr"] is None else f"{row['train_psnr']:.3f}"
        steps = row.get("steps") or "-"  # absent in a file from before per-length search
        lines.append(
            f"{row['family']:<7} {steps:>7} {row['lr']:>8.2g} {psnr:>10} {row['runs']:>4} "
            f"{row['failed']:>6}"
        )
    for steps, lrs, edge in report.search_choices(searched):
        chosen = ", ".join(
            f"{k}={v:g}" + (" (an end of the rates tried)" if edge.get(k) else "")
            for k, v in lrs.items()
        )
        at = f" at {steps} steps" if steps else ""
        lines.append(f"chosen{at} (training-subset PSNR, not validation): {chosen}")
    return "\n".join(lines)


def _run_lr_search(sweep, workdir: str) -> dict:
    """Runs the search's points in WORKDIR/lr_search (extending a family's rates past an end that
    won, ``lr_search.extend`` times at most), writes and returns its choice."""
    search_dir = os.path.join(workdir, lr_search.SUBDIR)
    ctx = Context(sweep, engine_config(sweep.get("engine_preset")), search_dir)
    path = os.path.join(search_dir, results.FILENAME)
    families = grid.names(sweep.families)
    points = lr_search.points(sweep)
    ids = {p.point_id for p in points}
    logging.info("learning-rate search: %d short runs in %s", len(points), search_dir)
    runner.run(points, ctx, path, progress=FLAGS.progress)
    chosen = _agreed_choice(search_dir, families, ids, lr_search.lengths(sweep))
    for _ in range(lr_search.extend_limit(sweep)):
        more = _agreed_rates(lr_search.extensions(chosen) if chosen["table"] else {}, families)
        if not more:
            break
        logging.info("learning-rate search: best at an end of the range, also trying %s", more)
        for family, rate in more.items():
            extra = lr_search.points(sweep, (rate,), (family,))
            ids |= {p.point_id for p in extra}
            runner.run(extra, ctx, path, progress=False)
        chosen = _agreed_choice(search_dir, families, ids, lr_search.lengths(sweep))
    chosen["settings"] = lr_search.settings(sweep)
    if jax.process_index() == 0:
        lr_search.write(workdir, chosen)
    return chosen


def _agreed_choice(search_dir: str, families, ids: set[str], lengths) -> dict:
    """The search's choice from process 0's records of this search's runs (``ids``; the only
    records written); every process gets its rates (per length, for a search over several)."""
    chosen = {"lrs": {}, "table": [], "at_edge": {}}
    if jax.process_index() == 0:
        chosen = lr_search.choose(results.read_dir(search_dir), families, ids)
    chosen["lrs"] = _agreed_rates(chosen["lrs"], families)
    if len(lengths) > 1:
        by = chosen.get("by_steps", {})
        chosen["by_steps"] = {str(n): _agreed_rates(by.get(str(n), {}), families) for n in lengths}
    return chosen


def _agreed_rates(rates: dict, families) -> dict[str, float]:
    """Process 0's ``{family: rate}`` on every process (families without one: left out)."""
    if jax.process_count() == 1:
        return dict(rates)
    from jax.experimental import multihost_utils

    values = np.asarray([rates.get(f, 0.0) if jax.process_index() == 0 else 0.0 for f in families])
    values = multihost_utils.broadcast_one_to_all(values.astype(np.float64))
    return {f: float(v) for f, v in zip(families, values, strict=True) if v > 0}


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
        raise ValueError("give --preset=quick|standard|paper|smoke or --config=FILE")
    sweep = FLAGS.config
    check_config(sweep)
    index, count = grid.parse_shard(FLAGS.shard)
    cli.initialize_distributed()
    workdir = FLAGS.workdir
    searched = lr_search.read(workdir) if lr_search.enabled(sweep) else None
    if searched is not None and not lr_search.current(searched, sweep):
        logging.info("%s came from other search settings: searching again", lr_search.FILENAME)
        searched = None
    if FLAGS.dry_run:
        search = lr_search.points(sweep) if lr_search.enabled(sweep) and not searched else []
        points = grid.expand(sweep, (searched or {}).get("lrs"), lr_search.rates_by_steps(searched))
        mine = grid.shard(points, index, count)
        plan = {
            "points": len(points),
            "shard": [index, count],
            "lr_search": [p.as_dict() for p in search],
            "run": [p.as_dict() for p in mine],
        }
        cli.emit(plan, dry_run_table)
        return
    storage.check_reachable(workdir)  # one line, before any point, if a gs:// workdir is not
    ctx = Context(sweep, engine_config(sweep.get("engine_preset")), workdir)
    if lr_search.enabled(sweep) and searched is None:
        if count > 1 and not FLAGS.lr_search:
            raise ValueError(
                "a sharded sweep needs the learning-rate search first: run the same command "
                "once with --lr_search (one machine), then the shards"
            )
        searched = _run_lr_search(sweep, workdir)
    if FLAGS.lr_search:
        cli.emit(searched or {"lrs": {}, "table": []}, lr_table)
        return
    points = grid.expand(sweep, (searched or {}).get("lrs"), lr_search.rates_by_steps(searched))
    if FLAGS.latency_only:
        out = runner.write_latency(ctx, points)
        cli.emit(
            {
                "latency": os.path.join(workdir, runner.LATENCY_FILE),
                "points": len(out.get("points", {})),
            }
        )
        return
    mine = grid.shard(points, index, count)
    path = os.path.join(workdir, results.filename((index, count)))
    logging.info(
        "sweep: %d points, shard %d/%d runs %d; results -> %s",
        len(points),
        index,
        count,
        len(mine),
        path,
    )
    try:
        counts = runner.run(mine, ctx, path, progress=FLAGS.progress)
    except Interrupted as e:
        print(f"interrupted: {e}; run the same command again to resume", file=sys.stderr)
        sys.exit(128 + e.signum)
    if count == 1 and jax.process_index() == 0 and sweep.measure.get("latency_rounds", 0):
        runner.write_latency(ctx, points, force=False)
    summary = {
        "workdir": workdir,
        "results": path,
        "points": len(points),
        "shard": [index, count],
        **counts,
    }
    if jax.process_index() == 0:
        if FLAGS.report:
            from espcn_jax.study import outputs  # matplotlib and scipy: only for the report

            summary["report"] = outputs.write_report(workdir)
        if JSON.value:
            summary.get("report", {}).pop("table_md", None)
        cli.emit(summary, summary_table)
    if jax.process_count() > 1:
        # Process 0 timed the latency and wrote the report alone: the others wait for it here, so
        # none leaves the job (and JAX's shutdown barrier times out) while process 0 still works.
        multihost_utils.sync_global_devices("sweep finished")


if __name__ == "__main__":
    sys.argv = expand_preset(sys.argv)
    cli.run(main)
