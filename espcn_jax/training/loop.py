"""``train_and_evaluate(config, workdir)``: the training loop, resume, signals, final evaluation.

The loop dispatches step ``s`` before fetching step ``s - 1``'s metrics, so the host never waits
for the device except at log, checkpoint and evaluation points. The batch of step ``s`` is
``PatchSampler.batch(s)`` and the parameters are initialised from ``config.train.seed``, so a run
resumed from the checkpoint at step ``k`` repeats exactly what an uninterrupted run computes.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import threading
import time
from pathlib import Path

import jax
import ml_collections
import numpy as np
from absl import logging
from flax import nnx

from espcn_jax import data, flops, pipeline
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
    model_cfg = cfg_lib.check(config)
    mesh = step_lib.make_mesh() if mesh is None else mesh
    total = config.train.steps
    steps = step_lib.make_steps(
        model_cfg,
        optim.optimizer(config.opt, total),
        seed=config.train.seed,
        mesh=mesh,
        loss=config.train.loss,
        schedule=optim.schedule(config.opt, total),
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
    directory alone)."""
    config = cfg_lib.load(workdir)
    _, _, steps = _build(config, step_lib.make_mesh(jax.devices()[:1]))
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
    channels = "y" if model_cfg.channels == 1 else "rgb"
    out = {}
    for name in sets:
        scores = evaluation.evaluate_model(
            model, evaluation.load_set(name), model_cfg.scale, channels
        )
        out[name] = {**scores, "step": step}
        logging.info(
            "eval step %d %s: PSNR %.3f dB SSIM %.4f", step, name, scores["psnr"], scores["ssim"]
        )
    return out


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> dict:
    """Trains (resuming from the last checkpoint in ``workdir``), evaluates on ``config.eval.sets``
    and writes ``workdir/final_eval.json``, which it returns."""
    workdir = Path(workdir)
    model_cfg, mesh, steps = _build(config)
    sets = cfg_lib.eval_sets(config)
    for name in sets:
        evaluation.load_set(name)  # bad set names fail before training
    t = config.train
    cfg_lib.check_workdir_config(config, workdir)
    ckpts = checkpoint.Checkpoints(workdir, t.keep_checkpoints)
    try:
        return _run(config, workdir, model_cfg, mesh, steps, sets, ckpts)
    finally:
        ckpts.close()


def _run(config, workdir, model_cfg, mesh, steps, sets, ckpts) -> dict:
    t = config.train
    total = t.steps
    meta = {"train_time_s": 0.0, "train_loss": None}
    if ckpts.latest_step() is not None:
        state, meta = ckpts.restore(_abstract(steps))
        logging.info("resumed from the checkpoint at step %d", int(state.step))
    else:
        state = steps.init()
    start = int(jax.device_get(state.step))
    if start > total:
        raise ValueError(
            f"{workdir} holds a checkpoint at step {start} > config.train.steps={total}"
        )
    params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
    cost = flops.model_cost(model_cfg, (t.patch, t.patch))
    train_flops = 3 * cost.flops * t.batch_size  # forward + backward ~ 3 forwards, per step
    logging.info(
        "%s: %d parameters, %.4g MFLOPs per %dx%d LR patch (forward); %d devices; batch %d",
        model_cfg.family,
        params,
        cost.flops / 1e6,
        t.patch,
        t.patch,
        mesh.size,
        t.batch_size,
    )
    writer = writers.MetricWriter(workdir, start)
    try:
        if start < total:
            state, meta = _train(
                config, state, start, meta, steps, mesh, sets, model_cfg, ckpts, writer, train_flops
            )
        model = steps.model(state.params)
        final_path = workdir / FINAL_EVAL_FILE
        result = {
            "step": total,
            "train_time_s": meta["train_time_s"],
            "train_loss": meta["train_loss"],
            "eval": {},
        }
        if final_path.exists():
            old = json.loads(final_path.read_text())
            if old.get("step") == total:
                result["eval"] = old.get("eval", {})
        todo = [s for s in sets if s not in result["eval"]]
        with jax.default_matmul_precision("highest"):
            result["eval"].update(_evaluate(model, todo, model_cfg, total))
        for name in todo:
            writer.write(
                total,
                {
                    f"eval/{name}/{k}": v
                    for k, v in result["eval"][name].items()
                    if k in ("psnr", "ssim")
                },
            )
        tmp = final_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(result, indent=2))
        tmp.replace(final_path)
        return result
    finally:
        writer.close()


def _train(config, state, start, meta, steps, mesh, sets, model_cfg, ckpts, writer, train_flops):
    t = config.train
    total = t.steps
    source = data.make_source(
        config.data.source, split=config.data.split, data_dir=config.data.data_dir
    )
    sampler = pipeline.PatchSampler(
        source,
        scale=model_cfg.scale,
        patch=t.patch,
        batch_size=t.batch_size,
        seed=t.seed,
        color=cfg_lib.color(config),
        augment=config.data.augment,
    )
    batches = pipeline.device_batches(
        sampler,
        start_step=start,
        num_steps=total - start,
        sharding=step_lib.batch_sharding(mesh),
        prefetch=t.prefetch,
    )
    progress = writers.Progress(total, start)
    train_time = meta["train_time_s"]
    window: list[float] = []  # losses since the last log line
    logged_loss = meta["train_loss"]
    t_log, step_log, paused = time.perf_counter(), start, 0.0

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

    def save(state):
        meta = {
            "train_time_s": train_time + time.perf_counter() - t_start,
            "train_loss": logged_loss,
        }
        ckpts.save(state, meta)
        return meta

    t_start = time.perf_counter()
    pending = None
    with _catch_signals() as caught:
        for s in range(start, total):
            batch = next(batches)
            state, metrics = steps.train(state, batch)  # dispatch step s ...
            if pending is not None:
                check(*pending)  # ... then wait for step s - 1
            pending, done = (s + 1, metrics), s + 1
            log_now = done % t.log_every_steps == 0 or done == total
            save_now = done % t.checkpoint_every_steps == 0 or done == total or caught
            eval_now = (
                config.eval.every_steps and done % config.eval.every_steps == 0 and done < total
            )
            if not (log_now or save_now or eval_now):
                continue
            last = check(*pending)
            pending = None
            if log_now:
                now = time.perf_counter()
                rate = (done - step_log) / max(now - t_log - paused, 1e-9)
                row = {
                    "loss": float(np.mean(window)),
                    "lr": float(last["lr"]),
                    "grad_norm": float(last["grad_norm"]),
                    "steps_per_s": rate,
                    "gflops_per_s": rate * train_flops / 1e9,
                }
                writer.write(done, row)
                progress.log(done, f"loss {row['loss']:.3g}")
                logged_loss = row["loss"]
                window.clear()
                t_log, step_log, paused = now, done, 0.0
            if save_now:
                t0 = time.perf_counter()
                meta = save(state)
                paused += time.perf_counter() - t0
            if eval_now:
                t0 = time.perf_counter()
                with jax.default_matmul_precision("highest"):
                    scores = _evaluate(steps.model(state.params), sets, model_cfg, done)
                writer.write(
                    done,
                    {f"eval/{n}/{k}": v[k] for n, v in scores.items() for k in ("psnr", "ssim")},
                )
                paused += time.perf_counter() - t0
                t_start += time.perf_counter() - t0  # train time excludes evaluation
            if caught:
                ckpts.wait()
                progress.close()
                raise Interrupted(caught[0], done)
        if pending is not None:
            check(*pending)
    progress.close()
    ckpts.wait()
    return state, meta
