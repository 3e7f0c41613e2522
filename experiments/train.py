"""Trains a super-resolution net: ``python experiments/train.py --workdir=DIR``.

With nothing but ``--workdir`` it trains the paper's ESPCN x3 (Y) on the embedded photos and prints
validation PSNR/SSIM. ``--config=experiments/configs/espcn.py:smoke`` picks a variant;
``--config.train.steps=1000`` (any field) overrides. Re-running the same command resumes from the
last checkpoint in DIR; SIGTERM/SIGINT save a checkpoint first. Exit codes: 2 bad input (one line on
stderr), 1 NaN/Inf loss, 128 + signal number after a signal.

``--distributed`` (the same command on every host; ``--coordinator_address``, ``--num_processes``,
``--process_id`` where the cluster does not say them) trains one run over every host's devices;
a SIGTERM to any host makes all of them save the same step and exit.
"""

from __future__ import annotations

import logging as std_logging
import pathlib
import sys

import jax
from absl import flags, logging
from ml_collections import config_flags

from espcn_jax import cli, training

try:  # config_flags loads the file and applies --config.* overrides right here
    _CONFIG = config_flags.DEFINE_config_file(
        "config",
        str(pathlib.Path(__file__).resolve().parent / "configs" / "espcn.py"),
        "Training config file (ml_collections); --config.group.field=value overrides a field.",
        lock_config=True,
    )
except (AttributeError, KeyError) as e:  # an override naming no field of the config
    cli.fail(f"unknown field in a --config override: {str(e).strip(chr(34))}")
except ValueError as e:
    cli.fail(str(e).splitlines()[0])
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: config, checkpoints, metrics.")
_JSON = cli.define_json_flag()  # the JSON is the run's final_eval.json
cli.define_distributed_flags("the run")


def _log_progress() -> None:
    """INFO lines from espcn_jax (model size, progress, evaluation) on stderr; libraries (Orbax,
    TF, JAX's backend probing) stay at WARNING, as cli.run sets them, unless --verbosity was given.
    The filter sits on absl's handler, which also prints the records of Python loggers (JAX's)."""
    if flags.FLAGS["verbosity"].present:
        return
    logging.set_verbosity(logging.INFO)
    logging.get_absl_handler().addFilter(
        lambda record: record.levelno >= std_logging.WARNING or "espcn_jax" in record.pathname
    )


def check_config(config) -> None:
    """The drivers' bounds on the fields that are flags elsewhere (--scale, --channels)."""
    cli.check_sr_scale(config.model.scale, "config.model.scale")
    cli.check_channels(config.model.channels, "config.model.channels")


def format_table(result: dict) -> str:
    lines = [f"step {result['step']}  train time {result['train_time_s']:.0f} s"]
    if result["eval"]:
        lines.append(f"{'set':<40} {'PSNR (dB)':>10} {'SSIM':>8}")
    for name, scores in result["eval"].items():
        lines.append(f"{name:<40} {scores['psnr']:>10.3f} {scores['ssim']:>8.4f}")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    _log_progress()
    cli.check_no_positional(argv)
    if not _WORKDIR.value:
        raise ValueError("--workdir is required")
    check_config(_CONFIG.value)
    cli.initialize_distributed()
    try:
        result = training.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    except training.NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except training.Interrupted as e:
        print(f"interrupted: {e}; re-run the same command to resume", file=sys.stderr)
        sys.exit(128 + e.signum)
    if jax.process_index() == 0:  # one result for the run, as one final_eval.json
        cli.emit(result, format_table)


if __name__ == "__main__":
    cli.run(main)
