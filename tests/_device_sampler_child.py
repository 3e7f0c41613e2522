"""``python _device_sampler_child.py PROCESS_ID NUM_PROCESSES DEVICES_PER_PROCESS PORT``: the device
sampler on a mesh over every process's forced host devices (tests/test_device_sampler.py).

Prints one JSON line: this process's rows, whether its shards of the batch equal the host
sampler's, whether a fused data-parallel step's losses equal a one-device step's on host batches,
and the collectives in the compiled batch maker (there should be none).
"""

from __future__ import annotations

import json
import os
import re
import sys

process_id, num_processes, devices, port = map(int, sys.argv[1:])
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402

if num_processes > 1:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        f"localhost:{port}", num_processes=num_processes, process_id=process_id
    )

import numpy as np  # noqa: E402
import optax  # noqa: E402

from espcn_jax import data, device_sampler, models, pipeline  # noqa: E402
from espcn_jax.training import step as step_lib  # noqa: E402

BATCH = 12


def source() -> data.Source:
    rng = np.random.default_rng(0)  # the same images in every process
    images = tuple(rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(40, 50), (64, 30)])
    return data.Source("child", images, ("a", "b"))


sampler = pipeline.PatchSampler(
    source(), scale=2, patch=4, batch_size=BATCH, seed=5, color="rgb", min_std=10.0
)
mesh = step_lib.make_mesh()
feed = device_sampler.DeviceSampler(sampler, mesh)
make = jax.jit(feed.make_batch)

equal = True
for step in range(3):
    batch, host = make(feed.inputs(step)), sampler.batch(step)
    for key in ("lr", "hr"):
        for shard in batch[key].addressable_shards:
            got = np.asarray(shard.data).view(np.uint32)
            equal &= bool(np.array_equal(got, host[key][shard.index].view(np.uint32)))

hlo = make.lower(feed.inputs(0)).compile().as_text()
collectives = len(re.findall(r"all-gather|all-reduce|collective-permute|all-to-all", hlo))

cfg = models.ModelConfig(family="lr", scale=2, channels=3, depth=2, widths=4, activation="relu")
fused = step_lib.make_steps(
    cfg, optax.adam(1e-2), seed=0, mesh=mesh,
    batch_fn=feed.make_batch, inputs_sharding=feed.inputs_sharding,
)  # fmt: skip
one = step_lib.make_mesh(jax.local_devices()[:1])
plain = step_lib.make_steps(cfg, optax.adam(1e-2), seed=0, mesh=one)
a, b = fused.init(), plain.init()
fused_train = fused.train.lower(a, feed.inputs(0)).compile()
if num_processes > 1:  # gloo gives a late peer 30 s: meet after compiling, on a loaded machine
    from jax._src import distributed

    distributed.global_state.client.wait_at_barrier("compiled", 300_000)
close = True
for step in range(3):
    a, metrics_a = fused_train(a, feed.inputs(step))
    b, metrics_b = plain.train(b, jax.device_put(sampler.batch(step), step_lib.batch_sharding(one)))
    close &= bool(np.isclose(float(metrics_a["loss"]), float(metrics_b["loss"]), rtol=1e-5))

rows = feed._local
print(
    json.dumps(
        {
            "rows": [[rows.start, rows.stop]],
            "batches_equal": equal,
            "losses_close": close,
            "batch_collectives": collectives,
        }
    )
)
if num_processes > 1:
    jax.distributed.shutdown()
