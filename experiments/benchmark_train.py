"""Times the ESPCN train step of ``espcn_jax.training`` against PyTorch, side by side in one run.

The step: the paper's ESPCN (5x5x64 -> tanh -> 3x3x32 -> tanh -> 3x3x(r^2) -> pixel shuffle) on
the Y channel, MSE loss, Adam, one batch of ``--batch`` LR patches of ``--patch`` pixels (x3,
16 x 32x32 by default). Variants, timed in interleaved rounds:

- ``jax``: the training engine's own jitted step (``training.step.make_steps``: donated state,
  loss and gradient norm as metrics), on a fixed device batch;
- ``jax_minimal``: the smallest equivalent jitted optax step (no metrics but the loss), to tell
  the engine's overhead from XLA's;
- ``torch`` (when ``torch`` is importable; null otherwise): the same network (``nn.Conv2d`` NCHW,
  ``nn.PixelShuffle``), ``torch.optim.Adam``, ``F.mse_loss``;
- ``matmul``: a ``--matmul_size``-square float32 ``jnp.dot``, this machine's practical peak.

Then a real training loop over ``pipeline.device_batches`` (the embedded photos, patches made by
``pipeline.PatchSampler`` on tf.data threads, prefetched to the device), in a plain
loop (dispatch step s, then wait for step s - 1), against the same loop fed one fixed
device batch: ``pipeline_overhead`` is the fraction of the loop's time spent in ``next(batches)``,
``pipeline_slowdown`` the loop's extra time per step over the fixed-batch loop.

Last, the engine's own loop (``training.loop._train``: metrics kept on the device, fetched at log
points only) on the fixed batch: ``loop_step_ms``, and ``loop_overhead``, its ratio to the bare
step timed beside it (target: within 5%).

    python experiments/benchmark_train.py --json
    python experiments/benchmark_train.py --rounds=1 --steps=5 --loop_steps=10 --json
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import flags
from flax import nnx

from espcn_jax import cli, data, flops, models, pipeline
from espcn_jax.timing import device_info, tune_malloc
from espcn_jax.training import step as step_lib

SCALE = cli.define_scale_flag()
flags.DEFINE_integer("batch", 16, "Patches per step.", lower_bound=1)
flags.DEFINE_integer("patch", 32, "LR patch side.", lower_bound=1)
flags.DEFINE_float("lr", 1e-3, "Adam learning rate (constant).", lower_bound=0.0)
flags.DEFINE_integer("steps", 20, "Timed steps per variant and round.", lower_bound=1)
flags.DEFINE_integer("rounds", 3, "Rounds over all variants (interleaved).", lower_bound=1)
flags.DEFINE_integer("warmup", 3, "Untimed steps per variant before round 1.", lower_bound=1)
flags.DEFINE_integer("loop_steps", 200, "Steps of each real-loop measurement.", lower_bound=2)
flags.DEFINE_integer("prefetch", 2, "Batches device_batches keeps ahead.", lower_bound=1)
flags.DEFINE_integer("matmul_size", 2048, "Side of the square matmul.", lower_bound=1)
flags.DEFINE_bool("torch", True, "Time PyTorch too when it is importable.")
flags.DEFINE_integer(
    "torch_threads", 0, "torch.set_num_threads (0: leave PyTorch's default).", lower_bound=0
)
DATA = cli.define_data_flags()  # the real loop's training images
SEED = cli.define_seed_flag(help="Seed of parameters and batches.")
JSON = cli.define_json_flag()
TUNE_MALLOC = cli.define_tune_malloc_flag()
FLAGS = flags.FLAGS

BACKWARD_FACTOR = 2  # backward = 2 x forward (input and weight gradients of every layer)
SPEEDUP_TARGET = 1.3
PIPELINE_TARGET = 0.05
LOOP_TARGET = 0.05  # the engine's loop within 5% of its bare step
NOTES = {
    "jax_step_ms": "training.step.make_steps(...).train: median over rounds of the median step "
    "(each step blocked on), state donated, fixed device batch",
    "jax_minimal_step_ms": "the smallest equivalent jitted optax step (donated, loss only)",
    "torch_step_ms": "PyTorch: zero_grad, forward, F.mse_loss, backward, Adam.step (null "
    "without torch)",
    "speedup_vs_torch": "torch_step_ms / jax_step_ms (target >= 1.3)",
    "gflops_per_s": "analytic forward FLOPs (flops.model_cost, per image x batch) x (1 + "
    "backward_factor) / jax_step_ms",
    "xla_step_flops": "XLA's cost_analysis of the compiled engine step (forward, backward, Adam)",
    "matmul_gflops_per_s": "2 n^3 / time of a jitted n x n float32 jnp.dot in the same run",
    "pipeline_overhead": "time in next(device_batches) / loop time, in a plain loop over "
    "device_batches (target < 0.05)",
    "loop_step_ms": "ms per step of training.loop._train (the loop train_and_evaluate runs) "
    "over the engine step, fed its fixed device batch; a log window of --loop_steps steps",
    "loop_overhead": "median over rounds of loop_step_ms / the bare engine step timed just "
    "before it (target <= 1.05)",
    "pipeline_slowdown": "(loop ms per step - same loop on a fixed device batch) / loop ms per "
    "step: includes the CPU the input pipeline takes from the step",
}


@dataclasses.dataclass(frozen=True)
class Config:
    scale: int
    batch: int
    patch: int
    lr: float
    steps: int
    rounds: int
    warmup: int
    loop_steps: int
    prefetch: int
    matmul_size: int
    torch_threads: int
    source: str
    split: str | None
    tfds_data_dir: str | None
    seed: int


def config_from_flags() -> Config:
    return Config(
        scale=SCALE.value,
        batch=FLAGS.batch,
        patch=FLAGS.patch,
        lr=FLAGS.lr,
        steps=FLAGS.steps,
        rounds=FLAGS.rounds,
        warmup=FLAGS.warmup,
        loop_steps=FLAGS.loop_steps,
        prefetch=FLAGS.prefetch,
        matmul_size=FLAGS.matmul_size,
        torch_threads=FLAGS.torch_threads,
        source=DATA["source"].value,
        split=DATA["split"].value,
        tfds_data_dir=DATA["tfds_data_dir"].value,
        seed=SEED.value,
    )


def model_config(cfg: Config) -> models.ModelConfig:
    return models.ModelConfig.espcn(scale=cfg.scale, channels=1)


def fixed_batch(cfg: Config) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(cfg.seed)
    p, r = cfg.patch, cfg.scale
    return {
        "lr": rng.uniform(0, 1, (cfg.batch, p, p, 1)).astype(np.float32),
        "hr": rng.uniform(0, 1, (cfg.batch, r * p, r * p, 1)).astype(np.float32),
    }


# --- the steps -----------------------------------------------------------------------------------
class Stepper:
    """A stateful ``step()`` around a donated jitted step: ``step()`` runs one and returns what to
    block on."""

    def __init__(self, fn, state, batch):
        self.fn, self.state, self.batch = fn, state, batch

    def step(self, batch=None):
        self.state, metrics = self.fn(self.state, self.batch if batch is None else batch)
        return metrics


def engine_stepper(cfg: Config, mesh, batch) -> tuple[Stepper, float]:
    steps = step_lib.make_steps(
        model_config(cfg), optax.adam(cfg.lr), seed=cfg.seed, mesh=mesh, loss="mse"
    )
    state = steps.init()
    batch = jax.device_put(batch, step_lib.batch_sharding(mesh))
    cost = steps.train.lower(state, batch).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    return Stepper(steps.train, state, batch), float(cost.get("flops", 0.0))


def minimal_stepper(cfg: Config, batch) -> Stepper:
    model = models.model_from_config(model_config(cfg), rngs=nnx.Rngs(cfg.seed))
    graphdef, params = nnx.split(model)
    tx = optax.adam(cfg.lr)

    @jax.jit
    def init(params):
        return params, tx.init(params)

    def train(state, batch):
        params, opt_state = state

        def loss_fn(p):
            return jnp.mean(jnp.square(nnx.merge(graphdef, p)(batch["lr"]) - batch["hr"]))

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    return Stepper(jax.jit(train, donate_argnums=0), init(params), jax.device_put(batch))


def torch_stepper(cfg: Config, batch, device: str = "cpu"):
    """The same step in PyTorch on ``device`` ("cpu", "cuda"), or None without torch.

    On CUDA each step ends in ``torch.cuda.synchronize()``, as each JAX step is blocked on.
    """
    try:
        import torch
        from torch import nn
    except ImportError:
        return None
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    torch.manual_seed(cfg.seed)
    r = cfg.scale
    net = nn.Sequential(
        nn.Conv2d(1, 64, 5, padding=2),
        nn.Tanh(),
        nn.Conv2d(64, 32, 3, padding=1),
        nn.Tanh(),
        nn.Conv2d(32, r * r, 3, padding=1),
        nn.PixelShuffle(r),
    ).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    lr = torch.from_numpy(batch["lr"].transpose(0, 3, 1, 2).copy()).to(device)
    hr = torch.from_numpy(batch["hr"].transpose(0, 3, 1, 2).copy()).to(device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else lambda: None

    class TorchStepper:
        threads = torch.get_num_threads()
        version = torch.__version__

        def step(self, _=None):
            opt.zero_grad(set_to_none=True)
            loss = nn.functional.mse_loss(net(lr), hr)
            loss.backward()
            opt.step()
            sync()
            return None

    TorchStepper.device = device

    return TorchStepper()


def matmul_stepper(cfg: Config):
    n = cfg.matmul_size
    key_a, key_b = jax.random.split(jax.random.key(cfg.seed))
    a = jax.random.normal(key_a, (n, n), jnp.float32)
    b = jax.random.normal(key_b, (n, n), jnp.float32)
    dot = jax.jit(jnp.dot)

    class MatmulStepper:
        def step(self, _=None):
            return dot(a, b)

    return MatmulStepper()


def time_steps(stepper, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        jax.block_until_ready(stepper.step())
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def time_rounds(steppers: dict, cfg: Config) -> dict[str, dict]:
    for stepper in steppers.values():
        time_steps(stepper, cfg.warmup)
    out = {name: {"rounds": [], "best": float("inf")} for name in steppers}
    for _ in range(cfg.rounds):
        for name, stepper in steppers.items():
            times = time_steps(stepper, cfg.steps)
            out[name]["rounds"].append(statistics.median(times))
            out[name]["best"] = min(out[name]["best"], min(times))
    return out


# --- the real loop -------------------------------------------------------------------------------
def run_loop(stepper: Stepper, batches, steps: int) -> dict[str, float]:
    """A plain loop: fetch, dispatch step s, then wait for step s - 1's metrics."""
    wait = 0.0
    pending = None
    t_start = time.perf_counter()
    for _ in range(steps):
        t0 = time.perf_counter()
        batch = next(batches) if batches is not None else None
        wait += time.perf_counter() - t0
        metrics = stepper.step(batch)
        if pending is not None:
            jax.device_get(pending)
        pending = metrics
    jax.device_get(pending)
    total = time.perf_counter() - t_start
    return {"ms_per_step": total / steps * 1e3, "wait_fraction": wait / total}


# --- the engine's loop --------------------------------------------------------------------------
class _Rows:
    """A MetricWriter stand-in that keeps the loop's rows in memory."""

    def __init__(self):
        self.rows: list[tuple[int, dict]] = []

    def write(self, step: int, scalars: dict) -> None:
        self.rows.append((step, scalars))

    def close(self) -> None:
        pass


def measure_engine_loop(cfg: Config, mesh, batch) -> dict:
    """``training.loop._train`` (the loop ``train_and_evaluate`` runs: on-device metrics, signal
    checks, log fetches, a checkpoint at the end) over the engine step of ``jax_step_ms``, fed
    that step's fixed device batch (``pipeline_slowdown`` measures the input pipeline). Each
    round: ``--steps`` bare steps (each blocked on, as ``jax_step_ms``), then a loop of
    ``2 x --loop_steps`` steps logged every ``--loop_steps``; its second window's steps/s (no
    compilation in it, checkpoint time excluded) gives ``loop_step_ms``."""
    import tempfile

    import ml_collections

    from espcn_jax.training import checkpoint
    from espcn_jax.training import loop as loop_lib

    steps = step_lib.make_steps(
        model_config(cfg), optax.adam(cfg.lr), seed=cfg.seed, mesh=mesh, loss="mse"
    )
    device_batch = jax.device_put(batch, step_lib.batch_sharding(mesh))
    n = cfg.loop_steps
    config = ml_collections.ConfigDict(
        {
            "train": {
                "steps": 2 * n,
                "log_every_steps": n,
                "checkpoint_every_steps": 2 * n,
                "prefetch": cfg.prefetch,
            },
            "eval": {"every_steps": 0},
        }
    )
    bare = Stepper(steps.train, steps.init(), device_batch)
    time_steps(bare, cfg.warmup)
    rounds = []
    for _ in range(cfg.rounds):
        bare_ms = statistics.median(time_steps(bare, cfg.steps))
        with tempfile.TemporaryDirectory() as workdir:
            ckpts = checkpoint.Checkpoints(workdir, keep=1)
            run = loop_lib._Run(
                config=config,
                workdir=workdir,
                model_cfg=model_config(cfg),
                mesh=mesh,
                steps=steps,
                sampler=None,
                sets=(),
                ckpts=ckpts,
                writer=_Rows(),
                batches=lambda start, num: (device_batch for _ in range(num)),
            )
            try:
                loop_lib._train(run, steps.init(), {"train_time_s": 0.0, "train_loss": None}, 0.0)
            finally:
                ckpts.close()
        (step, row) = run.writer.rows[-1]
        assert step == 2 * n, run.writer.rows
        loop_ms = 1e3 / row["steps_per_s"]
        rounds.append(
            {"bare_step_ms": bare_ms, "loop_step_ms": loop_ms, "ratio": loop_ms / bare_ms}
        )
    return {
        "loop_step_ms": statistics.median(r["loop_step_ms"] for r in rounds),
        "loop_overhead": statistics.median(r["ratio"] for r in rounds),
        "engine_loop_rounds": rounds,
    }


def load_source(cfg: Config) -> data.Source:
    return data.make_source(cfg.source, split=cfg.split, data_dir=cfg.tfds_data_dir)


def measure_pipeline(cfg: Config, stepper: Stepper, mesh, source: data.Source) -> dict:
    sampler = pipeline.PatchSampler(
        source,
        scale=cfg.scale,
        patch=cfg.patch,
        batch_size=cfg.batch,
        seed=cfg.seed,
        color="y",
    )
    warm = 5
    loops: dict[str, list[dict]] = {"pipeline": [], "fixed": []}

    def batches(i: int):
        return pipeline.device_batches(
            sampler,
            start_step=i * (cfg.loop_steps + warm),
            num_steps=cfg.loop_steps + warm,
            sharding=step_lib.batch_sharding(mesh),
            prefetch=cfg.prefetch,
        )

    for i in range(cfg.rounds):
        for name in loops:
            if name == "fixed":
                loops[name].append(run_loop(stepper, None, cfg.loop_steps))
                continue
            it = batches(i)
            run_loop(stepper, it, warm)  # tf.data start-up and first transfers
            loops[name].append(run_loop(stepper, it, cfg.loop_steps))
    ms = {k: statistics.median(x["ms_per_step"] for x in v) for k, v in loops.items()}
    return {
        "pipeline_overhead": statistics.median(x["wait_fraction"] for x in loops["pipeline"]),
        "pipeline_slowdown": (ms["pipeline"] - ms["fixed"]) / ms["pipeline"],
        "loop_ms_per_step": ms["pipeline"],
        "fixed_batch_loop_ms_per_step": ms["fixed"],
        "loop_steps_per_s": 1e3 / ms["pipeline"],
        "loop_rounds": loops,
    }


def benchmark(cfg: Config) -> dict:
    source = load_source(cfg)  # first: a bad --source fails before any compilation
    mesh = step_lib.make_mesh()
    batch = fixed_batch(cfg)
    engine, xla_step_flops = engine_stepper(cfg, mesh, batch)
    steppers = {"jax": engine, "jax_minimal": minimal_stepper(cfg, batch)}
    torch_step = torch_stepper(cfg, batch) if FLAGS.torch else None
    if torch_step is not None:
        steppers["torch"] = torch_step
    steppers["matmul"] = matmul_stepper(cfg)
    load_before = os.getloadavg()[0]
    timed = time_rounds(steppers, cfg)
    ms = {name: statistics.median(t["rounds"]) for name, t in timed.items()}
    cost = flops.model_cost(model_config(cfg), (cfg.patch, cfg.patch))
    forward = cost.flops * cfg.batch
    train_flops = forward * (1 + BACKWARD_FACTOR)
    paired = (
        [t / j for t, j in zip(timed["torch"]["rounds"], timed["jax"]["rounds"], strict=True)]
        if "torch" in ms
        else None
    )
    loop = measure_pipeline(cfg, engine, mesh, source)
    engine_loop = measure_engine_loop(cfg, mesh, batch)
    speedup = ms["torch"] / ms["jax"] if "torch" in ms else None
    return {
        "jax_step_ms": ms["jax"],
        "jax_minimal_step_ms": ms["jax_minimal"],
        "torch_step_ms": ms.get("torch"),
        "speedup_vs_torch": speedup,
        "speedup_vs_torch_paired": statistics.median(paired) if paired else None,
        "speedup_vs_torch_best": timed["torch"]["best"] / timed["jax"]["best"]
        if "torch" in ms
        else None,
        "meets_speed_target": speedup >= SPEEDUP_TARGET if speedup is not None else None,
        "gflops_per_s": train_flops / (ms["jax"] * 1e-3) / 1e9,
        "torch_gflops_per_s": train_flops / (ms["torch"] * 1e-3) / 1e9 if "torch" in ms else None,
        "matmul_ms": ms["matmul"],
        "matmul_gflops_per_s": 2 * cfg.matmul_size**3 / (ms["matmul"] * 1e-3) / 1e9,
        "train_flops": train_flops,
        "forward_flops": forward,
        "backward_factor": BACKWARD_FACTOR,
        "xla_step_flops": xla_step_flops,
        **{k: v for k, v in loop.items() if k != "loop_rounds"},
        "meets_pipeline_target": loop["pipeline_overhead"] < PIPELINE_TARGET,
        "loop_step_ms": engine_loop["loop_step_ms"],
        "loop_overhead": engine_loop["loop_overhead"],
        "meets_loop_target": engine_loop["loop_overhead"] <= 1 + LOOP_TARGET,
        "engine_loop_rounds": engine_loop["engine_loop_rounds"],
        "round_medians_ms": {name: t["rounds"] for name, t in timed.items()},
        "best_ms": {name: t["best"] for name, t in timed.items()},
        "loop_rounds": loop["loop_rounds"],
        "torch": {"version": torch_step.version, "threads": torch_step.threads}
        if torch_step is not None
        else None,
        "load_average_1min": [load_before, os.getloadavg()[0]],
    }


def print_table(report: dict) -> None:
    r = report["result"]
    torch_ms = "n/a" if r["torch_step_ms"] is None else f"{r['torch_step_ms']:.2f}"
    speedup = "n/a" if r["speedup_vs_torch"] is None else f"{r['speedup_vs_torch']:.2f}x"
    print(f"device {report['device']['device_kind']} ({report['device']['cpu_count']} CPUs)")
    print(f"jax step      {r['jax_step_ms']:8.2f} ms  ({r['gflops_per_s']:.1f} GFLOP/s)")
    print(f"jax minimal   {r['jax_minimal_step_ms']:8.2f} ms")
    print(f"torch step    {torch_ms:>8} ms  speedup {speedup}")
    print(f"matmul        {r['matmul_gflops_per_s']:8.1f} GFLOP/s")
    print(
        f"real loop     {r['loop_ms_per_step']:8.2f} ms/step, waiting for data "
        f"{100 * r['pipeline_overhead']:.1f}%, slowdown vs fixed batch "
        f"{100 * r['pipeline_slowdown']:.1f}%"
    )
    print(
        f"engine loop   {r['loop_step_ms']:8.2f} ms/step, {r['loop_overhead']:.3f}x the bare step"
    )


def main(argv: list[str]) -> None:
    cli.check_no_positional(argv)
    cfg = config_from_flags()
    malloc = tune_malloc() if TUNE_MALLOC.value else None  # first, before JAX allocates
    report = {
        "device": device_info() | {"load_average_1min": os.getloadavg()[0]},
        "config": dataclasses.asdict(cfg) | {"malloc": malloc},
        "notes": NOTES,
        "result": benchmark(cfg),
    }
    # the headline keys at the top level too, for scripts (the table prints from "result")
    head = ("jax_step_ms", "torch_step_ms", "speedup_vs_torch", "gflops_per_s")
    head += ("matmul_gflops_per_s", "pipeline_overhead", "loop_step_ms", "loop_overhead")
    cli.emit({k: report["result"][k] for k in head} | report, print_table)


if __name__ == "__main__":
    cli.run(main)
