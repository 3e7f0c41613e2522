"""Orbax checkpoints of a run: the train state and a little JSON metadata, in ``workdir/checkpoints``.

A checkpoint is written to a temporary directory and renamed when complete, so a process killed
in the middle of a write leaves no step that ``latest_step`` would return; the temporary
directory is removed when the manager is next opened (``cleanup_tmp_directories``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys

import jax
import orbax.checkpoint as ocp
from etils import epath

from espcn_jax import storage

CHECKPOINT_DIR = "checkpoints"


class _DropWarnings(logging.Filter):
    """Drops records below ERROR: what Orbax's CheckpointManager warns while a read-only manager is
    built ("Given directory is read only", ...) is expected, not news for the user."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR


@contextlib.contextmanager
def _quiet_absl_warnings():
    logger, quiet = logging.getLogger("absl"), _DropWarnings()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


def _late_loop_callback(unraisable) -> bool:
    """An unreadable checkpoint fails Orbax's restore at its first bad array; Orbax's event loop is
    closed while TensorStore's other reads are still in flight, and each of them, when it
    completes, reports ``RuntimeError('Event loop is closed')`` through ``sys.unraisablehook``
    from a TensorStore thread. The restore has already failed with its own error; these are
    teardown noise."""
    exc = unraisable.exc_value
    return isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed"


def _hook_dropping_late_loop_callbacks(previous):
    def hook(unraisable):
        if not _late_loop_callback(unraisable):
            previous(unraisable)

    hook.drops_late_loop_callbacks = True
    return hook


def _multiprocessing(read_only: bool) -> ocp.options.MultiprocessingOptions:
    """Orbax's defaults (every process takes part, process 0 primary), except for a read-only
    manager on a multi-process job: only this process uses it (the study's latency step restores
    on process 0 alone), so it must not wait in a barrier for the others."""
    if not read_only or jax.process_count() == 1:
        return ocp.options.MultiprocessingOptions()
    me = jax.process_index()
    return ocp.options.MultiprocessingOptions(
        primary_host=me, active_processes={me}, barrier_sync_key_prefix=f"read-{me}"
    )


class Checkpoints:
    """Saves and restores ``{"state": TrainState, "meta": dict}``; keeps the last ``keep``."""

    def __init__(self, workdir: str | os.PathLike, keep: int = 3, *, read_only: bool = False):
        workdir = epath.Path(workdir)
        # Orbax wants an absolute path; a gs:// URI is one already.
        self.directory = (workdir.absolute() if storage.is_local(workdir) else workdir) / (
            CHECKPOINT_DIR
        )
        if read_only and not self.directory.is_dir():
            raise FileNotFoundError(f"no checkpoints in {os.fspath(workdir)}")
        # A read-only manager saves nothing and deletes nothing (save_interval_steps=0,
        # max_to_keep=None: what Orbax would set, with a warning each, for read_only=True).
        with _quiet_absl_warnings() if read_only else contextlib.nullcontext():
            self.manager = ocp.CheckpointManager(
                self.directory,
                options=ocp.CheckpointManagerOptions(
                    max_to_keep=None if read_only else keep,
                    save_interval_steps=0 if read_only else 1,
                    create=not read_only,
                    read_only=read_only,
                    cleanup_tmp_directories=not read_only,
                    multiprocessing_options=_multiprocessing(read_only),
                ),
                item_names=("state", "meta"),
            )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, state, meta: dict) -> None:
        """Starts an asynchronous save of ``state`` at its step (device-to-host copy done here)."""
        step = int(jax.device_get(state.step))
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
            ),
        )

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def restore(self, abstract_state, step: int | None = None):
        """``(state, meta)`` of ``step`` (default: the latest); ValueError if it cannot be read."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        # Installed before the restore (the loop closes before its error reaches us); kept if the
        # restore fails, since TensorStore's reads complete after it (_late_loop_callback).
        previous = sys.unraisablehook
        if not getattr(previous, "drops_late_loop_callbacks", False):
            sys.unraisablehook = _hook_dropping_late_loop_callbacks(previous)
        try:
            out = self.manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()
                ),
            )
        except Exception as e:  # orbax/tensorstore raise many types for unreadable files
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ValueError(
                f"checkpoint {self.directory / str(step)} cannot be read ({first[:200]})"
            ) from None
        sys.unraisablehook = previous  # every read has completed
        return out.state, dict(out.meta)

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
