"""The photographs bundled in the scikit-image wheel as a local TFDS data set, ``skimage_photos``.

Offline by construction: the builder reads the files in ``skimage/data/`` (those ``skimage.data``
loads without its download registry) and downloads nothing; :func:`prepare` also turns off TFDS's
GCS mirror. Going through TFDS means one reader serves this set and catalog sets such as div2k.

Selection: camera/microscope/telescope photographs only. Left out: synthetic images (chessboard,
color, phantom, logo, horse), ``clock_motion`` (synthetic motion blur), ``motorcycle_right`` (the
stereo twin of ``motorcycle_left``), ``microaneurysms`` (a 102 x 102 crop).

Split (fixed; changing it needs a new ``VERSION``): ``validation`` = chelsea (colour), coins (grey,
objects), gravel (grey, texture); ``train`` = the other 14. Grey photographs are stored as RGB with
``R = G = B``.

Features: ``hr`` (uint8 ``(H, W, 3)``, PNG: lossless, so the stored array is the decoded file) and
``name`` (the ``skimage.data`` name).
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
from pathlib import Path

import skimage
import tensorflow_datasets as tfds
from absl import logging

from espcn_jax import data

# skimage.data name -> file in skimage/data/ (shape as bundled, before grey -> RGB).
PHOTOS = {
    "astronaut": "astronaut.png",  # 512 x 512 x 3
    "brick": "brick.png",  # 512 x 512 grey
    "camera": "camera.png",  # 512 x 512 grey
    "cell": "cell.png",  # 660 x 550 grey
    "chelsea": "chelsea.png",  # 300 x 451 x 3
    "coffee": "coffee.png",  # 400 x 600 x 3
    "coins": "coins.png",  # 303 x 384 grey
    "grass": "grass.png",  # 512 x 512 grey
    "gravel": "gravel.png",  # 512 x 512 grey
    "hubble_deep_field": "hubble_deep_field.jpg",  # 872 x 1000 x 3
    "immunohistochemistry": "ihc.png",  # 512 x 512 x 3
    "moon": "moon.png",  # 512 x 512 grey
    "motorcycle_left": "motorcycle_left.png",  # 500 x 741 x 3
    "page": "page.png",  # 191 x 384 grey
    "retina": "retina.jpg",  # 1411 x 1411 x 3
    "rocket": "rocket.jpg",  # 427 x 640 x 3
    "text": "text.png",  # 172 x 448 grey
}
VALIDATION = ("chelsea", "coins", "gravel")
TRAIN = tuple(sorted(set(PHOTOS) - set(VALIDATION)))
SPLITS = {"train": TRAIN, "validation": VALIDATION}


def bundled_dir() -> Path:
    """The ``skimage/data`` directory of the installed wheel."""
    return Path(skimage.__file__).parent / "data"


def photo_path(name: str) -> Path:
    if name not in PHOTOS:
        raise ValueError(f"unknown scikit-image photo {name!r}; known: {', '.join(PHOTOS)}")
    return bundled_dir() / PHOTOS[name]


class SkimagePhotos(tfds.core.GeneratorBasedBuilder):
    """scikit-image's bundled photographs (registered in TFDS as ``skimage_photos``)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "17 photographs; validation = chelsea, coins, gravel."}
    # No code path, hence no checksums file to look up: nothing is downloaded. (TFDS 4.9.10 resolves
    # the code path through `importlib_resources`, a backport it does not install on Python >= 3.9.)
    code_path = None

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "hr": tfds.features.Image(shape=(None, None, 3), encoding_format="png"),
                    "name": tfds.features.Text(),
                }
            ),
            homepage="https://scikit-image.org/docs/stable/api/skimage.data.html",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        return {split: self._generate_examples(names) for split, names in SPLITS.items()}

    def _generate_examples(self, names):
        for name in names:
            yield name, {"hr": data.as_rgb(data.load_image(photo_path(name))), "name": name}


@contextlib.contextmanager
def _build_lock(data_dir: str | os.PathLike):
    """Holds an exclusive lock on ``data_dir/skimage_photos.lock`` (a local ``data_dir``), so that
    processes starting together build the set once: the others wait, then find it prepared.
    (Two first runs building at once used to fail in TFDS's final rename.) A remote
    ``data_dir`` (``gs://``) is not locked."""
    path = os.fspath(data_dir)
    if "://" in path:
        yield
        return
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "skimage_photos.lock"), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def prepare(data_dir: str | os.PathLike) -> SkimagePhotos:
    """The builder over ``data_dir``, built there from the bundled files if not yet (no network).

    The build is quiet: TFDS prints "Downloading and preparing dataset ..." to stdout (where a
    driver's result goes) and shows progress bars; both are kept off the terminal and the printed
    lines are logged at INFO instead.
    """
    data.import_tf()
    printed = io.StringIO()
    with _build_lock(data_dir), contextlib.redirect_stdout(printed), data.quiet_tfds():
        builder = SkimagePhotos(data_dir=os.fspath(data_dir))  # warns when the folder is new
        if not builder.is_prepared():
            builder.download_and_prepare(
                download_config=tfds.download.DownloadConfig(try_download_gcs=False)
            )
    for line in printed.getvalue().splitlines():
        logging.info("tfds: %s", line)
    return builder
