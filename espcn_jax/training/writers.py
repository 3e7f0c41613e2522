"""Where a run's metrics go: ``metrics.jsonl``, TensorBoard event files, a progress bar or log lines."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time

import jax
from absl import logging
from etils import epath

from espcn_jax import storage
from espcn_jax.data import import_tf

METRICS_FILE = "metrics.jsonl"
_SCALAR_METADATA = b"\n\t\n\x07scalars"  # SummaryMetadata(plugin_data={plugin_name: "scalars"})


class MetricWriter:
    """Appends rows to ``metrics.jsonl`` and TensorBoard scalars to the workdir.

    A resumed run first drops rows logged after the step it resumes from (the killed run computed
    them from a state that was never saved; the resumed run logs them again).

    An object store (``gs://``) has no append: there the rows are kept and ``metrics.jsonl`` is
    uploaded whole at every write, and the event file is written to a local temporary directory
    and uploaded whole after every flush (what TensorFlow's own GCS client does on a flush), so
    a reader sees the rows and events up to some write, never a torn file.
    """

    def __init__(self, workdir: str | os.PathLike, start_step: int):
        workdir = epath.Path(workdir)
        self.workdir, self.path = workdir, workdir / METRICS_FILE
        self.local = storage.is_local(workdir)
        self.enabled = jax.process_index() == 0  # one writer per run, on multi-host too
        if not self.enabled:
            return
        self._rows: list[str] = []
        if self.path.exists():
            self._rows = [
                line
                for line in self.path.read_text().splitlines()
                if line.strip() and _step_of(line) <= start_step
            ]
            storage.write_atomic(self.path, "".join(line + "\n" for line in self._rows))
        self._file = self.path.open("a") if self.local else None
        tf = import_tf()
        self._tf = tf
        self._events = os.fspath(workdir) if self.local else tempfile.mkdtemp(prefix="events-")
        self._summary = tf.summary.create_file_writer(self._events)

    def write(self, step: int, scalars: dict) -> None:
        if not self.enabled:
            return
        row = {"step": int(step), **{k: _plain(v) for k, v in scalars.items()}}
        line = json.dumps(row)
        if self._file is not None:
            self._file.write(line + "\n")
            self._file.flush()
        else:
            self._rows.append(line)
            storage.write_atomic(self.path, "".join(r + "\n" for r in self._rows))
        with self._summary.as_default(step=int(step)):
            for key, value in row.items():
                if key != "step" and isinstance(value, int | float):
                    # tf.summary.scalar's own format (scalars plugin metadata); it needs the
                    # tensorboard package, which training does not.
                    self._tf.summary.write(
                        key, self._tf.constant(value, self._tf.float32), metadata=_SCALAR_METADATA
                    )
        self._summary.flush()
        self._upload_events()

    def _upload_events(self) -> None:
        """Copies the local event files of a remote workdir into it (each uploaded whole)."""
        if self.local:
            return
        for name in sorted(os.listdir(self._events)):
            with open(os.path.join(self._events, name), "rb") as f:
                storage.write_atomic(self.workdir / name, f.read())

    def close(self) -> None:
        if not self.enabled:
            return
        if self._file is not None:
            self._file.close()
        self._summary.close()
        if not self.local:
            self._upload_events()
            shutil.rmtree(self._events, ignore_errors=True)


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
