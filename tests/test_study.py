"""The study's grid, results file and sweep loop (with a stand-in engine: no training here)."""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import pathlib

import ml_collections
import numpy as np
import pytest
from flax import nnx

from espcn_jax import evaluate, flops, models, solver
from espcn_jax.study import grid, measure, point, results, runner

ROOT = pathlib.Path(__file__).resolve().parents[1]


def sweep_config(preset: str = "smoke") -> ml_collections.ConfigDict:
    spec = importlib.util.spec_from_file_location(
        "sweep_cfg", ROOT / "experiments/configs/sweep.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(preset)


# --- grid ----------------------------------------------------------------------------------------


def brute_force_width(base: models.ModelConfig, budget: float, lr_size, metric: str) -> int:
    """The nearest width by scanning every width (ties to the smaller), not by bisection."""
    best = None
    for width in range(1, 400):
        cfg = base.replace(widths=solver.scheme_widths(base.depth, width, "uniform"))
        cost = getattr(flops.model_cost(cfg, lr_size), metric)
        err = abs(cost - budget)
        if best is None or err < best[0]:
            best = (err, width)
    return best[1]


def grid_only(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """``cfg`` without the points beside the grid (control, equivalence, search)."""
    cfg.control.steps = 0
    cfg.equivalence.budgets = ()
    cfg.lr_search.rates = ()
    return cfg


@pytest.mark.parametrize(
    "rf_match, metric",
    [("none", "conv_macs"), ("kernel", "conv_macs"), ("dilate", "conv_macs"), ("none", "flops")],
)
def test_expand_solves_each_family_to_its_nearest_width(rf_match, metric):
    cfg = grid_only(sweep_config("quick"))
    cfg.families = ("lr", "hr", "deconv")
    cfg.budgets = (1e4,)
    cfg.seeds = (0,)
    cfg.rf_match = (rf_match,)
    cfg.budget.metric = metric
    cfg.budget.lr_size = "24x32"
    points = grid.expand(cfg)
    lr_size = (24, 32)
    for p in points:
        hr = p.family == "hr"
        kernels = (15, 9, 9) if (rf_match == "kernel" and hr) else None
        dilations = (3, 3, 1) if (rf_match == "dilate" and hr) else None
        base = models.ModelConfig(
            family=p.family, depth=3, widths=1, residual=True, kernel_sizes=kernels,
            dilations=dilations,
        )  # fmt: skip
        want = brute_force_width(base, 1e4 * 24 * 32, lr_size, metric)
        assert p.model.widths == (want, want), p.point_id
        assert p.model.kernel_sizes == (kernels or models.default_kernel_sizes(p.family, 3, 3))
        assert p.model.dilations == (dilations or (1, 1, 1)) and p.rf_match == rf_match
        achieved = getattr(flops.model_cost(p.model, lr_size), metric) / (24 * 32)
        assert p.achieved == pytest.approx(achieved)


def test_dilation_matches_the_receptive_field_at_the_same_width():
    """rf_match='dilate' keeps hr's width (its MACs do not change) and reaches lr's receptive
    field; 'kernel' reaches it by costing width."""
    cfg = grid_only(sweep_config("quick"))
    cfg.budgets, cfg.seeds, cfg.budget.lr_size = (1e4,), (0,), "24x32"
    by = {}
    for rf in grid.RF_MATCH:
        cfg.rf_match = (rf,)
        by[rf] = {p.family: p for p in grid.expand(cfg)}
    assert by["dilate"]["hr"].width == by["none"]["hr"].width > by["kernel"]["hr"].width
    rf = {k: models.receptive_field(v["hr"].model) for k, v in by.items()}
    lr_rf = models.receptive_field(by["none"]["lr"].model)
    assert rf["none"] < lr_rf <= rf["dilate"]
    assert by["dilate"]["lr"].definition() == by["none"]["lr"].definition()  # lr unchanged


def test_old_match_rf_field_is_a_clear_error():
    cfg = sweep_config("quick")
    cfg.match_rf = (False, True)
    with pytest.raises(
        ValueError, match=r"match_rf was replaced by rf_match.*\('none', 'kernel'\)"
    ):
        grid.expand(cfg)


def test_control_and_equivalence_points_differ_only_where_they_should():
    cfg = sweep_config("quick")
    cfg.budget.lr_size = "24x32"
    points = grid.expand(cfg)
    grid_pts = {(p.family, p.budget, p.seed): p for p in points if p.role == "grid"}
    control = [p for p in points if p.role == "control"]
    assert control and {p.steps for p in control} == {cfg.control.steps} != {cfg.steps[0]}
    for p in control:  # the same net, rate and seed as its grid cell, trained longer
        twin = grid_pts[(p.family, p.budget, p.seed)]
        assert (p.model, p.lr, p.setting) == (twin.model, twin.lr, twin.setting)
        assert p.cell != twin.cell and p.point_id != twin.point_id
    eq = [p for p in points if p.role == "equivalence"]
    assert sorted(p.family for p in eq) == ["deconv", "lr"]
    lr, deconv = sorted(eq, key=lambda p: p.family != "lr")
    assert lr.model.upsample_bias == deconv.model.upsample_bias == "channel"
    assert deconv.model.init == "lr" and lr.model.widths == deconv.model.widths
    assert lr.lr == deconv.lr and lr.cell == deconv.cell


def test_control_budgets_must_be_grid_cells():
    cfg = sweep_config("quick")
    cfg.control.budgets = (7e3,)
    with pytest.raises(ValueError, match=r"control.budgets \(7000.0,\) are not on the budgets"):
        grid.expand(cfg)


def test_per_family_learning_rates_reach_points_and_ids():
    cfg = grid_only(sweep_config("quick"))
    cfg.budget.lr_size = "24x32"
    cfg.lrs.hr = 1e-3
    points = grid.expand(cfg)
    assert {p.lr for p in points if p.family == "hr"} == {1e-3}
    assert {p.lr for p in points if p.family == "lr"} == {cfg.engine.opt.lr}
    searched = grid.expand(cfg, {"lr": 1e-2})
    assert {p.lr for p in searched if p.family == "lr"} == {1e-2}
    assert {p.point_id for p in searched if p.family == "lr"}.isdisjoint(p.point_id for p in points)


def test_expand_is_the_product_of_the_axes_with_families_adjacent():
    cfg = sweep_config("quick")
    cfg.budget.metric, cfg.budget.lr_size = "flops", "16x16"
    cfg.depths, cfg.budgets, cfg.seeds, cfg.residual = (2, 3), (1e4, 2e4), (0, 1, 2), (False, True)
    points = grid.expand(grid_only(cfg))
    want = set(itertools.product((2, 3), (1e4, 2e4), (0, 1, 2), (False, True), cfg.families))
    got = [(p.depth, p.budget, p.seed, p.residual, p.family) for p in points]
    assert sorted(got) == sorted(want) and len(got) == len(want)
    assert len({p.point_id for p in points}) == len(points)
    n = len(cfg.families)
    for block in range(0, len(points), n):  # one (cell, seed) per block of families
        assert len({(p.cell, p.seed) for p in points[block : block + n]}) == 1


def test_point_id_changes_with_anything_that_changes_training():
    cfg = sweep_config("quick")
    cfg.budget.metric, cfg.budget.lr_size = "flops", "16x16"
    ids = {p.point_id for p in grid.expand(cfg)}
    cfg.engine.opt.lr = 0.5
    assert ids.isdisjoint({p.point_id for p in grid.expand(cfg)})


@pytest.mark.parametrize(
    "field, value",
    [("families", ("lr", "vdsr")), ("seeds", ()), ("budgets", (1e4, 1e4)), ("budgets", (1.0,))],
)
def test_expand_rejects_bad_axes(field, value):
    cfg = sweep_config("quick")
    cfg.budget.metric = "flops"
    cfg[field] = value
    with pytest.raises(
        ValueError, match=field if field != "budgets" or value != (1.0,) else "infeasible"
    ):
        grid.expand(cfg)


@pytest.mark.parametrize("count", [1, 2, 3, 5, 13, 20])
def test_shards_partition_the_grid(count):
    cfg = sweep_config("quick")
    cfg.budget.metric, cfg.budget.lr_size = "flops", "16x16"
    cfg.seeds = (0, 1, 2)
    points = grid.expand(cfg)
    shards = [grid.shard(points, i, count) for i in range(count)]
    ids = [p.point_id for s in shards for p in s]
    assert sorted(ids) == sorted(p.point_id for p in points)  # union = grid, no repeats
    assert len(set(ids)) == len(ids)


@pytest.mark.parametrize("text", ["1/1", "2/2", "-1/3", "a/b", "3", "0/0", "1/2/3"])
def test_parse_shard_rejects(text):
    with pytest.raises(ValueError, match="shard must be i/n"):
        grid.parse_shard(text)


def test_parse_shard():
    assert grid.parse_shard("2/5") == (2, 5)


# --- results file --------------------------------------------------------------------------------


def test_results_roundtrip_and_strict_json(tmp_path):
    path = tmp_path / "sub" / "results.jsonl"
    results.append(path, {"point_id": "a", "status": "ok", "psnr": float("nan"), "x": [1.5]})
    results.append(path, {"point_id": "b", "status": "failed", "error": "E"})
    lines = path.read_text().splitlines()
    assert [json.loads(line) for line in lines] == [
        {"point_id": "a", "status": "ok", "psnr": None, "x": [1.5]},
        {"point_id": "b", "status": "failed", "error": "E"},
    ]
    assert results.read(path) == [json.loads(line) for line in lines]
    assert results.read(tmp_path / "missing.jsonl") == []


@pytest.mark.parametrize("local", [True, False])
def test_torn_last_line_is_ignored_and_cannot_corrupt_the_next_record(tmp_path, monkeypatch, local):
    monkeypatch.setattr(results, "_is_local", lambda path: local)
    path = tmp_path / "results.jsonl"
    results.append(path, {"point_id": "a", "status": "ok"})
    whole = results.encode({"point_id": "b", "status": "ok", "psnr": 30.0})
    with open(path, "a") as f:  # a writer killed mid-line
        f.write(whole[: len(whole) // 2])
    assert [r["point_id"] for r in results.read(path)] == ["a"]
    results.append(path, {"point_id": "c", "status": "ok"})
    assert [r["point_id"] for r in results.read(path)] == ["a", "c"]
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary file left behind


def test_latest_prefers_an_ok_record_and_completed_only_counts_ok():
    recs = [
        {"point_id": "a", "status": "failed"},
        {"point_id": "a", "status": "ok", "psnr": 1},
        {"point_id": "a", "status": "failed"},  # e.g. another shard's stale failure
        {"point_id": "b", "status": "ok", "psnr": 2},
        {"point_id": "b", "status": "ok", "psnr": 3},
        {"point_id": "c", "status": "failed"},
    ]
    latest = results.latest(recs)
    assert latest["a"]["psnr"] == 1 and latest["b"]["psnr"] == 3
    assert latest["c"]["status"] == "failed"
    assert results.completed(recs) == {"a", "b"}


def test_read_dir_merges_shard_files(tmp_path):
    results.append(tmp_path / results.filename((0, 2)), {"point_id": "a", "status": "ok"})
    results.append(tmp_path / results.filename((1, 2)), {"point_id": "b", "status": "ok"})
    results.append(tmp_path / results.filename(None), {"point_id": "c", "status": "ok"})
    assert sorted(r["point_id"] for r in results.read_dir(tmp_path)) == ["a", "b", "c"]
    assert results.filename((0, 1)) == "results.jsonl"


# --- the sweep loop, with a stand-in engine -----------------------------------------------------


def base_config() -> ml_collections.ConfigDict:
    """The engine config's shape (groups model, data, opt, train, eval)."""
    return ml_collections.ConfigDict(
        {
            "model": dataclass_fields(models.ModelConfig()),
            "data": {"source": "skimage", "data_dir": ""},
            "opt": {"lr": 1e-3, "warmup_steps": 0, "b2": 0.999},
            "train": {
                "steps": 1,
                "seed": 0,
                "batch_size": 4,
                "patch": 8,
                "log_every_steps": 1,
                "checkpoint_every_steps": 1,
            },
            "eval": {"sets": "", "every_steps": 0},
        }
    )


def dataclass_fields(cfg) -> dict:
    return {k: (tuple(v) if isinstance(v, list) else v) for k, v in grid.model_dict(cfg).items()}


class FakeEngine:
    """Trains nothing: 'steps' are counted in a progress file, so resuming is observable; the
    model is the config's net initialised from the seed. ``fail`` maps point workdir names'
    prefixes to the step where that training raises."""

    def __init__(self, fail: dict[str, int] | None = None):
        self.fail = fail or {}
        self.calls: list[tuple[str, int, int]] = []  # (workdir name, first step, last step)

    def train(self, config, workdir):
        os.makedirs(workdir, exist_ok=True)
        progress = pathlib.Path(workdir) / "progress"
        start = int(progress.read_text()) if progress.exists() else 0
        name = pathlib.Path(workdir).name
        every = config.eval.get("every_steps", 0)
        sets = config.eval.sets.split(",")
        for step in range(start, config.train.steps):
            progress.write_text(str(step + 1))
            row = {"step": step + 1, "train_loss": 1.0 / (step + 1)}
            if (every and (step + 1) % every == 0) or step + 1 == config.train.steps:
                for set_name in sets:  # made-up scores, as the engine writes them
                    row |= {f"eval/{set_name}/psnr": 20.0 + step, f"eval/{set_name}/ssim": 0.5}
                with open(pathlib.Path(workdir) / "kept", "a") as f:  # a checkpoint kept
                    f.write(f"{step + 1}\n")
            with open(pathlib.Path(workdir) / "metrics.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
            for prefix, at in self.fail.items():
                if name.startswith(prefix) and step + 1 == at:
                    self.calls.append((name, start, step + 1))
                    raise RuntimeError(f"injected failure at step {at}")
        self.calls.append((name, start, config.train.steps))
        cfg_json = pathlib.Path(workdir) / "config.json"
        cfg_json.write_text(json.dumps(config.to_dict()))
        model, _ = self.restore(workdir)
        evals = {
            name: evaluate.evaluate_source(model, measure.load_set(name), config.model.scale)
            for name in config.eval.sets.split(",")
        }
        return {"step": config.train.steps, "train_time_s": 0.0, "train_loss": 0.5, "eval": evals}

    def restore(self, workdir, step=None):
        kept = pathlib.Path(workdir) / "kept"
        if step is not None and str(step) not in kept.read_text().split():
            raise ValueError(f"no checkpoint at step {step}")
        cfg = json.loads((pathlib.Path(workdir) / "config.json").read_text())
        fields = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg["model"].items()}
        mcfg = models.ModelConfig(**fields)
        return models.model_from_config(mcfg, rngs=nnx.Rngs(cfg["train"]["seed"])), cfg


def tiny_folders(root: pathlib.Path) -> tuple[str, str]:
    """Two small folders of crops of scikit-image's camera (one image size: few compilations)."""
    from PIL import Image
    from skimage import data as skdata

    camera = skdata.camera()
    for split, size, corners in (
        ("train", 96, [(100, 100), (300, 200)]),
        ("val", 60, [(50, 380), (250, 250)]),
    ):
        (root / split).mkdir(parents=True, exist_ok=True)
        for k, (i, j) in enumerate(corners):
            Image.fromarray(camera[i : i + size, j : j + size]).save(root / split / f"{k}.png")
    return f"folder:{root / 'train'}", f"folder:{root / 'val'}"


@pytest.fixture(scope="module")
def smoke_points(tmp_path_factory):
    """The smoke sweep on tiny folders (lr, hr x 2 seeds), matched on useful FLOPs."""
    cfg = sweep_config("smoke")
    cfg.budget.metric = "flops"
    cfg.data.train, val = tiny_folders(tmp_path_factory.mktemp("data"))
    cfg.eval.sets = (val,)
    return cfg, grid.expand(cfg)


def test_failed_point_is_recorded_the_sweep_goes_on_and_a_rerun_resumes_it(tmp_path, smoke_points):
    cfg, points = smoke_points
    cfg = ml_collections.ConfigDict(cfg.to_dict())
    cfg.eval.tied_check = False  # tested once, below
    assert len(points) == 4  # lr, hr x 2 seeds
    victim = [p for p in points if p.family == "hr" and p.seed == 1][0]
    engine = FakeEngine(fail={victim.point_id: 5})
    ctx = point.Context(
        cfg, base_config(), tmp_path, train_fn=engine.train, restore_fn=engine.restore
    )
    path = tmp_path / "results.jsonl"
    counts = runner.run(points, ctx, path, progress=False)
    assert counts == {"ok": 3, "failed": 1, "skipped": 0}
    recs = results.read(path)
    assert [r["point_id"] for r in recs] == [p.point_id for p in points]
    bad = results.latest(recs)[victim.point_id]
    assert bad["status"] == "failed" and bad["error"] == "RuntimeError: injected failure at step 5"
    assert "Traceback" in bad["traceback"] and bad["family"] == "hr" and bad["seed"] == 1

    healthy = FakeEngine()
    ctx = point.Context(
        cfg, base_config(), tmp_path, train_fn=healthy.train, restore_fn=healthy.restore
    )
    counts = runner.run(points, ctx, path, progress=False)
    assert counts == {"ok": 1, "failed": 0, "skipped": 3}  # completed points are not rerun
    assert healthy.calls == [(victim.point_id, 5, victim.steps)]  # resumed in the same workdir
    latest = results.latest(results.read(path))
    assert {r["status"] for r in latest.values()} == {"ok"}
    assert len(results.read(path)) == 5  # nothing rewritten: the failure stays in the history


def test_ok_record_has_the_promised_keys_and_consistent_costs(tmp_path, smoke_points):
    cfg, points = smoke_points
    cfg = ml_collections.ConfigDict(cfg.to_dict())
    cfg.eval.tied_check = True  # off in the smoke preset (sweep time); tested here
    cfg.measure.point_latency = True  # off in the presets (latency.json times every point)
    engine = FakeEngine()
    ctx = point.Context(
        cfg, base_config(), tmp_path, train_fn=engine.train, restore_fn=engine.restore
    )
    hr = [p for p in points if p.family == "hr"][0]
    rec = point.run_point(hr, ctx)
    for key in (
        "family",
        "depth",
        "width",
        "seed",
        "flops_xla",
        "params",
        "latency_ms",
        "psnr",
        "ssim",
        "status",
        "git_commit",
        "versions",
        "device",
        "config",
        "eval",
        "receptive_field_lr",
        "throughput_images_per_s",
        "memory_bytes",
        "train_loss",
        "train_time_s",
        "conv_macs",
        "flops",
    ):
        assert key in rec, key
    assert rec["status"] == "ok" and rec["eval_set"] == cfg.eval.sets[0]
    assert rec["psnr"] == rec["eval"][cfg.eval.sets[0]]["psnr"]
    assert rec["bicubic_psnr"] == rec["bicubic"][cfg.eval.sets[0]]["psnr"]
    assert rec["precision"] == rec["config"]["train"].get("precision", "default") == "default"
    assert rec["backend"] == "cpu" and rec["device_kind"] == rec["device"]["kind"]
    for scores in (rec["eval"][cfg.eval.sets[0]], rec["bicubic"][cfg.eval.sets[0]]):
        per = scores["per_image"]
        assert len(per["names"]) == len(per["psnr"]) == len(per["ssim"]) > 1
        assert np.mean(per["psnr"]) == pytest.approx(scores["psnr"], rel=1e-12)
    assert (
        rec["eval"][cfg.eval.sets[0]]["per_image"]["names"]
        == (rec["bicubic"][cfg.eval.sets[0]]["per_image"]["names"])
    )
    assert tuple(rec["config"]["model"]["widths"]) == hr.model.widths
    assert rec["config"]["train"]["steps"] == hr.steps and rec["config"]["train"]["seed"] == hr.seed
    h, w = flops.parse_size(cfg.measure.latency_lr_size)
    model, _ = engine.restore(ctx.workdir / "points" / hr.point_id)
    assert rec["params"] == flops.count_params(model)
    assert rec["flops_xla"] == pytest.approx(flops.xla_cost(model, (1, h, w, 1))["flops"])
    assert rec["memory_bytes"] >= 4 * (h * 3) * (w * 3)  # at least the float32 output
    assert rec["latency_ms"] > 0 and rec["throughput_images_per_s"] > 0
    # an hr net and its exact LR-space image score the same
    tied = rec["tied_check"]
    assert tied["psnr_hr"] == pytest.approx(tied["psnr_lr_tied"], abs=1e-3)
    assert tied["max_abs_output_diff"] < 1e-4
    json.dumps(results._clean(rec), allow_nan=False)  # the record is strict JSON
    assert rec["rf_match"] == hr.rf_match and rec["steps"] == hr.steps
    assert rec["lr"] == rec["config"]["opt"]["lr"] == hr.lr
    assert rec["receptive_field"] == models.receptive_field(hr.model)


def test_curve_has_every_evaluation_step_with_validation_and_training_psnr(tmp_path, smoke_points):
    cfg, points = smoke_points
    cfg = ml_collections.ConfigDict(cfg.to_dict())
    cfg.eval.tied_check = False
    cfg.eval.curve_points = 4  # 8 steps: evaluations and checkpoints at 2, 4, 6, 8
    engine = FakeEngine()
    ctx = point.Context(
        cfg, base_config(), tmp_path, train_fn=engine.train, restore_fn=engine.restore
    )
    lr = points[0]
    config = point.training_config(lr, cfg, base_config())
    assert config.eval.every_steps == config.train.checkpoint_every_steps == 2
    assert config.train.keep_checkpoints >= 5  # every curve step is kept
    rec = point.run_point(lr, ctx)
    curve = rec["curve"]
    assert [c["step"] for c in curve] == [2, 4, 6, 8]
    val = cfg.eval.sets[0]
    assert [c["eval"][val]["psnr"] for c in curve] == [21.0, 23.0, 25.0, 27.0]
    assert all(set(c) == {"step", "eval", "train_psnr"} for c in curve)
    assert all(isinstance(c["train_psnr"], float) for c in curve)
    assert curve[-1]["train_psnr"] == pytest.approx(rec["train_loss_psnr"])
    (tmp_path / "points" / lr.point_id / "kept").write_text("8\n")  # only the last kept
    again = point.run_point(lr, ctx)
    assert [c["train_psnr"] is None for c in again["curve"]] == [True, True, True, False]


def test_schedule_is_relative_to_each_run(smoke_points):
    cfg, points = smoke_points
    cfg = ml_collections.ConfigDict(cfg.to_dict())
    cfg.schedule.warmup_fraction = 0.25
    short = points[0]
    long = grid.Point(**{**short.__dict__, "steps": 4 * short.steps})
    a = point.training_config(short, cfg, base_config())
    b = point.training_config(long, cfg, base_config())
    assert (a.opt.warmup_steps, b.opt.warmup_steps) == (2, 8)
    assert a.opt.lr == b.opt.lr and a.model.to_dict() == b.model.to_dict()


# --- latency, interleaved ------------------------------------------------------------------------


def test_round_robin_interleaves_and_rotates_the_order():
    log, now = [], [0.0]

    def clock():
        now[0] += 1.0  # one "second" per clock read: each sample is 1000 ms
        return now[0]

    calls = {name: (lambda name=name: log.append(name)) for name in ("a", "b", "c")}
    samples = measure.round_robin(calls, rounds=3, repeats=2, warmup=1, clock=clock)
    assert log[:3] == ["a", "b", "c"]  # warm-up, once each
    timed = log[3:]
    assert timed == ["a", "a", "b", "b", "c", "c", "b", "b", "c", "c", "a", "a",
                     "c", "c", "a", "a", "b", "b"]  # fmt: skip
    assert {k: len(v) for k, v in samples.items()} == {"a": 6, "b": 6, "c": 6}
    assert all(ms == 1000.0 for v in samples.values() for ms in v)
    with pytest.raises(ValueError, match="rounds and repeats must be >= 1"):
        measure.round_robin(calls, rounds=0, repeats=1)


def test_interleaved_latency_json_format():
    nets = {
        "a": models.build_model("lr", depth=2, widths=3, rngs=nnx.Rngs(0)),
        "b": models.build_model("hr", depth=2, widths=2, rngs=nnx.Rngs(1)),
    }
    out = measure.interleaved_latency(nets, (8, 12), rounds=2, repeats=3)
    json.loads(json.dumps(out, allow_nan=False))
    assert (out["lr_size"], out["rounds"], out["repeats"]) == ("8x12", 2, 3)
    assert set(out["points"]) == {"a", "b"}
    for timing in out["points"].values():
        assert len(timing["samples_ms"]) == 6
        assert timing["median_ms"] == pytest.approx(float(np.median(timing["samples_ms"])))


def test_write_latency_times_only_completed_points(tmp_path, smoke_points):
    cfg, points = smoke_points
    cfg = ml_collections.ConfigDict(cfg.to_dict())
    cfg.eval.tied_check = False
    engine = FakeEngine(fail={points[1].point_id: 3})
    ctx = point.Context(
        cfg, base_config(), tmp_path, train_fn=engine.train, restore_fn=engine.restore
    )
    runner.run(points, ctx, tmp_path / "results.jsonl", progress=False)
    out = runner.write_latency(ctx, points)
    ok = {p.point_id for p in points} - {points[1].point_id}
    assert set(out["points"]) == ok
    assert json.loads((tmp_path / "latency.json").read_text()) == json.loads(json.dumps(out))


# --- learning-rate search ------------------------------------------------------------------------


def test_lr_search_points_cover_family_rate_seed():
    from espcn_jax.study import lr_search

    cfg = sweep_config("quick")
    cfg.budget.lr_size = "24x32"
    pts = lr_search.points(cfg)
    rates = cfg.lr_search.rates
    assert {(p.family, p.lr) for p in pts} == {(f, r) for f in cfg.families for r in rates}
    assert {p.role for p in pts} == {"lr_search"} and {p.steps for p in pts} == {
        cfg.lr_search.steps
    }
    assert len({p.point_id for p in pts}) == len(pts)


def test_lr_search_chooses_by_training_psnr_per_family():
    from espcn_jax.study import lr_search

    def rec(family, lr, seed, psnr, status="ok"):
        return {"point_id": f"{family}-{lr}-{seed}", "role": "lr_search", "family": family,
                "lr": lr, "seed": seed, "status": status, "train_loss_psnr": psnr}  # fmt: skip

    records = [
        rec("lr", 1e-3, 0, 30.0), rec("lr", 1e-3, 1, 30.2),
        rec("lr", 3e-3, 0, 30.5), rec("lr", 3e-3, 1, 30.4),
        rec("lr", 1e-2, 0, 31.0, "failed"), rec("lr", 1e-2, 1, None, "failed"),  # diverged
        rec("hr", 1e-3, 0, 29.0), rec("hr", 3e-3, 0, 29.0),  # a tie: the smaller rate
        rec("deconv", 1e-3, 0, 28.0, "failed"),
        {"point_id": "x", "role": "grid", "family": "hr", "lr": 1e-2, "status": "ok",
         "train_loss_psnr": 99.0},  # not a search record
    ]  # fmt: skip
    chosen = lr_search.choose(records, ("lr", "hr"))
    assert chosen["lrs"] == {"lr": 3e-3, "hr": 1e-3}
    row = [r for r in chosen["table"] if r["family"] == "lr" and r["lr"] == 1e-2][0]
    assert row["train_psnr"] is None and row["failed"] == 2
    assert [r["train_psnr"] for r in chosen["table"] if r["family"] == "lr"][:2] == [
        pytest.approx(30.1), pytest.approx(30.45)]  # fmt: skip
    with pytest.raises(ValueError, match="no successful run of family 'deconv'"):
        lr_search.choose(records, ("deconv",))
    # lr's best lies inside its rates (the diverged 1e-2 bounds it); hr's is its smallest rate
    assert chosen["at_edge"] == {"lr": False, "hr": True}
    assert lr_search.extensions(chosen) == {"hr": pytest.approx(1e-3 / 3)}
    top = lr_search.choose([rec("lr", 1e-3, 0, 30.0), rec("lr", 1e-2, 0, 31.0)], ("lr",))
    assert top["at_edge"] == {"lr": True}
    assert lr_search.extensions(top) == {"lr": pytest.approx(0.1)}
    from espcn_jax.study import report

    near = lr_search.choose([rec("lr", 1e-3, 0, 31.0), rec("lr", 1e-2, 0, 31.04)], ("lr",))
    assert near["lrs"] == {"lr": 1e-3}  # within TOLERANCE_DB of the best: the smaller rate
    assert lr_search.extensions(near) == {"lr": pytest.approx(1e-4)}
    line = report._search_lines(top)[0]
    assert "lr 0.01 of 0.001, 0.01 (an end of the rates tried" in line


def test_lr_search_counts_only_this_searchs_runs_and_notices_changed_settings(smoke_points):
    from espcn_jax.study import lr_search

    def rec(family, lr, psnr):
        return {"point_id": f"{family}-{lr}", "role": "lr_search", "family": family, "lr": lr,
                "status": "ok", "train_loss_psnr": psnr}  # fmt: skip

    # an earlier search extended hr to 0.09, which scored best; this search's rates stop at 0.03
    records = [rec("hr", 0.01, 30.9), rec("hr", 0.03, 31.0), rec("hr", 0.09, 31.2)]
    assert lr_search.choose(records, ("hr",))["lrs"] == {"hr": 0.09}
    mine = lr_search.choose(records, ("hr",), point_ids={"hr-0.01", "hr-0.03"})
    assert mine["lrs"] == {"hr": 0.03} and mine["at_edge"] == {"hr": True}
    assert [row["lr"] for row in mine["table"]] == [0.01, 0.03]

    cfg, _ = smoke_points
    cfg = ml_collections.ConfigDict(cfg.to_dict())
    cfg.lr_search.rates = (1e-3, 1e-2)
    stored = {**mine, "settings": lr_search.settings(cfg)}
    assert lr_search.current(stored, cfg)
    assert not lr_search.current(mine, cfg)  # written before settings were recorded
    for field, value in (("extend", 0), ("rates", (1e-3, 3e-2)), ("steps", 5)):
        changed = ml_collections.ConfigDict(cfg.to_dict())
        changed.lr_search[field] = value
        assert not lr_search.current(stored, changed), field


def test_train_loss_on_the_fixed_subset_matches_a_numpy_mse(smoke_points):
    cfg, _ = smoke_points
    from espcn_jax import data

    source = data.make_source(cfg.data.train)
    subset = measure.train_subset(source, scale=3, channels=1, patch=8, batch=3, batches=2)
    again = measure.train_subset(source, scale=3, channels=1, patch=8, batch=3, batches=2)
    assert all(np.array_equal(a["lr"], b["lr"]) for a, b in zip(subset, again, strict=True))
    model = models.build_model("lr", depth=2, widths=4, rngs=nnx.Rngs(1))
    got = measure.train_loss(model, subset)
    want = np.mean([np.mean((np.asarray(model(b["lr"])) - b["hr"]) ** 2) for b in subset])
    assert got["mse"] == pytest.approx(float(want), rel=1e-5)
    assert got["psnr"] == pytest.approx(-10 * np.log10(want), rel=1e-5)


def test_unknown_engine_override_is_named(smoke_points):
    cfg, points = smoke_points
    cfg = ml_collections.ConfigDict(cfg.to_dict())
    cfg.engine = ml_collections.ConfigDict({"train": {"bogus": 1}})
    with pytest.raises(ValueError, match="engine.train.bogus"):
        point.training_config(points[0], cfg, base_config())


def test_a_signal_stops_the_sweep_without_recording_the_interrupted_point(tmp_path, smoke_points):
    import signal

    from espcn_jax.training import Interrupted

    cfg, points = smoke_points
    engine = FakeEngine()

    def train(config, workdir):
        if pathlib.Path(workdir).name == points[1].point_id:
            raise Interrupted(signal.SIGTERM, 3)
        return engine.train(config, workdir)

    cfg = ml_collections.ConfigDict(cfg.to_dict())
    cfg.eval.tied_check = False
    ctx = point.Context(cfg, base_config(), tmp_path, train_fn=train, restore_fn=engine.restore)
    with pytest.raises(Interrupted):
        runner.run(points, ctx, tmp_path / "results.jsonl", progress=False)
    assert [r["point_id"] for r in results.read(tmp_path / "results.jsonl")] == [points[0].point_id]


def test_bicubic_scores_equal_a_residual_net_with_zero_weights(smoke_points):
    """A residual hr net whose convs are all zero outputs exactly the bicubic upscale."""
    import jax

    cfg, _ = smoke_points
    source = measure.load_set(cfg.eval.sets[0])
    net = models.build_model("hr", depth=2, widths=2, residual=True, rngs=nnx.Rngs(0))
    nnx.update(net, jax.tree.map(lambda x: x * 0, nnx.state(net, nnx.Param)))
    want = evaluate.evaluate_source(net, source, 3)
    got = measure.bicubic_scores(source, 3, 1)
    assert got["psnr"] == pytest.approx(want["psnr"], abs=1e-4)
    assert got["ssim"] == pytest.approx(want["ssim"], abs=1e-6)


def test_lr_search_per_length_chooses_at_each_length_and_points_use_their_own():
    """With lr_search.per_length the search runs at the grid's and the control's lengths, chooses
    per length, and every point (grid, control, equivalence) trains at its own length's rate."""
    from espcn_jax.study import lr_search, report

    cfg = sweep_config("standard")
    cfg.budget.lr_size = "24x32"
    assert lr_search.per_length(cfg) and lr_search.lengths(cfg) == (9000, 18000)
    pts = lr_search.points(cfg)
    assert {(p.family, p.lr, p.steps) for p in pts} == {
        (f, r, n) for f in ("lr", "hr") for r in (3e-3, 1e-2) for n in (9000, 18000)
    }

    def rec(family, steps, lr, psnr):
        return {"point_id": f"{family}-{steps}-{lr}", "role": "lr_search", "family": family,
                "steps": steps, "lr": lr, "status": "ok", "train_loss_psnr": psnr}  # fmt: skip

    records = [  # hr: 1e-2 wins by 0.07 dB at 9,000 steps and ties at 18,000; lr: 3e-3 at both
        rec("lr", 9000, 3e-3, 31.35), rec("lr", 9000, 1e-2, 31.36),
        rec("hr", 9000, 3e-3, 31.17), rec("hr", 9000, 1e-2, 31.24),
        rec("lr", 18000, 3e-3, 31.40), rec("lr", 18000, 1e-2, 30.58),
        rec("hr", 18000, 3e-3, 31.26), rec("hr", 18000, 1e-2, 31.27),
    ]  # fmt: skip
    chosen = lr_search.choose(records, ("lr", "hr"))
    assert chosen["by_steps"] == {"9000": {"lr": 3e-3, "hr": 1e-2},
                                  "18000": {"lr": 3e-3, "hr": 3e-3}}  # fmt: skip
    assert chosen["lrs"] == {"lr": 3e-3, "hr": 3e-3}  # the longest length's
    assert chosen["at_edge_by_steps"]["9000"] == {"lr": True, "hr": True}
    assert {row["steps"] for row in chosen["table"]} == {9000, 18000}
    by_steps = lr_search.rates_by_steps(json.loads(json.dumps(chosen)))  # as read from the file
    assert by_steps == {9000: {"lr": 3e-3, "hr": 1e-2}, 18000: {"lr": 3e-3, "hr": 3e-3}}

    points = grid.expand(cfg, chosen["lrs"], by_steps)
    for p in points:
        want = 1e-2 if (p.family, p.steps) == ("hr", 9000) else 3e-3
        assert p.lr == want, (p.role, p.family, p.steps, p.lr)
    assert {p.role for p in points} == {"grid", "control", "equivalence"}
    lines = report._search_lines(chosen)
    assert len(lines) == 2 and "for the 9,000-step runs" in lines[0]
    assert "hr 0.01 of 0.003, 0.01" in lines[0] and "hr 0.003 of 0.003, 0.01" in lines[1]
    assert "lr 0.003 of 0.003, 0.01" in lines[1]

    with pytest.raises(ValueError, match="no successful run of family 'hr' at 9000 steps"):
        lr_search.choose(records[:2] + records[4:], ("lr", "hr"))
    cfg.lr_search.extend = 1
    with pytest.raises(ValueError, match="lr_search.extend must be 0 with lr_search.per_length"):
        lr_search.extend_limit(cfg)
    cfg = ml_collections.ConfigDict(cfg.to_dict(), type_safe=False)
    cfg.lr_search.per_length = 1
    with pytest.raises(ValueError, match="lr_search.per_length must be True or False, got 1"):
        lr_search.lengths(cfg)
