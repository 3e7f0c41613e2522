"""What a trained point costs and scores on the current device, apart from training itself.

- cost: conv multiply-adds (the budget convention), useful FLOPs, XLA's count, parameters,
  receptive field in LR pixels;
- speed: forward latency at 1080p output, throughput (images/s at a batch);
- memory: the forward pass's footprint from XLA's compiled memory analysis (arguments + outputs +
  temporaries - aliased), per call;
- quality: the evaluation protocol on each validation set, and the final training loss on a fixed
  training subset (the same patches for every point), so that fitting capacity and
  generalisation can be told apart;
- convergence: :func:`curve`, validation PSNR/SSIM (from the engine's ``metrics.jsonl``) and the
  training subset's PSNR (from the checkpoint kept at each evaluation step) over training;
- speed compared fairly: :func:`interleaved_latency`, every model timed in round-robin rounds in
  one process (``latency.json``).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from flax import nnx

from espcn_jax import data, evaluate, flops, images, models, pipeline, timing

TRAIN_SUBSET_SEED = 2**31 - 1  # the fixed training subset's sampler seed (no point trains with it)


def _forward(model: nnx.Module):
    graphdef, state = nnx.split(model)
    return jax.jit(lambda state, x: nnx.merge(graphdef, state)(x)), state


def compiled_stats(model: nnx.Module, lr_shape) -> dict:
    """XLA's FLOP count and compiled memory analysis of one jitted forward pass on ``lr_shape``.

    Memory in bytes: arguments + outputs + temporaries - aliased (``peak_bytes``), and each part.
    """
    fwd, state = _forward(model)
    x = jax.ShapeDtypeStruct(tuple(lr_shape), jnp.float32)
    compiled = fwd.lower(state, x).compile()
    cost = compiled.cost_analysis()
    if isinstance(cost, list | tuple):  # older jax: one dict per module
        cost = {"flops": sum(c.get("flops", 0.0) for c in cost)}
    out = {"flops_xla": float((cost or {}).get("flops", 0.0))}
    stats = compiled.memory_analysis()
    if stats is None:  # some backends report nothing
        return out | {"peak_bytes": None}
    fields = ("argument", "output", "temp", "alias", "generated_code")
    out |= {f"{f}_bytes": int(getattr(stats, f"{f}_size_in_bytes", 0) or 0) for f in fields}
    out["peak_bytes"] = (
        out["argument_bytes"] + out["output_bytes"] + out["temp_bytes"] - out["alias_bytes"]
    )
    return out


def throughput(model: nnx.Module, batch_shape, repeats: int) -> dict:
    """Images per second of the jitted forward pass on a batch of ``batch_shape``."""
    fwd, state = _forward(model)
    x = jax.random.normal(jax.random.key(0), tuple(batch_shape), jnp.float32)
    t = timing.time_fn(fwd, state, x, repeats=repeats)
    return {
        "batch": int(batch_shape[0]),
        "lr_size": list(batch_shape[1:3]),
        "median_ms": t["median_ms"],
        "images_per_s": batch_shape[0] / (t["median_ms"] / 1e3),
    }


def cost(
    model: nnx.Module,
    lr_size,
    *,
    latency_repeats: int,
    throughput_batch: int,
    throughput_lr_size,
    timed: bool = True,
) -> dict:
    """Cost, speed and memory of ``model`` on this device (module docstring). ``timed=False``
    skips the point's own latency and throughput timing (``latency_ms``, ``latency``,
    ``throughput_images_per_s`` and ``throughput`` are None): a sweep that times every point
    interleaved afterwards (``latency.json``) needs no second, point-by-point timing."""
    config = model.config
    h, w = lr_size
    shape = (1, h, w, config.channels)
    analytic = flops.model_cost(config, (h, w))
    macs = analytic.conv_macs
    compiled = compiled_stats(model, shape)
    latency = tput = None
    if timed:
        latency = flops.measure_latency(model, shape, repeats=latency_repeats)
        tput = throughput(
            model, (throughput_batch, *throughput_lr_size, config.channels), latency_repeats
        )
    return {
        "params": flops.count_params(model),
        "lr_size": [h, w],
        "conv_macs": macs,
        "conv_macs_per_lr_pixel": macs / (h * w),
        "flops": analytic.flops,
        "flops_per_lr_pixel": analytic.flops / (h * w),
        "flops_xla": compiled["flops_xla"],
        "receptive_field_lr": models.receptive_field(config),
        "latency_ms": latency["median_ms"] if latency else None,
        "latency": latency,
        "throughput_images_per_s": tput["images_per_s"] if tput else None,
        "throughput": tput,
        "memory_bytes": compiled["peak_bytes"],
        "memory": {k: v for k, v in compiled.items() if k != "flops_xla"},
    }


# --- quality ---------------------------------------------------------------------------------


def load_set(name: str) -> data.Source:
    """A validation set named as the training engine names them (``config.eval.sets``):
    ``skimage:validation``, ``folder:PATH``, ``tfds:NAME`` (its validation split)."""
    from espcn_jax.training import evaluation

    return evaluation.load_set(name)


def bicubic_scores(source: data.Source, scale: int, channels: int) -> dict:
    """The protocol's PSNR/SSIM of bicubic upscaling (the floor every family must clear), by the
    same :func:`evaluate.evaluate_source` that scores the trained models (grey images as grey),
    with its ``per_image`` scores (``{"names", "psnr", "ssim"}`` lists in the set's order)."""
    mode = "y" if channels == 1 else "rgb"
    result = evaluate.evaluate_source(evaluate.bicubic_model(scale), source, scale, channels=mode)
    return {k: result[k] for k in ("psnr", "ssim", "per_image")}


def train_subset(
    source: data.Source, *, scale: int, channels: int, patch: int, batch: int, batches: int
) -> list[dict[str, np.ndarray]]:
    """Fixed training batches (one sampler seed for every point, never a training seed)."""
    sampler = pipeline.PatchSampler(
        source,
        scale=scale,
        patch=patch,
        batch_size=batch,
        seed=TRAIN_SUBSET_SEED,
        color="y" if channels == 1 else "rgb",
    )
    return [sampler.batch(step) for step in range(batches)]


def train_loss(model: nnx.Module, subset: list[dict[str, np.ndarray]]) -> dict:
    """Mean squared error (pixel range [0, 1]) on the fixed subset, and its PSNR in dB."""
    fwd, state = _forward(model)
    with jax.default_matmul_precision("highest"):
        mse = float(
            np.mean([float(jnp.mean((fwd(state, b["lr"]) - b["hr"]) ** 2)) for b in subset])
        )
    return {"mse": mse, "psnr": -10 * math.log10(mse) if mse > 0 else math.inf}


def tied_check(model: nnx.Module, source: data.Source, scale: int) -> dict:
    """An ``hr`` net against its exact LR-space image (``lr_tied``) on ``source``'s first image:
    the protocol's PSNR of both and their largest output difference (float rounding, if exact)."""
    tied = models.hr_to_lr_tied(model)
    one = data.Source(
        source.name, source.hr[:1], source.names[:1], None if source.lr is None else source.lr[:1]
    )
    a = evaluate.evaluate_source(model, one, scale)
    b = evaluate.evaluate_source(tied, one, scale)
    hr = images.mod_crop(source.hr[0], scale)
    channels = "y" if model.config.channels == 1 else "rgb"
    lr = jnp.asarray(evaluate.make_lr(hr, scale, channels, True))[None] / 255.0
    with jax.default_matmul_precision("highest"):
        diff = float(jnp.max(jnp.abs(model(lr) - tied(lr))))
    return {"psnr_hr": a["psnr"], "psnr_lr_tied": b["psnr"], "max_abs_output_diff": diff}


# --- convergence -----------------------------------------------------------------------------


def eval_rows(metrics_path: str | epath.Path, sets) -> dict[int, dict]:
    """``{step: {set: {"psnr", "ssim"}}}`` from a run's ``metrics.jsonl`` (rows ``eval/<set>/psnr``
    and ``eval/<set>/ssim``); steps where some set is missing are left out; later rows win."""
    path = epath.Path(metrics_path)
    if not path.exists():
        return {}
    out: dict[int, dict] = {}
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        for name in sets:
            psnr, ssim = row.get(f"eval/{name}/psnr"), row.get(f"eval/{name}/ssim")
            if psnr is not None:
                out.setdefault(int(row["step"]), {})[name] = {"psnr": psnr, "ssim": ssim}
    return {step: evals for step, evals in sorted(out.items()) if set(evals) == set(sets)}


def curve(
    metrics_path: str | epath.Path,
    sets,
    subset: list[dict[str, np.ndarray]],
    model_at: Callable[[int], nnx.Module | None],
) -> list[dict]:
    """The convergence curve: per evaluation step, the validation scores of every set and the
    training subset's PSNR of the checkpoint of that step (None where none is kept)."""
    points = []
    for step, evals in eval_rows(metrics_path, sets).items():
        model = model_at(step)
        train_psnr = None
        if model is not None:
            train_psnr = train_loss(model, subset)["psnr"]
        points.append({"step": step, "eval": evals, "train_psnr": train_psnr})
    return points


# --- latency, interleaved ----------------------------------------------------------------------


def round_robin(
    calls: Mapping[str, Callable[[], object]],
    *,
    rounds: int,
    repeats: int,
    warmup: int = 2,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, list[float]]:
    """Times every call interleaved: ``warmup`` untimed calls each, then ``rounds`` rounds; in
    round ``k`` the calls run in the order rotated by ``k`` (no call always first after another),
    each ``repeats`` times in a row. Each call must block until its result is ready. Returns the
    samples in milliseconds per name, in the order taken."""
    if rounds < 1 or repeats < 1:
        raise ValueError(f"rounds and repeats must be >= 1, got {rounds} and {repeats}")
    names = list(calls)
    for name in names:
        for _ in range(warmup):
            calls[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    for k in range(rounds):
        shift = k % len(names) if names else 0
        for name in names[shift:] + names[:shift]:
            for _ in range(repeats):
                t0 = clock()
                calls[name]()
                samples[name].append((clock() - t0) * 1e3)
    return samples


def interleaved_latency(
    models_by_id: Mapping[str, nnx.Module], lr_size, *, rounds: int, repeats: int
) -> dict:
    """Forward latency of every model at ``lr_size`` (batch 1), timed interleaved in this process
    (:func:`round_robin`): ``{"lr_size": "HxW", "repeats", "rounds", "points": {id: {"median_ms",
    "samples_ms"}}}`` (the ``latency.json`` format)."""
    h, w = lr_size
    calls = {}
    for pid, model in models_by_id.items():
        fwd, state = _forward(model)
        x = jax.random.normal(jax.random.key(0), (1, h, w, model.config.channels), jnp.float32)
        calls[pid] = lambda fwd=fwd, state=state, x=x: jax.block_until_ready(fwd(state, x))
    samples = round_robin(calls, rounds=rounds, repeats=repeats)
    return {
        "lr_size": f"{h}x{w}",
        "repeats": repeats,
        "rounds": rounds,
        "points": {
            pid: {"median_ms": float(np.median(ms)), "samples_ms": ms}
            for pid, ms in samples.items()
        },
    }
