"""``train_and_evaluate(config, workdir)``: the training loop, resume, signals, final evaluation.

Metrics stay on the device between log, checkpoint and evaluation points (``Steps.train_logged``
folds each step's loss, gradient norm, lr and a non-finite flag into a small on-device log), so
the host only dispatches steps and waits for the device at those points alone. The flag is read
at each of them, and always before a checkpoint is written: a non-finite step stops the run with
its last good checkpoint. The batch of step ``s`` is
``PatchSampler.batch(s)`` and the parameters are initialised from ``config.train.seed``, so a run
resumed from the checkpoint at step ``k`` repeats exactly what an uninterrupted run computes.

Multi-host (after ``jax.distributed.initialize()``): each process makes its own rows of each
batch (``pipeline.process_rows``); SIGTERM goes to JAX's preemption notifier, and every process
stops at the step ``multihost_utils.reached_preemption_sync_point`` agrees on, saves it and exits.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator

import jax
import ml_collections
import numpy as np
from absl import logging
from etils import epath
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from espcn_jax import data, device_sampler, flops, models, pipeline, storage
from espcn_jax.training import checkpoint, evaluation, optim, writers
from espcn_jax.training import config as cfg_lib
from espcn_jax.training import step as step_lib

FINAL_EVAL_FILE = "final_eval.json"


class NonFiniteLossError(RuntimeError):
    """The loss, the gradient or the parameters became NaN/Inf; the run stopped at its last good
    checkpoint."""


class Interrupted(Exception):
    """SIGTERM/SIGINT: a checkpoint was saved; re-running the same command resumes."""

    def __init__(self, signum: int, step: int):
        self.signum, self.step = signum, step
        super().__init__(f"{signal.Signals(signum).name} at step {step}: checkpoint saved")


def _build(config: ml_collections.ConfigDict, mesh=None, feed=None):
    """The run's ModelConfig, mesh and steps; the config is checked against this mesh (its batch
    split over ``mesh.size`` devices). ``feed``: a :class:`device_sampler.DeviceSampler` whose
    batches the train step makes."""
    mesh = step_lib.make_mesh() if mesh is None else mesh
    model_cfg = cfg_lib.check(config, num_devices=mesh.size)
    total = config.train.steps
    steps = step_lib.make_steps(
        model_cfg,
        optim.optimizer(config.opt, total),
        seed=config.train.seed,
        mesh=mesh,
        loss=config.train.loss,
        loss_border=cfg_lib.loss_border(config),
        schedule=optim.schedule(config.opt, total),
        batch_fn=None if feed is None else feed.make_batch,
        inputs_sharding=None if feed is None else feed.inputs_sharding,
        precision=cfg_lib.precision(config),
        tail_precision=_tail_precision(config),
    )
    return model_cfg, mesh, steps


def _tail_precision(config: ml_collections.ConfigDict) -> str | None:
    """The precision of the run's last ``config.train.tail_steps`` steps, where they have one of
    their own (None: every step at ``config.train.precision``)."""
    tail_steps, tail_precision = cfg_lib.tail(config)
    if tail_steps == 0 or tail_precision == cfg_lib.precision(config):
        return None
    return tail_precision


def _abstract(steps: step_lib.Steps):
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        jax.eval_shape(steps.init),
        steps.state_shardings,
    )


def restore(
    workdir: str | os.PathLike, step: int | None = None
) -> tuple[nnx.Module, ml_collections.ConfigDict]:
    """The model of the latest checkpoint in ``workdir`` (or of ``step``: ValueError if it is not
    kept there) and the run's config (from the run directory alone).

    The parameters are restored onto this process's first local device (a 1-device mesh, so any
    batch size restores on any device count, and every process of a multi-host job can read them).
    """
    config = cfg_lib.load(workdir)
    _, _, steps = _build(config, step_lib.make_mesh(jax.local_devices()[:1]))
    ckpts = checkpoint.Checkpoints(workdir, read_only=True)
    try:
        state, _ = ckpts.restore(_abstract(steps), step)
    finally:
        ckpts.close()
    return steps.model(state.params), config


def _multihost_preemption() -> bool:
    """Whether stops are agreed through JAX's preemption service: several processes, and
    ``jax.distributed.initialize`` started the service (it installs a SIGTERM notifier)."""
    return (
        jax.process_count() > 1
        and jax.distributed.is_initialized()
        and bool(jax.config.jax_enable_preemption_service)
    )


class _Signals:
    """SIGTERM/SIGINT, caught so that the loop saves a checkpoint first, at a step all processes
    agree on. One process: the handlers record the signal, and the loop stops at the next step.
    Several: SIGTERM is left to JAX's preemption notifier (a Python handler would replace it),
    SIGINT is recorded and re-sent as SIGTERM, and the loop stops where
    ``reached_preemption_sync_point`` says, the same step on every process."""

    def __init__(self):
        self.caught: list[int] = []
        self.agreed = _multihost_preemption()

    def _handle(self, signum, frame) -> None:
        self.caught.append(signum)
        if self.agreed:
            os.kill(os.getpid(), signal.SIGTERM)

    def stop(self, done: int) -> bool:
        """Whether to save and stop after ``done`` steps (called once per step, every process)."""
        if self.agreed:
            return multihost_utils.reached_preemption_sync_point(done)
        return bool(self.caught)

    @property
    def signum(self) -> int:
        return self.caught[0] if self.caught else signal.SIGTERM


@contextlib.contextmanager
def _catch_signals():
    """A :class:`_Signals` whose handlers are installed inside (main thread only)."""
    signals = _Signals()
    if threading.current_thread() is not threading.main_thread():
        yield signals
        return
    caught = (signal.SIGINT,) if signals.agreed else (signal.SIGTERM, signal.SIGINT)
    previous = {s: signal.getsignal(s) for s in caught}
    for s in previous:
        signal.signal(s, signals._handle)
    try:
        yield signals
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _local_model(steps: step_lib.Steps, params) -> nnx.Module:
    """The model with its parameters copied onto this process's first device: evaluation runs
    on each process alone (the replicated parameters span other processes' devices)."""
    return steps.model(jax.device_put(jax.device_get(params), jax.local_devices()[0]))


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
    workdir: epath.Path
    model_cfg: models.ModelConfig
    mesh: Mesh
    steps: step_lib.Steps
    sampler: pipeline.PatchSampler
    sets: tuple[str, ...]
    ckpts: checkpoint.Checkpoints
    writer: writers.MetricWriter | None = None
    feed: device_sampler.DeviceSampler | None = None  # None: batches from the host sampler
    # (start_step, num_steps) -> device batches (benchmarks); None: from the sampler or the feed
    batches: Callable[[int, int], Iterator[dict]] | None = None


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict:
    """Trains (resuming from the last checkpoint in ``workdir``), evaluates on ``config.eval.sets``
    and writes ``workdir/final_eval.json``, which it returns. ``workdir`` is a local directory or
    a ``gs://`` URI (:mod:`espcn_jax.storage`); a remote one that cannot be written is a one-line
    :class:`storage.UnreachableError` before anything is read or written there."""
    workdir = epath.Path(workdir)
    mesh = step_lib.make_mesh()
    model_cfg = cfg_lib.check(config, num_devices=mesh.size)
    _log_backend(config)
    storage.check_reachable(workdir)
    cfg_lib.check_workdir_config(config, workdir)
    sampler = _sampler(
        config, model_cfg
    )  # bad data and patch sizes fail before anything is written
    feed = _device_feed(config, sampler, mesh)
    model_cfg, mesh, steps = _build(config, mesh, feed)
    sets = cfg_lib.eval_sets(config)
    for name in sets:
        evaluation.load_set(name)
    cfg_lib.write_workdir_config(config, workdir)
    ckpts = checkpoint.Checkpoints(workdir, config.train.keep_checkpoints)
    run = _Run(config, workdir, model_cfg, mesh, steps, sampler, sets, ckpts, feed=feed)
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
    if _tail_precision(config) is not None:
        line += f" ({_tail_precision(config)} for the last {cfg_lib.tail(config)[0]} steps)"
    if backend == "gpu":
        on = "--xla_gpu_deterministic_ops=true" in os.environ.get("XLA_FLAGS", "")
        line += f", deterministic GPU ops {'on' if on else 'OFF: runs may differ in the last bits'}"
    logging.info("%s", line)


def _sampler(config, model_cfg) -> pipeline.PatchSampler:
    d, t = config.data, config.train
    source = data.make_source(d.source, split=d.split, data_dir=d.data_dir)
    sampler = pipeline.PatchSampler(
        source,
        scale=model_cfg.scale,
        patch=t.patch,
        batch_size=t.batch_size,
        seed=t.seed,
        color=cfg_lib.color(config),
        augment=d.augment,
        balance=d.balance,
        min_std=d.min_std,
        rescales=d.get("rescales", ()),
    )
    logging.info(
        "training data %s: %d images%s",
        source.name,
        len(sampler.names),
        f" (with the copies at rescales {sampler.rescales})" if sampler.rescales else "",
    )
    return sampler


def _device_feed(config, sampler, mesh) -> device_sampler.DeviceSampler | None:
    """The device sampler if ``config.data.sampler == "device"`` and the images fit its limit
    (else one log line and None: the host sampler, which gives the same batches)."""
    if config.data.get("sampler", "host") != "device":
        return None
    nbytes, limit_mb = device_sampler.packed_nbytes(sampler), config.data.device_sampler_max_mb
    if nbytes > limit_mb * 2**20:
        logging.warning(
            "data.sampler=device: the training images take %.1f MiB per device, over "
            "data.device_sampler_max_mb=%g; batches come from the host sampler",
            nbytes / 2**20,
            limit_mb,
        )
        return None
    return device_sampler.DeviceSampler(sampler, mesh)


def _batches(run: _Run, start: int, num_steps: int):
    """The train step's second argument for steps ``start, ...``: the device sampler's inputs or
    the host sampler's batches, prefetched to the devices."""
    if run.feed is not None:
        return run.feed.inputs_for_steps(start, num_steps)
    return pipeline.device_batches(
        run.sampler,
        start_step=start,
        num_steps=num_steps,
        sharding=step_lib.batch_sharding(run.mesh),
        prefetch=run.config.train.prefetch,
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
    scores = _evaluate(_local_model(run.steps, state.params), todo, run.model_cfg, total)
    result["eval"].update(scores)
    if scores:
        run.writer.write(total, _eval_scalars(scores))
    if jax.process_index() == 0:
        storage.write_atomic(path, json.dumps(result, indent=2))
    return result


def _eval_scalars(scores: dict) -> dict:
    return {f"eval/{n}/{k}": v[k] for n, v in scores.items() for k in ("psnr", "ssim")}


def _train(run: _Run, state, meta: dict, flops_per_step: float):
    """Steps ``state.step .. config.train.steps``; returns the final state and checkpoint meta."""
    config, ckpts, writer, steps = run.config, run.ckpts, run.writer, run.steps
    t, total = config.train, config.train.steps
    start = int(jax.device_get(state.step))
    if run.batches is not None:
        batches = run.batches(start, total - start)
    else:
        batches = _batches(run, start, total - start)
    progress = writers.Progress(total, start)
    logged_loss, train_time0 = meta["train_loss"], meta["train_time_s"]
    t_start = t_log = time.perf_counter()
    step_log, paused = start, 0.0  # paused: checkpoint and eval time inside the log window
    log = steps.new_log()  # on the device: the window's loss sum, last lr/grad_norm, bad_step

    def fetch(log) -> dict:
        """The on-device log on the host (the only wait); raises if a step was not finite."""
        host = jax.device_get(log)
        if host["bad_step"] >= 0:
            ckpts.wait()
            good = ckpts.latest_step()
            kept = (
                f"the last good checkpoint is step {good} in {ckpts.directory}"
                if good is not None
                else f"no checkpoint was written in {ckpts.directory}"
            )
            raise NonFiniteLossError(
                f"non-finite loss, gradient or parameters at step {int(host['bad_step'])} "
                f"(loss {float(host['bad_loss'])}, gradient norm "
                f"{float(host['bad_grad_norm'])}): training stopped; {kept}"
            )
        return host

    tail_from = total - cfg_lib.tail(config)[0] if steps.train_logged_tail else total
    with _catch_signals() as signals:
        for s in range(start, total):
            step_fn = steps.train_logged_tail if s >= tail_from else steps.train_logged
            state, log = step_fn(state, log, next(batches))
            done = s + 1
            stop = signals.stop(done)
            log_now = done % t.log_every_steps == 0 or done == total
            save_now = done % t.checkpoint_every_steps == 0 or done == total or stop
            every = config.eval.every_steps
            eval_now = every and done % every == 0 and done < total
            if not (log_now or save_now or eval_now):
                continue
            last = fetch(log)  # before any save: a non-finite state is never written
            window_loss = float(last["loss_sum"]) / max(int(last["count"]), 1)
            progress.update(done, window_loss)
            if log_now:
                now = time.perf_counter()
                rate = (done - step_log) / max(now - t_log - paused, 1e-9)
                logged_loss = window_loss
                row = {
                    "loss": logged_loss,
                    "lr": float(last["lr"]),
                    "grad_norm": float(last["grad_norm"]),
                    "steps_per_s": rate,
                    "gflops_per_s": rate * flops_per_step / 1e9,
                }
                writer.write(done, row)
                progress.log(done, f"loss {logged_loss:.3g}")
                log = steps.new_window(log)
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
                model = _local_model(steps, state.params)
                scores = _evaluate(model, run.sets, run.model_cfg, done)
                writer.write(done, _eval_scalars(scores))
                paused += time.perf_counter() - t0
                t_start += time.perf_counter() - t0  # train time excludes evaluation
            if stop:
                ckpts.wait()
                progress.close()
                raise Interrupted(signals.signum, done)
    progress.close()
    ckpts.wait()
    return state, meta
