"""Image sources: folders of HR images (or HR/LR pairs), scikit-image's photos, TFDS catalog data.

Every source becomes a :class:`Source`: uint8 RGB HR images ``(H, W, 3)`` (grey images expanded to
``R = G = B``, so one pipeline and one Y formula serve both), their names and, where the data
supplies them, LR images. Training patches are cut from these in :mod:`espcn_jax.pipeline`.

Names understood by :func:`make_source`:

- ``"skimage"``: the photographs bundled inside the scikit-image wheel, via the local TFDS builder
  :class:`espcn_jax.skimage_photos.SkimagePhotos` (splits ``train`` / ``validation``; built on first
  use into ``data_dir``, default :func:`default_data_dir`; no network).
- ``"folder"`` (``path=`` or ``"folder:PATH"``): every png/bmp/jpg in a directory or, if its
  images are named ``*_HR.*`` / ``*_LR.*`` (the Set5 layout), the HR/LR pairs.
- ``"tfds:NAME"`` (e.g. ``"tfds:div2k/bicubic_x3"``): a TFDS catalog data set already prepared in
  ``data_dir`` (TFDS's default ``~/tensorflow_datasets`` when None). Nothing is ever downloaded.

Folder rules: files whose suffix is not an image suffix are skipped with a logged warning; hidden
files and subdirectories are ignored; an image file that cannot be decoded is an error naming it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging as std_logging
import os
import re
from pathlib import Path

import numpy as np
from absl import logging
from PIL import Image

IMAGE_SUFFIXES = (".png", ".bmp", ".jpg", ".jpeg")
PAIR_PATTERN = re.compile(r"^(?P<stem>.+)_(?P<kind>HR|LR)$")
_GREY_MODES = ("1", "L", "LA", "La", "I;8")
_COLOUR_MODES = ("RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "P", "PA", "LAB", "HSV")


@functools.cache
def import_tf():
    """Imports TensorFlow with every accelerator hidden from it. Call before TF use.

    TensorFlow here only reads files and moves NumPy batches (``tf.data``, ``numpy_function``):
    it does no float arithmetic on our data, so oneDNN's custom kernels are off unless the user
    set ``TF_ENABLE_ONEDNN_OPTS`` (which also silences oneDNN's start-up notice), and TF's C++
    INFO/WARNING start-up lines are hidden unless the user set ``TF_CPP_MIN_LOG_LEVEL``.
    """
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    for kind in ("GPU", "TPU"):
        try:
            tf.config.set_visible_devices([], kind)
        except (RuntimeError, ValueError):  # runtime already initialised, or no such device type
            pass
    return tf


@contextlib.contextmanager
def quiet_tfds():
    """Within: TFDS's and TensorFlow's routine logs (build steps, progress bars, TF deprecation
    notices about TFDS's own code) are dropped; their errors still show."""
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core.utils import tqdm_utils

    loggers = [std_logging.getLogger(name) for name in ("absl", "tensorflow")]
    levels = [logger.level for logger in loggers]
    root_level = std_logging.root.level
    progress_bar = getattr(tqdm_utils, "_active", True)
    tfds.display_progress_bar(False)
    try:
        for logger in loggers:
            logger.setLevel(std_logging.ERROR)
        std_logging.root.setLevel(max(root_level, std_logging.ERROR))
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
        std_logging.root.setLevel(root_level)
        tfds.display_progress_bar(progress_bar)


def default_data_dir() -> Path:
    """Where the skimage TFDS data is built: ``$ESPCN_JAX_DATA_DIR`` or under ``~/.cache``."""
    env = os.environ.get("ESPCN_JAX_DATA_DIR")
    return Path(env) if env else Path.home() / ".cache" / "espcn_jax" / "tensorflow_datasets"


# --- files ---------------------------------------------------------------------------------------


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Decodes an 8-bit image file to uint8 ``(H, W, C)``, ``C = 1`` (grey) or ``3`` (colour).

    Alpha is dropped, palettes and CMYK become RGB, EXIF orientation is ignored (as in MATLAB's
    ``imread``). 16-bit and float images are rejected. Errors name the file.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"image file not found: {path}")
    try:
        with Image.open(path) as im:
            im.load()  # decode now, so truncated files fail here and not later
            if im.mode in _GREY_MODES:
                return np.asarray(im.convert("L"), np.uint8)[..., None]
            if im.mode in _COLOUR_MODES:
                return np.asarray(im.convert("RGB"), np.uint8)
            mode = im.mode
    except (OSError, SyntaxError, Image.DecompressionBombError) as e:
        first_line = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(f"cannot read image {path}: {first_line}") from None
    raise ValueError(f"image {path} has unsupported mode {mode!r}; need 8-bit grey or colour")


def as_rgb(image_HWC: np.ndarray) -> np.ndarray:
    """Grey ``(H, W, 1)`` to ``(H, W, 3)`` with ``R = G = B``; colour images pass through."""
    if image_HWC.ndim == 2:
        image_HWC = image_HWC[..., None]
    if image_HWC.ndim != 3 or image_HWC.shape[-1] not in (1, 3):
        raise ValueError(f"image must have shape (H, W, 1) or (H, W, 3), got {image_HWC.shape}")
    return np.repeat(image_HWC, 3, axis=-1) if image_HWC.shape[-1] == 1 else image_HWC


def _check_directory(directory: str | os.PathLike) -> Path:
    directory = Path(directory)
    if not directory.exists():
        raise ValueError(f"directory not found: {directory}")
    if not directory.is_dir():
        raise ValueError(f"not a directory: {directory}")
    return directory


def list_images(directory: str | os.PathLike) -> list[Path]:
    """The image files (``IMAGE_SUFFIXES``, any case) directly in ``directory``, sorted by name.

    Other files are skipped with a warning; hidden files and subdirectories are ignored. A missing
    directory or one without images is a ValueError naming it.
    """
    directory = _check_directory(directory)
    images, subdirs = [], []
    for entry in sorted(directory.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            subdirs.append(entry.name)
        elif entry.suffix.lower() in IMAGE_SUFFIXES:
            images.append(entry)
        else:
            logging.warning("skipping non-image file %s", entry)
    if not images:
        hint = f" (subdirectories: {', '.join(subdirs)})" if subdirs else ""
        raise ValueError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in {directory}{hint}")
    return images


def find_pairs(
    directory: str | os.PathLike, paths: list[Path] | None = None
) -> list[tuple[Path, Path]]:
    """``(hr_path, lr_path)`` pairs of a Set5-style directory (``X_HR.png`` next to ``X_LR.png``).

    Sorted by ``X``. ``paths``: the directory's :func:`list_images`, when the caller has it already
    (listing again would repeat its warnings). Raises ValueError if the directory has no
    ``*_HR``/``*_LR`` images or one of them lacks its partner (naming it).
    """
    found: dict[str, dict[str, Path]] = {}
    for path in list_images(directory) if paths is None else paths:
        m = PAIR_PATTERN.match(path.stem)
        if m:
            found.setdefault(m["stem"], {})[m["kind"]] = path
    if not found:
        raise ValueError(f"no *_HR / *_LR image pairs in {directory}")
    for parts in found.values():
        if len(parts) != 2:
            ((kind, path),) = parts.items()
            raise ValueError(f"{path} has no matching {'LR' if kind == 'HR' else 'HR'} image")
    return [(found[s]["HR"], found[s]["LR"]) for s in sorted(found)]


def is_pair_layout(paths: list[Path]) -> bool:
    """True if any image is named ``*_HR``/``*_LR``; then all must be (mixing is ambiguous)."""
    paired = [p for p in paths if PAIR_PATTERN.match(p.stem)]
    if paired and len(paired) != len(paths):
        odd = next(p for p in paths if not PAIR_PATTERN.match(p.stem))
        raise ValueError(f"{odd} is neither *_HR nor *_LR in a directory of HR/LR pairs")
    return bool(paired)


# --- sources -------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Source:
    """A data set held in memory: uint8 RGB HR images, their names and optional given LR images."""

    name: str
    hr: tuple[np.ndarray, ...]  # each (H, W, 3) uint8
    names: tuple[str, ...]
    lr: tuple[np.ndarray, ...] | None = None  # each (h, w, 3) uint8, when the data supplies LR

    def __post_init__(self):
        if not self.hr:
            raise ValueError(f"data source {self.name!r} has no images")
        lengths = {len(self.hr), len(self.names), len(self.hr if self.lr is None else self.lr)}
        if len(lengths) != 1:
            raise ValueError(f"data source {self.name!r}: hr, names and lr differ in length")
        for kind, images in (("HR", self.hr), ("LR", self.lr or ())):
            for image, name in zip(images, self.names, strict=False):
                if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
                    got = f"{image.dtype} {image.shape}"
                    raise ValueError(f"{kind} image {name} must be uint8 (H, W, 3), got {got}")

    def __len__(self) -> int:
        return len(self.hr)


def folder_source(directory: str | os.PathLike) -> Source:
    """Every image in ``directory`` as HR, or its HR/LR pairs if it has the Set5 layout."""
    paths = list_images(directory)
    if is_pair_layout(paths):
        pairs = find_pairs(directory, paths)
        return Source(
            name=f"folder:{directory}",
            hr=tuple(as_rgb(load_image(hr)) for hr, _ in pairs),
            names=tuple(str(hr) for hr, _ in pairs),
            lr=tuple(as_rgb(load_image(lr)) for _, lr in pairs),
        )
    return Source(
        name=f"folder:{directory}",
        hr=tuple(as_rgb(load_image(p)) for p in paths),
        names=tuple(str(p) for p in paths),
    )


def tfds_source(builder, split: str, image_key: str = "hr", lr_key: str = "lr") -> Source:
    """Reads a prepared TFDS ``builder``'s ``split`` into memory, sorted by name (or record id).

    ``image_key`` is the HR image feature (``"hr"`` in div2k and ours; ``"image"`` in most catalog
    image sets); ``lr_key`` is read too when the data set has it.
    """
    import tensorflow_datasets as tfds

    import_tf()
    name = f"tfds:{builder.info.full_name}"
    if split not in builder.info.splits:
        raise ValueError(f"split {split!r} not in {name}; it has {sorted(builder.info.splits)}")
    features = builder.info.features
    if image_key not in features:
        raise ValueError(f"{name} has no image feature {image_key!r}; it has {sorted(features)}")
    read_config = tfds.ReadConfig(add_tfds_id=True)
    with quiet_tfds():
        ds = builder.as_dataset(split=split, shuffle_files=False, read_config=read_config)
    records = []
    for ex in tfds.as_numpy(ds):
        key = ex["name"].decode() if "name" in features else ex["tfds_id"].decode()
        lr = as_rgb(ex[lr_key]) if lr_key in features else None
        records.append((_natural_key(key), key, as_rgb(ex[image_key]), lr))
    records.sort(key=lambda rec: rec[0])
    has_lr = lr_key in features
    return Source(
        name=f"{name}[{split}]",
        hr=tuple(rec[2] for rec in records),
        names=tuple(rec[1] for rec in records),
        lr=tuple(rec[3] for rec in records) if has_lr else None,
    )


def _natural_key(key: str) -> tuple:
    """Sort key that orders ``shard-00002__10`` before ``shard-00002__9`` numerically."""
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key))


def _skimage(split: str | None, data_dir: str | os.PathLike | None) -> Source:
    from espcn_jax import skimage_photos

    builder = skimage_photos.prepare(data_dir or default_data_dir())
    return tfds_source(builder, split or "train")


def _folder(path: str | os.PathLike, split: str | None) -> Source:
    if split is not None:
        raise ValueError(f"a folder is a single split; split must be None, got {split!r}")
    return folder_source(path)


def _catalog(tfds_name: str, split: str | None, data_dir: str | os.PathLike | None) -> Source:
    import tensorflow_datasets as tfds

    import_tf()
    try:
        builder = tfds.builder(tfds_name, data_dir=data_dir, try_gcs=False)
    except Exception as e:  # DatasetNotFoundError and config errors carry long multi-line messages
        raise ValueError(f"unknown TFDS data set {tfds_name!r}: {str(e).splitlines()[0]}") from None
    if not builder.is_prepared():
        raise ValueError(
            f"TFDS data set {tfds_name!r} is not prepared in {builder.data_dir}; prepare it first "
            f"(e.g. `tfds build {tfds_name} --data_dir=DIR`) and pass that data_dir"
        )
    return tfds_source(builder, split or "train")


KNOWN_SOURCES = ("skimage", "folder", "tfds:<name>")


def make_source(
    name: str,
    *,
    split: str | None = None,
    path: str | os.PathLike | None = None,
    data_dir: str | os.PathLike | None = None,
) -> Source:
    """Loads a data source: ``"skimage"``, ``"folder"`` / ``"folder:PATH"`` or ``"tfds:NAME"``.

    ``split``: ``"train"`` (default) or ``"validation"`` for skimage and TFDS data; must be None for
    folders. ``data_dir``: TFDS data directory (the skimage build goes to :func:`default_data_dir`
    when None; catalog data is looked up where TFDS looks by default).
    """
    kind, arg = parse_source_name(name)
    if kind == "folder":
        if arg and path is not None:
            raise ValueError(f"give the folder once, as {name!r} or path={path!r}, not both")
        if not (arg or path):
            raise ValueError("data source 'folder' needs a directory: path=... or 'folder:PATH'")
        return _folder(arg or path, split)
    if path is not None:
        raise ValueError(f"path is only for folder sources, got path={path!r} for {name!r}")
    if kind == "skimage":
        return _skimage(split, data_dir)
    return _catalog(arg, split, data_dir)


def parse_source_name(name: str) -> tuple[str, str]:
    """``"folder:/data/T91" -> ("folder", "/data/T91")``; ValueError for a name
    :func:`make_source` does not understand (without reading anything)."""
    kind, _, arg = str(name).partition(":")
    if (kind == "skimage" and not arg) or kind == "folder" or (kind == "tfds" and arg):
        return kind, arg
    raise ValueError(f"unknown data source {name!r}; known: {', '.join(KNOWN_SOURCES)}")
