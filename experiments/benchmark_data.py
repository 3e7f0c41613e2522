"""Batches per second the training pipelines deliver versus ESPCN train steps per second they feed.

Six rates, each the median over ``--windows`` windows of ``--steps`` items, all interleaved round
by round (the machine is shared: medians and interleaving resist neighbours):

- ``sampler``: ``PatchSampler.batch`` alone (NumPy patch cutting, one thread);
- ``pipeline``: ``device_batches`` (tf.data thread pool, prefetch, ``jax.device_put``), each batch
  waited for on device;
- ``train_step``: a minimal jitted step of the paper's ESPCN (``models.ModelConfig.espcn``: 5x5x64
  tanh, 3x3x32 tanh, 3x3 to C*r*r, pixel shuffle; MSE; Adam) on one fixed batch;
- ``fed_train_step``: the same step consuming ``device_batches``; equal to ``train_step`` when the
  pipeline keeps up;
- ``device_sampler``: the device sampler's crop + transform kernel alone
  (``DeviceSampler.make_batch``, jitted, from the rows of ``PatchSampler.locate`` made per batch);
- ``device_fed_train_step``: the train step that makes its own batch with that kernel (one jit);
  against ``train_step`` it is the whole step with vs without the kernel.

    python experiments/benchmark_data.py --json
    python experiments/benchmark_data.py --patch=24 --scale=3 --channels=3 --source=folder:/data/T91
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

from espcn_jax import cli, data, device_sampler, models, pipeline
from espcn_jax.training import step as step_lib

DATA = cli.define_data_flags()
SCALE = cli.define_scale_flag()
CHANNELS = cli.define_channels_flag()
SEED = cli.define_seed_flag()
JSON = cli.define_json_flag()
flags.DEFINE_integer("patch", 17, "LR patch side; HR patches are scale * patch.", lower_bound=1)
flags.DEFINE_integer("batch_size", 16, "Patches per batch.", lower_bound=1)
flags.DEFINE_integer("steps", 50, "Batches or steps per timed window.", lower_bound=1)
flags.DEFINE_integer("windows", 5, "Timed windows per rate (median reported).", lower_bound=1)
FLAGS = flags.FLAGS


def make_train_step(channels: int, r: int, seed: int, batch_fn=None):
    """A pure jitted ``(params, opt_state, batch) -> (params, opt_state, loss)`` of the paper's
    ESPCN, and its initial state. ``batch_fn``: the step takes ``inputs`` and makes its batch as
    ``batch_fn(inputs)`` inside the same jit."""
    config = models.ModelConfig.espcn(scale=r, channels=channels)
    model = models.model_from_config(config, rngs=nnx.Rngs(seed))
    graphdef, params = nnx.split(model, nnx.Param)
    optimizer = optax.adam(1e-3)

    def loss_fn(params, batch):
        y = nnx.merge(graphdef, params)(batch["lr"])
        return jnp.mean((y - batch["hr"]) ** 2)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, opt_state, batch):
        batch = batch if batch_fn is None else batch_fn(batch)
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
    cli.check_no_positional(argv)
    t0 = time.perf_counter()
    source = data.make_source(
        DATA["source"].value, split=DATA["split"].value, data_dir=DATA["tfds_data_dir"].value
    )
    sampler = pipeline.PatchSampler(
        source,
        scale=SCALE.value,
        patch=FLAGS.patch,
        batch_size=FLAGS.batch_size,
        seed=SEED.value,
        color=cli.color_of(CHANNELS.value),
    )
    prepare_s = time.perf_counter() - t0
    n = FLAGS.steps

    counter = iter(range(10**9))
    batches = pipeline.device_batches(sampler)
    jax.block_until_ready(next(batches))  # start tf.data's threads and fill the prefetch buffers
    step, params, opt_state = make_train_step(sampler.channels, SCALE.value, SEED.value)
    fixed = jax.device_put(sampler.batch(0))
    state = {"params": params, "opt": opt_state}
    feed = device_sampler.DeviceSampler(sampler, step_lib.make_mesh(jax.devices()[:1]))
    make_batch = jax.jit(feed.make_batch)
    fused_step, fused_params, fused_opt = make_train_step(
        sampler.channels, SCALE.value, SEED.value, feed.make_batch
    )
    fused = {"params": fused_params, "opt": fused_opt}

    def pipeline_window():
        for _ in range(n):
            jax.block_until_ready(next(batches))

    def train_window(next_batch):
        for _ in range(n):
            state["params"], state["opt"], loss = step(state["params"], state["opt"], next_batch())
        jax.block_until_ready(loss)

    def device_sampler_window():
        for _ in range(n):
            jax.block_until_ready(make_batch(feed.inputs(next(counter))))

    def fused_window():
        for _ in range(n):
            fused["params"], fused["opt"], loss = fused_step(
                fused["params"], fused["opt"], feed.inputs(next(counter))
            )
        jax.block_until_ready(loss)

    train_window(lambda: fixed)  # compile
    device_sampler_window()
    fused_window()
    rates = _rates(
        {
            "sampler": lambda: [sampler.batch(next(counter)) for _ in range(n)],
            "pipeline": pipeline_window,
            "train_step": lambda: train_window(lambda: fixed),
            "fed_train_step": lambda: train_window(lambda: next(batches)),
            "device_sampler": device_sampler_window,
            "device_fed_train_step": fused_window,
        }
    )

    cli.emit(
        {
            "source": source.name,
            "images": len(source),
            "scale": SCALE.value,
            "patch": FLAGS.patch,
            "batch_size": FLAGS.batch_size,
            "channels": CHANNELS.value,
            "color": cli.color_of(CHANNELS.value),
            "steps_per_window": n,
            "windows": FLAGS.windows,
            "prepare_s": round(prepare_s, 3),
            "sampler_batches_per_s": round(rates["sampler"], 1),
            "pipeline_batches_per_s": round(rates["pipeline"], 1),
            "train_steps_per_s": round(rates["train_step"], 1),
            "fed_train_steps_per_s": round(rates["fed_train_step"], 1),
            "pipeline_over_train_ratio": round(rates["pipeline"] / rates["train_step"], 2),
            "device_sampler_batches_per_s": round(rates["device_sampler"], 1),
            "device_fed_train_steps_per_s": round(rates["device_fed_train_step"], 1),
            "device_over_host_sampler_ratio": round(rates["device_sampler"] / rates["sampler"], 2),
            "device_over_host_fed_ratio": round(
                rates["device_fed_train_step"] / rates["fed_train_step"], 2
            ),
            "load_average_1m": round(os.getloadavg()[0], 2),
            "device": str(jax.devices()[0]),
            "cpu_count": os.cpu_count(),
            "machine": platform.machine(),
            "jax": jax.__version__,
        },
        print_table,
    )


def print_table(result: dict) -> str:
    rows = [
        ("NumPy sampler", "batches/s", result["sampler_batches_per_s"]),
        ("tf.data pipeline", "batches/s", result["pipeline_batches_per_s"]),
        ("ESPCN train step, fixed batch", "steps/s", result["train_steps_per_s"]),
        ("ESPCN train step, fed by the pipeline", "steps/s", result["fed_train_steps_per_s"]),
        ("device sampler kernel", "batches/s", result["device_sampler_batches_per_s"]),
        ("ESPCN train step, batch made inside", "steps/s", result["device_fed_train_steps_per_s"]),
    ]
    head = (
        f"{result['source']} ({result['images']} images), x{result['scale']}, "
        f"{result['batch_size']} x {result['patch']}x{result['patch']} LR patches, "
        f"{result['color']}; median of {result['windows']} windows of "
        f"{result['steps_per_window']} on {result['device']}"
    )
    lines = [head] + [f"  {name:<38} {value:10.1f} {unit}" for name, unit, value in rows]
    lines.append(f"  pipeline / train step: {result['pipeline_over_train_ratio']:.2f}x")
    lines.append(
        f"  device / host sampler: {result['device_over_host_sampler_ratio']:.2f}x alone, "
        f"{result['device_over_host_fed_ratio']:.2f}x feeding the train step"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    cli.run(main)
