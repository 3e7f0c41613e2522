"""Evaluates a super-resolution model on a directory of images with the field's protocol.

PSNR / SSIM on Y, ``r`` border pixels cropped, mean over images (DESIGN.md §3,
:mod:`espcn_jax.evaluate`). The directory is either plain HR images (LR made by MATLAB-compatible
bicubic degradation) or the Set5 layout (``X_HR.png`` next to ``X_LR.png``). Files that are not
png/bmp/jpg/jpeg are skipped with a warning on stderr.

    python experiments/evaluate.py --model=bicubic --data_dir=../shared/data/Set5/image_SRF_3 \\
        --scale=3 --json
    python experiments/evaluate.py --data_dir=DIR --scale=4 --lr_source=degrade --channels=y

``--model`` accepts ``bicubic``; ``checkpoint`` (with ``--checkpoint=PATH``) joins once training
exists.
"""

from __future__ import annotations

from absl import flags

from espcn_jax import evaluate
from espcn_jax.cli import print_json, run

flags.DEFINE_string("model", "bicubic", f"Model to evaluate; one of {sorted(evaluate.MODELS)}.")
flags.DEFINE_string("data_dir", None, "Directory of HR images, or of *_HR / *_LR pairs.")
flags.DEFINE_integer("scale", 3, "Upscaling factor r (integer >= 2).")
flags.DEFINE_enum(
    "lr_source",
    "auto",
    list(evaluate.LR_SOURCES),
    "LR images: 'given' (*_LR next to *_HR), 'degrade' (bicubic downscale of HR), 'auto' "
    "(given when the directory has pairs).",
)
flags.DEFINE_enum(
    "channels",
    "rgb",
    list(evaluate.CHANNELS),
    "What the model sees: the RGB LR image (Y taken of its output) or the Y channel.",
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


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise ValueError(f"unexpected positional arguments: {argv[1:]}")
    if FLAGS.data_dir is None:
        raise ValueError("--data_dir is required")
    r = evaluate.check_eval_scale(FLAGS.scale)
    sr_fn = evaluate.make_model(FLAGS.model, r)
    report = {"model": FLAGS.model}
    report.update(
        evaluate.evaluate(
            sr_fn,
            FLAGS.data_dir,
            r,
            lr_source=FLAGS.lr_source,
            channels=FLAGS.channels,
            round_lr=FLAGS.round_lr,
        )
    )
    if FLAGS.json:
        print_json(report)
    else:
        print_table(report)


if __name__ == "__main__":
    run(main)
