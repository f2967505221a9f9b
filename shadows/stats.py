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

from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .blocks import in_memory_blocks, iter_major, native
from .convert import open_source
from .progress import progress_bar

# Bytes held per stored value: two blocks (the one reduced and the one read), float64 copies and masks.
STATS_BYTES_PER_VALUE = 64
KEYS = ("sum", "mean", "var", "nnz", "min", "max")


def stats(
    data: Any,
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
    data
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
    A dict of 1-D numpy arrays (or a DataFrame with these columns): ``sum``, ``mean``, ``var`` (float64;
    ``var`` with ``ddof=1``, NaN for fewer than two values), ``nnz`` (int64, values different from zero), ``min``
    and ``max`` (the matrix's type).  They equal ``X.sum(axis)``, ``X.mean(axis)``, ``X.var(axis, ddof=1)``,
    ``(X != 0).sum(axis)``, ``X.min(axis)``, ``X.max(axis)`` of the dense matrix, and scanpy's
    ``calculate_qc_metrics`` / ``highly_variable_genes`` means and variances.

    Examples
    --------
    >>> st = shadows.stats(AnnDataShadow("atlas.h5ad"), axis=0)  # doctest: +SKIP
    >>> dispersion = st["var"] / st["mean"]  # doctest: +SKIP
    """
    if axis not in (0, 1):
        raise ValueError(f"axis must be 0 (per gene) or 1 (per cell), got {axis!r}")
    from .stream import _pending_value, matrix_part

    shadow, opened = open_source(data)
    try:
        path = f"layers/{layer}" if layer is not None else "X"
        found, value = _pending_value(shadow, path)
        if found:
            if value is None:
                raise ValueError(f"'{path}' of '{shadow._storage.describe()}' is None")
            block_axis = 1 if sp.issparse(value) and value.format == "csc" else 0
            shape, dtype = value.shape, value.dtype
            blocks = in_memory_blocks(value, block_axis, chunk_size)
            bar = progress_bar(None, "statistics", progress=False)
        else:
            part = matrix_part(shadow, path)
            if len(part.shape) != 2:
                raise ValueError(f"'{path}' of '{shadow._storage.describe()}' is not two-dimensional")
            block_axis, shape, dtype = part.major_axis, part.shape, part.dtype
            bar = progress_bar(part.stored_bytes(), f"statistics of {path}", progress=progress)
            blocks = iter_major(part, chunk_size, STATS_BYTES_PER_VALUE, None, bar, reuse=2)
        acc = Reducer(shape, axis, dtype)
        try:
            for a, b, block in blocks:
                acc.add(block, block_axis, a, b)
        finally:
            bar.close()
        result = acc.result()
        if as_frame:
            names = shadow.var_names if axis == 0 else shadow.obs_names
            return pd.DataFrame(result, index=pd.Index(names))
        return result
    finally:
        if opened:
            shadow.close()


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
        # positions still stored in every block so far: only there can the minimum of a non-negative sparse
        # matrix differ from 0 (elsewhere an implicit zero is the minimum)
        self.full = np.ones(n_out, dtype=bool)
        self._buffer: np.ndarray | None = None
        self._ones_buffer: np.ndarray | None = None

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
        data, idx, ip = m.data, m.indices, m.indptr
        if len(data) == 0:
            self.full[:] = False
            return
        n_out = self.shape[self.out_axis]
        # the block seen from the other side (no copy) times a vector of ones sums each output position (scipy's
        # C matrix-vector product); values and squares travel together as the real and imaginary parts of one
        # complex number, which halves the passes; float64 throughout, like scanpy's means and variances
        work = self._work(len(data), np.complex128)
        work.real = data
        np.multiply(data, data, out=work.imag, dtype=np.float64)
        seen = sp.csc_matrix((work, idx, ip), shape=(n_out, k))
        sums = seen @ np.ones(k, dtype=np.complex128)
        del seen
        self.sum += sums.real
        self.sumsq += sums.imag
        # stored entries per position: float32 ones are exact here (fewer than 2**24 per block) and fast
        ones = self._ones(max(len(data), k))
        stored = sp.csc_matrix((ones[: len(data)], idx, ip), shape=(n_out, k)) @ ones[:k]
        stored = np.rint(stored).astype(np.int64)
        self.stored += stored
        zeros = data == 0
        if zeros.any():  # explicit zeros are stored but are not non-zeros
            z = sp.csc_matrix((zeros.astype(np.float32), idx, ip), shape=(n_out, k)) @ ones[:k]
            self.nnz += stored - np.rint(z).astype(np.int64)
        else:
            self.nnz += stored
        del zeros
        self.full &= stored == k
        np.maximum.at(self.max, idx, data)
        if data.min() < 0:  # negative values: every stored value may be a minimum
            np.minimum.at(self.min, idx, data)
        elif self.full.any():  # non-negative: only positions stored everywhere so far need their minimum
            keep = self.full[idx]
            np.minimum.at(self.min, idx[keep], data[keep])

    def result(self) -> dict[str, np.ndarray]:
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


def _extremes(dtype: np.dtype) -> tuple[Any, Any]:
    if dtype.kind == "f":
        return -np.inf, np.inf
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return info.min, info.max
    if dtype.kind == "b":
        return False, True
    raise TypeError(f"statistics need a numeric matrix, got values of type {dtype}")
