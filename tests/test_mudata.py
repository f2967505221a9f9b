"""MuDataShadow against mudata: every element of a shadow, of its modalities and of its views equals what the
installed mudata reads from the same file (``mudata.read_h5mu`` / ``mudata.read_zarr``) and what mudata's views of
that object give.

MuData objects are random (2-3 modalities, axis 0 and 1, modalities with different cells or features in their own
order, sparse and dense X, obsm/obsp/uns on the global and the modality level) and are written by mudata itself to
``.h5mu`` and to zarr v2 and v3 stores.

The shadow's global ``obs``/``var`` are the tables as stored.  mudata's differ in two ways, both undone here to
compare: mudata 0.3 copies modality columns into them on read unless ``pull_on_update`` is off (it is switched off,
as in mudata 0.4); and mudata's ``update()`` on read passes them through ``convert_dtypes()`` and back, which changes
some dtypes (``as_mudata_reads``).  Where mudata itself is wrong (``read_zarr`` of mudata < 0.4 ignores ``axis``;
views of views; negative int indexers), the oracle is mudata's reading of the same data by another route.
"""

from __future__ import annotations

import pickle
import subprocess
import sys
import uuid
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

md = pytest.importorskip("mudata")

from oracle import assert_adata_equal, assert_element_equal, assert_mapping_equal, quiet  # noqa: E402
from strategies import INDEXER_KINDS, _dense, _sparse, describe_indexer, indexers, make_column  # noqa: E402

from shadows import AnnDataShadow, MuDataShadow  # noqa: E402
from shadows.spec import selection as ix  # noqa: E402

FORMATS = (("h5mu", None), ("zarr", 2), ("zarr", 3))
MOD_NAMES = ("rna", "prot", "atac")  # deliberately not alphabetical: mod-order must be kept
GLOBAL_COLUMN_KINDS = ("float", "int", "bool", "cat", "str_repeated", "Int64")
MUDATA_04 = tuple(int(p) for p in md.__version__.split(".")[:2]) >= (0, 4)


@pytest.fixture(autouse=True, scope="module")
def _no_pull_on_update():
    """Global tables as stored: mudata 0.3 pulls modality columns on read unless told not to (0.4 never does)."""
    if hasattr(md, "set_options"):
        with md.set_options(pull_on_update=False):
            yield
    else:
        yield


# --------------------------------------------------------------------------------------
# writing and the oracle
# --------------------------------------------------------------------------------------


def write_mudata(m, directory, fmt: str, zarr_format: int | None, stem: str = "m") -> str:
    """Write ``m`` with mudata (``.h5mu``, or a zarr store of the given zarr format)."""
    with quiet():
        if fmt == "h5mu":
            path = str(Path(directory) / f"{stem}.h5mu")
            m.write_h5mu(path)
            return path
        path = str(Path(directory) / f"{stem}.v{zarr_format}.zarr")
        old = ad.settings.zarr_write_format
        ad.settings.zarr_write_format = zarr_format
        try:
            m.write_zarr(path)
        finally:
            ad.settings.zarr_write_format = old
    return path


def read_mudata_oracle(path: str):
    """The installed mudata's reading of ``path``.

    mudata < 0.4's ``read_zarr`` ignores the stored ``axis`` attribute (an axis-1 store comes back as axis 0 with
    every feature repeated per modality); there the store is read as mudata 0.4 reads it: mudata's own modality
    reader, anndata's ``read_elem`` for the rest, and the stored axis.
    """
    with quiet():
        if not path.endswith(".zarr"):
            return md.read_h5mu(path)
        if MUDATA_04:
            return md.read_zarr(path)
        import zarr
        from anndata.io import read_elem
        from mudata._core.io import _read_zarr_mod

        f = zarr.open_group(path, mode="r")
        d = {}
        for k in f.keys():
            if k == "mod":
                mods = {m: _read_zarr_mod(f["mod"][m]) for m in f["mod"].keys()}
                order = f["mod"].attrs.get("mod-order")
                if order is not None and all(m in mods for m in order):
                    mods = {m: mods[m] for m in order}
                d["mod"] = mods
            else:
                d[k] = read_elem(f[k])
        d["axis"] = int(f.attrs.get("axis", 0))
        return md.MuData._init_from_dict_(**d)


def stored_tables(path: str) -> dict[str, pd.DataFrame]:
    """The global obs and var exactly as stored, read by anndata (``read_elem``)."""
    from anndata.io import read_elem

    with quiet():
        if path.endswith(".zarr"):
            import zarr

            f = zarr.open_group(path, mode="r")
            return {k: read_elem(f[k]) for k in ("obs", "var")}
        import h5py

        with h5py.File(path, "r") as f:
            return {k: read_elem(f[k]) for k in ("obs", "var")}


def as_mudata_reads(df: pd.DataFrame) -> pd.DataFrame:
    """A global table as mudata's reader hands it out: its ``update()`` joins the stored table through
    ``convert_dtypes()`` and back to numpy dtypes where no value is missing, which changes dtypes (``Int64`` without
    missing values becomes ``int64``, a float column of whole numbers ``int64``...).  The shadow gives the table as
    stored; it equals mudata's after the same round trip."""
    from mudata._core.utils import try_convert_dataframe_to_numpy_dtypes

    if df.shape[1] == 0:
        return df
    return try_convert_dataframe_to_numpy_dtypes(pd.DataFrame(df).convert_dtypes())


def assert_mudata_equal(got, want, what: str, *, stored: dict, vectors: bool = False) -> None:
    """Every element of ``got`` (a MuDataShadow or a view of one) equals ``want``'s (a MuData or a view).

    ``stored``: the global tables as stored (``stored_tables``).  The shadow's (for a view, the view's rows) must
    equal them exactly; mudata's equal them after mudata's dtype round trip (``as_mudata_reads``).
    """
    assert isinstance(got, MuDataShadow) and isinstance(got, md.MuData), f"{what}: {type(got).__name__}"
    assert tuple(got.shape) == tuple(want.shape), f"{what}: shape {got.shape} != {want.shape}"
    assert (got.n_obs, got.n_vars, len(got)) == (want.n_obs, want.n_vars, len(want)), what
    assert int(got.axis) == int(want.axis), f"{what}: axis {got.axis} != {want.axis}"
    assert got.is_view == want.is_view, f"{what}: is_view {got.is_view} != {want.is_view}"
    names = list(want.mod.keys())
    assert list(got.mod.keys()) == names, f"{what}: modalities {list(got.mod.keys())} != {names}"
    assert got.n_mod == want.n_mod and got.mod_names == names, what
    assert_element_equal(got.obs_names, want.obs_names, f"{what}.obs_names")
    assert_element_equal(got.var_names, want.var_names, f"{what}.var_names")
    for name in ("obs", "var"):
        mine, table = getattr(got, name), stored[name]
        o, v = (got._state.oidx, got._state.vidx) if isinstance(got, AnnDataShadow) else (got._oidx, got._vidx)
        rows = ix.positions(o if name == "obs" else v, len(table))
        assert_element_equal(pd.DataFrame(mine), table.iloc[rows], f"{what}.{name}")
        assert_element_equal(as_mudata_reads(table).iloc[rows], getattr(want, name), f"{what}.{name} (mudata's)")
    for group in ("obsm", "varm", "obsp", "varp", "uns", "obsmap", "varmap"):
        assert_mapping_equal(getattr(got, group), getattr(want, group), f"{what}.{group}")
    for k in names:
        assert isinstance(got.mod[k], AnnDataShadow) and got[k] is got.mod[k], f"{what}.mod[{k!r}]"
        assert_adata_equal(got.mod[k], want.mod[k], f"{what}.mod[{k!r}]", vectors=vectors, to_memory=False)


# --------------------------------------------------------------------------------------
# random MuData objects
# --------------------------------------------------------------------------------------


def _frame(rng, index, prefix: str, kinds, n_cols: int) -> pd.DataFrame:
    data = {f"{prefix}{i}": make_column(kinds[int(rng.integers(len(kinds)))], len(index), rng) for i in range(n_cols)}
    return pd.DataFrame(data, index=pd.Index(index, dtype=object))


def _modality(rng, obs_names, var_names, x_kind: str, j: int) -> ad.AnnData:
    shape = (len(obs_names), len(var_names))
    dtype = ("float32", "int64", "float64")[j % 3]
    X = _dense(rng, shape, dtype) if x_kind == "dense" else _sparse(rng, shape, dtype, x_kind)
    obs = _frame(rng, obs_names, "c", ("float", "int", "cat", "str_repeated", "bool"), int(rng.integers(0, 3)))
    var = _frame(rng, var_names, "f", ("float", "cat", "str"), int(rng.integers(0, 2)))
    a = ad.AnnData(X=X, obs=obs, var=var)
    a.obsm["X_emb"] = _dense(rng, (shape[0], 2), "float64")
    a.obsp["conn"] = _sparse(rng, (shape[0], shape[0]), "float32", "csr")
    if rng.random() < 0.5:
        a.layers["counts"] = _sparse(rng, shape, "float32", "csc" if x_kind == "dense" else "csr")
        a.varm["load"] = _dense(rng, (shape[1], 2), "float32")
    a.uns["mod_index"] = j
    return a


def build_mudata(seed: int, axis: int, n_mods: int, pool: list[str], subsets: list[list[str]], own: list[int]):
    """A MuData whose modalities share ``axis``: modality ``j`` has ``subsets[j]`` (in that order) of the shared
    names and ``own[j]`` names of its own on the other axis; global columns, obsm/varm/obsp/varp and uns added."""
    rng = np.random.default_rng(seed)
    mods = {}
    for j in range(n_mods):
        name = MOD_NAMES[j]
        private = [f"{name}_{i}" for i in range(own[j])]
        obs_names, var_names = (subsets[j], private) if axis == 0 else (private, subsets[j])
        x_kind = ("csr", "dense", "csc")[(seed + j) % 3]
        mods[name] = _modality(rng, obs_names, var_names, x_kind, j)
    with quiet():
        m = md.MuData(mods, axis=axis)
        n, nv = m.n_obs, m.n_vars
        for c, col in _frame(rng, m.obs_names, "g", GLOBAL_COLUMN_KINDS, 3).items():
            m.obs[c] = col.values
        m.var["gv"] = rng.normal(size=nv)
        m.obsm["X_joint"] = _dense(rng, (n, 3), "float64")
        m.obsm["joint_df"] = pd.DataFrame({"u": rng.random(n)}, index=m.obs_names)
        m.obsp["joint_graph"] = _sparse(rng, (n, n), "float64", "csr")
        m.varm["joint_load"] = _dense(rng, (nv, 2), "float32")
        m.varp["joint_corr"] = _dense(rng, (nv, nv), "float64")
        m.uns["note"] = "joint"
        m.uns["params"] = {"k": 3, "arr": np.arange(4)}
    return m


@st.composite
def mudatas(draw):
    axis = draw(st.sampled_from([0, 1]))
    n_mods = draw(st.integers(2, 3))
    pool = [f"{p}{i}" for i, p in enumerate(draw(st.lists(st.sampled_from(["s", "ß", "中"]), min_size=1, max_size=8)))]
    subsets = [
        draw(st.permutations(pool).flatmap(lambda p: st.integers(1, len(p)).map(lambda k: p[:k])))
        for _ in range(n_mods)
    ]
    own = [draw(st.integers(1, 5)) for _ in range(n_mods)]
    return build_mudata(draw(st.integers(0, 2**32 - 1)), axis, n_mods, pool, subsets, own)


# Indexers without a mudata oracle: a negative int i becomes slice(i, i + 1) in mudata, empty for -1 and wrong for
# the others (anndata and the shadow take the row); a single name is a modality name for MuData.__getitem__
MUDATA_INDEXERS = tuple(k for k in INDEXER_KINDS if k not in ("neg_int", "name"))


def composed(ref, view_of_ref, idx2):
    """mudata's view of ``ref`` at the rows a view of ``view_of_ref`` (itself a view of ``ref``) at ``idx2`` holds.

    mudata's views of views can be wrong (a contiguous run of a modality's rows as long as the *original* modality
    is taken for all of the view's rows), so nested shadow views are compared with the one-step view of the same
    rows, as the issue asks (``read_h5mu(path)[idx]``).
    """
    from anndata._core.index import _normalize_indices

    def _pos(sel, n):
        if isinstance(sel, int | np.integer):
            sel = slice(sel, sel + 1)
        return np.arange(n)[sel]

    o2, v2 = _normalize_indices(idx2, view_of_ref.obs_names, view_of_ref.var_names)
    p_o = _pos(view_of_ref._oidx, ref.n_obs)[_pos(o2, view_of_ref.n_obs)]
    p_v = _pos(view_of_ref._vidx, ref.n_vars)[_pos(v2, view_of_ref.n_vars)]
    with quiet():
        return ref[p_o, p_v]


def _indexer_pair(draw, obs_names, var_names):
    o = draw(indexers(len(obs_names), obs_names, kinds=MUDATA_INDEXERS))
    if draw(st.booleans()):
        return o
    return o, draw(indexers(len(var_names), var_names, kinds=MUDATA_INDEXERS))


@given(data=st.data())  # example count from the profile in conftest.py (15 in CI)
def test_random_mudata_and_views_equal_mudata(tmp_path, data):
    m = data.draw(mudatas(), label="mudata")
    fmt, zf = "h5mu", None  # zarr stores are covered by the fixed files below (a zarr view costs ~10x more)
    d = tmp_path / uuid.uuid4().hex
    d.mkdir()
    path = write_mudata(m, d, fmt, zf)
    ref, tables = read_mudata_oracle(path), stored_tables(path)
    sh = MuDataShadow(path)
    assert_mudata_equal(sh, ref, f"{fmt}{zf or ''}", stored=tables)
    idx = _indexer_pair(data.draw, list(ref.obs_names), list(ref.var_names))
    with quiet():
        rv = ref[idx]
    v = sh[idx]
    assert_mudata_equal(v, rv, f"view {describe_indexer(idx)}", stored=tables)
    idx2 = _indexer_pair(data.draw, list(rv.obs_names), list(rv.var_names))
    rvv = composed(ref, rv, idx2)
    assert_mudata_equal(v[idx2], rvv, f"view {describe_indexer(idx)} then {describe_indexer(idx2)}", stored=tables)
    v.close()
    sh.close()


# --------------------------------------------------------------------------------------
# fixed files: one per axis and format
# --------------------------------------------------------------------------------------

POOL = [f"cell{i}" for i in range(12)]
SUBSETS = [POOL, POOL[9::-1], POOL[4:]]  # all; the first ten, reversed; the last eight


@pytest.fixture(
    scope="module",
    params=[(a, f, z) for a in (0, 1) for f, z in FORMATS],
    ids=lambda p: f"axis{p[0]}-{p[1]}{p[2] or ''}",
)
def stored(request, tmp_path_factory):
    axis, fmt, zf = request.param
    m = build_mudata(7 + axis, axis, 3, POOL, SUBSETS, [6, 4, 5])
    path = write_mudata(m, tmp_path_factory.mktemp("mu"), fmt, zf)
    return path, read_mudata_oracle(path), stored_tables(path)


def test_elements_equal_mudata(stored):
    path, ref, tables = stored
    with MuDataShadow(path) as sh:
        assert_mudata_equal(sh, ref, "mdata", stored=tables)
        mem = sh.to_memory()
        assert type(mem) is md.MuData
        with quiet():
            assert_mapping_equal(mem.obsmap, ref.obsmap, "to_memory().obsmap")
            assert_element_equal(as_mudata_reads(tables["obs"]), mem.obs, "to_memory().obs")
            for k in ref.mod:
                assert_adata_equal(mem.mod[k], ref.mod[k], f"to_memory().mod[{k!r}]", vectors=False, to_memory=False)


def _view_cases(ref):
    on, vn = list(ref.obs_names), list(ref.var_names)
    rng = np.random.default_rng(3)
    mask = rng.random(len(on)) < 0.5
    return {
        "slice": slice(2, 9),
        "step": slice(None, None, 3),
        "reverse": slice(None, None, -1),
        "int": 4,
        "positions": np.array([5, 1, 1, 10, 0]),
        "mask": mask,
        "names": [on[7], on[2], on[11]],
        "cells_features": (slice(1, 10), rng.random(len(vn)) < 0.6),
        "features_only": (slice(None), [vn[-1], vn[0], vn[3]]),
        "everything": slice(None),
    }


# zarr reads cost ~100x more per element access than HDF5: zarr stores get the cases that differ in kind
# (selection logic is the same for every format; these cover reordering, and both axes at once)
ZARR_VIEW_CASES = ("reverse", "cells_features")


def test_views_equal_mudata_views(stored):
    path, ref, tables = stored
    sh = MuDataShadow(path)
    cases = _view_cases(ref)
    if path.endswith(".zarr"):
        cases = {k: cases[k] for k in ZARR_VIEW_CASES}
    for name, idx in cases.items():
        with quiet():
            rv = ref[idx]
        v = sh[idx]
        assert isinstance(v, MuDataShadow) and v.is_view
        assert v._storage is not sh._storage and v._storage.file is not sh._storage.file, (
            "a view has its own connection"
        )
        assert_mudata_equal(v, rv, f"view {name}", stored=tables)
        if name in ("mask", "cells_features", "names"):
            rvv = composed(ref, rv, slice(1, None))
            assert_mudata_equal(v[1:], rvv, f"view {name} then [1:]", stored=tables)
        v.close()
    sh.close()


def test_modalities_share_one_connection(stored):
    path, _, _ = stored
    sh = MuDataShadow(path)
    files = {id(a._state.storage.file) for a in sh.mod.values()} | {id(sh._global._state.storage.file)}
    assert files == {id(sh._storage.file)}
    assert sh.mod["rna"] is sh["rna"] is sh.mod["rna"], "each modality is made once and kept (its own cache)"
    assert sh.mod["rna"]._state.cache is not sh.mod["prot"]._state.cache
    sh.close()
    if path.endswith(".h5mu"):  # (a zarr group has nothing to close)
        assert not any(a._state.storage.is_open for a in sh.mod.values()), "closing the MuData closes every modality"
    sh.reopen()
    assert sh.mod["prot"].X is not None


def test_one_modality_by_path(stored):
    path, ref, _ = stored
    for p in (f"{path}/mod/rna", f"{path}/rna"):
        a = AnnDataShadow(p)
        assert_adata_equal(a, ref["rna"], p, vectors=False, to_memory=False)
        a.close()


# --------------------------------------------------------------------------------------
# API: identity, errors, repr, cache and connection, pickling, optional dependency
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def h5mu(tmp_path_factory):
    m = build_mudata(11, 0, 3, POOL, SUBSETS, [6, 4, 5])
    return write_mudata(m, tmp_path_factory.mktemp("api"), "h5mu", None)


def test_identity_and_order(h5mu):
    sh = MuDataShadow(h5mu)
    assert isinstance(sh, md.MuData) and isinstance(sh, MuDataShadow)
    assert list(sh.mod) == ["rna", "prot", "atac"] and sh.mod_names == ["rna", "prot", "atac"]
    assert "rna" in sh and "nope" not in sh and len(sh.mod) == 3
    assert sh.axis == 0 and sh.n_var == sh.n_vars and not sh.isbacked and sh.mode == "r"
    assert sh.update() is None
    sh.close()


def test_missing_modality_lists_modalities(h5mu):
    sh = MuDataShadow(h5mu)
    for get in (lambda: sh.mod["nope"], lambda: sh["nope"]):
        with pytest.raises(KeyError, match="nope.*rna.*prot.*atac"):
            get()
    with pytest.raises(TypeError, match="to_memory"):
        sh.mod["new"] = sh.mod["rna"]
    sh.close()


def test_anndata_files_are_refused(tmp_path, h5mu):
    a = ad.AnnData(np.ones((3, 2), dtype=np.float32))
    for p in (tmp_path / "a.h5ad", tmp_path / "a.zarr"):
        with quiet():
            a.write_h5ad(p) if p.suffix == ".h5ad" else a.write_zarr(p)
        with pytest.raises(ValueError, match="AnnDataShadow"):
            MuDataShadow(p)
    with pytest.raises(ValueError, match="AnnDataShadow"):
        MuDataShadow(f"{h5mu}/mod/rna")
    with pytest.raises(ValueError, match="MuDataShadow"):
        AnnDataShadow(h5mu)


def test_repr_marks_cached_and_new(h5mu):
    sh = MuDataShadow(h5mu)
    r = repr(sh)
    assert r.startswith("MuData Shadow object with n_obs × n_vars = 12 × 15")
    assert "3 modalities" in r and "rna:\t12 × 6" in r and "prot:\t10 × 4" in r and "atac:\t8 × 5" in r
    assert "ᐁ" not in r and "▲" not in r
    _ = sh.obsm["X_joint"], sh.mod["prot"].X
    sh.uns["added"] = 1
    sh.mod["atac"].obsm["new"] = np.zeros((8, 1))
    r = repr(sh)
    assert "'X_joint' ᐁ" in r and "'added' ▲" in r and "'new' ▲" in r
    prot = r.split("prot:")[1].split("atac:")[0]
    assert "X ᐁ" in prot
    h = sh._repr_html_()
    assert "rna" in h and "atac" in h and "▲" in h and "ᐁ" in h
    v = sh[:3]
    assert repr(v).startswith("View of MuData Shadow object with n_obs × n_vars = 3 × 15")
    sh.close()
    assert "closed" in repr(sh)


def test_clear_cache_close_reopen_reach_every_modality(h5mu):
    sh = MuDataShadow(h5mu)
    _ = sh.obs, sh.obsm["X_joint"], [a.X for a in sh.mod.values()]
    assert sh._global._state.cache and all(a._state.cache for a in sh.mod.values())
    assert sh.clear_cache() is sh
    assert not sh._global._state.cache and not any(a._state.cache for a in sh.mod.values())
    sh.close()
    for get in (lambda: sh.obsm["X_joint"], lambda: sh.mod["rna"].X):
        with pytest.raises(ValueError, match="closed"):
            get()
    assert sh.reopen() is sh
    assert sh.mod["rna"].X.shape == (12, 6) and sh.obsm["X_joint"].shape == (12, 3)
    assert sh.reopen("r+").mode == "r+" and all(a.mode == "r+" for a in sh.mod.values())
    sh.reopen("r")
    with pytest.raises(ValueError, match="view"):
        sh[:2].reopen("r+")
    sh.close()


def test_views_see_pending_additions(h5mu):
    sh = MuDataShadow(h5mu)
    sh.obsm["extra"] = np.arange(12.0)[:, None]
    sh.mod["prot"].obsm["pextra"] = np.arange(10.0)[:, None]
    v = sh[[11, 0, 3]]
    np.testing.assert_array_equal(v.obsm["extra"].ravel(), [11.0, 0.0, 3.0])
    # prot holds cell9..cell0 (reversed): global cells 0 and 3 are its rows 9 and 6, cell11 is not in it
    np.testing.assert_array_equal(v.mod["prot"].obsm["pextra"].ravel(), [9.0, 6.0])
    with pytest.raises(ValueError, match="view"):
        v.obsm["nope"] = np.zeros((3, 1))
    sh.close()


def test_pickle_and_backends(h5mu):
    sh = MuDataShadow(h5mu, table_backend="pandas", lazy=True)
    v = sh[2:7, 1:]
    for obj in (sh, v):
        back = pickle.loads(pickle.dumps(obj))
        assert back.shape == obj.shape and back.is_view == obj.is_view and list(back.mod) == list(obj.mod)
        assert back.mod["rna"].shape == obj.mod["rna"].shape
        assert_element_equal(back.obs, obj.obs, "pickled obs")
        back.close()
    assert type(v.mod["rna"].X).__name__ == "LazyArray"
    sh.close()


def test_to_memory_of_a_view(h5mu):
    ref = read_mudata_oracle(h5mu)
    with MuDataShadow(h5mu) as sh:
        mem = sh[2:9, 3:12].to_memory()
    with quiet():
        want = ref[2:9, 3:12]
    assert type(mem) is md.MuData and mem.shape == want.shape
    for k in want.mod:
        assert_adata_equal(mem.mod[k], want.mod[k].to_memory(), f"mod {k}", vectors=False, to_memory=False)
    assert_element_equal(mem.obsm["X_joint"], np.asarray(want.obsm["X_joint"]), "obsm")


def test_import_without_mudata():
    code = (
        "import sys\n"
        "import shadows\n"
        "assert 'mudata' not in sys.modules, 'import shadows imported mudata'\n"
        "sys.modules['mudata'] = None  # as if it were not installed\n"
        "try:\n"
        "    shadows.MuDataShadow\n"
        "except ImportError as e:\n"
        "    assert 'pip install shadows[mudata]' in str(e), e\n"
        "else:\n"
        "    raise SystemExit('no ImportError')\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


# --------------------------------------------------------------------------------------
# writing (issue #8, MuData part)
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", [("h5mu", None), ("zarr", 3)], ids=lambda f: f"{f[0]}{f[1] or ''}")
def test_write_pushes_global_and_modality_changes(tmp_path, fmt):
    m = build_mudata(5, 0, 2, POOL, SUBSETS, [6, 4])
    path = write_mudata(m, tmp_path, *fmt)
    sh = MuDataShadow(path)
    assert sh.reopen("r+") is sh  # one handle for the whole file: reopening for writing works on HDF5
    rng = np.random.default_rng(0)
    joint, emb, prot_note = rng.normal(size=(12, 2)), rng.normal(size=(12, 3)), {"a": 1, "b": "x"}
    sh.obsm["X_new"] = joint
    sh.uns["added"] = "yes"
    sh.mod["rna"].obsm["X_new"] = emb
    sh.mod["prot"].uns["note"] = prot_note
    sh.obs["g_new"] = np.arange(12)
    sh.mod["rna"].obs["c_new"] = [f"x{i}" for i in range(12)]
    assert "▲" in repr(sh)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert sh.write() is sh
    assert "▲" not in repr(sh)
    sh.reopen("r")
    ref = read_mudata_oracle(path)
    assert_element_equal(ref.obsm["X_new"], joint, "mudata reads global obsm")
    assert ref.uns["added"] == "yes"
    assert_element_equal(ref["rna"].obsm["X_new"], emb, "mudata reads rna obsm")
    assert dict(ref["prot"].uns["note"]) == prot_note
    assert list(stored_tables(path)["obs"]["g_new"]) == list(range(12))
    assert list(ref["rna"].obs["c_new"]) == [f"x{i}" for i in range(12)]
    assert_mudata_equal(MuDataShadow(path), ref, "after write", stored=stored_tables(path))
    sh.reopen("r+")
    sh.obsm["X_new"] = joint * 2
    sh.mod["prot"].obsm["X_more"] = emb[:10]
    with pytest.raises(ValueError, match="overwrite"):
        sh.write()
    assert "X_more" not in read_mudata_oracle(path)["prot"].obsm, "a refused write writes nothing, in no modality"
    sh.write(overwrite=True, clear_cache=True)
    assert not sh._global._state.cache
    sh.close()
    assert_element_equal(read_mudata_oracle(path).obsm["X_new"], joint * 2, "overwritten")
