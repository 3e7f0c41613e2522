"""A sweep is data: the points of a sweep config, each with the widths matched to its budget.

A sweep config (``experiments/configs/sweep.py``) lists the axes — ``families``, ``depths``,
``budgets``, ``seeds``, ``steps``, ``residual``, ``match_rf`` — and :func:`expand` returns their
product as :class:`Point` s, in an order where the families of one (depth, budget, seed) come
together, so that any prefix of a sweep (or of a shard) already holds paired comparisons.

Budgets are per ``budget.unit`` (``lr_pixel`` by default) in ``budget.metric`` (``conv_macs``, the
field's convention: multiply-adds of the convolutions, as FSRCNN/CARN tables count them; or any
:data:`espcn_jax.solver.METRICS` entry), converted to per image at ``budget.lr_size`` and matched
by :func:`espcn_jax.solver.solve_width` for each family separately.

Fairness switches: ``match_rf=True`` scales the ``hr`` family's kernels by ``r`` (5-3-3 becomes
15-9-9 at x3), so that an upsample-first net sees as many LR pixels as the ``lr`` net does; the
other families are unchanged. Every point records its receptive field (:mod:`point`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from collections.abc import Sequence

import ml_collections

from espcn_jax import flops, models, solver
from espcn_jax.models import ModelConfig

AXES = ("families", "depths", "budgets", "seeds", "steps", "residual", "match_rf")


@dataclasses.dataclass(frozen=True)
class Point:
    """One network to train: its grid coordinates, its solved model and what defines its run."""

    family: str
    depth: int
    budget: float  # in budget_metric per budget_unit
    seed: int
    steps: int
    residual: bool
    match_rf: bool
    model: ModelConfig  # with the solved widths
    width: int | None  # the scheme's base width (None at depth 1)
    budget_metric: str
    budget_unit: str
    achieved: float  # budget_metric per budget_unit, as solved
    setting: str  # hash of everything shared by the sweep's points but the axes

    @property
    def cell(self) -> tuple:
        """The comparison cell: the families and seeds of one cell are compared with each other."""
        return (self.depth, self.budget, self.steps, self.residual, self.match_rf, self.setting)

    @property
    def point_id(self) -> str:
        """Readable, filesystem-safe and unique: the axes plus a hash of the full definition."""
        budget = format(self.budget, "g").replace("+", "")
        rf = "-rf" if self.match_rf else ""
        res = "res" if self.residual else "nores"
        readable = f"{self.family}-d{self.depth}-b{budget}-t{self.steps}-{res}{rf}-s{self.seed}"
        return f"{readable}-{_digest(self.definition())}"

    def definition(self) -> dict:
        """Everything that determines the trained network (not how it is measured)."""
        return {
            "model": model_dict(self.model),
            "seed": self.seed,
            "steps": self.steps,
            "setting": self.setting,
        }

    def as_dict(self) -> dict:
        return {
            "point_id": self.point_id,
            "family": self.family,
            "depth": self.depth,
            "width": self.width,
            "widths": list(self.model.widths),
            "kernel_sizes": list(self.model.kernel_sizes),
            "budget": self.budget,
            "budget_metric": self.budget_metric,
            "budget_unit": self.budget_unit,
            "budget_achieved": self.achieved,
            "seed": self.seed,
            "steps": self.steps,
            "residual": self.residual,
            "match_rf": self.match_rf,
            "setting": self.setting,
        }


def model_dict(config: ModelConfig) -> dict:
    """JSON-ready fields of a ModelConfig (tuples as lists)."""
    out = dataclasses.asdict(config)
    return json.loads(json.dumps(out))


def _digest(obj) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:8]


def names(value) -> tuple[str, ...]:
    """A tuple of strings from a tuple or a comma-separated string (``--config.families=lr,hr``
    arrives as ``("lr,hr",)``)."""
    if isinstance(value, str) or not isinstance(value, Sequence):
        value = (value,)
    out = []
    for item in value:
        out += [p.strip() for p in item.split(",")] if isinstance(item, str) else [item]
    return tuple(p for p in out if p != "")


def _axis(cfg: ml_collections.ConfigDict, name: str) -> tuple:
    value = cfg[name]
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        value = (value,)
    if name == "families":
        value = names(value)
    if not value:
        raise ValueError(f"sweep axis {name} is empty: give at least one value")
    if len(set(value)) != len(value):
        raise ValueError(f"sweep axis {name} repeats a value: {tuple(value)!r}")
    return tuple(value)


def setting_of(cfg: ml_collections.ConfigDict) -> str:
    """Hash of the sweep's shared settings (model fields, training, data, budget convention)."""
    shared = {k: cfg[k].to_dict() for k in ("model", "budget", "engine", "data") if k in cfg}
    shared["engine_preset"] = cfg.get("engine_preset", "")
    return _digest(shared)


def rf_kernel_sizes(family: str, depth: int, scale: int, match_rf: bool) -> tuple[int, ...] | None:
    """Kernel sizes of a point: family defaults, or for ``hr`` under ``match_rf`` each times r."""
    if not match_rf or family not in ("hr", "lr_tied"):
        return None
    return tuple(k * scale for k in models.default_kernel_sizes(family, depth, scale))


def _solve(base: ModelConfig, budget_image: float, lr_size, scheme: str, metric: str):
    sol = solver.solve_width(budget_image, base, lr_size, scheme=scheme, metric=metric)
    return sol, sol.flops  # in the metric's units (MACs for conv_macs)


def expand(cfg: ml_collections.ConfigDict) -> list[Point]:
    """Every point of the sweep ``cfg``, widths solved; a bad axis or budget is a ValueError."""
    axes = {name: _axis(cfg, name) for name in AXES}
    for family in axes["families"]:
        if family not in models.FAMILY_NAMES:
            raise ValueError(f"families: {family!r} is not one of {models.FAMILY_NAMES}")
    m, b = cfg.model, cfg.budget
    lr_size = flops.parse_size(b.lr_size, "budget.lr_size")
    if b.metric not in solver.METRICS:
        raise ValueError(f"budget.metric must be one of {solver.METRICS}, got {b.metric!r}")
    setting = setting_of(cfg)
    points = []
    outer = itertools.product(
        axes["steps"], axes["residual"], axes["match_rf"], axes["depths"], axes["budgets"]
    )
    for steps, residual, match_rf, depth, budget in outer:
        solved = {}
        for family in axes["families"]:
            base = ModelConfig(
                family=family,
                scale=m.scale,
                channels=m.channels,
                depth=depth,
                widths=1,
                kernel_sizes=rf_kernel_sizes(family, depth, m.scale, match_rf),
                activation=m.activation,
                residual=bool(residual),
            )
            per_image = solver.budget_per_image(budget, b.unit, lr_size, m.scale)
            sol, achieved = _solve(base, per_image, lr_size, m.scheme, b.metric)
            solved[family] = (sol, achieved * budget / per_image)
        for seed, family in itertools.product(axes["seeds"], axes["families"]):
            sol, achieved = solved[family]
            points.append(
                Point(
                    family=family,
                    depth=int(depth),
                    budget=float(budget),
                    seed=int(seed),
                    steps=int(steps),
                    residual=bool(residual),
                    match_rf=bool(match_rf),
                    model=sol.config,
                    width=sol.width,
                    budget_metric=b.metric,
                    budget_unit=b.unit,
                    achieved=float(achieved),
                    setting=setting,
                )
            )
    return points


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` -> ``(i, n)`` with ``0 <= i < n``."""
    parts = str(text).split("/")
    try:
        i, n = (int(p) for p in parts)
    except ValueError:
        i, n = -1, 0
    if len(parts) != 2 or n < 1 or not 0 <= i < n:
        raise ValueError(f"shard must be i/n with 0 <= i < n, e.g. 0/4, got {text!r}")
    return i, n


def shard(points: Sequence[Point], index: int, count: int) -> list[Point]:
    """Every ``count``-th point starting at ``index``: ``count`` shards partition the grid."""
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"shard must be i/n with 0 <= i < n, got {index}/{count}")
    return list(points[index::count])
