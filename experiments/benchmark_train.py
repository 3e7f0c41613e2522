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

Routes (issue 14: every way of running the step that was tried, timed in the same interleaved
rounds; ``routes`` in the report): ``lax`` (XLA's own convolutions), ``onednn`` (the convolutions
as oneDNN custom calls, ``xla_cpu.use_onednn_convs``; the CPU default where the library was
built), ``onednn_bf16`` (the same with bfloat16 operands, ``make_steps(precision="bfloat16")``,
on CPUs with bfloat16 instructions; compared with PyTorch under bfloat16 autocast too),
``*_scan4`` (4 steps per dispatch, ``lax.scan`` over 4 batches), ``xla_no_ynn`` (XLA's
convolutions with its YNNPACK fusions off, an XLA flag read at backend start, so timed in a child
process). ``pieces`` times the ESPCN convolutions one by one (forward, input and weight
gradients) for lax, oneDNN and PyTorch: where each route's time goes.

Then a real training loop over ``pipeline.device_batches`` (the embedded photos, patches made by
``pipeline.PatchSampler`` on tf.data threads, prefetched to the device), in a plain
loop (dispatch step s, then wait for step s - 1), against the same loop fed one fixed
device batch: ``pipeline_overhead`` is the fraction of the loop's time spent in ``next(batches)``,
``pipeline_slowdown`` the loop's extra time per step over the fixed-batch loop.

Last, the engine's own loop (``training.loop._train``: metrics kept on the device, fetched at log
points only) on the fixed batch: ``loop_step_ms``, and ``loop_overhead``, its ratio to the bare
step timed beside it (target: within 5%).

    python experiments/benchmark_train.py --json
    python experiments/benchmark_train.py --rounds=1 --steps=5 --loop_steps=10 --loop_rounds=1 --json
    ESPCN_JAX_NO_ONEDNN=1 python experiments/benchmark_train.py --json  # as without the library
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import flags
from flax import nnx

from espcn_jax import cli, cpu_conv, data, flops, models, pipeline
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
flags.DEFINE_integer(
    "loop_rounds", 7, "Rounds of the engine-loop measurement (loop_overhead).", lower_bound=1
)
flags.DEFINE_integer(
    "loop_bare_steps",
    60,
    "Bare steps timed just before and just after each engine-loop round.",
    lower_bound=1,
)
flags.DEFINE_integer("prefetch", 2, "Batches device_batches keeps ahead.", lower_bound=1)
flags.DEFINE_integer("matmul_size", 2048, "Side of the square matmul.", lower_bound=1)
flags.DEFINE_bool("torch", True, "Time PyTorch too when it is importable.")
flags.DEFINE_integer(
    "torch_threads", 0, "torch.set_num_threads (0: leave PyTorch's default).", lower_bound=0
)
flags.DEFINE_bool("routes", True, "Time the routes of issue 14 (lax, oneDNN, scan, XLA flags).")
flags.DEFINE_bool("pieces", True, "Time the ESPCN convolutions one by one (lax, oneDNN, torch).")
flags.DEFINE_string("route_child", None, "Internal: serve one route's timings on stdin/stdout.")
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
    "torch_bf16_step_ms": "the same PyTorch step with its forward under torch.autocast(bfloat16) "
    "(null without torch, with --noroutes, or on a CPU without bfloat16 instructions); the "
    "onednn_bf16 route's peer",
    "speedup_vs_torch": "torch_step_ms / jax_step_ms (target >= 1.3)",
    "gflops_per_s": "analytic forward FLOPs (flops.model_cost, per image x batch) x (1 + "
    "backward_factor) / jax_step_ms",
    "xla_step_flops": "XLA's cost_analysis of the compiled engine step in plain lax (forward, "
    "backward, Adam; XLA counts nothing for a custom call)",
    "matmul_gflops_per_s": "2 n^3 / time of a jitted n x n float32 jnp.dot in the same run",
    "pipeline_overhead": "time in next(device_batches) / loop time, in a plain loop over "
    "device_batches (target < 0.05)",
    "loop_step_ms": "ms per step of training.loop._train (the loop train_and_evaluate runs) "
    "over the engine step, fed its fixed device batch; a log window of --loop_steps steps",
    "loop_overhead": "median over --loop_rounds rounds of loop_step_ms / the bare engine step "
    "timed just before and just after it (the mean of the two medians of --loop_bare_steps "
    "steps; target <= 1.05)",
    "routes": "each route's median step (ms), torch_step_ms / step_ms, and the median of the "
    "per-round ratios; jax_step_ms is the route the engine uses by default here (default_route)",
    "pieces": "median ms of one ESPCN conv's forward, input gradient (dx) and weight gradient (dw); "
    "torch: forward, and forward + both gradients",
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
    loop_rounds: int
    loop_bare_steps: int
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
        loop_rounds=FLAGS.loop_rounds,
        loop_bare_steps=FLAGS.loop_bare_steps,
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


def engine_stepper(
    cfg: Config, mesh, batch, onednn_convs: bool = True, precision: str = "default"
) -> tuple[Stepper, float]:
    steps = step_lib.make_steps(
        model_config(cfg),
        optax.adam(cfg.lr),
        seed=cfg.seed,
        mesh=mesh,
        loss="mse",
        onednn_convs=onednn_convs,
        precision=precision,
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


def torch_stepper(cfg: Config, batch, device: str = "cpu", bf16: bool = False):
    """The same step in PyTorch on ``device`` ("cpu", "cuda"), or None without torch.
    ``bf16``: the forward and backward under ``torch.autocast(device, torch.bfloat16)`` (bfloat16
    convolutions; float32 parameters, loss and Adam), PyTorch's mixed precision.

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
            with torch.autocast(device.split(":")[0], torch.bfloat16, enabled=bf16):
                sr = net(lr)
            loss = nn.functional.mse_loss(sr.float(), hr)
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
    """ms per step of ``n`` calls (a stepper that runs k steps per call: ``steps_per_call``; one
    timed elsewhere, a child process: ``time_steps``)."""
    if hasattr(stepper, "time_steps"):
        return stepper.time_steps(n)
    per_call = getattr(stepper, "steps_per_call", 1)
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        jax.block_until_ready(stepper.step())
        out.append((time.perf_counter() - t0) * 1e3 / per_call)
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


# --- routes (issue 14): each way of running the step, timed in the same rounds -------------------
SCAN_K = 4  # steps per dispatch of the scan routes
XLA_FLAG_ROUTES = {  # XLA:CPU options (read at backend start: a child process each)
    "xla_no_ynn": "--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_INVALID",
}
ROUTE = "route:"  # prefix of the route steppers among the timed ones
ROUTE_NOTES = {
    "lax": "the engine step with XLA's own convolutions (make_steps(onednn_convs=False))",
    "onednn": "the engine step with oneDNN custom-call convolutions (xla_cpu.use_onednn_convs)",
    "onednn_bf16": "onednn with bfloat16 operands and float32 accumulation (make_steps("
    "precision='bfloat16'), on CPUs with bfloat16 instructions: changes the arithmetic; "
    "speedup_vs_torch_bf16 compares it with PyTorch under bfloat16 autocast",
    "lax_scan4": f"lax, {SCAN_K} steps per dispatch (lax.scan over {SCAN_K} batches), per step",
    "onednn_scan4": f"onednn, {SCAN_K} steps per dispatch (lax.scan over {SCAN_K} batches), per step",
    "xla_no_ynn": "lax in a child process with XLA_FLAGS="
    + XLA_FLAG_ROUTES["xla_no_ynn"]
    + " (YNNPACK fusions off)",
}


def default_route() -> str:
    """The route ``make_steps`` takes here by default (``jax_step_ms`` times it)."""
    return "onednn" if cpu_conv.available() else "lax"


def bf16_route() -> bool:
    """Whether the ``onednn_bf16`` route runs here (the library, a CPU with bfloat16
    instructions)."""
    return cpu_conv.available() and cpu_conv.native_bf16()


class ScanStepper:
    """``SCAN_K`` engine steps per dispatch: ``lax.scan`` of the engine's step over stacked
    copies of the batch."""

    steps_per_call = SCAN_K

    def __init__(self, engine: Stepper):
        train = engine.fn

        def many(state, batches):
            return jax.lax.scan(train, state, batches)

        self.fn, self.state = jax.jit(many, donate_argnums=0), engine.state
        self.batches = jax.tree.map(lambda x: jnp.stack([x] * SCAN_K), engine.batch)

    def step(self, _=None):
        self.state, metrics = self.fn(self.state, self.batches)
        return metrics


class ChildStepper:
    """The lax engine step in a child process started with extra ``XLA_FLAGS``; it times ``n``
    steps on request (``time_steps``), so its rounds interleave with the others."""

    def __init__(self, cfg: Config, xla_flags: str):
        env = dict(os.environ, XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} {xla_flags}".strip())
        args = [sys.executable, os.path.abspath(__file__), "--route_child=lax"]
        args += [f"--{k}={getattr(cfg, k)}" for k in ("scale", "batch", "patch", "lr", "seed")]
        self.flags = xla_flags
        self.proc = subprocess.Popen(
            args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            text=True, env=env,
        )  # fmt: skip
        self.time_steps(1)  # compiled and ready

    def time_steps(self, n: int) -> list[float]:
        self.proc.stdin.write(f"{n}\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(
                f"the route child with XLA_FLAGS={self.flags} exited ({self.proc.wait()})"
            )
        return json.loads(line)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def serve_route(cfg: Config) -> None:
    """``--route_child``: build the lax engine step, then answer each stdin line ``n`` with the
    JSON list of ``n`` step times (ms)."""
    mesh = step_lib.make_mesh()
    stepper, _ = engine_stepper(cfg, mesh, fixed_batch(cfg), onednn_convs=False)
    for line in sys.stdin:
        print(json.dumps(time_steps(stepper, int(line))), flush=True)


def route_steppers(cfg: Config, mesh, batch, lax_engine: Stepper | None) -> dict:
    """The routes besides the default one (which is ``steppers["jax"]``), keyed ``route:name``."""
    out = {}
    if lax_engine is not None:
        out["lax"] = lax_engine
    for name, onednn in (("lax", False), ("onednn", True)):
        if onednn and default_route() != "onednn":
            continue
        out[f"{name}_scan4"] = ScanStepper(engine_stepper(cfg, mesh, batch, onednn)[0])
    if bf16_route():
        out["onednn_bf16"] = engine_stepper(cfg, mesh, batch, precision="bfloat16")[0]
    for name, xla_flags in XLA_FLAG_ROUTES.items():
        out[name] = ChildStepper(cfg, xla_flags)
    return {ROUTE + k: v for k, v in out.items()}


def route_report(timed: dict) -> dict:
    """``{route: {step_ms, speedup_vs_torch, speedup_vs_torch_paired, round_medians_ms, what}}``,
    the default route from ``timed["jax"]``."""
    names = {default_route(): "jax"} | {
        k.removeprefix(ROUTE): k for k in timed if k.startswith(ROUTE)
    }
    torch_rounds = timed["torch"]["rounds"] if "torch" in timed else None
    out = {}
    for name, key in names.items():
        rounds = timed[key]["rounds"]
        step_ms = statistics.median(rounds)
        out[name] = {
            "step_ms": step_ms,
            "speedup_vs_torch": statistics.median(torch_rounds) / step_ms if torch_rounds else None,
            "speedup_vs_torch_paired": statistics.median(
                t / j for t, j in zip(torch_rounds, rounds, strict=True)
            )
            if torch_rounds
            else None,
            "round_medians_ms": rounds,
            "what": ROUTE_NOTES.get(name, name),
        }
        if name.endswith("_bf16") and "torch_bf16" in timed:
            torch_bf16 = statistics.median(timed["torch_bf16"]["rounds"])
            out[name]["speedup_vs_torch_bf16"] = torch_bf16 / step_ms
    return out


class CallStepper:
    """A stepper around a no-argument callable (the pieces)."""

    def __init__(self, fn):
        self.fn = fn

    def step(self, _=None):
        return self.fn()


def piece_steppers(cfg: Config) -> dict:
    """Each ESPCN conv (batch x patch^2 input) alone: lax and oneDNN forward / dx / dw, jitted;
    torch forward and forward + both gradients (``F.conv2d``, NCHW)."""
    rng = np.random.default_rng(cfg.seed)
    mc = model_config(cfg)
    dn = ("NHWC", "HWIO", "NHWC")
    routes = {
        "lax": lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dn)
    }
    if cpu_conv.available():
        routes["onednn"] = lambda x, w: cpu_conv.conv(x, w, (1, 1), "SAME")
    if bf16_route():
        routes["onednn_bf16"] = lambda x, w: cpu_conv.conv(x, w, (1, 1), "SAME", None, "bfloat16")
    try:
        import torch
    except ImportError:
        torch = None
    out = {}
    for (cin, cout), k in zip(mc.layer_channels(), mc.kernel_sizes, strict=True):
        layer = f"{cin}->{cout} {k}x{k}"
        shape = (cfg.batch, cfg.patch, cfg.patch)
        x = jnp.asarray(rng.standard_normal((*shape, cin)), jnp.float32)
        w = jnp.asarray(rng.standard_normal((k, k, cin, cout)), jnp.float32)
        g = jnp.asarray(rng.standard_normal((*shape, cout)), jnp.float32)
        for name, conv in routes.items():
            fwd = jax.jit(conv)
            dx = jax.jit(lambda x, w, g, c=conv: jax.vjp(lambda a: c(a, w), x)[1](g))
            dw = jax.jit(lambda x, w, g, c=conv: jax.vjp(lambda b: c(x, b), w)[1](g))
            out[(layer, name, "forward")] = CallStepper(lambda f=fwd, x=x, w=w: f(x, w))
            out[(layer, name, "dx")] = CallStepper(lambda f=dx, x=x, w=w, g=g: f(x, w, g))
            out[(layer, name, "dw")] = CallStepper(lambda f=dw, x=x, w=w, g=g: f(x, w, g))
        if torch is not None and FLAGS.torch:
            xt = torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy()).requires_grad_()
            wt = torch.from_numpy(np.asarray(w).transpose(3, 2, 0, 1).copy()).requires_grad_()
            gt = torch.from_numpy(np.asarray(g).transpose(0, 3, 1, 2).copy())

            def forward(xt=xt, wt=wt, k=k):
                with torch.no_grad():
                    torch.nn.functional.conv2d(xt, wt, padding=k // 2)

            def both(xt=xt, wt=wt, gt=gt, k=k):
                y = torch.nn.functional.conv2d(xt, wt, padding=k // 2)
                torch.autograd.grad(y, (xt, wt), gt)

            out[(layer, "torch", "forward")] = CallStepper(forward)
            out[(layer, "torch", "forward+dx+dw")] = CallStepper(both)
    return out


def time_pieces(cfg: Config) -> dict:
    """``{layer: {route: {piece: ms}}}``, medians over interleaved rounds."""
    timed = time_rounds(piece_steppers(cfg), cfg)
    out: dict = {}
    for (layer, name, piece), t in timed.items():
        out.setdefault(layer, {}).setdefault(name, {})[piece] = statistics.median(t["rounds"])
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
    of ``--loop_rounds``: ``--loop_bare_steps`` bare steps (each blocked on, as ``jax_step_ms``),
    a loop of ``2 x --loop_steps`` steps logged every ``--loop_steps``, and the bare steps again;
    the loop's second window's steps/s (no compilation in it, checkpoint time excluded) gives
    ``loop_step_ms``, and the mean of the two bare medians is the round's bare step (so a steady
    drift of the machine's speed during the round cancels)."""
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
    for _ in range(cfg.loop_rounds):
        before_ms = statistics.median(time_steps(bare, cfg.loop_bare_steps))
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
        after_ms = statistics.median(time_steps(bare, cfg.loop_bare_steps))
        bare_ms = (before_ms + after_ms) / 2  # bare, loop, bare: a drift of the machine cancels
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
    engine, xla_step_flops = engine_stepper(cfg, mesh, batch, default_route() == "onednn")
    lax_engine = None
    if default_route() != "lax":  # XLA counts nothing for a custom call: its count in plain lax
        lax_engine, xla_step_flops = engine_stepper(cfg, mesh, batch, onednn_convs=False)
    steppers = {"jax": engine, "jax_minimal": minimal_stepper(cfg, batch)}
    torch_step = torch_stepper(cfg, batch) if FLAGS.torch else None
    if torch_step is not None:
        steppers["torch"] = torch_step
        if FLAGS.routes and bf16_route():
            steppers["torch_bf16"] = torch_stepper(cfg, batch, bf16=True)
    steppers["matmul"] = matmul_stepper(cfg)
    if FLAGS.routes:
        steppers |= route_steppers(cfg, mesh, batch, lax_engine)
    load_before = os.getloadavg()[0]
    try:
        timed = time_rounds(steppers, cfg)
    finally:
        for stepper in steppers.values():
            if isinstance(stepper, ChildStepper):
                stepper.close()
    routes = route_report(timed)
    pieces = time_pieces(cfg) if FLAGS.pieces else None
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
        "torch_bf16_step_ms": ms.get("torch_bf16"),
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
        "default_route": default_route(),
        "bf16_instructions": cpu_conv.native_bf16(),
        "onednn": cpu_conv.library_info(),
        "routes": routes,
        "pieces": pieces,
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
    print(f"routes (default {r['default_route']}; oneDNN: {r['onednn']['detail']})")
    for name, route in r["routes"].items():
        vs = route["speedup_vs_torch"]
        vs = "" if vs is None else f"  speedup {vs:.2f}x"
        if route.get("speedup_vs_torch_bf16") is not None:
            vs += f" ({route['speedup_vs_torch_bf16']:.2f}x PyTorch bfloat16)"
        print(f"  {name:14s}{route['step_ms']:8.2f} ms{vs}")
    for layer, by_route in (r["pieces"] or {}).items():
        cells = "  ".join(
            f"{name} " + "/".join(f"{ms:.2f}" for ms in p.values()) for name, p in by_route.items()
        )
        print(f"  conv {layer}: {cells} ms")
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
    if FLAGS.route_child:
        return serve_route(cfg)
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
