"""Throw-away probe: which patch sampling trains the paper's ESPCN x3 (Y) best, per step?

Trains ESPCN (5-3-3, 64-32, tanh) with Adam 1e-3 for a fixed number of steps on the embedded
training split, for each sampling variant and seed, and scores validation PSNR/SSIM by the
protocol on the embedded validation split (degraded LR) and, if a folder is given, on it too.
Prints one JSON line per run (stdout); progress on stderr.

    python experiments/probes/sampling.py --steps=3000 --seeds=0,1 --extra_eval=DIR > runs.jsonl

Results and the decision they led to: BUILD_NOTES.md, "Patch sampling: what we measured and
chose". ``score`` wraps the [0, 1] model for the evaluation API of the time, which fed [0, 255];
adapt it if ``evaluate`` takes [0, 1] models.
"""

from __future__ import annotations

import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags
from flax import nnx

from espcn_jax import data, evaluate, images, models, pipeline

flags.DEFINE_integer("steps", 3000, "Training steps per run.")
flags.DEFINE_integer("batch", 16, "Batch size.")
flags.DEFINE_integer("patch", 24, "LR patch side.")
flags.DEFINE_list("seeds", ["0", "1"], "Seeds (model init and batches).")
flags.DEFINE_list(
    "variants", ["pixels:0", "images:0", "pixels:2", "images:2"], "balance:min_std pairs."
)
flags.DEFINE_string("extra_eval", None, "A folder data set to score as well (e.g. Set5 x3).")
FLAGS = flags.FLAGS
SCALE = 3


def train(balance: str, min_std: float, seed: int, train_src):
    sampler = pipeline.PatchSampler(
        train_src, scale=SCALE, patch=FLAGS.patch, batch_size=FLAGS.batch, seed=seed,
        balance=balance, min_std=min_std,
    )  # fmt: skip
    model = models.model_from_config(models.ModelConfig.espcn(scale=SCALE), rngs=nnx.Rngs(seed))
    graphdef, params = nnx.split(model)
    tx = optax.adam(1e-3)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, lr, hr):
        def loss_fn(params):
            return jnp.mean((nnx.merge(graphdef, params)(lr) - hr) ** 2)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    t0, losses = time.time(), []
    for s in range(FLAGS.steps):
        b = sampler.batch(s)
        params, opt_state, loss = step(params, opt_state, b["lr"], b["hr"])
        if s % 500 == 0 or s == FLAGS.steps - 1:
            losses.append(float(loss))
            print(f"{balance}:{min_std} seed {seed} step {s} loss {float(loss):.5f} "
                  f"{time.time() - t0:.0f}s", file=sys.stderr)  # fmt: skip
    return nnx.merge(graphdef, params), time.time() - t0


def score(model, val_src, extra):
    # The evaluate protocol feeds [0, 255]; the model works in [0, 1].
    sr_fn = jax.jit(lambda lr: model(lr / 255.0) * 255.0)
    rows = []
    for hr in val_src.hr:
        hr = images.mod_crop(hr, SCALE)
        lr = evaluate.make_lr(hr, SCALE, "y", True)
        rows.append(evaluate.evaluate_image(hr, lr, sr_fn, SCALE, "y"))
    out = {"val_psnr": float(np.mean([p for p, _ in rows])),
           "val_ssim": float(np.mean([s for _, s in rows]))}  # fmt: skip
    if extra:
        res = evaluate.evaluate(sr_fn, extra, SCALE, channels="y")
        out |= {"extra_psnr": res["psnr"], "extra_ssim": res["ssim"]}
    return out


def main(argv):
    del argv
    train_src = data.make_source("skimage", split="train")
    val_src = data.make_source("skimage", split="validation")
    for variant in FLAGS.variants:
        balance, min_std = variant.split(":")
        for seed in map(int, FLAGS.seeds):
            model, secs = train(balance, float(min_std), seed, train_src)
            row = {"balance": balance, "min_std": float(min_std), "seed": seed,
                   "steps": FLAGS.steps, "train_s": secs}  # fmt: skip
            row |= score(model, val_src, FLAGS.extra_eval)
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    app.run(main)
