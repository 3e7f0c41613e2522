"""Per-family peak learning rate, chosen on training data, never on the validation sets.

One learning rate tuned on ESPCN 64-32 and used for every family favours that family. The search
trains every family at each of ``lr_search.rates`` (short runs: ``lr_search.steps`` steps at
``lr_search.budgets``, ``lr_search.seeds``) and picks per family the rate with the best mean PSNR
on the fixed training subset (:func:`espcn_jax.study.measure.train_subset`: patches of the
training images drawn with a sampler seed no run trains with). The learning rate is an
optimisation setting, so it is chosen by how well the net fits training data; the validation sets
stay untouched until the study itself. A diverged run (a failed record) scores nothing. Of the
rates within ``TOLERANCE_DB`` of the best mean, the smallest is chosen: a gain below the
resolution every comparison here uses is noise, and a larger rate is the likelier to collapse
when the same rate trains another budget or a longer run (measured: hr at 0.27, 0.03 dB above
0.09 in the search, collapsed to the bicubic prior at a 4x smaller budget).

A best rate at an end of the rates tried says nothing about the rates beyond it, so the search
extends itself (:func:`extensions`): while a family's best is its largest (smallest) rate tried,
that family also tries the next rate up (down) on the same geometric step, at most
``lr_search.extend`` times (default 2). The table says where each family's choice lies
(``at_edge``: still an end of its rates after the extensions).

With ``lr_search.per_length`` the search runs at every training length the sweep trains (the
``steps`` axis and ``control.steps``) and chooses per length; each point then trains at the rate
chosen at its own length (``by_steps`` in the file). One rate chosen at the longest length cost
``hr`` up to 0.19 dB at the grid's half length in the ``standard`` preset (docs/fairness.md).

The result, ``<workdir>/lr_search.json`` (``{"lrs": {family: rate}, "table": ...}``), is what the
sweep's points then use (``record["lr"]``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence

import ml_collections
import numpy as np
from etils import epath

from espcn_jax.study import grid, results
from espcn_jax.study.grid import Point

FILENAME = "lr_search.json"
TOLERANCE_DB = 0.05  # rates this close to the best mean tie; the smallest of them is chosen
SUBDIR = "lr_search"


def enabled(cfg: ml_collections.ConfigDict) -> bool:
    """Whether the sweep config asks for a search (``lr_search.rates`` non-empty)."""
    return bool(cfg.get("lr_search", {}).get("rates", ()))


def _tuple(value) -> tuple:
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        return (value,)
    return tuple(value)


def per_length(cfg: ml_collections.ConfigDict) -> bool:
    """Whether the search chooses a rate per training length (``lr_search.per_length``)."""
    value = cfg.get("lr_search", {}).get("per_length", False)
    if not isinstance(value, bool):
        raise ValueError(f"lr_search.per_length must be True or False, got {value!r}")
    return value


def lengths(cfg: ml_collections.ConfigDict) -> tuple[int, ...]:
    """The training lengths the search runs at: with ``lr_search.per_length`` every length the
    sweep trains (its ``steps`` axis and ``control.steps``), else ``lr_search.steps`` (default: the
    grid's first length)."""
    if per_length(cfg):
        out = {int(x) for x in _tuple(cfg.steps)}
        control = grid.control_steps(cfg)
        return tuple(sorted(out | ({control} if control else set())))
    return (int(cfg.lr_search.get("steps") or _tuple(cfg.steps)[0]),)


def points(
    cfg: ml_collections.ConfigDict,
    rates: Sequence[float] | None = None,
    families: Sequence[str] | None = None,
) -> list[Point]:
    """The search's runs: every family x rate x seed at the search's budgets and length (default:
    the config's ``lr_search.rates`` and ``families``)."""
    s = cfg.lr_search
    rates = _tuple(s.rates if rates is None else rates)
    if any(not (isinstance(r, int | float) and r > 0) for r in rates):
        raise ValueError(f"lr_search.rates must be positive numbers, got {rates!r}")
    families = tuple(families) if families is not None else grid.names(cfg.families)
    budgets = _tuple(s.get("budgets") or ()) or (
        sorted(_tuple(cfg.budgets))[len(cfg.budgets) // 2],
    )
    seeds = _tuple(s.get("seeds") or ()) or _tuple(cfg.seeds)[:1]
    depth = _tuple(cfg.depths)[0]
    residual = _tuple(cfg.residual)[0]
    rf = _tuple(cfg.rf_match)[0] if "rf_match" in cfg else "none"
    out = []
    for steps in lengths(cfg):
        for budget in budgets:
            for rate in rates:
                lrs = {family: float(rate) for family in families}
                out += grid._solved_points(  # noqa: SLF001  the grid's own solver, one family set
                    cfg, families, depth, budget, seeds, steps, residual, rf, "lr_search", lrs
                )
    return out


def choose(
    records: Iterable[dict], families: Sequence[str], point_ids: Iterable[str] | None = None
) -> dict:
    """``{"lrs": {family: rate}, "table": [{family, steps, lr, train_psnr, runs, failed, chosen}],
    "at_edge": {family: bool}}``: per family the smallest rate whose mean training-subset PSNR
    (``train_loss_psnr``) is within ``TOLERANCE_DB`` of the best; ValueError if a family has no
    successful run. ``point_ids`` (default: all) limits it to this search's runs, so that runs of
    an earlier, different search in the same directory (other rates or extensions) never count.

    A search over several training lengths chooses at each: ``"by_steps"`` ``{steps: {family:
    rate}}`` (keys are strings in JSON) and ``"at_edge_by_steps"``; ``lrs`` and ``at_edge`` are then
    the longest length's."""
    wanted = None if point_ids is None else set(point_ids)
    latest = results.latest(
        r
        for r in records
        if r.get("role") == "lr_search" and (wanted is None or r.get("point_id") in wanted)
    )
    by_rate: dict[tuple[int | None, str, float], dict] = {}
    for r in latest.values():
        steps = r.get("steps")  # None in records that never said
        key = (None if steps is None else int(steps), r["family"], float(r["lr"]))
        row = by_rate.setdefault(key, {"scores": [], "failed": 0})
        score = r.get("train_loss_psnr")
        if r.get("status") == results.STATUS_OK and score is not None and math.isfinite(score):
            row["scores"].append(float(score))
        else:
            row["failed"] += 1
    table, by_steps, edges = [], {}, {}
    for steps in sorted({k[0] for k in by_rate}) or [None]:
        lrs, edge = {}, {}
        for family in families:
            rows = []
            for (length, fam, rate), row in sorted(by_rate.items()):
                if length != steps or fam != family:
                    continue
                mean = float(np.mean(row["scores"])) if row["scores"] else None
                rows.append(
                    {"family": family, "steps": length, "lr": rate, "train_psnr": mean,
                     "runs": len(row["scores"]), "failed": row["failed"]}
                )  # fmt: skip
            scored = [row for row in rows if row["train_psnr"] is not None]
            if not scored:
                at = "" if steps is None else f" at {steps} steps"
                raise ValueError(f"lr_search: no successful run of family {family!r}{at}")
            top = max(row["train_psnr"] for row in scored)
            best = min(
                (row for row in scored if row["train_psnr"] >= top - TOLERANCE_DB),
                key=lambda row: row["lr"],
            )
            lrs[family] = best["lr"]
            tried = [row["lr"] for row in rows]
            for row in rows:
                row["chosen"] = row is best
            edge[family] = len(tried) > 1 and best["lr"] in (min(tried), max(tried))
            table += rows
        by_steps[steps], edges[steps] = lrs, edge
    longest = max(by_steps, key=lambda k: -1 if k is None else k)
    out = {"lrs": by_steps[longest], "table": table, "at_edge": edges[longest]}
    if len(by_steps) > 1:
        out["by_steps"] = {str(k): v for k, v in by_steps.items()}
        out["at_edge_by_steps"] = {str(k): v for k, v in edges.items()}
    return out


def rates_by_steps(searched: dict | None) -> dict[int, dict[str, float]] | None:
    """A per-length search's ``{steps: {family: rate}}`` (None for a search at one length)."""
    by = (searched or {}).get("by_steps")
    return {int(k): dict(v) for k, v in by.items()} if by else None


def extend_limit(cfg: ml_collections.ConfigDict) -> int:
    """How many times a family's search may step past an end of its rates (``lr_search.extend``)."""
    value = cfg.lr_search.get("extend", 2)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"lr_search.extend must be an integer >= 0, got {value!r}")
    if value and per_length(cfg):
        raise ValueError(
            f"lr_search.extend must be 0 with lr_search.per_length=True, got {value}: the "
            "extension steps one family past an end at one length"
        )
    return value


def extensions(chosen: dict) -> dict[str, float]:
    """``{family: next rate}`` for every family whose best rate is an end of the rates it tried:
    one geometric step beyond that end (the ratio of the two rates next to it)."""
    out = {}
    for family, best in chosen["lrs"].items():
        tried = sorted({row["lr"] for row in chosen["table"] if row["family"] == family})
        if len(tried) < 2:
            continue
        if best == tried[-1]:
            out[family] = best * tried[-1] / tried[-2]
        elif best == tried[0]:
            out[family] = best * tried[0] / tried[1]
    return out


def settings(cfg: ml_collections.ConfigDict) -> dict:
    """What decides a search's choice (its rates, extension limit and runs): recorded in
    ``lr_search.json``, so that a sweep whose search settings changed searches again (reusing
    every run it already has) rather than training with a stale choice."""
    out = {
        "families": list(grid.names(cfg.families)),
        "rates": [float(r) for r in _tuple(cfg.lr_search.rates)],
        "extend": extend_limit(cfg),
        "points": sorted(p.point_id for p in points(cfg)),
    }
    return out | ({"per_length": True} if per_length(cfg) else {})


def current(searched: dict | None, cfg: ml_collections.ConfigDict) -> bool:
    """Whether a stored choice came from this config's search settings (a file written before
    the settings were recorded counts as stale)."""
    return searched is not None and searched.get("settings") == settings(cfg)


def write(workdir, chosen: dict) -> epath.Path:
    path = epath.Path(workdir) / FILENAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(chosen, indent=1))
    return path


def read(workdir) -> dict | None:
    """The search's result in ``workdir``, or None."""
    path = epath.Path(workdir) / FILENAME
    return json.loads(path.read_text()) if path.exists() else None
