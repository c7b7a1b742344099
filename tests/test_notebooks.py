"""Every notebook in notebooks/ runs top to bottom (with JAXDD_NOTEBOOK_SMALL=1: tiny budgets)."""

import os
import shutil

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(f for f in os.listdir(os.path.join(ROOT, "notebooks")) if f.endswith(".ipynb"))


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs(name, tmp_path, monkeypatch):
    monkeypatch.setenv("JAXDD_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("PYTHONPATH", ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    work = tmp_path / "repo"
    work.mkdir()
    for link in ("benchmarks",):  # what the notebooks read, beside a scratch working directory
        os.symlink(os.path.join(ROOT, link), work / link)
    shared = os.path.join(os.path.dirname(ROOT), "shared")
    if os.path.isdir(shared):
        os.symlink(shared, tmp_path / "shared")
    elif "cifar10" in name:
        pytest.skip("../shared/data (the CIFAR-10 archive) is not beside this checkout")
    nb = nbformat.read(os.path.join(ROOT, "notebooks", name), as_version=4)
    # allow_errors: every cell runs and records its exception as an error output instead of execute() raising at
    # the first one, so the assertion below sees (and names) every failing cell
    nbclient.NotebookClient(nb, timeout=900, kernel_name="python3", allow_errors=True,
                            resources={"metadata": {"path": str(work)}}).execute()
    errors = [f"cell {n}: {o.get('ename')}: {o.get('evalue')}" for n, cell in enumerate(nb.cells)
              if cell.cell_type == "code" for o in cell.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, f"{name}: " + "; ".join(errors)
    shutil.rmtree(work, ignore_errors=True)
