"""experiments/colab_tpu.ipynb runs top to bottom in smoke mode (CPU, no install, a tiny grid)."""

from __future__ import annotations

import pathlib

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

from test_study import tiny_folders  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_notebook_runs_in_smoke_mode(tmp_path, monkeypatch):
    train, val = tiny_folders(tmp_path / "data")
    workdir = tmp_path / "study"
    monkeypatch.setenv("ESPCN_JAX_NOTEBOOK_SMOKE", "1")
    monkeypatch.setenv("ESPCN_JAX_REPO_DIR", str(ROOT))
    monkeypatch.setenv("ESPCN_JAX_NOTEBOOK_WORKDIR", str(workdir))
    monkeypatch.setenv(
        "ESPCN_JAX_NOTEBOOK_FLAGS", f"--config.data.train={train} --config.eval.sets={val}"
    )
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    nb = nbformat.read(ROOT / "experiments" / "colab_tpu.ipynb", as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=240, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    outputs = "".join(
        o.get("text", "") for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs
    )
    assert "preset=smoke" in outputs and "cpu 1" in outputs
    assert "2 of 2 records ok" in outputs
    assert (workdir / "report" / "report.md").exists()
    images = [
        o
        for cell in nb.cells
        if cell.cell_type == "code"
        for o in cell.outputs
        if "image/png" in o.get("data", {})
    ]
    assert images, "the report's figures are shown inline"
