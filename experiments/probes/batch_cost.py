"""Throw-away probe: what one engine train step costs per LR pixel, by batch shape.

For each ``BxP`` (batch B of P x P LR patches, ESPCN x3 Y, Adam, a fixed random batch) it times
``training.step.make_steps(...).train`` over ``--steps`` asynchronous steps after a warm-up, and
for each ``BxPxK`` the same batch as K micro-batches of B/K inside one jitted step (gradients
summed in order, an optimization barrier between micro-batches so that XLA runs them one after
another; a sketch for this probe, not an engine feature). Prints one JSON object: ms per step and
microseconds per LR pixel for each shape.

    python experiments/probes/batch_cost.py --shapes=32x24,64x24,96x24,128x24,128x24x4

Results and what they decided: BUILD_NOTES.md, "More probes for the Set5 target, and the step's
cost by batch shape".
"""

from __future__ import annotations

import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags
from flax import nnx

from espcn_jax import models
from espcn_jax.training import step as step_lib

flags.DEFINE_list("shapes", ["32x24", "64x24", "128x24", "128x24x4"], "BxP or BxPxK shapes.")
flags.DEFINE_integer("steps", 0, "Timed steps per shape (0: about 6,000 patches' worth).")
flags.DEFINE_enum(
    "precision", "default", ["default", "bfloat16"], "The train step's precision (make_steps)."
)
FLAGS = flags.FLAGS
SCALE = 3


def micro_batched(steps: step_lib.Steps, tx, k: int):
    """A train step over ``k`` equal micro-batches, run one after another."""

    def objective(params, batch):
        sr = nnx.merge(steps.graphdef, params)(batch["lr"]).astype(jnp.float32)
        return step_lib.LOSSES["mse"](sr, batch["hr"])

    def train(state, batch):
        parts = jax.tree.map(lambda x: x.reshape(k, -1, *x.shape[1:]), batch)
        loss, grads = 0.0, None
        for i in range(k):
            part = jax.tree.map(lambda x, i=i: x[i], parts)
            if grads is not None:
                part, grads = jax.lax.optimization_barrier((part, grads))
            value, g = jax.value_and_grad(objective)(state.params, part)
            loss = loss + value
            grads = g if grads is None else jax.tree.map(jnp.add, grads, g)
        grads = jax.tree.map(lambda g: g / k, grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return step_lib.TrainState(state.step + 1, params, opt_state), loss / k

    return jax.jit(train, donate_argnums=0)


def time_shape(spec: str, mesh) -> dict:
    b, p, *k = (int(x) for x in spec.split("x"))
    tx = optax.adam(1e-3)
    model_cfg = models.ModelConfig.espcn(scale=SCALE, channels=1)
    steps = step_lib.make_steps(
        model_cfg, tx, seed=0, mesh=mesh, loss="mse", precision=FLAGS.precision
    )
    train = micro_batched(steps, tx, k[0]) if k else steps.train
    rng = np.random.default_rng(0)
    batch = {
        "lr": rng.uniform(0, 1, (b, p, p, 1)).astype(np.float32),
        "hr": rng.uniform(0, 1, (b, SCALE * p, SCALE * p, 1)).astype(np.float32),
    }
    batch = jax.device_put(batch, step_lib.batch_sharding(mesh))
    state = steps.init()
    for _ in range(5):
        state, out = train(state, batch)
    jax.block_until_ready(out)
    n = FLAGS.steps or max(20, 6000 // b)
    t0 = time.perf_counter()
    for _ in range(n):
        state, out = train(state, batch)
    jax.block_until_ready(out)
    ms = (time.perf_counter() - t0) / n * 1e3
    return {"ms_per_step": ms, "us_per_lr_pixel": ms * 1e3 / (b * p * p), "steps": n}


def main(argv):
    del argv
    mesh = step_lib.make_mesh()
    print(json.dumps({spec: time_shape(spec, mesh) for spec in FLAGS.shapes}, indent=1))


if __name__ == "__main__":
    app.run(main)
