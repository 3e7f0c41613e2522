"""experiments/device_check.py on this CPU machine: its quick mode, its budget, its bad flags.

On a GPU or TPU the same script runs in full; here the backend is the CPU and PyTorch runs on
the CPU beside it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from _drivers import ROOT, run_driver


@pytest.mark.parametrize(
    "args, names",
    [
        (["--parts=ops,bogus"], "--parts"),
        (["--ops_budget=1"], "--ops_budget"),
        (["--quick", "stray"], "stray"),
    ],
)
def test_bad_flags_exit_2_with_one_line(args, names):
    proc = run_driver("device_check.py", *args)
    assert proc.returncode == 2
    assert proc.stdout == ""
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("error: ") and names in line, line


@pytest.mark.heavy
def test_quick_check_runs_every_part_on_the_cpu():
    proc = run_driver("device_check.py", "--quick")
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)  # JSON is the default output
    assert report["ok"] and report["passed"] == 3 and report["failed"] == 0
    assert report["backend"] == "cpu" and report["device"]["platform"] == "cpu"
    assert report["versions"]["jax"] == report["device"]["jax"]
    ops, sweep, step = (report["parts"][k] for k in ("ops", "sweep", "train_step"))
    assert ops["passed"] > 0 and ops["failed"] == 0 and not ops["stopped_at_budget"]
    assert sweep["points_ok"] == sweep["points"] == 1 and sweep["same_backend"]
    assert [d["platform"] for d in sweep["devices"]] == ["cpu"]
    assert step["jax_step_ms"] > 0 and step["steps_x_rounds"] == [3, 1]
    if "torch" in report["versions"]:
        assert step["torch_device"] == "cpu" and step["torch_step_ms"] > 0
        assert step["speedup_vs_torch"] == pytest.approx(
            step["torch_step_ms"] / step["jax_step_ms"]
        )


@pytest.mark.heavy
def test_op_tests_stopped_at_the_budget_fail_the_check():
    """Started with SIGINT ignored, as a shell's background job is: the op tests still get the
    interrupt at the budget and their finished tests are counted (before the fix they ignored it,
    were killed 30 s later and left no report). ``--stop_grace=5`` bounds the wait for a pytest
    slow to stop (under CI's load it once took over 30 s): its progress lines count then."""
    script = ROOT / "experiments" / "device_check.py"
    proc = subprocess.run(
        ["sh", "-c", 'trap "" INT; exec "$0" "$@"', sys.executable, str(script),
         "--parts=ops", "--ops_budget=10", "--stop_grace=5", "--nojson"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
        env=dict(os.environ, JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES=""),
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("cpu: 1 x cpu")
    assert lines[1].startswith("ops") and "FAILED" in lines[1] and "--ops_budget" in lines[1]
    assert "stopped at --ops_budget" in lines[1] and "wrote no report" not in lines[1], lines[1]
    assert lines[-1] == "0 of 1 parts passed"


SLOW_TO_STOP = """
import signal, time
import pytest

def test_a_pass():
    pass

def test_b_fail():
    assert False

def test_c_skip():
    pytest.skip("skipped")

def test_d_never_stops():
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # pytest will not see the interrupt
    time.sleep(120)
"""


CHECK_SLOW_TO_STOP = """
import json, sys
from pathlib import Path
import device_check as dc  # experiments/ is on the path

tmp = Path(sys.argv[1])
result = dc.run_op_tests(["test_slow_to_stop.py"], budget=8, tmp=tmp, cwd=tmp, grace=2)
print(json.dumps({**result, "junit": (tmp / "ops.xml").exists()}))
"""


def test_a_run_that_never_finishes_keeps_the_tests_it_finished(tmp_path):
    """A pytest child stopped at its budget that does not exit after the interrupt (as the op
    tests once did under load) writes no junit report; the progress plugin's lines, written as
    each test ends, still count the tests it finished. (In a child process: device_check's absl
    flags stay out of this one.)"""
    (tmp_path / "test_slow_to_stop.py").write_text(SLOW_TO_STOP)
    proc = subprocess.run(
        [sys.executable, "-c", CHECK_SLOW_TO_STOP, str(tmp_path)],
        capture_output=True, text=True, timeout=120,
        env=dict(os.environ, PYTHONPATH=str(ROOT / "experiments") + os.pathsep + str(ROOT)),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["exit_code"] is None and got["stopped_at_budget"] and got["seconds"] < 60
    assert not got["junit"] and got["report"].startswith("progress lines")
    counts = {k: got[k] for k in ("passed", "failed", "skipped", "failed_tests")}
    assert counts == {
        "passed": 1,
        "failed": 1,
        "skipped": 1,
        "failed_tests": ["test_slow_to_stop.py::test_b_fail"],
    }
    assert got["ok"] is False
