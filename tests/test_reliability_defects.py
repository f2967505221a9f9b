"""Defects found in a reliability review, each checked against what anndata does with the same file.

Every test here failed on the code before its fix: indexing with repeated names, empty masks and ``...``; empty
dense reads; truncated files; integer names; corrupt sparse matrices; lazy ``uns``; pickling pending changes; and
``clear_cache()`` racing readers in other threads.
"""

from __future__ import annotations

import collections
import copy
import json
import pickle
import subprocess
import sys
import textwrap
import threading
import tracemalloc
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import zarr
from oracle import assert_element_equal, quiet, read_oracle, write_adata
from scipy import sparse

from shadows import AnnDataShadow
from shadows.io.storage import StorageError
from shadows.spec import CorruptElementError

REPO = Path(__file__).resolve().parents[1]


def outcome(fn: Callable[[], Any]) -> tuple:
    """What an operation gives, comparable between anndata and the shadow: its values or its exception type."""
    try:
        with quiet():
            value = fn()
            if isinstance(value, ad.AnnData):
                x = value.X
                x = x.toarray() if sparse.issparse(x) else np.asarray(x)
                return ("view", value.shape, x.tolist(), list(value.obs_names), list(value.var_names))
            return ("value", np.asarray(value).tolist())
    except Exception as e:  # the type is the outcome
        return ("raises", type(e).__name__)


def same_outcome(shadow: Any, adata: ad.AnnData, fn: Callable[[Any], Any]) -> tuple:
    got, want = outcome(lambda: fn(shadow)), outcome(lambda: fn(adata))
    assert got == want, f"shadow {got} != anndata {want}"
    return got


@pytest.fixture(params=["h5ad", "zarr"])
def repeated_names(request, tmp_path) -> str:
    """3 cells × 5 genes; var names g1 and obs name c1 repeated, not next to each other."""
    X = np.arange(15, dtype=np.float32).reshape(3, 5)
    obs = pd.DataFrame({"n": [1.0, 2.0, 3.0]}, index=["c1", "c2", "c1"])
    var = pd.DataFrame({"m": np.arange(5.0)}, index=["g1", "g2", "g1", "g3", "g4"])
    with quiet():
        adata = ad.AnnData(X, obs=obs, var=var)
        adata.raw = adata
    return write_adata(adata, tmp_path / f"rep.{request.param}", 3 if request.param == "zarr" else None)


# --- 1. repeated names --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "index",
    [
        (slice(None), "g1"),  # every column of the name (anndata's get_loc gives a mask)
        (slice(None), "g2"),
        ("c1", slice(None)),
        (slice(None), ["g1", "g3"]),  # a list: pandas' get_indexer refuses repeated names
        (slice(None), ["g2", "g3"]),
        (slice(None), pd.Index(["g2"])),
        (slice(None), slice("g1", "g3")),  # a repeated name cannot bound a slice (TypeError)
        (slice(None), slice("g2", "g3")),
        (slice(None), "nope"),
    ],
)
def test_repeated_names_index_like_anndata(repeated_names, index):
    want = read_oracle(repeated_names)
    with AnnDataShadow(repeated_names) as s:
        same_outcome(s, want, lambda a: a[index])


@pytest.mark.parametrize("key", ["g1", "g2", "n"])
def test_obs_vector_of_repeated_name(repeated_names, key):
    want = read_oracle(repeated_names)
    with AnnDataShadow(repeated_names) as s:
        assert same_outcome(s, want, lambda a: a.obs_vector(key))[0] == "value"
        assert same_outcome(s, want, lambda a: a.raw.obs_vector(key) if key != "n" else 0)[0] == "value"


@pytest.mark.parametrize("key", ["c1", "c2", "m"])
def test_var_vector_of_repeated_name(repeated_names, key):
    want = read_oracle(repeated_names)
    with AnnDataShadow(repeated_names) as s:
        assert same_outcome(s, want, lambda a: a.var_vector(key))[0] == "value"


def test_vector_key_in_both_columns_and_names(tmp_path):
    """anndata refuses a key that is an obs column and a var name at once (ValueError)."""
    adata = ad.AnnData(np.ones((2, 2), np.float32), obs=pd.DataFrame({"g0": [1, 2]}, index=["a", "b"]))
    adata.var_names = ["g0", "g1"]
    path = write_adata(adata, tmp_path / "both.h5ad")
    with AnnDataShadow(path) as s:
        assert same_outcome(s, read_oracle(path), lambda a: a.obs_vector("g0")) == ("raises", "ValueError")


# --- 2. and 5.: empty boolean masks, Ellipsis ---------------------------------------------------------------------
@pytest.fixture
def small(tmp_path) -> str:
    X = np.arange(12, dtype=np.float32).reshape(3, 4)
    adata = ad.AnnData(X, obs=pd.DataFrame(index=["c1", "c2", "c3"]), var=pd.DataFrame(index=["g1", "g2", "g3", "g4"]))
    return write_adata(adata, tmp_path / "small.h5ad")


@pytest.mark.parametrize(
    "index",
    [
        np.array([], dtype=bool),  # anndata: IndexError (the mask does not match the axis)
        (slice(None), np.array([], dtype=bool)),
        (np.array([], dtype=bool), np.array([], dtype=bool)),
        pd.Series([], dtype=bool),  # anndata 0.12: an empty selection; 0.13: IndexError
        pd.Index([], dtype=bool),
        [],
        np.array([], dtype=np.int64),
        np.zeros(3, dtype=bool),
        np.array([True, False]),
    ],
    ids=lambda x: f"{type(x).__name__}{getattr(x, 'dtype', '')}",
)
def test_empty_and_wrong_masks_like_anndata(small, index):
    with AnnDataShadow(small) as s:
        same_outcome(s, read_oracle(small), lambda a: a[index])


@pytest.mark.parametrize(
    "index",
    [
        (..., 0),
        (0, ...),
        ...,
        (...,),
        (..., "g2"),
        (..., [2, 0]),
        (0, ..., 1),  # a length-3 index with one Ellipsis: the other two are obs and var
        (..., ...),  # IndexError
        (0, 1, 2),  # IndexError: no Ellipsis
        (0, ..., 1, 2),  # ValueError: three indices left
    ],
    ids=repr,
)
def test_ellipsis_like_anndata(small, index):
    with AnnDataShadow(small) as s:
        same_outcome(s, read_oracle(small), lambda a: a[index])


# --- 3. empty selections of dense matrices --------------------------------------------------------------------------
@pytest.mark.parametrize("n_vars", [15, 16, 40])
@pytest.mark.parametrize(
    "index",
    [
        lambda n: (np.array([], dtype=np.int64), np.arange(n)[::-1]),
        lambda n: (slice(0, 0), np.arange(n) % 16),
        lambda n: (np.zeros(8, dtype=bool), np.arange(1, n)),
        lambda n: (np.array([3, 1]), np.array([], dtype=np.int64)),
    ],
    ids=["no-cells-reversed", "slice0-repeats", "false-mask", "no-genes"],
)
def test_empty_view_of_dense_x(tmp_path, n_vars, index):
    """h5py cannot combine an empty axis with a list of >= 16 positions ("Dataspaces don't have hyperslab ...")."""
    adata = ad.AnnData(np.arange(8 * n_vars, dtype=np.float32).reshape(8, n_vars))
    adata.layers["L"] = adata.X.copy()
    path = write_adata(adata, tmp_path / "dense.h5ad")
    want = read_oracle(path)
    with AnnDataShadow(path) as s:
        key = index(n_vars)
        assert_element_equal(s[key].X, want[key].X, "X")
        assert_element_equal(s[key].layers["L"], want[key].layers["L"], "layers/L")


# --- 4. truncated files -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("keep", [100, 0.5, -16])
def test_truncated_file_is_reported_as_truncated(tmp_path, keep):
    path = write_adata(ad.AnnData(np.ones((200, 50), np.float32)), tmp_path / "whole.h5ad")
    data = Path(path).read_bytes()
    cut = tmp_path / "cut.h5ad"
    cut.write_bytes(data[: int(len(data) * keep) if isinstance(keep, float) else keep])
    with pytest.raises(OSError):
        read_oracle(cut)  # anndata refuses it too
    for mode in ("r", "r+"):
        with pytest.raises(StorageError) as e:
            AnnDataShadow(cut, mode=mode)
        message = str(e.value)
        assert "truncated" in message and str(cut) in message and "lock" not in message.split("(")[0]


def test_lock_conflict_is_still_reported_as_lock(tmp_path):
    """The other message containing "lock": a writer in another process holds the file."""
    path = write_adata(ad.AnnData(np.ones((3, 2), np.float32)), tmp_path / "held.h5ad")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import h5py, sys, time\nf = h5py.File({path!r}, 'r+')\nprint('open', flush=True)\nsys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "open"
        try:
            AnnDataShadow(path).close()
        except StorageError as e:
            assert "another process" in str(e) and "truncated" not in str(e), str(e)
        else:
            pytest.skip("HDF5 file locking is off here (HDF5_USE_FILE_LOCKING)")
    finally:
        holder.communicate("")


# --- 6. integer names ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("names", [[10, 11, 12], np.array([1.5, 2.5, 3.5])])
def test_integer_names_round_trip_like_anndata(tmp_path, names):
    adata = ad.AnnData(np.ones((3, 3), np.float32))
    path = write_adata(adata, tmp_path / "ints.h5ad")
    # in memory: what anndata makes of the same assignment
    want_mem = read_oracle(path)
    want_mem.var_names = names
    want_mem.obs_names = names
    with AnnDataShadow(path, mode="r+") as s:
        s.var_names = names
        s.obs_names = names
        assert_element_equal(s.var_names, want_mem.var_names, "var_names before write")
        assert_element_equal(s.obs_names, want_mem.obs_names, "obs_names before write")
        s.write(overwrite=True)
        s.reopen("r")
        want = read_oracle(path)
        assert_element_equal(s.var_names, want.var_names, "var_names after write")
        assert_element_equal(s.obs.index, want.obs.index, "obs index after write")
    with quiet(), AnnDataShadow(path) as s:
        assert_element_equal(s.obs_names, want.obs_names, "obs_names reopened")
        name = want.var_names[1]
        assert_element_equal(s[:, name].var_names, want[:, name].var_names, "name lookup")


def test_integer_index_written_by_anndata(tmp_path):
    """A pd.Index of integers assigned in anndata is kept (with a warning) and written as integers."""
    adata = ad.AnnData(np.ones((3, 2), np.float32))
    with quiet():
        adata.obs_names = pd.Index([7, 8, 9])
        adata.raw = adata
    path = tmp_path / "int_index.h5ad"
    with quiet():
        adata.write_h5ad(path)
    with h5py.File(path) as f:
        assert f["obs/_index"].dtype.kind == "i"
    want = read_oracle(path)
    with pytest.warns(ad.ImplicitModificationWarning, match="Transforming to str index"), AnnDataShadow(path) as s:
        assert_element_equal(s.obs_names, want.obs_names, "obs_names")
    with quiet(), AnnDataShadow(path) as s:
        assert_element_equal(s.obs, want.obs, "obs")
        assert_element_equal(s[[2, 0]].obs_names, want[[2, 0]].obs_names, "view obs_names")


# --- 7. corrupt sparse matrices -----------------------------------------------------------------------------------
def _replace(group: Any, name: str, value: np.ndarray) -> None:
    del group[name]
    group[name] = value


CORRUPTIONS = {
    "indptr past the end": (lambda g: g["indptr"].__setitem__(-1, 10**6), "indptr"),
    "indptr decreasing": (lambda g: g["indptr"].__setitem__(3, 0), "indptr"),
    "indptr negative": (lambda g: g["indptr"].__setitem__(0, -5), "indptr"),
    "indptr too short": (lambda g: _replace(g, "indptr", g["indptr"][:-3]), "indptr"),
    "indices float": (lambda g: _replace(g, "indices", g["indices"][:].astype(np.float64)), "indices"),
    "indices beyond the axis": (lambda g: g["indices"].__setitem__(slice(0, 5), 999), "indices"),
    "data missing": (lambda g: g.__delitem__("data"), "data"),
    "indices missing": (lambda g: g.__delitem__("indices"), "indices"),
    "data shorter than indices": (lambda g: _replace(g, "data", g["data"][:-5]), "data"),
    "shape missing": (lambda g: g.attrs.__delitem__("shape"), "shape"),
}
READS = {
    "whole": lambda s: s.X,
    "cells": lambda s: s[[1, 7, 19]].X,
    "cell range": lambda s: s[2:19].X,
    "genes": lambda s: s[:, [3, 5, 8, 11]].X,
    "obs_vector": lambda s: s.obs_vector(s.var_names[3]),
}


@pytest.mark.parametrize("read", list(READS))
@pytest.mark.parametrize("fault", list(CORRUPTIONS))
def test_corrupt_sparse_matrix_is_named(tmp_path, fault, read):
    adata = ad.AnnData(sparse.random(20, 30, density=0.2, format="csr", dtype=np.float32, random_state=0))
    path = write_adata(adata, tmp_path / "sp.h5ad")
    corrupt, word = CORRUPTIONS[fault]
    with h5py.File(path, "r+") as f:
        corrupt(f["X"])
    with AnnDataShadow(path) as s:
        try:
            READS[read](s)
        except CorruptElementError as e:
            message = str(e)
            assert path in message and "'/X'" in message and word in message, message
            return
    # a read that never touches the damaged part succeeds; indices beyond the axis are found by scans for many
    # genes only (a whole read leaves them to scipy, as anndata does)
    harmless = {
        "indptr past the end": {"cell range"},
        "indptr decreasing": {"cells"},
        "indptr negative": {"cells", "cell range"},
        "indices beyond the axis": {"whole", "cells", "cell range", "obs_vector"},
    }
    assert read in harmless.get(fault, ()), f"{fault}: {read} read gave no error"


def test_corrupt_sparse_zarr_names_the_store(tmp_path):
    adata = ad.AnnData(sparse.random(20, 30, density=0.2, format="csr", dtype=np.float32, random_state=0))
    path = write_adata(adata, tmp_path / "sp.zarr", 3)
    zarr.open_group(path, mode="r+")["X/indptr"][-1] = 10**6
    for read in (lambda s: s.X, lambda s: s[:, [1, 2]].X):
        with AnnDataShadow(path) as s, pytest.raises(CorruptElementError, match=r"sp\.zarr' at '/X'.*indptr"):
            read(s)


# --- 8. lazy nested uns -------------------------------------------------------------------------------------------
@pytest.fixture
def nested_uns(tmp_path) -> str:
    adata = ad.AnnData(np.ones((3, 2), np.float32))
    adata.uns["a"] = {"b": {"x": 1, "y": "text", "z": np.arange(3)}, "big": np.zeros(5_000_000), "d": [1, 2]}
    adata.uns["neighbors"] = {"params": {"n_neighbors": 15, "method": "umap"}, "connectivities_key": "c"}
    adata.uns["flat"] = "value"
    return write_adata(adata, tmp_path / "uns.h5ad")


def test_nested_uns_reads_only_the_subtree_asked_for(nested_uns):
    """``uns["a"]["b"]`` next to a 40 MB array reads kilobytes, not the array."""
    want = read_oracle(nested_uns)
    with AnnDataShadow(nested_uns) as s:
        tracemalloc.start()
        try:
            b = s.uns["a"]["b"]
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 2_000_000, f"reading uns['a']['b'] allocated {peak / 1e6:.1f} MB"
        assert_element_equal(b, want.uns["a"]["b"], "uns/a/b")
        assert_element_equal(s.uns["a"]["big"], want.uns["a"]["big"], "uns/a/big")


def test_nested_uns_behaves_as_anndata_dict(nested_uns):
    want = read_oracle(nested_uns)
    with AnnDataShadow(nested_uns) as s:
        for key in ("a", "neighbors"):
            got, exp = s.uns[key], want.uns[key]
            assert isinstance(got, dict) and isinstance(got, Mapping)
            assert list(got.keys()) == list(exp.keys()) and len(got) == len(exp)
            for copied in (dict(got), {**got}, copy.copy(got), copy.deepcopy(got), got.copy(), got | {}, {} | got):
                assert type(copied) is dict
                assert_element_equal(copied, exp, f"copy of uns/{key}")
            assert_element_equal(pickle.loads(pickle.dumps(got)), exp, f"pickled uns/{key}")
            assert_element_equal(dict(got.items()), exp, f"items of uns/{key}")
            assert [dict if isinstance(v, dict) else type(v) for v in got.values()] == [type(v) for v in exp.values()]
            assert "<unread>" not in repr(got)
        assert s.uns["neighbors"] == want.uns["neighbors"] and not s.uns["neighbors"] != want.uns["neighbors"]
        assert s.uns["neighbors"]["params"]["n_neighbors"] == 15  # as scanpy reads it
        assert s.uns["neighbors"].get("params") == {"method": "umap", "n_neighbors": 15}
        assert s.uns["neighbors"].get("missing", 3) == 3
        assert json.loads(json.dumps(s.uns["neighbors"], default=int)) == {
            "connectivities_key": "c",
            "params": {"method": "umap", "n_neighbors": 15},
        }
        s.close()  # values not read yet stay readable, as cached values do
        assert s.uns["a"]["d"].tolist() == [1, 2]


def test_nested_uns_changes_are_written(nested_uns):
    with AnnDataShadow(nested_uns, mode="r+") as s:
        nb = s.uns["neighbors"]
        nb["params"]["n_neighbors"] = 30
        assert nb.setdefault("connectivities_key", "x") == "c"
        assert nb.pop("connectivities_key") == "c"
        s.uns["a"]["b"]["x"] = 2
        s.write(overwrite=True)
    want = read_oracle(nested_uns)
    assert want.uns["neighbors"] == {"params": {"method": "umap", "n_neighbors": 30}}
    assert want.uns["a"]["b"]["x"] == 2 and want.uns["a"]["big"].shape == (5_000_000,)


# --- 9. pickling pending changes ----------------------------------------------------------------------------------
def _change(s: Any) -> Any:
    """The same changes, on a shadow or on the in-memory oracle."""
    s.obsm["new"] = np.arange(60).reshape(30, 2)
    del s.layers["L"]
    s.obs_names = [f"x{i}" for i in range(30)]
    s.obs["added"] = np.linspace(0, 1, 30)
    s.uns["u"]["b"] = 2
    s.uns["v"] = {"w": np.arange(3)}
    return s


def _changed_shadow(path: str) -> AnnDataShadow:
    return _change(AnnDataShadow(path))


def _summary(s: Any) -> dict:
    x = s.X.toarray() if sparse.issparse(s.X) else np.asarray(s.X)
    return {
        "shape": list(s.shape),
        "is_view": bool(s.is_view),
        "obs_names": list(s.obs_names),
        "obs": {c: np.asarray(s.obs[c]).tolist() for c in s.obs.columns},
        "obsm": {k: np.asarray(v).tolist() for k, v in s.obsm.items()},
        "layers": sorted(k for k in s.layers.keys() if k is not None),  # anndata 0.13 lists X as layers[None]
        "uns": {k: repr(s.uns[k]) for k in sorted(s.uns.keys())},
        "X": x.tolist(),
    }


@pytest.fixture
def pickle_file(tmp_path) -> str:
    adata = ad.AnnData(sparse.random(30, 10, density=0.3, format="csr", dtype=np.float32, random_state=0))
    adata.obs["c"] = np.arange(30)
    adata.obsm["P"] = np.ones((30, 3))
    adata.layers["L"] = adata.X.copy()
    adata.uns["u"] = {"a": 1}
    return write_adata(adata, tmp_path / "p.h5ad")


@pytest.mark.parametrize("how", ["changed", "subset in place", "view of changed", "subset of view"])
def test_pickle_keeps_pending_changes(pickle_file, tmp_path, how):
    s = _changed_shadow(pickle_file)
    a = _change(read_oracle(pickle_file))  # the oracle: the same changes on the in-memory AnnData, pickled
    keep = np.arange(30) % 3 == 0
    if how == "subset in place":
        s._inplace_subset_obs(keep)
        a._inplace_subset_obs(keep)
    elif how == "view of changed":
        s, a = s[keep, 2:8], a[keep, 2:8]
    elif how == "subset of view":
        s, a = s[5:25], a[5:25]
        with quiet():
            s._inplace_subset_var([1, 3, 4])
            a._inplace_subset_var([1, 3, 4])
    want = _summary(pickle.loads(pickle.dumps(a)))
    with quiet():
        assert _summary(pickle.loads(pickle.dumps(s))) == want
    # and in a fresh interpreter
    blob = tmp_path / "shadow.pkl"
    blob.write_bytes(pickle.dumps(s))
    code = textwrap.dedent(
        f"""
        import json, pickle, sys, warnings
        sys.path[:0] = [{str(REPO)!r}, {str(REPO / "tests")!r}]
        warnings.simplefilter("ignore")
        from test_reliability_defects import _summary
        s = pickle.loads(open({str(blob)!r}, "rb").read())
        print(json.dumps(_summary(s)))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert json.loads(out.stdout) == json.loads(json.dumps(want))


def test_pickle_refuses_an_unpicklable_change_by_name(pickle_file):
    s = AnnDataShadow(pickle_file)
    s.uns["callback"] = {"f": lambda x: x}
    with pytest.raises(pickle.PicklingError, match=r"p\.h5ad'.*uns\['callback'\]"):
        pickle.dumps(s)


# --- 10. clear_cache racing readers -------------------------------------------------------------------------------
def run_clear_cache_race(path: str, n_tasks: int) -> collections.Counter:
    """Readers of obs/obsm/X/names/uns in 4 threads while another thread calls clear_cache() without pause."""
    s = AnnDataShadow(path)
    reads = [
        lambda: s.obs.shape == (200, 40),
        lambda: s.obsm["P"].shape == (200, 2),
        lambda: s.X.shape == (200, 5),
        lambda: len(s.obs_names) == 200,
        lambda: s.obs_vector("c3").shape == (200,),
        lambda: s.uns["u"]["a"] == 1,
        lambda: s[:10].obs.shape == (10, 40),
    ]
    errors: collections.Counter = collections.Counter()

    def task(i: int) -> None:
        try:
            assert reads[i % len(reads)]()
        except Exception as e:
            errors[f"{type(e).__name__}: {e}"[:100]] += 1

    stop = threading.Event()

    def clear() -> None:
        while not stop.is_set():
            s.clear_cache()

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # threads switch often: the windows between two dict operations get hit
    clearer = threading.Thread(target=clear)
    clearer.start()
    try:
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(task, range(n_tasks)))
    finally:
        stop.set()
        clearer.join()
        sys.setswitchinterval(old)
        s.close()
    return errors


@pytest.fixture
def wide_obs(tmp_path) -> str:
    # 40 columns: fingerprinting them after a read keeps a reader busy between caching obs and handing it out
    obs = pd.DataFrame({f"c{i}": np.arange(200.0) for i in range(40)}, index=[f"o{i}" for i in range(200)])
    adata = ad.AnnData(np.ones((200, 5), np.float32), obs=obs)
    adata.obsm["P"] = np.ones((200, 2))
    adata.uns["u"] = {"a": 1}
    return write_adata(adata, tmp_path / "wide.h5ad")


def test_clear_cache_while_reading(wide_obs):
    errors = run_clear_cache_race(wide_obs, 1000)
    assert not errors, dict(errors)


@pytest.mark.slow
def test_clear_cache_while_reading_long(wide_obs):
    errors = run_clear_cache_race(wide_obs, 8000)
    assert not errors, dict(errors)


def test_clear_cache_keeps_renamed_names(pickle_file):
    """A renamed axis is a pending change, not a cache: clear_cache() keeps it and views see it (as in anndata)."""
    with AnnDataShadow(pickle_file) as s:
        s.obs_names = [f"x{i}" for i in range(30)]
        s.clear_cache()
        assert list(s.obs_names[:2]) == ["x0", "x1"]
        assert list(s[3:5].obs_names) == ["x3", "x4"]
