"""The optimizer and learning-rate schedules of a run (optax)."""

from __future__ import annotations

import ml_collections
import optax


def schedule(opt: ml_collections.ConfigDict, steps: int) -> optax.Schedule:
    """``cosine``: linear warm-up to ``lr``, cosine decay to ``final_lr`` at ``steps``;
    ``espcn``: Shi et al.'s 0.01 -> 0.0001, here a geometric decay from ``lr`` to ``final_lr``
    over the run (the paper lowers it on plateaus, which a pure function of the step cannot);
    ``linear``: the same warm-up, then a straight line down to ``final_lr`` at ``steps``;
    ``constant``: ``lr``."""
    if opt.schedule == "constant":
        return optax.constant_schedule(opt.lr)
    if opt.schedule == "espcn":
        return optax.exponential_decay(opt.lr, steps, opt.final_lr / opt.lr)
    warmup = min(int(opt.warmup_steps), steps - 1)  # cosine's and linear's
    if opt.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            0.0, opt.lr, warmup, steps, end_value=opt.final_lr
        )
    if opt.schedule == "linear":
        return optax.join_schedules(
            [
                optax.linear_schedule(0.0, opt.lr, warmup),
                optax.linear_schedule(opt.lr, opt.final_lr, steps - warmup),
            ],
            [warmup],
        )
    raise ValueError(
        f"config.opt.schedule must be cosine, linear, espcn or constant, got {opt.schedule!r}"
    )


def optimizer(opt: ml_collections.ConfigDict, steps: int) -> optax.GradientTransformation:
    """Adam (or SGD with momentum 0.9) on ``schedule``, after optional global-norm clipping."""
    lr = schedule(opt, steps)
    if opt.optimizer == "adam":
        tx = optax.adam(lr, b1=opt.b1, b2=opt.b2)
    elif opt.optimizer == "sgd":
        tx = optax.sgd(lr, momentum=0.9)
    else:
        raise ValueError(f"config.opt.optimizer must be adam or sgd, got {opt.optimizer!r}")
    if opt.clip_norm > 0:
        tx = optax.chain(optax.clip_by_global_norm(opt.clip_norm), tx)
    return tx
