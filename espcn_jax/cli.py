"""Plumbing shared by the absl drivers in ``experiments/``: one-line errors, exit 2, JSON out."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable

from absl import app, flags

EXIT_USAGE = 2


class UsageError(ValueError):
    """Bad user input detected by a driver (flag values, paths)."""


def fail(message: str) -> None:
    """Prints ``error: message`` on one line to stderr and exits with code 2."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(EXIT_USAGE)


def _parse_flags(argv: list[str]) -> list[str]:
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        fail(str(e).splitlines()[0])
    except (KeyError, AttributeError) as e:  # ml_collections: a --config.* override naming no field
        fail(f"unknown field in a --config override: {str(e).strip(chr(34))}")


def run(main: Callable[[list[str]], None]) -> None:
    """``absl.app.run`` where user errors (bad flags, ValueError, missing files) exit 2."""

    def guarded(argv: list[str]) -> None:
        try:
            main(argv)
        except (ValueError, FileNotFoundError, NotADirectoryError) as e:
            fail(str(e).splitlines()[0] if str(e) else type(e).__name__)

    app.run(guarded, flags_parser=_parse_flags)


def define_tune_malloc_flag() -> flags.FlagHolder:
    """``--[no]tune_malloc`` for the drivers that time calls (off by default)."""
    return flags.DEFINE_bool(
        "tune_malloc",
        False,
        "Recycle freed memory (glibc mallopt via espcn_jax.timing.tune_malloc) so that calls are "
        "timed without page faults: computation only. Off: glibc's defaults, as users run.",
    )


def print_json(obj) -> None:
    """Writes ``obj`` as JSON to stdout (the only thing drivers print to stdout)."""
    json.dump(obj, sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")
    sys.stdout.flush()
