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


@pytest.mark.parametrize(
    "match_rf, metric", [(False, "conv_macs"), (True, "conv_macs"), (False, "flops")]
)
def test_expand_solves_each_family_to_its_nearest_width(match_rf, metric):
    cfg = sweep_config("quick")
    cfg.families = ("lr", "hr", "deconv")
    cfg.budgets = (1e4,)
    cfg.match_rf = (match_rf,)
    cfg.budget.metric = metric
    cfg.budget.lr_size = "24x32"
    points = grid.expand(cfg)
    lr_size = (24, 32)
    for p in points:
        kernels = (15, 9, 9) if (match_rf and p.family == "hr") else None
        base = models.ModelConfig(
            family=p.family, depth=3, widths=1, residual=True, kernel_sizes=kernels
        )
        want = brute_force_width(base, 1e4 * 24 * 32, lr_size, metric)
        assert p.model.widths == (want, want), p.point_id
        assert p.model.kernel_sizes == (kernels or models.default_kernel_sizes(p.family, 3, 3))
        achieved = getattr(flops.model_cost(p.model, lr_size), metric) / (24 * 32)
        assert p.achieved == pytest.approx(achieved)


def test_expand_is_the_product_of_the_axes_with_families_adjacent():
    cfg = sweep_config("quick")
    cfg.budget.metric, cfg.budget.lr_size = "flops", "16x16"
    cfg.depths, cfg.budgets, cfg.seeds, cfg.residual = (2, 3), (1e4, 2e4), (0, 1, 2), (False, True)
    points = grid.expand(cfg)
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
            "opt": {"lr": 1e-3, "warmup_steps": 0},
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
        for step in range(start, config.train.steps):
            progress.write_text(str(step + 1))
            with open(pathlib.Path(workdir) / "metrics.jsonl", "a") as f:
                f.write(json.dumps({"step": step + 1, "train_loss": 1.0 / (step + 1)}) + "\n")
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

    def restore(self, workdir):
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
    # an hr net and its exact LR-space image score the same
    tied = rec["tied_check"]
    assert tied["psnr_hr"] == pytest.approx(tied["psnr_lr_tied"], abs=1e-3)
    assert tied["max_abs_output_diff"] < 1e-4
    json.dumps(results._clean(rec), allow_nan=False)  # the record is strict JSON


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
