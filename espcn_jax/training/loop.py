"""``train_and_evaluate(config, workdir)``: the training loop, resume, signals, final evaluation.

The loop dispatches step ``s`` before fetching step ``s - 1``'s metrics, so the host never waits
for the device except at log, checkpoint and evaluation points. The batch of step ``s`` is
``PatchSampler.batch(s)`` and the parameters are initialised from ``config.train.seed``, so a run
resumed from the checkpoint at step ``k`` repeats exactly what an uninterrupted run computes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import signal
import threading
import time
from pathlib import Path

import jax
import ml_collections
import numpy as np
from absl import logging
from flax import nnx
from jax.sharding import Mesh

from espcn_jax import data, flops, models, pipeline
from espcn_jax.training import checkpoint, evaluation, optim, writers
from espcn_jax.training import config as cfg_lib
from espcn_jax.training import step as step_lib

FINAL_EVAL_FILE = "final_eval.json"


class NonFiniteLossError(RuntimeError):
    """The loss or the gradient became NaN/Inf; the run stopped at its last good checkpoint."""


class Interrupted(Exception):
    """SIGTERM/SIGINT: a checkpoint was saved; re-running the same command resumes."""

    def __init__(self, signum: int, step: int):
        self.signum, self.step = signum, step
        super().__init__(f"{signal.Signals(signum).name} at step {step}: checkpoint saved")


def _build(config: ml_collections.ConfigDict, mesh=None):
    """The run's ModelConfig, mesh and steps; the config is checked against this mesh (its batch
    split over ``mesh.size`` devices)."""
    mesh = step_lib.make_mesh() if mesh is None else mesh
    model_cfg = cfg_lib.check(config, num_devices=mesh.size)
    total = config.train.steps
    steps = step_lib.make_steps(
        model_cfg,
        optim.optimizer(config.opt, total),
        seed=config.train.seed,
        mesh=mesh,
        loss=config.train.loss,
        schedule=optim.schedule(config.opt, total),
        precision=cfg_lib.precision(config),
    )
    return model_cfg, mesh, steps


def _abstract(steps: step_lib.Steps):
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        jax.eval_shape(steps.init),
        steps.state_shardings,
    )


def restore(workdir: str | Path) -> tuple[nnx.Module, ml_collections.ConfigDict]:
    """The model of the latest checkpoint in ``workdir`` and the run's config (from the run
    directory alone).

    The parameters are restored onto this process's first local device (a 1-device mesh, so any
    batch size restores on any device count, and every process of a multi-host job can read them).
    """
    config = cfg_lib.load(workdir)
    _, _, steps = _build(config, step_lib.make_mesh(jax.local_devices()[:1]))
    ckpts = checkpoint.Checkpoints(workdir, read_only=True)
    try:
        state, _ = ckpts.restore(_abstract(steps))
    finally:
        ckpts.close()
    return steps.model(state.params), config


@contextlib.contextmanager
def _catch_signals():
    """Records SIGTERM/SIGINT in the returned list instead of dying (main thread only)."""
    caught: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield caught
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    for s in previous:
        signal.signal(s, lambda signum, frame: caught.append(signum))
    try:
        yield caught
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _evaluate(model, sets, model_cfg, step: int) -> dict:
    """Protocol scores per set, at full float32 precision (comparable across backends)."""
    out = {}
    for name in sets:
        with jax.default_matmul_precision("highest"):
            scores = evaluation.evaluate_model(model, evaluation.load_set(name), model_cfg.scale)
        out[name] = {**scores, "step": step}
        logging.info(
            "eval step %d %s: PSNR %.3f dB SSIM %.4f", step, name, scores["psnr"], scores["ssim"]
        )
    return out


@dataclasses.dataclass
class _Run:
    """What a training session holds: the config, its parts, and where results go."""

    config: ml_collections.ConfigDict
    workdir: Path
    model_cfg: models.ModelConfig
    mesh: Mesh
    steps: step_lib.Steps
    sampler: pipeline.PatchSampler
    sets: tuple[str, ...]
    ckpts: checkpoint.Checkpoints
    writer: writers.MetricWriter | None = None


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> dict:
    """Trains (resuming from the last checkpoint in ``workdir``), evaluates on ``config.eval.sets``
    and writes ``workdir/final_eval.json``, which it returns."""
    workdir = Path(workdir)
    model_cfg, mesh, steps = _build(config)
    _log_backend(config)
    cfg_lib.check_workdir_config(config, workdir)
    sampler = _sampler(
        config, model_cfg
    )  # bad data and patch sizes fail before anything is written
    sets = cfg_lib.eval_sets(config)
    for name in sets:
        evaluation.load_set(name)
    cfg_lib.write_workdir_config(config, workdir)
    ckpts = checkpoint.Checkpoints(workdir, config.train.keep_checkpoints)
    run = _Run(config, workdir, model_cfg, mesh, steps, sampler, sets, ckpts)
    try:
        return _run(run)
    finally:
        ckpts.close()


def _log_backend(config: ml_collections.ConfigDict) -> None:
    """Logs what the run computes in: the backend, the train step's precision and, on GPUs,
    whether XLA's deterministic ops are on (the drivers turn them on: espcn_jax/cli.py)."""
    backend = jax.default_backend()
    line = f"backend {backend} ({jax.local_devices()[0].device_kind}), train precision "
    line += cfg_lib.precision(config)
    if backend == "gpu":
        on = "--xla_gpu_deterministic_ops=true" in os.environ.get("XLA_FLAGS", "")
        line += f", deterministic GPU ops {'on' if on else 'OFF: runs may differ in the last bits'}"
    logging.info("%s", line)


def _sampler(config, model_cfg) -> pipeline.PatchSampler:
    d, t = config.data, config.train
    source = data.make_source(d.source, split=d.split, data_dir=d.data_dir)
    return pipeline.PatchSampler(
        source,
        scale=model_cfg.scale,
        patch=t.patch,
        batch_size=t.batch_size,
        seed=t.seed,
        color=cfg_lib.color(config),
        augment=d.augment,
        balance=d.balance,
        min_std=d.min_std,
    )


def _run(run: _Run) -> dict:
    t, total = run.config.train, run.config.train.steps
    meta = {"train_time_s": 0.0, "train_loss": None}
    if run.ckpts.latest_step() is not None:
        state, meta = run.ckpts.restore(_abstract(run.steps))
        logging.info("resumed from the checkpoint at step %d", int(state.step))
    else:
        state = run.steps.init()
    start = int(jax.device_get(state.step))
    if start > total:
        raise ValueError(
            f"{run.workdir} holds a checkpoint at step {start} > config.train.steps={total}"
        )
    params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
    cost = flops.model_cost(run.model_cfg, (t.patch, t.patch))
    logging.info(
        "%s: %d parameters, %.4g MFLOPs per %dx%d LR patch (forward); %d devices; batch %d",
        run.model_cfg.family,
        params,
        cost.flops / 1e6,
        t.patch,
        t.patch,
        run.mesh.size,
        t.batch_size,
    )
    run.writer = writers.MetricWriter(run.workdir, start)
    try:
        if start < total:
            # forward + backward ~ 3 forward passes
            state, meta = _train(run, state, meta, 3 * cost.flops * t.batch_size)
        return _final_eval(run, state, meta)
    finally:
        run.writer.close()


def _final_eval(run: _Run, state, meta: dict) -> dict:
    """Scores the final model on every set not yet in final_eval.json, and rewrites it."""
    total = run.config.train.steps
    path = run.workdir / FINAL_EVAL_FILE
    result = {"step": total, **meta, "eval": {}}
    if path.exists():
        old = json.loads(path.read_text())
        if old.get("step") == total:
            result["eval"] = old.get("eval", {})
    done = result["eval"]
    todo = [s for s in run.sets if "per_image" not in done.get(s, {})]  # new, or an older format
    scores = _evaluate(run.steps.model(state.params), todo, run.model_cfg, total)
    result["eval"].update(scores)
    if scores:
        run.writer.write(total, _eval_scalars(scores))
    if jax.process_index() == 0:
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(result, indent=2))
        tmp.replace(path)
    return result


def _eval_scalars(scores: dict) -> dict:
    return {f"eval/{n}/{k}": v[k] for n, v in scores.items() for k in ("psnr", "ssim")}


def _train(run: _Run, state, meta: dict, flops_per_step: float):
    """Steps ``state.step .. config.train.steps``; returns the final state and checkpoint meta."""
    config, ckpts, writer = run.config, run.ckpts, run.writer
    t, total = config.train, config.train.steps
    start = int(jax.device_get(state.step))
    batches = pipeline.device_batches(
        run.sampler,
        start_step=start,
        num_steps=total - start,
        sharding=step_lib.batch_sharding(run.mesh),
        prefetch=t.prefetch,
    )
    progress = writers.Progress(total, start)
    window: list[float] = []  # losses since the last log line
    logged_loss, train_time0 = meta["train_loss"], meta["train_time_s"]
    t_start = t_log = time.perf_counter()
    step_log, paused = start, 0.0  # paused: checkpoint and eval time inside the log window

    def check(step: int, metrics: dict) -> dict:
        metrics = jax.device_get(metrics)
        if not (math.isfinite(metrics["loss"]) and math.isfinite(metrics["grad_norm"])):
            ckpts.wait()
            raise NonFiniteLossError(
                f"loss {float(metrics['loss'])} / gradient norm {float(metrics['grad_norm'])} at "
                f"step {step}: training stopped; the last good checkpoint is step "
                f"{ckpts.latest_step()} in {ckpts.directory}"
            )
        window.append(float(metrics["loss"]))
        progress.update(step, float(metrics["loss"]))
        return metrics

    pending = None
    with _catch_signals() as caught:
        for s in range(start, total):
            state, metrics = run.steps.train(state, next(batches))  # dispatch step s ...
            if pending is not None:
                check(*pending)  # ... then wait for step s - 1's metrics
            pending, done = (s + 1, metrics), s + 1
            log_now = done % t.log_every_steps == 0 or done == total
            save_now = done % t.checkpoint_every_steps == 0 or done == total or caught
            every = config.eval.every_steps
            eval_now = every and done % every == 0 and done < total
            if not (log_now or save_now or eval_now):
                continue
            last, pending = check(*pending), None
            if log_now:
                now = time.perf_counter()
                rate = (done - step_log) / max(now - t_log - paused, 1e-9)
                logged_loss = float(np.mean(window))
                row = {
                    "loss": logged_loss,
                    "lr": float(last["lr"]),
                    "grad_norm": float(last["grad_norm"]),
                    "steps_per_s": rate,
                    "gflops_per_s": rate * flops_per_step / 1e9,
                }
                writer.write(done, row)
                progress.log(done, f"loss {logged_loss:.3g}")
                window.clear()
                t_log, step_log, paused = now, done, 0.0
            if save_now:
                t0 = time.perf_counter()
                meta = {
                    "train_time_s": train_time0 + t0 - t_start,
                    "train_loss": logged_loss,
                }
                ckpts.save(state, meta)
                paused += time.perf_counter() - t0
            if eval_now:
                t0 = time.perf_counter()
                scores = _evaluate(run.steps.model(state.params), run.sets, run.model_cfg, done)
                writer.write(done, _eval_scalars(scores))
                paused += time.perf_counter() - t0
                t_start += time.perf_counter() - t0  # train time excludes evaluation
            if caught:
                ckpts.wait()
                progress.close()
                raise Interrupted(caught[0], done)
    progress.close()
    ckpts.wait()
    return state, meta
