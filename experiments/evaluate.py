"""Evaluates a super-resolution model with the field's protocol: bicubic, or a trained run.

PSNR / SSIM on Y, ``r`` border pixels cropped, mean over images (:mod:`espcn_jax.evaluate`,
docs/evaluation.md). The data is a directory (``--data_dir``: plain HR images, LR made by
MATLAB-compatible bicubic degradation, or the Set5 layout ``X_HR.png`` next to ``X_LR.png``) or a
data source (``--source=skimage:validation``, ``tfds:NAME[:SPLIT]``). Files that are not
png/bmp/jpg/jpeg are skipped with a warning on stderr.

    python experiments/evaluate.py --source=skimage:validation --scale=3 --json
    python experiments/evaluate.py --model=checkpoint --checkpoint=RUN_DIR --data_dir=DIR
    python experiments/evaluate.py --data_dir=DIR --scale=4 --lr_source=degrade --channels=y

Benchmark sets (Set5, Set14, BSD100, Urban100, DIV2K) are not bundled: download them and point
``--data_dir`` at a directory of HR images (or Set5-style pairs).
"""

from __future__ import annotations

from pathlib import Path

from absl import flags

from espcn_jax import data, evaluate, inference
from espcn_jax.cli import print_json, run

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
    "Instead of --data_dir: a data source, skimage:SPLIT (the embedded photos: train, validation) "
    "or tfds:NAME[:SPLIT] (a prepared TFDS data set; split default validation).",
)
flags.DEFINE_integer(
    "scale", None, "Upscaling factor r (integer >= 2); default 3, or the checkpoint's scale."
)
flags.DEFINE_enum(
    "lr_source",
    "auto",
    list(evaluate.LR_SOURCES),
    "LR images: 'given' (*_LR next to *_HR, or the source's LR), 'degrade' (bicubic downscale of "
    "HR), 'auto' (given when there are LR images for every HR image).",
)
flags.DEFINE_enum(
    "channels",
    None,
    list(evaluate.CHANNELS),
    "What the model sees: the RGB LR image (Y taken of its output) or the Y channel. Default: the "
    "checkpoint's channels; rgb for bicubic.",
)
flags.DEFINE_bool(
    "round_lr",
    True,
    "Round degraded LR to uint8 as MATLAB's imresize on uint8 does; --noround_lr keeps it float "
    "(the SRCNN/VDSR code, with --channels=y).",
)
flags.DEFINE_bool("json", False, "Print one JSON object instead of a table.")
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


def parse_source(name: str) -> tuple[str, str | None]:
    """``skimage:SPLIT`` / ``tfds:NAME[:SPLIT]`` -> ``(data.make_source name, split)``."""
    kind, _, rest = name.partition(":")
    if kind == "skimage":
        return "skimage", rest or "validation"
    if kind == "tfds" and rest:
        tfds_name, _, split = rest.partition(":")
        return f"tfds:{tfds_name}", split or "validation"
    raise ValueError(f"--source must be skimage:SPLIT or tfds:NAME[:SPLIT], got {name!r}")


def check_flags() -> None:
    """Everything that can be checked before a model or an image is loaded."""
    if (FLAGS.data_dir is None) == (FLAGS.source is None):
        raise ValueError("give exactly one of --data_dir and --source")
    if FLAGS.source is not None:
        parse_source(FLAGS.source)
    elif not Path(FLAGS.data_dir).is_dir():
        raise ValueError(f"directory not found: {FLAGS.data_dir}")
    if FLAGS.scale is not None:
        evaluate.check_eval_scale(FLAGS.scale)
    if FLAGS.model == "checkpoint":
        if not FLAGS.checkpoint:
            raise ValueError("--model=checkpoint needs --checkpoint=RUN_DIR")
        if not Path(FLAGS.checkpoint).is_dir():
            raise ValueError(f"checkpoint directory not found: {FLAGS.checkpoint}")
    elif FLAGS.checkpoint:
        raise ValueError(f"--checkpoint is for --model=checkpoint, not --model={FLAGS.model}")


def load_model() -> tuple[object, int, dict]:
    """``(model, scale, report fields)`` from the flags."""
    if FLAGS.model != "checkpoint":
        r = evaluate.check_eval_scale(3 if FLAGS.scale is None else FLAGS.scale)
        return evaluate.make_model(FLAGS.model, r), r, {"model": FLAGS.model}
    upscaler = inference.load(FLAGS.checkpoint)
    r = upscaler.config.scale
    if FLAGS.scale is not None and FLAGS.scale != r:
        raise ValueError(f"--scale={FLAGS.scale} but the checkpoint's model upscales x{r}")
    evaluate.check_eval_scale(r)
    evaluate.model_channels(upscaler.model, FLAGS.channels)
    fields = {"model": "checkpoint", "checkpoint": str(FLAGS.checkpoint)}
    fields["config"] = {"family": upscaler.config.family, "channels": upscaler.config.channels}
    return upscaler.model, r, fields


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise ValueError(f"unexpected positional arguments: {argv[1:]}")
    check_flags()
    model, r, report = load_model()
    options = dict(lr_source=FLAGS.lr_source, channels=FLAGS.channels, round_lr=FLAGS.round_lr)
    if FLAGS.source is not None:
        name, split = parse_source(FLAGS.source)
        source = data.make_source(name, split=split)
        report.update(evaluate.evaluate_source(model, source, r, **options))
    else:
        report.update(evaluate.evaluate(model, FLAGS.data_dir, r, **options))
    if FLAGS.json:
        print_json(report)
    else:
        print_table(report)


if __name__ == "__main__":
    run(main)
