"""Training batches made on the device: :class:`PatchSampler`'s batches from a few integers per patch.

The sampler's uint8 images (its degraded ``lr`` and its ``hr`` lists, Y or RGB) are packed once
into one flat ``(pixels, C)`` array per resolution, with each image's offset and width, and put on
every device (replicated). For step ``s`` the host computes only ``PatchSampler.locate(s)``: a
``(batch, 4)`` int32 array of rows ``(image, i, j, t)``, split along the mesh's ``data`` axis. Inside
the jitted train step (``make_steps(batch_fn=...)``), :meth:`DeviceSampler.make_batch` turns the
rows into the batch with one gather per resolution: output pixel ``(a, c)`` of a side-``n`` patch
reads source pixel ``(row, col)`` of the dihedral transform ``t``, at flat index
``offset + (s*i + row) * width + s*j + col`` (``s = 1`` for LR, ``r`` for HR), then ``uint8 ->
float32 * float32(1/255)`` as the host sampler computes it. Batches equal ``PatchSampler.batch``
bit for bit (tests/test_device_sampler.py); the batch of step ``s`` stays a pure function of
``(seed, s)``, so resume is exact.

Multi-host: each process computes every row (the ``min_std`` redraws follow one stream) and hands
only its own rows (:func:`pipeline.process_rows`) to ``jax.make_array_from_process_local_data``;
each process puts its copy of the images on its own devices the same way. Nothing outside the
jitted step communicates.

Memory: the packed images cost their uint8 size on every device (the embedded training split:
about 7 MB in Y at x3, three times that in RGB). :func:`packed_nbytes` lets a caller compare a
sampler's images with a limit before choosing this path.
"""

from __future__ import annotations

from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec

from espcn_jax import pipeline
from espcn_jax.training import step as step_lib

_MAX_INDEX = 2**31 - 1  # flat pixel indices are int32


def packed_nbytes(sampler: pipeline.PatchSampler) -> int:
    """Bytes the sampler's images take on each device (LR and HR, uint8)."""
    return sum(x.nbytes for x in sampler.lr) + sum(x.nbytes for x in sampler.hr)


def _pack(images_HWC: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Images of any sizes -> ``{"pixels": (sum H*W, C) uint8, "offset": (N,), "width": (N,)}``."""
    sizes = np.array([x.shape[0] * x.shape[1] for x in images_HWC], np.int64)
    if sizes.sum() > _MAX_INDEX:
        raise ValueError(f"{sizes.sum()} pixels do not fit int32 indices")
    return {
        "pixels": np.concatenate([x.reshape(-1, x.shape[2]) for x in images_HWC]),
        "offset": (np.cumsum(sizes) - sizes).astype(np.int32),
        "width": np.array([x.shape[1] for x in images_HWC], np.int32),
    }


def dihedral_coords(t_B: jax.Array, n: int) -> tuple[jax.Array, jax.Array]:
    """Source ``(row, col)``, each ``(B, n, n)``, of output pixel ``(a, c)`` of
    :func:`pipeline.dihedral`: a left-right flip if ``t >= 4``, then ``t % 4`` counter-clockwise
    quarter turns read backwards (``rot90(x)[a, c] = x[c, n-1-a]``)."""
    a = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32)[None, :, None], (t_B.shape[0], n, n))
    c = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32)[None, None, :], a.shape)
    t = t_B[:, None, None]
    c = jnp.where(t >= 4, n - 1 - c, c)
    k = t % 4
    row = jnp.select([k == 0, k == 1, k == 2], [a, c, n - 1 - a], n - 1 - c)
    col = jnp.select([k == 0, k == 1, k == 2], [c, n - 1 - a, n - 1 - c], a)
    return row, col


def crop(packed: dict[str, jax.Array], rows_B4: jax.Array, n: int, stride: int) -> jax.Array:
    """``(B, n, n, C)`` uint8: per row ``(image, i, j, t)``, the side-``n`` patch at
    ``(stride*i, stride*j)`` of the image, transformed by ``t``."""
    k, i, j, t = (rows_B4[:, q] for q in range(4))
    row, col = dihedral_coords(t, n)
    offset, width = packed["offset"][k][:, None, None], packed["width"][k][:, None, None]
    index = offset + (stride * i[:, None, None] + row) * width + stride * j[:, None, None] + col
    return jnp.take(packed["pixels"], index, axis=0, mode="clip")


def to_unit(x_uint8: jax.Array) -> jax.Array:
    """uint8 -> float32 in ``[0, 1]``, rounded as the host sampler's ``float32 *= 1.0 / 255.0``."""
    return x_uint8.astype(jnp.float32) * jnp.float32(1.0 / 255.0)


class DeviceSampler:
    """``sampler``'s batches made inside the jitted step on ``mesh`` (see the module docstring).

    ``max_bytes``: ValueError if the packed images (:func:`packed_nbytes`) would exceed it.
    """

    def __init__(self, sampler: pipeline.PatchSampler, mesh: Mesh, *, max_bytes: int | None = None):
        nbytes = packed_nbytes(sampler)
        if max_bytes is not None and nbytes > max_bytes:
            raise ValueError(
                f"the training images take {nbytes / 2**20:.1f} MiB per device, over the "
                f"device sampler's limit of {max_bytes / 2**20:.1f} MiB"
            )
        self.sampler, self.mesh = sampler, mesh
        self.rows_sharding = step_lib.batch_sharding(mesh)
        replicated = step_lib.replicated(mesh)
        packed = {"lr": _pack(sampler.lr), "hr": _pack(sampler.hr)}
        # Each process puts its own copy on its own devices: no collective, committed, and an
        # argument of the step (not a constant baked into it).
        self.images = jax.tree.map(
            lambda x: jax.make_array_from_process_local_data(replicated, x), packed
        )
        self.inputs_sharding = {
            "images": jax.tree.map(lambda _: replicated, packed),
            "rows": self.rows_sharding,
        }
        self._local = pipeline.process_rows(self.rows_sharding, sampler.batch_size)

    def rows(self, step: int) -> jax.Array:
        """The global ``(batch, 4)`` int32 rows of ``step``, sharded along ``data``; this process
        supplies only its own."""
        rows = self.sampler.locate(step).astype(np.int32)[self._local]
        return jax.make_array_from_process_local_data(
            self.rows_sharding, rows, (self.sampler.batch_size, 4)
        )

    def inputs(self, step: int) -> dict:
        """The second argument of a ``make_steps(batch_fn=self.make_batch)`` train step."""
        return {"images": self.images, "rows": self.rows(step)}

    def inputs_for_steps(self, start_step: int, num_steps: int) -> Iterator[dict]:
        return (self.inputs(s) for s in range(start_step, start_step + num_steps))

    def make_batch(self, inputs: dict) -> dict[str, jax.Array]:
        """``{"lr", "hr"}`` float32 batch, sharded along ``data``, equal to ``PatchSampler.batch``.

        Traceable; each device gathers its own rows from its copy of the images (``shard_map``).
        """
        p, r = self.sampler.patch, self.sampler.scale

        def local(images, rows_B4):
            return {
                "lr": to_unit(crop(images["lr"], rows_B4, p, 1)),
                "hr": to_unit(crop(images["hr"], rows_B4, r * p, r)),
            }

        data = PartitionSpec(step_lib.DATA_AXIS)
        sharded = jax.shard_map(
            local, mesh=self.mesh, in_specs=(PartitionSpec(), data), out_specs=data
        )
        return sharded(inputs["images"], inputs["rows"])
