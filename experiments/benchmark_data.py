"""Batches per second the training pipeline delivers versus ESPCN train steps per second it feeds.

Four rates, each the median over ``--windows`` windows of ``--steps`` items, the four interleaved
round by round (the machine is shared: medians and interleaving resist neighbours):

- ``sampler``: ``PatchSampler.batch`` alone (NumPy patch cutting, one thread);
- ``pipeline``: ``device_batches`` (tf.data thread pool, prefetch, ``jax.device_put``), each batch
  waited for on device;
- ``train_step``: a minimal jitted ESPCN step (5x5x64 tanh, 3x3x32 tanh, 3x3 to C*r*r, pixel shuffle;
  MSE; Adam), written here because the real train step belongs to a later issue, on one fixed batch;
- ``fed_train_step``: the same step consuming ``device_batches``; equal to ``train_step`` when the
  pipeline keeps up.

    python experiments/benchmark_data.py
    python experiments/benchmark_data.py --patch=24 --scale=3 --color=rgb --source=folder:/data/T91
"""

from __future__ import annotations

import functools
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import optax
from absl import flags
from flax import nnx

from espcn_jax import data, pipeline
from espcn_jax.cli import print_json, run
from espcn_jax.ops import pixel_shuffle

flags.DEFINE_string("source", "skimage", "Data source: skimage, folder:PATH, tfds:NAME.")
flags.DEFINE_string("split", None, "Split for skimage / TFDS sources (default train).")
flags.DEFINE_string("tfds_data_dir", None, "TFDS data directory (default: see espcn_jax.data).")
flags.DEFINE_integer("scale", 3, "Upscaling factor r.")
flags.DEFINE_integer("patch", 17, "LR patch side; HR patches are scale * patch.")
flags.DEFINE_integer("batch_size", 16, "Patches per batch.")
flags.DEFINE_enum("color", "y", list(pipeline.COLORS), "Y (MATLAB rgb2ycbcr) or RGB.")
flags.DEFINE_integer("seed", 0, "Data and parameter seed.")
flags.DEFINE_integer("steps", 50, "Batches or steps per timed window.", lower_bound=1)
flags.DEFINE_integer("windows", 5, "Timed windows per rate (median reported).", lower_bound=1)
FLAGS = flags.FLAGS


class ESPCN(nnx.Module):
    """ESPCN (Shi et al. 2016): two tanh LR convs, an LR conv to C*r*r channels, pixel shuffle."""

    def __init__(self, channels: int, r: int, *, rngs: nnx.Rngs):
        self.r = r
        self.conv1 = nnx.Conv(channels, 64, (5, 5), rngs=rngs)
        self.conv2 = nnx.Conv(64, 32, (3, 3), rngs=rngs)
        self.conv3 = nnx.Conv(32, channels * r * r, (3, 3), rngs=rngs)

    def __call__(self, x_NHWC: jax.Array) -> jax.Array:
        x = jnp.tanh(self.conv2(jnp.tanh(self.conv1(x_NHWC))))
        return pixel_shuffle(self.conv3(x), self.r)


def make_train_step(channels: int, r: int, seed: int):
    """A pure jitted ``(params, opt_state, batch) -> (params, opt_state, loss)`` and its initial state."""
    model = ESPCN(channels, r, rngs=nnx.Rngs(seed))
    graphdef, params = nnx.split(model, nnx.Param)
    optimizer = optax.adam(1e-3)

    def loss_fn(params, batch):
        y = nnx.merge(graphdef, params)(batch["lr"])
        return jnp.mean((y - batch["hr"]) ** 2)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, opt_state, batch):
        loss, grads = jax.value_and_grad(loss_fn)(params, batch)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step, params, optimizer.init(params)


def _rates(windows: dict) -> dict[str, float]:
    """Median items per second of each ``windows[name]()`` (each does ``--steps`` items).

    Rounds interleave the names, so load from other processes drifts over all of them alike.
    """
    rates: dict[str, list[float]] = {name: [] for name in windows}
    for _ in range(FLAGS.windows):
        for name, window in windows.items():
            t0 = time.perf_counter()
            window()
            rates[name].append(FLAGS.steps / (time.perf_counter() - t0))
    return {name: statistics.median(r) for name, r in rates.items()}


def main(argv: list[str]) -> None:
    del argv
    t0 = time.perf_counter()
    source = data.make_source(FLAGS.source, split=FLAGS.split, data_dir=FLAGS.tfds_data_dir)
    sampler = pipeline.PatchSampler(
        source,
        scale=FLAGS.scale,
        patch=FLAGS.patch,
        batch_size=FLAGS.batch_size,
        seed=FLAGS.seed,
        color=FLAGS.color,
    )
    prepare_s = time.perf_counter() - t0
    n = FLAGS.steps

    counter = iter(range(10**9))
    batches = pipeline.device_batches(sampler)
    jax.block_until_ready(next(batches))  # start tf.data's threads and fill the prefetch buffers
    step, params, opt_state = make_train_step(sampler.channels, FLAGS.scale, FLAGS.seed)
    fixed = jax.device_put(sampler.batch(0))
    state = {"params": params, "opt": opt_state}

    def pipeline_window():
        for _ in range(n):
            jax.block_until_ready(next(batches))

    def train_window(next_batch):
        for _ in range(n):
            state["params"], state["opt"], loss = step(state["params"], state["opt"], next_batch())
        jax.block_until_ready(loss)

    train_window(lambda: fixed)  # compile
    rates = _rates(
        {
            "sampler": lambda: [sampler.batch(next(counter)) for _ in range(n)],
            "pipeline": pipeline_window,
            "train_step": lambda: train_window(lambda: fixed),
            "fed_train_step": lambda: train_window(lambda: next(batches)),
        }
    )

    print_json(
        {
            "source": source.name,
            "images": len(source),
            "scale": FLAGS.scale,
            "patch": FLAGS.patch,
            "batch_size": FLAGS.batch_size,
            "color": FLAGS.color,
            "steps_per_window": n,
            "windows": FLAGS.windows,
            "prepare_s": round(prepare_s, 3),
            "sampler_batches_per_s": round(rates["sampler"], 1),
            "pipeline_batches_per_s": round(rates["pipeline"], 1),
            "train_steps_per_s": round(rates["train_step"], 1),
            "fed_train_steps_per_s": round(rates["fed_train_step"], 1),
            "pipeline_over_train_ratio": round(rates["pipeline"] / rates["train_step"], 2),
            "load_average_1m": round(os.getloadavg()[0], 2),
            "device": str(jax.devices()[0]),
            "cpu_count": os.cpu_count(),
            "machine": platform.machine(),
            "jax": jax.__version__,
        }
    )


if __name__ == "__main__":
    run(main)
