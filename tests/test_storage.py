"""espcn_jax.storage: atomic writes on a local disk, and the probe of a remote workdir that never
answers (ended by its own deadline). The whole gs:// cycle is tests/test_object_store.py."""

from __future__ import annotations

import os
import pathlib
import socket
import subprocess
import sys
import time

import pytest
from etils import epath

from espcn_jax import storage

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_write_atomic_replaces_a_local_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "final_eval.json"
    storage.write_atomic(target, "old")
    storage.write_atomic(target, b"new")
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["final_eval.json"]


def test_a_local_workdir_is_not_probed(tmp_path):
    storage.check_reachable(tmp_path / "not" / "yet")  # its own errors name it later
    assert not (tmp_path / "not").exists()


@pytest.mark.parametrize("uri, local", [("gs://b/x", False), ("/tmp/x", True), ("x", True)])
def test_is_local(uri, local):
    assert storage.is_local(uri) is local
    assert os.fspath(epath.Path(uri)) == uri  # epath keeps the URI (pathlib would not)


def test_probe_gives_up_on_an_endpoint_that_never_answers():
    """A port that accepts connections and never answers: the probe's own deadline ends it."""
    pytest.importorskip("gcsfs")
    script = "from espcn_jax import storage\nstorage.check_reachable('gs://b/x', timeout_s=3)\n"
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        env = dict(
            os.environ,
            PYTHONPATH=str(ROOT),
            STORAGE_EMULATOR_HOST=url,
            FSSPEC_GCS_TOKEN="anon",
            NO_GCE_CHECK="true",
            GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT="false",
        )
        start = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120
        )
        elapsed = time.monotonic() - start
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last == (
        "espcn_jax.storage.UnreachableError: workdir gs://b/x cannot be reached: "
        "no answer within 3 s"
    )
    assert elapsed < 60
