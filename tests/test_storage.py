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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    "url, want",
    [
        ("http://127.0.0.1:{port}", "Cannot connect to 127.0.0.1:{port}: connection refused"),
        ("no-such-host.invalid:4443", "Cannot connect to no-such-host.invalid:4443: the name"),
    ],
)
def test_a_refused_or_unresolvable_endpoint_fails_at_once(monkeypatch, url, want):
    """gcsfs would retry both with about 30 s of back-off; the TCP pre-flight says so first."""
    port = free_port()
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", url.format(port=port))
    for name in storage.PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(storage.UnreachableError) as e:
        storage.check_reachable("gs://b/x")
    # the pre-flight's words, not gcsfs' ("Cannot connect to host ...") after its retries
    assert str(e.value).startswith("workdir gs://b/x cannot be reached (" + want.format(port=port))
    assert "\n" not in str(e.value)


def test_the_pre_flight_skips_a_proxied_network(monkeypatch):
    """Behind a proxy a direct connect proves nothing, so none is made."""
    calls = []
    monkeypatch.setattr(storage.socket, "create_connection", lambda *a, **k: calls.append(a))
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    storage._preflight("gs://b/x", 1.0)  # noqa: SLF001
    assert calls == []


def test_the_pre_flight_passes_a_listening_endpoint_on_to_the_probe(monkeypatch):
    for name in storage.PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"127.0.0.1:{listening.getsockname()[1]}")
        storage._preflight("gs://b/x", 1.0)  # noqa: SLF001  no error: the probe decides


@pytest.mark.parametrize(
    "value, want",
    [
        (None, ("storage.googleapis.com", 443)),
        ("http://127.0.0.1:4443", ("127.0.0.1", 4443)),
        ("localhost:9023", ("localhost", 9023)),
        ("https://gcs.example", ("gcs.example", 443)),
    ],
)
def test_gcs_endpoint(monkeypatch, value, want):
    if value is None:
        monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    else:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", value)
    assert storage.gcs_endpoint() == want
