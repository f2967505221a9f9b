"""Keys and values are checked before anything is written, so that no write destroys a group or leaves a file that
anndata cannot read.

* names zarr keeps for its metadata (``.zgroup``, ``.zattrs``, ``.zarray``, ``.zmetadata``, ``zarr.json``), ``/``,
  empty names, ``.`` and ``..`` are refused on assignment (mappings, nested ``uns`` dicts, assigned tables) and again
  when writing (``obs`` columns, names stored in an HDF5 source), for HDF5 and zarr alike;
* values are checked as anndata checks them (a data frame in obsm/varm indexed by obs/var names, a 2-D ``X``): each
  case is first tried on an in-memory AnnData, and the shadow must refuse what anndata refuses (same exception type)
  and write what anndata writes, readable by anndata.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from oracle import assert_adata_equal, layer_keys, read_oracle, store_path, write_adata
from test_outputs_safety import FORMAT_IDS, FORMATS, leftovers, small_adata, tree_digest

import shadows
from shadows import AnnDataShadow

RESERVED = [".zgroup", ".zattrs", ".zarray", ".zmetadata", "zarr.json"]
BAD = [*RESERVED, "", "a/b", ".", ".."]


@pytest.fixture(params=FORMATS, ids=FORMAT_IDS)
def path(request, tmp_path) -> Path:
    fmt, zarr_format = request.param
    return Path(write_adata(small_adata(), store_path(tmp_path, fmt, zarr_format), zarr_format=zarr_format))


def value_for(s: AnnDataShadow, group: str):
    n, m = s.shape
    return {
        "layers": np.ones((n, m), dtype=np.float32),
        "obsm": np.ones((n, 2)),
        "varm": np.ones((m, 2)),
        "obsp": np.ones((n, n)),
        "varp": np.ones((m, m)),
        "uns": 1,
    }[group]


def test_bad_keys_refused_on_assignment(path):
    digest = tree_digest(path)
    s = AnnDataShadow(path, mode="r+")
    for group in ("layers", "obsm", "varm", "obsp", "varp", "uns"):
        for key in BAD:
            with pytest.raises(ValueError, match="cannot be written as a key"):
                getattr(s, group)[key] = value_for(s, group)
            assert key not in getattr(s, group).keys()
    s.layers["fine"] = value_for(s, "layers")
    s.write()
    s.close()
    back = read_oracle(path)  # every group intact (a .zgroup layer used to wipe all layers)
    assert set(layer_keys(back.layers)) == {"counts", "fine"}
    assert back.uns["params"]["k"] == 3 and "X_pca" in back.obsm
    assert tree_digest(path) != digest


def test_bad_keys_inside_values_refused_on_assignment(path):
    s = AnnDataShadow(path, mode="r+")
    with pytest.raises(ValueError, match="zarr.json"):
        s.uns["nested"] = {"ok": {"zarr.json": 1}}
    with pytest.raises(ValueError, match=r"\.zattrs"):
        s.uns["params"][".zattrs"] = 1  # a dict of uns, changed in place
    with pytest.raises(ValueError, match=r"\.zarray"):
        s.uns["params"].update({"fine": 1, ".zarray": 2})
    assert "fine" not in s.uns["params"], "update() checks every key before setting any"
    with pytest.raises(ValueError, match=r"\.zgroup"):
        s.uns["table"] = pd.DataFrame({".zgroup": [1, 2]})
    with pytest.raises(ValueError, match=r"\.zattrs"):
        s.obsm["df"] = pd.DataFrame({".zattrs": np.arange(s.n_obs)}, index=s.obs_names)
    with pytest.raises(ValueError, match=r"\.zgroup"):
        s.obs = s.obs.assign(**{".zgroup": 1})
    s.close()


def test_slash_inside_a_value_taken_on_assignment_refused_at_write(path):
    """anndata takes a data frame whose column holds a '/' (scanpy's rank_genes_groups(pts=True) names columns after
    groups such as "CD4+/CD25 T Reg"): so does the shadow, and write() then refuses it by name, writing nothing."""
    s = AnnDataShadow(path, mode="r+")
    table = pd.DataFrame({"CD4+/CD25 T Reg": [0.5, 0.25]}, index=["g0", "g1"])
    s.uns["pts"] = table  # as on an in-memory AnnData: no error
    s.uns["nested"] = {"a/b": 1}
    pd.testing.assert_frame_equal(s.uns["pts"], table)
    digest = tree_digest(path)
    with pytest.raises(ValueError, match="CD4\\+/CD25 T Reg"):
        s.write()
    assert tree_digest(path) == digest, "nothing is written"
    with pytest.raises(ValueError, match="cannot be written as a key"):
        s.write_h5ad(path.with_name("copy.h5ad"))
    assert not path.with_name("copy.h5ad").exists()
    del s.uns["pts"]
    del s.uns["nested"]
    s.close()


@pytest.mark.parametrize("column", RESERVED)
def test_obs_column_named_like_metadata_refused_at_write(path, column):
    s = AnnDataShadow(path, mode="r+")
    digest = tree_digest(path)  # once open: opening HDF5 for writing marks its header
    s.obs[column] = np.arange(s.n_obs)  # pandas takes it: checked when written
    with pytest.raises(ValueError, match="cannot be written as a key"):
        s.write()
    assert tree_digest(path) == digest, "nothing is written"
    out = path.with_name("copy.zarr")
    for target in (s, s[:5]):  # a view sees the column too
        with pytest.raises(ValueError, match="cannot be written as a key"):
            target.write_zarr(out)
        assert not out.exists() and leftovers(path.parent) == []
    s.close()
    assert list(read_oracle(path).obs.columns) == ["g"]


def test_h5ad_names_that_zarr_refuses_are_not_streamed(tmp_path):
    a = small_adata()
    a.layers[".zgroup"] = a.X.copy()  # anndata writes it into an h5ad file
    a.uns["d"] = {".zattrs": 1}
    src = Path(write_adata(a, tmp_path / "src.h5ad"))
    for call in (
        lambda dst: AnnDataShadow(src).write_zarr(dst),
        lambda dst: shadows.convert(src, dst, "csc"),
    ):
        dst = tmp_path / "out.zarr"
        with pytest.raises(ValueError, match=r"\.zgroup"):
            call(dst)
        assert not dst.exists() and leftovers(tmp_path) == []
    s = AnnDataShadow(src, mode="r+")
    del s.layers[".zgroup"]
    with pytest.raises(ValueError, match=r"uns/d/\.zattrs"):  # nested: found in the file
        s.write_zarr(tmp_path / "out.zarr")
    del s.uns["d"]
    s.write_zarr(tmp_path / "out.zarr")
    assert set(layer_keys(read_oracle(tmp_path / "out.zarr").layers)) == {"counts"}
    s.close()


# --- values, as anndata checks them -----------------------------------------------------------------------------------
def _cases(n: int, m: int, obs_names: pd.Index, var_names: pd.Index) -> dict:
    return {
        "obsm DataFrame, integer index": ("obsm", "df", pd.DataFrame({"q": np.arange(n)})),
        "obsm DataFrame, reordered index": ("obsm", "df", pd.DataFrame({"q": np.arange(n)}, index=obs_names[::-1])),
        "obsm DataFrame, obs_names": ("obsm", "df", pd.DataFrame({"q": np.arange(n)}, index=obs_names)),
        "varm DataFrame, integer index": ("varm", "df", pd.DataFrame({"q": np.arange(m)})),
        "X 3-D": ("X", None, np.ones((n, m, 2), dtype=np.float32)),
        "X 2-D": ("X", None, np.ones((n, m), dtype=np.float32)),
        "layer 3-D": ("layers", "cube", np.ones((n, m, 2), dtype=np.float32)),
        "obsm 3-D": ("obsm", "cube", np.ones((n, 2, 2))),
    }


def _assign(obj, group: str, key, value) -> None:
    if group == "X":
        obj.X = value
    else:
        getattr(obj, group)[key] = value


def anndata_verdict(tmp_path: Path, group: str, key, value) -> type[BaseException] | None:
    """What anndata does with the assignment followed by a write: the exception type it raises, or None."""
    a = small_adata()
    try:
        _assign(a, group, key, value)
        a.write_h5ad(tmp_path / "oracle.h5ad")
        read_oracle(tmp_path / "oracle.h5ad")
    except Exception as e:
        return type(e)
    return None


@pytest.mark.parametrize("case", list(_cases(1, 1, pd.Index(["a"]), pd.Index(["b"]))))
def test_values_checked_as_anndata_checks_them(path, case):
    a = small_adata()
    group, key, value = _cases(a.n_obs, a.n_vars, a.obs_names, a.var_names)[case]
    want = anndata_verdict(path.parent, group, key, value)
    s = AnnDataShadow(path, mode="r+")
    try:
        _assign(s, group, key, value)
        s.write(overwrite=True)
    except Exception as e:
        assert want is not None, f"{case}: anndata accepts and writes it, the shadow refused: {e!r}"
        assert isinstance(e, want), f"{case}: anndata raises {want.__name__}, the shadow {type(e).__name__}"
        s.close()
        # closing a file opened for writing touches HDF5's header: compared by content, not bytes
        assert_adata_equal(read_oracle(path), a, f"{case}: refused, yet the file changed", vectors=False)
        return
    s.close()
    assert want is None, f"{case}: anndata refuses it ({want.__name__}), the shadow wrote it"
    back = read_oracle(path)  # the whole file stays readable by anndata
    got = back.X if group == "X" else getattr(back, group)[key]
    np.testing.assert_array_equal(np.asarray(got), np.asarray(value))


def test_refused_value_leaves_the_streamed_output_absent(tmp_path):
    src = Path(write_adata(small_adata(), tmp_path / "src.h5ad"))
    s = AnnDataShadow(src)
    s._state.pending[("obsm", "df")] = pd.DataFrame({"q": np.arange(s.n_obs)})  # slipped past the assignment check
    for method, dst in (("write_h5ad", tmp_path / "o.h5ad"), ("write_zarr", tmp_path / "o.zarr")):
        with pytest.raises(ValueError, match="obs names"):
            getattr(s, method)(dst)
        assert not dst.exists()
    s.close()
    assert leftovers(tmp_path) == []
