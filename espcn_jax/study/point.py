"""Run one point of a sweep: train it with the engine, then evaluate and measure it here.

The point trains in ``<workdir>/points/<point_id>`` through the training engine
(:func:`espcn_jax.training.train_and_evaluate`, which resumes from the last checkpoint there, so a
half-trained point continues where it stopped), then the trained model is restored and measured
(:mod:`espcn_jax.study.measure`). The record is one flat dict (top-level keys for the report, the
details beside them); :func:`failure_record` is what a point that raised leaves instead.
"""

from __future__ import annotations

import copy
import functools
import os
import platform
import subprocess
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import flax
import jax
import ml_collections
from etils import epath

from espcn_jax import data, flops, models
from espcn_jax.study import measure, results
from espcn_jax.study.grid import Point, model_dict, names

TrainFn = Callable[[ml_collections.ConfigDict, str], dict]
RestoreFn = Callable[..., tuple]  # (workdir, step=None) -> (model, config)
METRICS_FILE = "metrics.jsonl"  # the engine's (espcn_jax.training.writers.METRICS_FILE)


def eval_sets(sweep: ml_collections.ConfigDict) -> tuple[str, ...]:
    """The validation set names (``eval.sets``: a tuple or a comma-separated string)."""
    sets = names(sweep.eval.sets)
    extra = sweep.eval.get("set5", "")  # a Set5 folder, where the user has one
    if extra:
        sets += (f"folder:{extra}",)
    if not sets:
        raise ValueError("eval.sets is empty: give at least one validation set")
    return sets


def point_dir(workdir: str | os.PathLike, point: Point) -> epath.Path:
    return epath.Path(workdir) / "points" / point.point_id


def merge(target: ml_collections.ConfigDict, overrides: dict, where: str = "engine") -> None:
    """Recursively sets ``overrides`` onto ``target``; an unknown key is a ValueError."""
    for key, value in overrides.items():
        if key not in target:
            raise ValueError(f"sweep config {where}.{key}: the training config has no such field")
        if isinstance(value, dict) and isinstance(target[key], ml_collections.ConfigDict):
            merge(target[key], value, f"{where}.{key}")
        else:
            target[key] = value


def curve_interval(steps: int, curve_points: int) -> int:
    """Steps between two points of the convergence curve (0: none but the final evaluation)."""
    if curve_points < 0:
        raise ValueError(f"eval.curve_points must be >= 0, got {curve_points}")
    return max(1, steps // curve_points) if curve_points else 0


def training_config(
    point: Point, sweep: ml_collections.ConfigDict, base: ml_collections.ConfigDict
) -> ml_collections.ConfigDict:
    """The engine config of ``point``: ``base`` + the point's model, steps, seed and peak
    learning rate, the sweep's training data and validation sets + the sweep's ``engine``
    overrides; then what is defined relative to the run's length, so that a cell at k x the steps
    differs in nothing else: the warm-up (``schedule.warmup_fraction`` of the steps; the cosine
    decay already ends at the last step) and the curve (``eval.curve_points`` evaluations and
    checkpoints, all kept)."""
    cfg = copy.deepcopy(base)
    with cfg.unlocked():
        for key, value in model_dict(point.model).items():
            cfg.model[key] = tuple(value) if isinstance(value, list) else value
        cfg.train.steps = point.steps
        cfg.train.seed = point.seed
        cfg.data.source = sweep.data.train
        if sweep.data.data_dir:
            cfg.data.data_dir = sweep.data.data_dir
        cfg.eval.sets = ",".join(eval_sets(sweep))
    merge(cfg, sweep.engine.to_dict())
    with cfg.unlocked():
        if point.lr is not None:
            cfg.opt.lr = point.lr
        fraction = sweep.get("schedule", {}).get("warmup_fraction")
        if fraction is not None:
            if not 0 <= fraction < 1:
                raise ValueError(f"schedule.warmup_fraction must be in [0, 1), got {fraction!r}")
            cfg.opt.warmup_steps = int(round(fraction * point.steps))
        interval = curve_interval(point.steps, int(sweep.eval.get("curve_points", 0) or 0))
        if interval:
            cfg.eval.every_steps = interval
            cfg.train.checkpoint_every_steps = interval
            cfg.train.keep_checkpoints = point.steps // interval + 2
    return cfg


@functools.cache
def provenance() -> dict:
    """Git commit of the package's checkout (None outside one), versions, device."""
    root = Path(__file__).resolve().parents[2]

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(
                ["git", *args], cwd=root, capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no") if commit else None
    devices = jax.local_devices()
    return {
        "git_commit": commit,
        "git_dirty": bool(dirty) if commit else None,
        "versions": {
            "jax": jax.__version__,
            "flax": flax.__version__,
            "python": platform.python_version(),
        },
        "device": {
            "platform": jax.default_backend(),
            "kind": devices[0].device_kind,
            "count": jax.device_count(),
            "processes": jax.process_count(),
            "host": platform.node(),
        },
    }


class Context:
    """What every point of a sweep shares: the sweep config, the engine, the loaded data."""

    def __init__(
        self,
        sweep: ml_collections.ConfigDict,
        base_config: ml_collections.ConfigDict,
        workdir: str | os.PathLike,
        *,
        train_fn: TrainFn | None = None,
        restore_fn: RestoreFn | None = None,
    ):
        self.sweep, self.base_config, self.workdir = sweep, base_config, epath.Path(workdir)
        if train_fn is None or restore_fn is None:
            from espcn_jax import training  # the engine; imported only when a sweep trains

            train_fn = train_fn or training.train_and_evaluate
            restore_fn = restore_fn or training.restore
        self.train_fn, self.restore_fn = train_fn, restore_fn
        self._sets: dict | None = None
        self._subset: list | None = None
        self._bicubic: dict | None = None

    @property
    def sets(self) -> dict[str, data.Source]:
        if self._sets is None:
            self._sets = {name: measure.load_set(name) for name in eval_sets(self.sweep)}
        return self._sets

    @property
    def bicubic(self) -> dict[str, dict]:
        """Bicubic's scores on every validation set (computed once per sweep)."""
        if self._bicubic is None:
            m = self.sweep.model
            self._bicubic = {
                name: measure.bicubic_scores(source, m.scale, m.channels)
                for name, source in self.sets.items()
            }
        return self._bicubic

    @property
    def subset(self) -> list:
        if self._subset is None:
            s, m = self.sweep, self.sweep.measure
            source = _train_source(s.data.train, s.data.data_dir)
            self._subset = measure.train_subset(
                source,
                scale=s.model.scale,
                channels=s.model.channels,
                patch=m.train_loss_patch,
                batch=m.train_loss_batch,
                batches=m.train_loss_batches,
            )
        return self._subset


def _train_source(name: str, data_dir: str) -> data.Source:
    if name.startswith("folder"):
        return data.make_source(name)
    return data.make_source(name, split="train", data_dir=data_dir or None)


def run_point(point: Point, ctx: Context) -> dict:
    """Trains (or resumes) ``point``, then evaluates and measures it: its ``ok`` record."""
    start = time.time()
    workdir = point_dir(ctx.workdir, point)
    config = training_config(point, ctx.sweep, ctx.base_config)
    final = ctx.train_fn(config, os.fspath(workdir))
    model, _ = ctx.restore_fn(os.fspath(workdir))
    m, scale = ctx.sweep.measure, ctx.sweep.model.scale
    evals = {name: final["eval"][name] for name in eval_sets(ctx.sweep)}
    with jax.default_matmul_precision("highest"):  # numbers that compare across devices
        loss = measure.train_loss(model, ctx.subset)
        curve = measure.curve(
            workdir / METRICS_FILE, eval_sets(ctx.sweep), ctx.subset,
            functools.partial(_model_at, ctx, workdir, point.steps, model),
        )  # fmt: skip
    cost = {}
    if point.role != "lr_search":  # the search scores training fit only
        cost = measure.cost(
            model,
            flops.parse_size(m.latency_lr_size, "measure.latency_lr_size"),
            latency_repeats=m.latency_repeats,
            throughput_batch=m.throughput_batch,
            throughput_lr_size=flops.parse_size(m.throughput_lr_size, "measure.throughput_lr_size"),
            timed=bool(m.get("point_latency", True)),
        )
    first = eval_sets(ctx.sweep)[0]
    record = {
        **point.as_dict(),
        "lr": float(config.opt.lr),  # the peak rate this run used
        "warmup_steps": int(config.opt.get("warmup_steps", 0)),
        "receptive_field": models.receptive_field(point.model),
        "curve": curve,
        "status": results.STATUS_OK,
        "psnr": evals[first]["psnr"],
        "ssim": evals[first]["ssim"],
        "eval_set": first,
        **cost,
        "train_loss": loss["mse"],
        "train_loss_psnr": loss["psnr"],
        "train_time_s": final.get("train_time_s"),
        "train_steps": final.get("step"),
        "train_loss_last": final.get("train_loss"),
        "eval": evals,
        # what the train step computed in: config.train.precision on this backend (DEFAULT is
        # one-pass bfloat16 on TPU, TF32 on recent NVIDIA GPUs, float32 on CPU)
        "precision": config.train.get("precision", "default"),
        "backend": jax.default_backend(),
        "device_kind": jax.local_devices()[0].device_kind,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "bicubic": ctx.bicubic,
        "bicubic_psnr": ctx.bicubic[first]["psnr"],
    }
    if ctx.sweep.eval.tied_check and point.family == "hr" and point.role != "lr_search":
        with jax.default_matmul_precision("highest"):
            record["tied_check"] = measure.tied_check(model, ctx.sets[first], scale)
    record.update(_common(point, config, ctx, start))
    return record


def _model_at(ctx: Context, workdir, steps: int, final_model, step: int):
    """The model of the checkpoint at ``step`` (the final one is already restored); None when no
    checkpoint of that step is kept."""
    if step == steps:
        return final_model
    try:
        model, _ = ctx.restore_fn(os.fspath(workdir), step=step)
    except (ValueError, FileNotFoundError):
        return None
    return model


def failure_record(point: Point, ctx: Context, error: BaseException, start: float) -> dict:
    """The record of a point that raised: its coordinates, the error and the traceback."""
    try:
        config = training_config(point, ctx.sweep, ctx.base_config)
    except Exception:  # the config itself may be what failed
        config = None
    first = str(error).splitlines()[0] if str(error) else ""
    return {
        **point.as_dict(),
        "status": results.STATUS_FAILED,
        "error": f"{type(error).__name__}: {first}",
        "traceback": "".join(traceback.format_exception(error))[-4000:],
        **_common(point, config, ctx, start),
    }


def _common(point: Point, config, ctx: Context, start: float) -> dict:
    return {
        "model": model_dict(point.model),
        "config": config.to_dict() if config is not None else None,
        "sweep": {
            k: ctx.sweep[k].to_dict()
            for k in ("model", "budget", "data", "engine", "eval", "measure")
            if k in ctx.sweep
        },
        "workdir": os.fspath(point_dir(ctx.workdir, point)),
        **provenance(),
        "started": start,
        "wall_s": time.time() - start,
    }
