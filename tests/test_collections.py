"""``shadows.concat``: a collection of files equals ``anndata.concat`` of the files read into memory.

Differential: anndata is the oracle.  Hypothesis draws sets of 2-4 small files (overlapping and disjoint genes,
obs columns of different kinds under the same name, categoricals with different categories, dense/CSR/CSC X of
different dtypes, layers/obsm/obsp present in some files only, h5ad and zarr v2/v3 mixed), the arguments of
``concat`` and indexers on the collection; every element of the collection, of its views and of its streamed
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
from shadows import AnnDataShadow

GENES = [f"g{i}" for i in range(8)]
# shrinking re-writes files for every attempt (minutes): failures print their drawn case, which is small anyway
PHASES = [Phase.explicit, Phase.reuse, Phase.generate]
# column kinds that files may give the same column (anndata unifies or promotes them: the oracle decides how)
COLUMN_KINDS = ("float", "int", "bool", "str_repeated", "cat", "cat_ordered", "Int64", "boolean")


# --- drawing files ---------------------------------------------------------------------------------------------------
@st.composite
def file_specs(draw, i: int) -> dict:
    n_obs = draw(st.integers(1, 6))
    genes = draw(st.lists(st.sampled_from(GENES), min_size=1, max_size=len(GENES), unique=True))
    return {
        "i": i,
        "n_obs": n_obs,
        "genes": genes,
        "x": draw(st.sampled_from(["dense", "csr", "csc"])),
        "dtype": draw(st.sampled_from(["float32", "float64", "int64"])),
        "columns": draw(st.dictionaries(st.sampled_from(["a", "b", "c"]), st.sampled_from(COLUMN_KINDS), max_size=3)),
        "layer": draw(st.sampled_from([None, "csr", "dense"])),
        "pca": draw(st.sampled_from([None, 1, 2, 3])),
        "sparse_emb": draw(st.booleans()),
        "df": draw(st.booleans()),
        "graph": draw(st.sampled_from([None, "csr", "dense"])),
        "store": draw(st.sampled_from(STORE_FORMATS)),
        "seed": draw(st.integers(0, 2**31)),
        # raw: its own genes (a superset of X's or others), CSR or dense; joined only if every file has one
        "raw": draw(st.sampled_from([None, None, "csr", "dense", "csc"])),
    }


def make_adata(spec: dict) -> ad.AnnData:
    rng = np.random.default_rng(spec["seed"])
    n, genes = spec["n_obs"], spec["genes"]
    dense = (rng.random((n, len(genes))) < 0.5) * rng.integers(1, 9, (n, len(genes)))
    dense = dense.astype(spec["dtype"])
    X = {"dense": dense, "csr": sp.csr_matrix(dense), "csc": sp.csc_matrix(dense)}[spec["x"]]
    obs = pd.DataFrame(
        {c: make_column(kind, n, rng) for c, kind in spec["columns"].items()},
        index=[f"c{spec['i']}_{k}" for k in range(n)],
    )
    a = ad.AnnData(X=X, obs=obs, var=pd.DataFrame({"sym": [g.upper() for g in genes]}, index=genes))
    if spec["layer"] is not None:
        counts = dense.astype(np.float32) * 2
        a.layers["counts"] = sp.csr_matrix(counts) if spec["layer"] == "csr" else counts
    if spec["pca"] is not None:
        a.obsm["X_pca"] = rng.normal(size=(n, spec["pca"])).astype(np.float32)
    if spec["sparse_emb"]:
        a.obsm["sparse_emb"] = sp.random(n, 3, density=0.5, format="csr", random_state=spec["seed"] % 1000)
    if spec["df"]:
        a.obsm["df"] = pd.DataFrame({"u": rng.random(n)}, index=obs.index)
    if spec["graph"] is not None:
        g = sp.random(n, n, density=0.4, format="csr", random_state=spec["seed"] % 1000)
        a.obsp["graph"] = g if spec["graph"] == "csr" else g.toarray()
    if spec.get("raw") is not None:
        raw_genes = sorted(set(genes) | set(GENES[spec["seed"] % 3 :: 3]))
        r = ((rng.random((n, len(raw_genes))) < 0.5) * rng.integers(1, 9, (n, len(raw_genes)))).astype(np.float32)
        m = {"csr": sp.csr_matrix, "csc": sp.csc_matrix, "dense": np.asarray}[spec["raw"]](r)
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
    kw: dict = {"join": draw(st.sampled_from(["inner", "outer"]))}
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
    return specs, {k: v for k, v in kw.items() if v is not None}


# --- the differential tests -------------------------------------------------------------------------------------------
@settings(max_examples=15, phases=PHASES)
@given(case=cases())
def test_collection_equals_anndata_concat(tmp_path, case):
    specs, kw = case
    paths = write_files(specs, _dir(tmp_path))
    got, want = open_both(paths, kw)
    assert isinstance(got, ad.AnnData)
    assert_adata_equal(got, want, f"concat({kw})")


@settings(max_examples=15, phases=PHASES)
@given(case=cases(), data=st.data())
def test_views_equal_anndata_views(tmp_path, case, data):
    specs, kw = case
    paths = write_files(specs, _dir(tmp_path))
    got, want = open_both(paths, kw)
    oi = data.draw(indexers(want.n_obs, want.obs_names if want.obs_names.is_unique else None), label="obs")
    vi = data.draw(indexers(want.n_vars, want.var_names), label="var")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        w = want[oi, vi]
    g = got[oi, vi]
    where = f"coll[{describe_indexer(oi)}, {describe_indexer(vi)}]"
    assert g.is_view
    assert_adata_equal(g, w, where)
    # a view of the view
    oi2 = data.draw(indexers(w.n_obs, None, kinds=("slice", "int_array", "bool_mask")), label="obs2")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        w2 = w[oi2]
    assert_adata_equal(g[oi2], w2, f"{where}[{describe_indexer(oi2)}]", to_memory=False)


@settings(max_examples=10, phases=PHASES)
@given(case=cases(), data=st.data())
def test_streamed_write_reads_back_as_anndata_concat(tmp_path, case, data):
    specs, kw = case
    d = _dir(tmp_path)
    paths = write_files(specs, d)
    got, want = open_both(paths, kw)
    if data.draw(st.booleans(), label="view"):
        rows = data.draw(indexers(want.n_obs, None, kinds=("slice", "int_array", "bool_mask")), label="rows")
        got, want = got[rows], want[rows]
    fmt = data.draw(st.sampled_from(["h5ad", "zarr"]), label="format")
    mine, theirs = d / f"mine.{fmt}", d / f"theirs.{fmt}"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            getattr(want.copy(), f"write_{fmt}")(theirs)  # anndata's own file of the same object: the oracle
    except Exception as e:  # noqa: BLE001 - e.g. an obs column of floats and strings: anndata cannot write it
        with pytest.raises(type(e)):
            getattr(got, f"write_{fmt}")(mine)
        assert not mine.exists()
        reject()
    getattr(got, f"write_{fmt}")(mine)
    assert_adata_equal(read_oracle(mine), read_oracle(theirs), f"written {fmt}", to_memory=False)


# --- fixed cases ------------------------------------------------------------------------------------------------------
def _spec(i: int, **kw) -> dict:
    base = {
        "i": i,
        "n_obs": 5,
        "genes": GENES[:5],
        "x": "csr",
        "dtype": "float32",
        "columns": {"a": "cat"},
        "layer": None,
        "pca": 2,
        "sparse_emb": False,
        "df": False,
        "graph": None,
        "store": ("h5ad", None),
        "seed": i,
    }
    base.update(kw)
    return base


@pytest.fixture
def three(tmp_path) -> list[str]:
    specs = [
        _spec(0, genes=GENES[:6], x="csr"),
        _spec(1, genes=GENES[2:8], x="dense", dtype="int64", store=("zarr", 2), layer="dense", graph="csr"),
        _spec(2, genes=GENES[1:7], x="csc", store=("zarr", 3), columns={"a": "str_repeated", "b": "int"}),
    ]
    return write_files(specs, tmp_path)


@pytest.mark.parametrize("join", ["inner", "outer"])
def test_fill_values_and_dtypes(three, join):
    got, want = open_both(three, {"join": join, "fill_value": None})
    assert_element_equal(got.X, want.X, "X")  # sparse: missing genes are zeros, dtype anndata's
    assert_element_equal(got.layers["counts"] if join == "outer" else None, want.layers.get("counts"), "layer")
    for fill in (0, -1, 7.5):
        got, want = open_both(three, {"join": join, "fill_value": fill})
        assert_adata_equal(got, want, f"fill_value={fill}", vectors=False)


def test_dense_outer_fills_nan(tmp_path):
    specs = [_spec(0, x="dense", genes=GENES[:3]), _spec(1, x="dense", genes=GENES[2:5], dtype="int64")]
    paths = write_files(specs, tmp_path)
    got, want = open_both(paths, {"join": "outer"})
    assert np.isnan(got.X).any() and got.X.dtype == want.X.dtype
    assert_element_equal(got.X, want.X, "X")
    # a view holding rows of the int file only has the whole concatenation's dtype
    assert_element_equal(got[5:].X, want[5:].X, "view X")


def test_paths_globs_shadows_and_mappings(three, tmp_path):
    want = oracle(three, join="outer", label="src", keys=["x", "y", "z"])
    glob = str(Path(three[0]).parent / "part*")
    by_glob = shadows.concat([glob], join="outer", label="src", keys=None)
    assert by_glob.sources == sorted(by_glob.sources)
    mapping = {"x": AnnDataShadow(three[0]), "y": three[1], "z": Path(three[2])}
    got = shadows.concat(mapping, join="outer", label="src")
    assert_adata_equal(got, want, "mapping", vectors=False)
    with pytest.raises(TypeError, match="both"):
        shadows.concat(mapping, keys=["a", "b", "c"])
    # a view of a shadow as a source: its rows and genes only
    view = AnnDataShadow(three[0])[1:4, ["g0", "g2", "g3"]]
    mem = read_oracle(three[0])[1:4, ["g0", "g2", "g3"]]
    got = shadows.concat([view, three[1]], join="outer")
    assert_adata_equal(got, oracle_objs([mem, read_oracle(three[1])], join="outer"), "view source", vectors=False)


def oracle_objs(objs, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ad.concat(objs, **kw)


def test_open_reads_no_matrix_and_repr_lists_sources(three):
    coll = shadows.concat(three, join="inner", label="batch")
    assert coll._state.cache == {}
    for p in coll.parts:  # each file: names and lazy handles, no value of any matrix or table
        assert all(isinstance(v, shadows.LazyArray | pd.Index) for v in p._state.cache.values()), p._state.cache.keys()
    text = repr(coll)
    for path in three:
        assert path in text
    assert "CollectionShadow of 3 files (inner join)" in text and "n_obs × n_vars = 15 × 4" in text
    assert repr(coll[:3]).startswith("View of CollectionShadow")


def test_obs_vector_reads_one_column(three, monkeypatch):
    coll = shadows.concat(three, join="outer", label="batch")
    want = oracle(three, join="outer", label="batch")
    for k in ("a", "b", "batch"):
        assert_element_equal(coll.obs_vector(k), want.obs_vector(k), k)
    assert "obs" not in coll._core.cache  # answered column by column: the tables were not read whole
    for g in ("g3", "g6"):
        assert_element_equal(coll.obs_vector(g), want.obs_vector(g), g)
        assert_element_equal(coll.obs_vector(g, layer="counts"), want.obs_vector(g, layer="counts"), g)
    name = want.obs_names[7]
    assert_element_equal(coll.var_vector(name), want.var_vector(name), name)


def test_filter_by_obs_reads_only_selected_files(three):
    coll = shadows.concat(three, join="inner")
    want = oracle(three, join="inner")
    mask = coll.obs_vector("a") == coll.obs_vector("a")[0]  # a value of the first file's categories
    view = coll[np.asarray(mask, dtype=bool) & (np.arange(coll.n_obs) < 5)]
    src = view.stacked("X")
    from shadows.collection.source import plan_rows

    assert [f for f, _ in plan_rows(src.rows, src.offsets).pieces] == [0]
    assert_element_equal(view.X, want[np.asarray(mask, dtype=bool) & (np.arange(15) < 5)].X, "X")


def test_chunked_x_yields_anndata_order(three):
    coll = shadows.concat(three, join="outer")
    want = oracle(three, join="outer")
    got = list(coll.chunked_X(4))
    exp = list(want.chunked_X(4))
    assert [(s, e) for _, s, e in got] == [(s, e) for _, s, e in exp]
    for (g, s, e), (w, _, _) in zip(got, exp, strict=True):
        assert_element_equal(g, w, f"chunk {s}:{e}")
    view = coll[[14, 0, 7, 3]]
    assert_element_equal(next(view.chunked_X(2))[0], want[[14, 0, 7, 3]].X[:2], "view chunk")


def test_dask_backend(three):
    pytest.importorskip("dask")
    want = oracle(three, join="outer")
    d = shadows.concat(three, join="outer", array_backend="dask")
    x = d.X
    assert type(x).__module__.startswith("dask")
    np.testing.assert_allclose(np.asarray(x.sum(axis=0).compute()).ravel(), np.asarray(want.X.sum(axis=0)).ravel())
    assert_element_equal(sp.csr_matrix(d[[9, 1, 4]].X.compute()), want[[9, 1, 4]].X, "dask view")


def test_in_memory_changes_are_written(three, tmp_path):
    coll = shadows.concat(three, join="inner")
    want = oracle(three, join="inner")
    coll.obs["new"] = np.arange(coll.n_obs)
    want.obs["new"] = np.arange(want.n_obs)
    emb = np.ones((coll.n_obs, 2))
    coll.obsm["X_new"] = emb
    want.obsm["X_new"] = emb
    del coll.obsm["X_pca"]
    del want.obsm["X_pca"]
    coll.uns["note"] = "hi"
    want.uns["note"] = "hi"
    assert_adata_equal(coll, want, "changed", vectors=False)
    assert_adata_equal(coll[2:9], want[2:9], "view of changed", vectors=False)
    with pytest.raises(ValueError, match="view"):
        coll[2:9].obsm["x"] = np.zeros((7, 1))
    with pytest.raises(ValueError, match="cannot be written as a key"):  # checked as on a shadow, naming the files
        coll.obsm[".zgroup"] = emb
    coll.write_h5ad(tmp_path / "mine.h5ad")
    want.write_h5ad(tmp_path / "theirs.h5ad")
    assert_adata_equal(read_oracle(tmp_path / "mine.h5ad"), read_oracle(tmp_path / "theirs.h5ad"), "written")


def test_write_refuses_existing_destination(three, tmp_path):
    coll = shadows.concat(three)
    dst = tmp_path / "exists.h5ad"
    dst.write_bytes(b"precious")
    with pytest.raises(FileExistsError, match="exists"):
        coll.write_h5ad(dst)
    assert dst.read_bytes() == b"precious"
    with pytest.raises(FileExistsError):
        coll.write_zarr(Path(three[1]))  # a source itself
    assert not list(tmp_path.glob(".exists.h5ad.shadows-*"))  # no staged file left behind


def test_scanpy_qc_metrics_equal(three):
    sc = pytest.importorskip("scanpy")
    coll = shadows.concat(three, join="outer")
    want = oracle(three, join="outer")
    got_obs, got_var = sc.pp.calculate_qc_metrics(coll, inplace=False, percent_top=None)
    exp_obs, exp_var = sc.pp.calculate_qc_metrics(want, inplace=False, percent_top=None)
    pd.testing.assert_frame_equal(got_obs, exp_obs)
    pd.testing.assert_frame_equal(got_var, exp_var)
    sc.pp.calculate_qc_metrics(coll, inplace=True, percent_top=None)
    sc.pp.calculate_qc_metrics(want, inplace=True, percent_top=None)
    pd.testing.assert_frame_equal(pd.DataFrame(coll.obs), pd.DataFrame(want.obs))
    view, wview = coll[coll.obs["n_genes_by_counts"] > 1], want[want.obs["n_genes_by_counts"] > 1]
    sc.pp.filter_genes(view, min_cells=2)  # in place on a view: copy-on-write, then a subset
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sc.pp.filter_genes(wview, min_cells=2)
    assert_element_equal(view.X, wview.X, "filtered")
    assert_element_equal(view.var_names, wview.var_names, "filtered genes")


# --- errors -----------------------------------------------------------------------------------------------------------
def test_errors_are_clear(three, tmp_path):
    with pytest.raises(ValueError, match="join must be"):
        shadows.concat(three, join="left")
    with pytest.raises(ValueError, match="axis must be 0, 1, 'obs' or 'var'"):
        shadows.concat(three, axis=2)
    with pytest.raises(ValueError, match="keys has 2 names for 3 sources"):
        shadows.concat(three, keys=["a", "b"])
    with pytest.raises(FileNotFoundError, match="matches no file"):
        shadows.concat([str(tmp_path / "nothing*.h5ad")])
    # duplicated gene names cannot be joined
    a = make_adata(_spec(7))
    a.var_names = ["g0", "g0", "g1", "g2", "g3"]
    dup = write_adata(a, tmp_path / "dup.h5ad")
    with pytest.raises(ValueError, match=r"dup\.h5ad.*not unique"):
        shadows.concat([three[0], dup])
    # some files with X, some without
    b = make_adata(_spec(8))
    b.X = None
    nox = write_adata(b, tmp_path / "nox.h5ad")
    with pytest.raises(ValueError, match=r"nox\.h5ad.*no X"):
        shadows.concat([three[0], nox])


def test_inner_join_without_shared_genes_warns(tmp_path):
    paths = write_files([_spec(0, genes=GENES[:3]), _spec(1, genes=GENES[4:])], tmp_path)
    with pytest.warns(UserWarning, match="share no var names"):
        coll = shadows.concat(paths, join="inner")
    assert coll.shape == (10, 0)


def test_raw_joined_as_anndata(tmp_path):
    specs = [_spec(0, raw="csr"), _spec(1, raw="dense", genes=GENES[3:], store=("zarr", 2)), _spec(2, raw="csc")]
    paths = write_files(specs, tmp_path)
    for join in ("inner", "outer"):
        got, want = open_both(paths, {"join": join, "index_unique": "-"})
        assert (
            got.raw.shape == want.raw.shape and got._state.cache.get(("raw", "")).__dict__["_x"] is None
        )  # not read yet
        assert_element_equal(got.raw.var, want.raw.var, "raw.var")
        assert_element_equal(got.raw.X, want.raw.X, f"raw.X ({join})")
        assert_element_equal(got[[3, 12, 7]].raw.X, want[[3, 12, 7]].raw.X, "raw.X of a view")
        g = want.raw.var_names[1]
        assert_element_equal(got.raw.obs_vector(g), want.raw.obs_vector(g), "raw.obs_vector")
        assert_element_equal(got.raw[:4, [g]].X, want.raw[:4, [g]].X, "raw[...]")
    # only some files with raw: none, with anndata's warning
    some = [paths[0], *write_files([_spec(3)], tmp_path / "noraw")]
    with pytest.warns(UserWarning, match="Only some AnnData objects have `.raw`"):
        coll = shadows.concat(some)
    assert coll.raw is None and coll.parts[0].raw is not None


def test_conflicting_obs_dtypes_joined_as_anndata(tmp_path):
    specs = [
        _spec(0, columns={"a": "int", "b": "cat", "c": "bool"}),
        _spec(1, columns={"a": "float", "b": "cat_ordered", "c": "str_repeated"}, store=("zarr", 2)),
        _spec(2, columns={"a": "str_repeated", "b": "cat"}, store=("zarr", 3)),
    ]
    paths = write_files(specs, tmp_path)
    for join in ("inner", "outer"):
        got, want = open_both(paths, {"join": join})
        assert_element_equal(got.obs, want.obs, f"obs ({join})")
        for k in want.obs.columns:
            assert_element_equal(shadows.concat(paths, join=join).obs_vector(k), want.obs_vector(k), k)


# --- memory -----------------------------------------------------------------------------------------------------------
# a matrix-dominated collection (as real ones are: the names of 30,000 cells are a few MB, the matrix is not)
N_OBS, N_VARS = 8_000, 10_000

CHILD = RSS_HELPERS + textwrap.dedent(
    """
    import gc, json, sys
    import h5py, zarr  # (libraries' import costs are not the collection's)
    import shadows
    files, what, out = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
    # one-time costs of the process (pandas' and zarr's first index builds and codec set-up, several MB) are paid
    # before the measurement, which is about the collection: a collection of the first file alone is opened
    shadows.concat(files[:1]).var_names
    gc.collect()
    base = kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    coll = shadows.concat(files, join="outer", label="part", index_unique="-")
    if what == "open":
        coll.shape
    elif what == "write":
        coll.write_h5ad(out)
    elif what == "filter":
        v = coll[coll.obs_vector("donor") == "D1"][:, ["ENS0000007", "ENS0000042"]]
        v.X
    print(json.dumps({"peak_bytes": (kib("VmHWM") - base) * 1024}))
    """
)


@pytest.fixture(scope="module")
def big_files(tmp_path_factory) -> list[str]:
    from test_memory_bounds import _random_csr

    d = tmp_path_factory.mktemp("collmem")
    rng = np.random.default_rng(3)
    paths = []
    for i in range(4):
        X = _random_csr(N_OBS, N_VARS, 0.1, seed=i)
        if i == 1:
            X = X.tocsc()  # a CSC file: regrouped once, not scanned per block
        obs = pd.DataFrame(
            {"donor": pd.Categorical(rng.choice(["D1", "D2", "D3"], size=N_OBS))},
            index=[f"cell_{k}" for k in range(N_OBS)],
        )
        genes = [f"ENS{k:07d}" for k in range(i * 100, i * 100 + N_VARS)]  # overlapping genes: an outer join
        a = ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=genes))
        a.obsm["X_pca"] = rng.standard_normal((N_OBS, 20), dtype=np.float32)
        if i != 2:
            p = d / f"part{i}.h5ad"
            a.write_h5ad(p)
        else:
            p = d / f"part{i}.zarr"
            a.write_zarr(p)
            # chunks of 2**16 values, as in test_memory_bounds: a zarr chunk is decoded whole, so the chunk length
            # (anndata's default is far larger) and not the budget would set the floor of the read's memory
            import zarr

            g = zarr.open_group(p, mode="r+", use_consolidated=False)
            ad.io.write_elem(g, "X", X, dataset_kwargs={"chunks": (2**16,)})
            zarr.consolidate_metadata(p)
        paths.append(str(p))
    return paths


def _size(p: str) -> int:
    path = Path(p)
    return path.stat().st_size if path.is_file() else sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _peak(files: list[str], what: str, out: str = "") -> float:
    env = {**os.environ, "SHADOWS_MEMORY_BUDGET": str(2**20)}
    p = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(files), what, out],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=str(Path(__file__).parent.parent),
    )
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])["peak_bytes"]


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc/self/clear_refs")
def test_streamed_write_in_bounded_memory(big_files, tmp_path):
    total = sum(_size(p) for p in big_files)
    opened = _peak(big_files, "open")
    # opening reads the var names of every file and joins them: a few hundred bytes per name (pandas 3's arrow
    # strings and the join's hash tables cost more than pandas 2's), never any matrix
    names = 300 * len(big_files) * N_VARS
    assert opened < 0.02 * total + names, f"open: {opened / 2**20:.1f} MiB of a {total / 2**20:.0f} MiB collection"
    out = tmp_path / "whole.h5ad"
    peak = _peak(big_files, "write", str(out))
    # matrices are streamed in blocks; the obs table (names included) is held whole while it is written, as
    # anndata.experimental.concat_on_disk holds it: an allowance per cell (pandas 3's strings cost more)
    cells = 500 * len(big_files) * N_OBS
    assert peak < 0.10 * total + cells, f"write: peak {peak / 2**20:.1f} MiB of a {total / 2**20:.0f} MiB collection"
    back = ad.read_h5ad(out, backed="r")
    assert back.shape == (4 * N_OBS, N_VARS + 300)
    want = oracle(big_files, join="outer", label="part", index_unique="-")
    got = ad.read_h5ad(out)
    assert_element_equal(got.X, want.X, "X")
    assert_element_equal(got.obsm["X_pca"], want.obsm["X_pca"], "obsm")
    filtered = _peak(big_files, "filter")
    print(
        f"collection of {total / 2**20:.0f} MiB: open {opened / 2**20:.1f} MiB, write {peak / 2**20:.1f} MiB, "
        f"filter + 2 genes {filtered / 2**20:.1f} MiB"
    )
    assert filtered < 0.05 * total + cells, f"filter: {filtered / 2**20:.1f} MiB"


# --- the long version (not in CI: pyproject deselects `slow`) -----------------------------------------------------------
@pytest.mark.slow
@settings(max_examples=60, phases=PHASES)
@given(case=cases(), data=st.data())
def test_views_and_writes_thorough(tmp_path, case, data):
    test_views_equal_anndata_views.hypothesis.inner_test(tmp_path, case, data)
    test_streamed_write_reads_back_as_anndata_concat.hypothesis.inner_test(tmp_path, case, data)


# --- everything a shadow does, on a collection -----------------------------------------------------------------------
def test_obs_is_read_column_by_column(three):
    coll = shadows.concat(three, join="outer", label="batch")
    want = oracle(three, join="outer", label="batch")
    obs = coll.obs
    assert "a" in obs and "nope" not in obs and len(obs) == want.n_obs and obs.shape == want.obs.shape
    assert list(obs.columns) == list(want.obs.columns)
    assert_element_equal(obs["a"], want.obs["a"], "obs['a']")
    assert_element_equal(obs.b, want.obs.b, "obs.b")
    assert "obs" not in coll._core.cache  # columns answered one by one: the tables were not read whole
    view = coll[np.asarray(obs["a"] == want.obs["a"].iloc[0])]
    assert_element_equal(
        view.obs_vector("b"), want[np.asarray(want.obs["a"] == want.obs["a"].iloc[0])].obs_vector("b"), "b"
    )
    assert "obs" not in coll._core.cache
    assert_element_equal(pd.DataFrame(coll.obs), want.obs, "obs")  # the whole table, as anndata.concat's
    assert "obs" in coll._core.cache


def test_stats_equal_numpy(three):
    want = oracle(three, join="outer")
    coll = shadows.concat(three, join="outer")
    for sub, w in ((coll, want), (coll[[14, 0, 7, 3, 9]], want[[14, 0, 7, 3, 9]])):
        for axis in (0, 1):
            got = shadows.stats(sub, axis=axis, chunk_size=2)
            X = w.X.toarray() if sp.issparse(w.X) else np.asarray(w.X)
            np.testing.assert_allclose(got["sum"], X.sum(axis))
            np.testing.assert_allclose(got["var"], X.var(axis, ddof=1))
            np.testing.assert_array_equal(got["nnz"], (X != 0).sum(axis))
            np.testing.assert_array_equal(got["max"], X.max(axis))
    coll.X = coll.X * 2  # an in-memory value is reduced too
    np.testing.assert_allclose(shadows.stats(coll)["sum"], 2 * np.asarray(want.X.sum(0)).ravel())


def test_dask_chunks_lie_within_one_file(three):
    pytest.importorskip("dask")
    coll = shadows.concat(three, join="outer", array_backend="dask")
    bounds = set(np.cumsum((0, *coll.X.chunks[0])).tolist())
    assert {0, 5, 10, 15} <= bounds  # every file boundary is a chunk boundary
    assert_element_equal(sp.csr_matrix(coll.X.compute()), oracle(three, join="outer").X, "dask X")


@pytest.mark.parametrize("backend", ["polars", "pyarrow"])
def test_table_backends(three, backend):
    pytest.importorskip(backend)
    from shadows.backends import get_table_backend
    from shadows.backends.tables import parts_from_pandas

    coll = shadows.concat(three, join="outer", table_backend=backend)
    want = oracle(three, join="outer")
    for got, w in ((coll.obs, want.obs), (coll[[1, 12]].obs, want[[1, 12]].obs)):
        parts = parts_from_pandas(pd.DataFrame(w))
        parts.axis_name = "obs_names"
        expected = get_table_backend(backend).convert(parts)
        assert type(got) is type(expected)
        pd.testing.assert_frame_equal(got.to_pandas(), expected.to_pandas())  # (NaN == NaN here)
    assert_element_equal(coll.obs_vector("a"), want.obs_vector("a"), "obs_vector")


def test_scanpy_normalize_and_log1p_on_a_view(three):
    sc = pytest.importorskip("scanpy")
    coll = shadows.concat(three, join="outer")
    want = oracle(three, join="outer")
    rows = [0, 3, 6, 11, 14]
    view, wview = coll[rows], want[rows]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for v in (view, wview):
            sc.pp.normalize_total(v)
            sc.pp.log1p(v)
    assert_element_equal(view.X, wview.X, "normalized")
    assert dict(view.uns["log1p"]) == dict(wview.uns["log1p"])


# --- the fast path of a filter: rows of CSR files read into one matrix ----------------------------------------------
@pytest.mark.parametrize("fast", [True, False])
def test_filter_rows_read_into_one_matrix(tmp_path, fast, monkeypatch):
    from shadows.io.fast import scatter

    monkeypatch.setattr(scatter, "_IOV", 3)  # many calls, each of a few pieces
    monkeypatch.setattr(scatter, "_CALL_BYTES", 256)
    monkeypatch.setattr(shadows.settings, "fast_io", fast)
    rng = np.random.default_rng(5)
    paths, mems = [], []
    for i in range(3):
        X = sp.random(300, 40, density=0.3, format="csr", dtype=np.float32, random_state=i)
        a = ad.AnnData(X=X, obs=pd.DataFrame(index=[f"c{i}_{k}" for k in range(300)]))
        a.var_names = [f"g{k}" for k in range(40)]
        p = tmp_path / f"f{i}.h5ad"
        # chunked (anndata's default), contiguous, compressed: raw reads, raw reads, the reader's own path
        kw = [{}, {"chunks": None, "maxshape": None}, {"compression": "gzip"}][i]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            a.write_h5ad(p, compression=kw.get("compression"))
        if i == 1:  # rewrite X contiguous
            import h5py

            with h5py.File(p, "r+") as f:
                for k in ("data", "indices"):
                    v = f["X"][k][:]
                    del f["X"][k]
                    f["X"].create_dataset(k, data=v)
        paths.append(str(p))
        mems.append(a)
    want = ad.concat(mems)
    coll = shadows.concat(paths)
    for rows in (
        np.sort(rng.choice(900, 90, replace=False)),  # a 10 % filter
        rng.random(900) < 0.5,
        rng.choice(900, 50),  # unsorted, with repeats
        slice(250, 650),
        [],
    ):
        got = coll[rows].X
        assert_element_equal(got, want[rows].X, f"rows {rows!r:.40}")
        assert got.indices.dtype == got.indptr.dtype == np.int32


def test_scatter_reads_ranges_of_chunked_and_contiguous_datasets(tmp_path, monkeypatch):
    import h5py

    from shadows.io.fast import pread, scatter

    monkeypatch.setattr(scatter, "_GAP_BYTES", 64)
    values = np.arange(10_000, dtype=np.int64)
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f.create_dataset("contiguous", data=values)
        f.create_dataset("chunked", data=values, chunks=(333,))
    rng = np.random.default_rng(0)
    with h5py.File(tmp_path / "d.h5", "r") as f:
        for name in ("contiguous", "chunked"):
            lay = pread.layout(f[name])
            assert lay is not None
            for iov, call in ((512, 4 * 2**20), (2, 100)):
                monkeypatch.setattr(scatter, "_IOV", iov)
                monkeypatch.setattr(scatter, "_CALL_BYTES", call)
                starts = np.sort(rng.choice(9_900, 200, replace=False))
                ends = starts + rng.integers(0, 60, 200)
                out = np.empty(int((ends - starts).sum()), dtype=np.int64)
                scatter.read_ranges(lay, starts, ends, out)
                np.testing.assert_array_equal(
                    out, np.concatenate([values[a:b] for a, b in zip(starts, ends, strict=True)])
                )
            with pytest.raises(IndexError):
                scatter.read_ranges(lay, np.array([9_990]), np.array([10_001]), np.empty(11, np.int64))
