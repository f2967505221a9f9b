"""scanpy on shadows: every call of ``tests/scanpy_calls.py`` runs on a shadow of ``pbmc68k_reduced`` (written to
tmp_path) and on the same AnnData in memory; what it returns, the figures it draws and the state it leaves must be
the same, and everything it adds must sit on the shadow as a pending change.

``SHADOWS_COMPAT_TABLE=docs/compat_results.json pytest tests/test_scanpy_compat.py`` records each call's outcome
for this interpreter (scanpy version) in that JSON file; ``docs/conf.py`` turns it into the table of
``docs/compat.md``.
"""

from __future__ import annotations

import json
import os
import platform
import random
import re
import warnings
from pathlib import Path

import numpy as np
import pytest

sc = pytest.importorskip("scanpy")

from compare import (  # noqa: E402
    assert_adata_same,
    assert_same,
    changed_elements,
    pending_elements,
    render_figures,
    tolerance,
)
from scanpy_calls import GENES, all_calls  # noqa: E402

from shadows import AnnDataShadow  # noqa: E402

CALLS = all_calls()

# Calls that do not work on a shadow, and why (strict: a fix makes the test fail until it is moved out of here).
KNOWN: dict[str, str] = {}

# Elements that a call mutates in place inside an object it read (not assigned): a shadow cannot see such a change,
# so it is not pending.  umap's layout zeroes small weights of obsp['connectivities'] through a COO view of it.
# normalize_per_cell divides the X it was handed in place and never assigns it: `s.X = s.X` marks it for write().
MUTATED_IN_PLACE: dict[str, set[tuple[str, str]]] = {
    "tl.umap": {("obsp", "connectivities")},
    "pp.normalize_per_cell": {("X", "")},
}

RESULTS: dict[str, dict[str, str]] = {}


def _counts(adata):
    """The cells of pbmc68k_reduced with integer counts (from the log-normalised raw) as a CSR X."""
    import anndata as ad

    raw = adata.raw.X.tocsr()
    per_cell = np.asarray(adata.obs["n_counts"], dtype=np.float64)[:, None] / 1e4
    counts = raw.copy()
    counts.data = np.expm1(counts.data)
    counts = counts.multiply(per_cell).tocsr()
    counts.data = np.rint(counts.data).astype(np.float32)
    counts.eliminate_zeros()
    out = ad.AnnData(
        X=counts.astype(np.float32),
        obs=adata.obs[["bulk_labels", "phase", "louvain", "n_genes", "n_counts"]].copy(),
        var=adata.raw.var.copy(),
    )
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("scanpy_compat")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dense = sc.datasets.pbmc68k_reduced()
        counts = _counts(dense)
        out = {}
        for name, adata in (("dense", dense), ("counts", counts)):
            adata.write_h5ad(d / f"{name}.h5ad")
            adata.write_zarr(d / f"{name}.zarr")
            out[name] = {"adata": adata, "h5ad": d / f"{name}.h5ad", "zarr": d / f"{name}.zarr"}
    yield out
    _write_results()


def _run(fn, adata) -> tuple:
    np.random.seed(0)  # a few scanpy functions draw from numpy's global generator,
    random.seed(0)  # igraph from Python's
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = fn(adata)
    except Exception as e:  # compared with what the in-memory call raised
        return None, e, render_figures()
    return result, None, render_figures()


def check_call(call, data: dict, fmt: str) -> str:
    """Run ``call`` on memory and on a shadow; assert they agree; return the outcome for the table."""
    base = data[call.data]["adata"]
    mem = base.copy()
    r_mem, e_mem, img_mem = _run(call.run, mem)
    if isinstance(e_mem, ImportError):
        pytest.skip(f"{call.id} needs an optional package: {e_mem}")
    shadow = AnnDataShadow(data[call.data][fmt])
    r_sh, e_sh, img_sh = _run(call.run, shadow)
    if e_mem is not None:
        # scanpy refuses this call on this data in memory too; the shadow must refuse it the same way
        assert e_sh is not None and type(e_sh) is type(e_mem), f"memory raised {e_mem!r}, shadow {e_sh!r}"
        return f"raises {type(e_mem).__name__} in memory too"
    if e_sh is not None:
        raise AssertionError(f"{call.id} failed on the shadow: {e_sh!r}") from e_sh
    with tolerance(*call.tol):
        assert_same(r_sh, r_mem, f"{call.id} returned")
        assert_adata_same(shadow, mem, f"shadow after {call.id}")
    assert len(img_sh) == len(img_mem), f"{call.id}: {len(img_sh)} figures on the shadow, {len(img_mem)} in memory"
    for i, (a, b) in enumerate(zip(img_sh, img_mem, strict=True)):
        assert a.shape == b.shape and np.array_equal(a, b), f"{call.id}: figure {i} differs from the in-memory one"
    changed = changed_elements(mem, base)
    if ("shape", "") in changed:
        # filtered in place: the shadow is now a subset of its file, whose changes cannot go into the full file
        with pytest.raises(ValueError, match="subset of the file"):
            shadow.write()
    else:
        missing = changed - pending_elements(shadow) - MUTATED_IN_PLACE.get(call.id, set())
        assert not missing, f"{call.id} changed {sorted(missing)} in memory, but the shadow has no pending change"
    return "same"


def _params(fmt: str) -> list:
    out = []
    for c in CALLS:
        if fmt == "zarr" and not c.zarr:
            continue
        marks = [pytest.mark.xfail(strict=True, reason=KNOWN[c.id])] if c.id in KNOWN and fmt == "h5ad" else []
        if c.slow:
            marks.append(pytest.mark.slow)
        out.append(pytest.param(c, id=c.id, marks=marks))
    return out


def _record(call_id: str, fmt: str, outcome: str) -> None:
    RESULTS.setdefault(call_id, {})[fmt] = outcome


@pytest.mark.parametrize("call", _params("h5ad"))
def test_scanpy_call_h5ad(call, data):
    try:
        outcome = check_call(call, data, "h5ad")
    except pytest.skip.Exception as e:
        _record(call.id, "h5ad", f"skipped: {e}")
        raise
    except BaseException as e:
        _record(call.id, "h5ad", f"fails: {KNOWN.get(call.id) or str(e).splitlines()[0][:200]}")
        raise
    _record(call.id, "h5ad", outcome)


@pytest.mark.parametrize("call", _params("zarr"))
def test_scanpy_call_zarr(call, data):
    try:
        outcome = check_call(call, data, "zarr")
    except BaseException as e:
        _record(call.id, "zarr", f"fails: {str(e).splitlines()[0][:200]}")
        raise
    _record(call.id, "zarr", outcome)


def _write_results() -> None:
    """Merge this run's outcomes into the JSON named by ``SHADOWS_COMPAT_TABLE``; render the docs table beside it."""
    target = os.environ.get("SHADOWS_COMPAT_TABLE")
    if not target or not RESULTS:
        return
    import anndata

    path = Path(target)
    table = json.loads(path.read_text()) if path.exists() else {}
    env = f"Python {platform.python_version()}, scanpy {sc.__version__}, anndata {anndata.__version__}"
    table[env] = {"calls": [c.id for c in CALLS], "results": RESULTS}
    path.write_text(json.dumps(table, indent=1, sort_keys=True, ensure_ascii=False) + "\n")
    path.with_name("compat_table.md").write_text(render_table(table))


def _cell(outcomes: dict[str, str] | None) -> str:
    if not outcomes:
        return "not run (slow)"
    h5 = outcomes.get("h5ad", "not run")
    if h5 == "same":
        return "✓ (h5ad, zarr)" if outcomes.get("zarr") == "same" else "✓"
    if h5.startswith("fails: "):
        return "✗ " + h5[len("fails: ") :].replace("|", "/")
    return h5.replace("|", "/")


def render_table(table: dict) -> str:
    """Markdown tables (one per scanpy module) of the outcome of every call in every recorded environment."""
    envs = sorted(table)
    ids: list[str] = []
    for env in envs:
        ids += [i for i in table[env]["calls"] if i not in ids]
    lines = ["<!-- generated by tests/test_scanpy_compat.py (SHADOWS_COMPAT_TABLE); do not edit -->", ""]
    for env in envs:
        res = table[env]["results"]
        same = sum(1 for r in res.values() if r.get("h5ad") == "same")
        lines.append(f"* {env}: {same} of {len(res)} calls run give the same result on a shadow as in memory.")
    area_of = {i: re.match(r"\w+", i).group() for i in ids}  # "pp", "pl", ..., "AnnData"
    for area in dict.fromkeys(area_of.values()):
        title = {"AnnData": "AnnData methods scanpy workflows call"}.get(area, f"`sc.{area}`")
        lines += ["", f"### {title}", "", "| call | " + " | ".join(envs) + " |", "|---" * (len(envs) + 1) + "|"]
        for i in ids:
            if area_of[i] == area:
                cells = [_cell(table[env]["results"].get(i)) for env in envs]
                lines.append(f"| `{i}` | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# --- one gene is read through the bounded path -------------------------------------------------------------------
def _matrix_cache(shadow) -> list:
    return [k for k in shadow._state.cache if k[0] == "X" or (k[0] == "raw" and k[1].startswith("X"))]


@pytest.mark.parametrize("use_raw", [False, True])
def test_umap_gene_reads_one_column(data, use_raw):
    s = AnnDataShadow(data["dense"]["h5ad"])
    sc.pl.umap(s, color=GENES[0], use_raw=use_raw, show=False)
    render_figures()
    assert _matrix_cache(s) == [], f"pl.umap(color=gene) read a whole matrix: {_matrix_cache(s)}"


@pytest.mark.parametrize("use_raw", [False, True])
def test_obs_df_reads_the_genes_only(data, use_raw):
    s = AnnDataShadow(data["dense"]["h5ad"])
    df = sc.get.obs_df(s, GENES[:2], use_raw=use_raw)
    assert _matrix_cache(s) == [], f"get.obs_df read a whole matrix: {_matrix_cache(s)}"
    assert_same(df, sc.get.obs_df(data["dense"]["adata"], GENES[:2], use_raw=use_raw), "obs_df")


def test_whole_matrix_is_read_once(data):
    """A call that needs all of X reads it once into the cache; the next call reuses it."""
    s = AnnDataShadow(data["dense"]["h5ad"])
    x1 = s.X
    sc.pp.pca(s, n_comps=5)
    assert s.X is x1
    assert ("X", "") in s._state.cache and ("X", "") not in s._state.pending


def test_scanpy_leaves_no_file_open(data, tmp_path):
    """After plots and column reads, the shadow can still be reopened for writing (HDF5 refuses that while any
    other handle of the same process has the file open)."""
    import shutil

    path = tmp_path / "copy.h5ad"
    shutil.copy(data["dense"]["h5ad"], path)
    s = AnnDataShadow(path)
    sc.pl.umap(s, color=[GENES[0], "bulk_labels"], show=False)
    sc.pl.dotplot(s, GENES[:3], groupby="bulk_labels", show=False)
    sc.get.obs_df(s, GENES[:2])
    render_figures()
    s.obsm["X_test"] = np.zeros((s.n_obs, 2), dtype=np.float32)
    s.reopen("r+").write().reopen("r")
    assert "X_test" in AnnDataShadow(path).obsm
