"""Batch placement for multi-host runs, in one process: ``pipeline.process_rows`` (which rows of
the global batch this process makes), ``PatchSampler.batch(step, rows)`` against the same rows
of the whole batch, and ``pipeline.place`` against ``jax.device_put``. The multi-process run
itself is tests/test_multihost.py."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from espcn_jax import data, pipeline
from espcn_jax.training import step as step_lib


class _Sharding:
    """What process_rows reads of a sharding: this process's devices' index map."""

    def __init__(self, spans):
        self.spans = spans

    def addressable_devices_indices_map(self, shape):
        return {f"device{k}": (slice(a, b),) for k, (a, b) in enumerate(self.spans)}


@pytest.mark.parametrize(
    "spans,rows",
    [
        ([(4, 6), (6, 8)], slice(4, 8)),  # process 1 of 2, two devices each, batch 8
        ([(6, 8), (4, 6)], slice(4, 8)),  # devices listed in another order
        ([(0, 2), (0, 2)], slice(0, 2)),  # a row block replicated on two local devices
        ([(0, 12)], slice(0, 12)),
    ],
)
def test_process_rows_is_the_union_of_local_row_blocks(spans, rows):
    assert pipeline.process_rows(_Sharding(spans), 12) == rows


def test_process_rows_refuses_rows_that_are_not_contiguous():
    with pytest.raises(ValueError, match="not contiguous"):
        pipeline.process_rows(_Sharding([(0, 2), (4, 6)]), 8)


def test_process_rows_of_a_real_sharding():
    sharding = step_lib.batch_sharding(step_lib.make_mesh())
    assert pipeline.process_rows(sharding, 8) == slice(0, 8)  # one process holds every row


def _sampler(**kwargs) -> pipeline.PatchSampler:
    rng = np.random.default_rng(0)
    hr = tuple(rng.integers(0, 256, (30 + 3 * k, 33, 3), dtype=np.uint8) for k in range(3))
    source = data.Source("r", hr, ("a", "b", "c"))
    return pipeline.PatchSampler(source, scale=2, patch=4, batch_size=8, seed=3, **kwargs)


@pytest.mark.parametrize("min_std", [0.0, 20.0])
@pytest.mark.parametrize("rows", [slice(0, 4), slice(4, 8), slice(2, 3), slice(None)])
def test_sampler_rows_are_the_same_rows_of_the_whole_batch(rows, min_std):
    sampler = _sampler(min_std=min_std)
    for step in (0, 7):
        whole, part = sampler.batch(step), sampler.batch(step, rows)
        for key in ("lr", "hr"):
            np.testing.assert_array_equal(part[key], whole[key][rows])


def test_tf_dataset_of_rows():
    sampler = _sampler()
    got = list(pipeline.tf_dataset(sampler, num_steps=2, rows=slice(6, 8)).as_numpy_iterator())
    for step, batch in enumerate(got):
        assert batch["lr"].shape == (2, 4, 4, 1)
        np.testing.assert_array_equal(batch["hr"], sampler.batch(step)["hr"][6:8])


def test_place_equals_device_put():
    sharding = step_lib.batch_sharding(step_lib.make_mesh())
    batch = _sampler().batch(1)
    placed = pipeline.place(batch, sharding, batch_size=8)
    for key in ("lr", "hr"):
        assert placed[key].sharding == sharding
        np.testing.assert_array_equal(np.asarray(placed[key]), batch[key])
    on_default = pipeline.place(batch, None)
    assert on_default["lr"].devices() == {jax.devices()[0]}
