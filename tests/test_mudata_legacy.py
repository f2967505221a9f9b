"""MuData files in the layouts of mudata < 0.2 (and of muon before it), built by hand, read through MuDataShadow.

Layouts, following mudata's io specification (``docs/source/io/spec.rst``: modalities under ``mod`` stored
alphabetically, their order in the ``mod-order`` attribute, ignored when it does not name the modalities) and the
writers of mudata 0.1 (``mudata/_core/io.py`` of that release: anndata 0.7's ``write_attribute`` for every element,
``encoding-type`` "MuData" on the root and "AnnData" on each modality, no ``axis``, no ``mod-order``, a 512-byte
user block starting ``MuData (format-version=...``):

* ``mudata01``: mudata 0.1 as described, with ``obsmap``/``varmap`` and the boolean ``obsm``/``varm`` masks of each
  modality; anndata 0.7 encodings inside (dataframe 0.1.0 with ``__categories`` references, sparse matrices with
  ``encoding-type`` csr_matrix 0.1.0, plain datasets and groups without encoding attributes).
* ``muon``: as muon wrote them before mudata: no attributes on the root or the modalities and no ``obsmap``/
  ``varmap`` at all; the maps are derived from the names, as mudata's ``update()`` does on reading.
* files written by the installed mudata with attributes taken away afterwards (``axis``, ``mod-order``, the root's
  encoding attributes, the maps), in HDF5 and zarr; and ``mod-order`` attributes that mudata's specification says
  to ignore.

For each: (1) the shadow has the documented meaning, checked without mudata; (2) where the installed mudata reads
the file, every shadow element (and every element of views) equals mudata's.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

md = pytest.importorskip("mudata")

from legacy_files import VLEN_STR, dataframe_v07_h5, encoded_sparse_group_v07  # noqa: E402
from oracle import assert_element_equal, quiet  # noqa: E402
from test_mudata import POOL, SUBSETS, assert_mudata_equal, build_mudata, composed, stored_tables, write_mudata  # noqa: E402

from shadows import MuDataShadow  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _no_pull_on_update():
    if hasattr(md, "set_options"):
        with md.set_options(pull_on_update=False):
            yield
    else:
        yield


# --------------------------------------------------------------------------------------
# hand-built files
# --------------------------------------------------------------------------------------

CELLS = [f"cell{i}" for i in range(8)]
RNA_CELLS = CELLS  # every cell
ATAC_CELLS = CELLS[7:1:-1]  # cell7 .. cell2: fewer cells, in another order
GENES = [f"gene{i}" for i in range(5)]
PEAKS = [f"peak{i}" for i in range(4)]
GLOBAL_VARS = GENES + PEAKS  # as the user added the modalities: rna, then atac
RNG = np.random.default_rng(5)
RNA_X = RNG.poisson(1.0, (8, 5)).astype(np.float32)
ATAC_X = sparse.csr_matrix(np.where(RNG.random((6, 4)) < 0.5, 1.0, 0.0))
BATCH = pd.Categorical.from_codes([0, 1, 1, 0, 2, 0, 1, 1], ["b1", "b2", "b3"])


def _map(global_names, mod_names) -> np.ndarray:
    pos = {n: i + 1 for i, n in enumerate(mod_names)}
    return np.array([pos.get(n, 0) for n in global_names], dtype=np.uint32)


def _modality_v07(mods, name: str, cells, features, X, attrs: bool) -> None:
    g = mods.create_group(name)
    if attrs:
        g.attrs["encoding-type"] = "AnnData"
        g.attrs["encoding-version"] = "0.1.0"
        g.attrs["encoder"] = "mudata"
        g.attrs["encoder-version"] = "0.1.2"
    if sparse.issparse(X):
        encoded_sparse_group_v07(g, "X", X)
    else:
        g.create_dataset("X", data=X)
    n = len(cells)
    dataframe_v07_h5(g, "obs", cells, {"n_counts": np.arange(n, dtype=np.int32)})
    dataframe_v07_h5(g, "var", features, {"kind": np.array([name] * len(features), dtype=object)})
    g.create_group("obsm").create_dataset("X_pca", data=np.arange(n * 2, dtype=np.float64).reshape(n, 2))
    for empty in ("varm", "obsp", "varp", "layers"):
        g.create_group(empty)
    g.create_group("uns").create_dataset("title", data=name, dtype=VLEN_STR)


def build_legacy(directory, variant: str) -> str:
    """``variant``: "mudata01" or "muon" (see the module docstring)."""
    path = str(directory / f"{variant}.h5mu")
    with h5py.File(path, "w", userblock_size=512) as f:
        if variant == "mudata01":
            f.attrs["encoding-type"] = "MuData"
            f.attrs["encoding-version"] = "0.1.0"
            f.attrs["encoder"] = "mudata"
            f.attrs["encoder-version"] = "0.1.2"
        dataframe_v07_h5(f, "obs", CELLS, {"batch": BATCH, "score": np.linspace(0, 1, 8)})
        dataframe_v07_h5(f, "var", GLOBAL_VARS, {"highly_variable": np.arange(9) % 2 == 0})
        obsm, varm = f.create_group("obsm"), f.create_group("varm")
        obsm.create_dataset("X_joint", data=np.arange(16, dtype=np.float32).reshape(8, 2))
        for name, cells, features in (("rna", RNA_CELLS, GENES), ("atac", ATAC_CELLS, PEAKS)):
            # mudata 0.1's masks of each modality (anndata's obsm keeps a 1-d value as one column)
            obsm.create_dataset(name, data=(_map(CELLS, cells) > 0)[:, None])
            varm.create_dataset(name, data=(_map(GLOBAL_VARS, features) > 0)[:, None])
        for empty in ("obsp", "varp"):
            f.create_group(empty)
        f.create_group("uns").create_dataset("note", data="legacy", dtype=VLEN_STR)
        if variant == "mudata01":
            for axis_name, names, parts in (
                ("obs", CELLS, {"rna": RNA_CELLS, "atac": ATAC_CELLS}),
                ("var", GLOBAL_VARS, {"rna": GENES, "atac": PEAKS}),
            ):
                g = f.create_group(f"{axis_name}map")
                for mod, mod_names in parts.items():
                    g.create_dataset(mod, data=_map(names, mod_names))
        mods = f.create_group("mod")  # no mod-order: the stored (alphabetical) order is the order
        _modality_v07(mods, "rna", RNA_CELLS, GENES, RNA_X, attrs=variant == "mudata01")
        _modality_v07(mods, "atac", ATAC_CELLS, PEAKS, ATAC_X, attrs=variant == "mudata01")
    with open(path, "r+b") as fh:  # the user block mudata and muon write
        fh.write(b"MuData (format-version=0.1.0;creator=muon;creator-version=0.1.2)")
    return path


def _read_mudata(path: str):
    try:
        with quiet():
            return md.read_h5mu(path)
    except Exception as e:  # noqa: BLE001 - an old layout the installed mudata no longer reads
        pytest.skip(f"mudata {md.__version__} does not read this layout ({type(e).__name__}: {e})")


@pytest.mark.parametrize("variant", ["mudata01", "muon"])
def test_legacy_layout_has_documented_meaning(tmp_path, variant):
    path = build_legacy(tmp_path, variant)
    sh = MuDataShadow(path)
    assert sh.axis == 0 and sh.shape == (8, 9)
    assert list(sh.mod) == ["atac", "rna"], "no mod-order: the stored order"
    assert list(sh.obs_names) == CELLS and list(sh.var_names) == GLOBAL_VARS
    np.testing.assert_array_equal(sh.obsmap["atac"], _map(CELLS, ATAC_CELLS))
    np.testing.assert_array_equal(sh.obsmap["rna"], _map(CELLS, RNA_CELLS))
    np.testing.assert_array_equal(sh.varmap["atac"], _map(GLOBAL_VARS, PEAKS))
    assert sh.obsmap["rna"].dtype == np.uint32
    assert list(sh.obs["batch"]) == list(BATCH) and list(sh.obs["batch"].cat.categories) == ["b1", "b2", "b3"]
    np.testing.assert_array_equal(sh["rna"].X, RNA_X)
    assert (sh["atac"].X != ATAC_X).nnz == 0 and sh["atac"].X.format == "csr"
    assert list(sh["atac"].obs_names) == ATAC_CELLS and sh.uns["note"] == "legacy"
    # a view: cells 1..4 and the genes; atac holds cell7..cell2, so of cells 1..4 it has 4, 3, 2 (rows 3, 4, 5),
    # in the order of the view
    v = sh[1:5, :5]
    assert v.shape == (4, 5) and v["rna"].shape == (4, 5) and v["atac"].shape == (3, 0)
    assert list(v["atac"].obs_names) == ["cell2", "cell3", "cell4"]
    np.testing.assert_array_equal(v["rna"].X, RNA_X[1:5])
    np.testing.assert_array_equal(v.obsmap["atac"], [0, 1, 2, 3])
    sh.close()


@pytest.mark.parametrize("variant", ["mudata01", "muon"])
def test_legacy_layout_equals_mudata(tmp_path, variant):
    path = build_legacy(tmp_path, variant)
    ref = _read_mudata(path)
    tables = stored_tables(path)
    sh = MuDataShadow(path)
    assert_mudata_equal(sh, ref, variant, stored=tables)
    for idx in (slice(1, 6), (np.array([7, 0, 3]), slice(2, 8))):
        with quiet():
            rv = ref[idx]
        v = sh[idx]
        assert_mudata_equal(v, rv, f"{variant}[{idx}]", stored=tables)
        assert_mudata_equal(v[1:], composed(ref, rv, slice(1, None)), f"{variant}[{idx}][1:]", stored=tables)
    sh.close()


# --------------------------------------------------------------------------------------
# files of the installed mudata with attributes taken away
# --------------------------------------------------------------------------------------


def _strip(path: str, *, drop: tuple[str, ...] = (), mod_order: list | str | None = None) -> None:
    """Take root attributes (``axis``, ``encoding-type``...) and groups (``obsmap``...) away; set ``mod-order``
    (a list), or take it away (``"delete"``)."""
    if path.endswith(".zarr"):
        import zarr

        f = zarr.open_group(path, mode="r+")
        attrs, mod_attrs = f.attrs, f["mod"].attrs
    else:
        f = h5py.File(path, "r+")
        attrs, mod_attrs = f.attrs, f["mod"].attrs
    for k in drop:
        if k in attrs:
            del attrs[k]
        elif k in f:
            del f[k]
    if mod_order == "delete":
        del mod_attrs["mod-order"]
    elif mod_order is not None:
        mod_attrs["mod-order"] = list(mod_order) if path.endswith(".zarr") else np.array(mod_order, dtype=object)
    if path.endswith(".zarr"):
        if (Path(path) / ".zmetadata").exists():  # keep consolidated metadata (if any) in step
            zarr.consolidate_metadata(path)
    else:
        f.close()


@pytest.mark.parametrize("fmt", [("h5mu", None), ("zarr", 2)], ids=["h5mu", "zarr2"])
def test_stripped_modern_file(tmp_path, fmt):
    m = build_mudata(21, 0, 3, POOL, SUBSETS, [3, 2, 4])
    path = write_mudata(m, tmp_path, *fmt)
    with quiet():
        want = {
            k: np.asarray(v) for k, v in (md.read_h5mu(path) if fmt[0] == "h5mu" else md.read_zarr(path)).obsmap.items()
        }
    _strip(path, drop=("axis", "encoding-type", "encoding-version", "obsmap", "varmap"), mod_order="delete")
    sh = MuDataShadow(path)
    assert sh.axis == 0 and list(sh.mod) == sorted(["rna", "prot", "atac"]), "stored order without mod-order"
    for k, v in want.items():
        assert_element_equal(sh.obsmap[k], v, f"derived obsmap[{k!r}]")
    if fmt[0] == "h5mu":  # the installed mudata re-derives them in the same way
        ref = _read_mudata(path)
        assert_mudata_equal(sh, ref, "stripped", stored=stored_tables(path))
        with quiet():
            rv = ref[[5, 1, 11, 2]]
        assert_mudata_equal(sh[[5, 1, 11, 2]], rv, "stripped view", stored=stored_tables(path))
    sh.close()


def test_mod_order_is_ignored_unless_it_names_the_modalities(tmp_path):
    m = build_mudata(22, 1, 3, POOL, SUBSETS, [3, 2, 4])
    path = write_mudata(m, tmp_path, "h5mu", None)
    with MuDataShadow(path) as sh:
        assert list(sh.mod) == ["rna", "prot", "atac"], "mod-order as written"
    _strip(path, mod_order=["prot", "atac", "rna"])
    with MuDataShadow(path) as sh:
        assert list(sh.mod) == ["prot", "atac", "rna"]
    # names a modality that is not there: ignored (as mudata does)
    _strip(path, mod_order=["prot", "atac", "rna", "gone"])
    with MuDataShadow(path) as sh:
        assert list(sh.mod) == ["atac", "prot", "rna"]
    # misses a modality: ignored, as mudata's specification says (mudata's reader would drop 'rna' here)
    _strip(path, mod_order=["prot", "atac"])
    with MuDataShadow(path) as sh:
        assert list(sh.mod) == ["atac", "prot", "rna"]
        assert sh["rna"].shape[0] > 0
    # a single modality is stored as a one-element array
    _strip(path, mod_order=["rna"])
    with MuDataShadow(path) as sh:
        assert list(sh.mod) == ["atac", "prot", "rna"]


def test_maps_that_do_not_fit_the_global_axis_are_refused(tmp_path):
    m = build_mudata(23, 0, 2, POOL, SUBSETS, [3, 2])
    path = write_mudata(m, tmp_path, "h5mu", None)
    with h5py.File(path, "r+") as f:
        del f["obsmap/rna"]
        f["obsmap"].create_dataset("rna", data=np.ones(3, dtype=np.uint32))
    sh = MuDataShadow(path)
    with pytest.raises(ValueError, match="obsmap/rna has 3 entries but the global obs has 12"):
        sh[:4].mod["rna"]
    sh.close()
