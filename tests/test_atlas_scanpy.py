"""Atlas-scale scanpy: scanpy's own functions on ``AnnDataShadow(path, array_backend="dask")`` give what they give
on the in-memory AnnData, X stays a lazy dask chain, the result writes back, and peak memory stays bounded.

Small files (300 x 150) written once per session, in h5ad and zarr, CSR and CSC; the preprocessing chain runs once
per file (module fixtures), the tests compare its results and the functions that follow it."""

from __future__ import annotations

import shutil
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from compare import render_figures

from shadows import AnnDataShadow

sc = pytest.importorskip("scanpy")
da = pytest.importorskip("dask.array")

FILES = ("h5ad", "zarr", "csc.h5ad")


def _counts(n: int = 300, g: int = 150, seed: int = 3) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    X = sp.random(n, g, density=0.2, format="csr", dtype=np.float32, random_state=seed)
    X.data = (rng.negative_binomial(2, 0.35, X.nnz) + 1).astype(np.float32)
    obs = pd.DataFrame({"batch": pd.Categorical(rng.choice(["b1", "b2"], n))}, index=[f"c{i}" for i in range(n)])
    var = pd.DataFrame(index=[("MT-" if i < 5 else "G") + str(i) for i in range(g)])
    return ad.AnnData(X, obs=obs, var=var)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, object]:
    d = tmp_path_factory.mktemp("atlas")
    a = _counts()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a.write_h5ad(d / "counts.h5ad")
        a.write_zarr(d / "counts.zarr")
        c = a.copy()
        c.X = c.X.tocsc()
        c.write_h5ad(d / "counts_csc.h5ad")
    return {"h5ad": d / "counts.h5ad", "zarr": d / "counts.zarr", "csc.h5ad": d / "counts_csc.h5ad"}


def _read(path):
    return ad.read_zarr(path) if str(path).endswith(".zarr") else ad.read_h5ad(path)


def _preprocess(a):
    a.var["mt"] = a.var_names.str.startswith("MT-")
    sc.pp.calculate_qc_metrics(a, qc_vars=["mt"], inplace=True, percent_top=None)
    sc.pp.filter_cells(a, min_genes=20)
    sc.pp.filter_genes(a, min_cells=50)
    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)
    sc.pp.highly_variable_genes(a, n_top_genes=60)
    sc.pp.pca(a, n_comps=8, mask_var="highly_variable", svd_solver="covariance_eigh")
    return a


@pytest.fixture(scope="module", params=FILES)
def pair(request, files):
    """(in-memory AnnData, dask shadow) after the same preprocessing, once per file kind."""
    path = files[request.param]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = _preprocess(_read(path))
        s = _preprocess(AnnDataShadow(path, array_backend="dask"))
    return request.param, ref, s


def _close(got, want, what, rtol=1e-5, atol=1e-5):
    got = got.toarray() if sp.issparse(got) else np.asarray(got)
    want = want.toarray() if sp.issparse(want) else np.asarray(want)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, err_msg=what)


def test_preprocessing_equals_in_memory_scanpy(pair, files):
    kind, ref, s = pair
    assert isinstance(s.X, da.Array), "X stays a lazy dask chain after filter/normalize/log1p"
    if kind == "csc.h5ad":  # row blocks of a CSC file, what scanpy's dask route needs
        assert len(AnnDataShadow(files[kind], array_backend="dask").X.chunks[1]) == 1
    assert s.shape == ref.shape
    for col in ("n_genes_by_counts", "total_counts", "pct_counts_mt", "n_genes"):
        _close(s.obs[col], ref.obs[col], col)
    for col in ("highly_variable", "means", "dispersions_norm", "n_cells", "mean_counts"):
        _close(s.var[col], ref.var[col], col, rtol=1e-4)
    x = s.X.compute()
    assert x.format == "csr", f"X computes to {x.format}: row blocks are CSR chunks, a CSC file's too"
    _close(x, ref.X, "X")
    assert sorted(s.obsm) == sorted(ref.obsm) and sorted(s.uns) == sorted(ref.uns)
    _close(np.abs(s.obsm["X_pca"]), np.abs(ref.obsm["X_pca"]), "X_pca", rtol=2e-2, atol=2e-3)
    # computed once by pca (scanpy leaves a dask chain over the whole X, which every later access would recompute)
    assert type(s.obsm["X_pca"]) is np.ndarray and s.obsm["X_pca"].dtype == ref.obsm["X_pca"].dtype


def test_neighbors_umap_leiden_rank_genes_groups(pair):
    kind, ref, s = pair
    if kind != "h5ad":
        pytest.skip("obsm-only steps: once is enough (they do not read X)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for a in (ref, s):
            sc.pp.neighbors(a, n_neighbors=10)
        _close(s.obsp["connectivities"], ref.obsp["connectivities"], "connectivities", rtol=1e-4)
        # UMAP's layout amplifies float rounding of the PCA (equal above to 2e-2): same inputs, same layout
        s.obsm["X_pca"], s.obsp["connectivities"] = ref.obsm["X_pca"], ref.obsp["connectivities"]
        for a in (ref, s):
            sc.tl.umap(a, random_state=0, maxiter=30)
            sc.tl.leiden(a, flavor="igraph", n_iterations=2, random_state=0)
            sc.tl.rank_genes_groups(a, "leiden", method="t-test")
    _close(s.obsm["X_umap"], ref.obsm["X_umap"], "X_umap", rtol=1e-3, atol=1e-3)
    assert (np.asarray(s.obs["leiden"]) == np.asarray(ref.obs["leiden"])).all()
    got, want = (
        sc.get.rank_genes_groups_df(x, group=None).set_index(["group", "names"])["scores"].sort_index()
        for x in (s, ref)
    )
    _close(got, want, "t-test scores", rtol=1e-3, atol=1e-4)


def test_hvg_cell_ranger_score_genes_wilcoxon(pair):
    _, ref, s = pair
    genes = [g for g in ref.var_names if g.startswith("G")][:15]
    hvg = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for a in (ref, s):
            hvg.append(sc.pp.highly_variable_genes(a, flavor="cell_ranger", n_top_genes=40, inplace=False))
            sc.tl.score_genes(a, genes, random_state=0, score_name="sc")
            sc.tl.rank_genes_groups(a, "batch", method="wilcoxon", key_added="wx")
    for col in ("highly_variable", "means", "dispersions_norm"):
        _close(hvg[1][col], hvg[0][col], f"cell_ranger {col}", rtol=1e-4)
    _close(s.obs["sc"], ref.obs["sc"], "score_genes")
    got, want = (
        sc.get.rank_genes_groups_df(x, group=None, key="wx").set_index(["group", "names"]).sort_index()
        for x in (s, ref)
    )
    assert list(got.index) == list(want.index)
    for col in ("scores", "pvals_adj", "logfoldchanges"):
        _close(got[col], want[col], f"wilcoxon {col}", rtol=1e-4, atol=1e-5)


def test_wilcoxon_streams_bands_of_genes(files, monkeypatch):
    """Several bands (one pass over X each) give what one band gives."""
    from shadows.core import scanpy_guards

    path = files["h5ad"]
    ref = _read(path)
    sc.tl.rank_genes_groups(ref, "batch", method="wilcoxon")
    s = AnnDataShadow(path, array_backend="dask")
    monkeypatch.setattr(scanpy_guards, "BAND_BYTES", 300 * 12 * 20 * 0.2)  # about 20 genes a band
    assert len(scanpy_guards.gene_bands(s.X)) > 3
    sc.tl.rank_genes_groups(s, "batch", method="wilcoxon")
    for field in ("scores", "pvals"):
        got, want = (pd.DataFrame(x.uns["rank_genes_groups"][field]) for x in (s, ref))
        _close(got.to_numpy().astype(float), want.to_numpy().astype(float), field, rtol=1e-5)


def test_scale_stays_lazy_and_bounded(files, monkeypatch):
    from shadows.core import scanpy_guards

    path = files["h5ad"]
    for zero_center in (False, True):
        ref, s = _read(path), AnnDataShadow(path, array_backend="dask")
        monkeypatch.setattr(scanpy_guards, "DENSE_BLOCK_BYTES", 50 * s.n_vars * 8)  # dense blocks of 50 rows
        sc.pp.scale(ref, zero_center=zero_center, max_value=10)
        sc.pp.scale(s, zero_center=zero_center, max_value=10)
        assert isinstance(s.X, da.Array)
        if zero_center:
            assert max(s.X.chunks[0]) <= 50, f"dense blocks of {max(s.X.chunks[0])} rows"
        _close(s.X.compute(), ref.X, f"scale(zero_center={zero_center})", rtol=1e-4, atol=1e-5)


def test_functions_that_would_load_x_say_so(files):
    s = AnnDataShadow(files["h5ad"], array_backend="dask")
    assert isinstance(s.X, da.Array)  # handing out the dask X installs the hooks
    with pytest.raises(NotImplementedError, match=r"highly_variable_genes\(flavor='seurat_v3'\).*flavor='seurat'"):
        sc.pp.highly_variable_genes(s, flavor="seurat_v3", n_top_genes=20)
    with pytest.raises(NotImplementedError, match=r"rank_genes_groups\(method='logreg'\).*wilcoxon"):
        sc.tl.rank_genes_groups(s, "batch", method="logreg")


def test_plots_equal_in_memory_scanpy(pair):
    kind, ref, s = pair
    if kind == "csc.h5ad":
        pytest.skip("plots read obs/var and genes' columns: the CSR files cover them")
    import matplotlib

    matplotlib.use("Agg")
    genes = list(ref.var_names[ref.var["highly_variable"].to_numpy()][:3])
    if "X_umap" not in ref.obsm:  # the same positions on both sides: the figures differ by the colours alone
        for a in (ref, s):
            a.obsm["X_umap"] = np.asarray(ref.obsm["X_pca"][:, :2])
    figures = []
    for a in (ref, s):
        render_figures()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sc.pl.umap(a, color=genes[0], show=False)
            np.random.seed(0)  # the strip plot's jitter
            sc.pl.violin(a, genes[:2], groupby="batch", show=False)
            sc.pl.dotplot(a, genes, groupby="batch", show=False)
            sc.pl.matrixplot(a, genes, groupby="batch", show=False)
            sc.pl.heatmap(a, genes, groupby="batch", show=False)
        figures.append(render_figures())
    assert len(figures[0]) == len(figures[1]) >= 5
    for i, (got, want) in enumerate(zip(*figures, strict=True)):
        assert np.array_equal(got, want), f"figure {i} differs from in-memory scanpy's"


def test_written_back_and_streamed_files_read_as_in_memory_result(files, tmp_path):
    src = files["zarr"]
    path = tmp_path / src.name
    shutil.copytree(src, path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = _preprocess(_read(path))
        s = _preprocess(AnnDataShadow(path, array_backend="dask"))
        s.write_h5ad(tmp_path / "new.h5ad")  # streamed to a new file
        new = ad.read_h5ad(tmp_path / "new.h5ad")
        # the filtered shadow cannot write into its file (a subset of it); an unfiltered one can
        u = AnnDataShadow(path, array_backend="dask")
        sc.pp.normalize_total(u, target_sum=1e4)
        sc.pp.log1p(u)
        u.reopen("r+").write(overwrite=True)  # the dask chain reads the file it writes into
        back = _read(path)
    _close(new.X, ref.X, "X streamed")
    _close(np.abs(new.obsm["X_pca"]), np.abs(ref.obsm["X_pca"]), "X_pca streamed", rtol=2e-2, atol=2e-3)
    assert list(new.obs_names) == list(ref.obs_names) and list(new.var_names) == list(ref.var_names)
    mem = _read(src)
    sc.pp.normalize_total(mem, target_sum=1e4)
    sc.pp.log1p(mem)
    assert sp.issparse(back.X)
    _close(back.X, mem.X, "X written back", rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kw", [{"qc_vars": ["mt"], "percent_top": (5, 20)}, {"log1p": False, "percent_top": None}])
def test_qc_metrics_read_each_block_once(files, monkeypatch, kw):
    """scanpy's dask route makes five passes over X; the shadow's one, with scanpy's own per-block code."""
    from shadows.backends import dask as sdask

    monkeypatch.setattr(sdask, "DASK_CHUNKS", 70)
    reads = []
    read = sdask._Reader.__getitem__
    monkeypatch.setattr(sdask._Reader, "__getitem__", lambda self, key: reads.append(key) or read(self, key))
    ref, s = _read(files["h5ad"]), AnnDataShadow(files["h5ad"], array_backend="dask")
    for a in (ref, s):
        a.var["mt"] = a.var_names.str.startswith("MT-")
    want = sc.pp.calculate_qc_metrics(ref, **kw)
    got = sc.pp.calculate_qc_metrics(s, **kw)
    assert len(reads) == s.X.numblocks[0] == 5, f"{len(reads)} block reads for {s.X.numblocks[0]} blocks"
    for g, w in zip(got, want, strict=True):
        pd.testing.assert_frame_equal(g, w, rtol=1e-6)  # columns, order, dtypes and values


def test_row_blocks_read_whole_rows_then_select_genes(files, monkeypatch):
    """dask's whole-axis slices and a view's genes (filter_genes in place) read whole stored rows, not the column
    scan of the stored indices (14x slower), and give the same chunks."""
    from shadows.backends import dask as sdask
    from shadows.spec.sparse import SparseReader

    monkeypatch.setattr(sdask, "DASK_CHUNKS", 70)
    scans = []
    scan = SparseReader._scan_minor
    monkeypatch.setattr(SparseReader, "_scan_minor", lambda self, *a, **k: scans.append(1) or scan(self, *a, **k))
    ref = _read(files["h5ad"])
    s = AnnDataShadow(files["h5ad"], array_backend="dask")
    rng = np.random.default_rng(0)
    rows, genes = rng.random(ref.n_obs) < 0.7, rng.random(ref.n_vars) < 0.6
    for got, want in ((s.X, ref.X), (s[rows, genes].X, ref[rows, genes].X), (s[:, ::-3].X, ref[:, ::-3].X)):
        m = got.compute()
        assert sp.isspmatrix_csr(m)
        _close(m, want, "row blocks", rtol=0, atol=0)
        assert [b.compute().shape[0] for b in got.blocks] == list(got.chunks[0])
    assert not scans, f"{len(scans)} column scans"


def test_column_kernels_equal_scipy():
    """The numba kernels behind HVG's mean/variance, qc's per-gene metrics and PCA's gram matrix."""
    from shadows.core.scanpy_kernels import add_upper_gram, csr_column_nnz_sums, csr_column_sums

    m = sp.random(500, 40, density=0.2, format="csr", dtype=np.float32, random_state=1)
    m.data[::7] = 0  # explicit zeros: not counted as non-zeros (scanpy's describe_var eliminates them first)
    m64 = m.astype(np.float64)
    s, ss = csr_column_sums(m)
    np.testing.assert_allclose(s, np.asarray(m64.sum(axis=0)).ravel(), rtol=1e-12)
    np.testing.assert_allclose(ss, np.asarray(m64.multiply(m64).sum(axis=0)).ravel(), rtol=1e-12)
    nnz, s2 = csr_column_nnz_sums(m)
    c = m.copy()
    c.eliminate_zeros()
    np.testing.assert_array_equal(nnz, c.getnnz(axis=0))
    np.testing.assert_allclose(s2, s, rtol=1e-12)
    # unsorted indices with duplicates: summed first, as scipy's product does
    coo = m.tocoo()
    dup = sp.csr_matrix(
        (np.r_[coo.data, coo.data[:50]], (np.r_[coo.row, coo.row[:50]], np.r_[coo.col, coo.col[:50]])), m.shape
    )
    dup.indices, dup.data = dup.indices[::-1].copy(), dup.data[::-1].copy()  # reversed within rows by row order
    dup.indptr = dup.indptr.copy()
    for x in (m, sp.csr_matrix(m.toarray()[:, ::-1])):
        g = np.zeros((40, 40))
        add_upper_gram(x, g)
        want = (x.T.astype(np.float64) @ x.astype(np.float64)).toarray()
        np.testing.assert_allclose(g, np.triu(want), rtol=1e-12, atol=1e-12)
    g = np.zeros((40, 40))
    add_upper_gram(sp.csr_matrix((40, 40)), g)
    assert not g.any()


def test_chunk_reductions_answer_as_scipy_without_keepdims(files):
    x = AnnDataShadow(files["h5ad"], array_backend="dask").X
    block = x.blocks[0].compute()
    from shadows.backends.dask import as_chunk, with_scipy_meta

    chunk = as_chunk(block)
    assert np.asarray(np.sum(chunk, axis=1)).shape == (block.shape[0], 1)  # scipy's np.matrix, as scanpy expects
    assert chunk.sum(axis=0, keepdims=False).shape == (block.shape[1],)
    # anndata picks its dask writer by the meta's exact type: writers hand it a plain scipy meta
    assert type(with_scipy_meta(x)._meta) is sp.csr_matrix
    assert type(with_scipy_meta(x).blocks[0].compute()) is sp.csr_matrix


@pytest.mark.slow
def test_qc_to_pca_peak_memory_is_bounded(tmp_path):
    """A child process runs qc -> normalize -> log1p -> HVG -> PCA on a file several times the budget."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    path = tmp_path / "big.h5ad"
    rng = np.random.default_rng(0)
    n, g = 120_000, 5_000
    X = sp.random(n, g, density=0.04, format="csr", dtype=np.float32, random_state=0)
    X.data = (rng.negative_binomial(2, 0.35, X.nnz) + 1).astype(np.float32)
    ad.AnnData(X).write_h5ad(path)
    del X
    size_mb = path.stat().st_size / 2**20
    code = f"""
import warnings; warnings.filterwarnings('ignore')
import scanpy as sc
from shadows import AnnDataShadow
def rss(k):
    return next(int(l.split()[1]) / 1024 for l in open('/proc/self/status') if l.startswith(k))
a = AnnDataShadow({str(path)!r}, array_backend='dask')
base = rss('VmRSS'); open('/proc/self/clear_refs', 'w').write('5')
sc.pp.calculate_qc_metrics(a, inplace=True, percent_top=None)
sc.pp.normalize_total(a, target_sum=1e4); sc.pp.log1p(a)
sc.pp.highly_variable_genes(a, n_top_genes=1000)
sc.pp.pca(a, n_comps=20, mask_var='highly_variable', svd_solver='covariance_eigh')
assert a.obsm['X_pca'].shape == ({n}, 20)
print('PEAK', rss('VmHWM') - base)
"""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=1200)
    assert out.returncode == 0, out.stderr[-2000:]
    peak = float(out.stdout.split("PEAK")[-1])
    assert peak < max(250.0, 0.3 * size_mb), f"peak {peak:.0f} MB for a {size_mb:.0f} MB file"
