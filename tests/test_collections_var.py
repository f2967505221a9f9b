"""``shadows.concat(..., axis="var")``: files of (some of) the same cells, each with its own genes, side by side.

Differential: ``anndata.concat(..., axis=1)`` of the files read into memory is the oracle.  Hypothesis draws sets
of 2-4 small files (cells from one pool, overlapping or disjoint, in different orders; genes of their own or
shared names; dense/CSR/CSC X of different dtypes; obs columns that agree between files or conflict; var columns
of different kinds; layers, obsm, obsp, varm, varp in some files only; h5ad and zarr v2/v3 mixed), the arguments
of ``concat`` and indexers on the collection; every element of the collection, of its views and of its streamed
write is compared with anndata's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from collection_oracle import case_dir as _dir
from collection_oracle import open_both, oracle
from hypothesis import Phase, given, reject, settings
from hypothesis import strategies as st
from oracle import (
    STORE_FORMATS,
    assert_adata_equal,
    assert_element_equal,
    read_oracle,
    write_adata,
    write_specs,
)
from rss_child import RSS_HELPERS
from strategies import describe_indexer, indexers, make_column

import shadows
from shadows.spec.lazy_array import ElementSource

CELLS = [f"c{i}" for i in range(7)]
PHASES = [Phase.explicit, Phase.reuse, Phase.generate]  # (no shrinking: each attempt rewrites files)
VAR_KINDS = ("float", "int", "bool", "str_repeated", "cat", "Int64")


# --- drawing files ---------------------------------------------------------------------------------------------------
@st.composite
def file_specs(draw, i: int) -> dict:
    return {
        "i": i,
        "cells": draw(st.lists(st.sampled_from(CELLS), min_size=1, max_size=len(CELLS), unique=True)),
        "n_genes": draw(st.integers(1, 4)),
        "shared_genes": draw(st.integers(0, 4)) == 0,  # genes named as another file's: duplicated var names
        "x": draw(st.sampled_from(["dense", "csr", "csc"])),
        "dtype": draw(st.sampled_from(["float32", "float64", "int64"])),
        "obs": draw(st.dictionaries(st.sampled_from(["same", "rnd"]), st.sampled_from(VAR_KINDS), max_size=2)),
        "var": draw(st.dictionaries(st.sampled_from(["a", "b"]), st.sampled_from(VAR_KINDS), max_size=2)),
        "layer": draw(st.sampled_from([None, "csr", "dense"])),
        "pca": draw(st.sampled_from([None, 1, 2])),
        "graph": draw(st.sampled_from([None, "csr"])),
        "loadings": draw(st.sampled_from([None, 1, 2, 3])),
        "gene_graph": draw(st.sampled_from([None, "csr", "dense"])),
        "store": draw(st.sampled_from(STORE_FORMATS)),
        "seed": draw(st.integers(0, 2**31)),
        # raw: the file's genes and more, CSR or dense; joined only if every file has one
        "raw": draw(st.sampled_from([None, "csr", "dense"])),
    }


def _cell_value(cells: list[str], dims: int) -> np.ndarray:
    """Values that depend on the cell only: equal in every file holding the cell (what merge="same" keeps)."""
    k = np.array([int(c[1:]) for c in cells], dtype=np.float32)
    return np.stack([k * (d + 1) for d in range(dims)], axis=1)


def make_adata(spec: dict) -> ad.AnnData:
    rng = np.random.default_rng(spec["seed"])
    cells, n_g = spec["cells"], spec["n_genes"]
    n = len(cells)
    genes = [f"g{k}" for k in range(n_g)] if spec["shared_genes"] else [f"f{spec['i']}g{k}" for k in range(n_g)]
    dense = ((rng.random((n, n_g)) < 0.6) * rng.integers(1, 9, (n, n_g))).astype(spec["dtype"])
    X = {"dense": dense, "csr": sp.csr_matrix(dense), "csc": sp.csc_matrix(dense)}[spec["x"]]
    obs = pd.DataFrame(index=cells)
    for col, kind in spec["obs"].items():
        # "same": a function of the cell (files agree where they share a cell); "rnd": drawn per file (conflicts)
        obs[col] = _cell_value(cells, 1)[:, 0] if col == "same" else make_column(kind, n, rng)
    var = pd.DataFrame({c: make_column(kind, n_g, rng) for c, kind in spec["var"].items()}, index=genes)
    a = ad.AnnData(X=X, obs=obs, var=var)
    if spec["layer"] is not None:
        counts = dense.astype(np.float32) * 2
        a.layers["counts"] = sp.csr_matrix(counts) if spec["layer"] == "csr" else counts
    if spec["pca"] is not None:
        a.obsm["X_pca"] = _cell_value(cells, spec["pca"])
    if spec["graph"] is not None:
        a.obsp["graph"] = sp.csr_matrix(np.outer(_cell_value(cells, 1)[:, 0], np.ones(n)))
    if spec["loadings"] is not None:
        a.varm["loadings"] = rng.normal(size=(n_g, spec["loadings"])).astype(np.float32)
    if spec["gene_graph"] is not None:
        g = sp.random(n_g, n_g, density=0.5, format="csr", random_state=spec["seed"] % 1000)
        a.varp["gene_graph"] = g if spec["gene_graph"] == "csr" else g.toarray()
    if spec.get("raw") is not None:
        raw_genes = [*genes, *(f"f{spec['i']}r{k}" for k in range(spec["seed"] % 3))]
        r = ((rng.random((n, len(raw_genes))) < 0.5) * rng.integers(1, 9, (n, len(raw_genes)))).astype(np.float32)
        m = sp.csr_matrix(r) if spec["raw"] == "csr" else r
        a.raw = ad.AnnData(X=m, obs=obs, var=pd.DataFrame({"n": np.arange(len(raw_genes))}, index=raw_genes))
    a.uns["file"] = spec["i"]
    a.uns["shared"] = {"k": 1}
    return a


def write_files(specs: list[dict], directory: Path) -> list[str]:
    return write_specs(specs, directory, make_adata)


@st.composite
def cases(draw) -> tuple[list[dict], dict]:
    n = draw(st.integers(2, 4))
    specs = [draw(file_specs(i)) for i in range(n)]
    kw: dict = {"axis": draw(st.sampled_from([1, "var"])), "join": draw(st.sampled_from(["inner", "outer"]))}
    if draw(st.booleans()):
        kw["label"] = "batch"
        kw["keys"] = [f"k{i}" for i in range(n)] if draw(st.booleans()) else None
    if draw(st.booleans()):
        kw["index_unique"] = "-"
    kw["pairwise"] = draw(st.booleans())
    if draw(st.booleans()):
        kw["merge"] = draw(st.sampled_from(["same", "unique", "first", "only"]))
    if draw(st.booleans()):
        kw["uns_merge"] = draw(st.sampled_from(["same", "unique", "first", "only"]))
    kw["fill_value"] = draw(st.sampled_from([None, None, 0, -1]))
    return specs, {k: v for k, v in kw.items() if v is not None}


def anndata_view(want: ad.AnnData, rows, cols) -> ad.AnnData:
    """``want[rows, cols]``; where anndata's joint indexing of a sparse X fails (scipy cannot reshape the result
    of some pairs of index arrays) or hands out a dense X (anndata 0.12: a CSR X indexed by ``[[True], slice(-5,
    None, -3)]`` gives an ``ArrayView``), the same selection in two steps, which keeps X sparse."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        view = want[rows, cols]
        try:
            if sp.issparse(want.X) and not sp.issparse(view.X):
                raise ValueError("anndata made a sparse X dense")
            return view
        except ValueError:
            return want[rows].copy()[:, cols]


# --- the differential tests -------------------------------------------------------------------------------------------
@settings(max_examples=10, phases=PHASES, deadline=None)
@given(case=cases())
def test_collection_equals_anndata_concat(tmp_path, case):
    specs, kw = case
    paths = write_files(specs, _dir(tmp_path))
    got, want = open_both(paths, kw)
    assert isinstance(got, ad.AnnData)
    assert_adata_equal(got, want, f"concat({kw})")


@settings(max_examples=10, phases=PHASES, deadline=None)
@given(case=cases(), data=st.data())
def test_views_equal_anndata_views(tmp_path, case, data):
    specs, kw = case
    paths = write_files(specs, _dir(tmp_path))
    got, want = open_both(paths, kw)
    oi = data.draw(indexers(want.n_obs, want.obs_names), label="obs")
    vi = data.draw(indexers(want.n_vars, want.var_names), label="var")
    w = anndata_view(want, oi, vi)
    g = got[oi, vi]
    where = f"coll[{describe_indexer(oi)}, {describe_indexer(vi)}]"
    assert g.is_view
    if 0 in w.shape:
        # anndata's view of an empty selection of a sparse X is sometimes a dense array (scipy's reshape of an
        # empty result), sometimes an error: the names and tables are compared, the matrices only by shape
        for name in ("obs_names", "var_names", "obs", "var"):
            assert_element_equal(getattr(g, name), getattr(w, name), f"{where}.{name}")
        assert g.X.shape == w.shape
        return
    assert_adata_equal(g, w, where)
    # (no slices here: anndata's view of a one-gene view of a sparse X, sliced, hands out a dense array)
    vi2 = data.draw(indexers(w.n_vars, None, kinds=("int_array", "bool_mask")), label="var2")
    w2 = anndata_view(w, slice(None), vi2)
    assert_adata_equal(g[:, vi2], w2, f"{where}[:, {describe_indexer(vi2)}]", to_memory=False)


@settings(max_examples=200, phases=PHASES, deadline=None)
@given(case=cases(), data=st.data())
def test_streamed_write_reads_back_as_anndata_concat(tmp_path, case, data):
    specs, kw = case
    d = _dir(tmp_path)
    paths = write_files(specs, d)
    got, want = open_both(paths, kw)
    if data.draw(st.booleans(), label="view"):
        rows = data.draw(indexers(want.n_obs, None, kinds=("slice", "int_array", "bool_mask")), label="rows")
        cols = data.draw(indexers(want.n_vars, None, kinds=("slice", "int_array", "bool_mask")), label="cols")
        got, want = got[rows, cols], anndata_view(want, rows, cols)
    fmt = data.draw(st.sampled_from(["h5ad", "zarr"]), label="format")
    chunk = data.draw(st.sampled_from([None, 1, 2]), label="chunk_size")  # several row blocks per file
    mine, theirs = d / f"mine.{fmt}", d / f"theirs.{fmt}"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            getattr(want.copy(), f"write_{fmt}")(theirs)
    except Exception as e:  # noqa: BLE001 - e.g. a column anndata cannot write
        with pytest.raises(type(e)):
            getattr(got, f"write_{fmt}")(mine, chunk_size=chunk)
        assert not mine.exists()
        reject()
    getattr(got, f"write_{fmt}")(mine, chunk_size=chunk)
    assert_adata_equal(read_oracle(mine), read_oracle(theirs), f"written {fmt}", to_memory=False)


# --- fixed cases ------------------------------------------------------------------------------------------------------
def _spec(i: int, **kw) -> dict:
    base = {
        "i": i,
        "cells": CELLS[:5],
        "n_genes": 3,
        "shared_genes": False,
        "x": "csr",
        "dtype": "float32",
        "obs": {"same": "float"},
        "var": {"a": "cat"},
        "layer": None,
        "pca": 2,
        "graph": None,
        "loadings": None,
        "gene_graph": None,
        "store": ("h5ad", None),
        "seed": i,
        "raw": None,
    }
    base.update(kw)
    return base


@pytest.fixture
def three(tmp_path) -> list[str]:
    specs = [
        _spec(0, cells=CELLS[:5], x="csr", loadings=2),
        _spec(1, cells=CELLS[6:1:-1], x="dense", dtype="int64", store=("zarr", 2), layer="dense", loadings=1),
        _spec(2, cells=CELLS[1:7], x="csc", store=("zarr", 3), var={"a": "str_repeated", "b": "int"}),
    ]
    return write_files(specs, tmp_path)


def _reads(monkeypatch) -> list[tuple[str, tuple]]:
    """Record every element read (file, selection): the collection's reads go through ElementSource.read."""
    seen: list[tuple[str, tuple]] = []
    original = ElementSource.read

    def read(self, sub=()):
        seen.append((str(self.path), tuple(sub)))
        return original(self, sub)

    monkeypatch.setattr(ElementSource, "read", read)
    return seen


def test_gene_selection_reads_only_its_file_and_rows(three, monkeypatch):
    coll = shadows.concat(three, axis="var", join="outer")
    want = oracle(three, axis="var", join="outer")
    gene = want.var_names[4]  # a gene of the second file
    seen = _reads(monkeypatch)
    got = coll[[5, 1], gene].X
    assert_element_equal(got, want[[5, 1], gene].X, "X")
    assert {p for p, _ in seen} == {three[1]}, seen
    assert all(len(np.atleast_1d(np.arange(7)[s[0]])) <= 2 for _, s in seen), seen  # only the rows asked
    seen.clear()
    assert_element_equal(coll.obs_vector(gene), want.obs_vector(gene), "obs_vector")
    assert {p for p, _ in seen} == {three[1]}


def test_open_reads_no_matrix_and_repr_says_axis_var(three):
    coll = shadows.concat(three, axis=1, join="inner", label="batch")
    assert coll._state.cache == {}
    for p in coll.parts:
        assert all(isinstance(v, shadows.LazyArray | pd.Index) for v in p._state.cache.values()), p._state.cache.keys()
    text = repr(coll)
    for path in three:
        assert path in text
    assert "(inner join, axis=var)" in text and "n_obs × n_vars = 3 × 9" in text and "(3 genes)" in text
    assert "var: 'a', 'batch'" in text  # (inner join of the var columns)
    assert "var" not in coll._core.cache  # the var columns were listed, not read
    assert repr(coll[:, :3]).startswith("View of CollectionShadow")


@pytest.mark.parametrize("join", ["inner", "outer"])
def test_fill_values_and_dtypes(three, join):
    for fill in (None, 0, -1, 7.5):
        got, want = open_both(three, {"axis": 1, "join": join, "fill_value": fill})
        assert_element_equal(got.X, want.X, f"X fill={fill}")
        assert_element_equal(got.layers.get("counts"), want.layers.get("counts"), f"layer fill={fill}")
        assert_element_equal(got.varm.get("loadings"), want.varm.get("loadings"), f"varm fill={fill}")


def test_chunked_x_dask_and_stats(three):
    pytest.importorskip("dask")
    want = oracle(three, axis=1, join="outer", merge="same")
    coll = shadows.concat(three, axis=1, join="outer", merge="same")
    got, exp = list(coll.chunked_X(3)), list(want.chunked_X(3))
    assert [(s, e) for _, s, e in got] == [(s, e) for _, s, e in exp]
    for (g, s, e), (w, _, _) in zip(got, exp, strict=True):
        assert_element_equal(g, w, f"chunk {s}:{e}")
    d = shadows.concat(three, axis=1, join="outer", array_backend="dask")
    assert type(d.X).__module__.startswith("dask")
    assert_element_equal(sp.csr_matrix(d[[6, 0, 3], 2:8].X.compute()), want[[6, 0, 3], 2:8].X, "dask view")
    X = want.X.toarray()
    for axis in (0, 1):
        np.testing.assert_allclose(shadows.stats(coll, axis=axis, chunk_size=2)["sum"], X.sum(axis))


def test_obs_merged_and_var_concatenated(three):
    for merge in (None, "same", "unique", "first", "only"):
        got, want = open_both(three, {"axis": 1, "join": "outer", "merge": merge, "label": "src", "keys": list("xyz")})
        assert_element_equal(got.obs, want.obs, f"obs merge={merge}")
        assert_element_equal(got.var, want.var, f"var merge={merge}")
        assert_element_equal(got.obsm.get("X_pca"), want.obsm.get("X_pca"), f"obsm merge={merge}")
    # a var column alone is read from every file, the table whole is not
    coll = shadows.concat(three, axis=1, join="outer", label="src")
    assert_element_equal(coll.var["a"], want.var["a"], "var column")
    assert "var" not in coll._core.cache


def test_raw_side_by_side(tmp_path):
    specs = [_spec(0, raw="csr"), _spec(1, raw="dense", cells=CELLS[2:], store=("zarr", 2), seed=5)]
    paths = write_files(specs, tmp_path)
    for join in ("inner", "outer"):
        got, want = open_both(paths, {"axis": 1, "join": join, "label": "src", "index_unique": "-"})
        assert got._state.cache.get(("raw", "")) is None  # not read yet
        assert_element_equal(got.raw.var, want.raw.var, "raw.var")
        assert_element_equal(got.raw.X, want.raw.X, f"raw.X ({join})")
        rows = [want.n_obs - 1, 0]
        assert_element_equal(got[rows].raw.X, want[rows].raw.X, "raw.X of a view")
        g = want.raw.var_names[-1]
        assert_element_equal(got.raw.obs_vector(g), want.raw.obs_vector(g), "raw.obs_vector")
        out = tmp_path / f"raw_{join}.h5ad"
        got.write_h5ad(out)
        back = ad.read_h5ad(out)
        assert_element_equal(back.raw.X, want.raw.X, "written raw.X")
        assert_element_equal(back.raw.var, want.raw.var, "written raw.var")
    some = [paths[0], *write_files([_spec(3)], tmp_path / "noraw")]
    with pytest.warns(UserWarning, match="Only some AnnData objects have `.raw`"):
        coll = shadows.concat(some, axis=1)
    assert coll.raw is None


def test_errors_are_clear(three, tmp_path):
    # duplicated cell names cannot be joined
    a = make_adata(_spec(7))
    a.obs_names = ["c0", "c0", "c1", "c2", "c3"]
    dup = write_adata(a, tmp_path / "dup.h5ad")
    with pytest.raises(ValueError, match=r"obs names of '.*dup\.h5ad'.*not unique"):
        shadows.concat([three[0], dup], axis=1, join="outer")
    # no shared cell: an inner join keeps none, with a warning
    other = write_files([_spec(8, cells=["z1", "z2"])], tmp_path / "other")
    with pytest.warns(UserWarning, match="share no obs names: an inner join keeps 0 cells"):
        coll = shadows.concat([three[0], *other], axis=1)
    assert coll.shape == (0, 6)
    with pytest.raises(ValueError, match="axis must be"):
        shadows.concat(three, axis="genes")


# --- memory ----------------------------------------------------------------------------------------------------------
N_CELLS, N_GENES = 4_000, 1_500

CHILD = RSS_HELPERS + textwrap.dedent(
    """
    import gc, json, sys
    import h5py, zarr  # (libraries' import costs are not the collection's)
    import shadows
    files, out = json.loads(sys.argv[1]), sys.argv[2]
    # one-time costs of the process (imports, the writers' first set-up: several MB) are paid before measuring
    shadows.concat(files[:1], axis="var")[:2, :2].write_h5ad(out + ".warm.h5ad")
    gc.collect()
    base = kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    shadows.concat(files, axis="var", join="outer", label="part").write_h5ad(out)
    print(json.dumps({"peak_bytes": (kib("VmHWM") - base) * 1024}))
    """
)


def _side_files(d: Path, n_cells: int, n_genes: int) -> list[str]:
    """Three CSR files (h5ad, zarr, h5ad) of 10 % density, their cells shifted by 500 (an outer join of the cells,
    each file's rows mapped), each with genes of its own."""
    from test_memory_bounds import _random_csr

    paths = []
    for i in range(3):
        cells = [f"cell_{k}" for k in range(i * 500, i * 500 + n_cells)]
        a = ad.AnnData(X=_random_csr(n_cells, n_genes, 0.1, seed=i), obs=pd.DataFrame(index=cells))
        a.var_names = [f"f{i}_{k}" for k in range(n_genes)]
        if i != 1:
            p = d / f"part{i}.h5ad"
            a.write_h5ad(p)
        else:  # a zarr store of chunks of 2**16 values (a chunk is decoded whole: its length sets a floor)
            import zarr

            p = d / f"part{i}.zarr"
            a.write_zarr(p)
            g = zarr.open_group(p, mode="r+", use_consolidated=False)
            ad.io.write_elem(g, "X", a.X, dataset_kwargs={"chunks": (2**16,)})
            zarr.consolidate_metadata(p)
        paths.append(str(p))
    return paths


def _write_peak(paths: list[str], out: Path) -> tuple[float, float]:
    """``(peak bytes of the streamed write in a child process, bytes of the files)``."""
    total = sum(
        Path(p).stat().st_size
        if Path(p).is_file()
        else sum(f.stat().st_size for f in Path(p).rglob("*") if f.is_file())
        for p in paths
    )
    env = {**os.environ, "SHADOWS_MEMORY_BUDGET": str(2**20)}
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(paths), str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=str(Path(__file__).parent.parent),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    peak = json.loads(proc.stdout.strip().splitlines()[-1])["peak_bytes"]
    print(f"side-by-side write of {total / 2**20:.0f} MiB: peak {peak / 2**20:.1f} MiB")
    return peak, total


# what the write holds besides its blocks: the names (cells and genes, joined: a few hundred bytes each) and
# HDF5's chunk cache of each dataset read (up to 1 MiB each: data and indices of every h5ad file)
def _allowance(n_cells: int, n_genes: int) -> float:
    return 400 * (n_cells + 1000 + 3 * n_genes) + 2 * 2 * 2**20


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc/self/clear_refs")
def test_streamed_write_in_bounded_memory(tmp_path):
    paths = _side_files(tmp_path, N_CELLS, N_GENES)
    out = tmp_path / "side.h5ad"
    peak, total = _write_peak(paths, out)
    assert peak < 0.10 * total + _allowance(N_CELLS, N_GENES), f"write: peak {peak / 2**20:.1f} MiB"
    want = oracle(paths, axis="var", join="outer", label="part")
    got = ad.read_h5ad(out)
    assert_element_equal(got.X, want.X, "X")
    assert_element_equal(got.var, want.var, "var")


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc/self/clear_refs")
def test_streamed_write_in_bounded_memory_large(tmp_path):
    n_cells, n_genes = 30_000, 6_000  # three files of ~110 MB
    paths = _side_files(tmp_path, n_cells, n_genes)
    peak, total = _write_peak(paths, tmp_path / "side.h5ad")
    assert peak < 0.02 * total + _allowance(n_cells, n_genes), f"write: peak {peak / 2**20:.1f} MiB"


# --- the long version (not in CI: pyproject deselects `slow`) -----------------------------------------------------------
@pytest.mark.slow
@settings(max_examples=150, phases=PHASES, deadline=None)
@given(case=cases(), data=st.data())
def test_views_and_writes_thorough(tmp_path, case, data):
    test_collection_equals_anndata_concat.hypothesis.inner_test(tmp_path, case)
    test_views_equal_anndata_views.hypothesis.inner_test(tmp_path, case, data)
    test_streamed_write_reads_back_as_anndata_concat.hypothesis.inner_test(tmp_path, case, data)
