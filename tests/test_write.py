"""Writing back (issue #8): pending changes pushed into the file the shadow is open on, read back by anndata/mudata.

Every check reads the result with the installed anndata (or mudata), never with shadows alone.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from hypothesis import given
from hypothesis import strategies as st
from oracle import STORE_FORMATS, assert_element_equal, quiet, read_oracle, store_path, write_adata

import shadows
from shadows import AnnDataShadow
from shadows.io.storage import StorageError

N_OBS, N_VARS = 30, 12


def small(seed: int = 0) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    X = sp.random(N_OBS, N_VARS, density=0.3, format="csr", random_state=seed, dtype=np.float32)
    obs = pd.DataFrame(
        {"group": pd.Categorical(rng.choice(["a", "b", "c"], N_OBS)), "score": rng.normal(size=N_OBS)},
        index=[f"c{i}" for i in range(N_OBS)],
    )
    var = pd.DataFrame({"mean": rng.random(N_VARS)}, index=[f"g{i}" for i in range(N_VARS)])
    a = ad.AnnData(X=X, obs=obs, var=var)
    a.obsm["X_pca"] = rng.normal(size=(N_OBS, 4)).astype(np.float32)
    a.layers["dense"] = X.toarray()
    a.obsp["graph"] = sp.random(N_OBS, N_OBS, density=0.1, format="csr", random_state=seed)
    a.uns["params"] = {"k": 3, "nested": {"names": np.array(["x", "y"], dtype=object)}}
    return a


def digest(path: Path) -> str:
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.relative_to(path.parent)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def templates(tmp_path_factory) -> dict:
    """``small()`` written once per format by anndata; each test works on its own copy (zarr writes are slow)."""
    d = tmp_path_factory.mktemp("templates")
    return {f: Path(write_adata(small(), store_path(d, f[0], f[1]), zarr_format=f[1])) for f in STORE_FORMATS}


def fresh(templates: dict, fmt: tuple, directory: Path) -> Path:
    src = templates[fmt]
    dst = Path(directory) / src.name
    shutil.copytree(src, dst) if src.is_dir() else shutil.copyfile(src, dst)
    return dst


@pytest.fixture(params=STORE_FORMATS, ids=lambda f: f"{f[0]}{f[1] or ''}")
def path(request, templates, tmp_path) -> Path:
    return fresh(templates, request.param, tmp_path)


def additions(rng: np.random.Generator) -> dict:
    """One value of every element kind, keyed by (group, key)."""
    return {
        ("obsm", "dense"): rng.normal(size=(N_OBS, 3)).astype(np.float32),
        ("obsm", "frame"): pd.DataFrame(
            {"u": rng.random(N_OBS), "v": np.arange(N_OBS)}, index=[f"c{i}" for i in range(N_OBS)]
        ),
        ("varm", "loadings"): rng.normal(size=(N_VARS, 2)),
        ("obsp", "connectivities"): sp.random(N_OBS, N_OBS, density=0.1, format="csr", random_state=2),
        ("varp", "corr"): sp.random(N_VARS, N_VARS, density=0.2, format="csc", random_state=3),
        ("layers", "counts"): sp.random(N_OBS, N_VARS, density=0.2, format="csc", random_state=4, dtype=np.float64),
        ("layers", "ints"): rng.integers(0, 9, size=(N_OBS, N_VARS)).astype(np.int32),
        ("uns", "leiden"): {
            "params": {"resolution": 1.0, "flavor": "igraph", "seeds": np.arange(3)},
            "n": np.int64(7),
            "names": np.array(["p", "q"], dtype=object),
        },
    }


# --- round trips --------------------------------------------------------------------------------------------------
def test_round_trip_every_kind(path):
    before = read_oracle(path)
    rng = np.random.default_rng(1)
    new = additions(rng)
    cols = {
        "cluster": pd.Categorical(rng.choice(["x", "y", "z"], N_OBS), categories=["z", "x", "y"]),
        "ordered": pd.Categorical(rng.choice(["lo", "hi"], N_OBS), categories=["lo", "hi"], ordered=True),
        "count": rng.integers(0, 100, N_OBS),
        "flag": rng.random(N_OBS) > 0.5,
        "maybe": pd.array(np.where(rng.random(N_OBS) > 0.7, None, rng.integers(0, 5, N_OBS)), dtype="Int64"),
    }
    x_new = sp.random(N_OBS, N_VARS, density=0.5, format="csc", random_state=9, dtype=np.float64)
    s = AnnDataShadow(path)
    for (group, key), value in new.items():
        getattr(s, group)[key] = value
    for name, value in cols.items():
        s.obs[name] = value
    s.var["highly_variable"] = np.arange(N_VARS) % 2 == 0
    s.X = x_new
    assert "▲" in repr(s)
    out = s.reopen("r+").write(overwrite=True)
    assert out is s
    assert "▲" not in repr(s) and not s._state.pending
    after = read_oracle(path)
    for (group, key), value in new.items():
        got = getattr(after, group)[key]
        if isinstance(value, dict):
            assert got["params"]["flavor"] == "igraph" and got["n"] == 7
            np.testing.assert_array_equal(got["params"]["seeds"], value["params"]["seeds"])
            assert [str(v) for v in got["names"]] == ["p", "q"]
        else:
            assert_element_equal(got, value, f"{group}/{key}")
        # the shadow now reads the element from the file, not from memory
        assert (group, key) not in s._state.cache
        assert_element_equal(getattr(s, group)[key], got, f"shadow {group}/{key} after write")
    for name, value in cols.items():
        got = after.obs[name]
        if isinstance(value, pd.Categorical | pd.api.extensions.ExtensionArray):
            assert_element_equal(got.array, value, f"obs/{name}")
        else:
            assert got.dtype == value.dtype, f"obs/{name}: {got.dtype} != {value.dtype}"
            np.testing.assert_array_equal(got.to_numpy(), value)
    assert list(after.obs.columns) == list(before.obs.columns) + list(cols)
    np.testing.assert_array_equal(after.var["highly_variable"].to_numpy(), np.arange(N_VARS) % 2 == 0)
    assert_element_equal(after.X, x_new, "X")
    # every element that was not touched is as before
    assert_element_equal(after.obsm["X_pca"], before.obsm["X_pca"], "obsm/X_pca")
    assert_element_equal(after.layers["dense"], before.layers["dense"], "layers/dense")
    assert_element_equal(after.obsp["graph"], before.obsp["graph"], "obsp/graph")
    assert_element_equal(after.obs[list(before.obs.columns)], before.obs, "old obs")
    assert_element_equal(after.var[list(before.var.columns)], before.var, "old var")
    assert after.uns["params"]["k"] == 3


def test_string_and_nullable_columns_round_trip(path):
    labels = [["alpha", "beta", "gamma"][i % 3] for i in range(N_OBS)]
    s = AnnDataShadow(path, mode="r+")
    s.obs["label"] = labels
    s.var["symbol"] = [f"S{i}" for i in range(N_VARS)]
    s.write()
    after = read_oracle(path)
    assert list(after.obs["label"].astype(str)) == labels
    assert list(after.var["symbol"].astype(str)) == [f"S{i}" for i in range(N_VARS)]
    assert list(s.obs["label"].astype(str)) == labels  # and the shadow reads it from the file


@pytest.mark.parametrize("kind", ["h5mu", "zarr"])
def test_mudata_modality_round_trip(tmp_path, kind):
    md = pytest.importorskip("mudata")
    with quiet():
        m = md.MuData({"rna": small(0), "atac": small(5)[:, :7].copy()})
        p = tmp_path / ("m.h5mu" if kind == "h5mu" else "m.zarr")
        m.write(p) if kind == "h5mu" else m.write_zarr(p)
    header = p.read_bytes()[:512] if kind == "h5mu" else b""
    new = additions(np.random.default_rng(2))
    s = AnnDataShadow(f"{p}/mod/rna", mode="r+")
    for (group, key), value in new.items():
        getattr(s, group)[key] = value
    s.obs["cluster"] = pd.Categorical(["a", "b"] * (N_OBS // 2))
    s.write()
    s.close()
    with quiet():
        back = md.read_h5mu(p) if kind == "h5mu" else md.read_zarr(p)
    rna = back.mod["rna"]
    for (group, key), value in new.items():
        if group != "uns":
            assert_element_equal(getattr(rna, group)[key], value, f"rna {group}/{key}")
    assert rna.uns["leiden"]["params"]["flavor"] == "igraph"
    assert list(rna.obs["cluster"].astype(str)) == ["a", "b"] * (N_OBS // 2)
    assert_element_equal(back.mod["atac"].X, m.mod["atac"].X, "untouched modality")
    if kind == "h5mu":
        assert p.read_bytes()[:512] == header, "the MuData user block changed"


# --- refusals -----------------------------------------------------------------------------------------------------
def test_read_only_refuses_and_leaves_bytes(path):
    s = AnnDataShadow(path)
    s.obsm["new"] = np.ones((N_OBS, 2))
    s.obs["extra"] = np.arange(N_OBS)
    d0 = digest(path)
    for kw in ({}, {"overwrite": True}):
        with pytest.raises(OSError, match=r"read-only; reopen with \.reopen\('r\+'\) to write"):
            s.write(**kw)
    assert digest(path) == d0
    assert ("obsm", "new") in s._state.pending, "a refused write keeps the pending changes"


def test_view_cannot_write(path):
    s = AnnDataShadow(path)
    v = s[:5]
    with pytest.raises(ValueError, match="view"):
        v.write()
    with pytest.raises(ValueError, match="view"):
        v.obsm["x"] = np.ones((5, 2))


def test_overwrite_needs_flag_and_names_every_key(path):
    s = AnnDataShadow(path, mode="r+")
    s.obsm["X_pca"] = np.zeros((N_OBS, 4), dtype=np.float32)
    s.obsm["fresh"] = np.ones((N_OBS, 1))
    s.obs["score"] = np.zeros(N_OBS)
    s.uns["params"]["k"] = 4
    s.X = np.zeros((N_OBS, N_VARS), dtype=np.float32)
    s.close()
    d0 = digest(path)
    s.reopen("r+")
    with pytest.raises(ValueError) as e:
        s.write()
    for name in ("obsm/X_pca", "obs/score", "uns/params/k", "X", "overwrite=True"):
        assert name in str(e.value)
    assert "obsm/fresh" not in str(e.value)
    s.close()
    assert digest(path) == d0, "a refused overwrite must write nothing (not even the new elements)"
    s.reopen("r+").write(overwrite=True).close()
    after = read_oracle(path)
    assert not after.obsm["X_pca"].any() and "fresh" in after.obsm
    assert not after.obs["score"].any() and after.uns["params"]["k"] == 4
    assert_element_equal(after.X, np.zeros((N_OBS, N_VARS), dtype=np.float32), "X")


def test_shape_checked_at_assignment(path):
    s = AnnDataShadow(path, mode="r+")
    s.close()
    d0 = digest(path)
    s.reopen("r+")
    with pytest.raises(ValueError, match=r"obsm\['bad'\].*\(29, 2\).*30"):
        s.obsm["bad"] = np.zeros((N_OBS - 1, 2))
    with pytest.raises(ValueError, match=r"varp\['w'\]"):
        s.varp["w"] = np.zeros((N_VARS, N_VARS + 1))
    with pytest.raises(ValueError, match="X"):
        s.X = np.zeros((N_OBS, N_VARS + 1))
    assert not s._state.pending
    s.write()  # nothing pending: nothing written
    s.close()
    assert digest(path) == d0


# --- semantics ----------------------------------------------------------------------------------------------------
def test_assigned_value_wins_then_file_after_write(path):
    s = AnnDataShadow(path, mode="r+")
    old = s.obsp["graph"]  # read and cached
    g = sp.random(N_OBS, N_OBS, density=0.05, format="csr", random_state=11)
    s.obsp["graph"] = g
    assert s.obsp["graph"] is g
    assert_element_equal(s[:3].obsp["graph"], g[:3][:, :3], "a view sees the assigned graph")
    s.clear_cache()
    assert s.obsp["graph"] is g, "pending values survive clear_cache"
    assert (s.obsp["graph"] != old).nnz > 0
    s.write(overwrite=True)
    again = s.obsp["graph"]
    assert again is not g and ("obsp", "graph") in s._state.cache  # read from the file, cached afresh
    assert_element_equal(again, g, "graph from disk")
    assert_element_equal(read_oracle(path).obsp["graph"], g, "graph by anndata")


def test_chaining_and_clear_cache(path):
    s = AnnDataShadow(path)
    _ = s.obsm["X_pca"], s.obs
    s.obsm["umap"] = np.ones((N_OBS, 2))
    out = s.reopen("r+").write(clear_cache=True).reopen("r")
    assert out is s and s.mode == "r" and not s._state.cache and "▲" not in repr(s)
    assert_element_equal(s.obsm["umap"], np.ones((N_OBS, 2)), "umap")


def test_deletions_are_carried_out(path):
    s = AnnDataShadow(path, mode="r+")
    del s.obsm["X_pca"]
    del s.layers["dense"]
    del s.uns["params"]
    del s.obs["score"]
    del s.X
    assert "(deleted)" in repr(s)
    s.write()  # deletions need no overwrite=True
    after = read_oracle(path)
    assert after.X is None and s.X is None
    assert "X_pca" not in after.obsm and "dense" not in after.layers and "params" not in after.uns
    assert list(after.obs.columns) == ["group"]
    assert "X_pca" not in s.obsm and "score" not in s.obs.columns and "(deleted)" not in repr(s)


def test_obs_edits_column_order_and_index(path):
    s = AnnDataShadow(path, mode="r+")
    obs = s.obs.copy()
    obs["new"] = np.arange(N_OBS) * 0.5
    obs = obs[["new", "score", "group"]]
    obs.index = [f"cell{i}" for i in range(N_OBS)]
    s.obs = obs
    with pytest.raises(ValueError, match="obs index"):
        s.write()
    s.write(overwrite=True)
    after = read_oracle(path)
    assert list(after.obs.columns) == ["new", "score", "group"]
    assert list(after.obs_names) == [f"cell{i}" for i in range(N_OBS)]
    assert_element_equal(after.obs["group"], read_oracle(path).obs["group"], "group")
    assert list(s.obs_names[:2]) == ["cell0", "cell1"]


def test_uns_nested_keys(path):
    s = AnnDataShadow(path, mode="r+")
    s.uns["params"]["nested"]["added"] = np.arange(4)  # a new nested key is an addition, not an overwrite
    s.uns["params"]["k"] = 3  # the same value as on disk: nothing to write
    assert "▲" in repr(s)
    s.write()
    after = read_oracle(path)
    np.testing.assert_array_equal(after.uns["params"]["nested"]["added"], np.arange(4))
    assert after.uns["params"]["k"] == 3
    del s.uns["params"]["nested"]["names"]
    s.write()
    assert "names" not in read_oracle(path).uns["params"]["nested"]
    s.uns["params"]["k"] = 5
    with pytest.raises(ValueError, match="uns/params/k"):
        s.write()
    s.write(overwrite=True)
    assert read_oracle(path).uns["params"]["k"] == 5


def test_unchanged_uns_writes_nothing(path):
    s = AnnDataShadow(path, mode="r+")
    s.uns["params"]["k"] = 3
    s.close()
    d0 = digest(path)
    s.reopen("r+").write()
    assert not s._state.pending
    s.close()
    assert digest(path) == d0


def test_raw_assignment(path):
    s = AnnDataShadow(path, mode="r+")
    raw = ad.AnnData(np.arange(N_OBS * 5, dtype=np.float32).reshape(N_OBS, 5), obs=pd.DataFrame(index=s.obs_names))
    raw.var_names = [f"r{i}" for i in range(5)]
    s.raw = raw
    s.write()
    after = read_oracle(path)
    assert_element_equal(after.raw.X, raw.X, "raw.X")
    assert list(after.raw.var_names) == [f"r{i}" for i in range(5)]
    assert s.raw.X.shape == (N_OBS, 5)


def test_lazy_values_are_written(path):
    s = AnnDataShadow(path, mode="r+", lazy=True)
    s.layers["copy"] = s.X  # a LazyArray: read in full when written
    s.write()
    after = read_oracle(path)
    assert_element_equal(after.layers["copy"], after.X, "layers/copy")


def test_backend_arrays_are_written(templates, tmp_path):
    torch = pytest.importorskip("torch")
    p = fresh(templates, ("h5ad", None), tmp_path)
    s = AnnDataShadow(p, mode="r+", array_backend="torch")
    s.obsm["t"] = s.obsm["X_pca"] * 2  # a torch tensor, as this backend hands out
    s.layers["t"] = torch.ones((N_OBS, N_VARS))
    s.write()
    after = read_oracle(p)
    np.testing.assert_array_equal(after.obsm["t"], after.obsm["X_pca"] * 2)
    np.testing.assert_array_equal(after.layers["t"], np.ones((N_OBS, N_VARS), dtype=np.float32))


def test_failed_encoding_links_nothing(path):
    s = AnnDataShadow(path, mode="r+")
    s.obsm["good"] = np.ones((N_OBS, 2))
    s.uns["bad"] = {"x": object()}  # anndata has no encoding for a bare object
    with pytest.raises(Exception, match="uns/bad"):
        s.write()
    after = read_oracle(path)
    assert "good" not in after.obsm and "bad" not in after.uns
    assert ("obsm", "good") in s._state.pending and ("uns", "bad") in s._state.pending
    if path.is_dir():
        assert not list(path.parent.glob(f".{path.name}.shadows-write-*")), "staging left behind"
    del s.uns["bad"]
    s.write()
    assert "good" in read_oracle(path).obsm


def test_old_obs_layout_is_refused(tmp_path):
    from legacy_files import build_pre07_dense

    p, _ = build_pre07_dense(tmp_path)
    s = AnnDataShadow(p, mode="r+")
    s.obs["new"] = np.arange(s.n_obs)
    with pytest.raises(ValueError, match="old layout"):
        s.write()


def test_missing_group_is_created(templates, tmp_path):
    p = fresh(templates, ("h5ad", None), tmp_path)
    with h5py.File(p, "r+") as f:
        del f["varp"]
    s = AnnDataShadow(p, mode="r+")
    s.varp["a"] = np.eye(N_VARS)
    s.varp["b"] = np.ones((N_VARS, N_VARS))
    s.write()
    after = read_oracle(p)
    assert sorted(after.varp) == ["a", "b"]


# --- zarr specifics -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("zarr_format", [2, 3])
def test_zarr_consolidated_metadata_stays_valid(templates, tmp_path, zarr_format):
    import zarr

    p = fresh(templates, ("zarr", zarr_format), tmp_path)
    stale = tmp_path / f".{p.name}.shadows-write-dead"
    stale.mkdir()  # what a killed writer leaves beside the store
    s = AnnDataShadow(p, mode="r+")
    s.obsm["new"] = np.ones((N_OBS, 2))
    s.obs["score"] = np.zeros(N_OBS)
    del s.obsm["X_pca"]
    s.write(overwrite=True)
    g = zarr.open_group(str(p), mode="r", use_consolidated=True)
    assert "new" in g["obsm"] and "X_pca" not in g["obsm"]
    meta = (p / ".zmetadata") if zarr_format == 2 else (p / "zarr.json")
    assert "obsm/new" in json.dumps(json.loads(meta.read_text()))
    assert not stale.exists() and not list(tmp_path.glob(f".{p.name}.shadows-write-*"))
    after = read_oracle(p)
    assert "new" in after.obsm and not after.obs["score"].any()


# --- space --------------------------------------------------------------------------------------------------------
def test_repack_reclaims_space(templates, tmp_path):
    p = fresh(templates, ("h5ad", None), tmp_path)
    s = AnnDataShadow(p)
    for i in range(3):  # HDF5 reuses freed space within one session, never after the file is closed
        s.obsm["big"] = np.full((N_OBS, 4000), float(i))
        s.reopen("r+").write(overwrite=True).close()
    before, size = read_oracle(p), p.stat().st_size
    assert shadows.repack(p) == p
    assert p.stat().st_size < size * 0.6, "repack did not reclaim the space of the replaced elements"
    after = read_oracle(p)
    for group in ("obsm", "layers", "obsp"):
        for key in getattr(before, group):
            assert_element_equal(getattr(after, group)[key], getattr(before, group)[key], f"{group}/{key}")
    assert_element_equal(after.obs, before.obs, "obs")
    assert not list(tmp_path.glob("*.repack"))


def test_repack_keeps_mudata_user_block_and_refuses_zarr(templates, tmp_path):
    md = pytest.importorskip("mudata")
    p = tmp_path / "m.h5mu"
    with quiet():
        md.MuData({"rna": small()}).write(p)
    head = p.read_bytes()[:512]
    shadows.repack(p)
    assert p.read_bytes()[:512] == head
    with quiet():
        assert md.read_h5mu(p).mod["rna"].shape == (N_OBS, N_VARS)
    z = fresh(templates, ("zarr", 3), tmp_path)
    with pytest.raises(ValueError, match="not an HDF5 file"):
        shadows.repack(z)


# --- concurrency (HDF5 file locking, the zarr writer lock) --------------------------------------------------------
_HOLD = textwrap.dedent(
    """
    import sys, time
    from shadows import AnnDataShadow
    s = AnnDataShadow(sys.argv[1], mode=sys.argv[2])
    s.X; s.obs
    if sys.argv[2] == "r+" and sys.argv[1].endswith(".zarr"):
        from shadows.writeback.zarr import writer_lock
        from pathlib import Path
        lock = writer_lock(Path(sys.argv[1])); lock.__enter__()  # a writer in the middle of its write
    print("ready", flush=True)
    sys.stdin.readline()
    """
)


def _hold(path: Path, *modes: str) -> list[subprocess.Popen]:
    """Processes holding ``path`` open, one per mode, started together (each pays for importing anndata)."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _HOLD, str(path), mode], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        for mode in modes
    ]
    for p in procs:
        assert p.stdout.readline().strip() == "ready"
    return procs


def _release(*procs: subprocess.Popen) -> None:
    for p in procs:
        p.stdin.close()
        p.wait(timeout=60)


def test_readers_share_and_a_writer_is_refused_h5(templates, tmp_path):
    p = fresh(templates, ("h5ad", None), tmp_path)
    r1, r2 = _hold(p, "r", "r")  # two reader processes at once
    try:
        s = AnnDataShadow(p)  # and a third, here
        assert s.obsm["X_pca"].shape == (N_OBS, 4)
        s.obsm["new"] = np.ones((N_OBS, 1))
        with pytest.raises(StorageError, match="another process"):
            s.reopen("r+")
    finally:
        _release(r1, r2)
    s.reopen("r+").write().close()
    (w,) = _hold(p, "r+")  # a writer holds the file: a second writer (and readers) are refused at once
    try:
        with pytest.raises(StorageError, match="another process"):
            AnnDataShadow(p, mode="r+")
        with pytest.raises(StorageError, match="another process"):
            AnnDataShadow(p)
        with pytest.raises(StorageError, match="another process"):
            shadows.repack(p)  # nor can the file be repacked under a writer
    finally:
        _release(w)
    assert "new" in read_oracle(p).obsm


def test_second_zarr_writer_is_refused(templates, tmp_path):
    p = fresh(templates, ("zarr", 3), tmp_path)
    (w,) = _hold(p, "r+")
    try:
        s = AnnDataShadow(p, mode="r+")  # opening is fine (zarr has no file locks); writing is not
        s.obsm["new"] = np.ones((N_OBS, 1))
        d0 = digest(p)
        with pytest.raises(StorageError, match="another process"):
            s.write()
        assert digest(p) == d0
    finally:
        _release(w)
    s.write()
    assert "new" in read_oracle(p).obsm


# --- a model check: random edits, then write, equal anndata's in-memory result ------------------------------------
_KEYS = st.sampled_from(["a", "b", "c"])
_ACTIONS = st.lists(
    st.one_of(
        st.tuples(st.just("obsm"), _KEYS, st.integers(0, 3)),
        st.tuples(st.just("del_obsm"), _KEYS, st.just(0)),
        st.tuples(st.just("col"), _KEYS, st.integers(0, 3)),
        st.tuples(st.just("del_col"), _KEYS, st.just(0)),
        st.tuples(st.just("uns"), _KEYS, st.integers(0, 3)),
        st.tuples(st.just("write"), st.just(""), st.just(0)),
    ),
    max_size=8,
)


@given(actions=_ACTIONS)
def test_random_edits_match_anndata(templates, tmp_path_factory, actions):
    p = fresh(templates, ("h5ad", None), tmp_path_factory.mktemp("model"))
    model = read_oracle(p)
    s = AnnDataShadow(p, mode="r+")
    for kind, key, seed in actions:
        if kind == "obsm":
            v = np.full((N_OBS, 2), float(seed))
            s.obsm[key], model.obsm[key] = v, v
        elif kind == "del_obsm" and key in model.obsm:
            del s.obsm[key], model.obsm[key]
        elif kind == "col":
            v = np.arange(N_OBS) * seed
            s.obs[key], model.obs[key] = v, v
        elif kind == "del_col" and key in model.obs.columns:
            del s.obs[key], model.obs[key]
        elif kind == "uns":
            v = {"seed": seed, "inner": {"w": np.arange(seed + 1)}}
            s.uns[key], model.uns[key] = v, v
        elif kind == "write":
            s.write(overwrite=True)
    s.write(overwrite=True)
    s.close()
    got = read_oracle(p)
    assert sorted(got.obsm) == sorted(model.obsm)
    for k in model.obsm:
        np.testing.assert_array_equal(got.obsm[k], model.obsm[k])
    assert list(got.obs.columns) == list(model.obs.columns)
    for c in model.obs.columns:
        np.testing.assert_array_equal(got.obs[c].to_numpy(), model.obs[c].to_numpy())
    assert sorted(got.uns) == sorted(model.uns)
    for k in ("a", "b", "c"):
        if k in model.uns:
            assert got.uns[k]["seed"] == model.uns[k]["seed"]
            np.testing.assert_array_equal(got.uns[k]["inner"]["w"], model.uns[k]["inner"]["w"])
