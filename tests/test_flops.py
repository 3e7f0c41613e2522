"""FLOP and parameter accounting against XLA's own count, the solver, latency and the CLIs.

Independent references: XLA's ``cost_analysis()`` of the compiled forward pass (our ``flops_xla``
model must equal it; our *useful* count must equal XLA's count of a reference that does no wasted
work: ``flax.nnx.ConvTranspose`` for the deconv layer, the ``hr`` net for ``lr_tied``), the sizes of
the built module's ``nnx.Param`` arrays, hand formulas written here, and a brute-force width search.
Networks are built with ``nnx.eval_shape`` (no initialisation) where only shapes matter.
"""

from __future__ import annotations

import json
import math
import re

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import pytest
from _drivers import run_driver
from flax import nnx
from hypothesis import example, given, settings

from espcn_jax import bicubic, flops, solver, xla_cpu
from espcn_jax.models import (
    ACTIVATIONS,
    FAMILY_NAMES,
    ModelConfig,
    model_from_config,
    receptive_field,
)

XLA_RTOL = 1e-6  # XLA accumulates its count in float32: 1 ulp at 2e10 FLOPs is 2048


def abstract(config: ModelConfig) -> nnx.Module:
    return nnx.eval_shape(lambda: model_from_config(config, rngs=nnx.Rngs(0)))


def useful_reference(config: ModelConfig, lr_shape) -> dict[str, float]:
    """XLA's count of a graph computing the same function without wasted multiplies."""
    if config.family == "lr_tied":
        return flops.xla_cost(abstract(config.replace(family="hr")), lr_shape)
    net = abstract(config)
    if config.family == "lr":  # the sub-pixel conv as one lax conv (no CPU channel split)
        net.convs[-1].conv_general_dilated = jax.lax.conv_general_dilated
    if config.family == "deconv":  # XLA skips the inserted zeros of lax.conv_transpose
        k, r = config.kernel_sizes[-1], config.scale
        cin = config.layer_channels()[-1][0]
        net.deconv = nnx.eval_shape(
            lambda: nnx.ConvTranspose(
                cin,
                config.channels,
                (k, k),
                (r, r),
                use_bias=config.upsample_bias != "none",
                rngs=nnx.Rngs(0),
            )
        )
    return flops.xla_cost(net, lr_shape)


def test_scalar_conv_is_one_flop_per_output_for_xla():
    """The documented exception: a lone 1x1 conv 1 -> 1 channel is a multiply and a bias add.
    (Next to another linear op XLA may fold it away entirely; such nets are excluded above.)"""
    config = ModelConfig(family="lr", scale=1, depth=1, kernel_sizes=1, activation="identity")
    cost = flops.model_cost(config, (7, 9))
    assert (cost.flops, cost.flops_xla) == (3 * 63, 2 * 63)
    assert flops.xla_cost(abstract(config), (1, 7, 9, 1))["flops"] == 2 * 63


def test_activation_cost_is_xla_count():
    x = jnp.linspace(-3.0, 3.0, 1000).reshape(1, 10, 100, 1)
    for name, (f, t) in flops.ACTIVATION_COST.items():
        cost = jax.jit(ACTIVATIONS[name]).lower(x).compile().cost_analysis()
        assert (cost.get("flops", 0.0), cost.get("transcendentals", 0.0)) == (1000 * f, 1000 * t)


@st.composite
def configs(draw):
    family = draw(st.sampled_from(FAMILY_NAMES))
    scale, depth = draw(st.integers(1, 4)), draw(st.integers(1, 3))
    kernels = draw(st.lists(st.integers(1, 5), min_size=depth, max_size=depth))
    if family == "deconv":
        kernels[-1] = draw(st.integers(1, 3 * scale + 2))
    config = ModelConfig(
        family=family,
        scale=scale,
        channels=draw(st.sampled_from([1, 3])),
        depth=depth,
        # 17 reaches the CPU channel split of a following 8m+1-channel conv (>= 17 inputs).
        widths=draw(
            st.lists(st.sampled_from([1, 2, 3, 5, 6, 17]), min_size=depth - 1, max_size=depth - 1)
        ),
        kernel_sizes=kernels,
        activation=draw(st.sampled_from(sorted(ACTIVATIONS))),
        residual=draw(st.booleans()),
    )
    # Images of at least 2x2: on a 1-pixel axis XLA rewrites some convs (e.g. bicubic's at r = 1)
    # into multiply + reduce, counted 2n - 1 FLOPs for n taps instead of 2n.
    return config, (draw(st.integers(2, 9)), draw(st.integers(2, 9)))


def _has_scalar_conv(config: ModelConfig) -> bool:
    """A 1x1 conv from 1 to 1 channel (in the layer's native form), a multiply for XLA."""
    layers = zip(config.layer_channels(), config.kernel_sizes, strict=True)
    return any(k == 1 and channels == (1, 1) for channels, k in layers)


def conv_macs_by_hand(config: ModelConfig, lr_size) -> int:
    """The field's count: output pixels x k*k*C_in*C_out per conv (a transposed conv: input pixels
    x K*K*C_in*C_out), in the native form of each layer; lr_tied counts its hr net's convs."""
    (h, w), r = lr_size, config.scale
    total = 0
    for (cin, cout), k in zip(config.layer_channels(), config.kernel_sizes, strict=True):
        pixels = h * w * (r * r if config.family in ("hr", "lr_tied") else 1)
        total += pixels * k * k * cin * cout
    return total


def _check_against_xla(config: ModelConfig, lr_size: tuple[int, int]) -> None:
    cost = flops.model_cost(config, lr_size)
    assert cost.conv_macs == conv_macs_by_hand(config, lr_size)
    lr_shape = (1, *lr_size, config.channels)
    xla = flops.xla_cost(abstract(config), lr_shape)
    assert xla["transcendentals"] == cost.transcendentals
    if not _has_scalar_conv(config):  # XLA may rewrite or fold those: see the test below
        assert xla["flops"] == pytest.approx(cost.flops_xla, rel=XLA_RTOL, abs=0.5)
        ref = useful_reference(config, lr_shape)
        assert ref["flops"] == pytest.approx(cost.flops, rel=XLA_RTOL, abs=0.5)
    assert cost.params == flops.count_params(abstract(config))
    assert cost.flops_xla <= cost.flops_executed and cost.flops <= cost.flops_executed
    assert cost.flops == sum(layer.flops for layer in cost.layers)


@settings(max_examples=30, deadline=None)
@given(configs())
@example((ModelConfig(family="deconv", scale=2, kernel_sizes=(5, 3, 9), widths=(4, 3)), (7, 9)))
@example(
    (ModelConfig(family="deconv", scale=3, depth=2, kernel_sizes=(3, 9), widths=(17,)), (5, 4))
)
@example((ModelConfig(family="lr", scale=3, activation="relu", widths=(4, 17)), (4, 6)))
@example((ModelConfig(family="lr_tied", scale=3, residual=True, widths=(4, 3)), (5, 4)))
@example((ModelConfig(family="hr", scale=2, activation="gelu", widths=(4, 3)), (6, 5)))
@example((ModelConfig(family="lr", scale=2, kernel_sizes=(5, 3, 2), widths=(4, 3),
                      upsample_padding=((1, 0), (0, 1))), (6, 5)))  # fmt: skip
def test_analytic_counts_equal_xla(case):
    _check_against_xla(*case)


@pytest.mark.parametrize(
    "config, lr_size",
    [
        (ModelConfig(family="hr", scale=3, widths=(4, 3), dilations=(3, 3, 1)), (7, 9)),
        (ModelConfig(family="hr", scale=2, widths=(4, 3), dilations=2, residual=True), (5, 6)),
        (ModelConfig(family="lr_tied", scale=3, widths=(4, 3), dilations=(3, 3, 1)), (5, 4)),
        (
            ModelConfig(
                family="lr_tied",
                scale=2,
                widths=(4, 3),
                kernel_sizes=(3, 2, 3),
                dilations=(2, 3, 1),
            ),
            (5, 4),
        ),  # fmt: skip
        (ModelConfig(family="lr", scale=3, widths=(4, 17), upsample_bias="channel"), (4, 6)),
        (ModelConfig(family="lr", scale=2, widths=(4, 3), upsample_bias="none"), (4, 6)),
        (ModelConfig(family="deconv", scale=3, widths=(4, 3), upsample_bias="none"), (4, 6)),
    ],
)
def test_fairness_options_count_as_xla(config, lr_size):
    """Dilated HR convs and the last layer's bias options: analytic counts equal XLA's."""
    _check_against_xla(config, lr_size)


def test_dilation_keeps_the_conv_macs():
    """Dilating hr's convs by r changes what they see, not their dense multiply-adds."""
    plain = ModelConfig(family="hr", scale=3, widths=(8, 6))
    dilated = plain.replace(dilations=(3, 3, 1))
    assert flops.model_cost(dilated, (36, 64)).conv_macs == conv_macs_by_hand(plain, (36, 64))
    assert flops.model_cost(dilated, (36, 64)).params == flops.model_cost(plain, (36, 64)).params


@pytest.mark.parametrize("family", ["lr", "hr", "deconv"])
def test_full_hd_output_counts_agree(family):
    """At the study's size (360x640 LR, x3): XLA's figure and ours agree, and padding taps make
    the dense count differ from the useful one by the border fraction only (< 1%)."""
    config = ModelConfig.espcn(scale=3).replace(family=family, kernel_sizes=None)
    _check_against_xla(config, (360, 640))
    cost = flops.model_cost(config, (360, 640))
    assert cost.flops_executed / cost.flops - 1 < 0.01


def test_espcn_by_hand():
    """Shi et al.'s ESPCN, x3, Y: parameters and FLOPs from the layer shapes, written out here."""
    cost = flops.model_cost(ModelConfig.espcn(scale=3), (360, 640))
    shapes = [(5, 1, 64), (3, 64, 32), (3, 32, 9)]  # (k, C_in, C_out)
    assert cost.params == sum(k * k * ci * co + co for k, ci, co in shapes) == 22729
    assert cost.conv_macs == 360 * 640 * (25 * 64 + 9 * 64 * 32 + 9 * 32 * 9)  # 22624 per LR px
    dense = sum(360 * 640 * (2 * k * k * ci * co + co) for k, ci, co in shapes)
    # On CPU the 9th channel runs as tap matmuls (as dense) plus 8 shifted adds per LR pixel.
    split = 8 * 360 * 640 if xla_cpu.splits_last_channel(9, 32) else 0
    assert cost.flops_executed == dense + split  # every tap, padding too; bias adds; tanh: 0
    assert [layer.name for layer in cost.layers] == ["conv0", "act0", "conv1", "act1", "conv2",
                                                      "shuffle"]  # fmt: skip
    assert cost.layers[-1].flops == 0
    assert cost.transcendentals == 360 * 640 * (64 + 32)
    # Padding taps: each axis of a k-tap SAME conv loses (k-1)/2 * ((k-1)/2 + 1) taps per border.
    lost = lambda n, k: n * k - 2 * sum(range(1, (k - 1) // 2 + 1))  # noqa: E731
    real = sum(2 * lost(360, k) * lost(640, k) * ci * co + 360 * 640 * co for k, ci, co in shapes)
    assert cost.flops == real


def test_deconv_useful_vs_executed():
    """K = 3r: FastConvTranspose runs exactly the useful taps (interior), nnx.ConvTranspose ~r^2
    more; K = 9 at r = 2 needs 5x5 LR taps for 81 weights: 100/81 of the useful work. At r = 3 on
    CPU the 9th LR channel runs as tap matmuls: 8 shifted adds per pixel on top of 2*9*20*9 FLOPs."""
    r3_ratio = 1 + 8 / (2 * 9 * 20 * 9) if xla_cpu.splits_last_channel(9, 20) else 1.0
    for r, k, ratio in [(3, 9, r3_ratio), (2, 9, 100 / 81), (4, 12, 1.0)]:
        config = ModelConfig(family="deconv", scale=r, kernel_sizes=(5, 3, k), widths=(8, 20))
        layer = flops.model_cost(config, (200, 300)).layers[-1]
        assert layer.name == "deconv"
        bias = 200 * 300 * r * r
        interior = 2 * 200 * 300 * r * r * 20 * (k / r) ** 2
        assert (layer.flops_executed - bias) / interior == pytest.approx(ratio, rel=2e-3)
        assert (layer.flops_executed_naive - bias) / interior == pytest.approx(r * r, rel=1e-9)
        assert (layer.flops - bias) / interior == pytest.approx(1.0, rel=2e-2)


def test_bicubic_and_residual_terms():
    config = ModelConfig(family="lr", scale=3, channels=3, residual=True, widths=(4, 4))
    layers = {layer.name: layer for layer in flops.model_cost(config, (10, 12)).layers}
    assert layers["bicubic"].flops == bicubic.upscale_flops(10, 12, 3, 3)
    assert layers["residual"].flops == 30 * 36 * 3


def test_bad_lr_size():
    for bad in [(0, 5), (3,), "3x4", (2.5, 4)]:
        with pytest.raises(ValueError, match="lr_size must be two integers"):
            flops.model_cost(ModelConfig(), bad)
    with pytest.raises(ValueError, match="lr_size must be HxW with positive integers.*'12x'"):
        flops.parse_size("12x")


# ------------------------------------------------------------------------------------------------
# Solver


@pytest.mark.parametrize("family", ["lr", "hr", "deconv"])
@pytest.mark.parametrize("budget, metric", [(3e6, "flops"), (2.2e7, "flops"), (1e7, "conv_macs")])
def test_solver_picks_the_nearest_width(family, budget, metric):
    base, size = ModelConfig(family=family, scale=2, depth=3, widths=1), (24, 32)
    sol = solver.solve_width(budget, base, size, scheme="taper", metric=metric)
    costs = {
        w: getattr(flops.model_cost(base.replace(widths=(2 * w, w)), size), metric)
        for w in range(1, 200)
    }
    best = min(costs, key=lambda w: (abs(costs[w] - budget), w))
    assert (sol.width, sol.flops, sol.config.widths) == (best, costs[best], (2 * best, best))
    assert sol.relative_error == pytest.approx(costs[best] / budget - 1)


@pytest.mark.parametrize("metric", ["conv_macs", "flops"])
def test_espcn_budget_gives_espcn(metric):
    espcn = getattr(flops.model_cost(ModelConfig.espcn(scale=3), (360, 640)), metric)
    matched = solver.match_budget(
        espcn, ("lr", "hr", "deconv"), 3, (360, 640), scheme="taper", metric=metric
    )
    assert matched["lr"].config.widths == (64, 32) and matched["lr"].flops == espcn
    assert matched["deconv"].config.widths == (64, 32)  # 9x9/3 deconv: same MACs as 3x3 x 9
    assert abs(matched["hr"].relative_error) < 0.1 and matched["hr"].config.family == "hr"


def test_default_budget_ignores_the_activation():
    """conv_macs (the default) matches the same widths whatever the activation; the useful FLOP
    count charges silu 5 FLOPs per element more than tanh, so it picks narrower nets."""
    assert solver.DEFAULT_METRIC == "conv_macs"
    budget, size = 1e8, (24, 32)
    widths = {
        (act, metric): solver.match_budget(
            budget, ("lr", "hr"), 3, size, activation=act, metric=metric
        )["hr"].config.widths
        for act in ("tanh", "silu")
        for metric in ("conv_macs", "flops")
    }
    assert widths["tanh", "conv_macs"] == widths["silu", "conv_macs"]
    assert widths["silu", "flops"] < widths["tanh", "flops"]


def test_budget_units():
    per_px = solver.budget_per_image(1e4, "output_pixel", (20, 30), 3)
    assert per_px == 1e4 * 60 * 90 == solver.budget_per_image(9e4, "lr_pixel", (20, 30), 3)
    with pytest.raises(ValueError, match="budget unit must be one of .* got 'pixel'"):
        solver.budget_per_image(1.0, "pixel", (20, 30), 3)


def test_infeasible_budget_names_the_minimum():
    base = ModelConfig(family="hr", scale=3, depth=4, widths=1)
    minimum = flops.model_cost(base, (30, 40)).flops
    with pytest.raises(ValueError, match=f"minimum {minimum}\\)") as info:
        solver.solve_width(minimum - 1, base, (30, 40), metric="flops")
    assert "infeasible" in str(info.value) and "\n" not in str(info.value)
    assert solver.solve_width(minimum, base, (30, 40), metric="flops").config.widths == (1, 1, 1)
    with pytest.raises(ValueError, match="max_width=8"):
        solver.solve_width(1e12, base, (30, 40), max_width=8)


def test_depth_one_has_nothing_to_choose():
    base = ModelConfig(family="lr", scale=2, depth=1)
    sol = solver.solve_width(1e9, base, (10, 10))
    assert sol.width is None and sol.flops == flops.model_cost(base, (10, 10)).conv_macs


# ------------------------------------------------------------------------------------------------
# Latency and the CLIs


def test_measure_latency_contract():
    net = model_from_config(ModelConfig(family="lr", scale=2, widths=(4, 4)), rngs=nnx.Rngs(0))
    t = flops.measure_latency(net, (1, 6, 7, 1), repeats=3)
    assert t["repeats"] >= 3 and 0 < t["min_ms"] <= t["median_ms"] and t["compile_ms"] > 0


run_script = run_driver


def test_flops_cli_width_and_budget():
    proc = run_script("flops.py", "--family=deconv", "--width=6,4", "--scale=2",
                      "--lr_size=12x16", "--repeats=1", "--json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["flops_xla"] == pytest.approx(out["flops_xla_model"], rel=XLA_RTOL)
    assert out["params"] == out["params_module"] and out["latency_ms"] > 0
    assert out["flops_analytic"] == sum(layer["flops"] for layer in out["layers"])
    assert out["layers"][-1]["flops_executed_naive"] > out["layers"][-1]["flops_executed"]
    proc = run_script("flops.py", "--family=hr", "--budget=2e4", "--budget_unit=output_pixel",
                      "--lr_size=12x16", "--nolatency", "--json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["widths"] == out["solver"]["widths"] and out["latency_ms"] is None
    assert out["solver"]["metric"] == "conv_macs" and out["conv_macs"] == out["solver"]["flops"]
    assert abs(out["conv_macs"] / (12 * 16 * 9) / 2e4 - 1) < 0.2
    config = ModelConfig(**{k: tuple(v) if isinstance(v, list) else v
                            for k, v in out["config"].items()})  # fmt: skip
    assert out["receptive_field"] == receptive_field(config)
    proc = run_script("flops.py", "--family=hr", "--budget=2e4", "--budget_unit=output_pixel",
                      "--metric=flops", "--lr_size=12x16", "--nolatency", "--json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["flops_analytic"] == out["solver"]["flops"]
    assert abs(out["flops_per_output_pixel"] / 2e4 - 1) < 0.2


@pytest.mark.parametrize(
    "script, args, message",
    [
        ("flops.py", ["--family=cnn", "--width=8"], "family must be one of"),
        ("flops.py", ["--width=8", "--lr_size=0x9"], "lr_size must be HxW"),
        ("flops.py", ["--family=hr", "--budget=1e3"], "infeasible.*minimum"),
        ("flops.py", ["--width=8", "--budget=1e9"], "exactly one of --width and --budget"),
        ("flops.py", ["--scale=0"], "flag --scale=0: scale must be an integer >= 2, got 0"),
        ("flops.py", ["--width=8", "--channels=2"], r"channels must be 1 \(Y\) or 3 \(RGB\)"),
        ("flops.py", ["--width=8", "stray"], "unexpected positional arguments: stray"),
        ("benchmark_models.py", ["--scale=1"], "scale must be an integer >= 2, got 1"),
        ("benchmark_models.py", ["--lr_size=3"], "lr_size must be HxW"),
    ],
)
def test_flops_cli_errors(script, args, message):
    proc = run_script(script, *args)
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and re.match(f"error: .*{message}", lines[0]), proc.stderr


def test_benchmark_models_tiny():
    proc = run_script("benchmark_models.py", "--lr_size=8x10", "--budgets=2e4", "--repeats=1",
                      "--families=lr,hr", "--matmul_size=32", "--json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["matmul"]["gflops_per_s"] > 0 and len(out["results"]) == 1
    for row in out["results"]:
        assert set(row["nets"]) == {"lr", "hr"} and row["nets"]["lr"]["latency_vs_lr"] == 1.0
        for net in row["nets"].values():
            assert net["flops_xla"] == pytest.approx(net["flops_xla_model"], rel=XLA_RTOL)
            assert net["flops_analytic"] <= net["flops_xla_model"] <= net["flops_executed"]
            assert abs(net["conv_macs"] / (8 * 10) / 2e4 - 1) < 0.2
            assert math.isfinite(net["fraction_of_matmul"]) and net["latency_ms"] > 0


def test_channel_remainder_with_a_scalar_tap_matmul():
    """deconv 1 -> 1 at r = 3 with K = 2: 9 LR channels, 1x1 LR taps from 1 input channel. On CPU
    the 9th channel's tap matmul is then a multiply for XLA (1 FLOP per MAC); found by hypothesis."""
    config = ModelConfig(family="deconv", scale=3, depth=1, widths=(), kernel_sizes=(2,))
    for lr_size in [(2, 2), (5, 7)]:
        _check_against_xla(config, lr_size)


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@pytest.mark.parametrize("family,depth,residual", [("deconv", 2, False), ("lr", 3, True)])
def test_channel_remainder_recomputes_a_cheap_producer(activation, family, depth, residual):
    """At r = 3, C = 1 on CPU the 9 LR channels of a 17-channel input are split into a conv and a
    tap matmul, two consumers of the previous layer. XLA recomputes a cheap producer (bias add,
    + relu's max) for each of them and counts it twice (``xla_cpu.XLA_DUPLICATED``); found by
    hypothesis: a deconv net with an identity activation gave XLA 212 FLOPs against 204."""
    config = ModelConfig(
        family=family,
        scale=3,
        depth=depth,
        widths=(17,) * (depth - 1),
        kernel_sizes=(1,) * (depth - 1) + ((3,) if family == "deconv" else (1,)),
        activation=activation,
        residual=residual,
    )
    for lr_size in [(2, 2), (9, 7)]:
        _check_against_xla(config, lr_size)
    index = -1 - residual - (family == "lr")  # before the residual add and lr's shuffle
    doubled = flops.model_cost(config, (2, 2)).layers[index]
    plain = flops.model_cost(config.replace(activation="tanh"), (2, 2)).layers[index]
    producer = 4 * 17 * (1 + flops.ACTIVATION_COST[activation][0])
    split = xla_cpu.splits_last_channel(9, 17)
    assert doubled.flops_xla - plain.flops_xla == (
        producer if split and activation in xla_cpu.XLA_DUPLICATED else 0
    )
