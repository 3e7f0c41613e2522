"""The check to run on the next GPU or TPU machine: under 5 minutes, one JSON object on stdout.

Three parts, each timed and recorded even when another fails:

- ``ops``: the jitted-op test files (``OP_TESTS``, heavy tests left out) run by pytest on the
  default device, within ``--ops_budget`` seconds (pytest is interrupted at the budget and the
  tests it finished are counted);
- ``sweep``: ``experiments/sweep.py --preset=smoke`` (one seed) into a temporary workdir, within
  ``--sweep_budget`` seconds: points trained, evaluated and timed on the device, and the report;
- ``train_step``: the ESPCN train step of ``benchmark_train.py`` (its functions, its flags
  ``--batch``, ``--patch``, ``--steps``, ``--rounds``...) against the same step in PyTorch on the
  same device: CUDA when JAX runs on a GPU and PyTorch has CUDA, the CPU when JAX does; null on a
  TPU (PyTorch has no TPU here).

The two subprocess parts run first: this process only touches the device afterwards, because a
TPU belongs to one process at a time. Exit status 0 when every part passed, 1 when one failed, 2
on bad flags.

    python experiments/device_check.py                     # everything, one JSON object
    python experiments/device_check.py --nojson            # a table
    python experiments/device_check.py --quick             # a few tests, 1 point, 3 steps (CI)
    python experiments/device_check.py --parts=ops,train_step

Whoever next gets a GPU or TPU runs it there and records the JSON in BUILD_NOTES.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import _op_progress  # experiments/_op_progress.py: the op tests' pytest plugin
import benchmark_train as bench  # experiments/benchmark_train.py: its flags are this driver's too
from absl import flags

from espcn_jax import cli

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PARTS = ("ops", "sweep", "train_step")
# The jitted ops, layers and networks, checked against NumPy loops, lax, TensorFlow and PyTorch
# references (those run on the CPU; the code under test on the default device).
OP_TESTS = (
    "tests/test_ops.py",
    "tests/test_subpixel.py",
    "tests/test_layers.py",
    "tests/test_models.py",
    "tests/test_bicubic.py",
    "tests/test_tied.py",
    "tests/test_icnr.py",
)
QUICK_OP_TESTS = ("tests/test_ops.py", "-k", "jit_matches_loop or gradient_of_shuffle")
QUICK_SWEEP_FLAGS = ("--config.families=('lr',)", "--noreport")
GRACE_S = 30.0  # default seconds from a part's interrupt at its budget to its kill (--stop_grace)

PARTS_FLAG = flags.DEFINE_list("parts", list(PARTS), f"Parts to run, of {', '.join(PARTS)}.")
QUICK = flags.DEFINE_bool(
    "quick",
    False,
    "A tiny subset of each part (the test suite's mode): a few op tests, one "
    "sweep point without the report, 3 timed steps.",
)
OPS_BUDGET = flags.DEFINE_integer(
    "ops_budget", 120, "Seconds the op tests may take; pytest is interrupted then.", lower_bound=10
)
SWEEP_BUDGET = flags.DEFINE_integer(
    "sweep_budget", 120, "Seconds the smoke sweep may take; it is stopped then.", lower_bound=10
)
STOP_GRACE = flags.DEFINE_integer(
    "stop_grace",
    int(GRACE_S),
    "Seconds a part interrupted at its budget gets to finish its report before it is killed "
    "(the op tests' finished tests are counted either way).",
    lower_bound=1,
)
FLAGS = flags.FLAGS
FLAGS.set_default("json", True)  # benchmark_train's --json; here JSON is the point


def _check_parts(parts: list[str]) -> bool:
    unknown = sorted(set(parts) - set(PARTS))
    if unknown or not parts:
        got = ", ".join(unknown) or "nothing"
        raise flags.ValidationError(f"expected some of {', '.join(PARTS)}, got {got}")
    return True


flags.register_validator("parts", _check_parts)


def subprocess_env(*extra: Path) -> dict[str, str]:
    """This checkout's espcn_jax (and ``extra`` directories) first on the path of the test and
    sweep processes."""
    path = os.environ.get("PYTHONPATH", "")
    first = os.pathsep.join(str(p) for p in (ROOT, *extra))
    return dict(os.environ, PYTHONPATH=first + (os.pathsep + path if path else ""))


@contextlib.contextmanager
def _sigint_not_ignored():
    """Children started inside get SIGINT's default handling. A process started with SIGINT
    ignored (a shell's background job, a pytest-xdist worker) passes that on through exec, and a
    Python child then ignores the interrupt that should stop it at the budget; a handled signal
    is reset to its default by exec, so the parent handles it for the moment of the fork."""
    ignored = signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    if ignored:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        if ignored:
            signal.signal(signal.SIGINT, signal.SIG_IGN)


def run_bounded(
    cmd: list[str], budget: float, grace: float = GRACE_S, **kwargs
) -> tuple[int | None, str, str, float]:
    """(exit code or None when stopped at ``budget`` seconds, stdout, stderr, seconds).

    At the budget the process gets SIGINT (pytest then writes what it finished) and, ``grace``
    seconds later, SIGKILL. The child gets SIGINT's default handling even where this process
    ignores it.
    """
    t0 = time.perf_counter()
    with _sigint_not_ignored():
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs
        )
    try:
        out, err = proc.communicate(timeout=budget)
        return proc.returncode, out, err, time.perf_counter() - t0
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        return None, out, err, time.perf_counter() - t0


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else "no output"


def junit_counts(path: Path) -> dict:
    """Counts of a pytest ``--junitxml`` file, and the ids of the failed tests."""
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    failed = []
    for case in ElementTree.parse(path).iter("testcase"):
        outcome = {child.tag for child in case}
        if outcome & {"failure", "error"}:
            counts["failed"] += 1
            failed.append(f"{case.get('classname')}::{case.get('name')}")
        elif "skipped" in outcome:
            counts["skipped"] += 1
        else:
            counts["passed"] += 1
    return counts | {"failed_tests": failed[:20]}


def progress_counts(path: Path) -> dict:
    """Counts of :mod:`_op_progress` lines (``outcome nodeid``), as :func:`junit_counts`."""
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    failed = []
    for line in path.read_text(encoding="utf-8").splitlines():
        outcome, _, nodeid = line.partition(" ")
        if outcome in counts:
            counts[outcome] += 1
            if outcome == "failed":
                failed.append(nodeid)
    return counts | {"failed_tests": failed[:20]}


def check_ops(quick: bool, budget: int, tmp: Path, grace: float = GRACE_S) -> dict:
    """The op tests on the default device, within ``budget`` seconds (``grace``: run_bounded's)."""
    return run_op_tests(QUICK_OP_TESTS if quick else OP_TESTS, budget, tmp, grace=grace)


def run_op_tests(tests, budget: float, tmp: Path, cwd: Path = ROOT, grace: float = GRACE_S) -> dict:
    """pytest over ``tests`` (files and pytest arguments) in ``cwd``, stopped at ``budget``
    seconds: counts from its junit report, or, where pytest was stopped and never wrote one,
    from the lines :mod:`_op_progress` wrote as each test ended."""
    report, progress = tmp / "ops.xml", tmp / "ops_progress.txt"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist"]
    cmd += ["-p", "_op_progress", "-m", "not heavy", f"--junitxml={report}", *tests]
    env = subprocess_env(HERE)
    env[_op_progress.PROGRESS_ENV] = str(progress)
    code, out, err, seconds = run_bounded(cmd, budget, grace, cwd=cwd, env=env)
    result = {"tests": list(tests), "seconds": round(seconds, 1), "exit_code": code}
    result["stopped_at_budget"] = code is None
    if report.exists():
        counts = junit_counts(report)
    elif code is None and progress.exists():  # stopped, and pytest never got to its report
        counts = progress_counts(progress)
        result["report"] = "progress lines (pytest wrote no --junitxml report)"
    else:
        why = f"stopped at --ops_budget={budget} s before " if code is None else ""
        error = f"{why}pytest wrote no report: {last_line(out + err)}"
        return result | {"ok": False, "error": error}
    ok = code == 0 and counts["failed"] == 0 and counts["passed"] > 0
    return result | counts | {"ok": ok}


def check_sweep(quick: bool, budget: int, tmp: Path, grace: float = GRACE_S) -> dict:
    """``sweep.py --preset=smoke`` with one seed into ``tmp``, within ``budget`` seconds."""
    workdir = tmp / "sweep"
    cmd = [sys.executable, str(HERE / "sweep.py"), "--preset=smoke", f"--workdir={workdir}"]
    cmd += ["--json", "--noprogress", "--config.seeds=(0,)"]
    cmd += list(QUICK_SWEEP_FLAGS) if quick else []
    code, out, err, seconds = run_bounded(cmd, budget, grace, env=subprocess_env())
    result = {"seconds": round(seconds, 1), "exit_code": code, "stopped_at_budget": code is None}
    try:
        summary = json.loads(out)
    except json.JSONDecodeError:
        return result | {"ok": False, "error": f"sweep.py printed no summary: {last_line(err)}"}
    from espcn_jax.study import results  # reads files only: no device

    records = results.latest(results.read_dir(workdir)).values()
    result |= {"points": summary.get("points"), "points_ok": summary.get("ok")}
    result["points_failed"] = summary.get("failed")
    devices = [r["device"] for r in records if isinstance(r.get("device"), dict)]
    result["devices"] = [d for i, d in enumerate(devices) if d not in devices[:i]]
    result["report"] = "report" in summary
    result["ok"] = code == 0 and summary.get("failed") == 0 and (summary.get("ok") or 0) > 0
    return result


def torch_device(backend: str) -> str | None:
    """Where PyTorch runs "on the same device": CUDA beside a JAX GPU, the CPU beside a JAX CPU."""
    try:
        import torch
    except ImportError:
        return None
    if backend == "gpu":
        return "cuda" if torch.cuda.is_available() else None
    return "cpu" if backend == "cpu" else None


def check_train_step(quick: bool) -> dict:
    """benchmark_train's engine step and PyTorch's, timed in interleaved rounds on this device."""
    import jax

    from espcn_jax.training import step as step_lib

    cfg = bench.config_from_flags()
    if quick:
        cfg = dataclasses.replace(cfg, steps=3, rounds=1, warmup=1)
    t0 = time.perf_counter()
    batch = bench.fixed_batch(cfg)
    engine, xla_step_flops = bench.engine_stepper(cfg, step_lib.make_mesh(), batch)
    steppers = {"jax": engine}
    device = torch_device(jax.default_backend()) if FLAGS.torch else None
    if device is not None:
        steppers["torch"] = bench.torch_stepper(cfg, batch, device=device)
    timed = bench.time_rounds(steppers, cfg)
    ms = {name: statistics.median(t["rounds"]) for name, t in timed.items()}
    result = {
        "batch": cfg.batch,
        "patch": cfg.patch,
        "scale": cfg.scale,
        "steps_x_rounds": [cfg.steps, cfg.rounds],
        "jax_step_ms": ms["jax"],
        "torch_step_ms": ms.get("torch"),
        "torch_device": device,
        "speedup_vs_torch": ms["torch"] / ms["jax"] if "torch" in ms else None,
        "xla_step_flops": xla_step_flops,
    }
    ok = all(v > 0 for v in ms.values())
    return result | {"seconds": round(time.perf_counter() - t0, 1), "ok": ok}


def versions() -> dict:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for name in ("jax", "jaxlib", "libtpu", "jax-cuda13-plugin", "flax", "optax", "torch"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    out["espcn_jax"] = __import__("espcn_jax").__version__
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    out["commit"] = commit.stdout.strip() if commit.returncode == 0 else None
    return out


def device_check() -> dict:
    parts = list(dict.fromkeys(PARTS_FLAG.value))
    results: dict[str, dict] = {}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="espcn_jax_device_check_") as tmp:
        if "ops" in parts:  # subprocesses first: a TPU has one owner at a time
            results["ops"] = check_ops(QUICK.value, OPS_BUDGET.value, Path(tmp), STOP_GRACE.value)
        if "sweep" in parts:
            results["sweep"] = check_sweep(
                QUICK.value, SWEEP_BUDGET.value, Path(tmp), STOP_GRACE.value
            )
    import jax

    from espcn_jax.timing import device_info

    if "train_step" in parts:
        try:
            results["train_step"] = check_train_step(QUICK.value)
        except Exception as e:  # recorded: the other parts' results still get printed
            results["train_step"] = {"ok": False, "error": f"{type(e).__name__}: {e}"[:500]}
    backend = jax.default_backend()
    if "sweep" in results:  # the sweep's process ran on this backend, not a fallback
        platforms = {d.get("platform") for d in results["sweep"].get("devices", [])}
        results["sweep"]["same_backend"] = platforms == {backend}
        results["sweep"]["ok"] &= platforms == {backend}
    passed = [p for p in parts if results[p]["ok"]]
    return {
        "ok": len(passed) == len(parts),
        "passed": len(passed),
        "failed": len(parts) - len(passed),
        "backend": backend,
        "device": device_info(),
        "versions": versions(),
        "quick": QUICK.value,
        "seconds": round(time.perf_counter() - t0, 1),
        "parts": results,
    }


def table(report: dict) -> str:
    dev = report["device"]
    lines = [f"{report['backend']}: {dev['device_count']} x {dev['device_kind']}, jax {dev['jax']}"]
    for name, r in report["parts"].items():
        status = "ok" if r["ok"] else "FAILED"
        if name == "ops" and "passed" in r:
            detail = f"{r['passed']} passed, {r['failed']} failed, {r['skipped']} skipped"
            detail += ", stopped at --ops_budget" if r["stopped_at_budget"] else ""
        elif name == "sweep" and "points" in r:
            on = ", ".join(f"{d.get('count')} x {d.get('kind')}" for d in r["devices"]) or "?"
            detail = f"{r['points_ok']} of {r['points']} points ok on {on}"
        elif name == "train_step" and "jax_step_ms" in r:
            torch_ms = r["torch_step_ms"]
            detail = f"jax {r['jax_step_ms']:.2f} ms, torch " + (
                f"{torch_ms:.2f} ms ({r['torch_device']})" if torch_ms is not None else "n/a"
            )
        else:
            detail = r.get("error", "")
        lines.append(f"{name:<11} {status:<7} {r.get('seconds', 0):7.1f} s  {detail}")
    lines.append(f"{report['passed']} of {report['passed'] + report['failed']} parts passed")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    cli.check_no_positional(argv)
    report = device_check()
    cli.emit(report, table)
    if not report["ok"]:
        sys.exit(1)


if __name__ == "__main__":
    cli.run(main)
