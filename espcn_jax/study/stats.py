"""Statistics of a sweep: seed means, paired t-intervals, log-linear fits, compute-equivalence.

Seeds are the unit of replication. Two families at one grid cell are compared seed by seed (seed
``s`` of ``lr`` against seed ``s`` of ``hr``: same batches, same data order), so the interval of a
difference is a paired Student-t interval over seeds.

Compute-equivalence: per family, PSNR is fitted as ``a + b * ln(cost)`` over the budgets (cost:
conv MACs per LR pixel, or latency). The cost family ``B`` needs to reach family ``A``'s PSNR at
cost ``c`` is ``exp((a_A + b_A ln c - a_B) / b_B)``; the ratio to ``c`` is the headline "``B``
needs k times the FLOPs of ``A``". Its uncertainty comes from a bootstrap over seeds.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
from scipy import stats as sps


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (``ddof=1``; NaN for one value)."""
    x = np.asarray(values, np.float64)
    if x.size == 0:
        return math.nan, math.nan
    return float(x.mean()), float(x.std(ddof=1)) if x.size > 1 else math.nan


@dataclasses.dataclass(frozen=True)
class Interval:
    """A mean difference and its two-sided t-interval over ``n`` paired replicates."""

    mean: float
    low: float
    high: float
    sd: float  # standard deviation of the paired differences
    n: int
    confidence: float

    @property
    def excludes_zero(self) -> bool:
        return self.n > 1 and (self.low > 0 or self.high < 0)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def paired_interval(diffs: Sequence[float], confidence: float = 0.95) -> Interval:
    """``mean ± t_{(1+confidence)/2, n-1} * sd / sqrt(n)`` of paired differences.

    With one pair the interval is unbounded (NaN ends): one seed says nothing about spread.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    d = np.asarray(diffs, np.float64)
    if d.size == 0:
        raise ValueError("paired_interval needs at least one difference")
    mean = float(d.mean())
    if d.size == 1:
        return Interval(mean, math.nan, math.nan, math.nan, 1, confidence)
    sd = float(d.std(ddof=1))
    half = float(sps.t.ppf(0.5 + confidence / 2, d.size - 1)) * sd / math.sqrt(d.size)
    return Interval(mean, mean - half, mean + half, sd, int(d.size), confidence)


@dataclasses.dataclass(frozen=True)
class LogFit:
    """``y = intercept + slope * ln(x)`` by least squares; ``x_range`` is the fitted span."""

    intercept: float
    slope: float
    x_range: tuple[float, float]

    def __call__(self, x: float) -> float:
        return self.intercept + self.slope * math.log(x)

    def inverse(self, y: float) -> float:
        """The ``x`` where the fit reaches ``y``: inf if the fit is flat or falling."""
        if not self.slope > 0:
            return math.inf
        return math.exp((y - self.intercept) / self.slope)

    def inside(self, x: float, slack: float = 1e-9) -> bool:
        lo, hi = self.x_range
        return lo * (1 - slack) <= x <= hi * (1 + slack)


def fit_log(x: Sequence[float], y: Sequence[float]) -> LogFit:
    """Least-squares line of ``y`` against ``ln x``; needs two distinct positive ``x``."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"x and y must be equal-length vectors, got {x.shape} and {y.shape}")
    if np.any(x <= 0):
        raise ValueError("fit_log needs positive x")
    if np.unique(x).size < 2:
        raise ValueError("fit_log needs at least two distinct x values")
    slope, intercept = np.polyfit(np.log(x), y, 1)
    return LogFit(float(intercept), float(slope), (float(x.min()), float(x.max())))


def equivalence_ratio(fit_a: LogFit, fit_b: LogFit, cost: float) -> float:
    """How many times ``cost`` family B needs to reach family A's fitted PSNR at ``cost``."""
    return fit_b.inverse(fit_a(cost)) / cost


@dataclasses.dataclass(frozen=True)
class Equivalence:
    """``ratio`` = cost B needs / cost A at A's ``cost``, its bootstrap interval and checks."""

    cost: float  # where A is evaluated (geometric mean of A's costs)
    ratio: float  # inf: B's fit never reaches A
    low: float
    high: float
    n_seeds: int
    n_boot: int
    extrapolated: bool  # B's needed cost lies outside B's measured costs
    fit_a: LogFit
    fit_b: LogFit

    def as_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["fit_a"], out["fit_b"] = dataclasses.asdict(self.fit_a), dataclasses.asdict(self.fit_b)
        return out


def equivalence(
    cost_a: Sequence[float],
    psnr_a: np.ndarray,
    cost_b: Sequence[float],
    psnr_b: np.ndarray,
    *,
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Equivalence:
    """Compute-equivalence of family B to family A from per-seed PSNRs.

    ``psnr_a``: ``(n_seeds, len(cost_a))``, ``psnr_b``: ``(n_seeds, len(cost_b))``; row ``s`` of
    both is seed ``s`` (paired). The fits use seed means; the bootstrap redraws seeds (the same
    rows for both families) ``n_boot`` times and reports the percentile interval of the ratio
    (infinite draws count as infinite; quantiles without interpolation).
    """
    psnr_a, psnr_b = np.asarray(psnr_a, np.float64), np.asarray(psnr_b, np.float64)
    if psnr_a.ndim != 2 or psnr_b.ndim != 2 or psnr_a.shape[0] != psnr_b.shape[0]:
        raise ValueError(
            f"psnr_a and psnr_b must be (seeds, costs) with equal seeds, got {psnr_a.shape} "
            f"and {psnr_b.shape}"
        )
    cost = float(np.exp(np.mean(np.log(cost_a))))
    fit_a, fit_b = fit_log(cost_a, psnr_a.mean(0)), fit_log(cost_b, psnr_b.mean(0))
    ratio = equivalence_ratio(fit_a, fit_b, cost)
    n = psnr_a.shape[0]
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n_boot):
        rows = rng.integers(0, n, n)
        fa, fb = fit_log(cost_a, psnr_a[rows].mean(0)), fit_log(cost_b, psnr_b[rows].mean(0))
        draws.append(equivalence_ratio(fa, fb, cost))
    tail = (1 - confidence) / 2
    low, high = (
        (float(np.quantile(draws, q, method="inverted_cdf")) for q in (tail, 1 - tail))
        if n > 1
        else (
            math.nan,
            math.nan,
        )
    )
    return Equivalence(
        cost=cost,
        ratio=ratio,
        low=low,
        high=high,
        n_seeds=n,
        n_boot=n_boot if n > 1 else 0,
        extrapolated=not (math.isfinite(ratio) and fit_b.inside(ratio * cost)),
        fit_a=fit_a,
        fit_b=fit_b,
    )


def pareto_front(costs: Sequence[float], values: Sequence[float]) -> list[int]:
    """Indices of the points no other point beats (cost <= and value >=, one strictly),
    sorted by cost: the best quality available at each cost."""
    c, v = np.asarray(costs, np.float64), np.asarray(values, np.float64)
    front = []
    for i in range(c.size):
        dominated = np.any((c <= c[i]) & (v >= v[i]) & ((c < c[i]) | (v > v[i])))
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (c[i], -v[i]))
