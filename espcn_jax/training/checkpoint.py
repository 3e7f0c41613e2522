"""Orbax checkpoints of a run: the train state and a little JSON metadata, in ``workdir/checkpoints``.

A checkpoint is written to a temporary directory and renamed when complete, so a process killed
in the middle of a write leaves no step that ``latest_step`` would return; the temporary
directory is removed when the manager is next opened (``cleanup_tmp_directories``).
"""

from __future__ import annotations

from pathlib import Path

import jax
import orbax.checkpoint as ocp

CHECKPOINT_DIR = "checkpoints"


class Checkpoints:
    """Saves and restores ``{"state": TrainState, "meta": dict}``; keeps the last ``keep``."""

    def __init__(self, workdir: str | Path, keep: int = 3, *, read_only: bool = False):
        self.directory = Path(workdir).absolute() / CHECKPOINT_DIR
        if read_only and not self.directory.is_dir():
            raise FileNotFoundError(f"no checkpoints in {Path(workdir)}")
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep,
                create=not read_only,
                read_only=read_only,
                cleanup_tmp_directories=not read_only,
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
        return out.state, dict(out.meta)

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
