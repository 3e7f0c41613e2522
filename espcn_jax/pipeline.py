"""Training batches: aligned random LR/HR patches, a pure function of (seed, step), fed to devices.

LR is made once per image, as the evaluation protocol makes it (docs/evaluation.md): HR mod-cropped to a
multiple of ``r``, MATLAB bicubic downscale on uint8 (:func:`degrade`). Patches are then cut *aligned*: LR
patch ``lr[i:i+p, j:j+p]`` goes with HR patch ``hr[r*i : r*(i+p), r*j : r*(j+p)]``. Cropping the
downscaled image (rather than downscaling a crop) gives the network the LR pixels it will see at
test time: a downscaled crop differs at its borders, where the bicubic filter (``4r`` HR taps) would
read mirrored pixels instead of the image's own.

Each batch element is a dihedral transform ``t`` in ``0..7`` (``t % 4`` quarter turns, then a
left-right flip if ``t >= 4``) applied to both patches; it keeps them aligned, since each LR pixel
maps to one ``r x r`` HR block. Values: float32 in ``[0, 1]`` (uint8 / 255), channels Y (MATLAB
``rgb2ycbcr`` on uint8, rounded) or RGB.

Where patches come from (:class:`PatchSampler`): ``balance="images"`` picks an image uniformly, then
a position uniformly in it; ``balance="pixels"`` draws uniformly over every valid LR position of
every image (a large photo then dominates: in the embedded training split one photo gets 37% of
the patches). ``min_std`` rejects near-flat patches (LR patch standard deviation, uint8 units) and
redraws them. Images smaller than the patch are skipped with a warning. The defaults were chosen
by validation PSNR (BUILD_NOTES.md).

LR making and Y conversion run on the host CPU whatever the default device is (a TPU or GPU host
would otherwise run them on the accelerator at start-up and copy every image back).

Determinism: the batch for step ``s`` depends only on ``(seed, s)`` (a NumPy ``SeedSequence([seed,
s])``), so a run resumed at step ``s`` sees the batches an uninterrupted run would.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import queue
import threading
from collections.abc import Iterable, Iterator, Sequence

import jax
import numpy as np

from espcn_jax import bicubic, images, ops
from espcn_jax.data import Source, import_tf

COLORS = ("y", "rgb")
BALANCES = ("images", "pixels")
NUM_TRANSFORMS = 8
MAX_REDRAWS = 10_000  # rounds of min_std rejection before the sampler gives up on a batch
_log = logging.getLogger(__name__)


def on_host() -> contextlib.AbstractContextManager:
    """Runs JAX computations on uncommitted inputs inside it on this process's first CPU device
    (``jax.devices("cpu")[0]`` belongs to process 0 after ``jax.distributed.initialize()``)."""
    return jax.default_device(jax.local_devices(backend="cpu")[0])


def process_rows(sharding: jax.sharding.Sharding, batch_size: int) -> slice:
    """The rows of a global ``(batch_size, ...)`` batch that this process's devices hold under
    ``sharding``: one contiguous slice (all rows on one process, ``[k*B/n, (k+1)*B/n)`` for
    process ``k`` of ``n`` under a ``("data",)`` mesh over ``jax.devices()``).

    Each process makes only these rows and assembles the global array with
    ``jax.make_array_from_process_local_data``; ValueError if they are not contiguous (a mesh
    whose device order interleaves processes)."""
    batch_size = ops.check_positive_int(batch_size, "batch_size")
    spans = set()
    for index in sharding.addressable_devices_indices_map((batch_size,)).values():
        start, stop, _ = index[0].indices(batch_size)
        spans.add((start, stop))
    spans = sorted(spans)
    for (_, stop), (start, _) in zip(spans, spans[1:], strict=False):
        if start != stop:
            raise ValueError(
                f"this process's rows of the batch are not contiguous under {sharding}: {spans}"
            )
    return slice(spans[0][0], spans[-1][1])


PAD_MULTIPLE = 64  # LR pixels; images are edge-padded up to it, so few shapes are compiled
_Y_CHUNK = 1 << 16  # pixels per compiled rgb_to_y call


@jax.jit
def _rgb_to_y_jit(rgb_N3: jax.Array) -> jax.Array:
    return images.rgb_to_y(rgb_N3)


def rgb_to_y(rgb_HWC: np.ndarray) -> np.ndarray:
    """uint8 RGB ``(H, W, 3)`` -> uint8 Y ``(H, W, 1)`` by :func:`images.rgb_to_y` (MATLAB's).

    Pointwise, so it runs on fixed-size chunks of pixels: one compilation for every image size.
    """
    if rgb_HWC.dtype != np.uint8 or rgb_HWC.ndim != 3 or rgb_HWC.shape[-1] != 3:
        raise ValueError(f"rgb_HWC must be uint8 (H, W, 3), got {rgb_HWC.dtype} {rgb_HWC.shape}")
    flat = rgb_HWC.reshape(-1, 3)
    n = flat.shape[0]
    flat = np.pad(flat, ((0, -n % _Y_CHUNK), (0, 0)))
    with on_host():
        y = [np.asarray(_rgb_to_y_jit(c)) for c in np.split(flat, flat.shape[0] // _Y_CHUNK)]
    return np.concatenate(y)[:n].astype(np.uint8).reshape(*rgb_HWC.shape[:2], 1)


@functools.partial(jax.jit, static_argnums=1)
def _downscale_uint8(hr_NHWC: jax.Array, r: int) -> jax.Array:
    return bicubic.downscale(hr_NHWC, r, border="edge", round_passes=True)


def degrade(hr_HWC: np.ndarray, r: int) -> np.ndarray:
    """The protocol's LR image, MATLAB's ``imresize(modcrop(hr, r), 1/r, 'bicubic')`` on uint8.

    ``round_passes=True`` rounds after each 1-D pass as MATLAB does on uint8 input, so this
    reproduces the Set5 benchmark's LR images bit for bit. To compile few shapes, the HR image is
    edge-padded at the bottom and right to ``r * PAD_MULTIPLE``: exact, because MATLAB's (and
    ``border="edge"``'s) border rule reads the edge pixel wherever the filter leaves the image.
    """
    hr = images.mod_crop(hr_HWC, r)
    h, w = hr.shape[0] // r, hr.shape[1] // r
    pad = ((0, -h % PAD_MULTIPLE * r), (0, -w % PAD_MULTIPLE * r), (0, 0))
    with on_host():
        lr = _downscale_uint8(np.pad(hr, pad, mode="edge")[None], r)
    return np.asarray(lr[0, :h, :w]).astype(np.uint8)


def dihedral(x_HWC: np.ndarray, t: int) -> np.ndarray:
    """The dihedral transform ``t`` (``0..7``): ``t % 4`` counter-clockwise quarter turns, then a
    left-right flip if ``t >= 4``."""
    x = np.rot90(x_HWC, k=t % 4, axes=(0, 1))
    return x[:, ::-1] if t >= 4 else x


class PatchSampler:
    """Batches of aligned LR/HR patches from a :class:`Source`, a pure function of ``(seed, step)``.

    ``patch`` is the LR patch side; HR patches are ``scale * patch``. Given LR images (HR/LR pairs)
    are used as they are and must be ``1/scale`` of the mod-cropped HR; otherwise LR is made with
    :func:`degrade`. Holds all images in memory (uint8, one or three channels).

    ``rescales``: scale factors in (0, 1); every HR image is also used shrunk by each (MATLAB
    bicubic, antialiased) as a further image, the usual scale augmentation of SR training when
    data are few.

    ``balance``: ``"images"`` (every image equally often) or ``"pixels"`` (every LR position equally
    often). ``min_std``: patches whose LR patch (the channels trained on, uint8 units) has a standard
    deviation below it are redrawn. Images smaller than the HR patch are skipped with a warning; a
    ValueError names the largest image if none is large enough.
    """

    def __init__(
        self,
        source: Source,
        *,
        scale: int,
        patch: int,
        batch_size: int,
        seed: int,
        color: str = "y",
        augment: bool = True,
        balance: str = "pixels",
        min_std: float = 0.0,
        rescales: Sequence[float] = (),
    ):
        self.scale = ops.check_positive_int(scale, "scale")
        self.patch = ops.check_positive_int(patch, "patch")
        self.batch_size = ops.check_positive_int(batch_size, "batch_size")
        self.seed = _check_seed(seed)
        if color not in COLORS:
            raise ValueError(f"color must be one of {COLORS}, got {color!r}")
        if balance not in BALANCES:
            raise ValueError(f"balance must be one of {BALANCES}, got {balance!r}")
        try:
            std = float(min_std)
        except (TypeError, ValueError):
            std = float("nan")
        if not 0.0 <= std < 128.0:
            raise ValueError(f"min_std must be a number in [0, 128) (uint8 units), got {min_std!r}")
        self.color, self.augment, self.balance, self.min_std = (
            color,
            bool(augment),
            balance,
            min_std,
        )
        self.rescales = _check_rescales(rescales)
        r, p = self.scale, self.patch
        self.hr, self.lr, names, skipped = [], [], [], []
        for name, image, given_lr in _rescaled(source, self.rescales):
            if min(image.shape[0] // r, image.shape[1] // r) < p:
                skipped.append((name, image.shape))
                continue
            hr = images.mod_crop(image, r)
            lr = degrade(hr, r) if given_lr is None else given_lr
            if lr.shape[:2] != (hr.shape[0] // r, hr.shape[1] // r):
                raise ValueError(
                    f"LR image of {name} is {lr.shape[1]}x{lr.shape[0]}, expected 1/{r} "
                    f"of its HR image ({hr.shape[1]}x{hr.shape[0]} after mod-crop)"
                )
            if color == "y":
                hr, lr = rgb_to_y(hr), rgb_to_y(lr)
            self.hr.append(np.ascontiguousarray(hr))
            self.lr.append(np.ascontiguousarray(lr))
            names.append(name)
        need = f"the HR patch {r * p}x{r * p} (LR patch {p}, scale {r})"
        if not self.lr:
            name, (h, w, _) = max(skipped, key=lambda item: min(item[1][0], item[1][1]))
            raise ValueError(
                f"no image of {source.name!r} is large enough for {need}: the largest, {name}, "
                f"is {w}x{h}"
            )
        for name, (h, w, _) in skipped:
            _log.warning("skipping image %s (%dx%d): smaller than %s", name, w, h, need)
        self.names = tuple(names)
        self._sizes = np.array([lr.shape[:2] for lr in self.lr]) - p + 1  # valid corners per axis
        counts = self._sizes[:, 0] * self._sizes[:, 1]  # patches each image may give
        if self.min_std > 0:
            counts = np.array([_count_patches(lr, p, self.min_std) for lr in self.lr])
            if not counts.any():
                raise ValueError(
                    f"min_std={self.min_std} leaves no LR patch of {source.name!r}: every "
                    f"{p}x{p} patch has a smaller standard deviation"
                )
            for name in np.asarray(self.names)[counts == 0]:
                _log.warning("skipping image %s: no LR patch with std >= %g", name, self.min_std)
        self.patch_counts = counts
        self._cum_counts = np.cumsum(counts)
        self._usable = np.flatnonzero(counts)

    @property
    def channels(self) -> int:
        return 1 if self.color == "y" else 3

    def _draw(self, u: np.ndarray) -> np.ndarray:
        """Uniforms ``(n, 4)`` -> rows ``(image, i, j, t)`` under ``balance``."""
        if self.balance == "pixels":  # an image with the odds of its patch count
            position = _floor_below(u[:, 0], self._cum_counts[-1])
            image = np.searchsorted(self._cum_counts, position, side="right")
        else:
            image = self._usable[_floor_below(u[:, 0], len(self._usable))]
        sizes = self._sizes[image]
        i, j = _floor_below(u[:, 1], sizes[:, 0]), _floor_below(u[:, 2], sizes[:, 1])
        t = _floor_below(u[:, 3], NUM_TRANSFORMS) if self.augment else np.zeros_like(i)
        return np.stack([image, i, j, t], axis=1).astype(np.int64)

    def patch_std(self, image: int, i: int, j: int) -> float:
        """Standard deviation of an LR patch (all its channels), uint8 units."""
        p = self.patch
        x = self.lr[image][i : i + p, j : j + p].astype(np.int64)
        n, s1, s2 = x.size, x.sum(), (x * x).sum()
        return float(np.sqrt(n * s2 - s1 * s1) / n)  # exact integers under the root

    def locate(self, step: int) -> np.ndarray:
        """``(batch_size, 4)`` int64 rows ``(image, i, j, t)``: LR patch corner and transform.

        Drawn from ``SeedSequence([seed, step])`` with ``Generator.random`` only (a stream NumPy
        keeps stable across versions), mapped to integers by floor and search. The image is drawn
        by ``balance`` among those with a patch to give; with ``min_std``, the corners of rejected
        rows are redrawn in the same image, in row order, from the same stream until accepted.
        So ``"pixels"`` is uniform over the accepted patches, ``"images"`` uniform over images.
        """
        step = _check_seed(step, "step")
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, step])))
        rows = self._draw(rng.random((self.batch_size, 4)))
        if self.min_std <= 0:
            return rows
        for _ in range(MAX_REDRAWS):
            flat = np.array([self.patch_std(k, i, j) < self.min_std for k, i, j, _ in rows])
            if not flat.any():
                return rows
            u, sizes = rng.random((int(flat.sum()), 2)), self._sizes[rows[flat, 0]]
            rows[flat, 1] = _floor_below(u[:, 0], sizes[:, 0])
            rows[flat, 2] = _floor_below(u[:, 1], sizes[:, 1])
        raise ValueError(
            f"min_std={self.min_std}: no accepted patch in {MAX_REDRAWS} draws at step {step} "
            "(an image's non-flat patches are too rare; lower min_std)"
        )

    def batch(self, step: int, rows: slice = slice(None)) -> dict[str, np.ndarray]:
        """``{"lr": (B, p, p, C), "hr": (B, r*p, r*p, C)}`` float32 in ``[0, 1]`` for ``step``.

        ``rows``: only these rows of the batch (``B`` = their count), e.g. this process's
        :func:`process_rows`; they equal the same rows of the whole batch, since :meth:`locate`
        draws the whole batch whatever the slice."""
        p, r = self.patch, self.scale
        located = self.locate(step)[rows]
        lr_BHWC = np.empty((len(located), p, p, self.channels), np.float32)
        hr_BHWC = np.empty((len(located), r * p, r * p, self.channels), np.float32)
        for b, (k, i, j, t) in enumerate(located):
            lr_BHWC[b] = dihedral(self.lr[k][i : i + p, j : j + p], t)
            hr_BHWC[b] = dihedral(self.hr[k][r * i : r * (i + p), r * j : r * (j + p)], t)
        lr_BHWC *= 1.0 / 255.0
        hr_BHWC *= 1.0 / 255.0
        return {"lr": lr_BHWC, "hr": hr_BHWC}


def _check_rescales(rescales) -> tuple[float, ...]:
    try:
        out = tuple(float(s) for s in (rescales or ()))
    except (TypeError, ValueError):
        out = (math.nan,)
    if not all(0.0 < s < 1.0 for s in out) or len(set(out)) != len(out):
        raise ValueError(f"rescales must be distinct numbers in (0, 1), got {rescales!r}")
    return out


def _rescaled(source: Source, rescales: tuple[float, ...]):
    """``(name, HR image, given LR image or None)`` of every source image, each followed by its
    copies shrunk by ``rescales`` (MATLAB bicubic, :func:`bicubic.imresize_uint8`; named
    ``name@scale``, their LR made by :func:`degrade`)."""
    for k, (name, image) in enumerate(zip(source.names, source.hr, strict=True)):
        yield name, image, None if source.lr is None else source.lr[k]
        for s in rescales:
            yield f"{name}@{s:g}", bicubic.imresize_uint8(np.asarray(image), s), None


def _count_patches(lr_HWC: np.ndarray, p: int, min_std: float) -> int:
    """How many ``p x p`` patches of ``lr_HWC`` have a standard deviation >= ``min_std``
    (as :meth:`PatchSampler.patch_std`: exact integer sums over box windows)."""
    x = lr_HWC.astype(np.int64)

    def box(v):  # sums over every p x p window
        c = np.pad(v.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
        return c[p:, p:] - c[:-p, p:] - c[p:, :-p] + c[:-p, :-p]

    n = p * p * x.shape[2]
    s1, s2 = box(x.sum(axis=2)), box((x * x).sum(axis=2))
    return int(np.count_nonzero(np.sqrt(n * s2 - s1 * s1) / n >= min_std))


def _floor_below(u: np.ndarray, n) -> np.ndarray:
    """``floor(u * n)`` for ``u`` in ``[0, 1)``, clipped to ``n - 1`` (the product may round up)."""
    return np.minimum(np.floor(u * n), np.asarray(n) - 1).astype(np.int64)


def _check_seed(value, name: str = "seed") -> int:
    try:
        v = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}") from None
    if v != value or v < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    return v


def tf_dataset(
    sampler: PatchSampler,
    *,
    start_step: int = 0,
    num_steps: int | None = None,
    rows: slice = slice(None),
):
    """A ``tf.data.Dataset`` of the batches for steps ``start_step, start_step + 1, ...`` (only
    ``rows`` of each, as :meth:`PatchSampler.batch`).

    Batches are made by ``sampler.batch`` on tf.data's thread pool (``deterministic=True`` keeps
    step order) and prefetched; endless when ``num_steps`` is None. TensorFlow sees no accelerator.
    """
    tf = import_tf()
    start_step = _check_seed(start_step, "start_step")
    if num_steps is None:
        steps = tf.data.Dataset.counter(start_step)
    else:
        steps = tf.data.Dataset.range(start_step, start_step + _check_seed(num_steps, "num_steps"))
    p, r, c = sampler.patch, sampler.scale, sampler.channels
    b = len(range(sampler.batch_size)[rows])

    def make(step):
        lr, hr = tf.numpy_function(
            lambda s: _lr_hr(sampler.batch(int(s), rows)), [step], (tf.float32, tf.float32)
        )
        lr = tf.ensure_shape(lr, (b, p, p, c))
        return {"lr": lr, "hr": tf.ensure_shape(hr, (b, r * p, r * p, c))}

    ds = steps.map(make, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)


def _lr_hr(batch: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    return batch["lr"], batch["hr"]


def place(
    batch: dict[str, np.ndarray],
    sharding: jax.sharding.Sharding | None,
    batch_size: int | None = None,
) -> dict[str, jax.Array]:
    """A batch on devices: this process's rows of a global batch of ``batch_size`` rows (default:
    ``batch`` is the whole batch) assembled by ``jax.make_array_from_process_local_data``.

    Only local transfers: unlike ``jax.device_put`` of a global array, no cross-process check
    runs (jax 0.10's ``assert_equal``, a collective), so it is safe in a background thread.
    ``sharding=None``: the default device."""
    if sharding is None:
        return jax.device_put(batch)
    return {
        k: jax.make_array_from_process_local_data(
            sharding, v, (v.shape[0] if batch_size is None else batch_size, *v.shape[1:])
        )
        for k, v in batch.items()
    }


def prefetch_to_device(
    batches: Iterable[dict[str, np.ndarray]],
    size: int = 2,
    sharding: jax.sharding.Sharding | None = None,
    batch_size: int | None = None,
) -> Iterator[dict[str, jax.Array]]:
    """``batches`` transferred to devices by a background thread, ``size`` of them ahead of use.

    The thread pulls the next batch (for tf.data: its conversion to NumPy) and starts its
    transfer (:func:`place`) while the training thread dispatches steps, so neither waits on the
    other; one producer and a FIFO queue keep the order. An exception in ``batches`` is raised
    here, at the batch where it happened. Closing the generator stops the thread.

    ``sharding``: e.g. ``NamedSharding(mesh, P("data"))`` to split the batch axis over a mesh's
    ``data`` axis; None puts batches on the default device. ``batch_size``: the global batch's
    rows when ``batches`` hold only this process's :func:`process_rows`.
    """
    size = ops.check_positive_int(size, "size")
    items: queue.Queue = queue.Queue(maxsize=size)
    stop = threading.Event()
    end = object()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                items.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for batch in batches:
                if not put(("batch", place(batch, sharding, batch_size))):
                    return
        except BaseException as e:  # handed to the consumer, raised in its thread
            put(("error", e))
            return
        put(("batch", end))

    thread = threading.Thread(target=produce, name="prefetch_to_device", daemon=True)
    thread.start()
    try:
        while True:
            kind, item = items.get()
            if kind == "error":
                raise item
            if item is end:
                return
            yield item
    finally:
        stop.set()
        thread.join(timeout=5.0)


def device_batches(
    sampler: PatchSampler,
    *,
    start_step: int = 0,
    num_steps: int | None = None,
    sharding: jax.sharding.Sharding | None = None,
    prefetch: int = 2,
) -> Iterator[dict[str, jax.Array]]:
    """Batches for steps ``start_step, ...`` on device: :func:`tf_dataset`, prefetched. Under a
    ``sharding``, each process makes only its :func:`process_rows` of each batch."""
    rows = slice(None) if sharding is None else process_rows(sharding, sampler.batch_size)
    ds = tf_dataset(sampler, start_step=start_step, num_steps=num_steps, rows=rows)
    return prefetch_to_device(ds.as_numpy_iterator(), prefetch, sharding, sampler.batch_size)
