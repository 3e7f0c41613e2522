"""Statistics of a sweep, each with the rule that says when it may be stated.

Seeds are the unit of replication of training; images are the unit of replication of the test.
Every rule below is a module constant, and the report quotes them (``RULES``):

- **Seed intervals** (:func:`seed_stat`): a two-sided Student-t interval over seeds needs
  ``MIN_SEEDS_FOR_INTERVAL`` (3) seeds (``n - 1`` degrees of freedom). Two seeds give the *seed
  range* (the two values), labelled as such: a t-interval with 1 df is 12.7 standard errors wide
  and a bootstrap of 2 seeds has 3 distinct resamples. One seed gives no interval.
- **Per-image paired differences** (:func:`image_stat`): per image, the PSNR averaged over seeds,
  ``A - B``; the mean, how many images go each way, a paired t-interval over images (``n - 1``
  df, ``MIN_IMAGES_FOR_INTERVAL`` images or more) and a two-sided sign test.
- **Budget curves** (:func:`fit_reason`, :class:`Curve`): PSNR (seed mean) against
  ``log2(MACs)``, piecewise linear through the measured budgets, may be read only with
  ``MIN_BUDGETS_FOR_FIT`` (3) budgets spanning ``MIN_BUDGET_SPAN`` (8x) or more, rising over every
  adjacent pair, and only inside the measured range (never extrapolated).
- **Convergence** (:func:`tail_gain`, :func:`held`): the validation PSNR gained over the last
  ``TAIL_FRACTION`` of training; a result *held* as training grew when at ``k`` x the steps it has
  the same sign and moved by at most ``max(HOLD_ABS_DB, HOLD_REL * |value|)``.
- **Equivalence** (:func:`equivalence_check`): two families are equivalent within
  ``EQUIVALENCE_TOLERANCE_DB`` when the ``EQUIVALENCE_CONFIDENCE`` (90%) t-interval of their
  paired seed differences lies inside ``±tolerance`` (two one-sided tests at 5%).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
from scipy import stats as sps

CONFIDENCE = 0.95
MIN_SEEDS_FOR_INTERVAL = 3
MIN_IMAGES_FOR_INTERVAL = 3
MIN_BUDGETS_FOR_FIT = 3
MIN_BUDGET_SPAN = 8.0
TAIL_FRACTION = 0.25
CONVERGED_GAIN_DB = 0.05
HOLD_ABS_DB = 0.05
HOLD_REL = 0.25
EQUIVALENCE_TOLERANCE_DB = 0.05
EQUIVALENCE_CONFIDENCE = 0.90

RULES = (
    f"Seed intervals: {CONFIDENCE:.0%} Student-t over seeds (n - 1 df) with >= "
    f"{MIN_SEEDS_FOR_INTERVAL} seeds; with 2 seeds the seed range (both values), labelled so; "
    "with 1 seed no interval.",
    f"Per image: PSNR averaged over seeds, A - B per image; {CONFIDENCE:.0%} paired t over images "
    f"(n - 1 df, >= {MIN_IMAGES_FOR_INTERVAL} images) and a two-sided sign test; the counts of "
    "images going each way.",
    f"Budget curves and compute-equivalence: PSNR (seed mean) against log2(MACs per LR pixel), "
    f"piecewise linear, only with >= {MIN_BUDGETS_FOR_FIT} budgets spanning >= "
    f"{MIN_BUDGET_SPAN:g}x that rise over every adjacent pair, read only inside the measured "
    "range; ratios per seed, interval on log2(ratio) by the seed rule.",
    "Matched latency: only when both families' latency rises with budget and PSNR rises with "
    "latency over every adjacent pair; B's PSNR is interpolated in log latency inside B's range.",
    f"Convergence: validation PSNR gain over the last {TAIL_FRACTION:.0%} of steps (converged when "
    f"below {CONVERGED_GAIN_DB} dB); a gap or slope held when at k x the steps it keeps its sign and "
    f"moves by at most max({HOLD_ABS_DB} dB, {HOLD_REL:.0%} of its size). Capacity wording only "
    "where it held.",
    f"Equivalence (lr vs deconv): the {EQUIVALENCE_CONFIDENCE:.0%} t-interval of paired seed "
    f"differences inside ±{EQUIVALENCE_TOLERANCE_DB} dB (two one-sided tests at 5%), >= "
    f"{MIN_SEEDS_FOR_INTERVAL} seeds.",
)


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


def paired_interval(diffs: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """``mean ± t_{(1+confidence)/2, n-1} * sd / sqrt(n)`` of paired differences.

    With one pair the interval is unbounded (NaN ends): one replicate says nothing about spread.
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


# --- seeds ----------------------------------------------------------------------------------------

T_INTERVAL, SEED_RANGE, NO_INTERVAL = "t-interval", "seed range", "none"


@dataclasses.dataclass(frozen=True)
class SeedStat:
    """A seed mean and the interval the seed rule allows (module docstring)."""

    mean: float
    n: int
    kind: str  # T_INTERVAL | SEED_RANGE | NO_INTERVAL
    low: float
    high: float
    confidence: float | None  # for T_INTERVAL only

    @property
    def df(self) -> int | None:
        return self.n - 1 if self.kind == T_INTERVAL else None

    @property
    def excludes_zero(self) -> bool:
        """Only a t-interval can exclude zero: a seed range is not a confidence statement."""
        return self.kind == T_INTERVAL and (self.low > 0 or self.high < 0)

    @property
    def label(self) -> str:
        if self.kind == T_INTERVAL:
            return f"{self.confidence:.0%} t-interval over {self.n} seeds, df {self.df}"
        if self.kind == SEED_RANGE:
            return f"seed range ({self.n} seeds)"
        return f"{self.n} seed: no interval" if self.n == 1 else "no seeds"

    def text(self, fmt: str = "+.3f", unit: str = " dB") -> str:
        """``+0.210 dB (95% t-interval over 3 seeds, df 2: +0.100 to +0.320)``."""
        head = f"{format(self.mean, fmt)}{unit}"
        if self.kind == NO_INTERVAL:
            return f"{head} ({self.label})"
        return f"{head} ({self.label}: {format(self.low, fmt)} to {format(self.high, fmt)})"

    def as_dict(self) -> dict:
        return dataclasses.asdict(self) | {"df": self.df, "label": self.label}


def seed_stat(values: Sequence[float], confidence: float = CONFIDENCE) -> SeedStat:
    """The mean over seeds with a t-interval (>= 3 seeds), the seed range (2) or nothing (1)."""
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], np.float64)
    if x.size == 0:
        return SeedStat(math.nan, 0, NO_INTERVAL, math.nan, math.nan, None)
    mean = float(x.mean())
    if x.size >= MIN_SEEDS_FOR_INTERVAL:
        iv = paired_interval(x, confidence)
        return SeedStat(mean, int(x.size), T_INTERVAL, iv.low, iv.high, confidence)
    if x.size == 2:
        return SeedStat(mean, 2, SEED_RANGE, float(x.min()), float(x.max()), None)
    return SeedStat(mean, 1, NO_INTERVAL, math.nan, math.nan, None)


# --- images ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ImageStat:
    """Paired per-image differences ``A - B`` (each image's PSNR averaged over seeds first)."""

    n: int  # images
    mean: float
    n_positive: int  # images where A scores higher
    n_negative: int
    n_ties: int
    low: float  # paired t-interval over images (NaN below MIN_IMAGES_FOR_INTERVAL)
    high: float
    confidence: float
    sign_p: float  # two-sided sign test (ties dropped); NaN without untied images

    @property
    def df(self) -> int | None:
        return self.n - 1 if math.isfinite(self.low) else None

    @property
    def excludes_zero(self) -> bool:
        return math.isfinite(self.low) and (self.low > 0 or self.high < 0)

    @property
    def label(self) -> str:
        if self.df is None:
            return f"{self.n} images: no interval"
        return f"{self.confidence:.0%} paired t over {self.n} images, df {self.df}"

    def text(self, a: str, b: str) -> str:
        """``a higher on 4 of 5 images, b on 1 (95% paired t over 5 images, df 4: ...; sign p)``."""
        iv = "" if self.df is None else f": {self.low:+.3f} to {self.high:+.3f} dB"
        ties = f", {self.n_ties} tied" if self.n_ties else ""
        sign = f"; sign test p = {self.sign_p:.2g}" if math.isfinite(self.sign_p) else ""
        return (
            f"{a} higher on {self.n_positive} of {self.n} images, {b} on {self.n_negative}{ties} "
            f"({self.label}{iv}{sign})"
        )

    def as_dict(self) -> dict:
        return dataclasses.asdict(self) | {"df": self.df, "label": self.label}


def image_stat(diffs: Sequence[float], confidence: float = CONFIDENCE) -> ImageStat:
    """Counts, mean, paired t-interval over images and sign test of per-image differences."""
    d = np.asarray(diffs, np.float64)
    if d.size == 0:
        raise ValueError("image_stat needs at least one image")
    pos, neg = int((d > 0).sum()), int((d < 0).sum())
    low = high = math.nan
    if d.size >= MIN_IMAGES_FOR_INTERVAL:
        iv = paired_interval(d, confidence)
        low, high = iv.low, iv.high
    sign_p = float(sps.binomtest(pos, pos + neg, 0.5).pvalue) if pos + neg else math.nan
    return ImageStat(
        int(d.size),
        float(d.mean()),
        pos,
        neg,
        int(d.size - pos - neg),
        low,
        high,
        confidence,
        sign_p,
    )


# --- curves over budgets -------------------------------------------------------------------------


def not_rising(x: Sequence[float], y: Sequence[float]) -> tuple[int, int] | None:
    """The first adjacent pair ``(i, i + 1)`` (``x`` ascending) where ``y`` does not rise."""
    for i in range(len(x) - 1):
        if not y[i + 1] > y[i]:
            return i, i + 1
    return None


def _short(x: float) -> str:
    """3 significant digits, short exponents: ``2.5e4``, ``960``."""
    return f"{x:.3g}".replace("e+0", "e").replace("e+", "e")


def fit_reason(costs: Sequence[float], psnr: Sequence[float]) -> str | None:
    """Why a budget curve may not be read (None: it may). ``costs`` ascending, one per budget."""
    if len(costs) < MIN_BUDGETS_FOR_FIT:
        return f"{len(costs)} budget(s), a curve needs >= {MIN_BUDGETS_FOR_FIT}"
    span = costs[-1] / costs[0]
    if span < MIN_BUDGET_SPAN:
        return f"the budgets span {_short(span)}x, a curve needs >= {MIN_BUDGET_SPAN:g}x"
    bad = not_rising(costs, psnr)
    if bad is not None:
        i, j = bad
        return (
            f"PSNR does not rise from {_short(costs[i])} to {_short(costs[j])} MACs/LR px "
            f"({psnr[i]:.3f} -> {psnr[j]:.3f} dB): not monotone"
        )
    return None


@dataclasses.dataclass(frozen=True)
class Curve:
    """PSNR against ``log2(cost)``, piecewise linear through measured points (costs ascending)."""

    costs: tuple[float, ...]
    psnr: tuple[float, ...]

    def inside(self, cost: float, slack: float = 1e-9) -> bool:
        return self.costs[0] * (1 - slack) <= cost <= self.costs[-1] * (1 + slack)

    def at(self, cost: float) -> float:
        """PSNR at ``cost`` inside the measured range (NaN outside: never extrapolated)."""
        if not self.inside(cost):
            return math.nan
        return float(np.interp(math.log2(cost), np.log2(self.costs), self.psnr))

    def inverse(self, psnr: float) -> tuple[str, float]:
        """``("in range", cost)`` where a rising curve reaches ``psnr``; ``("above", nan)`` when
        the curve's best is below it, ``("below", nan)`` when its cheapest point already beats it.
        """
        if not_rising(self.costs, self.psnr) is not None:
            raise ValueError("Curve.inverse needs a rising curve")
        if psnr > self.psnr[-1]:
            return "above", math.nan
        if psnr < self.psnr[0]:
            return "below", math.nan
        return "in range", float(2 ** np.interp(psnr, self.psnr, np.log2(self.costs)))


def slope_per_doubling(costs: Sequence[float], psnr: Sequence[float]) -> float:
    """Least-squares slope of PSNR against ``log2(cost)``: dB per doubling of the cost."""
    if len(set(costs)) < 2:
        return math.nan
    return float(np.polyfit(np.log2(np.asarray(costs, np.float64)), psnr, 1)[0])


def compute_equivalence(
    cost_a: Sequence[float],
    psnr_a: np.ndarray,
    cost_b: Sequence[float],
    psnr_b: np.ndarray,
    confidence: float = CONFIDENCE,
    names: tuple[str, str] = ("A", "B"),
) -> dict:
    """How many times A's cost family B needs to reach A's PSNR, at each of A's budgets.

    ``psnr_a``: ``(n_seeds, len(cost_a))``, ``psnr_b``: ``(n_seeds, len(cost_b))``, row ``s`` of
    both the same seed; costs ascending. The curves are the seed means (:class:`Curve`); both must
    pass :func:`fit_reason`, else ``{"reason": ...}`` and nothing is read. At each of A's budgets
    ``c``: ``status`` is ``"in range"`` (B's curve reaches A's PSNR inside B's measured costs; the
    ``ratio`` = B's cost / ``c``), ``"not reached"`` (B's best is below A) or ``"below"`` (B's
    cheapest net already scores higher). The ratio's interval comes from per-seed ratios (each
    seed's own curves, rising, in range) by the seed rule on ``log2(ratio)``.
    """
    psnr_a, psnr_b = np.asarray(psnr_a, np.float64), np.asarray(psnr_b, np.float64)
    if psnr_a.ndim != 2 or psnr_b.ndim != 2 or psnr_a.shape[0] != psnr_b.shape[0]:
        raise ValueError(
            f"psnr_a and psnr_b must be (seeds, costs) with equal seeds, got {psnr_a.shape} "
            f"and {psnr_b.shape}"
        )
    mean_a, mean_b = psnr_a.mean(0), psnr_b.mean(0)
    for name, costs, mean in ((names[0], cost_a, mean_a), (names[1], cost_b, mean_b)):
        reason = fit_reason(list(costs), list(mean))
        if reason is not None:
            return {"reason": f"{name}: {reason}", "readings": []}
    curve_b = Curve(tuple(cost_b), tuple(mean_b))
    readings = []
    for j, c in enumerate(cost_a):
        status, needed = curve_b.inverse(float(mean_a[j]))
        reading = {
            "cost_a": float(c),
            "psnr_a": float(mean_a[j]),
            "status": status,
            "ratio": needed / c if status == "in range" else math.nan,
            "seed_ratios": [],
            "interval": None,
        }
        if status == "in range":
            per_seed = []
            for s in range(psnr_a.shape[0]):
                if not_rising(cost_b, psnr_b[s]) is not None:
                    continue
                st, need = Curve(tuple(cost_b), tuple(psnr_b[s])).inverse(float(psnr_a[s, j]))
                if st == "in range":
                    per_seed.append(need / c)
            reading["seed_ratios"] = per_seed
            if len(per_seed) == psnr_a.shape[0]:
                log = seed_stat(np.log2(per_seed), confidence)
                reading["interval"] = {
                    "kind": log.kind,
                    "label": log.label,
                    "low": 2**log.low if math.isfinite(log.low) else math.nan,
                    "high": 2**log.high if math.isfinite(log.high) else math.nan,
                }
        readings.append(reading)
    return {"reason": None, "readings": readings}


# --- convergence ----------------------------------------------------------------------------------


def tail_gain(
    steps: Sequence[int], psnr: Sequence[float], fraction: float = TAIL_FRACTION
) -> float | None:
    """PSNR at the last step minus PSNR at the last recorded step <= ``(1 - fraction)`` of it.

    None when the curve has no such earlier point (too coarse to tell).
    """
    pairs = sorted((int(s), float(p)) for s, p in zip(steps, psnr, strict=True))
    if len(pairs) < 2:
        return None
    last_step, last = pairs[-1]
    earlier = [p for s, p in pairs if s <= (1 - fraction) * last_step]
    if not earlier:
        return None
    return last - earlier[-1]


def held(short: float, long: float) -> bool:
    """Whether a quantity measured at one training length held at a longer one (module rule)."""
    if not (math.isfinite(short) and math.isfinite(long)):
        return False
    same_sign = (short > 0) == (long > 0) or abs(short) <= HOLD_ABS_DB
    return same_sign and abs(long - short) <= max(HOLD_ABS_DB, HOLD_REL * abs(short))


def equivalence_check(
    diffs: Sequence[float],
    tolerance: float = EQUIVALENCE_TOLERANCE_DB,
    confidence: float = EQUIVALENCE_CONFIDENCE,
) -> dict:
    """Two one-sided tests: equivalent when the ``confidence`` t-interval lies in ``±tolerance``.

    ``verdict``: ``"equivalent"``, ``"not shown equivalent"`` (the interval crosses a bound) or
    ``"cannot say"`` (fewer than MIN_SEEDS_FOR_INTERVAL seeds; the seed range is given instead).
    """
    st = seed_stat(diffs, confidence)
    if st.kind != T_INTERVAL:
        verdict = "cannot say"
    elif -tolerance < st.low and st.high < tolerance:
        verdict = "equivalent"
    else:
        verdict = "not shown equivalent"
    return {"verdict": verdict, "tolerance": tolerance, "stat": st}


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
