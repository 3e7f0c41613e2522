"""Run with 4 forced host devices (tests/test_sharding.py): prints JSON of sharded-vs-reference gaps."""

from __future__ import annotations

import json
import os

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import AxisType, NamedSharding, PartitionSpec  # noqa: E402

from espcn_jax import models, ops  # noqa: E402
from espcn_jax.training import step as step_lib  # noqa: E402


def shuffle_ref(x, r, order):
    """The periodic shuffle by its definition, one output pixel at a time."""
    n, h, w, crr = x.shape
    c = crr // (r * r)
    out = np.empty((n, h * r, w * r, c), x.dtype)
    for i in range(h * r):
        for j in range(w * r):
            a, b = i % r, j % r
            for k in range(c):
                ch = (a * r + b) * c + k if order == "tf" else k * r * r + a * r + b
                out[:, i, j, k] = x[:, i // r, j // r, ch]
    return out


def ops_gaps() -> dict:
    mesh = jax.make_mesh((4,), ("data",), (AxisType.Explicit,))
    x = np.random.default_rng(0).random((8, 3, 5, 18), np.float32)
    xs = jax.device_put(x, NamedSharding(mesh, PartitionSpec("data")))
    out = {}
    with jax.set_mesh(mesh):
        for order in ops.ORDERS:
            other = "torch" if order == "tf" else "tf"
            y = jax.jit(lambda v, o=order: ops.pixel_shuffle(v, 3, o))(xs)
            back = jax.jit(lambda v, o=order: ops.pixel_unshuffle(v, 3, o))(y)
            conv = jax.jit(lambda v, o=order, p=other: ops.convert_order(v, 3, o, p))(xs)
            out[order] = {
                "shuffle": float(np.max(np.abs(np.asarray(y) - shuffle_ref(x, 3, order)))),
                "unshuffle": float(np.max(np.abs(np.asarray(back) - x))),
                "convert": float(
                    np.max(
                        np.abs(shuffle_ref(np.asarray(conv), 3, other) - shuffle_ref(x, 3, order))
                    )
                ),
                "batch_spec": [str(jax.typeof(v).sharding.spec[0]) for v in (y, back, conv)],
            }
    return out


def train_gaps(family: str, axis_type: AxisType) -> dict:
    """Three Adam steps of a tiny net on 4 devices vs 1 device (same code, same batches)."""
    cfg = models.ModelConfig(family=family, scale=3, depth=2, widths=4, activation="relu")
    rng = np.random.default_rng(1)
    batches = [
        {"lr": rng.random((8, 6, 6, 1), np.float32), "hr": rng.random((8, 18, 18, 1), np.float32)}
        for _ in range(3)
    ]
    runs = {}
    for n in (4, 1):
        mesh = step_lib.make_mesh(jax.devices()[:n], axis_type)
        steps = step_lib.make_steps(cfg, optax.adam(1e-3), seed=0, mesh=mesh)
        try:
            with jax.set_mesh(mesh):
                state = steps.init()
                losses = []
                for b in batches:
                    b = jax.device_put(b, step_lib.batch_sharding(mesh))
                    state, metrics = steps.train(state, b)
                    losses.append(float(metrics["loss"]))
        except Exception as e:  # reported, asserted on by the test
            return {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
        runs[n] = (losses, jax.tree.leaves(jax.device_get(state.params)), state)
    (l4, p4, s4), (l1, p1, _) = runs[4], runs[1]
    return {
        "loss_rel": float(np.max(np.abs(np.subtract(l4, l1)) / np.abs(l1))),
        "param_abs": float(max(np.max(np.abs(a - b)) for a, b in zip(p4, p1, strict=True))),
        "devices": len(jax.tree.leaves(s4.params)[0].sharding.device_set),
        "losses": l4,
    }


if __name__ == "__main__":
    result = {"ops": ops_gaps(), "train": {}}
    for axis_type in (AxisType.Auto, AxisType.Explicit):
        for family in models.FAMILY_NAMES:
            result["train"][f"{family}/{axis_type.name}"] = train_gaps(family, axis_type)
    print(json.dumps(result))
