"""The notebooks execute from a clean state (so they never rot), and the documentation builds with warnings as errors.

Each notebook of ``notebooks/`` runs with nbclient in its own temporary directory (they write their data there).
The documentation is built with ``python -m sphinx -W`` without executing the notebooks again
(``SHADOWS_DOCS_EXECUTE=off``: the tests above just did).  Both need the ``test``/``docs`` extras: without nbclient
or sphinx the tests are skipped.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


# optional libraries a notebook cannot run without; torch and muon are not among them: 03_backends and 05_mudata
# show them where installed and run without them (Python 3.12 has neither), so they must execute everywhere
NEEDS: dict[str, tuple[str, ...]] = {"05_mudata": ("mudata",), "08_remote": ("moto.server", "s3fs")}


def test_there_are_notebooks():
    names = {p.stem for p in NOTEBOOKS}
    assert len(NOTEBOOKS) >= 7, f"expected the seven topic notebooks, found {sorted(names)}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes(path: Path, tmp_path: Path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    for module in NEEDS.get(path.stem, ()):  # optional libraries some notebooks show (torch, muon: Python 3.11 here)
        pytest.importorskip(module)
    nb = nbformat.read(path, as_version=4)
    # committed without outputs: the repository stays small, and the docs render what this run would show
    with_outputs = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]
    assert not with_outputs, f"{path.name}: cells {with_outputs} were committed with outputs; clear them"
    env = {"MPLBACKEND": "Agg", "SHADOWS_PROGRESS": "0", "PYTHONWARNINGS": "ignore"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        client = nbclient.NotebookClient(
            nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
        )
        client.execute()
    except nbclient.exceptions.CellExecutionError as e:
        message = re.sub(r"\x1b\[[0-9;]*m", "", str(e))  # IPython colours its tracebacks
        raise AssertionError(f"{path.name} failed:\n{message[-3000:]}") from None
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_docs_build(tmp_path: Path):
    pytest.importorskip("sphinx")
    pytest.importorskip("myst_nb")
    pytest.importorskip("sphinx_book_theme")
    env = {**os.environ, "SHADOWS_DOCS_EXECUTE": "off", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", str(ROOT / "docs"), str(tmp_path)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env, cwd=ROOT)
    assert p.returncode == 0, f"sphinx -W failed:\n{(p.stderr or p.stdout)[-4000:]}"
    for page in ("index", "installation", "api", "formats", "compat"):
        assert (tmp_path / f"{page}.html").exists(), f"{page}.html was not built"
    built = {p.stem for p in (tmp_path / "notebooks").glob("*.html")}
    assert built == {p.stem for p in NOTEBOOKS}, f"notebooks rendered: {sorted(built)}"
