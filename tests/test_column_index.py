"""The column index: ``X/shadows_column_index`` (a column-major copy of a CSR matrix, row-major of CSC).

Checked against anndata and mudata (they must read the file unchanged), and by overwriting every byte that a gene
read must not touch: a read through the index is then still right only if it reads that gene's bytes alone.
"""

from __future__ import annotations

import anndata as ad
import h5py
import numpy as np
import pytest
import scipy.sparse as sp
import zarr
from oracle import assert_adata_equal, read_oracle
from stream_data import SOURCES, counts, dense_of, rich, write_source

import shadows
from shadows import AnnDataShadow
from shadows.spec.sparse import COLUMN_INDEX


@pytest.mark.parametrize(("fmt", "zf", "kind"), [(f, z, "csr") for f, z in SOURCES] + [("h5ad", None, "csc")])
def test_index_is_used_and_invisible_to_anndata(tmp_path, fmt, zf, kind):
    a = rich(kind=kind, seed=6, light=True)
    path = write_source(a, tmp_path, fmt, zf)
    before = read_oracle(path)
    with AnnDataShadow(path, mode="r+") as s:
        assert s.add_column_index() is s
        s.add_column_index("layers/counts")
        s.add_column_index()  # a second call finds it there
    root = h5py.File(path) if fmt == "h5ad" else zarr.open_group(path, mode="r")
    g = root["X"][COLUMN_INDEX]
    other = "csc_matrix" if kind == "csr" else "csr_matrix"
    assert g.attrs["encoding-type"] == other and list(g.attrs["shape"]) == list(a.shape)
    if fmt == "h5ad":
        root.close()
    else:  # the consolidated metadata know the new group (anndata opens zarr stores through them)
        assert f"X/{COLUMN_INDEX}" in zarr.open_consolidated(path, mode="r")
    # anndata reads the file as before, in memory and backed
    assert_adata_equal(read_oracle(path), before, "indexed", vectors=False, to_memory=False)
    if fmt == "h5ad":
        backed = ad.read_h5ad(path, backed="r")
        np.testing.assert_array_equal(dense_of(backed.X[:, [2, 4]]), dense_of(before.X[:, [2, 4]]))
        backed.file.close()
    # shadows read genes (and cells) through it, views included
    with AnnDataShadow(path) as s:
        for key in ((slice(None), [4, 1]), ([3, 0, 17], slice(None)), (np.arange(0, 40, 3), [2, 9])):
            got = s[key].X
            assert got.format == kind
            np.testing.assert_array_equal(dense_of(got), dense_of(before[key].X))
        np.testing.assert_array_equal(s.obs_vector("gene7"), dense_of(before.X)[:, 7])


def test_gene_read_touches_only_that_genes_bytes(tmp_path):
    x = counts(300, 50, seed=3)
    path = write_source(ad.AnnData(X=sp.csr_matrix(x)), tmp_path, "h5ad", None)
    with AnnDataShadow(path, mode="r+") as s:
        s.add_column_index()
    j = 17
    with h5py.File(path, "r+") as f:
        # garbage in the matrix itself and in the index outside gene j
        f["X/data"][...] = -1
        f["X/indices"][...] = 0
        ci = f[f"X/{COLUMN_INDEX}"]
        assert ci["data"].chunks is None  # contiguous: a gene is one contiguous read
        lo, hi = ci["indptr"][j : j + 2]
        data, idx = ci["data"][...], ci["indices"][...]
        data[:lo], data[hi:], idx[:lo], idx[hi:] = -7, -7, 0, 0
        ci["data"][...], ci["indices"][...] = data, idx
    with AnnDataShadow(path) as s:
        np.testing.assert_array_equal(s[:, j].X.toarray().ravel(), x[:, j])


def test_index_requires_write_mode_and_whole_shadow(tmp_path):
    path = write_source(rich(kind="csr", light=True), tmp_path, "h5ad", None)
    with AnnDataShadow(path) as s:
        with pytest.raises(ValueError, match="read-only"):
            s.add_column_index()
    with AnnDataShadow(path, mode="r+") as s:
        with pytest.raises(ValueError, match="view"):
            s[:3].add_column_index()
        with pytest.raises(KeyError, match="no sparse matrix"):
            s.add_column_index("layers/dense")
        s.X = sp.csr_matrix(np.ones(s.shape, dtype=np.float32))
        with pytest.raises(ValueError, match="pending"):
            s.add_column_index()


@pytest.mark.parametrize(("fmt", "zf"), SOURCES)
def test_drop_and_crash_safety(tmp_path, fmt, zf, monkeypatch):
    a = rich(kind="csr", seed=2, light=True)
    path = write_source(a, tmp_path, fmt, zf)
    import shadows.ops.column_index as ci

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    with AnnDataShadow(path, mode="r+") as s:
        monkeypatch.setattr(ci, "write_transposed", broken)
        with pytest.raises(RuntimeError, match="disk full"):
            s.add_column_index()
        monkeypatch.undo()
        assert COLUMN_INDEX not in s._state.root()["X"]  # nothing half-built became visible
        if fmt == "zarr":
            assert not (tmp_path / path.split("/")[-1] / "X" / ci.STAGING).exists()
        s.add_column_index()
        assert COLUMN_INDEX in s._state.root()["X"]
        s.drop_column_index()
        assert COLUMN_INDEX not in s._state.root()["X"]
        s.drop_column_index()  # nothing to drop: no error
        np.testing.assert_array_equal(dense_of(s[:, [1, 2]].X), dense_of(a.X)[:, [1, 2]])
    assert_adata_equal(read_oracle(path), read_oracle(path), "after drop", vectors=False, to_memory=False)
    if fmt == "zarr":
        assert f"X/{COLUMN_INDEX}" not in zarr.open_consolidated(path, mode="r")


def test_index_inside_a_mudata_modality(tmp_path):
    mu = pytest.importorskip("mudata")
    rna = ad.AnnData(X=sp.csr_matrix(counts(30, 12, seed=1)))
    prot = ad.AnnData(X=counts(30, 4, seed=2))
    rna.obs_names = prot.obs_names = [f"c{i}" for i in range(30)]
    rna.var_names, prot.var_names = [f"g{i}" for i in range(12)], [f"p{i}" for i in range(4)]
    path = tmp_path / "m.h5mu"
    mu.MuData({"rna": rna, "prot": prot}).write(path)
    with AnnDataShadow(f"{path}/mod/rna", mode="r+") as s:
        s.add_column_index()
    back = mu.read_h5mu(path)
    np.testing.assert_array_equal(back["rna"].X.toarray(), rna.X.toarray())
    with AnnDataShadow(f"{path}/mod/rna") as s:
        np.testing.assert_array_equal(s[:, 5].X.toarray(), rna.X[:, 5].toarray())
    assert shadows.AnnDataShadow  # the package stays importable with the index present
