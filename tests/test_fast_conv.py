"""The oneDNN convolutions (espcn_jax/cpu_conv.py, the xla_cpu.OnednnConv hook) against
``jax.grad`` of plain ``lax.conv_general_dilated``: forward and both gradients over random shapes,
strides, paddings and dilations, and from many threads at once; the cases the fast path does not
run fall back to lax unchanged; the engine's train step gives lax's loss curve (one device, and 4
forced host devices in a subprocess); without the library the step runs lax and says so in one
log line.

Tests that need the library skip where it was not built (``pip install -e .`` builds it)."""

from __future__ import annotations

import concurrent.futures
import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax import lax

from espcn_jax import cpu_conv, models, xla_cpu
from espcn_jax.training import step as step_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]
DN = ("NHWC", "HWIO", "NHWC")
needs_library = pytest.mark.skipif(
    not cpu_conv.available(),
    reason=f"oneDNN convolutions not available: {cpu_conv.library_info()['detail']}",
)


def _reference(x, w, strides, padding, dilation):
    return lax.conv_general_dilated(
        x, w, strides, padding, rhs_dilation=dilation, dimension_numbers=DN
    )


def _value_and_grads(conv, x, w, cotangent):
    y, vjp = jax.vjp(conv, x, w)
    return (y, *vjp(cotangent))


@st.composite
def conv_cases(draw):
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    strides = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    kind = draw(st.sampled_from(["SAME", "VALID", "explicit"]))
    if kind == "explicit":
        padding = tuple((draw(st.integers(0, 3)), draw(st.integers(0, 3))) for _ in range(2))
    else:
        padding = kind
    reach = ((kh - 1) * dilation[0] + 1, (kw - 1) * dilation[1] + 1)
    h = draw(st.integers(reach[0], reach[0] + 6))
    w = draw(st.integers(reach[1], reach[1] + 6))
    shapes = ((draw(st.integers(1, 3)), h, w, draw(st.integers(1, 6))), (kh, kw))
    return shapes, draw(st.integers(1, 6)), strides, padding, dilation, draw(st.integers(0, 2**31))


def _case_arrays(case):
    """A :func:`conv_cases` draw as ``(x, w, cotangent), (strides, padding, dilation)``."""
    (x_shape, (kh, kw)), cout, strides, padding, dilation, seed = case
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal(x_shape), jnp.float32)
    w = jnp.asarray(rng.standard_normal((kh, kw, x_shape[-1], cout)), jnp.float32)
    y_ref = _reference(x, w, strides, padding, dilation)
    g = jnp.asarray(rng.standard_normal(y_ref.shape), jnp.float32)
    return (x, w, g), (strides, padding, dilation)


@needs_library
@settings(max_examples=15)
@given(conv_cases())
def test_forward_and_gradients_match_lax(case):
    (x, w, g), (strides, padding, dilation) = _case_arrays(case)
    ref = _value_and_grads(lambda a, b: _reference(a, b, strides, padding, dilation), x, w, g)
    fast = jax.jit(
        lambda a, b, c: _value_and_grads(
            lambda p, q: cpu_conv.conv(p, q, strides, padding, dilation), a, b, c
        )
    )(x, w, g)
    for name, r, f in zip(("y", "dx", "dw"), ref, fast, strict=True):
        assert f.shape == r.shape and f.dtype == r.dtype, name
        scale = float(jnp.max(jnp.abs(r))) or 1.0
        np.testing.assert_allclose(f, r, rtol=0, atol=1e-5 * scale, err_msg=name)


needs_bf16 = pytest.mark.skipif(
    not cpu_conv.native_bf16(),
    reason="this CPU has no bfloat16 instructions (avx512_bf16, amx_bf16)",
)


def _bf16(a):
    return a.astype(jnp.bfloat16).astype(jnp.float32)


@needs_library
@needs_bf16
@settings(max_examples=15)
@given(conv_cases())
def test_bfloat16_operands_match_lax_on_rounded_operands(case):
    """``operands="bfloat16"``: each of the three convolutions equals float32 lax (at "highest")
    on its two operands rounded to bfloat16 (x and w; dy and w; x and dy): bfloat16 products are
    exact in float32, so only the summation order differs."""
    (x, w, g), (strides, padding, dilation) = _case_arrays(case)
    with jax.default_matmul_precision("highest"):
        ref = _value_and_grads(
            lambda a, b: _reference(a, b, strides, padding, dilation), _bf16(x), _bf16(w), _bf16(g)
        )
    fast = jax.jit(
        lambda a, b, c: _value_and_grads(
            lambda p, q: cpu_conv.conv(p, q, strides, padding, dilation, "bfloat16"), a, b, c
        )
    )(x, w, g)
    plain = _value_and_grads(lambda a, b: _reference(a, b, strides, padding, dilation), x, w, g)
    for name, r, f, p in zip(("y", "dx", "dw"), ref, fast, plain, strict=True):
        assert f.shape == r.shape and f.dtype == jnp.float32, name
        scale = float(jnp.max(jnp.abs(r))) or 1.0
        np.testing.assert_allclose(f, r, rtol=0, atol=1e-5 * scale, err_msg=name)
        # and it is the rounded arithmetic, not float32's (a random case rounds somewhere)
        if r.size > 8:
            assert float(jnp.max(jnp.abs(f - p))) > 1e-5 * scale, name


@needs_library
@pytest.mark.parametrize("operands", ["float16", "int8"])
def test_bad_operands_are_refused(operands):
    x, w = jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 2, 2))
    with pytest.raises(ValueError, match=f"operands must be one of .*got '{operands}'"):
        cpu_conv.conv(x, w, (1, 1), "SAME", operands=operands)


@needs_library
def test_custom_call_refuses_mixed_operand_dtypes():
    """The C++ handler checks what it is given: float32 x with bfloat16 w is an error, not a
    misread buffer."""
    x, w = jnp.ones((1, 4, 4, 2), jnp.float32), jnp.ones((3, 3, 2, 2), jnp.bfloat16)
    attrs = cpu_conv._attrs((1, 1), ((1, 1), (1, 1)), (1, 1))
    with pytest.raises(Exception, match="both float32 or both bfloat16"):
        jax.block_until_ready(cpu_conv._call("espcn_onednn_conv_fwd", (1, 4, 4, 2), x, w, **attrs))


def _hook_hlo(precision_ctx, cin: int = 4, precision=None) -> str:
    x = jnp.ones((2, 8, 8, cin), jnp.float32)
    w = jnp.ones((3, 3, cin, 4), jnp.float32)

    def loss(a, b):
        conv = xla_cpu.OnednnConv()
        y = conv(a, b, (1, 1), "SAME", dimension_numbers=DN, precision=precision)
        return jnp.sum(y * y)

    with jax.default_matmul_precision(precision_ctx):
        return jax.jit(jax.grad(loss, (0, 1))).lower(x, w).as_text()


def _custom_call_operand_types(hlo: str) -> set[str]:
    lines = [line for line in hlo.splitlines() if "espcn_onednn_conv" in line]
    assert len(lines) == 3, hlo  # forward, backward data, backward weights
    return {"bf16" if "bf16" in line.split("espcn_onednn_conv")[1] else "f32" for line in lines}


@needs_library
@needs_bf16
@pytest.mark.parametrize("cin", [1, 4])
def test_bfloat16_precision_routes_every_conv_with_bfloat16_operands(cin):
    """Under ``jax.default_matmul_precision("bfloat16")`` the hook gives the custom calls
    bfloat16 operands, a 1-channel conv included (oneDNN's bfloat16 kernel beats XLA there);
    under "default" and "highest", or with an explicit ``precision``, they stay float32."""
    assert _custom_call_operand_types(_hook_hlo("bfloat16", cin)) == {"bf16"}
    assert _custom_call_operand_types(_hook_hlo("bfloat16", 4, lax.Precision.HIGHEST)) == {"f32"}
    for ctx in ("default", "highest"):
        assert "bf16" not in _hook_hlo(ctx, 4)


def test_bfloat16_precision_without_bfloat16_instructions_is_float32(monkeypatch):
    """A CPU without bfloat16 instructions would emulate them, slower than float32: there
    "bfloat16" (like XLA's precision, a floor) computes float32."""
    monkeypatch.setattr(cpu_conv, "native_bf16", lambda: False)
    with jax.default_matmul_precision("bfloat16"):
        assert cpu_conv.operands_for(None) == "float32"
    monkeypatch.setattr(cpu_conv, "native_bf16", lambda: True)
    with jax.default_matmul_precision("bfloat16"):
        assert cpu_conv.operands_for(None) == "bfloat16"
        assert cpu_conv.operands_for(lax.Precision.DEFAULT) == "float32"
    assert cpu_conv.operands_for(None) == "float32"


@needs_library
def test_hook_runs_the_custom_call_and_matches_lax():
    """``OnednnConv`` with nnx.Conv's call signature: the jitted HLO holds the custom calls."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, 9, 9, 5)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((3, 3, 5, 4)), jnp.float32)
    hook = xla_cpu.OnednnConv()

    def loss(conv, a, b):
        y = conv(a, b, (1, 1), "SAME", lhs_dilation=(1, 1), rhs_dilation=(1, 1),
                 dimension_numbers=DN, feature_group_count=1, precision=None)  # fmt: skip
        return jnp.sum(jnp.sin(y))

    grad = jax.jit(jax.value_and_grad(lambda a, b: loss(hook, a, b), (0, 1)))
    hlo = grad.lower(x, w).compile().as_text()
    for target in cpu_conv.TARGETS:
        assert target in hlo, target
    ref = jax.value_and_grad(lambda a, b: loss(lax.conv_general_dilated, a, b), (0, 1))(x, w)
    for f, r in zip(jax.tree.leaves(grad(x, w)), jax.tree.leaves(ref), strict=True):
        np.testing.assert_allclose(f, r, rtol=2e-5, atol=2e-5)


@needs_library
def test_calls_from_many_threads_at_once_match_lax():
    """Every oneDNN call runs on the library's one executor thread, whichever thread XLA calls
    from: 6 Python threads dispatching convs of 3 shapes at once all get lax's answers."""
    rng = np.random.default_rng(1)
    cases = []
    for shape, cout in (((2, 11, 13, 3), 5), ((1, 8, 8, 16), 9), ((4, 6, 7, 2), 1)):
        x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
        w = jnp.asarray(rng.standard_normal((3, 3, shape[-1], cout)), jnp.float32)
        g = jnp.asarray(rng.standard_normal((*shape[:3], cout)), jnp.float32)
        ref = _value_and_grads(lambda a, b: _reference(a, b, (1, 1), "SAME", (1, 1)), x, w, g)
        cases.append(((x, w, g), ref))
    fast = jax.jit(
        lambda a, b, c: _value_and_grads(
            lambda p, q: cpu_conv.conv(p, q, (1, 1), "SAME", (1, 1)), a, b, c
        )
    )

    def work(i: int) -> list:
        args, _ = cases[i % len(cases)]
        return [jax.device_get(fast(*args)) for _ in range(20)]

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        outs = list(pool.map(work, range(6)))
    for i, runs in enumerate(outs):
        ref = cases[i % len(cases)][1]
        for got in runs:
            for f, r in zip(got, ref, strict=True):
                np.testing.assert_allclose(f, r, rtol=0, atol=1e-5 * float(jnp.max(jnp.abs(r))))


UNSUPPORTED = {
    "bfloat16": dict(dtype=jnp.bfloat16),
    "groups": dict(feature_group_count=2),
    "input dilation": dict(lhs_dilation=(2, 2), padding=((1, 1), (1, 1))),
    "negative padding": dict(padding=((-1, 0), (0, -1))),
    "NCHW": dict(dimension_numbers=("NCHW", "OIHW", "NCHW")),
    "float32 x bfloat16 out": dict(preferred_element_type=jnp.bfloat16),
}


@pytest.mark.parametrize("name", UNSUPPORTED)
def test_unsupported_convs_fall_back_to_lax(name):
    """What the fast path does not run goes to ``lax`` unchanged: same result, no custom call."""
    opts = dict(UNSUPPORTED[name])
    dtype = opts.pop("dtype", jnp.float32)
    if name == "float32 x bfloat16 out":
        dtype = jnp.bfloat16
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((2, 6, 6, 4)), dtype)
    w = jnp.asarray(
        rng.standard_normal((3, 3, 2 if "feature_group_count" in opts else 4, 4)), dtype
    )
    if "dimension_numbers" in opts:
        x, w = x.transpose(0, 3, 1, 2), w.transpose(3, 2, 0, 1)
    args = dict(padding="SAME", dimension_numbers=DN) | opts
    padding = args.pop("padding")

    def run(conv):
        return conv(x, w, (1, 1), padding, **args)

    fast = jax.jit(lambda: run(xla_cpu.OnednnConv()))
    assert "custom_call" not in fast.lower().as_text()
    np.testing.assert_array_equal(fast(), jax.jit(lambda: run(lax.conv_general_dilated))())


def _train_losses(cfg, onednn: bool, steps: int = 4):
    mesh = step_lib.make_mesh()
    fns = step_lib.make_steps(cfg, optax.adam(1e-3), seed=0, mesh=mesh, onednn_convs=onednn)
    rng = np.random.default_rng(0)
    r = cfg.scale
    batch = {
        "lr": rng.uniform(0, 1, (4, 8, 8, cfg.channels)).astype(np.float32),
        "hr": rng.uniform(0, 1, (4, 8 * r, 8 * r, cfg.channels)).astype(np.float32),
    }
    batch = jax.device_put(batch, step_lib.batch_sharding(mesh))
    state = fns.init()
    hlo = fns.train.lower(state, batch).compile().as_text()
    out = []
    for _ in range(steps):
        state, metrics = fns.train(state, batch)
        out.append(float(metrics["loss"]))
    return np.array(out), hlo


@needs_library
@pytest.mark.parametrize(
    "cfg",
    [
        models.ModelConfig.espcn(scale=3, channels=1),
        models.ModelConfig(family="hr", scale=2, depth=2, widths=4),
        models.ModelConfig(family="deconv", scale=2, depth=2, widths=4),
    ],
    ids=lambda c: c.family,
)
def test_train_step_loss_curve_matches_lax(cfg):
    fast, hlo = _train_losses(cfg, True)
    plain, plain_hlo = _train_losses(cfg, False)
    assert "espcn_onednn_conv_bwd_weights" in hlo and "espcn_onednn" not in plain_hlo
    np.testing.assert_allclose(fast, plain, rtol=1e-5)
    assert plain[-1] < plain[0]  # the steps train: a curve, not a constant


def _child(script: str, **env) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu", **env)
    return subprocess.run(
        [sys.executable, *script], capture_output=True, text=True, env=env, timeout=300
    )


@needs_library
def test_four_device_mesh_matches_lax():
    """Under a 4-device data mesh the custom calls run inside shard_map (XLA cannot partition
    them); Auto and Explicit axes give lax's losses."""
    proc = _child([str(ROOT / "tests" / "_fast_conv_child.py")])
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["devices"] == 4 and report["available"]
    for axis in ("Auto", "Explicit"):
        r = report[axis]
        assert r["custom"] and not r["plain_custom"], r
        np.testing.assert_allclose(r["fast"], r["plain"], rtol=1e-5, err_msg=axis)


FALLBACK = """
import logging, jax, numpy as np, optax
from espcn_jax import cpu_conv, models
from espcn_jax.training import step as step_lib
logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
mesh = step_lib.make_mesh()
steps = step_lib.make_steps(models.ModelConfig.espcn(), optax.adam(1e-3), seed=0, mesh=mesh)
state = steps.init()
batch = {"lr": np.zeros((2, 6, 6, 1), np.float32), "hr": np.zeros((2, 18, 18, 1), np.float32)}
print("custom" if "custom_call" in steps.train.lower(state, batch).as_text() else "lax")
state, metrics = steps.train(state, batch)
print(float(metrics["loss"]), cpu_conv.available())
"""


def test_without_the_library_the_step_runs_lax_with_one_log_line():
    proc = _child(["-c", FALLBACK], **{cpu_conv.DISABLE_ENV: "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split()[:1] == ["lax"] and proc.stdout.split()[-1] == "False"
    lines = [line for line in proc.stderr.splitlines() if "oneDNN convolutions off" in line]
    assert len(lines) == 1, proc.stderr[-3000:]
    assert cpu_conv.DISABLE_ENV in lines[0]


def _one_channel_conv(min_in_channels):
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.standard_normal((2, 8, 8, 1)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((5, 5, 1, 4)), jnp.float32)
    hook = xla_cpu.OnednnConv(min_in_channels=min_in_channels)
    fast = jax.jit(lambda a, b: hook(a, b, (1, 1), "SAME", dimension_numbers=DN))
    return (
        "custom_call" in fast.lower(x, w).as_text(),
        fast(x, w),
        _reference(x, w, (1, 1), "SAME", (1, 1)),
    )


@needs_library
@pytest.mark.parametrize("min_in_channels", [1, 2, None])
def test_one_input_channel_conv_goes_where_the_cpu_says(min_in_channels):
    """A float32 conv reading one channel (ESPCN's first) runs in oneDNN only when
    ``min_in_channels`` is 1, by default where oneDNN runs AVX-512 kernels; lax's result
    either way (exactly when XLA keeps it)."""
    custom, y, ref = _one_channel_conv(min_in_channels)
    expected = min_in_channels == 1 or (min_in_channels is None and cpu_conv.avx512_kernels())
    assert custom == expected
    if custom:
        np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
    else:
        np.testing.assert_array_equal(y, ref)


@needs_library
@pytest.mark.skipif(not os.path.exists("/proc/cpuinfo"), reason="no /proc/cpuinfo")
def test_onednn_isa_agrees_with_the_cpu_flags():
    """oneDNN's ``avx512_core`` kernels need AVX-512 F, BW, VL and DQ (the kernel's flags in
    /proc/cpuinfo, independent of oneDNN's own CPUID dispatch)."""
    avx512 = {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= cpu_conv.cpu_flags()
    assert cpu_conv.avx512_kernels() == avx512
    assert cpu_conv.onednn_isa() > 0


def test_without_the_library_the_isa_is_zero(monkeypatch):
    monkeypatch.setattr(cpu_conv, "_load", lambda: (False, "not built"))
    cpu_conv.onednn_isa.cache_clear()
    try:
        assert cpu_conv.onednn_isa() == 0 and not cpu_conv.avx512_kernels()
        assert xla_cpu.onednn_min_in_channels() == 2
    finally:
        cpu_conv.onednn_isa.cache_clear()
