"""``shadows.convert`` (out-of-core CSR <-> CSC <-> dense) and ``shadows.stats`` (one-pass statistics).

Oracles: the converted file read by anndata equals the source's matrices (in the new format); statistics equal
numpy's on the dense matrix and scanpy's ``calculate_qc_metrics`` / ``_get_mean_var``.
"""

from __future__ import annotations

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from oracle import assert_adata_equal, read_oracle
from stream_data import SOURCES, as_kind, counts, dense_of, rich, write_source

import shadows
from shadows import AnnDataShadow
from shadows.stream.transpose import plan_buckets, transposed_blocks


# --- convert ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("fmt", "zf", "src_kind", "target"),
    [
        ("h5ad", None, "csr", "csc"),
        ("zarr", 2, "csc", "csr"),
        ("zarr", 3, "dense", "csc"),
        ("h5ad", None, "csc", "dense"),
        ("h5ad", None, "dense", "csr"),
    ],
)
def test_convert_changes_x_and_layers_only(tmp_path, fmt, zf, src_kind, target):
    path = write_source(rich(kind=src_kind, seed=1, light=True), tmp_path, fmt, zf)
    out = tmp_path / ("out.zarr" if fmt == "zarr" else "out.h5ad")
    assert shadows.convert(path, out, matrix_format=target) == out
    back, ref = read_oracle(out), read_oracle(path)
    for name, got, want in [("X", back.X, ref.X)] + [(k, back.layers[k], ref.layers[k]) for k in ref.layers]:
        kind = got.format if sp.issparse(got) else "dense"
        assert kind == target, (name, kind)
        assert got.dtype == want.dtype, name
        np.testing.assert_array_equal(dense_of(got), dense_of(want), err_msg=name)
    # everything else is as it was
    ref.X = back.X
    for k in ref.layers:
        ref.layers[k] = back.layers[k]
    assert_adata_equal(back, ref, "converted", vectors=False, to_memory=False)


@pytest.mark.parametrize("fmt", ["h5ad", "zarr"])
def test_convert_x_alone_copies_the_rest_beside_it(tmp_path, fmt, monkeypatch):
    """With X the only matrix converted, every other element is copied while X converts (in another thread, HDF5
    copies without the GIL); keys that are not ASCII still keep their names."""
    from shadows.stream import anndata_writer as stream_write

    a = rich(kind="csr", seed=3, light=True)
    a.obsm["émbedding"] = np.arange(a.n_obs * 2, dtype=np.float32).reshape(a.n_obs, 2)
    zf = int(getattr(ad.settings, "zarr_write_format", 2)) if fmt == "zarr" else None  # copies need the same format
    path = write_source(a, tmp_path, fmt, zf)
    seen = []
    check = stream_write._only_copies_besides_x
    monkeypatch.setattr(stream_write, "_only_copies_besides_x", lambda *args: seen.append(check(*args)) or seen[-1])
    out = tmp_path / ("out.zarr" if fmt == "zarr" else "out.h5ad")
    shadows.convert(path, out, "csc", layer="X")
    assert seen == [True]
    back, ref = read_oracle(out), read_oracle(path)
    assert back.X.format == "csc"
    np.testing.assert_array_equal(back.X.toarray(), dense_of(ref.X))
    ref.X = back.X
    assert_adata_equal(back, ref, "converted", vectors=False, to_memory=False)


def test_convert_out_of_core_with_a_tiny_budget(tmp_path):
    # the budget forces the scratch file and many buckets: results must not depend on it
    x = counts(500, 60, seed=9, density=0.2)
    path = write_source(ad.AnnData(X=sp.csr_matrix(x)), tmp_path, "h5ad", None)
    with shadows.settings.override(memory_budget=2**16):
        shadows.convert(path, tmp_path / "csc.h5ad", "csc", layer="X")
        shadows.convert(tmp_path / "csc.h5ad", tmp_path / "back.h5ad", "csr")
    csc, csr = read_oracle(tmp_path / "csc.h5ad").X, read_oracle(tmp_path / "back.h5ad").X
    assert csc.format == "csc" and csr.format == "csr"
    assert csc.has_sorted_indices and csr.has_sorted_indices
    np.testing.assert_array_equal(csc.toarray(), x)
    np.testing.assert_array_equal(csr.toarray(), x)
    with h5py.File(tmp_path / "csc.h5ad") as f:
        assert f["X/data"].chunks is None  # the size is known in advance: contiguous, like anndata's


def test_convert_a_view_and_refuse_unknown_formats(tmp_path):
    a = rich(kind="csr", light=True)
    path = write_source(a, tmp_path, "h5ad", None)
    cells, genes = np.arange(1, 40, 2), np.array([5, 0, 9, 3])
    with AnnDataShadow(path) as s:
        shadows.convert(s[cells, genes], tmp_path / "v.h5ad", "csc")
        with pytest.raises(ValueError, match="matrix_format"):
            shadows.convert(s, tmp_path / "x.h5ad", "coo")
    back = read_oracle(tmp_path / "v.h5ad")
    assert back.X.format == "csc"
    np.testing.assert_array_equal(back.X.toarray(), dense_of(read_oracle(path)[cells, genes].X))


def test_transposer_pieces_and_bucket_plans():
    rng = np.random.default_rng(0)
    m = sp.random(97, 31, density=0.2, format="csr", random_state=1, dtype=np.float32)
    blocks = [(a, min(97, a + 10), m[a : a + 10]) for a in range(0, 97, 10)]
    for in_memory in (True, False):
        pieces = list(transposed_blocks(iter(blocks), 97, 31, np.float32, budget=2**16, in_memory=in_memory, align=4))
        assert all(c0 % 4 == 0 for c0, _, _ in pieces) and pieces[-1][1] == 31
        got = sp.vstack([p for _, _, p in pieces]).T
        np.testing.assert_array_equal(got.toarray(), m.toarray())
    plan = plan_buckets(rng.integers(0, 100, 50), target=300, align=5, max_cols=15)
    assert plan[0][0] == 0 and plan[-1][1] == 50
    assert all(b - a <= 15 and a % 5 == 0 for a, b in plan)
    with pytest.raises(ValueError, match="consecutive"):
        list(transposed_blocks(iter(blocks[1:]), 97, 31, np.float32))


@pytest.mark.parametrize("in_memory", [True, False])
def test_transposer_reads_deferred_blocks_in_its_workers(in_memory):
    """Blocks handed over as reading functions are read by the workers, which finish them in any order: the
    pieces still hold every column's rows in order."""
    import threading
    import time

    m = sp.random(1000, 57, density=0.1, format="csr", random_state=3, dtype=np.float64)
    readers = set()

    def reader(a: int, b: int):
        def read():
            readers.add(threading.current_thread().name)
            time.sleep(0.002 * ((a // 40) % 3))  # uneven: later blocks often finish first
            return m[a:b]

        return read

    blocks = ((a, min(1000, a + 40), reader(a, min(1000, a + 40))) for a in range(0, 1000, 40))
    pieces = list(transposed_blocks(blocks, 1000, 57, np.float64, budget=2**17, in_memory=in_memory))
    assert readers and all(name.startswith("shadows-regroup") for name in readers)
    got = sp.vstack([p for _, _, p in pieces]).T.tocsr()
    for _, _, p in pieces:  # rows of each column (a row of a piece) in increasing order, as a CSC matrix needs
        assert all((np.diff(p.indices[p.indptr[i] : p.indptr[i + 1]]) > 0).all() for i in range(p.shape[0]))
    np.testing.assert_array_equal(got.toarray(), m.toarray())


# --- stats --------------------------------------------------------------------------------------------------------------
def _signed(kind: str) -> ad.AnnData:
    """Negative values, explicit zeros, a full column and an integer layer: the corners of the statistics."""
    x = counts(45, 12, seed=4)
    x[::3] -= 2.5 * (x[::3] > 0)  # negative values
    x[:, 5] = np.arange(45) + 1  # a column without zeros: its minimum comes from the values
    m = as_kind(x, kind)
    if sp.issparse(m):
        m.data[:4] = 0  # explicit zeros: stored but not non-zero
    a = ad.AnnData(X=m)
    a.layers["ints"] = sp.csr_matrix(np.abs(x).astype(np.int32))
    return a


@pytest.mark.parametrize(("fmt", "zf"), SOURCES)
@pytest.mark.parametrize("kind", ["csr", "csc", "dense"])
def test_stats_equal_numpy(tmp_path, fmt, zf, kind):
    a = _signed(kind)
    path = write_source(a, tmp_path, fmt, zf)
    cells, genes = np.array([3, 1, 2, 10, 11, 12, 30, 44]), np.array([5, 0, 7, 11])
    with AnnDataShadow(path) as s:
        for obj, x in ((s, dense_of(a.X)), (s[cells, genes], dense_of(a.X)[np.ix_(cells, genes)])):
            for axis in (0, 1):
                for chunk in (None, 4):
                    st = shadows.stats(obj, axis=axis, chunk_size=chunk)
                    _check_stats(st, x, axis)
        st = shadows.stats(s, axis=0, layer="ints")
        _check_stats(st, dense_of(a.layers["ints"]), 0)
        assert st["min"].dtype == np.int32


def _check_stats(st: dict, x: np.ndarray, axis: int) -> None:
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(st["sum"], x64.sum(axis=axis), rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(st["mean"], x64.mean(axis=axis), rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(st["var"], x64.var(axis=axis, ddof=1), rtol=1e-9, atol=1e-9)
    np.testing.assert_array_equal(st["nnz"], (x != 0).sum(axis=axis))
    np.testing.assert_array_equal(st["min"], x.min(axis=axis))
    np.testing.assert_array_equal(st["max"], x.max(axis=axis))


def test_stats_with_a_tiny_budget_pending_values_and_frames(tmp_path):
    x = counts(400, 30, seed=2)
    path = write_source(ad.AnnData(X=sp.csr_matrix(x)), tmp_path, "h5ad", None)
    with shadows.settings.override(memory_budget=2**16), AnnDataShadow(path) as s:
        _check_stats(shadows.stats(s, axis=0), x, 0)
        df = shadows.stats(s, axis=1, as_frame=True)
        assert list(df.index) == list(s.obs_names) and list(df.columns) == ["sum", "mean", "var", "nnz", "min", "max"]
        s.layers["scaled"] = x * 3
        _check_stats(shadows.stats(s, axis=0, layer="scaled"), x * 3, 0)
    _check_stats(shadows.stats(path, axis=1), x, 1)  # a path works too
    with pytest.raises(ValueError, match="axis"):
        shadows.stats(path, axis=2)


def test_stats_equal_scanpy(tmp_path):
    sc = pytest.importorskip("scanpy")
    try:  # scanpy < 1.12
        from scanpy.preprocessing._utils import _get_mean_var
    except ImportError:  # scanpy >= 1.12 computes them with fast_array_utils
        from fast_array_utils.stats import mean_var

        def _get_mean_var(x):
            return mean_var(x, axis=0, correction=1)

    x = counts(60, 20, seed=8)
    a = ad.AnnData(X=sp.csr_matrix(x))
    path = write_source(a, tmp_path, "h5ad", None)
    genes = shadows.stats(path, axis=0)
    cells = shadows.stats(path, axis=1)
    qc_cells, qc_genes = sc.pp.calculate_qc_metrics(a, percent_top=None, inplace=False)
    np.testing.assert_array_equal(genes["nnz"], qc_genes["n_cells_by_counts"].to_numpy())
    np.testing.assert_allclose(genes["sum"], qc_genes["total_counts"].to_numpy(), rtol=1e-6)
    np.testing.assert_allclose(genes["mean"], qc_genes["mean_counts"].to_numpy(), rtol=1e-6)
    np.testing.assert_array_equal(cells["nnz"], qc_cells["n_genes_by_counts"].to_numpy())
    np.testing.assert_allclose(cells["sum"], qc_cells["total_counts"].to_numpy(), rtol=1e-6)
    mean, var = _get_mean_var(a.X)
    np.testing.assert_allclose(genes["mean"], mean, rtol=1e-6)
    np.testing.assert_allclose(genes["var"], var, rtol=1e-6)
    # highly_variable_genes' dispersions (cell_ranger flavour works on the values as they are)
    hvg = sc.pp.highly_variable_genes(a, flavor="cell_ranger", inplace=False, n_top_genes=5)
    with np.errstate(divide="ignore", invalid="ignore"):
        dispersion = genes["var"] / genes["mean"]
    np.testing.assert_allclose(hvg["means"].to_numpy(), genes["mean"], rtol=1e-5, atol=1e-9)  # scanpy: 0 -> 1e-12
    ok = np.isfinite(dispersion)
    np.testing.assert_allclose(hvg["dispersions"].to_numpy()[ok], dispersion[ok], rtol=1e-5)
    assert isinstance(shadows.stats(path, as_frame=True), pd.DataFrame)


@pytest.mark.parametrize("compression", [None, "gzip"])
def test_stats_through_memory_maps_cut_mid_row(tmp_path, compression):
    """Per-gene statistics of an uncompressed CSR file view the file through memory maps, in ranges of values cut
    anywhere (a tiny budget cuts rows in two, and HDF5's chunk layout has gaps between runs); compressed files
    take the block reader.  Both equal numpy's, negative values, explicit zeros and a full column included."""
    from shadows.ops.stats import mapped_values
    from shadows.stream.shadow import matrix_part

    x = counts(600, 40, seed=11, density=0.4)
    x[:100:5] -= 1.5 * (x[:100:5] > 0)  # negative values in the first blocks only
    x[:, 7] = 600 - np.arange(600)  # never zero: its minimum comes from the values, in the last row
    x[:, 9] = np.arange(600) % 5  # zero in every fifth row
    m = sp.csr_matrix(x)
    m.data[10:20] = 0  # explicit zeros
    path = tmp_path / "m.h5ad"
    ad.AnnData(X=m).write_h5ad(path, compression=compression)
    with h5py.File(path, "r+") as f:  # a chunked layout with more than one chunk (anndata's is contiguous here)
        for name in ("data", "indices"):
            values = f["X"][name][...]
            del f["X"][name]
            f["X"].create_dataset(name, data=values, chunks=(1000,), compression=compression)
    with shadows.settings.override(memory_budget=2**16), AnnDataShadow(path) as s:
        blocks = mapped_values(matrix_part(s, "X"), 0, None, None)
        assert (blocks is None) == (compression is not None)
        if blocks is not None:
            ranges = [(a, b, r.rows_done) for a, b, r in blocks]
            assert len(ranges) > 5 and ranges[-1][1] == m.nnz
            assert any(m.indptr[r] != b for _, b, r in ranges)  # some ranges end inside a row
        dense = m.toarray()
        _check_stats(shadows.stats(s, axis=0), dense, 0)
        _check_stats(shadows.stats(s, axis=1), dense, 1)


def test_scatter_matvec_fast_path_and_fallback():
    """The direct call of scipy's C product and the public product (other index types) agree, accumulating."""
    from shadows.ops.stats import _matvec

    m = sp.random(30, 50, density=0.3, format="csc", random_state=2, dtype=np.float64)
    x = np.random.default_rng(3).random(50)
    want = m @ x
    for idx_dtype in (np.int32, np.int64, np.uint16):
        idx, ip = m.indices.astype(idx_dtype), m.indptr.astype(idx_dtype)
        np.testing.assert_allclose(_matvec(m.data, idx, ip, m.shape, x), want, rtol=1e-12)
        out = np.ones(30)
        assert _matvec(m.data, idx, ip, m.shape, x, out) is out
        np.testing.assert_allclose(out, want + 1, rtol=1e-12)
