"""The sweep loop: run the points not yet completed, append one record each, never stop on one.

Completed points (an ``ok`` record in any results file of the workdir, this shard's or another's)
are skipped; a point that raises is recorded with ``status="failed"`` and its error, and the loop
goes on (a later run tries it again). A signal (SIGTERM on preemption, Ctrl-C) stops the sweep:
the engine has saved the point's checkpoint, and running the same command again resumes it.
A progress bar over the points to run, with an ETA, goes to stderr.

Multi-host (after ``jax.distributed.initialize()``): every process runs every point of its shard
(the engine trains each point over all processes' devices) and only process 0 appends records.

:func:`write_latency` times every completed point's forward pass interleaved in one process
(``<workdir>/latency.json``, :func:`measure.interleaved_latency`): after the sweep when one process
ran the whole grid, or as the final step of a sharded sweep (``experiments/sweep.py
--latency_only``), so latency ratios never compare timings taken at different times.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence

import jax
from absl import logging
from etils import epath
from tqdm import tqdm

from espcn_jax import flops
from espcn_jax.study import measure, results
from espcn_jax.study.grid import Point
from espcn_jax.study.point import Context, failure_record, point_dir, run_point
from espcn_jax.training import Interrupted


def work(point: Point) -> float:
    """A point's relative training work: steps x its matched cost per LR pixel."""
    return point.steps * point.achieved


def run(
    points: Sequence[Point], ctx: Context, results_path: str | epath.Path, *, progress: bool = True
) -> dict:
    """Runs ``points`` (skipping completed ones); returns counts ``{"ok", "failed", "skipped"}``."""
    writer = jax.process_index() == 0
    done = results.completed(results.read_dir(ctx.workdir))
    todo = [p for p in points if p.point_id not in done]
    counts = {"ok": 0, "failed": 0, "skipped": len(points) - len(todo)}
    # The bar advances by each point's work (steps x matched cost), so the ETA weighs a large
    # budget's point more than a small one's; the postfix counts points.
    total = sum(work(p) for p in todo)
    bar = tqdm(
        total=total,
        desc="sweep",
        file=sys.stderr,
        disable=not (progress and writer),
        dynamic_ncols=True,
        bar_format="{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}]{postfix}",
    )
    with bar:
        for k, point in enumerate(todo):
            bar.set_postfix_str(f"point {k + 1}/{len(todo)}: {point.point_id}", refresh=True)
            start = time.time()
            try:
                record = run_point(point, ctx)
            except Interrupted:  # SIGTERM/SIGINT: the engine saved a checkpoint; stop the sweep
                raise
            except Exception as e:  # one failed point is recorded, not fatal
                logging.error("point %s failed: %s", point.point_id, e)
                record = failure_record(point, ctx, e, start)
            if writer:
                results.append(results_path, record)
            counts[record["status"]] += 1
            bar.update(work(point))
    return counts


LATENCY_FILE = "latency.json"


def write_latency(ctx: Context, points: Sequence[Point], force: bool = True) -> dict:
    """Times the completed (``ok``) points among ``points`` interleaved (``measure.latency_rounds``
    rounds of ``measure.latency_repeats`` calls each) and writes ``<workdir>/latency.json``;
    returns what it wrote. Process 0 only (others return ``{}``).

    ``force=False`` keeps an existing ``latency.json`` that already times exactly these completed
    points (a re-run that trained nothing new), so the report's ratios do not change between runs.
    """
    if jax.process_index() != 0:
        return {}
    done = results.completed(results.read_dir(ctx.workdir))
    todo = [p for p in points if p.point_id in done and p.role != "lr_search"]
    path = epath.Path(ctx.workdir) / LATENCY_FILE
    if not force and path.exists():
        old = json.loads(path.read_text())
        if set(old.get("points", {})) == {p.point_id for p in todo}:
            return old
    m = ctx.sweep.measure
    models = {}
    for point in todo:
        models[point.point_id], _ = ctx.restore_fn(os.fspath(point_dir(ctx.workdir, point)))
    lr_size = flops.parse_size(m.latency_lr_size, "measure.latency_lr_size")
    rounds = int(m.get("latency_rounds", 5))
    out = measure.interleaved_latency(models, lr_size, rounds=rounds, repeats=m.latency_repeats)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{LATENCY_FILE}.tmp"
    tmp.write_text(json.dumps(out, indent=1))
    tmp.replace(path)
    return out
