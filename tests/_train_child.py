"""Helpers for the training tests: the smoke config on a small image folder, and a child process
that trains and is killed (SIGKILL) at a chosen moment: ``python _train_child.py WORKDIR DATA MODE``
with MODE ``step:N`` (before dispatching train call N) or ``save:N`` (inside Orbax's write of the
checkpoint of step N, before it is renamed into place)."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import pathlib
import signal
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]


def smoke_config(data_dir, **overrides):
    """``get_config("smoke")`` training and evaluating on ``data_dir``; ``overrides`` as
    ``{"train.steps": 4}``."""
    spec = importlib.util.spec_from_file_location(
        "espcn_config", ROOT / "experiments/configs/espcn.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config("smoke")
    config.data.source = f"folder:{data_dir}"
    config.eval.sets = f"folder:{data_dir}"
    for dotted, value in overrides.items():
        group, field = dotted.split(".")
        config[group][field] = value
    return config


def kill_at_train_call(n: int, signum: int = signal.SIGKILL, after=None, slow_s: float = 0.0):
    """Patches ``step.make_steps`` so that the loop's train call ``n`` (1-based, counting
    ``Steps.train_logged`` and ``train_logged_tail`` together) first sends ``signum`` to this
    process (once the path ``after`` exists, if given: a checkpoint the asynchronous save is
    writing); from then on every call first sleeps ``slow_s`` seconds (a slower host, in
    tests/_multihost_child.py)."""
    from espcn_jax.training import step as step_lib

    make = step_lib.make_steps

    def patched(*args, **kwargs):
        steps = make(*args, **kwargs)
        calls = [0]

        def wrap(fn):
            def counted(state, log, batch):
                calls[0] += 1
                if calls[0] == n:
                    for _ in range(600):
                        if after is None or pathlib.Path(after).exists():
                            break
                        time.sleep(0.1)
                    os.kill(os.getpid(), signum)
                if calls[0] >= n and slow_s:
                    time.sleep(slow_s)
                return fn(state, log, batch)

            return counted

        tail = steps.train_logged_tail
        return dataclasses.replace(
            steps,
            train_logged=wrap(steps.train_logged),
            train_logged_tail=None if tail is None else wrap(tail),
        )

    step_lib.make_steps = patched


def kill_in_save(step: int) -> None:
    """SIGKILL inside the write of checkpoint ``step``: after its files are written, before the
    temporary directory is renamed to its final name."""
    from orbax.checkpoint._src.path import atomicity

    finalize = atomicity.AtomicRenameTemporaryPath.finalize

    async def patched(self, *args, **kwargs):
        if pathlib.Path(str(self.get())).name.startswith(f"{step}.orbax-checkpoint-tmp"):
            os.kill(os.getpid(), signal.SIGKILL)
        return await finalize(self, *args, **kwargs)

    atomicity.AtomicRenameTemporaryPath.finalize = patched


if __name__ == "__main__":
    workdir, data_dir, mode = sys.argv[1:4]
    kind, n = mode.split(":")
    if kind == "step":
        kill_at_train_call(int(n), after=pathlib.Path(workdir) / "checkpoints" / "4")
    else:
        kill_in_save(int(n))
    from espcn_jax import training

    training.train_and_evaluate(smoke_config(data_dir), workdir)
    sys.exit(3)  # not killed: the test fails on this code
