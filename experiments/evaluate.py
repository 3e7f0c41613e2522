"""Evaluates a super-resolution model with the field's protocol: bicubic, or a trained run.

PSNR / SSIM on Y, ``r`` border pixels cropped, mean over images (:mod:`espcn_jax.evaluate`,
docs/evaluation.md). The data is a directory (``--data_dir``: plain HR images, LR made by
MATLAB-compatible bicubic degradation, or the Set5 layout ``X_HR.png`` next to ``X_LR.png``) or a
data source (``--source=skimage --split=validation``, ``tfds:NAME``). Files that are not
png/bmp/jpg/jpeg are skipped with a warning on stderr.

    python experiments/evaluate.py --source=skimage --split=validation --scale=3 --json
    python experiments/evaluate.py --model=checkpoint --checkpoint=RUN_DIR --data_dir=DIR
    python experiments/evaluate.py --data_dir=DIR --scale=4 --lr_source=degrade --channels=1

A checkpoint brings its scale and channels (1: Y, 3: RGB); ``--scale`` / ``--channels`` given
with it must agree. Benchmark sets (Set5, Set14, BSD100, Urban100, DIV2K) are not bundled:
docs/evaluation.md says where to get them; point ``--data_dir`` at a directory of HR images (or of
Set5-style pairs).
"""

from __future__ import annotations

from pathlib import Path

from absl import flags
from etils import epath

from espcn_jax import cli, data, evaluate, inference, storage

MODEL_CHOICES = (*evaluate.MODELS, "checkpoint")

flags.DEFINE_enum(
    "model",
    "bicubic",
    list(MODEL_CHOICES),
    "Model to evaluate: bicubic (MATLAB imresize), or checkpoint (a trained run: --checkpoint).",
)
flags.DEFINE_string(
    "checkpoint", None, "Run directory of experiments/train.py (--workdir) for --model=checkpoint."
)
flags.DEFINE_string("data_dir", None, "Directory of HR images, or of *_HR / *_LR pairs.")
flags.DEFINE_string(
    "source",
    None,
    "Instead of --data_dir: a data source, skimage (the embedded photos), folder:PATH or "
    "tfds:NAME (a prepared TFDS data set), with --split.",
)
flags.DEFINE_string("split", "validation", "Split of a skimage or TFDS --source.")
flags.register_validator(
    "source",
    lambda name: name is None or bool(data.parse_source_name(name)),
    "must be skimage, folder:PATH or tfds:NAME",
)
SCALE = cli.define_scale_flag()
CHANNELS = cli.define_channels_flag(default=3)
flags.DEFINE_enum(
    "lr_source",
    "auto",
    list(evaluate.LR_SOURCES),
    "LR images: 'given' (*_LR next to *_HR, or the source's LR), 'degrade' (bicubic downscale of "
    "HR), 'auto' (given when there are LR images for every HR image).",
)
flags.DEFINE_bool(
    "round_lr",
    True,
    "Round degraded LR to uint8 as MATLAB's imresize on uint8 does; --noround_lr keeps it float "
    "(the SRCNN/VDSR code, with --channels=1).",
)
JSON = cli.define_json_flag()
FLAGS = flags.FLAGS


def print_table(report: dict) -> None:
    print(
        f"{report['model']} x{report['scale']} on {report['data']} "
        f"(LR {report['lr_source']}, channels {report['channels']}): "
        f"{report['num_images']} images, PSNR / SSIM on Y, border {report['scale']}"
    )
    width = max(len("mean"), *(len(row["file"]) for row in report["images"]))
    print(f"{'file':<{width}}  {'PSNR':>7}  {'SSIM':>6}")
    for row in report["images"]:
        print(f"{row['file']:<{width}}  {row['psnr']:7.2f}  {row['ssim']:6.4f}")
    print(f"{'mean':<{width}}  {report['psnr']:7.2f}  {report['ssim']:6.4f}")


def check_flags() -> None:
    """Everything that can be checked before a model or an image is loaded."""
    if (FLAGS.data_dir is None) == (FLAGS.source is None):
        raise ValueError("give exactly one of --data_dir and --source")
    folder = data_folder()
    if folder is not None and not Path(folder).is_dir():
        raise ValueError(f"directory not found: {folder}")
    if FLAGS.model == "checkpoint":
        if not FLAGS.checkpoint:
            raise ValueError("--model=checkpoint needs --checkpoint=RUN_DIR")
        storage.check_reachable(FLAGS.checkpoint, write=False)  # gs://: one line
        if not epath.Path(FLAGS.checkpoint).is_dir():  # local or gs://
            raise ValueError(f"checkpoint directory not found: {FLAGS.checkpoint}")
    elif FLAGS.checkpoint:
        raise ValueError(f"--checkpoint is for --model=checkpoint, not --model={FLAGS.model}")


def data_folder() -> str | None:
    """The directory to evaluate (``--data_dir`` or ``--source=folder:PATH``), else None."""
    if FLAGS.data_dir is not None:
        return FLAGS.data_dir
    kind, arg = data.parse_source_name(FLAGS.source)
    return arg if kind == "folder" else None


def channels() -> str | None:
    """``--channels`` as the protocol names it; None (the model's own) unless given explicitly
    for a checkpoint."""
    if FLAGS.model == "checkpoint" and not FLAGS["channels"].present:
        return None
    return cli.color_of(CHANNELS.value)


def load_model() -> tuple[object, int, dict]:
    """``(model, scale, report fields)`` from the flags. A checkpoint brings its own scale and
    channels; ``--scale`` / ``--channels`` given with it must agree."""
    if FLAGS.model != "checkpoint":
        r = SCALE.value
        return evaluate.make_model(FLAGS.model, r), r, {"model": FLAGS.model}
    upscaler = inference.load(FLAGS.checkpoint)
    r = upscaler.config.scale
    if FLAGS["scale"].present and SCALE.value != r:
        raise ValueError(f"--scale={SCALE.value} but the checkpoint's model upscales x{r}")
    evaluate.check_eval_scale(r)
    evaluate.model_channels(upscaler.model, channels())
    fields = {"model": "checkpoint", "checkpoint": str(FLAGS.checkpoint)}
    fields["config"] = {"family": upscaler.config.family, "channels": upscaler.config.channels}
    return upscaler.model, r, fields


def main(argv: list[str]) -> None:
    cli.check_no_positional(argv)
    check_flags()
    model, r, report = load_model()
    options = dict(lr_source=FLAGS.lr_source, channels=channels(), round_lr=FLAGS.round_lr)
    folder = data_folder()
    if folder is not None:
        report.update(evaluate.evaluate(model, folder, r, **options))
    else:
        source = data.make_source(FLAGS.source, split=FLAGS.split)
        report.update(evaluate.evaluate_source(model, source, r, **options))
    cli.emit(report, print_table)


if __name__ == "__main__":
    cli.run(main)
