"""The train state, its sharded initialisation, and the pure train and eval steps.

The state is an explicit pytree (:class:`TrainState`: step, parameters, optimizer state); the
network's structure (``graphdef``, from one ``nnx.split``) is static. Steps are ``jax.jit``
functions of ``(state, batch)`` with the state donated and shardings given explicitly: the batch
split along the mesh's ``data`` axis, everything else replicated. The compiler inserts the
gradient all-reduce; the same code runs on one device, N host devices or a TPU.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from espcn_jax import models, xla_cpu

DATA_AXIS = "data"


@struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: optimizer steps taken
    params: nnx.State
    opt_state: optax.OptState


def make_mesh(devices=None, axis_type: AxisType = AxisType.Auto) -> Mesh:
    """A 1-D mesh ``("data",)`` over every device (of every process after
    ``jax.distributed.initialize()``).

    Auto axes by default: the jit's in/out shardings pin the data layout and the compiler
    propagates it, so every jnp op of every family runs unchanged. (jax 0.10's default, Explicit,
    needs a sharding rule for every op the model traces; the families' ops have them, a user's
    new layer may not. ``axis_type=AxisType.Explicit`` is tested equal.)"""
    devices = jax.devices() if devices is None else list(devices)
    return jax.make_mesh((len(devices),), (DATA_AXIS,), (axis_type,), devices=devices)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


LOSSES: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    "mse": lambda sr, hr: jnp.mean(jnp.square(sr - hr)),
    "l1": lambda sr, hr: jnp.mean(jnp.abs(sr - hr)),
}


def new_log() -> dict[str, jax.Array]:
    """The metrics the loop keeps on the device between fetches (:func:`accumulate`): the loss
    summed over the log window and its step count, the last step's lr and gradient norm, and the
    first non-finite step (``bad_step``, -1 while every loss and gradient norm was finite) with
    its loss and gradient norm."""
    f, i = jnp.float32, jnp.int32
    return {
        "loss_sum": jnp.zeros((), f),
        "count": jnp.zeros((), i),
        "lr": jnp.zeros((), f),
        "grad_norm": jnp.zeros((), f),
        "bad_step": jnp.full((), -1, i),
        "bad_loss": jnp.zeros((), f),
        "bad_grad_norm": jnp.zeros((), f),
    }


def all_finite(tree) -> jax.Array:
    """Whether every element of every array of ``tree`` is finite (a bool scalar)."""
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def accumulate(log: dict, metrics: dict, step: jax.Array, params_finite=True) -> dict:
    """``log`` after the step that ends at optimizer step ``step`` gave ``metrics`` (and
    parameters that are all finite or not: a finite loss and gradient can still make them
    overflow, and a checkpoint of that step would hold them)."""
    loss, norm = metrics["loss"], metrics["grad_norm"]
    finite = jnp.isfinite(loss) & jnp.isfinite(norm) & params_finite
    first_bad = (log["bad_step"] < 0) & ~finite
    return {
        "loss_sum": log["loss_sum"] + loss,
        "count": log["count"] + 1,
        "lr": metrics.get("lr", log["lr"]).astype(jnp.float32),
        "grad_norm": norm,
        "bad_step": jnp.where(first_bad, step, log["bad_step"]),
        "bad_loss": jnp.where(first_bad, loss, log["bad_loss"]),
        "bad_grad_norm": jnp.where(first_bad, norm, log["bad_grad_norm"]),
    }


def new_window(log: dict) -> dict:
    """``log`` with the loss sum and count of the log window reset (the rest kept)."""
    return {
        **log,
        "loss_sum": jnp.zeros_like(log["loss_sum"]),
        "count": jnp.zeros_like(log["count"]),
    }


@dataclasses.dataclass(frozen=True)
class Steps:
    """A model's jitted functions: ``init() -> state``, ``train(state, batch) -> (state,
    metrics)``, ``evaluate(params, batch) -> metrics``, ``predict(params, lr) -> sr``.

    The loop's step is ``train_logged(state, log, batch) -> (state, log)``: ``train`` with its
    metrics folded into the on-device ``log`` (:func:`accumulate`; ``new_log()`` and
    ``new_window(log)`` make and reset it), so the host fetches nothing between log points."""

    graphdef: nnx.GraphDef
    init: Callable
    train: Callable
    evaluate: Callable
    predict: Callable
    state_shardings: TrainState
    train_logged: Callable | None = None
    new_log: Callable | None = None
    new_window: Callable | None = None
    # train_logged traced at make_steps(tail_precision=...) (None: not asked for)
    train_logged_tail: Callable | None = None

    def model(self, params: nnx.State) -> nnx.Module:
        return nnx.merge(self.graphdef, params)


def make_steps(
    model_cfg: models.ModelConfig,
    tx: optax.GradientTransformation,
    *,
    seed: int,
    mesh: Mesh,
    loss: str = "mse",
    loss_border: int = 0,
    schedule: optax.Schedule | None = None,
    batch_fn: Callable[[Any], dict] | None = None,
    inputs_sharding: Any = None,
    precision: str = "default",
    onednn_convs: bool = True,
    tail_precision: str | None = None,
) -> Steps:
    """The jitted steps of ``model_cfg``. ``precision`` (``config.train.precision``) is the
    ``jax.default_matmul_precision`` under which the train step is traced: lax resolves a conv's or
    matmul's precision when the op is traced, so it is fixed in the compiled step (``"default"``
    is one-pass bfloat16 on TPU and TF32 on recent NVIDIA GPUs; CPUs compute float32 at any).

    ``batch_fn``: the train step becomes ``train(state, inputs)`` and forms its batch as
    ``batch_fn(inputs)`` inside the same jit (e.g. ``DeviceSampler.make_batch``); ``inputs_sharding``
    is then the shardings of ``inputs`` (a pytree prefix). Only the state is donated.

    ``loss_border``: HR pixels left out of the train loss at each side of the patch (0: none).
    With the receptive field's radius (in HR pixels) the loss sees only outputs that no zero pad
    reached, as SRCNN's valid convolutions did; the evaluation step always scores whole images.

    ``onednn_convs``: on the CPU backend, run the convs as oneDNN custom calls where the library
    was built (``xla_cpu.use_onednn_convs``); False, or elsewhere, plain ``lax``.

    ``tail_precision``: also compile ``train_logged_tail``, the same step traced at that
    precision, for the last steps of a run (``config.train.tail_steps``); the state is shared."""
    loss_fn = LOSSES[loss]

    def build(seed_: int) -> nnx.Module:
        model = models.model_from_config(model_cfg, rngs=nnx.Rngs(seed_))
        return xla_cpu.use_onednn_convs(model, mesh) if onednn_convs else model

    graphdef, _ = nnx.split(nnx.eval_shape(lambda: build(seed)))

    def init() -> TrainState:
        params = nnx.state(build(seed))
        return TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))

    state_shardings = jax.tree.map(lambda _: replicated(mesh), jax.eval_shape(init))
    data = batch_sharding(mesh)

    def forward(params, lr_NHWC):
        return nnx.merge(graphdef, params)(lr_NHWC).astype(jnp.float32)

    def train(state: TrainState, batch: dict, precision: str = precision):
        def objective(params):
            sr, hr = forward(params, batch["lr"]), batch["hr"]
            if loss_border:  # NHWC: the inner rows and columns
                inner = (slice(None),) + (slice(loss_border, -loss_border),) * 2
                sr, hr = sr[inner], hr[inner]
            return loss_fn(sr, hr)

        with jax.default_matmul_precision(precision):
            value, grads = jax.value_and_grad(objective)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": value, "grad_norm": optax.global_norm(grads)}
        if schedule is not None:
            metrics["lr"] = jnp.asarray(schedule(state.step), jnp.float32)
        return TrainState(state.step + 1, params, opt_state), metrics

    def evaluate(params, batch: dict) -> dict:
        sr = forward(params, batch["lr"])
        mse = jnp.mean(jnp.square(jnp.clip(sr, 0, 1) - batch["hr"]))
        return {"loss": loss_fn(sr, batch["hr"]), "psnr": -10 * jnp.log10(mse)}

    def train_on_inputs(state: TrainState, inputs, precision: str = precision):
        return train(state, inputs if batch_fn is None else batch_fn(inputs), precision)

    def train_logged(state: TrainState, log: dict, inputs, precision: str = precision):
        state, metrics = train_on_inputs(state, inputs, precision)
        return state, accumulate(log, metrics, state.step, all_finite(state.params))

    params_sh = state_shardings.params
    rep = replicated(mesh)
    inputs_sh = data if batch_fn is None else inputs_sharding

    def jit_logged(precision_: str) -> Callable:
        return jax.jit(
            functools.partial(train_logged, precision=precision_),
            in_shardings=(state_shardings, rep, inputs_sh),
            out_shardings=(state_shardings, rep),
            donate_argnums=(0, 1),
        )

    return Steps(
        graphdef=graphdef,
        init=jax.jit(init, out_shardings=state_shardings),
        train=jax.jit(
            train_on_inputs,
            in_shardings=(state_shardings, inputs_sh),
            out_shardings=(state_shardings, rep),
            donate_argnums=0,
        ),
        evaluate=jax.jit(evaluate, in_shardings=(params_sh, data), out_shardings=rep),
        predict=jax.jit(forward),
        state_shardings=state_shardings,
        train_logged=jit_logged(precision),
        new_log=jax.jit(new_log, out_shardings=rep),
        new_window=jax.jit(new_window, in_shardings=rep, out_shardings=rep, donate_argnums=0),
        train_logged_tail=None if tail_precision is None else jit_logged(tail_precision),
    )
