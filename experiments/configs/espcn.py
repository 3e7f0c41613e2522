"""The paper's ESPCN x3 on the Y channel of the embedded photos (Shi et al. 2016, 5-3-3, 64-32, tanh).

``python experiments/train.py --workdir=DIR`` trains it; override any field with
``--config.group.field=value``. ``get_config("smoke")`` is a tiny variant for tests and quick CPU
checks (a few steps of a 2-layer net on small patches).
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()

    config.model = m = ml_collections.ConfigDict()
    m.family = "lr"  # lr (ESPCN), hr (SRCNN-like), deconv (FSRCNN-like), lr_tied
    m.scale = 3  # upscaling factor r
    m.channels = 1  # 1: the Y channel (the literature's protocol); 3: RGB
    m.depth = 3  # conv layers, the upsampling layer included
    m.widths = (64, 32)  # hidden feature widths (depth - 1 of them, or one for all)
    # per layer; None: the family's defaults (5, then 3: ESPCN's 5-3-3; 3r for deconv's last)
    m.kernel_sizes = config_dict.placeholder(tuple)
    m.activation = "tanh"  # after every layer but the last
    # add the bicubic upscale of the input to the output (+0.06 dB at 8,000 steps, -0.24 dB on
    # Set5 at 42,000: BUILD_NOTES)
    m.residual = False
    m.icnr = False  # ICNR init of the sub-pixel / transposed layer (lr, deconv)
    m.order = "tf"  # channel order of the periodic shuffle: tf (DCR) or torch (CRD)
    m.upsample_padding = "SAME"  # pads of lr's sub-pixel conv
    m.dtype = config_dict.placeholder(str)  # compute dtype; "bfloat16" for mixed precision
    m.param_dtype = "float32"  # parameter (and optimizer state) dtype

    config.data = d = ml_collections.ConfigDict()
    d.source = "skimage"  # training images: skimage (embedded), folder:PATH or tfds:NAME
    d.split = config_dict.placeholder(str)  # split of skimage / tfds sources (None: train)
    d.data_dir = config_dict.placeholder(str)  # TFDS data directory (None: the default)
    d.augment = True  # random dihedral transform (8 rotations / flips) per patch
    d.balance = "pixels"  # patches per image: "pixels" (by its area) or "images" (equal)
    d.min_std = 0.0  # redraw LR patches flatter than this standard deviation (uint8 units)
    # each training image also shrunk by these factors in (0, 1) (scale augmentation)
    d.rescales = ()
    # batches made by "device" (inside the train step: 1.30x the steps/s of "host" here) or "host"
    # (NumPy, tf.data)
    d.sampler = "device"
    d.device_sampler_max_mb = 1024.0  # above this (uint8 images per device): the host sampler

    config.opt = o = ml_collections.ConfigDict()
    o.optimizer = "adam"  # adam or sgd (momentum 0.9)
    # initial (constant, espcn) or peak (cosine) learning rate: 1e-2 diverged in full-length runs,
    # with residual off (step ~2,500) and on (step ~7,500), though it looked best at 5,000-8,000;
    # at 52,000 bfloat16 steps 2e-3 gave Set5 x3 32.312 dB, 3e-3 32.296 (BUILD_NOTES, "bfloat16
    # convolutions")
    o.lr = 2e-3
    o.final_lr = 1e-5  # learning rate at the last step (cosine, linear, espcn)
    o.schedule = "cosine"  # cosine, linear, espcn (geometric decay lr -> final_lr) or constant
    o.warmup_steps = 200  # linear warm-up from 0 (cosine, linear)
    o.clip_norm = 0.0  # clip gradients to this global norm; 0: off
    o.b1 = 0.9  # Adam's beta1
    # Adam's beta2: 0.99 (Set5 x3 +0.19 dB over 0.999 at 42,000 steps, no loss spikes after step
    # 4,000; 0.95 gave +0.05; BUILD_NOTES "Adam's beta2 for the default run")
    o.b2 = 0.99

    config.train = t = ml_collections.ConfigDict()
    # optimizer steps (12.7-14.7 min here at 58-74 steps/s with bfloat16 convolutions) and patches
    # per step (global, over every device): in the same time, batch 64 gave Set5 x3 +0.035 dB over
    # 32 (the same patches) and +0.17 over 16 (BUILD_NOTES, "Batch size for the default run")
    t.steps = 52_000
    t.batch_size = 64
    t.patch = 24  # LR patch side (HR patch: scale * patch)
    t.seed = 0  # parameters and the batch of every step follow from it
    t.loss = "mse"  # mse or l1, on [0, 1] pixels
    # HR pixels left out of the loss at each side of a patch: 4 LR pixels x scale (12) is the
    # 5-3-3 net's receptive-field radius, so the loss sees no output a zero pad reached (12 cost
    # 1.0 dB of validation PSNR at 10,000 steps here: whole images need the edge outputs trained)
    t.loss_border = 0
    # matmul/conv precision of the train step: default (XLA's: one-pass bfloat16 on TPU, TF32 on
    # recent NVIDIA GPUs, float32 on CPU), high, highest (full float32 everywhere), or bfloat16
    # (one bfloat16 pass everywhere: on a CPU with AVX512-BF16/AMX the oneDNN convs take bfloat16
    # operands, float32 accumulation; elsewhere on a CPU float32). bfloat16 ran the step 1.5x
    # faster here and, at 2.2x the steps in about the same time, raised Set5 x3 from 32.265 to
    # 32.312 dB (BUILD_NOTES, "bfloat16 convolutions")
    t.precision = "bfloat16"
    # the last tail_steps steps are traced at tail_precision instead (0: none)
    t.tail_steps = 0
    t.tail_precision = "default"
    t.log_every_steps = 500  # metrics.jsonl / TensorBoard / log line interval
    t.checkpoint_every_steps = 2_000  # checkpoint interval (and one at the end)
    t.keep_checkpoints = 3  # checkpoints kept on disk
    t.prefetch = 2  # batches transferred ahead of the step

    config.eval = e = ml_collections.ConfigDict()
    e.sets = "skimage:validation"  # comma-separated: skimage:validation, folder:PATH, tfds:NAME
    e.every_steps = 10_000  # evaluation during training (0: only at the end)

    if arg == "smoke":
        # the host sampler: the engine's tests exercise that path (the device sampler has its
        # own, tests/test_device_sampler.py)
        m.depth, m.widths, d.sampler = 2, (8,), "host"
        # float32: the engine's tests compare runs exactly on any CPU (the bfloat16 path has its
        # own, tests/test_fast_conv.py and tests/test_train.py)
        t.precision = "default"
        o.lr, o.warmup_steps = 1e-2, 0
        t.steps, t.batch_size, t.patch = 8, 4, 8
        t.log_every_steps, t.checkpoint_every_steps, t.keep_checkpoints = 2, 4, 2
        e.every_steps = 0
    elif arg:
        raise ValueError(f"unknown config variant {arg!r}; known: smoke")
    return config
