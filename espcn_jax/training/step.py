"""The train state, its sharded initialisation, and the pure train and eval steps.

The state is an explicit pytree (:class:`TrainState`: step, parameters, optimizer state); the
network's structure (``graphdef``, from one ``nnx.split``) is static. Steps are ``jax.jit``
functions of ``(state, batch)`` with the state donated and shardings given explicitly: the batch
split along the mesh's ``data`` axis, everything else replicated. The compiler inserts the
gradient all-reduce; the same code runs on one device, N host devices or a TPU.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

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


@dataclasses.dataclass(frozen=True)
class Steps:
    """A model's jitted functions: ``init() -> state``, ``train(state, batch) -> (state,
    metrics)``, ``evaluate(params, batch) -> metrics``, ``predict(params, lr) -> sr``."""

    graphdef: nnx.GraphDef
    init: Callable
    train: Callable
    evaluate: Callable
    predict: Callable
    state_shardings: TrainState

    def model(self, params: nnx.State) -> nnx.Module:
        return nnx.merge(self.graphdef, params)


def make_steps(
    model_cfg: models.ModelConfig,
    tx: optax.GradientTransformation,
    *,
    seed: int,
    mesh: Mesh,
    loss: str = "mse",
    schedule: optax.Schedule | None = None,
    onednn_convs: bool = True,
) -> Steps:
    """The jitted steps of ``model_cfg``. ``onednn_convs``: on the CPU backend, run the convs as
    oneDNN custom calls where the library was built (``xla_cpu.use_onednn_convs``: about 2x
    faster steps than XLA's own convs); False, or elsewhere, plain ``lax``."""
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

    def train(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        def objective(params):
            return loss_fn(forward(params, batch["lr"]), batch["hr"])

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

    params_sh = state_shardings.params
    rep = replicated(mesh)
    return Steps(
        graphdef=graphdef,
        init=jax.jit(init, out_shardings=state_shardings),
        train=jax.jit(
            train,
            in_shardings=(state_shardings, data),
            out_shardings=(state_shardings, rep),
            donate_argnums=0,
        ),
        evaluate=jax.jit(evaluate, in_shardings=(params_sh, data), out_shardings=rep),
        predict=jax.jit(forward),
        state_shardings=state_shardings,
    )
