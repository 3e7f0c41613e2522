"""Sweep configs for experiments/sweep.py: ``get_config("quick" | "paper" | "smoke")``.

    python experiments/sweep.py --preset=quick --workdir=/tmp/study
    python experiments/sweep.py --config=experiments/configs/sweep.py:paper \\
        --config.data.train=tfds:div2k/bicubic_x3 --config.seeds=0,1,2 --workdir=gs://bucket/study

The axes (``families`` ... ``match_rf``) are expanded by ``espcn_jax.study.grid.expand``; every
other group is shared by all points. ``engine`` is merged into the training engine's config
(``experiments/configs/espcn.py``) for every point, after the point's model, steps and seed.
"""

from __future__ import annotations

import ml_collections

PRESETS = ("quick", "paper", "smoke")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    preset = arg or "quick"
    if preset not in PRESETS:
        raise ValueError(f"sweep preset must be one of {PRESETS}, got {preset!r}")
    c = ml_collections.ConfigDict()
    c.preset = preset

    # --- the grid's axes (each a tuple; the sweep is their product) ---
    c.families = ("lr", "hr", "deconv")  # espcn_jax.models.FAMILY_NAMES
    c.depths = (3,)  # conv layers, the upsampling layer included
    c.budgets = (1e4, 2.5e4)  # in budget.metric per budget.unit (ESPCN x3: 2.26e4 MACs/LR px)
    c.seeds = (0, 1)  # init and batch order
    c.steps = (2500,)  # training length in optimiser steps
    c.residual = (True,)  # add the bicubic upscale to the output (the shared prior)
    c.match_rf = (False,)  # True: hr kernels x r, so its receptive field matches lr's

    # --- shared by every point ---
    c.model = ml_collections.ConfigDict()
    c.model.scale = 3  # upscaling factor r
    c.model.channels = 1  # 1 = Y (the literature's protocol), 3 = RGB
    c.model.activation = "tanh"  # ESPCN's
    c.model.scheme = "uniform"  # width parametrisation (espcn_jax.solver.WIDTH_SCHEMES)

    c.budget = ml_collections.ConfigDict()
    c.budget.metric = "conv_macs"  # or flops (useful), flops_xla: what the widths are matched on
    c.budget.unit = "lr_pixel"  # image (of lr_size), output_pixel, lr_pixel
    c.budget.lr_size = "360x640"  # LR size the solver costs (1080p output at x3)

    c.data = ml_collections.ConfigDict()
    c.data.train = "skimage"  # espcn_jax.data.make_source name: skimage, folder:DIR, tfds:NAME
    c.data.data_dir = ""  # TFDS data_dir ("" = default)

    # the engine's base config: experiments/configs/espcn.py get_config(engine_preset or None)
    c.engine_preset = ""
    # merged into the engine's training config (its groups: model, data, opt, train, eval) after
    # the point's model, steps, seed, data.source and eval.sets
    c.engine = ml_collections.ConfigDict()
    c.engine.train = ml_collections.ConfigDict()
    c.engine.train.batch_size = 16  # patches per step
    c.engine.train.patch = 24  # LR patch side
    c.engine.train.log_every_steps = 100  # training curve resolution (metrics.jsonl)
    c.engine.train.checkpoint_every_steps = 1000  # resume granularity
    c.engine.opt = ml_collections.ConfigDict()
    c.engine.opt.lr = 3e-3  # Adam, cosine decay to final_lr
    c.engine.opt.warmup_steps = 100
    c.engine.eval = ml_collections.ConfigDict()
    c.engine.eval.every_steps = 0  # evaluate at the end only

    c.eval = ml_collections.ConfigDict()
    # validation sets: "skimage:validation", "folder:DIR" (e.g. Set5), "tfds:NAME" (its
    # validation split); the first one gives the records' top-level psnr/ssim
    c.eval.sets = ("skimage:validation",)
    c.eval.tied_check = True  # hr points: also evaluate the same net run in LR space (lr_tied)

    c.measure = ml_collections.ConfigDict()
    c.measure.latency_lr_size = "360x640"  # forward latency at this LR size (1080p out at x3)
    c.measure.latency_repeats = 3  # timed calls (median reported)
    c.measure.throughput_batch = 4  # images per call for images/s
    c.measure.throughput_lr_size = "90x160"
    c.measure.train_loss_batches = 4  # fixed training batches for the final training loss
    c.measure.train_loss_batch = 32
    c.measure.train_loss_patch = 24

    if preset == "paper":
        c.depths = (3, 5)
        c.budgets = (5e3, 1e4, 2.26e4, 5e4, 1e5)
        c.seeds = (0, 1, 2)
        c.steps = (100_000,)
        c.residual = (False, True)
        c.engine.train.batch_size = 64
        c.engine.train.patch = 17  # ESPCN's LR patches
        c.engine.train.log_every_steps = 500
        c.engine.train.checkpoint_every_steps = 5000
        c.engine.opt.warmup_steps = 1000
        c.model.scheme = "taper"  # ESPCN's 64:32 shape
        c.data.train = "tfds:div2k/bicubic_x3"
        c.eval.sets = ("tfds:div2k/bicubic_x3", "skimage:validation")  # add folder:Set5 etc.
        c.measure.latency_repeats = 20
        c.measure.throughput_batch = 16
        c.measure.throughput_lr_size = "360x640"
    elif preset == "smoke":  # a CPU test run: seconds per point
        c.engine_preset = "smoke"
        c.engine.train.batch_size = 4
        c.engine.train.patch = 8
        c.engine.train.log_every_steps = 2
        c.engine.train.checkpoint_every_steps = 4
        c.engine.opt.warmup_steps = 0
        c.families = ("lr", "hr")
        c.budgets = (2e3,)
        c.steps = (8,)
        c.budget.lr_size = "32x32"
        c.eval.tied_check = False  # tested in tests/test_study.py; saves time here
        c.measure.latency_lr_size = "32x48"
        c.measure.latency_repeats = 2
        c.measure.throughput_batch = 2
        c.measure.throughput_lr_size = "16x16"
        c.measure.train_loss_batches = 1
        c.measure.train_loss_batch = 4
        c.measure.train_loss_patch = 12
    return c
