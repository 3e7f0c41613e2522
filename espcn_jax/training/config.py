"""The run configuration: validation, the typed ModelConfig it holds, and config.json."""

from __future__ import annotations

import json
import os

import jax
import ml_collections
from etils import epath

from espcn_jax import models, ops, storage

LOSSES = ("mse", "l1")
SCHEDULES = ("cosine", "linear", "espcn", "constant")
OPTIMIZERS = ("adam", "sgd")
SAMPLERS = ("host", "device")
CONFIG_FILE = "config.json"
# config.train.precision: jax.default_matmul_precision while the train step is traced.
PRECISIONS = ("default", "high", "highest", "bfloat16")
# Fields added after runs were written: their value in a config.json that lacks them (the
# behaviour those runs had), so that older run directories still restore and resume.
BACKFILL = {
    "train.precision": "default",
    "train.loss_border": 0,
    "train.tail_steps": 0,
    "train.tail_precision": "default",
}
# Fields that may change when a run is resumed: they do not change the parameters it computes.
RESUMABLE_FIELDS = (
    "eval",
    "train.log_every_steps",
    "train.checkpoint_every_steps",
    "train.keep_checkpoints",
    "train.prefetch",
)


def model_config(config: ml_collections.ConfigDict) -> models.ModelConfig:
    """``config.model`` as the typed :class:`models.ModelConfig` (ValueError names a bad field)."""
    fields = dict(config.model)
    for name in ("widths", "kernel_sizes"):
        if isinstance(fields.get(name), list):
            fields[name] = tuple(fields[name])
    pads = fields.get("upsample_padding")
    if isinstance(pads, list | tuple):
        fields["upsample_padding"] = tuple(tuple(p) for p in pads)
    unknown = set(fields) - {f.name for f in models.dataclasses.fields(models.ModelConfig)}
    if unknown:
        raise ValueError(f"config.model has unknown fields: {', '.join(sorted(unknown))}")
    return models.ModelConfig(**fields)


def color(config: ml_collections.ConfigDict) -> str:
    """The pipeline's and the protocol's channels: ``"y"`` for 1-channel models, else ``"rgb"``."""
    channels = config.model.channels
    if channels not in (1, 3):
        raise ValueError(f"config.model.channels must be 1 (Y) or 3 (RGB), got {channels!r}")
    return "y" if channels == 1 else "rgb"


def eval_sets(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    """``config.eval.sets`` (comma-separated) as a tuple of source names."""
    sets = config.eval.sets
    names = [s.strip() for s in sets.split(",")] if isinstance(sets, str) else list(sets)
    return tuple(n for n in names if n)


def precision(config: ml_collections.ConfigDict) -> str:
    """``config.train.precision`` (``"default"`` in configs written before the field existed)."""
    return config.train.get("precision", BACKFILL["train.precision"])


def tail(config: ml_collections.ConfigDict) -> tuple[int, str]:
    """``(config.train.tail_steps, config.train.tail_precision)``: the last steps of the run and
    the precision they are traced at (``(0, "default")`` in configs written before the fields)."""
    t = config.train
    return (
        t.get("tail_steps", BACKFILL["train.tail_steps"]),
        t.get("tail_precision", BACKFILL["train.tail_precision"]),
    )


def loss_border(config: ml_collections.ConfigDict) -> int:
    """``config.train.loss_border`` (0 in configs written before the field existed)."""
    return config.train.get("loss_border", BACKFILL["train.loss_border"])


def _backfill(tree: dict) -> dict:
    for dotted, value in BACKFILL.items():
        *parents, leaf = dotted.split(".")
        node = tree
        for key in parents:
            node = node.setdefault(key, {})
        node.setdefault(leaf, value)
    return tree


def check(config: ml_collections.ConfigDict, num_devices: int | None = None) -> models.ModelConfig:
    """Validates everything that can be checked before data is loaded; returns the ModelConfig."""
    model_cfg = model_config(config)
    color(config)
    t, o = config.train, config.opt
    for name in ("steps", "batch_size", "patch", "log_every_steps", "checkpoint_every_steps"):
        ops.check_positive_int(t[name], f"config.train.{name}")
    ops.check_positive_int(t.keep_checkpoints, "config.train.keep_checkpoints")
    if not isinstance(t.seed, int) or t.seed < 0:
        raise ValueError(f"config.train.seed must be an integer >= 0, got {t.seed!r}")
    if precision(config) not in PRECISIONS:
        raise ValueError(
            f"config.train.precision must be one of {PRECISIONS}, got {precision(config)!r}"
        )
    tail_steps, tail_precision = tail(config)
    if (
        not isinstance(tail_steps, int)
        or isinstance(tail_steps, bool)
        or not 0 <= tail_steps <= t.steps
    ):
        raise ValueError(
            f"config.train.tail_steps must be an integer from 0 to config.train.steps "
            f"({t.steps}), got {tail_steps!r}"
        )
    if tail_precision not in PRECISIONS:
        raise ValueError(
            f"config.train.tail_precision must be one of {PRECISIONS}, got {tail_precision!r}"
        )
    if t.loss not in LOSSES:
        raise ValueError(f"config.train.loss must be one of {LOSSES}, got {t.loss!r}")
    border, hr_patch = loss_border(config), model_cfg.scale * t.patch
    if not isinstance(border, int) or isinstance(border, bool) or not 0 <= 2 * border < hr_patch:
        raise ValueError(
            f"config.train.loss_border must be an integer >= 0 that leaves pixels of the "
            f"{hr_patch} x {hr_patch} HR patch (scale x config.train.patch), got {border!r}"
        )
    if o.schedule not in SCHEDULES:
        raise ValueError(f"config.opt.schedule must be one of {SCHEDULES}, got {o.schedule!r}")
    if o.optimizer not in OPTIMIZERS:
        raise ValueError(f"config.opt.optimizer must be one of {OPTIMIZERS}, got {o.optimizer!r}")
    if not o.lr > 0 or not o.final_lr > 0:
        raise ValueError(f"config.opt.lr and final_lr must be > 0, got {o.lr!r}, {o.final_lr!r}")
    if o.clip_norm < 0 or o.warmup_steps < 0:
        raise ValueError("config.opt.clip_norm and warmup_steps must be >= 0")
    sampler = config.data.get("sampler", "host")  # absent from runs made before it
    if sampler not in SAMPLERS:
        raise ValueError(f"config.data.sampler must be one of {SAMPLERS}, got {sampler!r}")
    max_mb = config.data.get("device_sampler_max_mb", 0.0)
    if not isinstance(max_mb, int | float) or not max_mb >= 0:
        raise ValueError(f"config.data.device_sampler_max_mb must be >= 0, got {max_mb!r}")
    if config.eval.every_steps < 0:
        raise ValueError(f"config.eval.every_steps must be >= 0, got {config.eval.every_steps!r}")
    devices = jax.device_count() if num_devices is None else num_devices
    if t.batch_size % devices:
        raise ValueError(
            f"config.train.batch_size={t.batch_size} is not divisible by the {devices} devices "
            "the batch is split over"
        )
    return model_cfg


def to_json(config: ml_collections.ConfigDict) -> str:
    return config.to_json_best_effort(indent=2, sort_keys=True)


def _plain(config) -> dict:
    """JSON round trip, so that a config compares equal to the one read back from config.json."""
    return json.loads(config if isinstance(config, str) else to_json(config))


def _drop(tree: dict, dotted: str) -> None:
    *parents, leaf = dotted.split(".")
    for key in parents:
        tree = tree.get(key, {})
    tree.pop(leaf, None)


def differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Dotted names of the fields where two plain config trees differ."""
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key, "<missing>"), b.get(key, "<missing>")
        if isinstance(va, dict) and isinstance(vb, dict):
            out += differences(va, vb, f"{prefix}{key}.")
        elif va != vb:
            out.append(f"{prefix}{key}")
    return out


def write_workdir_config(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> None:
    """Writes ``config.json`` into a new run directory (atomically); checks an existing one."""
    workdir = epath.Path(workdir)
    path = workdir / CONFIG_FILE
    check_workdir_config(config, workdir)
    if path.exists() or jax.process_index() != 0:
        return
    workdir.mkdir(parents=True, exist_ok=True)
    storage.write_atomic(path, to_json(config))


def check_workdir_config(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> None:
    """ValueError unless ``workdir`` is new or holds a run of the same config (up to
    :data:`RESUMABLE_FIELDS`): another run is never overwritten."""
    workdir = epath.Path(workdir)
    path = workdir / CONFIG_FILE
    if workdir.exists() and not workdir.is_dir():
        raise ValueError(f"--workdir {workdir} is not a directory")
    if not path.exists():
        if (workdir / "checkpoints").exists():
            raise ValueError(
                f"{workdir} holds checkpoints but no {CONFIG_FILE}; refusing to use it"
            )
        return
    try:
        old = _backfill(_plain(path.read_text()))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} cannot be read ({e}); refusing to use {workdir}") from None
    new = _backfill(_plain(config))
    for field in RESUMABLE_FIELDS:
        _drop(old, field)
        _drop(new, field)
    diff = differences(old, new)
    if diff:
        raise ValueError(
            f"workdir {workdir} holds a run of a different config (differs in "
            f"{', '.join(diff[:5])}); use a new --workdir"
        )


def load(workdir: str | os.PathLike) -> ml_collections.ConfigDict:
    """The resolved config of the run in ``workdir`` (its ``config.json``)."""
    path = epath.Path(workdir) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {CONFIG_FILE} in {workdir}: not a training run directory")
    try:
        return ml_collections.ConfigDict(_backfill(json.loads(path.read_text())))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
