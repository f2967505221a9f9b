"""``shadows.stats``: per-gene or per-cell summary statistics in one pass over a matrix, in bounded memory.

The matrix is read along its stored major axis in budget-sized blocks (the next block is read in a thread while
the current one is reduced).  For each block, the reduction is either

* a **segment** reduction, when blocks are cut across the positions the statistics are for (per-cell
  statistics of CSR, per-gene of CSC): each compressed row (column) of the block is complete; or
* a **scatter** reduction (per-gene statistics of CSR, per-cell of CSC): the block adds to every position,
  through scipy's sparse matrix-vector product (C code) for sums, and ``ufunc.at`` for maxima and minima.

Sums are accumulated in float64; the variance is ``(sum(x²) - n·mean²) / (n - 1)`` as in scanpy's
``_get_mean_var``.  Implicit zeros of sparse matrices count in every statistic, as in the dense matrix.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from shadows.core.state import state_of
from shadows.deprecation import renamed_arguments
from shadows.io.fast.pread import mappable, mapped_runs, mapped_view
from shadows.io.storage import is_h5
from shadows.ops.convert import open_source
from shadows.progress import progress_bar
from shadows.settings import settings
from shadows.stream.blocks import in_memory_blocks, iter_major, native

try:  # the C routine behind scipy's sparse matrix-vector product
    from scipy.sparse._sparsetools import csc_matvec as _csc_matvec
except ImportError:  # pragma: no cover - a future scipy without it: the public product
    _csc_matvec = None

# Budget bytes per stored value of a block.  A block holds about 24 bytes a value (the block or its mapped view,
# a float64 copy, ones and masks; two blocks when read ahead); a quarter of a million values per block at the
# default budget ran as fast as four times more (measured) and keeps the peak near 8 MB.
STATS_BYTES_PER_VALUE = 256


@renamed_arguments(data="source")
def stats(
    source: Any,
    axis: int = 0,
    layer: str | None = None,
    *,
    chunk_size: int | None = None,
    progress: bool | None = None,
    as_frame: bool = False,
) -> dict[str, np.ndarray] | pd.DataFrame:
    """Sum, mean, variance, number of non-zeros, minimum and maximum per gene or per cell, in one pass.

    Parameters
    ----------
    source
        An :class:`~shadows.AnnDataShadow` (or a view of one: the statistics are of the view), or a path.
    axis
        0: one value per gene (reducing over cells, like ``X.mean(axis=0)``); 1: one value per cell.
    layer
        Use this layer instead of ``X``.
    chunk_size
        Major positions per block (default: sized by ``shadows.settings.memory_budget``).
    progress
        Show a progress bar (``None``: follow ``shadows.settings``).
    as_frame
        Return a DataFrame indexed by var names (``axis=0``) or obs names (``axis=1``) instead of a dict.

    Returns
    -------
    dict or DataFrame
        1-D numpy arrays (or a DataFrame with these columns): ``sum``, ``mean``, ``var`` (float64;
        ``var`` with ``ddof=1``, NaN for fewer than two values), ``nnz`` (int64, values different from zero),
        ``min`` and ``max`` (the matrix's type).  They equal ``X.sum(axis)``, ``X.mean(axis)``,
        ``X.var(axis, ddof=1)``, ``(X != 0).sum(axis)``, ``X.min(axis)``, ``X.max(axis)`` of the dense matrix, and
        scanpy's ``calculate_qc_metrics`` / ``highly_variable_genes`` means and variances.

    Examples
    --------
    >>> st = shadows.stats(AnnDataShadow("atlas.h5ad"), axis=0)  # doctest: +SKIP
    >>> dispersion = st["var"] / st["mean"]  # doctest: +SKIP
    """
    if axis not in (0, 1):
        raise ValueError(f"axis must be 0 (per gene) or 1 (per cell), got {axis!r}")
    from shadows.stream.elements import matrix_part, pending_value

    if callable(getattr(source, "matrix_blocks", None)):  # a collection of files (shadows.concat): its row blocks
        return _collection_stats(source, axis, layer, chunk_size, as_frame)
    shadow, opened = open_source(source)
    try:
        path = f"layers/{layer}" if layer is not None else "X"
        found, value = pending_value(shadow, path)
        if found:
            if value is None:
                raise ValueError(f"'{path}' of '{state_of(shadow).storage.describe()}' is None")
            block_axis = 1 if sp.issparse(value) and value.format == "csc" else 0
            shape, dtype = value.shape, value.dtype
            blocks = in_memory_blocks(value, block_axis, chunk_size)
            bar = progress_bar(None, "statistics", progress=False)
        else:
            part = matrix_part(shadow, path)
            if len(part.shape) != 2:
                raise ValueError(f"'{path}' of '{state_of(shadow).storage.describe()}' is not two-dimensional")
            block_axis, shape, dtype = part.major_axis, part.shape, part.dtype
            bar = progress_bar(part.stored_bytes(), f"statistics of {path}", progress=progress)
            blocks = mapped_values(part, axis, chunk_size, bar)
            if blocks is None:
                blocks = iter_major(part, chunk_size, STATS_BYTES_PER_VALUE, None, bar, reuse=2)
        acc = Reducer(shape, axis, dtype)
        try:
            for a, b, block in blocks:
                if isinstance(block, ValueRange):
                    acc.add_values(block.data, block.indices, block.rows_done)
                else:
                    acc.add(block, block_axis, a, b)
                del block  # a mapped range is unmapped as soon as nothing refers to it
        finally:
            acc.close()
            bar.close()
        result = acc.result()
        if as_frame:
            names = shadow.var_names if axis == 0 else shadow.obs_names
            return pd.DataFrame(result, index=pd.Index(names))
        return result
    finally:
        if opened:
            shadow.close()


def _collection_stats(coll: Any, axis: int, layer: str | None, chunk_size: int | None, as_frame: bool) -> Any:
    """:func:`stats` of a collection: the rows of each file, block by block, into one :class:`Reducer`."""
    shape, dtype, blocks = coll.matrix_blocks(layer, chunk_size)
    acc = Reducer(shape, axis, dtype)
    try:
        for a, b, block in blocks:
            acc.add(block, 0, a, b)
            del block
    finally:
        acc.close()
    result = acc.result()
    if as_frame:
        return pd.DataFrame(result, index=pd.Index(coll.var_names if axis == 0 else coll.obs_names))
    return result


@dataclass
class ValueRange:
    """A range of a sparse matrix's stored values (``data`` and ``indices``), cut anywhere; ``rows_done`` rows of
    the stored major axis are complete once it is added."""

    data: np.ndarray
    indices: np.ndarray
    rows_done: int


def mapped_values(part: Any, axis: int, chunk_size: int | None, bar: Any) -> Iterator[tuple] | None:
    """Blocks of ``(start, stop, ValueRange)`` viewing a whole uncompressed HDF5 sparse matrix through memory maps,
    for a reduction over its stored major axis (per-gene statistics of CSR), or ``None`` where that does not apply.

    Such a reduction needs no row boundaries, so ranges are cut where the bytes of both ``data`` and ``indices``
    run on in the file, and the page cache's pages are used in place: no copy at all (a copy out of the page cache
    costs about as much as the statistics themselves).
    """
    if not part.sparse or part.major_axis != axis or any(s is not None for s in part.sels) or chunk_size:
        return None
    if not is_h5(part.elem):
        return None
    lays = mappable(part.elem["data"], part.elem["indices"])
    if lays is None or lays[0].n != lays[1].n:
        return None
    ld, li = lays
    ip = part.indptr()
    step = max(2**10, settings.memory_budget // STATS_BYTES_PER_VALUE)
    cuts = np.union1d(mapped_runs(ld), mapped_runs(li))
    per_value = ld.itemsize + li.itemsize

    def gen() -> Iterator[tuple]:
        for lo, hi in zip(cuts[:-1], cuts[1:], strict=True):
            for a in range(int(lo), int(hi), step):
                b = min(int(hi), a + step)
                rows = int(np.searchsorted(ip[1:], b, side="right"))  # rows ending at or before value b
                yield a, b, ValueRange(mapped_view(ld, part.dtype, a, b), mapped_view(li, part.index_dtype, a, b), rows)
                if bar is not None:
                    bar.update((b - a) * per_value)

    return gen()


class Reducer:
    """Accumulates the statistics of a ``shape`` matrix over ``axis`` from blocks cut along either axis."""

    def __init__(self, shape: tuple[int, int], axis: int, dtype: Any):
        self.shape = (int(shape[0]), int(shape[1]))
        self.axis = axis
        self.out_axis = 1 - axis
        n_out = self.shape[self.out_axis]
        self.n = self.shape[axis]  # values reduced per output position
        self.dtype = native(dtype)
        lo, hi = _extremes(self.dtype)
        self.sum = np.zeros(n_out)
        self.sumsq = np.zeros(n_out)
        self.nnz = np.zeros(n_out, dtype=np.int64)
        self.stored = np.zeros(n_out, dtype=np.int64)  # stored entries (explicit zeros included)
        self.min = np.full(n_out, hi, dtype=self.dtype)
        self.max = np.full(n_out, lo, dtype=self.dtype)
        self.dense_seen = False
        self.rows_done = 0  # complete rows (of the reduced axis) of a scattered sparse matrix added so far
        self._buffer: np.ndarray | None = None
        self._ones_buffer: np.ndarray | None = None
        self._executor: Any = None

    def _work(self, n: int, dtype: Any = np.float64) -> np.ndarray:
        """A buffer of ``n`` values, kept between blocks (no allocation per block)."""
        if self._buffer is None or len(self._buffer) < n or self._buffer.dtype != dtype:
            self._buffer = np.empty(n, dtype=dtype)
        return self._buffer[:n]

    def _ones(self, n: int) -> np.ndarray:
        """``n`` float32 ones (at least ``n``), kept between blocks."""
        if self._ones_buffer is None or len(self._ones_buffer) < n:
            self._ones_buffer = np.ones(max(n, 1), dtype=np.float32)
        return self._ones_buffer[: max(n, 1)]

    def add(self, block: Any, block_axis: int, start: int, stop: int) -> None:
        """Add a block holding positions ``start:stop`` along ``block_axis`` (all of the other axis)."""
        if not sp.issparse(block):
            self._add_dense(np.asarray(block), block_axis, start, stop)
        elif block_axis == self.out_axis:
            self._add_segments(block, start, stop)
        else:
            self._add_scatter(block, stop - start)

    # --- dense blocks: numpy reductions ----------------------------------------------------------------------------
    def _add_dense(self, x: np.ndarray, block_axis: int, start: int, stop: int) -> None:
        self.dense_seen = True
        sel = slice(start, stop) if block_axis == self.out_axis else slice(None)
        x64 = x.astype(np.float64)
        self.sum[sel] += x64.sum(axis=self.axis)
        np.multiply(x64, x64, out=x64)
        self.sumsq[sel] += x64.sum(axis=self.axis)
        del x64
        self.nnz[sel] += np.count_nonzero(x, axis=self.axis)
        if x.shape[self.axis]:
            np.minimum(self.min[sel], x.min(axis=self.axis), out=self.min[sel])
            np.maximum(self.max[sel], x.max(axis=self.axis), out=self.max[sel])

    # --- sparse blocks compressed along the output positions: each segment is complete -----------------------------
    def _add_segments(self, m: Any, start: int, stop: int) -> None:
        data, ip = m.data, np.asarray(m.indptr, dtype=np.int64)
        lengths = np.diff(ip)
        sel = slice(start, stop)
        self.stored[sel] += lengths
        nonempty = lengths > 0
        if not nonempty.any():
            return
        starts = ip[:-1][nonempty]
        d64 = data.astype(np.float64)
        self.sum[sel][nonempty] += np.add.reduceat(d64, starts)
        np.multiply(d64, d64, out=d64)
        self.sumsq[sel][nonempty] += np.add.reduceat(d64, starts)
        del d64
        self.nnz[sel][nonempty] += np.add.reduceat((data != 0).astype(np.int64), starts)
        mins, maxs = self.min[sel], self.max[sel]
        mins[nonempty] = np.minimum(mins[nonempty], np.minimum.reduceat(data, starts))
        maxs[nonempty] = np.maximum(maxs[nonempty], np.maximum.reduceat(data, starts))

    # --- sparse blocks compressed along the reduced axis: scatter into every output position -----------------------
    def _add_scatter(self, m: Any, k: int) -> None:
        idx = m.indices
        # the same indptr in the indices' type: scipy would otherwise widen (copy) the indices of every block
        ip = np.asarray(m.indptr).astype(idx.dtype, copy=False) if len(idx) < 2**31 else m.indptr
        self._scatter(m.data, idx, ip, k, self.rows_done + k)

    def add_values(self, data: np.ndarray, indices: np.ndarray, rows_done: int) -> None:
        """Add a range of a sparse matrix's stored values that need not start or end at a compressed row (the
        reduced axis is the stored major one); ``rows_done``: rows complete once this range is added."""
        self._scatter(data, indices, np.array([0, len(data)], dtype=indices.dtype), 1, rows_done)

    def _scatter(self, data: np.ndarray, idx: np.ndarray, ip: np.ndarray, k: int, rows_done: int) -> None:
        # canonical dtypes (a free view): h5py's '<f4' sends ``ufunc.at`` down its generic path, ~30x slower
        data, idx = data.view(native(data.dtype)), idx.view(native(idx.dtype))
        if len(data) == 0:
            self.rows_done = rows_done
            return
        # sums and sums of squares go to a second thread (scipy's C matrix-vector products release the GIL) while
        # this one takes the maxima with ``ufunc.at`` (which holds it) and counts: the two overlap on two cores
        pending = self._pool().submit(self._scatter_sums, data, idx, ip, k)
        try:
            np.maximum.at(self.max, idx, data)
            low = data.min()
            if low < 0:  # negative values: every stored value may be a minimum
                np.minimum.at(self.min, idx, data)
            # stored entries per position: float32 ones are exact here (fewer than 2**24 per block) and fast
            n_out = self.shape[self.out_axis]
            ones = self._ones(max(len(data), k))
            stored = _matvec(ones[: len(data)], idx, ip, (n_out, k), ones[:k])
            stored = np.rint(stored).astype(np.int64)
            self.stored += stored
            self.nnz += stored
            if low <= 0 and (zeros := data == 0).any():  # explicit zeros are stored but are not non-zeros
                z = _matvec(zeros.astype(np.float32), idx, ip, (n_out, k), ones[:k])
                self.nnz -= np.rint(z).astype(np.int64)
        finally:
            pending.result()
        self.rows_done = rows_done
        if low >= 0:
            # non-negative: the minimum differs from an implicit zero only where a position is stored in every
            # row; those so far are among the positions stored at least once per complete row
            maybe_full = self.stored >= rows_done
            if maybe_full.any():
                keep = maybe_full[idx]
                np.minimum.at(self.min, idx[keep], data[keep])

    def _scatter_sums(self, data: np.ndarray, idx: np.ndarray, ip: np.ndarray, k: int) -> None:
        """Add a block's sums and sums of squares per output position.

        The block seen from the other side (no copy) times a vector of ones sums each output position: scipy's C
        matrix-vector product, float64 throughout like scanpy's means and variances.
        """
        n_out = self.shape[self.out_axis]
        x64 = self._work(len(data))
        x64[...] = data
        ones64 = np.ones(k)
        _matvec(x64, idx, ip, (n_out, k), ones64, self.sum)
        np.multiply(x64, x64, out=x64)
        _matvec(x64, idx, ip, (n_out, k), ones64, self.sumsq)

    def _pool(self) -> Any:
        if self._executor is None:
            from concurrent.futures import ThreadPoolExecutor

            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shadows-stats")
        return self._executor

    def close(self) -> None:
        """Stop the helper thread that adds sums (if one was started)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    def result(self) -> dict[str, np.ndarray]:
        """The statistics of everything added, per output position.

        Returns
        -------
        dict
            ``sum``, ``mean``, ``var`` (unbiased, as scanpy's), ``nnz``, ``min`` and ``max``; NaN for the mean, variance
            and extremes where no row was added (``var`` also for a single row).
        """
        n = self.n
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = self.sum / n if n else np.full_like(self.sum, np.nan)
            var = (self.sumsq - self.sum * mean) / (n - 1) if n > 1 else np.full_like(self.sum, np.nan)
        var = np.maximum(var, 0.0) if n > 1 else var
        mins, maxs = self.min, self.max
        if not self.dense_seen:  # implicit zeros take part in the extremes where a position is not fully stored
            sparse_gap = self.stored < n
            zero = np.zeros(1, dtype=self.dtype)
            mins = np.where(sparse_gap, np.minimum(mins, zero), mins)
            maxs = np.where(sparse_gap, np.maximum(maxs, zero), maxs)
        if n == 0:
            mins = np.full(len(mins), np.nan)
            maxs = np.full(len(maxs), np.nan)
        return {"sum": self.sum, "mean": mean, "var": var, "nnz": self.nnz, "min": mins, "max": maxs}


def _matvec(
    data: np.ndarray, idx: np.ndarray, ip: np.ndarray, shape: tuple[int, int], x: np.ndarray, out: Any = None
) -> np.ndarray:
    """``csc_matrix((data, idx, ip), shape) @ x``, added to ``out`` when given (and returned).

    scipy's C routine is called directly where the types allow: no matrix object checked and built in Python
    (which needs the GIL, held by the other thread's ``ufunc.at``) and no temporary result.
    """
    if (
        _csc_matvec is not None
        and idx.dtype == ip.dtype
        and idx.dtype in (np.int32, np.int64)
        and data.dtype == x.dtype
    ):
        res = np.zeros(shape[0], dtype=data.dtype) if out is None else out
        if res.dtype == data.dtype:
            _csc_matvec(shape[0], shape[1], ip, idx, data, x, res)
            return res
    prod = sp.csc_matrix((data, idx, ip), shape=shape) @ x
    if out is None:
        return prod
    out += prod
    return out


def _extremes(dtype: np.dtype) -> tuple[Any, Any]:
    if dtype.kind == "f":
        return -np.inf, np.inf
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return info.min, info.max
    if dtype.kind == "b":
        return False, True
    raise TypeError(f"statistics need a numeric matrix, got values of type {dtype}")
