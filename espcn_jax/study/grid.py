"""A sweep is data: the points of a sweep config, each with the widths matched to its budget.

A sweep config (``experiments/configs/sweep.py``) lists the axes — ``families``, ``depths``,
``budgets``, ``seeds``, ``steps``, ``residual``, ``rf_match`` — and :func:`expand` returns their
product as :class:`Point` s, in an order where the families of one (depth, budget, seed) come
together, so that any prefix of a sweep (or of a shard) already holds paired comparisons.

Beside the product (each point's ``role``):

- ``control``: the convergence control, the grid's cells at ``control.budgets`` trained
  ``control.steps`` steps instead (everything else equal: same seeds, widths, learning rates, and
  a schedule defined relative to the run's length), so the report can tell whether a gap held as
  training grew;
- ``equivalence``: ``lr`` and ``deconv`` from the same function (``deconv`` initialised as the
  exact conversion of the ``lr`` net of the same seed, the last bias one per channel in both) at
  ``equivalence.budgets``: an equivalence check, not a race (docs/fairness.md).

Budgets are per ``budget.unit`` (``lr_pixel`` by default) in ``budget.metric`` (``conv_macs``, the
field's convention: multiply-adds of the convolutions, as FSRCNN/CARN tables count them; or any
:data:`espcn_jax.solver.METRICS` entry), converted to per image at ``budget.lr_size`` and matched
by :func:`espcn_jax.solver.solve_width` for each family separately.

Fairness switches (docs/fairness.md): ``rf_match`` ``"none"`` (the families' own kernels),
``"dilate"`` (``hr``'s hidden convs dilated by ``r``: its receptive field reaches ``lr``'s at the
same width, parameters and MACs) or ``"kernel"`` (``hr``'s kernels times ``r``, 5-3-3 becoming 15-9-9
at x3, which costs width at a matched budget); the other families are unchanged. ``lrs`` gives
each family its peak learning rate (from the learning-rate search, :mod:`lr_search`); a family not
in it uses ``engine.opt.lr``. Every point records its receptive field, rf_match and rate.
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

AXES = ("families", "depths", "budgets", "seeds", "steps", "residual", "rf_match")
RF_MATCH = ("none", "dilate", "kernel")
ROLES = ("grid", "control", "equivalence", "lr_search")


@dataclasses.dataclass(frozen=True)
class Point:
    """One network to train: its grid coordinates, its solved model and what defines its run."""

    family: str
    depth: int
    budget: float  # in budget_metric per budget_unit
    seed: int
    steps: int
    residual: bool
    rf_match: str  # RF_MATCH
    model: ModelConfig  # with the solved widths
    width: int | None  # the scheme's base width (None at depth 1)
    budget_metric: str
    budget_unit: str
    achieved: float  # budget_metric per budget_unit, as solved
    setting: str  # hash of everything shared by the sweep's points but the axes
    lr: float | None = None  # peak learning rate (None: the engine config's)
    role: str = "grid"  # ROLES

    @property
    def match_rf(self) -> bool:
        """The old boolean axis: whether any receptive-field match applies."""
        return self.rf_match != "none"

    @property
    def cell(self) -> tuple:
        """The comparison cell: the families and seeds of one cell are compared with each other."""
        return (
            self.depth, self.budget, self.steps, self.residual, self.rf_match, self.setting,
            self.role,
        )  # fmt: skip

    @property
    def point_id(self) -> str:
        """Readable, filesystem-safe and unique: the axes plus a hash of the full definition."""
        budget = format(self.budget, "g").replace("+", "")
        rf = "" if self.rf_match == "none" else f"-rf{self.rf_match}"
        res = "res" if self.residual else "nores"
        role = "" if self.role == "grid" else f"-{self.role}"
        readable = (
            f"{self.family}-d{self.depth}-b{budget}-t{self.steps}-{res}{rf}{role}-s{self.seed}"
        )
        return f"{readable}-{_digest(self.definition())}"

    def definition(self) -> dict:
        """Everything that determines the trained network (not how it is measured)."""
        return {
            "model": model_dict(self.model),
            "seed": self.seed,
            "steps": self.steps,
            "setting": self.setting,
            "lr": self.lr,
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
            "rf_match": self.rf_match,
            "match_rf": self.match_rf,
            "dilations": list(self.model.dilations),
            "lr": self.lr,
            "role": self.role,
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
    if name in ("families", "rf_match"):
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


def rf_fields(family: str, depth: int, scale: int, rf_match: str) -> dict:
    """ModelConfig fields of a point's receptive-field match: for ``hr`` (and ``lr_tied``) under
    ``"kernel"`` each kernel times r; under ``"dilate"`` every HR conv but the last dilated by r
    (the last mixes neighbouring phases; docs/fairness.md). Other families: nothing."""
    if rf_match not in RF_MATCH:
        raise ValueError(f"rf_match: {rf_match!r} is not one of {RF_MATCH}")
    if rf_match == "none" or family not in ("hr", "lr_tied"):
        return {}
    if rf_match == "kernel":
        return {
            "kernel_sizes": tuple(
                k * scale for k in models.default_kernel_sizes(family, depth, scale)
            )
        }
    return {"dilations": (scale,) * (depth - 1) + (1,)}


def _check_old_fields(cfg: ml_collections.ConfigDict) -> None:
    if "match_rf" in cfg:
        raise ValueError(
            "sweep config: match_rf was replaced by rf_match ('none', 'dilate' or 'kernel'); "
            "match_rf=(False, True) is rf_match=('none', 'kernel')"
        )


def peak_lr(cfg: ml_collections.ConfigDict, family: str, lrs: dict | None = None) -> float | None:
    """A family's peak learning rate: ``lrs`` (a search's result), then the sweep's ``lrs``, then
    ``engine.opt.lr`` (None: the engine config's own)."""
    for table in (lrs or {}, cfg.get("lrs") or {}):
        table = table.to_dict() if isinstance(table, ml_collections.ConfigDict) else dict(table)
        if table.get(family) is not None:
            value = float(table[family])
            if not value > 0:
                raise ValueError(f"lrs.{family} must be a positive learning rate, got {value!r}")
            return value
    opt = cfg.get("engine", {}).get("opt", {})
    return float(opt["lr"]) if "lr" in opt else None


def _solved_points(
    cfg, families, depth, budget, seeds, steps, residual, rf_match, role, lrs, model_fields=None
) -> list[Point]:
    m, b = cfg.model, cfg.budget
    lr_size = flops.parse_size(b.lr_size, "budget.lr_size")
    setting = setting_of(cfg)
    solved = {}
    for family in families:
        fields = {
            **rf_fields(family, depth, m.scale, rf_match),
            **(model_fields or {}).get(family, {}),
        }
        base = ModelConfig(
            family=family,
            scale=m.scale,
            channels=m.channels,
            depth=depth,
            widths=1,
            activation=m.activation,
            residual=bool(residual),
            **fields,
        )
        per_image = solver.budget_per_image(budget, b.unit, lr_size, m.scale)
        sol, achieved = _solve(base, per_image, lr_size, m.scheme, b.metric)
        solved[family] = (sol, achieved * budget / per_image)
    points = []
    for seed, family in itertools.product(seeds, families):
        sol, achieved = solved[family]
        points.append(
            Point(
                family=family,
                depth=int(depth),
                budget=float(budget),
                seed=int(seed),
                steps=int(steps),
                residual=bool(residual),
                rf_match=str(rf_match),
                model=sol.config,
                width=sol.width,
                budget_metric=b.metric,
                budget_unit=b.unit,
                achieved=float(achieved),
                setting=setting,
                lr=peak_lr(cfg, family, lrs),
                role=role,
            )
        )
    return points


def _solve(base: ModelConfig, budget_image: float, lr_size, scheme: str, metric: str):
    sol = solver.solve_width(budget_image, base, lr_size, scheme=scheme, metric=metric)
    return sol, sol.flops  # in the metric's units (MACs for conv_macs)


def control_steps(cfg: ml_collections.ConfigDict) -> int:
    """The convergence control's training length (``control.steps``; 0 or unset: no control)."""
    return int(cfg.get("control", {}).get("steps", 0) or 0)


def _section_tuple(cfg, section: str, name: str) -> tuple:
    value = cfg.get(section, {}).get(name, ())
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        value = (value,)
    return tuple(value)


def expand(
    cfg: ml_collections.ConfigDict,
    lrs: dict | None = None,
    lrs_by_steps: dict[int, dict] | None = None,
) -> list[Point]:
    """Every point of the sweep ``cfg`` (grid, then convergence control, then equivalence check),
    widths solved; a bad axis or budget is a ValueError. ``lrs``: per-family peak learning rates
    that override the config's (a learning-rate search's result); ``lrs_by_steps``: such rates per
    training length (a search per length), used by the points of that length instead."""
    _check_old_fields(cfg)

    def rates(steps: int) -> dict | None:
        return (lrs_by_steps or {}).get(int(steps), lrs)

    axes = {name: _axis(cfg, name) for name in AXES}
    for family in axes["families"]:
        if family not in models.FAMILY_NAMES:
            raise ValueError(f"families: {family!r} is not one of {models.FAMILY_NAMES}")
    for value in axes["rf_match"]:
        if value not in RF_MATCH:
            raise ValueError(f"rf_match: {value!r} is not one of {RF_MATCH}")
    flops.parse_size(cfg.budget.lr_size, "budget.lr_size")
    if cfg.budget.metric not in solver.METRICS:
        raise ValueError(
            f"budget.metric must be one of {solver.METRICS}, got {cfg.budget.metric!r}"
        )
    points = []
    outer = itertools.product(
        axes["steps"], axes["residual"], axes["rf_match"], axes["depths"], axes["budgets"]
    )
    for steps, residual, rf_match, depth, budget in outer:
        points += _solved_points(
            cfg, axes["families"], depth, budget, axes["seeds"], steps, residual, rf_match,
            "grid", rates(steps),
        )  # fmt: skip
    control = control_steps(cfg)
    if control:
        budgets = _section_tuple(cfg, "control", "budgets") or axes["budgets"][:1]
        stray = [b for b in budgets if b not in axes["budgets"]]
        if stray:
            raise ValueError(
                f"control.budgets {tuple(stray)} are not on the budgets axis {axes['budgets']}: "
                "the convergence control repeats grid cells at more steps"
            )
        if control in axes["steps"]:
            raise ValueError(
                f"control.steps={control} is already on the steps axis {axes['steps']}: "
                "the convergence control trains longer than the grid (e.g. 4x)"
            )
        outer = itertools.product(axes["residual"], axes["rf_match"], axes["depths"], budgets)
        for residual, rf_match, depth, budget in outer:
            points += _solved_points(
                cfg, axes["families"], depth, budget, axes["seeds"], control, residual,
                rf_match, "control", rates(control),
            )  # fmt: skip
    eq_budgets = _section_tuple(cfg, "equivalence", "budgets")
    if eq_budgets:
        same_start = {
            "lr": {"upsample_bias": "channel"},
            "deconv": {"upsample_bias": "channel", "init": "lr"},
        }
        # one rate for both (the same function class): lr's at the grid's first length
        rate = peak_lr(cfg, "lr", rates(axes["steps"][0]))
        eq_lrs = {"lr": rate, "deconv": rate} if rate is not None else None
        eq_seeds = _section_tuple(cfg, "equivalence", "seeds") or axes["seeds"]
        for residual, depth, budget in itertools.product(
            axes["residual"], axes["depths"], eq_budgets
        ):
            points += _solved_points(
                cfg, ("lr", "deconv"), depth, budget, eq_seeds, axes["steps"][0], residual,
                "none", "equivalence", eq_lrs, same_start,
            )  # fmt: skip
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
