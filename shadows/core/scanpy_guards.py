"""scanpy's functions that its dask route cannot run, made to run block by block or to say so.

On a dask X (``AnnDataShadow(path, array_backend="dask")``) scanpy 1.11/1.12:

* ``rank_genes_groups(method="wilcoxon")`` fails in numba (its ``_ranks`` slices genes of a dask array);
  :func:`streamed_ranks` gives it the genes' ranks from bands of genes computed block by block, in bounded memory
  (one pass over X per band; a band holds up to :data:`BAND_BYTES` of non-zeros).
* ``tl.score_genes`` fails in ``np.nanmean`` of sparse chunks; :func:`dask_nan_means` sums them block by block.
* ``get.obs_df`` (``pl.violin``, ``dotplot``, ``matrixplot``, ``heatmap``) makes an object array of the genes'
  dask columns; they are computed alone (cells x genes asked for) first.
* ``rank_genes_groups(method="logreg")`` and ``highly_variable_genes(flavor="seurat_v3")`` would load X whole
  (sklearn's fit; a dense clipped copy): they raise, naming the alternative.
* ``pp.filter_cells``/``filter_genes`` read X twice (a test of the subset, then the subset): their sums are
  computed at once, one pass.
* ``pp.scale`` with zero-centring turns sparse row blocks into dense ones; where a dense block would exceed
  :data:`DENSE_BLOCK_BYTES` the blocks are split first, so memory stays bounded by a block.

:func:`install` wraps them (idempotent); arrays that are not dask go to scanpy's own code unchanged.
"""

from __future__ import annotations

import functools
import sys
from typing import Any

import numpy as np

from shadows.core.connection import ConnectionMixin
from shadows.core.lazy_x import dask_matrix_of as _dask_x
from shadows.core.lazy_x import is_dask_array

#: Most bytes of non-zeros a band of genes holds while the Wilcoxon test ranks it.
BAND_BYTES: int = 256 * 2**20
#: Most bytes of a dense row block that zero-centred ``scale`` makes of a sparse one.
DENSE_BLOCK_BYTES: int = 128 * 2**20

_INSTALLED: set[str] = set()


def install() -> None:
    """Wrap the scanpy functions above (idempotent; does nothing before scanpy is imported)."""
    if "scanpy" not in sys.modules or "guards" in _INSTALLED:
        return
    _INSTALLED.add("guards")
    try:
        import scanpy as sc
        from scanpy.tools import _rank_genes_groups as rgg
        from scanpy.tools import _score_genes as sg
    except ImportError:  # another scanpy layout: its own code runs
        return
    if hasattr(rgg, "_ranks"):
        rgg._ranks = _wrap_ranks(rgg._ranks)
    if hasattr(sg, "_nan_means"):
        sg._nan_means = _wrap_nan_means(sg._nan_means)
    try:
        from scanpy.get import get as sc_get
    except ImportError:
        sc_get = None
    if hasattr(sc_get, "_get_array_values"):
        sc_get._get_array_values = _wrap_array_values(sc_get._get_array_values)
    _replace(sc.tl, "rank_genes_groups", _guard_rank_genes_groups)
    _replace(sc.pp, "highly_variable_genes", _guard_hvg)
    _replace(sc.pp, "scale", _guard_scale)
    _replace(sc.pp, "pca", _guard_pca)
    _eager_filter_sums()
    from shadows.core import scanpy_qc

    _replace(sc.pp, "calculate_qc_metrics", scanpy_qc.calculate_qc_metrics)  # one pass over X, not five


def _replace(module: Any, name: str, guard: Any) -> None:
    orig = getattr(module, name, None)
    if orig is None:
        return
    wrapped = functools.wraps(orig)(functools.partial(guard, orig))
    for mod in list(sys.modules.values()):  # every scanpy namespace that re-exports it (sc.tl, scanpy.tools)
        if getattr(mod, "__name__", "").startswith("scanpy") and getattr(mod, name, None) is orig:
            setattr(mod, name, wrapped)


def _eager_filter_sums() -> None:
    """``filter_cells``/``filter_genes`` sum a dask X per cell (gene), test ``sum(~subset) > 0`` (one pass over X)
    and then materialise the subset and the sums (a second pass): computed at once, the sums cost one pass.

    Every use of these sums in ``scanpy.preprocessing._simple`` materialises them at once anyway (the filters,
    ``downsample_counts``)."""
    try:
        from scanpy.preprocessing import _simple
    except ImportError:
        return
    if hasattr(_simple, "axis_sum"):  # scanpy 1.11
        _simple.axis_sum = _computed(_simple.axis_sum)
    elif hasattr(_simple, "stats") and hasattr(_simple.stats, "sum"):  # scanpy 1.12: fast_array_utils.stats
        _simple.stats = _StatsComputed(_simple.stats)


def _computed(fn: Any) -> Any:
    @functools.wraps(fn)
    def computed(*args: Any, **kw: Any) -> Any:
        r = fn(*args, **kw)
        return r.compute() if is_dask_array(r) else r

    return computed


class _StatsComputed:
    """``fast_array_utils.stats`` whose ``sum`` of a dask array is computed at once."""

    def __init__(self, stats: Any):
        self._stats, self.sum = stats, _computed(stats.sum)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stats, name)


# --- refusals ---------------------------------------------------------------------------------------------------


def _guard_rank_genes_groups(orig: Any, adata: Any, groupby: str, *args: Any, **kw: Any) -> Any:
    if kw.get("method") == "logreg" and _dask_x(adata, kw.get("layer"), kw.get("use_raw")) is not None:
        raise NotImplementedError(
            "scanpy.tl.rank_genes_groups(method='logreg') would load the whole X of this dask shadow into memory "
            "(sklearn fits on it); use method='t-test' or 'wilcoxon' (streamed), or fit on a subset: "
            "shadow[cells, genes].to_memory()"
        )
    return orig(adata, groupby, *args, **kw)


def _guard_hvg(orig: Any, adata: Any, *args: Any, **kw: Any) -> Any:
    flavor = kw.get("flavor", "seurat")
    if str(flavor).startswith("seurat_v3") and _dask_x(adata, kw.get("layer")) is not None:
        raise NotImplementedError(
            f"scanpy.pp.highly_variable_genes(flavor={flavor!r}) would load the whole X of this dask shadow "
            "(scanpy clips a dense copy of the counts); use flavor='seurat' or 'cell_ranger' after "
            "normalize_total and log1p, which run block by block"
        )
    return orig(adata, *args, **kw)


# --- bounded dense blocks ---------------------------------------------------------------------------------------


def _guard_scale(orig: Any, data: Any, *args: Any, **kw: Any) -> Any:
    if kw.get("zero_center", True) and not args:
        x = _dask_x(data, kw.get("layer"))
        if x is not None and not isinstance(x._meta, np.ndarray):
            rows = bounded_rows(x, DENSE_BLOCK_BYTES)
            if max(x.chunks[0]) > rows:
                split = x.rechunk({0: rows})
                if kw.get("layer") is not None:
                    data.layers[kw["layer"]] = split
                else:
                    data.X = split
    return orig(data, *args, **kw)


def _guard_pca(orig: Any, data: Any, *args: Any, **kw: Any) -> Any:
    """scanpy's ``pca``; on a shadow, the coordinates it leaves lazy (its dask route) are computed at once.

    scanpy stores ``obsm["X_pca"]`` as a dask array whose graph reads, normalises and projects the whole X: each
    later access (``neighbors``, ``umap``, plots) would make that pass again.  The coordinates are small (cells x
    comps); they are stored block by block into one array (no second copy from joining the blocks: 80 MB at
    200,000 x 50 float64).  An in-memory AnnData keeps scanpy's own behaviour.
    """
    result = orig(data, *args, **kw)
    if result is None and isinstance(data, ConnectionMixin):
        key = kw.get("key_added") or "X_pca"
        x_pca = data.obsm.get(key) if key in data.obsm else None
        if is_dask_array(x_pca):
            data.obsm[key] = computed_into_array(x_pca)
    return result


def computed_into_array(x: Any) -> np.ndarray:
    """A dask array computed into one preallocated numpy array, block by block (``dask.array.store``)."""
    import dask.array as da

    out = np.empty(x.shape, dtype=x.dtype)
    da.store(x, out, lock=False)
    return out


def bounded_rows(x: Any, budget: int) -> int:
    """Rows per block so that a dense float64 block of ``x`` holds at most ``budget`` bytes."""
    return max(1, int(budget // max(1, x.shape[1] * 8)))


# --- streamed fallbacks -----------------------------------------------------------------------------------------


def _wrap_nan_means(orig: Any) -> Any:
    @functools.wraps(orig)
    def nan_means(x: Any, *args: Any, **kw: Any) -> Any:
        if not is_dask_array(x):
            return orig(x, *args, **kw)
        axis = kw.get("axis", args[0] if args else None)
        return dask_nan_means(x, axis=axis)

    return nan_means


def dask_nan_means(x: Any, *, axis: int) -> np.ndarray:
    """``np.nanmean`` of a dask array of sparse or dense blocks along ``axis``, in float64, one block at a time."""

    def parts(block: Any) -> np.ndarray:
        if hasattr(block, "tocsr"):
            b = block.tocsr().astype(np.float64)
            nan = np.isnan(b.data)
            n_nan = np.bincount(b.indices[nan], minlength=b.shape[1]) if axis == 0 else _row_counts(b, nan)
            b.data[nan] = 0
            s = np.asarray(b.sum(axis=axis)).ravel()
        else:
            b = np.asarray(block, dtype=np.float64)
            n_nan = np.isnan(b).sum(axis=axis)
            s = np.nansum(b, axis=axis)
        valid = b.shape[axis] - n_nan
        return np.stack([s, valid]) if axis == 0 else np.stack([s, valid], axis=1)

    from shadows.core.scanpy_dask import block_pair_sums

    s, n = block_pair_sums(x, parts, axis)
    import dask

    s, n = (np.asarray(v) for v in dask.compute(s, n))
    with np.errstate(invalid="ignore", divide="ignore"):
        return s / n


def _row_counts(b: Any, mask: np.ndarray) -> np.ndarray:
    rows = np.repeat(np.arange(b.shape[0]), np.diff(b.indptr))
    return np.bincount(rows[mask], minlength=b.shape[0])


def _wrap_array_values(orig: Any) -> Any:
    """``sc.get.obs_df``/``var_df`` (violin, dotplot, matrixplot, heatmap): the genes' (cells') columns of a dask
    array computed alone, as the numpy array scanpy builds its table from (a dask array of sparse chunks would
    become an object array)."""

    @functools.wraps(orig)
    def array_values(x: Any, /, *args: Any, **kw: Any) -> Any:
        m = orig(x, *args, **kw)
        if is_dask_array(m):
            m = m.compute()
            m = m.toarray() if hasattr(m, "toarray") else np.asarray(m)
        return m

    return array_values


def _wrap_ranks(orig: Any) -> Any:
    @functools.wraps(orig)
    def ranks(x: Any, /, mask_obs: Any = None, mask_obs_rest: Any = None) -> Any:
        if not is_dask_array(x):
            return orig(x, mask_obs, mask_obs_rest)
        return streamed_ranks(orig, x, mask_obs, mask_obs_rest)

    return ranks


def gene_bands(x: Any, budget: int | None = None) -> list[tuple[int, int]]:
    """Consecutive ranges of genes whose non-zeros (12 bytes each: value and index) fit ``budget`` bytes
    (default :data:`BAND_BYTES`); one pass over X counts them."""
    from shadows.core.scanpy_dask import dask_axis_nnz

    budget = BAND_BYTES if budget is None else budget
    per_gene = np.asarray(dask_axis_nnz(x, axis=0).compute(), dtype=np.int64) * 12
    bands, start, size = [], 0, 0
    for j, b in enumerate(per_gene):
        if size and size + b > budget:
            bands.append((start, j))
            start, size = j, 0
        size += int(b)
    bands.append((start, x.shape[1]))
    return bands


def streamed_ranks(orig: Any, x: Any, mask_obs: Any, mask_obs_rest: Any) -> Any:
    """scanpy's ``_ranks`` on a dask array: each band of genes computed in memory (one pass over X), then ranked by
    scanpy's own code in its own gene chunks; offsets shifted to the whole matrix."""
    import scipy.sparse as sp

    for b0, b1 in gene_bands(x):
        band = x[:, b0:b1].compute()
        if sp.issparse(band):
            band = sp.csr_matrix(band)
        for ranks, left, right in orig(band, mask_obs, mask_obs_rest):
            yield ranks, b0 + left, b0 + right
        del band


__all__ = ["BAND_BYTES", "DENSE_BLOCK_BYTES", "dask_nan_means", "gene_bands", "install", "streamed_ranks"]
