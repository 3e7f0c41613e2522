"""Run by tests/test_fast_conv.py: with 4 forced host devices, Adam steps of ESPCN with the oneDNN
convolutions (inside shard_map over the batch) against the same steps in plain lax. Prints JSON."""

from __future__ import annotations

import json
import os

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import AxisType  # noqa: E402

from espcn_jax import cpu_conv, models  # noqa: E402
from espcn_jax.training import step as step_lib  # noqa: E402


def losses(mesh, onednn: bool, batch) -> tuple[list[float], bool]:
    cfg = models.ModelConfig.espcn(scale=3, channels=1)
    steps = step_lib.make_steps(cfg, optax.adam(1e-3), seed=0, mesh=mesh, onednn_convs=onednn)
    state = steps.init()
    batch = jax.device_put(batch, step_lib.batch_sharding(mesh))
    custom = "espcn_onednn" in steps.train.lower(state, batch).compile().as_text()
    out = []
    for _ in range(3):
        state, metrics = steps.train(state, batch)
        out.append(float(metrics["loss"]))
    return out, custom


def main() -> None:
    rng = np.random.default_rng(0)
    batch = {
        "lr": rng.uniform(0, 1, (8, 10, 10, 1)).astype(np.float32),
        "hr": rng.uniform(0, 1, (8, 30, 30, 1)).astype(np.float32),
    }
    report = {"devices": jax.device_count(), "available": cpu_conv.available()}
    for axis in ("Auto", "Explicit"):
        mesh = step_lib.make_mesh(axis_type=getattr(AxisType, axis))
        with jax.set_mesh(mesh):
            fast, custom = losses(mesh, True, batch)
            plain, plain_custom = losses(mesh, False, batch)
        report[axis] = {
            "fast": fast,
            "plain": plain,
            "custom": custom,
            "plain_custom": plain_custom,
        }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
