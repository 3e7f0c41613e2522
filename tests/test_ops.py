"""Pixel shuffle / unshuffle / convert_order against references we did not write.

References: TensorFlow's ``depth_to_space``/``space_to_depth`` ("tf" order), NumPy loops over the
index formulas of docs/equivalence.md (both orders), and ``torch.nn.functional.pixel_shuffle`` when torch
happens to be installed. Also the small ``espcn_jax.timing.time_fn`` contract.
"""

from __future__ import annotations

import functools
import os
import re
import types

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

from espcn_jax import timing
from espcn_jax.ops import convert_order, pixel_shuffle, pixel_unshuffle

ORDERS = ("tf", "torch")


# Independent references: loops over the index formulas, TensorFlow, torch.


def shuffle_loop(x_NHWC: np.ndarray, r: int, order: str) -> np.ndarray:
    """PS_r by the index formula (docs/equivalence.md), one output element at a time."""
    n, h, w, crr = x_NHWC.shape
    c = crr // (r * r)
    out = np.zeros((n, h * r, w * r, c), x_NHWC.dtype)
    for i in range(n):
        for hh in range(h):
            for ww in range(w):
                for a in range(r):
                    for b in range(r):
                        for cc in range(c):
                            src = (a * r + b) * c + cc if order == "tf" else cc * r * r + a * r + b
                            out[i, hh * r + a, ww * r + b, cc] = x_NHWC[i, hh, ww, src]
    return out


def unshuffle_loop(y_NHWC: np.ndarray, r: int, order: str) -> np.ndarray:
    """PS_r^-1 by the same formula read the other way."""
    n, hr, wr, c = y_NHWC.shape
    out = np.zeros((n, hr // r, wr // r, c * r * r), y_NHWC.dtype)
    for i in range(n):
        for hh in range(hr // r):
            for ww in range(wr // r):
                for a in range(r):
                    for b in range(r):
                        for cc in range(c):
                            dst = (a * r + b) * c + cc if order == "tf" else cc * r * r + a * r + b
                            out[i, hh, ww, dst] = y_NHWC[i, hh * r + a, ww * r + b, cc]
    return out


@pytest.fixture(scope="module")
def tf():
    """TensorFlow, imported lazily and kept off any GPU (it is only a reference here)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    tf = pytest.importorskip("tensorflow")
    tf.config.set_visible_devices([], "GPU")  # TensorFlow's view only; JAX keeps its devices
    return tf


def random_nhwc(shape, dtype=np.float32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def distinct_nhwc(shape) -> np.ndarray:
    """Every element different, so any misplaced element is visible."""
    return np.arange(np.prod(shape), dtype=np.float32).reshape(shape)


def conv(x_NHWC, kernel_HWIO):
    return jax.lax.conv_general_dilated(
        x_NHWC, kernel_HWIO, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


CASES = [(1, 1, 1, 1), (1, 2, 3, 1), (2, 2, 3, 2), (1, 3, 2, 3), (2, 3, 3, 1), (1, 2, 2, 4)]
# (N, H, W, C) LR shapes; r below.


# Against the references.


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("r", [1, 2, 3])
@pytest.mark.parametrize("nhwc", CASES)
def test_shuffle_and_unshuffle_match_index_loop(nhwc, r, order):
    n, h, w, c = nhwc
    x = distinct_nhwc((n, h, w, c * r * r))
    y = pixel_shuffle(jnp.asarray(x), r, order)
    np.testing.assert_array_equal(np.asarray(y), shuffle_loop(x, r, order))
    z = distinct_nhwc((n, h * r, w * r, c))
    np.testing.assert_array_equal(
        np.asarray(pixel_unshuffle(jnp.asarray(z), r, order)), unshuffle_loop(z, r, order)
    )


@pytest.mark.parametrize("r", [2, 3, 4])  # TensorFlow requires block_size >= 2
@pytest.mark.parametrize("nhwc", CASES)
def test_tf_order_matches_tensorflow(tf, nhwc, r):
    n, h, w, c = nhwc
    x = random_nhwc((n, h, w, c * r * r))
    np.testing.assert_array_equal(
        np.asarray(pixel_shuffle(jnp.asarray(x), r, "tf")), tf.nn.depth_to_space(x, r).numpy()
    )
    z = random_nhwc((n, h * r, w * r, c), seed=1)
    np.testing.assert_array_equal(
        np.asarray(pixel_unshuffle(jnp.asarray(z), r, "tf")), tf.nn.space_to_depth(z, r).numpy()
    )


@pytest.mark.parametrize("r", [1, 2, 3])
@pytest.mark.parametrize("nhwc", CASES)
def test_torch_order_matches_torch(nhwc, r):
    torch = pytest.importorskip("torch")
    n, h, w, c = nhwc
    x = random_nhwc((n, h, w, c * r * r))
    ref = torch.nn.functional.pixel_shuffle(torch.from_numpy(x.transpose(0, 3, 1, 2)), r)
    np.testing.assert_array_equal(
        np.asarray(pixel_shuffle(jnp.asarray(x), r, "torch")), ref.numpy().transpose(0, 2, 3, 1)
    )
    z = random_nhwc((n, h * r, w * r, c), seed=1)
    ref = torch.nn.functional.pixel_unshuffle(torch.from_numpy(z.transpose(0, 3, 1, 2)), r)
    np.testing.assert_array_equal(
        np.asarray(pixel_unshuffle(jnp.asarray(z), r, "torch")), ref.numpy().transpose(0, 2, 3, 1)
    )


# Structure: round trips, the two orders, convert_order.


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("r", [1, 2, 3])
def test_round_trips_are_identities(r, order):
    x = distinct_nhwc((2, 3, 2, 2 * r * r))
    np.testing.assert_array_equal(pixel_unshuffle(pixel_shuffle(x, r, order), r, order), x)
    z = distinct_nhwc((2, 3 * r, 2 * r, 2))
    np.testing.assert_array_equal(pixel_shuffle(pixel_unshuffle(z, r, order), r, order), z)


@pytest.mark.parametrize("c", [1, 2, 3])
@pytest.mark.parametrize("r", [1, 2, 3])
def test_orders_agree_iff_single_channel(r, c):
    x = distinct_nhwc((1, 2, 3, c * r * r))
    same = np.array_equal(pixel_shuffle(x, r, "tf"), pixel_shuffle(x, r, "torch"))
    # With r == 1 there is a single phase, so the orders coincide for any C.
    assert same == (c == 1 or r == 1)


@pytest.mark.parametrize("r", [1, 2, 3])
def test_convert_order_round_trip_and_shuffle_identity(r):
    x = jnp.asarray(random_nhwc((2, 3, 2, 3 * r * r)))
    x_torch = convert_order(x, r, "tf", "torch")
    np.testing.assert_array_equal(convert_order(x_torch, r, "torch", "tf"), x)
    np.testing.assert_array_equal(convert_order(x, r, "tf", "tf"), x)
    np.testing.assert_array_equal(pixel_shuffle(x_torch, r, "torch"), pixel_shuffle(x, r, "tf"))
    z = jnp.asarray(random_nhwc((1, 2 * r, 3 * r, 3), seed=2))
    np.testing.assert_array_equal(
        convert_order(pixel_unshuffle(z, r, "tf"), r, "tf", "torch"), pixel_unshuffle(z, r, "torch")
    )


@pytest.mark.parametrize("r,c", [(2, 1), (2, 3), (3, 2)])
def test_convert_order_on_a_vector_matches_index_formula(r, c):
    v = np.arange(c * r * r)
    expected = np.empty_like(v)
    for cc in range(c):
        for p in range(r * r):
            expected[cc * r * r + p] = v[p * c + cc]  # torch index <- tf index
    np.testing.assert_array_equal(convert_order(v, r, "tf", "torch", axis=0), expected)


@pytest.mark.parametrize("r,c_out", [(2, 1), (2, 3), (3, 2)])
def test_convert_order_on_kernel_output_axis(r, c_out):
    """conv with a "tf" kernel then PS_tf == conv with the converted kernel then PS_torch."""
    x = jnp.asarray(random_nhwc((1, 5, 4, 3)))
    kernel_tf = jnp.asarray(random_nhwc((3, 3, 3, c_out * r * r), seed=3))
    kernel_torch = convert_order(kernel_tf, r, "tf", "torch")  # axis=-1: the HWIO output axis
    np.testing.assert_allclose(
        pixel_shuffle(conv(x, kernel_torch), r, "torch"),
        pixel_shuffle(conv(x, kernel_tf), r, "tf"),
        rtol=1e-6,
        atol=1e-6,
    )


@pytest.mark.parametrize("r,c_in", [(2, 1), (2, 3), (3, 2)])
def test_convert_order_on_kernel_input_axis(r, c_in):
    """A kernel reading PS^-1_tf(z), its input axis converted, reads PS^-1_torch(z) the same way."""
    z = jnp.asarray(random_nhwc((1, 3 * r, 2 * r, c_in)))
    kernel_tf = jnp.asarray(random_nhwc((3, 3, c_in * r * r, 2), seed=4))
    kernel_torch = convert_order(kernel_tf, r, "tf", "torch", axis=-2)
    np.testing.assert_allclose(
        conv(pixel_unshuffle(z, r, "torch"), kernel_torch),
        conv(pixel_unshuffle(z, r, "tf"), kernel_tf),
        rtol=1e-5,
        atol=1e-5,
    )


# Transformations and dtypes.


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("r", [2, 3])
def test_jit_matches_loop(r, order):
    x = distinct_nhwc((2, 2, 3, 2 * r * r))
    shuffle = jax.jit(pixel_shuffle, static_argnames=("r", "order"))
    unshuffle = jax.jit(functools.partial(pixel_unshuffle, r=r, order=order))
    y = shuffle(x, r=r, order=order)
    np.testing.assert_array_equal(np.asarray(y), shuffle_loop(x, r, order))
    np.testing.assert_array_equal(np.asarray(unshuffle(y)), x)
    convert = jax.jit(convert_order, static_argnums=(1, 2, 3))
    np.testing.assert_array_equal(
        pixel_shuffle(convert(x, r, order, "tf"), r, "tf"), pixel_shuffle(x, r, order)
    )


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("r", [2, 3])
def test_gradient_of_shuffle_is_unshuffle_of_cotangent(r, order):
    """PS_r is a permutation, so its VJP is the inverse permutation applied to the cotangent."""
    x = jnp.asarray(random_nhwc((1, 2, 3, 2 * r * r)))
    g = jnp.asarray(random_nhwc((1, 2 * r, 3 * r, 2), seed=5))
    _, vjp = jax.vjp(lambda x: pixel_shuffle(x, r, order), x)
    np.testing.assert_array_equal(vjp(g)[0], unshuffle_loop(np.asarray(g), r, order))
    grad = jax.jit(jax.grad(lambda x: jnp.sum(g * pixel_shuffle(x, r, order))))
    np.testing.assert_array_equal(grad(x), unshuffle_loop(np.asarray(g), r, order))
    _, vjp = jax.vjp(lambda y: pixel_unshuffle(y, r, order), g)
    np.testing.assert_array_equal(vjp(x)[0], shuffle_loop(np.asarray(x), r, order))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.int32])
@pytest.mark.parametrize("order", ORDERS)
def test_dtype_preserved(dtype, order):
    r = 2
    x = np.arange(2 * 2 * 3 * 2 * r * r).reshape(2, 2, 3, 2 * r * r) % 200  # exact in bfloat16
    x = np.asarray(jnp.asarray(x, dtype))
    y = pixel_shuffle(jnp.asarray(x), r, order)
    assert y.dtype == dtype
    np.testing.assert_array_equal(np.asarray(y), shuffle_loop(x, r, order))
    back = pixel_unshuffle(y, r, order)
    assert back.dtype == dtype
    assert convert_order(y.reshape(1, 1, 1, -1), r, "tf", "torch").dtype == dtype
    np.testing.assert_array_equal(np.asarray(back), x)


# Property tests.

shapes = st.tuples(
    st.integers(1, 2),  # N
    st.integers(1, 4),  # H
    st.integers(1, 4),  # W
    st.integers(1, 3),  # C
    st.integers(1, 5),  # r
    st.sampled_from(ORDERS),
)


@settings(max_examples=30, deadline=None)
@given(shapes)
def test_property_shuffle_matches_loop_and_inverts(case):
    n, h, w, c, r, order = case
    other = "torch" if order == "tf" else "tf"

    @jax.jit  # one compilation per example instead of one per eager op
    def shuffles(x):
        y = pixel_shuffle(x, r, order)
        return (
            y,
            pixel_unshuffle(y, r, order),
            pixel_shuffle(convert_order(x, r, order, other), r, other),
        )

    x = distinct_nhwc((n, h, w, c * r * r))
    y, back, y_other = map(np.asarray, shuffles(x))
    assert y.shape == (n, h * r, w * r, c)
    np.testing.assert_array_equal(y, shuffle_loop(x, r, order))
    np.testing.assert_array_equal(back, x)
    np.testing.assert_array_equal(y_other, y)


@settings(max_examples=30, deadline=None)
@given(shapes)
def test_property_unshuffle_matches_loop_and_inverts(case):
    n, h, w, c, r, order = case

    @jax.jit
    def unshuffles(z):
        x = pixel_unshuffle(z, r, order)
        return x, pixel_shuffle(x, r, order)

    z = distinct_nhwc((n, h * r, w * r, c))
    x, back = map(np.asarray, unshuffles(z))
    assert x.shape == (n, h, w, c * r * r)
    np.testing.assert_array_equal(x, unshuffle_loop(z, r, order))
    np.testing.assert_array_equal(back, z)


# Bad input: a ValueError naming the argument and the offending value.

X4 = np.zeros((1, 2, 2, 4), np.float32)


@pytest.mark.parametrize("fn", [pixel_shuffle, pixel_unshuffle])
@pytest.mark.parametrize("bad", [2.0, "2", 1.5, 0, -1, None, False])
def test_bad_scale(fn, bad):
    with pytest.raises(
        ValueError, match="^r must be an integer >= 1, got " + re.escape(repr(bad)) + "$"
    ):
        fn(X4, bad)


def test_bad_scale_in_convert_order():
    with pytest.raises(ValueError, match=r"^r must be an integer >= 1, got 1\.5$"):
        convert_order(X4, 1.5, "tf", "torch")


def test_integer_like_scales_accepted_bools_refused():
    """``r`` goes through ``operator.index``: NumPy integers work; a bool is refused, not taken as 1."""
    np.testing.assert_array_equal(pixel_shuffle(X4, np.int64(2)), pixel_shuffle(X4, 2))
    with pytest.raises(ValueError, match=r"^r must be an integer >= 1, got True$"):
        pixel_shuffle(X4, True)


def test_channels_not_divisible_by_r_squared():
    with pytest.raises(
        ValueError, match=r"^x channels must be divisible by r\*r=4, got 6 channels$"
    ):
        pixel_shuffle(np.zeros((1, 2, 2, 6)), 2)
    with pytest.raises(ValueError, match=r"^axis 3 must have a size divisible by r\*r=9, got 4"):
        convert_order(X4, 3, "tf", "torch")


@pytest.mark.parametrize("shape", [(1, 3, 4, 1), (1, 4, 5, 1)])
def test_unshuffle_spatial_not_divisible(shape):
    with pytest.raises(
        ValueError, match=r"^x height and width must be divisible by r=2, got shape"
    ):
        pixel_unshuffle(np.zeros(shape), 2)


@pytest.mark.parametrize("fn", [pixel_shuffle, pixel_unshuffle])
@pytest.mark.parametrize("shape", [(4,), (2, 2, 4), (1, 1, 2, 2, 4)])
def test_wrong_rank(fn, shape):
    with pytest.raises(ValueError, match=r"^x must be an NHWC array of rank 4, got shape"):
        fn(np.zeros(shape), 1)


@pytest.mark.parametrize("fn", [pixel_shuffle, pixel_unshuffle])
@pytest.mark.parametrize("bad", ["TF", "pytorch", "", None])
def test_unknown_order(fn, bad):
    with pytest.raises(ValueError, match=rf"^order must be one of .*, got {bad!r}$"):
        fn(X4, 2, bad)


@pytest.mark.parametrize("src,dst,name", [("bogus", "tf", "src"), ("tf", "bogus", "dst")])
def test_convert_order_names_the_bad_order_argument(src, dst, name):
    with pytest.raises(ValueError, match=rf"^{name} must be one of .*, got 'bogus'$"):
        convert_order(X4, 2, src, dst)


def test_convert_order_bad_axis():
    with pytest.raises(ValueError, match=r"^axis must index an array of rank 4, got axis=4$"):
        convert_order(X4, 2, "tf", "torch", axis=4)


# espcn_jax.timing.time_fn: the contract only, never a timing assertion.


class ScriptedFn:
    """Looks jitted (it has ``lower``); each call advances a fake clock by a scripted step."""

    def __init__(self, steps_ms: list[float]):
        self.now_s, self.steps_ms, self.calls = 0.0, list(steps_ms), 0

    def lower(self, *args):  # only its presence matters: time_fn then skips jax.jit
        raise NotImplementedError

    def __call__(self, x):
        self.now_s += self.steps_ms[min(self.calls, len(self.steps_ms) - 1)] / 1e3
        self.calls += 1
        return x


def fake_clock(monkeypatch, fn: ScriptedFn) -> None:
    monkeypatch.setattr(timing, "time", types.SimpleNamespace(perf_counter=lambda: fn.now_s))


def test_time_fn_jits_a_plain_function_once():
    """A plain function is jitted by time_fn: Python runs it once (the trace), however many calls
    are made; the statistics are ordered as statistics must be."""
    traces = []

    def f(x):
        traces.append(1)
        return x + 1

    stats = timing.time_fn(f, jnp.ones(3), warmup=2, repeats=3)
    assert len(traces) == 1
    assert stats["repeats"] == 3
    assert 0 <= stats["min_ms"] <= stats["p25_ms"] <= stats["median_ms"] <= stats["p75_ms"]


@pytest.mark.skipif(timing.resource is None, reason="no resource module")
def test_time_fn_counts_page_faults_of_fresh_pages():
    """Each call writes one byte into each of 64 freshly mapped pages: >= 64 faults a call."""
    import mmap

    pages = 64

    def touch(x):
        buf = mmap.mmap(-1, pages * mmap.PAGESIZE)
        for i in range(pages):
            buf[i * mmap.PAGESIZE] = 1
        buf.close()
        return x

    touch.lower = None  # looks jitted: time_fn calls it as it is
    stats = timing.time_fn(touch, jnp.ones(1), warmup=1, repeats=5)
    assert stats["minor_faults_per_call"] >= pages


def test_time_fn_reports_faults_from_rusage(monkeypatch):
    """minor_faults_per_call = (ru_minflt after - before) / timed calls."""
    counts = iter([100, 160])
    monkeypatch.setattr(timing, "_minor_faults", lambda: next(counts))
    fn = ScriptedFn([1.0])
    fake_clock(monkeypatch, fn)
    stats = timing.time_fn(fn, jnp.ones(1), warmup=1, repeats=4)
    assert stats["minor_faults_per_call"] == pytest.approx(15.0)


@pytest.mark.parametrize(
    "kwargs",
    [{"arena_max": 0}, {"mmap_max": -1}, {"trim_threshold": 2**31}, {"trim_threshold": -1}],
)
def test_tune_malloc_rejects_values_mallopt_cannot_take(kwargs):
    ((name, value),) = kwargs.items()
    with pytest.raises(ValueError, match=rf"^tune_malloc needs .*{name}={value}"):
        timing.tune_malloc(**kwargs)


def test_tune_malloc_in_a_fresh_process():
    """Applied where the C library is glibc (reported back), a no-op (None) elsewhere."""
    import subprocess
    import sys

    code = "from espcn_jax import timing; print(timing.tune_malloc())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    line = out.stdout.strip()
    try:
        import ctypes

        glibc = ctypes.CDLL("libc.so.6").gnu_get_libc_version is not None
    except (OSError, AttributeError):
        glibc = False
    if glibc and sys.platform.startswith("linux"):
        assert "'arena_max': 1, 'mmap_max': 0, 'trim_threshold': 2147483647}" in line, line
    else:
        assert line == "None"


def test_time_fn_statistics_on_a_fake_clock(monkeypatch):
    fn = ScriptedFn([100.0, 7.0, 1.0, 3.0, 2.0, 4.0])  # compile, warm-up, then 4 timed calls
    fake_clock(monkeypatch, fn)
    stats = timing.time_fn(fn, jnp.ones(1), warmup=2, repeats=4)
    assert fn.calls == 6
    assert stats["compile_ms"] == pytest.approx(100.0)
    assert stats["min_ms"] == pytest.approx(1.0)
    assert stats["median_ms"] == pytest.approx(2.5)
    assert stats["repeats"] == 4


def test_time_fn_fills_min_time(monkeypatch):
    fn = ScriptedFn([1.0])
    fake_clock(monkeypatch, fn)
    stats = timing.time_fn(fn, jnp.ones(1), warmup=1, repeats=2, min_time_s=0.010)
    assert stats["repeats"] == 10  # ten 1 ms calls fill 10 ms


@pytest.mark.parametrize("repeats", [2, 4])
def test_time_fn_quartiles_lie_within_the_samples(monkeypatch, repeats):
    """p25/p75 are quartiles of the measured times, so min <= p25 <= median <= p75 <= max."""
    fn = ScriptedFn([5.0, 1.0, 3.0, 2.0, 4.0])
    fake_clock(monkeypatch, fn)
    stats = timing.time_fn(fn, jnp.ones(1), warmup=1, repeats=repeats)
    samples = [1.0, 3.0, 2.0, 4.0][:repeats]
    assert min(samples) <= stats["p25_ms"] + 1e-9
    assert stats["p25_ms"] <= stats["median_ms"] <= stats["p75_ms"]
    assert stats["p75_ms"] <= max(samples) + 1e-9


@pytest.mark.parametrize("kwargs,name", [({"warmup": 0}, "warmup"), ({"repeats": 0}, "repeats")])
def test_time_fn_rejects_fewer_than_one_call(kwargs, name):
    with pytest.raises(ValueError, match=rf"{name}=0"):
        timing.time_fn(lambda x: x, jnp.ones(1), **kwargs)


def test_check_ints():
    from espcn_jax.ops import check_ints

    assert check_ints(3, "k", 2, 1) == (3, 3)
    assert check_ints((2, np.int64(4)), "k", 2, 1) == (2, 4)
    for bad in [0, (1,), (1, 2, 3), 1.5, (True, 2), None, "ab"]:
        with pytest.raises(ValueError, match=r"^k must be 2 integers >= 1, got "):
            check_ints(bad, "k", 2, 1)
