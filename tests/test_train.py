"""The train step: one Adam step against PyTorch, schedules against their formulas, gradient
clipping, mixed precision, the eval step. The loop is tested in test_train_loop.py."""

from __future__ import annotations

import json
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from espcn_jax import models
from espcn_jax.training import optim
from espcn_jax.training import step as step_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]


# --- the step ------------------------------------------------------------------------------------


@pytest.mark.parametrize("loss", ["mse", "l1"])
def test_one_adam_step_matches_torch(loss):
    """ESPCN (torch channel order) forward, loss, backward and one Adam step, against the same
    network written in PyTorch: ``Conv2d``, ``tanh``, ``PixelShuffle``, ``torch.optim.Adam``."""
    torch = pytest.importorskip("torch")
    cfg = models.ModelConfig(
        family="lr", scale=2, depth=2, widths=4, kernel_sizes=(3, 3), order="torch"
    )
    mesh = step_lib.make_mesh()
    steps = step_lib.make_steps(cfg, optax.adam(1e-2), seed=0, mesh=mesh, loss=loss)
    state = steps.init()
    params0 = jax.device_get(state.params)
    rng = np.random.default_rng(0)
    batch = {
        "lr": rng.random((3, 5, 6, 1), np.float32),
        "hr": rng.random((3, 10, 12, 1), np.float32),
    }
    state, metrics = steps.train(state, batch)

    convs = [torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.Conv2d(4, 4, 3, padding=1)]
    for conv, p in zip(convs, (params0["convs"][0], params0["convs"][1]), strict=True):
        conv.weight.data = torch.tensor(np.transpose(np.asarray(p["kernel"][...]), (3, 2, 0, 1)))
        conv.bias.data = torch.tensor(np.asarray(p["bias"][...]))
    net = torch.nn.Sequential(convs[0], torch.nn.Tanh(), convs[1], torch.nn.PixelShuffle(2))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    x = torch.tensor(batch["lr"]).permute(0, 3, 1, 2)
    y = torch.tensor(batch["hr"]).permute(0, 3, 1, 2)
    criterion = torch.nn.MSELoss() if loss == "mse" else torch.nn.L1Loss()
    ref_loss = criterion(net(x), y)
    opt.zero_grad()
    ref_loss.backward()
    opt.step()

    assert float(metrics["loss"]) == pytest.approx(ref_loss.item(), rel=1e-5)
    params = jax.device_get(state.params)
    for i, conv in enumerate(convs):
        kernel = np.transpose(conv.weight.detach().numpy(), (2, 3, 1, 0))
        np.testing.assert_allclose(params["convs"][i]["kernel"][...], kernel, atol=2e-6)
        np.testing.assert_allclose(
            params["convs"][i]["bias"][...], conv.bias.detach().numpy(), atol=2e-6
        )
    assert int(state.step) == 1


def _opt(**fields) -> ml_collections.ConfigDict:
    base = dict(
        optimizer="adam",
        lr=1e-2,
        final_lr=1e-4,
        schedule="cosine",
        warmup_steps=0,
        clip_norm=0.0,
        b1=0.9,
        b2=0.999,
    )
    return ml_collections.ConfigDict({**base, **fields})


def test_schedules_follow_their_formulas():
    steps, s = 1000, np.array([0, 1, 250, 500, 999, 1000])
    espcn = optim.schedule(_opt(schedule="espcn"), steps)
    np.testing.assert_allclose(
        [espcn(int(k)) for k in s], 1e-2 * (1e-4 / 1e-2) ** (s / steps), rtol=1e-5
    )
    cosine = optim.schedule(_opt(schedule="cosine", warmup_steps=100), steps)
    t = (s - 100) / 900
    want = np.where(s < 100, 1e-2 * s / 100, 1e-4 + (1e-2 - 1e-4) * 0.5 * (1 + np.cos(np.pi * t)))
    np.testing.assert_allclose([cosine(int(k)) for k in s], want, rtol=1e-5)
    linear = optim.schedule(_opt(schedule="linear", warmup_steps=100), steps)
    want = np.where(s < 100, 1e-2 * s / 100, 1e-2 + (1e-4 - 1e-2) * t)
    np.testing.assert_allclose([linear(int(k)) for k in s], want, rtol=1e-5)
    const = optim.schedule(_opt(schedule="constant"), steps)
    np.testing.assert_allclose([const(int(k)) for k in s], 1e-2, rtol=1e-6)


def test_clip_norm_bounds_the_first_sgd_update():
    """SGD's first step moves the parameters by ``lr * g``; clipped, ``|update| = lr * clip``."""
    cfg = models.ModelConfig(family="lr", scale=2, depth=2, widths=4)
    tx = optim.optimizer(_opt(optimizer="sgd", schedule="constant", lr=0.1, clip_norm=1e-3), 10)
    steps = step_lib.make_steps(cfg, tx, seed=0, mesh=step_lib.make_mesh())
    state = steps.init()
    before = jax.device_get(state.params)
    rng = np.random.default_rng(0)
    batch = {"lr": rng.random((2, 4, 4, 1), np.float32), "hr": rng.random((2, 8, 8, 1), np.float32)}
    state, metrics = steps.train(state, batch)
    moved = optax.global_norm(
        jax.tree.map(lambda a, b: a - b, jax.device_get(state.params), before)
    )
    assert float(metrics["grad_norm"]) > 1e-2  # the clip is active
    assert float(moved) == pytest.approx(0.1 * 1e-3, rel=1e-4)


def test_mixed_precision_keeps_float32_state():
    f32 = models.ModelConfig(family="lr", scale=2, depth=2, widths=8)
    rng = np.random.default_rng(0)
    batch = {
        "lr": rng.random((4, 6, 6, 1), np.float32),
        "hr": rng.random((4, 12, 12, 1), np.float32),
    }
    out = {}
    for name, cfg in {"f32": f32, "bf16": f32.replace(dtype="bfloat16")}.items():
        steps = step_lib.make_steps(cfg, optax.adam(1e-3), seed=0, mesh=step_lib.make_mesh())
        state, metrics = steps.train(steps.init(), batch)
        dtypes = {x.dtype for x in jax.tree.leaves((state.params, state.opt_state)) if x.ndim}
        assert dtypes == {jnp.dtype("float32")}, name
        out[name] = float(metrics["loss"])
    assert out["bf16"] == pytest.approx(out["f32"], rel=2e-2)
    assert out["bf16"] != out["f32"]  # the switch changes the computation


def test_eval_step_psnr_matches_numpy():
    cfg = models.ModelConfig(family="lr", scale=2, depth=2, widths=4)
    steps = step_lib.make_steps(cfg, optax.adam(1e-3), seed=0, mesh=step_lib.make_mesh())
    state = steps.init()
    rng = np.random.default_rng(0)
    batch = {"lr": rng.random((2, 4, 4, 1), np.float32), "hr": rng.random((2, 8, 8, 1), np.float32)}
    sr = np.asarray(nnx.merge(steps.graphdef, state.params)(batch["lr"]))
    want = -10 * np.log10(np.mean((np.clip(sr, 0, 1) - batch["hr"]) ** 2))
    assert float(steps.evaluate(state.params, batch)["psnr"]) == pytest.approx(want, rel=1e-5)


def _conv_precisions(jaxpr) -> set:
    """The precision of every convolution in a (closed) jaxpr, sub-jaxprs included."""
    out = set()
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "conv_general_dilated":
            out.add(str(eqn.params["precision"]))
        for sub in jax.core.jaxprs_in_params(eqn.params):
            out |= _conv_precisions(sub)
    return out


@pytest.mark.parametrize("precision", ["default", "high", "highest"])
def test_train_step_is_traced_at_the_configured_precision(precision):
    """config.train.precision is fixed in the train step's convolutions (forward and backward),
    whatever jax.default_matmul_precision is around the call. Checked on the lax convs (the
    route of GPU and TPU): a oneDNN custom call given an explicit precision computes float32
    (tests/test_fast_conv.py)."""
    cfg = models.ModelConfig(family="lr", scale=2, depth=2, widths=4)
    steps = step_lib.make_steps(
        cfg, optax.adam(1e-3), seed=0, mesh=step_lib.make_mesh(), precision=precision,
        onednn_convs=False,
    )  # fmt: skip
    batch = {"lr": np.zeros((2, 4, 4, 1), np.float32), "hr": np.zeros((2, 8, 8, 1), np.float32)}
    with jax.default_matmul_precision("bfloat16"):
        jaxpr = steps.train.trace(steps.init(), batch).jaxpr.jaxpr
    want = getattr(jax.lax.Precision, precision.upper())
    assert _conv_precisions(jaxpr) == {str((want, want))}


def test_bfloat16_precision_gives_the_cpu_convs_bfloat16_operands():
    """``precision="bfloat16"``: on a CPU with bfloat16 instructions and the oneDNN library,
    every conv of the step (the 1-channel first one too) is a custom call on bfloat16 operands
    (forward and both gradients); elsewhere the lax convs carry one-pass bfloat16 precision
    (``Precision.DEFAULT``), which XLA:CPU computes in float32."""
    from espcn_jax import cpu_conv

    cfg = models.ModelConfig(family="lr", scale=2, depth=2, widths=4)
    steps = step_lib.make_steps(
        cfg, optax.adam(1e-3), seed=0, mesh=step_lib.make_mesh(), precision="bfloat16"
    )
    batch = {"lr": np.zeros((2, 4, 4, 1), np.float32), "hr": np.zeros((2, 8, 8, 1), np.float32)}
    state = steps.init()
    if cpu_conv.available() and cpu_conv.native_bf16():
        hlo = steps.train.lower(state, batch).as_text()
        calls = [line for line in hlo.splitlines() if "espcn_onednn_conv" in line]
        # two conv layers x (forward, dx, dw), but the first layer's dx: the input needs none
        assert len(calls) == 2 * 3 - 1, hlo
        assert all("bf16" in line.split("espcn_onednn_conv")[1] for line in calls)
    else:
        jaxpr = steps.train.trace(state, batch).jaxpr.jaxpr
        want = jax.lax.Precision.DEFAULT
        assert _conv_precisions(jaxpr) == {str((want, want))}
    _, metrics = steps.train(state, batch)
    assert np.isfinite(float(metrics["loss"]))


def test_precision_is_validated_and_backfilled(tmp_path):
    from _train_child import smoke_config

    from espcn_jax.training import config as cfg_lib

    config = smoke_config(tmp_path)
    assert config.train.precision == "default"
    config.train.precision = "tf32"
    with pytest.raises(ValueError, match="config.train.precision must be one of"):
        cfg_lib.check(config)
    # A run directory written before the field existed: it restores and resumes as "default".
    config.train.precision = "default"
    old = json.loads(cfg_lib.to_json(config))
    del old["train"]["precision"]
    (tmp_path / cfg_lib.CONFIG_FILE).write_text(json.dumps(old))
    assert cfg_lib.load(tmp_path).train.precision == "default"
    cfg_lib.check_workdir_config(config, tmp_path)
    config.train.precision = "highest"
    with pytest.raises(ValueError, match="differs in train.precision"):
        cfg_lib.check_workdir_config(config, tmp_path)


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("tail_steps", -1, "tail_steps must be an integer from 0 to config.train.steps"),
        ("tail_steps", 9, r"tail_steps must be an integer from 0 to config.train.steps \(8\)"),
        ("tail_steps", True, "tail_steps must be an integer"),
        ("tail_precision", "tf32", "tail_precision must be one of"),
    ],
)
def test_tail_is_validated(tmp_path, field, value, match):
    from _train_child import smoke_config

    from espcn_jax.training import config as cfg_lib

    config = smoke_config(tmp_path)
    config.train[field] = value
    with pytest.raises(ValueError, match=match):
        cfg_lib.check(config)


def test_tail_is_backfilled(tmp_path):
    """A run directory written before the tail fields restores and resumes with no tail."""
    from _train_child import smoke_config

    from espcn_jax.training import config as cfg_lib

    config = smoke_config(tmp_path)
    old = json.loads(cfg_lib.to_json(config))
    del old["train"]["tail_steps"], old["train"]["tail_precision"]
    (tmp_path / cfg_lib.CONFIG_FILE).write_text(json.dumps(old))
    assert cfg_lib.tail(cfg_lib.load(tmp_path)) == (0, "default")
    cfg_lib.check_workdir_config(config, tmp_path)
    config.train.tail_steps = 2
    with pytest.raises(ValueError, match="differs in train.tail_steps"):
        cfg_lib.check_workdir_config(config, tmp_path)


def test_tail_step_is_traced_at_the_tail_precision():
    """make_steps(tail_precision=) compiles a second logged step at that precision; the first
    keeps ``precision``."""
    cfg = models.ModelConfig(family="lr", scale=2, depth=2, widths=4)
    steps = step_lib.make_steps(
        cfg, optax.adam(1e-3), seed=0, mesh=step_lib.make_mesh(), precision="default",
        tail_precision="highest", onednn_convs=False,
    )  # fmt: skip
    batch = {"lr": np.zeros((2, 4, 4, 1), np.float32), "hr": np.zeros((2, 8, 8, 1), np.float32)}
    state, log = steps.init(), steps.new_log()
    for fn, want in ((steps.train_logged, "DEFAULT"), (steps.train_logged_tail, "HIGHEST")):
        jaxpr = fn.trace(state, log, batch).jaxpr.jaxpr
        p = getattr(jax.lax.Precision, want)
        assert _conv_precisions(jaxpr) == {str((p, p))}, want
    assert (
        step_lib.make_steps(
            cfg, optax.adam(1e-3), seed=0, mesh=step_lib.make_mesh()
        ).train_logged_tail
        is None
    )


@pytest.mark.parametrize("b1, b2", [(0.9, 0.999), (0.9, 0.99), (0.8, 0.95)])
def test_adam_follows_a_numpy_adam_with_the_configured_betas(b1, b2):
    """``config.opt.b1/b2`` reach Adam: 5 updates on fixed gradients against Adam written out in
    NumPy (Kingma & Ba, bias-corrected moments, eps 1e-8 outside the square root)."""
    opt = _opt(schedule="constant", lr=1e-2, b1=b1, b2=b2)
    tx = optim.optimizer(opt, 100)
    rng = np.random.default_rng(0)
    grads = [rng.standard_normal(6).astype(np.float32) * 10.0**-k for k in range(5)]
    params = np.zeros(6, np.float32)
    state = tx.init(jnp.asarray(params))
    got = jnp.asarray(params)
    m = v = np.zeros(6, np.float64)
    want = params.astype(np.float64)
    for t, g in enumerate(grads, start=1):
        updates, state = tx.update(jnp.asarray(g), state, got)
        got = got + updates
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g.astype(np.float64) ** 2
        want = want - 1e-2 * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + 1e-8)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("loss", ["mse", "l1"])
def test_loss_border_scores_only_the_inner_pixels(loss):
    """``loss_border=b``: the train loss is the NumPy loss over HR pixels ``b:-b`` of the network's
    output, and HR targets inside the border change neither the loss nor the update."""
    cfg = models.ModelConfig(family="lr", scale=2, depth=2, widths=4)
    border = 3
    steps = step_lib.make_steps(
        cfg, optax.adam(1e-2), seed=0, mesh=step_lib.make_mesh(), loss=loss, loss_border=border
    )
    rng = np.random.default_rng(0)
    batch = {
        "lr": rng.random((2, 6, 7, 1), np.float32),
        "hr": rng.random((2, 12, 14, 1), np.float32),
    }
    state = steps.init()
    sr = np.asarray(nnx.merge(steps.graphdef, state.params)(batch["lr"]), np.float64)
    diff = (sr - batch["hr"])[:, border:-border, border:-border]
    want = np.mean(diff**2) if loss == "mse" else np.mean(np.abs(diff))
    state_a, metrics_a = steps.train(state, batch)
    assert float(metrics_a["loss"]) == pytest.approx(want, rel=1e-5)

    edited = {"lr": batch["lr"], "hr": batch["hr"].copy()}
    edited["hr"][:, :border] = 1 - edited["hr"][:, :border]  # top rows
    edited["hr"][:, :, -border:] = 0.5  # right columns
    state_b, metrics_b = steps.train(steps.init(), edited)
    assert float(metrics_b["loss"]) == float(metrics_a["loss"])
    jax.tree.map(np.testing.assert_array_equal, state_b.params, state_a.params)

    edited["hr"][:, border, border] += 0.25  # the first inner pixel does count
    state_c, metrics_c = steps.train(steps.init(), edited)
    assert float(metrics_c["loss"]) != float(metrics_a["loss"])


def test_loss_border_is_validated_and_backfilled(tmp_path):
    from _train_child import smoke_config

    from espcn_jax.training import config as cfg_lib

    config = smoke_config(tmp_path)
    assert config.train.loss_border == 0
    hr_patch = config.model.scale * config.train.patch
    for bad in (-1, hr_patch // 2):
        config.train.loss_border = bad
        with pytest.raises(ValueError, match="config.train.loss_border must be an integer >= 0"):
            cfg_lib.check(config)
    config.train.loss_border = hr_patch // 2 - 1
    cfg_lib.check(config)
    # A run directory written before the field existed: it restores and resumes with no border.
    config.train.loss_border = 0
    old = json.loads(cfg_lib.to_json(config))
    del old["train"]["loss_border"]
    (tmp_path / cfg_lib.CONFIG_FILE).write_text(json.dumps(old))
    assert cfg_lib.load(tmp_path).train.loss_border == 0
    cfg_lib.check_workdir_config(config, tmp_path)
    config.train.loss_border = 2
    with pytest.raises(ValueError, match="differs in train.loss_border"):
        cfg_lib.check_workdir_config(config, tmp_path)
