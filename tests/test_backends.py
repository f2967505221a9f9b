"""Array backends (jax, torch, dask) and table backends (polars, pyarrow) against the numpy/pandas values.

Every array element (X, layers, obsm, varm, obsp, varp, raw.X, arrays in uns) of h5ad and zarr files with dense,
CSR and CSC X is compared with what the numpy backend hands out, for the whole file and for views; so is every
table (obs, var, raw.var, dataframes in obsm and uns) with the pandas backend's.  The numpy/pandas values are
themselves checked against anndata by the differential tests.
"""

from __future__ import annotations

import importlib.util
import io
import pickle
import shutil
import sys
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from oracle import write_adata

from shadows import AnnDataShadow

HAS = {name: importlib.util.find_spec(name) is not None for name in ("torch", "jax", "dask", "polars", "pyarrow")}


def _needs(name: str):
    return pytest.mark.skipif(not HAS[name], reason=f"{name} is not installed")


ARRAY_BACKENDS = [pytest.param(b, marks=_needs(b)) for b in ("jax", "torch", "dask")]
TABLE_BACKENDS = [pytest.param(b, marks=_needs(b)) for b in ("polars", "pyarrow")]
X_KINDS = ("dense", "csr", "csc")
SUFFIXES = ("h5ad", "zarr")
VIEWS = {
    "all": None,
    "fancy": (np.array([5, 1, 1, 17, 30, 39]), slice(2, 9)),
    "mask": (np.arange(40) % 3 == 0, np.array([11, 0, 4])),
}


def make_adata(x_kind: str, seed: int = 0) -> ad.AnnData:
    """A small AnnData with every element kind; float32 values, so that jax without x64 keeps them exactly."""
    rng = np.random.default_rng(seed)
    n_obs, n_vars = 40, 12
    dense = (rng.poisson(0.7, size=(n_obs, n_vars)) * rng.random((n_obs, n_vars))).astype(np.float32)
    X = {"dense": dense, "csr": sp.csr_matrix(dense), "csc": sp.csc_matrix(dense)}[x_kind]
    obs = pd.DataFrame(
        {
            "n": rng.integers(0, 50, n_obs).astype(np.int32),
            "score": rng.normal(size=n_obs),
            "flag": rng.random(n_obs) > 0.5,
            "kind": pd.Categorical(rng.choice(["b", "a", "c"], n_obs), categories=["c", "a", "b"]),
            "level": pd.Categorical(rng.choice(["lo", "hi"], n_obs), categories=["lo", "hi"], ordered=True),
            "cluster": pd.Categorical(rng.choice([3, 1, 2], n_obs)),
            "maybe": pd.array(np.where(rng.random(n_obs) > 0.7, None, rng.integers(0, 9, n_obs)), dtype="Int64"),
            "ok": pd.array(np.where(rng.random(n_obs) > 0.7, None, rng.random(n_obs) > 0.5), dtype="boolean"),
            "name": [f"s{i % 7}" for i in range(n_obs)],
        },
        index=pd.Index([f"cell{i}" for i in range(n_obs)], name="cell_id"),
    )
    var = pd.DataFrame(
        {"symbol": [f"G{i}" for i in range(n_vars)], "mean": rng.random(n_vars)},
        index=[f"gene{i}" for i in range(n_vars)],
    )
    a = ad.AnnData(X=X, obs=obs, var=var)
    a.layers["counts"] = sp.csr_matrix((dense * 3).round())
    a.layers["plus"] = dense + 1
    a.obsm["X_pca"] = rng.normal(size=(n_obs, 4)).astype(np.float32)
    a.obsm["sp"] = sp.random(n_obs, 5, density=0.3, format="csr", random_state=seed, dtype=np.float32)
    a.obsm["df"] = pd.DataFrame(
        {"u": rng.random(n_obs).astype(np.float32), "c": pd.Categorical(rng.choice(["x", "y"], n_obs))},
        index=obs.index,
    )
    a.varm["loadings"] = rng.normal(size=(n_vars, 3)).astype(np.float32)
    a.obsp["graph"] = sp.random(n_obs, n_obs, density=0.1, format="csr", random_state=seed, dtype=np.float32)
    a.varp["corr"] = rng.random((n_vars, n_vars)).astype(np.float32)
    a.uns["vec"] = np.arange(6, dtype=np.int32)
    a.uns["params"] = {"k": 3, "arr": np.linspace(0, 1, 5).astype(np.float32), "names": np.array(["p", "q"])}
    a.uns["table"] = pd.DataFrame({"a": np.array([1, 2, 3], dtype=np.int32), "b": ["x", "y", "z"]})
    a.raw = a.copy()
    return a


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("backends")
    out = {}
    for kind in X_KINDS:
        a = make_adata(kind)
        for suffix in SUFFIXES:
            out[(suffix, kind)] = write_adata(a, d / f"{kind}.{suffix}")
    return out


def _open(path, view=None, **kw) -> AnnDataShadow:
    s = AnnDataShadow(path, **kw)
    return s[view] if view is not None else s


def _array_elements(s: AnnDataShadow) -> dict:
    """Every array element of a shadow, by name."""
    out = {"X": s.X, "raw.X": s.raw.X, "uns/vec": s.uns["vec"], "uns/params/arr": s.uns["params"]["arr"]}
    for group in ("layers", "obsm", "varm", "obsp", "varp"):
        for k in getattr(s, group).keys():
            if group == "obsm" and k == "df":
                continue
            out[f"{group}/{k}"] = getattr(s, group)[k]
    return out


# --- arrays ------------------------------------------------------------------------------------------------------


def as_numpy(value, backend: str):
    """A backend's value as numpy (dense) or scipy (sparse), checking its type on the way."""
    if backend == "torch":
        import torch

        assert isinstance(value, torch.Tensor), type(value)
        if value.layout in (torch.sparse_csr, torch.sparse_csc):
            csr = value.layout == torch.sparse_csr
            ptr = value.crow_indices() if csr else value.ccol_indices()
            idx = value.col_indices() if csr else value.row_indices()
            cls = sp.csr_matrix if csr else sp.csc_matrix
            return cls((value.values().numpy(), idx.numpy(), ptr.numpy()), shape=tuple(value.shape))
        assert value.layout == torch.strided, value.layout
        return value.numpy()
    if backend == "jax":
        import jax
        from jax.experimental import sparse as jsparse

        if isinstance(value, jsparse.BCSR):
            m = (np.asarray(value.data), np.asarray(value.indices), np.asarray(value.indptr))
            return sp.csr_matrix(m, shape=value.shape)
        if isinstance(value, jsparse.BCOO):
            idx = np.asarray(value.indices)
            return sp.coo_matrix((np.asarray(value.data), (idx[:, 0], idx[:, 1])), shape=value.shape)
        assert isinstance(value, jax.Array), type(value)
        return np.asarray(value)
    if backend == "dask":
        import dask.array as da

        assert isinstance(value, da.Array), type(value)
        return value.compute(scheduler="sync")  # the threaded scheduler runs in the dask-specific tests
    raise AssertionError(backend)


def assert_same_array(got, want, backend: str, what: str) -> None:
    value = as_numpy(got, backend)
    if sp.issparse(want):
        assert sp.issparse(value), f"{what}: {backend} value of a sparse element is dense"
        if backend == "jax":  # CSR stays compressed (BCSR); CSC has no jax format and becomes BCOO
            assert value.format == ("csr" if want.format == "csr" else "coo"), f"{what}: {value.format}"
        elif backend == "dask" and want.format == "csc":  # row blocks of CSR chunks (backends.dask.CSC_CHUNKS)
            assert value.format == "csr", f"{what}: {value.format}"
        else:
            assert value.format == want.format, f"{what}: format {value.format} != {want.format}"
        assert value.shape == want.shape, f"{what}: shape {value.shape} != {want.shape}"
        np.testing.assert_array_equal(value.toarray(), want.toarray(), err_msg=what)
    else:
        assert isinstance(value, np.ndarray), f"{what}: {type(value)}"
        assert value.shape == want.shape, f"{what}: shape {value.shape} != {want.shape}"
        np.testing.assert_array_equal(value, want, err_msg=what)
    assert np.dtype(value.dtype) == want.dtype, f"{what}: dtype {value.dtype} != {want.dtype}"


@pytest.mark.parametrize("view", list(VIEWS), ids=list(VIEWS))
@pytest.mark.parametrize("kind", X_KINDS)
@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize("backend", ARRAY_BACKENDS)
def test_array_backend_equals_numpy(files, backend, suffix, kind, view):
    path = files[(suffix, kind)]
    want = _array_elements(_open(path, VIEWS[view]))
    s = _open(path, VIEWS[view], array_backend=backend)
    got = _array_elements(s)
    assert set(got) == set(want)
    for name in want:
        assert_same_array(got[name], want[name], backend, f"{backend} {suffix} {kind} X {view} view: {name}")
    # non-numeric arrays stay numpy; the cache holds the converted values (read once)
    assert s.uns["params"]["names"].dtype.kind in "OUT"
    assert s.obsm["X_pca"] is s.obsm["X_pca"]


# --- torch and jax specifics -------------------------------------------------------------------------------------


@_needs("torch")
def test_torch_shares_the_buffers_read():
    import torch

    from shadows.backends.arrays import _torch_convert

    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    t = _torch_convert(a)
    assert np.shares_memory(t.numpy(), a)  # from_numpy: no copy
    m = sp.csr_matrix(a)
    m.indptr = m.indptr.astype(np.int64)  # anndata often stores int64 indptr with int32 indices
    t = _torch_convert(m)
    assert t.layout == torch.sparse_csr
    assert np.shares_memory(t.values().numpy(), m.data) and np.shares_memory(t.col_indices().numpy(), m.indices)
    assert t.crow_indices().dtype == torch.int32  # only the short indptr was cast
    np.testing.assert_array_equal(t.toarray(), a)  # scipy-style densifying, as code written for scipy expects
    buffer = io.BytesIO()
    torch.save(t, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)  # saved as a plain sparse tensor: no shadows object inside
    assert loaded.layout == torch.sparse_csr and not hasattr(loaded, "toarray")
    np.testing.assert_array_equal(loaded.to_dense().numpy(), a)
    c = _torch_convert(sp.csc_matrix(a))
    assert c.layout == torch.sparse_csc
    np.testing.assert_array_equal(c.to_dense().numpy(), a)
    big_endian = a.astype(">f4")
    np.testing.assert_array_equal(_torch_convert(big_endian).numpy(), a)
    strings = np.array(["a", "b"], dtype=object)
    assert _torch_convert(strings) is strings


@_needs("torch")
def test_torch_release_frees_device_storage_only():
    import torch

    from shadows.backends.arrays import _torch_release

    # torch's "meta" device stands in for a GPU: release must free storage off the CPU and leave CPU tensors alone
    on_device = torch.empty(4, 3, device="meta")
    ptr, idx, val = torch.tensor([0, 1]), torch.tensor([0]), torch.tensor([1.0])
    sparse_on_device = torch.sparse_csr_tensor(ptr, idx, val, (1, 1), check_invariants=False)
    sparse_on_device = sparse_on_device.to("meta")
    on_cpu = torch.ones(3)
    _torch_release({"uns": {"a": on_device}, "list": [sparse_on_device, on_cpu], "other": "text"})
    assert on_device.untyped_storage().nbytes() == 0
    assert on_cpu.untyped_storage().nbytes() == 12 and on_cpu.sum().item() == 3


@_needs("jax")
def test_jax_float64_follows_x64_setting(tmp_path):
    import jax

    a = ad.AnnData(X=np.random.default_rng(1).random((6, 3)))  # float64
    path = write_adata(a, tmp_path / "f64.h5ad")
    s = AnnDataShadow(path, array_backend="jax")
    if jax.config.jax_enable_x64:
        assert s.X.dtype == np.float64
        np.testing.assert_array_equal(np.asarray(s.X), a.X)
    else:
        with pytest.warns(UserWarning, match="jax_enable_x64"):
            x = s.X
        assert x.dtype == np.float32
        np.testing.assert_allclose(np.asarray(x), a.X, rtol=1e-6)


@_needs("jax")
def test_jax_release_frees_accelerator_buffers_on_clear_cache(files, monkeypatch):
    from shadows.backends import arrays

    s = AnnDataShadow(files[("h5ad", "csr")], array_backend="jax")
    dense, sparse, nested = s.obsm["X_pca"], s.X, s.uns["params"]["arr"]
    s.clear_cache()  # on the CPU: only the cache's references go, values handed out stay usable
    assert not dense.is_deleted() and not sparse.data.is_deleted()
    np.asarray(dense)
    monkeypatch.setattr(arrays, "_on_accelerator", lambda a: True)  # as if these lived on a GPU
    dense, sparse, nested = s.obsm["X_pca"], s.X, s.uns["params"]["arr"]
    s.clear_cache()
    assert dense.is_deleted() and sparse.data.is_deleted() and sparse.indptr.is_deleted() and nested.is_deleted()
    assert not s.obsm["X_pca"].is_deleted()  # read again after clear_cache


# --- dask specifics ----------------------------------------------------------------------------------------------


@_needs("dask")
@pytest.mark.parametrize("kind", (*X_KINDS, "csc-columns"))
def test_dask_chunks_along_stored_major_axis(files, kind, monkeypatch, tmp_path):
    from shadows.backends import dask as sdask

    monkeypatch.setattr(sdask, "DASK_CHUNKS", 7)
    if kind == "csc-columns":  # the stored major axis; by default CSC gives row blocks of CSR chunks (scanpy's)
        monkeypatch.setattr(sdask, "CSC_CHUNKS", "columns")
    kind, columns = kind.split("-")[0], kind == "csc-columns"
    s = AnnDataShadow(files[("zarr", kind)], array_backend="dask")
    x = s.X
    major = 1 if columns else 0
    n = x.shape[major]
    assert x.chunks[major] == tuple(min(7, n - i) for i in range(0, n, 7))
    assert len(x.chunks[1 - major]) == 1  # a chunk spans the whole minor axis: one contiguous read
    if kind != "dense":
        assert isinstance(x._meta, sp.spmatrix) and x._meta.format == ("csr" if major == 0 else "csc")
    ref = AnnDataShadow(files[("zarr", kind)]).X
    for axis in (0, 1, None):  # numpy's reductions on scipy chunks (keepdims), over several chunks
        for red in ("sum", "mean", "max", "min"):
            got = np.asarray(getattr(x, red)(axis=axis).compute())
            want = getattr(ref, red)(axis=axis)
            want = want.toarray() if sp.issparse(want) else np.asarray(want)
            np.testing.assert_allclose(got.ravel(), want.ravel(), rtol=1e-6, err_msg=f"{red}(axis={axis})")
    computed = x.compute()
    want_type = sp.csr_matrix if kind == "csc" and major == 0 else type(ref)  # a CSC file's row blocks are CSR
    assert type(computed) is want_type  # plain scipy / numpy again: anndata can write it
    ad.AnnData(X=x[:5].compute()).write_h5ad(tmp_path / "sub.h5ad")


@_needs("dask")
def test_dask_auto_chunks_follow_dask_chunk_size(files):
    import dask

    with dask.config.set({"array.chunk-size": "480B"}):
        x = AnnDataShadow(files[("h5ad", "dense")], array_backend="dask").X
    assert x.chunks[0][0] == 480 // (12 * 4)  # rows of 12 float32 values
    with pytest.raises(ValueError, match="positive int"):
        from shadows.backends.dask import dask_backend

        dask_backend(chunks=0).convert(AnnDataShadow(files[("h5ad", "dense")], lazy=True).X.source)


@_needs("dask")
def test_dask_reads_lazily_and_pickles_without_handles(files, tmp_path):
    path = tmp_path / "moved.zarr"
    shutil.copytree(files[("zarr", "csr")], path)
    s = AnnDataShadow(path, array_backend="dask")[np.array([3, 0, 9, 9]), 2:7]
    x, layer = s.X, s.layers["plus"]
    s.close()
    graph = pickle.dumps(x)  # the graph holds the path, key and selection, never an open handle
    assert str(path).encode() in graph
    away = tmp_path / "away.zarr"
    path.rename(away)
    with pytest.raises(Exception):  # noqa: B017 - nothing was read yet: computing needs the file
        x.compute()
    away.rename(path)
    want = AnnDataShadow(files[("zarr", "csr")])[np.array([3, 0, 9, 9]), 2:7]
    np.testing.assert_array_equal(pickle.loads(graph).compute().toarray(), want.X.toarray())
    np.testing.assert_array_equal(layer.compute(), want.layers["plus"])


@_needs("dask")
def test_dask_view_graph_reads_only_the_selection(files):
    from shadows.spec.lazy_array import ElementSource

    s = AnnDataShadow(files[("h5ad", "csr")], array_backend="dask")
    v = s[10:20, [1, 3]]
    x = v.X
    assert x.shape == (10, 2)
    # the graph's data node holds the reader; dask may wrap it (DataNode.value)
    sources = [getattr(getattr(val, "value", val), "source", None) for val in dict(x.__dask_graph__()).values()]
    sources = [src for src in sources if isinstance(src, ElementSource)]
    assert sources and all(src.sel[0] == slice(10, 20, 1) for src in sources), sources
    assert all(list(src.sel[1]) == [1, 3] for src in sources)


@_needs("dask")
@pytest.mark.skipif(not importlib.util.find_spec("distributed"), reason="dask.distributed is not installed")
def test_dask_on_a_cluster_of_worker_processes(files):
    from dask.distributed import Client, LocalCluster

    with (
        warnings.catch_warnings(),
        LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None) as cluster,
        Client(cluster),
    ):
        warnings.simplefilter("ignore")
        for key in (("zarr", "csr"), ("h5ad", "csc")):
            s = AnnDataShadow(files[key], array_backend="dask")
            got = s.X.sum(axis=0).compute()
            want = AnnDataShadow(files[key]).X.sum(axis=0)
            np.testing.assert_allclose(np.ravel(got), np.ravel(np.asarray(want)), rtol=1e-6, err_msg=str(key))


# --- tables ------------------------------------------------------------------------------------------------------


def _tables(s: AnnDataShadow) -> dict:
    return {"obs": s.obs, "var": s.var, "raw.var": s.raw.var, "obsm/df": s.obsm["df"], "uns/table": s.uns["table"]}


# a stored index name wins (obsm/df keeps obs.index.name); else obs_names/var_names by axis, else "index"
INDEX_COLUMNS = {"obs": "cell_id", "var": "var_names", "raw.var": "var_names", "obsm/df": "cell_id"}


def table_columns(table, backend: str) -> dict:
    if backend == "polars":
        import polars as pl

        assert isinstance(table, pl.DataFrame), type(table)
        return {c: table[c] for c in table.columns}
    import pyarrow as pa

    assert isinstance(table, pa.Table), type(table)
    return {c: table.column(c).combine_chunks() for c in table.column_names}


def assert_same_column(got, want: pd.Series, backend: str, what: str) -> None:
    values = got.to_list() if backend == "polars" else got.to_pylist()
    assert len(values) == len(want), f"{what}: {len(values)} rows != {len(want)}"
    dtype = want.dtype
    if isinstance(dtype, pd.CategoricalDtype):
        cats = list(dtype.categories)
        if backend == "polars":
            if all(isinstance(c, str) for c in cats):
                assert list(got.dtype.categories) == cats, f"{what}: enum {got.dtype} != categories {cats}"
            else:  # polars enums hold strings: non-string categories are a column of values
                assert got.dtype.is_numeric(), f"{what}: {got.dtype}"
        else:
            assert got.type.ordered == dtype.ordered, what
            assert got.dictionary.to_pylist() == cats, f"{what}: dictionary {got.dictionary} != {cats}"
    expected = [None if pd.isna(v) else v for v in want.astype(object)]
    assert values == expected, f"{what}: {values} != {expected}"


@pytest.mark.parametrize("view", list(VIEWS), ids=list(VIEWS))
@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize("backend", TABLE_BACKENDS)
def test_table_backend_equals_pandas(files, backend, suffix, view):
    path = files[(suffix, "csr")]
    want = _tables(_open(path, VIEWS[view]))
    got = _tables(_open(path, VIEWS[view], table_backend=backend))
    for name, df in want.items():
        cols = table_columns(got[name], backend)
        index_col = INDEX_COLUMNS.get(name, "index")
        assert list(cols) == [index_col] + [str(c) for c in df.columns], f"{name}: {list(cols)}"
        assert_same_column(cols[index_col], df.index.to_series(), backend, f"{name} index")
        for c in df.columns:
            assert_same_column(cols[str(c)], df[c], backend, f"{backend} {suffix} {view} {name}[{c!r}]")


@pytest.mark.parametrize("backend", TABLE_BACKENDS)
def test_table_index_column_name_and_keys(tmp_path, backend):
    a = ad.AnnData(
        obs=pd.DataFrame({"obs_names": ["x", "y"], "v": [1.0, 2.0]}, index=["a", "b"]),
        var=pd.DataFrame(index=["g"]),
    )
    a.uns["nested"] = {"df": pd.DataFrame({"q": [1, 2]})}
    path = write_adata(a, tmp_path / "names.h5ad")
    s = AnnDataShadow(path, table_backend=backend)
    cols = table_columns(s.obs, backend)
    assert list(cols) == ["obs_names_", "obs_names", "v"]  # the index column never takes a column's name
    assert s.obs_keys() == ["obs_names", "v"]  # the stored columns, not the index column
    assert "obs_names_" not in repr(s)
    assert list(table_columns(s.uns["nested"]["df"], backend)) == ["index", "q"]  # tables nested in uns too
    if backend == "pyarrow":
        assert s.obs.schema.metadata[b"shadows.spec.selection"] == b"obs_names_"


@pytest.mark.parametrize("backend", [*ARRAY_BACKENDS, *TABLE_BACKENDS])
def test_missing_library_raises_import_error_naming_the_extra(files, backend, monkeypatch):
    from shadows import backends

    install = {"jax": "shadows[jax]", "torch": "shadows[torch]", "dask": "shadows[dask]", "pyarrow": "shadows[arrow]"}
    is_array = backend in backends._LAZY_ARRAY
    monkeypatch.delitem(backends._ARRAY if is_array else backends._TABLE, backend, raising=False)  # not loaded yet
    monkeypatch.setitem(sys.modules, backend, None)  # `import <backend>` fails, as if it were not installed
    monkeypatch.delitem(sys.modules, "shadows.backends.dask", raising=False)  # imports dask at its top
    s = AnnDataShadow(files[("h5ad", "dense")], **{"array_backend" if is_array else "table_backend": backend})
    message = f"pip install {install.get(backend, 'polars')}".replace("[", r"\[").replace("]", r"\]")
    with pytest.raises(ImportError, match=message):
        s.obsm["X_pca"] if is_array else s.obs
