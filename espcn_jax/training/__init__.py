"""Training: a sharded, jit-compiled train step, Orbax checkpoints with exact resume, the loop.

Modules: :mod:`config` (validation, config.json), :mod:`optim` (optax optimizer and schedules),
:mod:`step` (state, mesh, train/eval steps), :mod:`checkpoint` (Orbax), :mod:`writers`
(metrics.jsonl, TensorBoard, progress), :mod:`evaluation` (the protocol on validation sets),
:mod:`loop` (``train_and_evaluate``, ``restore``).
"""

from espcn_jax.training.config import model_config
from espcn_jax.training.loop import Interrupted, NonFiniteLossError, restore, train_and_evaluate

__all__ = ["Interrupted", "NonFiniteLossError", "model_config", "restore", "train_and_evaluate"]
