"""Precision of scanpy's dask route, so that a dask shadow gives what in-memory scanpy gives.

scanpy's in-memory functions accumulate sums of float32 matrices in float64 (numba kernels for mean and variance,
scipy/BLAS for the covariance of PCA); its dask route for the same functions accumulates in the matrix's dtype:

* ``_get_mean_var`` (scanpy 1.11; ``highly_variable_genes``, ``calculate_qc_metrics``) squares float32 chunks before
  it sums them in float64: on a 3,000 x 800 log-normalised matrix ``dispersions_norm`` then differs from in-memory
  scanpy by up to 2.5e-5 (relative 2e-3), enough to swap highly variable genes at the cut.
* ``_cov_sparse_dask`` (``pca(svd_solver="covariance_eigh")``, 1.11 and 1.12) sums the blocks' gram matrices in
  float32: the principal components then depend on the chunking (one 3,000-row chunk against three of 1,000 moved
  the neighbour graph by 1.6e-3 and changed the Leiden clusters of 2,192 of 3,000 cells).

:func:`install` wraps both so that dask arrays are accumulated in float64 (each block converted on its own, so
memory stays bounded by a block); numpy and scipy inputs go to scanpy's own code unchanged.  It is installed
when a shadow with a dask array backend hands out a dask array and scanpy is imported.
"""

from __future__ import annotations

import functools
import sys
import threading
from typing import Any

import numpy as np

from shadows.core.scanpy_kernels import add_upper_gram, csr_column_sums

_INSTALLED: set[str] = set()


def install() -> None:
    """Wrap scanpy's dask accumulations (idempotent; does nothing before scanpy is imported)."""
    if "scanpy" not in sys.modules:
        return
    _wrap_cov()
    _wrap_mean_var()
    _wrap_axis_nnz()
    _fuse_row_scaling()
    _return_freed_blocks()


def _return_freed_blocks() -> None:
    """Have glibc give freed chunk-sized buffers back to the system at once.

    glibc raises its mmap threshold to the largest buffer freed (up to 32 MB); every dask thread then keeps freed
    chunks in its own arena: after ``calculate_qc_metrics`` on a 763 MB file 1 GB stayed resident, the next steps
    starting from there.  A fixed 1 MiB threshold returns them (peak of the HVG step 1,092 -> 269 MB)."""
    if "malloc" in _INSTALLED or not sys.platform.startswith("linux"):
        return
    _INSTALLED.add("malloc")
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):  # not glibc
        pass


def _wrap_cov() -> None:
    if "cov" in _INSTALLED:
        return
    _INSTALLED.add("cov")
    try:
        from scanpy.preprocessing._pca import _dask as pca_dask
    except ImportError:  # another scanpy layout: its own code runs
        return
    orig = getattr(pca_dask, "_cov_sparse_dask", None)
    if orig is None:
        return

    @functools.wraps(orig)
    def cov_float64(x: Any, *, return_gram: bool = False, dtype: Any = None) -> Any:
        if dtype is not None:
            return orig(x, return_gram=return_gram, dtype=dtype)
        return dask_covariance(x, return_gram=return_gram)

    pca_dask._cov_sparse_dask = cov_float64


def _wrap_mean_var() -> None:
    if "mean_var" in _INSTALLED:
        return
    _INSTALLED.add("mean_var")
    try:
        from scanpy.preprocessing import _utils as pp_utils
    except ImportError:
        return
    orig = getattr(pp_utils, "_get_mean_var", None)
    if orig is None:  # scanpy >= 1.12: fast_array_utils accumulates in float64 already
        return

    @functools.wraps(orig)
    def mean_var(x: Any, /, *, axis: int = 0) -> Any:
        from shadows.core.lazy_x import is_dask_array

        if not is_dask_array(x):
            return orig(x, axis=axis)
        return dask_mean_var(x, axis=axis)

    for name, mod in list(sys.modules.items()):
        if name.startswith("scanpy") and getattr(mod, "_get_mean_var", None) is orig:
            mod._get_mean_var = mean_var


def _wrap_axis_nnz() -> None:
    if "nnz" in _INSTALLED:
        return
    _INSTALLED.add("nnz")
    try:
        import dask.array as da
        from scanpy._utils import axis_nnz
    except ImportError:
        return
    if not hasattr(axis_nnz, "register"):
        return
    axis_nnz.register(da.Array, dask_axis_nnz)


def _fuse_row_scaling() -> None:
    """``normalize_total``'s division of each row of a shadow's sparse dask X, done in the chunk's read task
    (:mod:`shadows.backends.dask_chain`) instead of scanpy's map over the blocks, which copies every block."""
    if "rows" in _INSTALLED:
        return
    _INSTALLED.add("rows")
    try:
        import dask.array as da
        from scanpy._utils import axis_mul_or_truediv
    except ImportError:
        return
    if not hasattr(axis_mul_or_truediv, "register"):
        return
    from shadows.backends.dask_chain import ChainArray, scale_rows_op

    scanpy_dask_impl = axis_mul_or_truediv.dispatch(da.Array)

    def fused(x: Any, /, scaling_array: Any, axis: int, op: Any, *, allow_divide_by_zero: bool = True,
              out: Any = None) -> Any:  # fmt: skip
        fn = scale_rows_op(op)
        if x._chain_base is None or axis != 0 or out is not None or fn is None or np.ndim(scaling_array) > 2:
            return scanpy_dask_impl(x, scaling_array, axis, op, allow_divide_by_zero=allow_divide_by_zero, out=out)
        return x.scale_rows(scaling_array, fn, allow_divide_by_zero=allow_divide_by_zero)

    axis_mul_or_truediv.register(ChainArray, fused)


def dask_axis_nnz(x: Any, /, axis: int) -> Any:
    """Non-zeros per column (``axis=0``) or row of a dask array, one block at a time (lazy).

    scanpy's own version maps blocks with ``drop_axis=axis``: along the chunked axis dask then concatenates every
    block into one before counting, the whole matrix in memory (2.1 GB peak for a 763 MB 300,000 x 10,000 file).
    """

    def count(block: Any) -> np.ndarray:
        n = block.getnnz(axis=axis) if hasattr(block, "getnnz") else np.count_nonzero(block, axis=axis)
        n = np.asarray(n, dtype=np.int64)
        return n[None, :] if axis == 0 else n[:, None]

    if x.numblocks[axis] == 1:
        return x.map_blocks(lambda b: count(b).ravel(), drop_axis=axis, dtype=np.int64, meta=np.empty(0, np.int64))
    chunks = ((1,) * x.numblocks[0], x.chunks[1]) if axis == 0 else (x.chunks[0], (1,) * x.numblocks[1])
    parts = x.map_blocks(count, chunks=chunks, dtype=np.int64, meta=np.empty((0, 0), np.int64))
    return parts.sum(axis=axis)


def _add_gram(block: Any, g: np.ndarray) -> None:
    """Add the upper triangle of ``block.T @ block`` to the float64 array ``g`` (no temporary of its size)."""
    if not hasattr(block, "tocsr"):
        b = np.asarray(block, dtype=np.float64)
        g += np.triu(b.T @ b)
        return
    add_upper_gram(block.tocsr(), g)


def _one_gram(block: Any, n: int) -> np.ndarray:
    g = np.zeros((n, n))
    _add_gram(block, g)
    return g


def _mirrored(g: np.ndarray, band: int = 256) -> np.ndarray:
    """The full symmetric matrix of an upper triangle, in place, ``band`` rows at a time.

    ``np.tril_indices`` of a 2,000 x 2,000 matrix and the values it gathers are 48 MB of temporaries, more than the
    gram itself (32 MB), at the moment PCA's memory peaks.
    """
    n = g.shape[0]
    for i0 in range(0, n, band):
        i1 = min(n, i0 + band)
        g[i0:i1, :i0] = g[:i0, i0:i1].T
        d = g[i0:i1, i0:i1]
        lower = np.tril_indices(i1 - i0, -1)
        d[lower] = d.T[lower]
    return g


def _minus_outer(cov: np.ndarray, mean: np.ndarray, band: int = 256) -> None:
    """``cov -= mean[:, None] @ mean[None, :]`` in place, ``band`` rows at a time (the same products, no 32 MB
    temporary)."""
    for i0 in range(0, cov.shape[0], band):
        cov[i0 : i0 + band] -= mean[i0 : i0 + band, None] @ mean[None, :]


class _Accumulator:
    """One float64 gram for all the threads that run blocks (threaded or synchronous dask), each block's products
    added under a lock: memory is one gram whatever the number of blocks and threads.

    A gram per thread (added up at the end) cost another 32 MB at 2,000 genes, the largest part of PCA's peak
    above scanpy's own eigendecomposition; the kernel is about a quarter of a block's work (read, normalise,
    log1p, select the genes), which the other thread does meanwhile.
    """

    def __init__(self, n: int):
        self.n, self.lock, self.g = n, threading.Lock(), None

    def add(self, block: Any) -> np.ndarray:
        m = block.tocsr() if hasattr(block, "tocsr") else block
        with self.lock:
            if self.g is None:
                self.g = np.zeros((self.n, self.n))
            _add_gram(m, self.g)
        return np.zeros((1, 1))

    def total(self) -> np.ndarray:
        g, self.g = self.g, None
        return _mirrored(g if g is not None else np.zeros((self.n, self.n)))


def dask_covariance(x: Any, *, return_gram: bool = False) -> tuple:
    """Covariance and column means of a dask array of row blocks, as scanpy's ``_cov_sparse_dask`` computes them,
    summed in float64 and two blocks at a time.

    scanpy's version sums the blocks' gram matrices in the matrix's dtype with dask's default fan-in: with
    float64 2,000 x 2,000 grams (32 MB each) up to 16 of them were held at once, 451 MB of a 546 MB peak.
    """
    import dask
    import dask.local
    import dask.threaded

    n_cols = x.shape[1]
    if x.numblocks[1] != 1:
        x = x.rechunk({1: -1})
    nb = x.numblocks[0]
    in_process = dask.base.get_scheduler() in (dask.threaded.get, dask.local.get_sync, None)
    if in_process:  # one gram, added to in place
        acc = _Accumulator(n_cols)
        grams = x.map_blocks(acc.add, chunks=((1,) * nb, (1,)), dtype=np.float64, meta=np.empty((0, 0)))
        grams = grams.sum()
    else:  # workers in other processes: one gram per block, summed two at a time
        grams = x.map_blocks(
            lambda b: _one_gram(b, n_cols)[None],
            new_axis=(1,),
            chunks=((1,) * nb, (n_cols,), (n_cols,)),
            dtype=np.float64,
            meta=np.empty((0, 0, 0)),
        ).sum(axis=0, split_every=2)

    def col_sums(block: Any) -> np.ndarray:
        return np.asarray(block.sum(axis=0), dtype=np.float64).reshape(1, -1)

    sums = x.map_blocks(col_sums, chunks=((1,) * nb, (n_cols,)), dtype=np.float64, meta=np.empty((0, 0)))
    gram, total = dask.compute(grams, sums.sum(axis=0, split_every=2))
    gram = acc.total() if in_process else _mirrored(gram)
    gram /= x.shape[0]
    mean = total / x.shape[0]
    cov = gram.copy() if return_gram else gram
    _minus_outer(cov, mean)
    return (cov, gram, mean) if return_gram else (cov, mean)


def block_pair_sums(x: Any, per_block: Any, axis: int) -> tuple[Any, Any]:
    """Two statistics along ``axis`` of a dask array, each added up across its blocks (lazy).

    ``per_block(block)`` returns the block's two statistics stacked: two rows for ``axis=0``, two columns for
    ``axis=1`` (e.g. sums and sums of squares).
    """
    if axis == 0:
        chunks = ((2,) * x.numblocks[0], x.chunks[1])
    else:
        chunks = (x.chunks[0], (2,) * x.numblocks[1])
    parts = x.map_blocks(per_block, chunks=chunks, dtype=np.float64, meta=np.empty((0, 0)))
    if axis == 0:
        return parts[0::2].sum(axis=0), parts[1::2].sum(axis=0)
    return parts[:, 0::2].sum(axis=1), parts[:, 1::2].sum(axis=1)


def dask_mean_var(x: Any, *, axis: int = 0) -> tuple[Any, Any]:
    """Mean and unbiased variance of a dask array along ``axis``, summed in float64 block by block (lazy)."""

    def sums(block: Any) -> np.ndarray:
        if axis == 0 and getattr(block, "format", None) == "csr":  # one pass, no copies (scanpy_kernels)
            return np.stack(csr_column_sums(block))
        b = block.astype(np.float64)
        sq = b.multiply(b) if hasattr(b, "multiply") else b * b
        s = np.asarray(b.sum(axis=axis)).ravel()
        ss = np.asarray(sq.sum(axis=axis)).ravel()
        return np.stack([s, ss]) if axis == 0 else np.stack([s, ss], axis=1)

    s, ss = block_pair_sums(x, sums, axis)
    n = x.shape[axis]
    mean = s / n
    var = ss / n - mean**2
    if n != 1:
        var = var * (n / (n - 1))
    return mean, var
