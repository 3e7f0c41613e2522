"""The conventions every driver in ``experiments/`` follows, in one place.

- **Flags.** Flags that several drivers take are defined here (``define_*_flag``), so a flag has
  one meaning and one bound everywhere, and a bad value fails while flags are parsed: before any
  data is loaded or anything is compiled.
- **Errors.** :func:`run` replaces ``absl.app.run``: a bad flag, a ValueError or a missing file
  prints one line, ``error: ...``, on stderr and exits with code 2.
- **Output.** stdout carries only the result, written by :func:`emit`: one JSON object with
  ``--json``, a readable table otherwise. Logs go to stderr, at WARNING unless ``--verbosity`` is
  given, and the start-up noise of TensorFlow's C++ runtime (oneDNN, cpu_feature_guard) and of
  JAX's backend probe ("Unable to initialize backend 'tpu'") is kept from the user.

A driver reads::

    SCALE = cli.define_scale_flag()
    JSON = cli.define_json_flag()

    def main(argv):
        cli.check_no_positional(argv)
        result = {...}
        cli.emit(result, table_fn)

    if __name__ == "__main__":
        cli.run(main)
"""

from __future__ import annotations

import os

# TensorFlow's C++ runtime logs INFO/WARNING lines at start-up (oneDNN, cpu_feature_guard); it reads
# these once, when it is first imported (in every driver later than this module, through
# espcn_jax.data.import_tf, which sets the same defaults for library users).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # TF only reads data here; see data.import_tf

GPU_DETERMINISM_FLAG = "--xla_gpu_deterministic_ops=true"


def _gpu_plugin_installed() -> bool:
    """Whether a CUDA or ROCm plugin of jaxlib is installed (read from package metadata, so that
    no backend starts: XLA reads XLA_FLAGS once, when the first backend does)."""
    import importlib.metadata

    for dist in importlib.metadata.distributions():
        name = (dist.metadata["Name"] or "").lower().replace("_", "-")
        if name.startswith(("jax-cuda", "jax-rocm", "jaxlib-cuda")):
            return True
    return False


def set_gpu_determinism() -> bool:
    """Adds ``--xla_gpu_deterministic_ops=true`` to ``XLA_FLAGS`` where a GPU plugin is installed,
    unless ``XLA_FLAGS`` already names the flag (the user's choice wins). GPU convolution autotuning
    and reductions are then run-to-run deterministic, which the bit-exact resume the docs promise
    needs there; CPU and TPU runs are deterministic without it (and TPU runtimes are not given a
    GPU flag). Returns whether the flag is on."""
    current = os.environ.get("XLA_FLAGS", "")
    if "xla_gpu_deterministic_ops" in current:
        return GPU_DETERMINISM_FLAG in current
    if not _gpu_plugin_installed():
        return False
    os.environ["XLA_FLAGS"] = f"{current} {GPU_DETERMINISM_FLAG}".strip()
    return True


set_gpu_determinism()  # every driver imports this module before JAX starts a backend

import json  # noqa: E402
import sys  # noqa: E402
from collections.abc import Callable, Mapping  # noqa: E402

from absl import app, flags, logging  # noqa: E402

FLAGS = flags.FLAGS
# The flags the define_* helpers below create belong to the driver that calls them, so that its
# --help lists them with its own.
flags.disclaim_key_flags()
EXIT_USAGE = 2
# Drivers study super-resolution: x1 is not an upscaling (every face of the upsampling layer, the
# bicubic and the shuffle are identities there), and the evaluation protocol and published tables
# start at x2. The library's operators still accept r = 1, where the maths holds.
MIN_SCALE = 2


class UsageError(ValueError):
    """Bad user input detected by a driver (flag values, paths)."""


def fail(message: str) -> None:
    """Prints ``error: message`` on one line to stderr and exits with code 2."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(EXIT_USAGE)


def _parse_flags(argv: list[str]) -> list[str]:
    try:
        return FLAGS(argv)
    except flags.Error as e:
        fail(str(e).splitlines()[0])
    except (KeyError, AttributeError) as e:  # ml_collections: a --config.* override naming no field
        fail(f"unknown field in a --config override: {str(e).strip(chr(34))}")


def _quiet_logs() -> None:
    """WARNING and above on stderr, unless the user asked for ``--verbosity``/``-v``."""
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)


def run(main: Callable[[list[str]], None]) -> None:
    """``absl.app.run`` where user errors (bad flags, ValueError, missing files) exit 2."""

    def guarded(argv: list[str]) -> None:
        _quiet_logs()
        try:
            main(argv)
        except (ValueError, FileNotFoundError, NotADirectoryError) as e:
            fail(str(e).splitlines()[0] if str(e) else type(e).__name__)

    app.run(guarded, flags_parser=_parse_flags)


def check_no_positional(argv: list[str]) -> None:
    """Drivers take flags only: a stray word is a typo, not something to ignore."""
    if len(argv) > 1:
        raise ValueError(f"unexpected positional arguments: {' '.join(argv[1:])}")


# --- shared flags ----------------------------------------------------------------------------------


def _raising_validator(check: Callable) -> Callable:
    """A validator whose failure message is ``check``'s ValueError (absl prefixes ``flag --x=v: ``)."""

    def validator(value):
        try:
            check(value)
        except ValueError as e:
            raise flags.ValidationError(str(e).splitlines()[0]) from None
        return True

    return validator


def check_sr_scale(value, name: str = "scale") -> int:
    """``value`` as an int, or ValueError unless it is an integer >= :data:`MIN_SCALE`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < MIN_SCALE:
        raise ValueError(f"{name} must be an integer >= {MIN_SCALE}, got {value!r}")
    return value


def parse_int_list(items: list[str] | None, name: str, minimum: int) -> tuple[int, ...]:
    """``["2", " 3"] -> (2, 3)``, or ValueError naming ``name`` unless there is at least one item
    and every item is an integer >= ``minimum``."""
    if not items:
        raise ValueError(f"{name} must list integers >= {minimum}, got ''")
    values = []
    for item in items:
        try:
            value = int(item.strip())
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise ValueError(f"{name} must be integers >= {minimum}, got {item.strip()!r}")
        values.append(value)
    return tuple(values)


def define_json_flag(flag_values: flags.FlagValues = FLAGS) -> flags.FlagHolder[bool]:
    """``--[no]json``: one JSON object on stdout instead of a table (off by default)."""
    return flags.DEFINE_bool(
        "json",
        False,
        "Print one JSON object on stdout instead of a table.",
        flag_values=flag_values,
    )


def define_distributed_flags(
    what: str = "the run", flag_values: flags.FlagValues = FLAGS
) -> flags.FlagHolder[bool]:
    """``--distributed`` and the ``jax.distributed.initialize`` arguments; read by
    :func:`initialize_distributed`. ``what`` names what spans the hosts, for ``--help``."""
    holder = flags.DEFINE_bool(
        "distributed",
        False,
        f"Call jax.distributed.initialize() first: {what} spans every host of a TPU slice or a "
        "Slurm job (run the same command on every host; process 0 writes the results). The "
        "three flags below are detected there; elsewhere give them (or JAX_COORDINATOR_ADDRESS).",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "coordinator_address",
        None,
        "With --distributed: host:port of process 0's coordination service.",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "num_processes",
        None,
        "With --distributed: how many processes take part.",
        lower_bound=1,
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "process_id",
        None,
        "With --distributed: this process's index, 0 .. num_processes - 1.",
        lower_bound=0,
        flag_values=flag_values,
    )
    return holder


def initialize_distributed(flag_values: flags.FlagValues = FLAGS) -> None:
    """``jax.distributed.initialize`` with the flags of :func:`define_distributed_flags`, if
    ``--distributed`` was given; ValueError (exit 2) for a process id out of range."""
    if not flag_values.distributed:
        return
    num, index = flag_values.num_processes, flag_values.process_id
    if num is not None and index is not None and index >= num:
        raise ValueError(f"--process_id={index} must be < --num_processes={num}")
    import jax  # here: the drivers that never distribute do not pay for the import

    # Gloo (CPU collectives) prints "[Gloo] Rank i is connected ..." on file descriptor 1 when
    # the first collective connects: C++ output goes to stderr from here on, and sys.stdout (the
    # result) keeps the original stdout.
    sys.stdout.flush()
    result_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = os.fdopen(result_fd, "w", buffering=1)
    jax.distributed.initialize(
        coordinator_address=flag_values.coordinator_address,
        num_processes=num,
        process_id=index,
    )


def define_scale_flag(
    default: int = 3, name: str = "scale", flag_values: flags.FlagValues = FLAGS
) -> flags.FlagHolder[int]:
    """``--scale``: the upscaling factor r, an integer >= :data:`MIN_SCALE`."""
    holder = flags.DEFINE_integer(
        name, default, f"Upscaling factor r (integer >= {MIN_SCALE}).", flag_values=flag_values
    )
    flags.register_validator(
        name, _raising_validator(lambda v: check_sr_scale(v, name)), flag_values=flag_values
    )
    return holder


def define_scales_flag(
    default: list[str], name: str = "scales", flag_values: flags.FlagValues = FLAGS
) -> flags.FlagHolder[list[str]]:
    """``--scales=2,3,4``: several upscaling factors, each bound as ``--scale``.

    Read the value with ``parse_int_list(holder.value, name, MIN_SCALE)``.
    """
    holder = flags.DEFINE_list(
        name, default, f"Upscaling factors r (integers >= {MIN_SCALE}).", flag_values=flag_values
    )
    flags.register_validator(
        name,
        _raising_validator(lambda items: parse_int_list(items, name, MIN_SCALE)),
        flag_values=flag_values,
    )
    return holder


def define_seed_flag(
    default: int = 0,
    help: str = "Seed of data and parameters.",
    flag_values: flags.FlagValues = FLAGS,
) -> flags.FlagHolder[int]:
    """``--seed``: an integer >= 0 (NumPy's SeedSequence and jax.random both take it)."""
    return flags.DEFINE_integer("seed", default, help, lower_bound=0, flag_values=flag_values)


def define_lr_size_flag(
    default: str = "360x640", help: str | None = None, flag_values: flags.FlagValues = FLAGS
) -> flags.FlagHolder[str]:
    """``--lr_size=HxW``: an LR image size (height x width, integers >= 1). Read it with
    :func:`espcn_jax.flops.parse_size`."""
    from espcn_jax.flops import parse_size

    holder = flags.DEFINE_string(
        "lr_size", default, help or "LR image size HxW.", flag_values=flag_values
    )
    flags.register_validator(
        "lr_size",
        _raising_validator(lambda text: parse_size(text, "lr_size")),
        flag_values=flag_values,
    )
    return holder


COLORS = {1: "y", 3: "rgb"}  # image channels -> the pipeline's and the protocol's colour name


def check_channels(value, name: str = "channels") -> int:
    """``value``, or ValueError unless it is 1 (the Y channel) or 3 (RGB)."""
    if isinstance(value, bool) or value not in COLORS:
        raise ValueError(f"{name} must be 1 (Y) or 3 (RGB), got {value!r}")
    return value


def color_of(channels: int) -> str:
    """``"y"`` for 1 channel, ``"rgb"`` for 3: the ``color`` argument of the pipeline and the
    evaluation protocol."""
    return COLORS[check_channels(channels)]


def define_channels_flag(
    default: int = 1, flag_values: flags.FlagValues = FLAGS
) -> flags.FlagHolder[int]:
    """``--channels``: what a model sees and returns, 1 (the Y channel, MATLAB rgb2ycbcr luma; the
    literature's protocol) or 3 (RGB), as ``ModelConfig.channels`` and ``config.model.channels``.
    :func:`color_of` names it for the pipeline and the protocol."""
    holder = flags.DEFINE_integer(
        "channels",
        default,
        "Image channels a model sees: 1 (Y, MATLAB luma; the literature's protocol) or 3 (RGB).",
        flag_values=flag_values,
    )
    flags.register_validator(
        "channels", _raising_validator(check_channels), flag_values=flag_values
    )
    return holder


def define_data_flags(
    default_source: str = "skimage", flag_values: flags.FlagValues = FLAGS
) -> dict[str, flags.FlagHolder]:
    """``--source``, ``--split``, ``--tfds_data_dir`` for :func:`espcn_jax.data.make_source`. The
    source's name is checked at parse time; nothing is read until the driver calls make_source."""
    from espcn_jax import data

    holders = {
        "source": flags.DEFINE_string(
            "source",
            default_source,
            "Data source: skimage (scikit-image's photos, offline), folder:PATH or tfds:NAME.",
            flag_values=flag_values,
        ),
        "split": flags.DEFINE_string(
            "split",
            None,
            "Split of a skimage or TFDS source: train (default) or validation.",
            flag_values=flag_values,
        ),
        "tfds_data_dir": flags.DEFINE_string(
            "tfds_data_dir",
            None,
            "TFDS data directory (skimage: $ESPCN_JAX_DATA_DIR or ~/.cache/espcn_jax; tfds:NAME: "
            "TFDS's default).",
            flag_values=flag_values,
        ),
    }
    flags.register_validator(
        "source", _raising_validator(data.parse_source_name), flag_values=flag_values
    )
    return holders


def define_tune_malloc_flag(flag_values: flags.FlagValues = FLAGS) -> flags.FlagHolder[bool]:
    """``--[no]tune_malloc`` for the drivers that time calls (off by default)."""
    return flags.DEFINE_bool(
        "tune_malloc",
        False,
        "Recycle freed memory (glibc mallopt via espcn_jax.timing.tune_malloc) so that calls are "
        "timed without page faults: computation only. Off: glibc's defaults, as users run.",
        flag_values=flag_values,
    )


# --- output ----------------------------------------------------------------------------------------


def print_json(obj) -> None:
    """Writes ``obj`` as JSON to stdout (the only thing drivers print to stdout)."""
    json.dump(obj, sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")
    sys.stdout.flush()


def format_table(result: Mapping, indent: int = 0) -> str:
    """A readable two-column table of a (nested) mapping: ``key  value``, nested keys indented."""
    lines = []
    width = max((len(str(k)) for k in result), default=0)
    for key, value in result.items():
        pad = " " * indent
        if isinstance(value, Mapping) and value:
            lines.append(f"{pad}{key}:")
            lines.append(format_table(value, indent + 2))
        else:
            if isinstance(value, float):
                value = f"{value:.6g}"
            lines.append(f"{pad}{str(key):<{width}}  {value}")
    return "\n".join(lines)


def emit(
    result,
    table: Callable[[object], str | None] | None = None,
    flag_values: flags.FlagValues = FLAGS,
) -> None:
    """The driver's result on stdout: JSON with ``--json``, else ``table(result)`` (a string, or
    None when ``table`` prints itself), by default :func:`format_table`. Needs
    :func:`define_json_flag`."""
    if flag_values["json"].value:
        print_json(result)
        return
    text = (table or format_table)(result)
    if text is not None:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    sys.stdout.flush()
