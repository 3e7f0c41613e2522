"""Periodic shuffle (pixel shuffle) in both channel orders, and its inverse.

Conventions: activations NHWC. For scale ``r`` and ``C`` output channels:

- ``"tf"`` (DCR, ``tf.nn.depth_to_space``):
  ``out[n, h*r+a, w*r+b, c] = in[n, h, w, (a*r+b)*C + c]``
- ``"torch"`` (CRD, ``torch.nn.PixelShuffle``):
  ``out[n, h*r+a, w*r+b, c] = in[n, h, w, c*r*r + a*r + b]``
"""

from __future__ import annotations

import operator

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec

ORDERS = ("tf", "torch")


def check_positive_int(r, name: str = "r") -> int:
    """``r`` as an int, or ValueError unless it is an integer >= 1 (not a bool): scales, widths, depths, sizes."""
    try:
        if isinstance(r, bool):
            raise TypeError
        r_int = operator.index(r)
    except TypeError:
        raise ValueError(f"{name} must be an integer >= 1, got {r!r}") from None
    if r_int < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {r!r}")
    return r_int


def check_ints(value, name: str, count: int, minimum: int) -> tuple[int, ...]:
    """``value`` (one int, or ``count`` of them) as a tuple of ``count`` ints >= ``minimum``."""
    if isinstance(value, int | np.integer):
        values = (value,) * count
    else:
        try:
            values = tuple(value)
        except TypeError:
            raise ValueError(
                f"{name} must be {count} integers >= {minimum}, got {value!r}"
            ) from None
    if len(values) != count or any(
        isinstance(v, bool) or not isinstance(v, int | np.integer) or v < minimum for v in values
    ):
        raise ValueError(f"{name} must be {count} integers >= {minimum}, got {value!r}")
    return tuple(int(v) for v in values)


def check_order(order: str, name: str = "order") -> str:
    """Returns ``order``, or raises ValueError unless it is one of :data:`ORDERS`."""
    if order not in ORDERS:
        raise ValueError(f"{name} must be one of {ORDERS}, got {order!r}")
    return order


def _check_rank4(x: jax.Array, name: str = "x") -> None:
    if jnp.ndim(x) != 4:
        raise ValueError(f"{name} must be an NHWC array of rank 4, got shape {jnp.shape(x)}")


def pixel_shuffle(x: jax.Array, r: int, order: str = "tf") -> jax.Array:
    """``(N, H, W, C*r*r) -> (N, H*r, W*r, C)``: the periodic shuffle PS_r."""
    r, order = check_positive_int(r), check_order(order)
    _check_rank4(x)
    if x.shape[-1] % (r * r):
        raise ValueError(f"x channels must be divisible by r*r={r * r}, got {x.shape[-1]} channels")
    return shuffle_2d(x, r, r, order)


def pixel_unshuffle(x: jax.Array, r: int, order: str = "tf") -> jax.Array:
    """``(N, H*r, W*r, C) -> (N, H, W, C*r*r)``: inverse of ``pixel_shuffle``, space-to-depth."""
    r, order = check_positive_int(r), check_order(order)
    _check_rank4(x)
    if x.shape[1] % r or x.shape[2] % r:
        raise ValueError(f"x height and width must be divisible by r={r}, got shape {x.shape}")
    return unshuffle_2d(x, r, r, order)


def reshape_keep_batch(x: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """``x.reshape(shape)`` for a ``shape`` that keeps axis 0 (the batch), and keeps its sharding.

    Under a mesh with Explicit axes (``jax.make_mesh``'s default in jax 0.10), a reshape that
    merges or splits several axis groups at once has no sharding rule and raises
    ``ShardingTypeError``, even when the sharded batch axis is untouched; naming the output's
    sharding (the batch axis's mesh axes, the rest unsharded) resolves it. Anywhere else (no mesh,
    Auto axes, a replicated batch) this is a plain reshape.
    """
    spec = jax.typeof(x).sharding.spec
    batch = spec[0] if len(spec) else None
    if batch is None:
        return jnp.reshape(x, shape)
    if shape[0] != x.shape[0]:
        raise ValueError(f"reshape_keep_batch must keep axis 0 ({x.shape[0]}), got shape {shape}")
    return jax.lax.reshape(
        x, shape, out_sharding=PartitionSpec(batch, *([None] * (len(shape) - 1)))
    )


def shuffle_2d(x_NHWC: jax.Array, rh: int, rw: int, order: str) -> jax.Array:
    """Periodic shuffle with per-axis factors (``rh`` along H, ``rw`` along W), unchecked.

    Channel ``(a*rw + b)*C + c`` ("tf") or ``c*rh*rw + a*rw + b`` ("torch") lands at output
    ``(h*rh + a, w*rw + b, c)``; :func:`pixel_shuffle` is the checked square case.
    """
    n, h, w, crr = x_NHWC.shape
    c = crr // (rh * rw)
    if order == "tf":
        x = x_NHWC.reshape(n, h, w, rh, rw, c).transpose(0, 1, 3, 2, 4, 5)
    else:
        x = x_NHWC.reshape(n, h, w, c, rh, rw).transpose(0, 1, 4, 2, 5, 3)
    return reshape_keep_batch(x, (n, h * rh, w * rw, c))  # from (n, h, a, w, b, c)


def unshuffle_2d(x_NHWC: jax.Array, rh: int, rw: int, order: str) -> jax.Array:
    """Inverse of :func:`shuffle_2d`, unchecked."""
    n, hr, wr, c = x_NHWC.shape
    h, w = hr // rh, wr // rw
    x = reshape_keep_batch(x_NHWC, (n, h, rh, w, rw, c))  # n, h, a, w, b, c
    if order == "tf":
        x = x.transpose(0, 1, 3, 2, 4, 5)  # n, h, w, a, b, c
    else:
        x = x.transpose(0, 1, 3, 5, 2, 4)  # n, h, w, c, a, b
    return reshape_keep_batch(x, (n, h, w, rh * rw * c))


def convert_order(x: jax.Array, r: int, src: str, dst: str, axis: int = -1) -> jax.Array:
    """Permutes a ``C*r*r`` channel axis from shuffle order ``src`` to ``dst``.

    Works on activations (``axis=-1`` of NHWC) and on kernels: the output axis of an HWIO kernel
    feeding :func:`pixel_shuffle` (``axis=-1``), or the input axis of one reading the output of
    :func:`pixel_unshuffle` (``axis=-2``). ``pixel_shuffle(convert_order(x, r, "tf", "torch"), r,
    "torch") == pixel_shuffle(x, r, "tf")``.
    """
    r, src, dst = check_positive_int(r), check_order(src, "src"), check_order(dst, "dst")
    ndim = jnp.ndim(x)
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis must index an array of rank {ndim}, got axis={axis}")
    axis %= ndim
    size = x.shape[axis]
    if size % (r * r):
        raise ValueError(f"axis {axis} must have a size divisible by r*r={r * r}, got {size}")
    if src == dst:
        return x
    c = size // (r * r)
    # "tf" splits the axis as (phase, c), "torch" as (c, phase); converting swaps the two factors.
    split = (r * r, c) if src == "tf" else (c, r * r)
    reshape = reshape_keep_batch if axis > 0 else jnp.reshape
    x = reshape(x, x.shape[:axis] + split + x.shape[axis + 1 :])
    x = jnp.swapaxes(x, axis, axis + 1)
    return reshape(x, x.shape[:axis] + (size,) + x.shape[axis + 2 :])
