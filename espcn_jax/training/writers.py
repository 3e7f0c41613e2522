"""Where a run's metrics go: ``metrics.jsonl``, TensorBoard event files, a progress bar or log lines."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import jax
from absl import logging

from espcn_jax.data import import_tf

METRICS_FILE = "metrics.jsonl"
_SCALAR_METADATA = b"\n\t\n\x07scalars"  # SummaryMetadata(plugin_data={plugin_name: "scalars"})


class MetricWriter:
    """Appends rows to ``metrics.jsonl`` and TensorBoard scalars to the workdir.

    A resumed run first drops rows logged after the step it resumes from (the killed run computed
    them from a state that was never saved; the resumed run logs them again).
    """

    def __init__(self, workdir: Path, start_step: int):
        self.path = workdir / METRICS_FILE
        self.enabled = jax.process_index() == 0  # one writer per run, on multi-host too
        if not self.enabled:
            return
        if self.path.exists():
            kept = [
                line
                for line in self.path.read_text().splitlines()
                if line.strip() and _step_of(line) <= start_step
            ]
            tmp = self.path.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(line + "\n" for line in kept))
            tmp.replace(self.path)
        self._file = self.path.open("a")
        tf = import_tf()
        self._tf = tf
        self._summary = tf.summary.create_file_writer(str(workdir))

    def write(self, step: int, scalars: dict) -> None:
        if not self.enabled:
            return
        row = {"step": int(step), **{k: _plain(v) for k, v in scalars.items()}}
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        with self._summary.as_default(step=int(step)):
            for key, value in row.items():
                if key != "step" and isinstance(value, int | float):
                    # tf.summary.scalar's own format (scalars plugin metadata); it needs the
                    # tensorboard package, which training does not.
                    self._tf.summary.write(
                        key, self._tf.constant(value, self._tf.float32), metadata=_SCALAR_METADATA
                    )
        self._summary.flush()

    def close(self) -> None:
        if not self.enabled:
            return
        self._file.close()
        self._summary.close()


def _step_of(line: str) -> int:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return -1  # a torn last line of a killed run


def _plain(value):
    return float(value) if hasattr(value, "dtype") else value


class Progress:
    """A tqdm bar (rate, ETA) when stderr is a terminal; otherwise an absl log line per call to
    :meth:`log`."""

    def __init__(self, total: int, initial: int):
        self.total, self.tty = total, sys.stderr.isatty()
        self.bar = None
        if self.tty:
            import tqdm

            self.bar = tqdm.tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)
        self.t0, self.step0 = time.perf_counter(), initial

    def update(self, step: int, loss: float) -> None:
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix(loss=f"{loss:.3g}", refresh=False)

    def log(self, step: int, message: str) -> None:
        if self.bar is not None:
            return
        rate = (step - self.step0) / max(time.perf_counter() - self.t0, 1e-9)
        eta = (self.total - step) / rate if rate > 0 else float("inf")
        logging.info(
            "step %d/%d %s (%.1f steps/s, ETA %.0f s)", step, self.total, message, rate, eta
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
