"""experiments/colab_tpu.ipynb, executed by a Jupyter kernel as Colab would run it.

The install cell runs too: the test builds a wheel of this checkout and the notebook installs it
into a throwaway virtual environment whose kernel runs the notebook. That environment sees this
one's packages (jax, flax, TensorFlow...) but not its espcn_jax, so every import of espcn_jax,
and the drivers the sweep runs, come from the wheel. pip runs offline (``--no-index
--no-deps``): the dependencies are the current environment's.
"""

from __future__ import annotations

import json
import pathlib
import re
import shutil
import site
import subprocess
import sys

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

from test_study import tiny_folders  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "experiments" / "colab_tpu.ipynb"
KERNEL = "espcn-jax-notebook-test"
OFFLINE = ["--no-index", "--no-deps"]
NOT_COPIED = (".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", "runs")


def _wheel(tmp: pathlib.Path) -> pathlib.Path:
    """A wheel of this checkout, built from a copy (the build writes build/ and *.egg-info)."""
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(*NOT_COPIED, ".hypothesis"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
        + ["-w", str(tmp / "dist"), str(src)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    (wheel,) = (tmp / "dist").glob("espcn_jax-*.whl")
    return wheel


def _venv(tmp: pathlib.Path) -> pathlib.Path:
    """A venv whose path ends with this environment's packages, espcn_jax left out; its python."""
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    shared = tmp / "shared_site"  # links to every package here but espcn_jax (and no .pth hooks)
    shared.mkdir()
    for parent in site.getsitepackages():
        for entry in pathlib.Path(parent).iterdir():
            skip = entry.name.startswith(("espcn_jax", "__editable__")) or entry.suffix == ".pth"
            if not skip and not (shared / entry.name).exists():
                (shared / entry.name).symlink_to(entry)
    (pathlib.Path(purelib) / "shared_site.pth").write_text(f"{shared}\n")
    return python


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    """(jupyter dir with a kernel running the throwaway venv, the wheel, the venv's python)."""
    tmp = tmp_path_factory.mktemp("notebook")
    wheel, python = _wheel(tmp), _venv(tmp)
    spec = tmp / "jupyter" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    argv = [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "language": "python"}))
    return tmp / "jupyter", wheel, python


def execute(tmp_path, monkeypatch, params: dict, jupyter: pathlib.Path | None = None):
    """Runs the notebook with ``params`` set after its Parameters cell (as papermill does).

    Returns (notebook, error): the CellExecutionError that stopped it, or None.
    """
    for name in ("PYTHONPATH", "JAX_PLATFORMS"):  # the kernel imports the installed package
        monkeypatch.delenv(name, raising=False)
    if jupyter is not None:
        monkeypatch.setenv("JUPYTER_PATH", str(jupyter))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    (at,) = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    injected = "\n".join(f"{k} = {v!r}" for k, v in params.items())
    nb.cells.insert(at + 1, nbformat.v4.new_code_cell(injected))
    client = nbclient.NotebookClient(
        nb,
        timeout=300,
        kernel_name=KERNEL if jupyter is not None else "python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as e:
        return nb, e
    return nb, None


def text_of(nb) -> str:
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)


def error_lines(nb) -> list[str]:
    """The traceback lines of the error output (one, for a NotebookError)."""
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    errors = [o for o in errors if o.output_type == "error"]
    assert len(errors) == 1
    return errors[0].traceback


def cell_ran(nb, snippet: str) -> bool:
    (cell,) = [c for c in nb.cells if c.cell_type == "code" and snippet in c.source]
    return cell.get("execution_count") is not None


@pytest.mark.heavy
def test_notebook_installs_the_wheel_and_runs_the_smoke_study(kernel, tmp_path, monkeypatch):
    jupyter, wheel, python = kernel
    train, val = tiny_folders(tmp_path / "data")
    workdir = tmp_path / "study"
    params = {
        "INSTALL_FROM": str(wheel),
        "BACKEND": "cpu",
        "WORKDIR": str(workdir),
        "PIP_FLAGS": OFFLINE,
        "SMOKE": True,
        "EXTRA_FLAGS": [f"--config.data.train={train}", f"--config.eval.sets=('{val}',)"],
    }
    nb, error = execute(tmp_path, monkeypatch, params, jupyter)
    assert error is None, error
    out = text_of(nb)
    venv = str(python.parent.parent)
    # espcn_jax and its drivers were imported from the wheel's install in the venv, not this tree
    (installed,) = re.findall(r"espcn_jax 0\.1\.0 at (\S+); drivers in (\S+)", out)
    assert all(p.startswith(venv) for p in installed), (installed, venv)
    assert "--preset=smoke" in out and "backend cpu: 1 x" in out
    assert "2 of 2 points ok" in out
    assert (workdir / "results.jsonl").exists() and (workdir / "report" / "report.md").exists()
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert images, "the report's figures are shown inline"


@pytest.mark.parametrize(
    "source, message",
    [
        ("", "error: set INSTALL_FROM in the Parameters cell"),
        ("/no/such/espcn_jax.whl", "error: INSTALL_FROM='/no/such/espcn_jax.whl': no such file"),
        (
            "https://example.com/espcn_jax",
            "error: INSTALL_FROM='https://example.com/espcn_jax': a URL must name a git repository",
        ),
    ],
)
def test_unset_or_bad_install_source_stops_with_one_line(tmp_path, monkeypatch, source, message):
    nb, error = execute(tmp_path, monkeypatch, {"INSTALL_FROM": source, "BACKEND": "cpu"})
    assert error is not None
    (line,) = error_lines(nb)
    assert line.startswith(message), line
    assert not cell_ran(nb, "PROBE =")  # Run all stops at the install cell


def test_tpu_asked_for_on_a_cpu_machine_stops_with_one_line(kernel, tmp_path, monkeypatch):
    jupyter, wheel, _ = kernel
    params = {"INSTALL_FROM": str(wheel), "BACKEND": "tpu", "PIP_FLAGS": OFFLINE}
    nb, error = execute(tmp_path, monkeypatch, params, jupyter)
    assert error is not None
    (line,) = error_lines(nb)
    assert line.startswith("error: BACKEND='tpu' but JAX runs on cpu"), line
    assert not cell_ran(nb, "subprocess.Popen(")  # no study on the wrong device


def test_notebook_pins_the_tested_jax():
    """The notebook's jax pin is the version this suite runs with (bump both together)."""
    jax = pytest.importorskip("jax")
    source = "".join(c.source for c in nbformat.read(NOTEBOOK, as_version=4).cells)
    assert re.findall(r'JAX_VERSION = "([^"]+)"', source) == [jax.__version__]
    assert source.count(jax.__version__) == 1  # in one place


def test_notebook_reads_the_workdir_through_epath_only():
    """No open() or os.path on WORKDIR (it may be gs://): reports and results go through epath."""
    cells = nbformat.read(NOTEBOOK, as_version=4).cells
    source = "".join(c.source for c in cells if c.cell_type == "code")
    assert not re.search(r"(?<![\w.])open\(", source) and "results.jsonl" not in source
    assert not re.search(r"os\.path\.\w+\(WORKDIR", source)
    assert "results.read_dir(WORKDIR)" in source and "epath.Path(WORKDIR)" in source
