"""Width solver: the network of a family and depth whose cost comes nearest a budget.

A width parametrisation maps one integer ``width`` to the ``depth - 1`` hidden widths:

- ``"uniform"``: every hidden layer has ``width`` features (VDSR, FSRCNN's mapping layers);
- ``"taper"``: the first hidden layer has ``2 * width``, the others ``width`` — ESPCN's 64:32 shape
  (ESPCN itself is ``taper`` with ``width = 32``).

The cost is one of :func:`flops.model_cost`'s columns (``metric``), per image of ``lr_size``: by
default ``conv_macs``, the convolutions' multiply-adds as the field's tables count them (FSRCNN,
CARN), so neither the activation nor the backend changes the widths; ``flops`` (useful FLOPs,
activations and bias included), ``flops_xla`` and ``flops_executed`` are available. A budget per HR
output pixel or per LR pixel is converted at that size (:func:`budget_per_image`). The cost grows
strictly with ``width``, so the nearest width is found by bisection.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from espcn_jax.flops import check_lr_size, model_cost
from espcn_jax.models import ModelConfig

WIDTH_SCHEMES = ("uniform", "taper")
BUDGET_UNITS = ("image", "output_pixel", "lr_pixel")
METRICS = ("conv_macs", "flops", "flops_xla", "flops_executed")
DEFAULT_METRIC = "conv_macs"


def scheme_widths(depth: int, width: int, scheme: str = "uniform") -> tuple[int, ...]:
    """The hidden widths of a ``depth``-layer net under ``scheme`` with base ``width``."""
    if scheme not in WIDTH_SCHEMES:
        raise ValueError(f"scheme must be one of {WIDTH_SCHEMES}, got {scheme!r}")
    if depth == 1:
        return ()
    return ((2 * width if scheme == "taper" else width),) + (width,) * (depth - 2)


def budget_per_image(budget: float, unit: str, lr_size, scale: int) -> float:
    """A budget per ``unit`` (MACs or FLOPs) as the same per image of LR size ``lr_size``."""
    h, w = check_lr_size(lr_size)
    if unit not in BUDGET_UNITS:
        raise ValueError(f"budget unit must be one of {BUDGET_UNITS}, got {unit!r}")
    if not budget > 0:
        raise ValueError(f"budget must be a positive number, got {budget!r}")
    pixels = {"image": 1, "output_pixel": h * w * scale * scale, "lr_pixel": h * w}[unit]
    return float(budget) * pixels


@dataclasses.dataclass(frozen=True)
class Solution:
    """The chosen net: ``config`` (with its widths), the achieved cost and the target."""

    config: ModelConfig
    width: int | None  # the scheme's base width; None at depth 1 (nothing to choose)
    flops: int  # achieved, in ``metric`` (MACs for conv_macs, else FLOPs), per image
    budget: float  # in ``metric``, per image
    metric: str
    lr_size: tuple[int, int]

    @property
    def relative_error(self) -> float:
        return self.flops / self.budget - 1.0

    def as_dict(self) -> dict:
        return {
            "family": self.config.family,
            "depth": self.config.depth,
            "width": self.width,
            "widths": list(self.config.widths),
            "flops": self.flops,
            "budget": self.budget,
            "relative_error": self.relative_error,
            "metric": self.metric,
        }


def solve_width(
    budget: float,
    base: ModelConfig,
    lr_size=(360, 640),
    *,
    scheme: str = "uniform",
    metric: str = DEFAULT_METRIC,
    max_width: int = 4096,
) -> Solution:
    """The width of ``base``'s family and depth whose ``metric`` comes nearest ``budget`` (per
    image of ``lr_size``); ties go to the smaller net. Every other field of ``base`` is kept.

    Raises ValueError if ``budget`` is below the cheapest net (all widths 1) of that depth, naming
    its cost, or above the net of ``max_width``.
    """
    lr_size = check_lr_size(lr_size)
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    if not budget > 0:
        raise ValueError(f"budget must be a positive number of {metric}, got {budget!r}")

    def at(width: int) -> tuple[ModelConfig, int]:
        config = base.replace(widths=scheme_widths(base.depth, width, scheme))
        return config, getattr(model_cost(config, lr_size), metric)

    def where() -> str:
        return f"{base.family} net of depth {base.depth} ({scheme} widths)"

    size = f"per image of {lr_size[0]}x{lr_size[1]} LR"
    cheapest_cfg, cheapest = at(1)
    if budget < cheapest:
        raise ValueError(
            f"budget {budget:.4g} {metric} {size} is infeasible: the cheapest {where()}, widths "
            f"{cheapest_cfg.widths}, costs {cheapest:.4g} {metric} (minimum {cheapest})"
        )
    if base.depth == 1:
        return Solution(cheapest_cfg, None, cheapest, float(budget), metric, lr_size)
    if at(max_width)[1] < budget:
        raise ValueError(
            f"budget {budget:.4g} {metric} {size} exceeds the {where()} of max_width={max_width}"
        )
    lo, hi = 1, max_width  # invariant: cost(lo) <= budget <= cost(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if at(mid)[1] <= budget else (lo, mid)
    (cfg_lo, f_lo), (cfg_hi, f_hi) = at(lo), at(hi)
    if budget - f_lo <= f_hi - budget:
        return Solution(cfg_lo, lo, f_lo, float(budget), metric, lr_size)
    return Solution(cfg_hi, hi, f_hi, float(budget), metric, lr_size)


def match_budget(
    budget: float,
    families: Sequence[str] = ("lr", "hr", "deconv"),
    depth: int = 3,
    lr_size=(360, 640),
    *,
    scheme: str = "uniform",
    metric: str = DEFAULT_METRIC,
    max_width: int = 4096,
    **fields,
) -> dict[str, Solution]:
    """A matched set: for each family the net of ``depth`` nearest ``budget`` (``metric`` per
    image).

    ``fields`` (scale, channels, activation, residual, kernel_sizes, ...) are shared by all.
    """
    return {
        family: solve_width(
            budget,
            ModelConfig(family=family, depth=depth, widths=1, **fields),
            lr_size,
            scheme=scheme,
            metric=metric,
            max_width=max_width,
        )
        for family in families
    }
