"""The AnnDataShadow API beyond element values: identity, cache, repr, connection, pickling, errors, lazy mode."""

from __future__ import annotations

import hashlib
import pickle
import subprocess
import sys
import textwrap

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import shadows
from shadows import AnnDataShadow, LazyArray


def small(n_obs: int = 40, n_vars: int = 12, seed: int = 0) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    X = sp.random(n_obs, n_vars, density=0.3, format="csr", random_state=seed, dtype=np.float32)
    obs = pd.DataFrame(
        {"group": pd.Categorical(rng.choice(["a", "b", "c"], n_obs)), "score": rng.normal(size=n_obs)},
        index=[f"c{i}" for i in range(n_obs)],
    )
    var = pd.DataFrame({"mean": rng.random(n_vars)}, index=[f"g{i}" for i in range(n_vars)])
    a = ad.AnnData(X=X, obs=obs, var=var)
    a.obsm["X_pca"] = rng.normal(size=(n_obs, 4)).astype(np.float32)
    a.layers["dense"] = X.toarray()
    a.obsp["graph"] = sp.random(n_obs, n_obs, density=0.1, format="csr", random_state=seed)
    a.uns["params"] = {"k": 3, "nested": {"names": np.array(["x", "y"])}}
    a.uns["group_colors"] = np.array(["#f00", "#0f0", "#00f"])
    return a


def digest(path) -> str:
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    h = hashlib.sha256()
    for f in files:
        h.update(f.read_bytes())
    return h.hexdigest()


@pytest.fixture(params=["h5ad", "zarr"])
def path(request, tmp_path):
    a = small()
    if request.param == "h5ad":
        p = tmp_path / "s.h5ad"
        a.write_h5ad(p)
    else:
        p = tmp_path / "s.zarr"
        a.write_zarr(p)
    return p


def test_identity_and_shape(path):
    s = AnnDataShadow(path)
    assert isinstance(s, ad.AnnData) and isinstance(s, AnnDataShadow)
    assert s.shape == (40, 12) and s.n_obs == 40 and s.n_vars == 12 and len(s) == 40
    assert not s.isbacked and not s.is_view
    assert s.filename == path and s.file is not None


def test_cache_and_clear(path):
    s = AnnDataShadow(path)
    pca = s.obsm["X_pca"]
    assert s.obsm["X_pca"] is pca
    assert ("obsm", "X_pca") in s._state.cache
    s.clear_cache()
    assert ("obsm", "X_pca") not in s._state.cache
    again = s.obsm["X_pca"]
    assert again is not pca and np.array_equal(again, pca)


def test_mapping_keys_read_nothing(path):
    s = AnnDataShadow(path)
    assert list(s.obsm.keys()) == ["X_pca"] and "X_pca" in s.obsm and len(s.obsm) == 1
    assert set(s.uns.keys()) == {"params", "group_colors"}
    assert s._state.cache == {}, "keys(), in and len must not read values"


def test_missing_key_names_group(path):
    s = AnnDataShadow(path)
    with pytest.raises(KeyError, match="obsm"):
        s.obsm["nope"]


def test_repr_marks_cached_and_new(path):
    s = AnnDataShadow(path)
    r0 = repr(s)
    assert "40 × 12" in r0 and "X_pca" in r0 and "ᐁ" not in r0
    s.obsm["X_pca"]
    assert "'X_pca' ᐁ" in repr(s)
    s.obsm["X_new"] = np.zeros((40, 2))
    assert "'X_new' ▲" in repr(s)
    s.obs["new_col"] = 1
    assert "'new_col' ▲" in repr(s)
    html = s._repr_html_()
    assert "X_new" in html and "<table>" in html


def test_pending_wins_over_cache(path):
    s = AnnDataShadow(path)
    old = s.obsp["graph"]
    new = sp.identity(40, format="csr")
    s.obsp["graph"] = new
    assert s.obsp["graph"] is new and s.obsp["graph"] is not old
    s.clear_cache()
    assert s.obsp["graph"] is new, "pending additions survive clear_cache"
    assert "▲" in repr(s)


def test_shape_checked_at_assignment(path):
    s = AnnDataShadow(path)
    before = digest(path)
    with pytest.raises(ValueError, match=r"obsm\['bad'\].*40"):
        s.obsm["bad"] = np.zeros((39, 2))
    with pytest.raises(ValueError, match="obsp"):
        s.obsp["bad"] = np.zeros((40, 39))
    assert digest(path) == before


def test_close_reopen_context(path):
    s = AnnDataShadow(path)
    s.obs  # noqa: B018  cached values stay usable after close
    s.close()
    assert s.obs.shape[0] == 40
    with pytest.raises(ValueError, match="closed"):
        s.obsm["X_pca"]
    assert s.reopen("r") is s
    assert s.obsm["X_pca"].shape == (40, 4)
    with AnnDataShadow(path) as t:
        assert t.n_obs == 40
    assert not t._state.storage.is_open


def test_pickle_carries_path_and_view_not_cache(path):
    s = AnnDataShadow(path)
    v = s[5:20, [0, 3]]
    v.X  # noqa: B018
    w = pickle.loads(pickle.dumps(v))
    assert isinstance(w, AnnDataShadow) and w.is_view and w.shape == (15, 2)
    assert w._state.cache == {}
    assert (w.X != v.X).nnz == 0


def test_to_memory_and_copy(path):
    s = AnnDataShadow(path)
    m = s.to_memory()
    assert type(m) is ad.AnnData
    ref = ad.read_h5ad(path) if path.suffix == ".h5ad" else ad.read_zarr(path)
    assert (m.X != ref.X).nnz == 0
    pd.testing.assert_frame_equal(m.obs, ref.obs)
    assert type(s.copy()) is ad.AnnData
    v = s[::2].to_memory()
    assert v.shape == (20, 12) and type(v) is ad.AnnData


def test_keys_helpers_and_vectors(path):
    s = AnnDataShadow(path)
    ref = ad.read_h5ad(path) if path.suffix == ".h5ad" else ad.read_zarr(path)
    assert s.obs_keys() == ref.obs_keys() and s.var_keys() == ref.var_keys()
    assert s.obsm_keys() == ref.obsm_keys() and sorted(s.uns_keys()) == sorted(ref.uns_keys())
    np.testing.assert_array_equal(s.obs_vector("g3"), ref.obs_vector("g3"))
    np.testing.assert_array_equal(s.var_vector("c7"), ref.var_vector("c7"))
    np.testing.assert_array_equal(s.obs_vector("score"), ref.obs_vector("score"))
    np.testing.assert_array_equal(s.obs_vector("g3", layer="dense"), ref.obs_vector("g3", layer="dense"))


def test_lazy_mode_reads_on_slicing(path):
    s = AnnDataShadow(path, lazy=True)
    ref = ad.read_h5ad(path) if path.suffix == ".h5ad" else ad.read_zarr(path)
    X = s.X
    assert isinstance(X, LazyArray) and X.shape == (40, 12) and X.format == "csr"
    assert (X[3:9, [1, 5]] != ref.X[3:9][:, [1, 5]]).nnz == 0
    pca = s.obsm["X_pca"]
    assert isinstance(pca, LazyArray)
    np.testing.assert_array_equal(pca[[4, 2, 2]], ref.obsm["X_pca"][[4, 2, 2]])
    np.testing.assert_array_equal(np.asarray(pca), ref.obsm["X_pca"])
    v = s[10:20]
    np.testing.assert_array_equal(v.obsm["X_pca"][:, 1], ref.obsm["X_pca"][10:20, 1])
    assert isinstance(pickle.loads(pickle.dumps(X)), LazyArray)


def test_read_only_never_writes(path):
    before = digest(path)
    s = AnnDataShadow(path)
    s.X, s.obs, s.obsm["X_pca"], s.uns["params"]  # noqa: B018
    s[::3, ::2].X  # noqa: B018
    s.obsm["X_new"] = np.ones((40, 1))
    s.close()
    assert digest(path) == before


def test_view_colors_trimmed_like_anndata(path):
    s = AnnDataShadow(path)
    ref = ad.read_h5ad(path) if path.suffix == ".h5ad" else ad.read_zarr(path)
    mask = (ref.obs["group"] != "b").to_numpy()
    np.testing.assert_array_equal(s[mask].uns["group_colors"], ref[mask].uns["group_colors"])
    assert list(s[mask].obs["group"].cat.categories) == list(ref[mask].obs["group"].cat.categories)


# --- bad input ------------------------------------------------------------------------------------------------------
def test_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.h5ad"):
        AnnDataShadow(tmp_path / "nope.h5ad")


def test_not_hdf5_or_zarr(tmp_path):
    p = tmp_path / "garbage.h5ad"
    p.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(ValueError, match="garbage.h5ad"):
        AnnDataShadow(p)


def test_hdf5_without_anndata(tmp_path):
    p = tmp_path / "junk.h5ad"
    with h5py.File(p, "w") as f:
        f["something"] = np.arange(3)
    with pytest.raises(ValueError, match=r"junk\.h5ad.*obs"):
        AnnDataShadow(p)


def test_axis_lengths_read_on_first_use(tmp_path):
    """An h5ad's axis lengths are read when first needed (from X's shape), not at open: an obsm read needs
    neither.  A table whose index is broken fails where it is read, naming the file and the table."""
    p = tmp_path / "noindex.h5ad"
    small().write_h5ad(p)
    with h5py.File(p, "r+") as f:
        f["var"].attrs["_index"] = "gone"  # names a column that is not there
    s = AnnDataShadow(p)
    np.testing.assert_array_equal(s.obsm["X_pca"], small().obsm["X_pca"])
    assert s.obs["group"].tolist() == small().obs["group"].tolist()
    assert s.shape == (40, 12)
    for read in (lambda: s.var_names, lambda: s.var, lambda: s[:3].var):
        with pytest.raises(ValueError, match=r"noindex\.h5ad.*/var.* has no index.*'gone'"):
            read()


@pytest.mark.parametrize("table", ["obs", "var"])
def test_tables_disagreeing_with_x_are_an_error(tmp_path, table):
    """The shape comes from X's own; an obs or var of another length is a damaged file, said when it is read."""
    p = tmp_path / "mismatch.h5ad"
    small().write_h5ad(p)
    with h5py.File(p, "r+") as f:
        f["X"].attrs["shape"] = np.array([41, 12] if table == "obs" else [40, 13])
    s = AnnDataShadow(p)
    for read in (lambda: getattr(s, f"{table}_names"), lambda: getattr(s, table)):
        with pytest.raises(ValueError, match=rf"mismatch\.h5ad.*{table} has \d+ rows but X has"):
            read()


def test_closed_shadow_keeps_its_shape(path, tmp_path):
    """The axis lengths are read on first use; closing before that still leaves the shape (and repr) answerable,
    for an AnnData and for a MuData's modalities."""
    s = AnnDataShadow(path)
    s.close()
    assert s.shape == (40, 12)
    assert "40 × 12" in repr(s)
    md = pytest.importorskip("mudata")
    p = tmp_path / "m.h5mu"
    md.MuData({"rna": small(30, 10, 1), "prot": small(30, 5, 2)}).write(p)
    m = shadows.MuDataShadow(p)
    rna = m["rna"]
    m.close()
    assert rna.shape == (30, 10)
    assert m.shape == (30, 15)


def test_unknown_mode_format_backend(path):
    with pytest.raises(ValueError, match="'r', 'r\\+'"):
        AnnDataShadow(path, mode="w")
    with pytest.raises(ValueError, match="zarr"):
        AnnDataShadow(path, format="loom")
    with pytest.raises(ValueError, match="numpy"):
        AnnDataShadow(path, array_backend="nope")
    with pytest.raises(ValueError, match="pandas"):
        AnnDataShadow(path, table_backend="nope")


def test_settings_validate():
    with pytest.raises(ValueError):
        shadows.settings.memory_budget = 10
    with pytest.raises(AttributeError):
        shadows.settings.nonsense = 1
    with shadows.settings.override(memory_budget=2**20):
        assert shadows.settings.memory_budget == 2**20
    assert shadows.settings.memory_budget != 2**20


def test_small_budget_gives_same_gene(tmp_path):
    rng = np.random.default_rng(3)
    X = sp.random(3000, 50, density=0.2, format="csr", random_state=rng, dtype=np.float32)
    a = ad.AnnData(X=X)
    p = tmp_path / "b.h5ad"
    a.write_h5ad(p)
    s = AnnDataShadow(p)
    with shadows.settings.override(memory_budget=2**16):
        got = s[:, [7, 3, 7]].X
    assert (got != X[:, [7, 3, 7]]).nnz == 0


def test_nested_path_in_h5mu(tmp_path):
    md = pytest.importorskip("mudata")
    m = md.MuData({"rna": small(30, 10, 1), "prot": small(30, 5, 2)})
    p = tmp_path / "m.h5mu"
    m.write(p)
    for inner in ("mod/rna", "rna"):
        s = AnnDataShadow(f"{p}/{inner}")
        assert s.shape == (30, 10)
        assert (s.X != m["rna"].X).nnz == 0
    with pytest.raises(KeyError, match="rna"):
        AnnDataShadow(f"{p}/atac")
    with pytest.raises(ValueError, match="MuData"):
        AnnDataShadow(p)


def test_open_reads_no_matrix(tmp_path):
    """Opening and asking the shape reads only the index lengths: peak RSS stays tiny (child process)."""
    rng = np.random.default_rng(0)
    X = sp.random(20000, 2000, density=0.1, format="csr", random_state=rng, dtype=np.float32)
    a = ad.AnnData(X=X)
    a.obsm["X_umap"] = rng.normal(size=(20000, 2)).astype(np.float32)
    p = tmp_path / "open.h5ad"
    a.write_h5ad(p)
    size_mb = p.stat().st_size / 2**20
    code = textwrap.dedent(
        f"""
        import gc
        from shadows import AnnDataShadow
        def rss(field):
            for line in open('/proc/self/status'):
                if line.startswith(field):
                    return int(line.split()[1]) / 1024
        gc.collect(); open('/proc/self/clear_refs', 'w').write('5'); base = rss('VmRSS')
        s = AnnDataShadow({str(p)!r}); s.shape; s.obsm['X_umap']
        print(rss('VmHWM') - base)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    peak = float(out.stdout.strip().splitlines()[-1])
    assert peak < 0.05 * size_mb, f"open + shape + obsm peaked at {peak:.1f} MB for a {size_mb:.0f} MB file"


def test_import_and_open_emit_no_warnings(tmp_path):
    """``import shadows`` and a first read warn about nothing (our own deprecated calls included: the suite's
    filters hide FutureWarnings, so this runs in a child process with warnings as errors)."""
    path = tmp_path / "a.h5ad"
    small().write_h5ad(path)
    code = textwrap.dedent(
        f"""
        import warnings
        warnings.simplefilter("error")
        import shadows
        s = shadows.AnnDataShadow({str(path)!r})
        s.X, s.obs, s[:3, :2].X
        print(repr(s)[:10])
        """
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


def test_string_datasets_read_like_h5py_asstr(tmp_path):
    """Names are decoded through numpy's StringDType where h5py offers it: the same ``str`` objects as h5py's own
    ``asstr()``, for any Unicode, empty strings and slices; fixed-length strings take h5py's path."""
    from shadows.io.storage import read_raw

    names = np.array(["", "gène", "细胞", "a b\tc", "x" * 300, "🧬", "naïve_T"], dtype=object)
    with h5py.File(tmp_path / "s.h5", "w") as f:
        f.create_dataset("v", data=names, dtype=h5py.string_dtype())
        f.create_dataset("fixed", data=np.array([b"ab", b"c"], dtype="S2"))
    with h5py.File(tmp_path / "s.h5", "r") as f:
        for key in ((), slice(1, 5), np.array([0, 3, 6])):
            got = read_raw(f["v"], key)
            want = f["v"].asstr()[key]
            assert got.dtype == object and list(got) == list(want)
            assert all(type(v) is str for v in got)
        assert list(read_raw(f["fixed"])) == ["ab", "c"]
