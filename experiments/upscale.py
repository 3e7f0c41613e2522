"""Upscales your own images with a trained run: PNGs r times larger, grey or colour, any size.

    python experiments/upscale.py --checkpoint=RUN_DIR --input=photo.jpg --output=out/
    python experiments/upscale.py --checkpoint=RUN_DIR --input=photos/ --output=out/ --json

``--input`` is an image file or a directory of png/bmp/jpg/jpeg images (other files are skipped
with a warning); each ``NAME.ext`` becomes ``OUTPUT/NAME.png``. Y models upscale Y with the net and
Cb/Cr bicubically, as the literature does; grey images stay grey (:mod:`espcn_jax.inference`).
Large images are upscaled in tiles of ``--tile`` LR pixels, with the same pixels as in one piece.
Existing files in OUTPUT are never replaced unless ``--overwrite``; inputs are never written.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np
from absl import flags, logging
from etils import epath
from PIL import Image

from espcn_jax import cli, data, inference, storage

flags.DEFINE_string("checkpoint", None, "Run directory of experiments/train.py (--workdir).")
flags.DEFINE_string("input", None, "An image file, or a directory of images.")
flags.DEFINE_string("output", None, "Directory for the upscaled PNGs (created if missing).")
flags.DEFINE_integer(
    "tile",
    inference.DEFAULT_TILE,
    "LR pixels per tile side for large images (0: whole images at once); pixels do not depend "
    "on it, memory does.",
    lower_bound=0,
)
flags.DEFINE_bool("overwrite", False, "Replace existing files in --output.")
JSON = cli.define_json_flag()
FLAGS = flags.FLAGS


def plan() -> list[tuple[Path, Path]]:
    """``(input, output)`` paths, checked before anything is loaded or written."""
    for name in ("checkpoint", "input", "output"):
        if not getattr(FLAGS, name):
            raise ValueError(f"--{name} is required")
    storage.check_reachable(FLAGS.checkpoint, write=False)  # gs://: one line
    if not epath.Path(FLAGS.checkpoint).is_dir():  # local or gs://
        raise ValueError(f"checkpoint directory not found: {FLAGS.checkpoint}")
    source, out_dir = Path(FLAGS.input), Path(FLAGS.output)
    if source.is_dir():
        inputs = data.list_images(source)
    elif source.is_file():
        inputs = [source]
    else:
        raise ValueError(f"input not found: {source}")
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--output is not a directory: {out_dir}")
    jobs, seen = [], {}
    for path in inputs:
        target = out_dir / f"{path.stem}.png"
        if target in seen:
            raise ValueError(f"{path} and {seen[target]} would both be written to {target}")
        seen[target] = path
        if target.resolve() == path.resolve():
            raise ValueError(f"output {target} is the input image itself; choose another --output")
        if target.exists() and not FLAGS.overwrite:
            raise ValueError(f"output {target} exists; pass --overwrite to replace it")
        jobs.append((path, target))
    return jobs


def write_png(image: np.ndarray, target: Path, overwrite: bool) -> None:
    """Writes atomically: a temporary file in the same directory, then linked (never replacing)
    or, with ``overwrite``, renamed over the target."""
    fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=".png", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            Image.fromarray(
                image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image
            ).save(f, format="PNG")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # as a plain open() would create it, not mkstemp's 0600
        if overwrite:
            os.replace(tmp, target)
        else:
            try:
                os.link(tmp, target)
            except FileExistsError:
                raise ValueError(
                    f"output {target} exists; pass --overwrite to replace it"
                ) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def print_table(report: dict) -> None:
    print(f"x{report['scale']} with {report['checkpoint']} -> {report['output']}")
    width = max(len(Path(row["input"]).name) for row in report["images"])
    for row in report["images"]:
        (h, w, c), (hh, ww, _) = row["input_shape"], row["output_shape"]
        print(f"{Path(row['input']).name:<{width}}  {h}x{w}x{c} -> {hh}x{ww}  {row['output']}")


def main(argv: list[str]) -> None:
    cli.check_no_positional(argv)
    jobs = plan()
    for path, _ in jobs:  # every input readable before the first output is written
        data.load_image(path)
    upscaler = inference.load(FLAGS.checkpoint, tile=FLAGS.tile or None)
    Path(FLAGS.output).mkdir(parents=True, exist_ok=True)
    rows = []
    for path, target in jobs:
        image = data.load_image(path)
        start = time.perf_counter()
        out = upscaler(image)
        seconds = time.perf_counter() - start
        write_png(out, target, FLAGS.overwrite)
        logging.info("%s -> %s (%.2f s)", path, target, seconds)
        rows.append(
            {
                "input": str(path),
                "output": str(target),
                "input_shape": list(image.shape),
                "output_shape": list(out.shape),
                "seconds": seconds,
            }
        )
    report = {
        "checkpoint": str(FLAGS.checkpoint),
        "scale": upscaler.scale,
        "channels": upscaler.channels,
        "tile": FLAGS.tile or None,
        "output": str(FLAGS.output),
        "images": rows,
    }
    cli.emit(report, print_table)


if __name__ == "__main__":
    cli.run(main)
