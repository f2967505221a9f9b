"""Streaming preprocessing: scanpy's ``normalize_total`` and ``log1p`` from one file to a new one, out of core.

Each function reads ``source`` block by block (the per-cell totals first, for ``normalize_total``), writes the
transformed matrix and every other element to ``dst``, and returns ``dst`` so that calls chain::

    shadows.pp.log1p(shadows.pp.normalize_total("raw.h5ad", "norm.h5ad", target_sum=1e4), "log.h5ad")

Results equal scanpy's in-memory functions applied to the whole object (values, dtypes, ``uns["log1p"]`` and the
``key_added`` obs column); the matrix keeps its stored format (scanpy turns a CSC matrix into CSR).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from shadows.core.state import state_of
from shadows.deprecation import renamed_arguments
from shadows.ops.convert import check_output, open_source, output_format, shadow_write
from shadows.progress import progress_bar
from shadows.stream.blocks import in_memory_blocks, iter_major
from shadows.stream.matrix import WriteOptions

# Bytes held per stored value while per-cell totals are computed: two blocks and a float64 copy.
_SUM_BYTES_PER_VALUE = 32


@renamed_arguments(src="source")
def normalize_total(
    source: Any,
    dst: str | os.PathLike,
    *,
    target_sum: float | None = None,
    exclude_highly_expressed: bool = False,
    max_fraction: float = 0.05,
    key_added: str | None = None,
    layer: str | None = None,
    chunk_size: int | None = None,
    progress: bool | None = None,
    file_format: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``source`` to ``dst`` with each cell's counts scaled to ``target_sum``, as ``scanpy.pp.normalize_total``.

    Parameters
    ----------
    source
        A file or store path, or an :class:`~shadows.AnnDataShadow` (or a view).
    dst
        The new file (``.h5ad``) or store (``.zarr``).  An existing one is refused (``FileExistsError``) unless
        ``overwrite=True``; a directory that is not a zarr store is never replaced.
    target_sum
        Total of every cell after normalisation; ``None``: the median of the non-zero totals of the cells (as
        scanpy >= 1.12 does).
    exclude_highly_expressed, max_fraction
        Leave out of the totals the genes that make up more than ``max_fraction`` of some cell's total.
    key_added
        Name of an obs column receiving the normalisation factors (``total / target_sum``).
    layer
        Normalise this layer instead of ``X``.
    chunk_size
        Cells per block (default: sized by ``shadows.settings.memory_budget``).
    progress
        Show progress bars (``None``: follow ``shadows.settings``).
    file_format
        ``"h5ad"`` or ``"zarr"`` (default: from the suffix of ``dst``).
    overwrite
        Replace an existing ``dst`` file or zarr store.

    Returns
    -------
    ``dst``, as a :class:`~pathlib.Path`.
    """
    if not 0 <= max_fraction <= 1:
        raise ValueError(f"max_fraction must be between 0 and 1, got {max_fraction!r}")
    fmt = output_format(dst, file_format)
    check_output(dst, fmt, overwrite)  # before the passes over the matrix
    shadow, opened = open_source(source)
    try:
        path = f"layers/{layer}" if layer is not None else "X"
        source = _Source(shadow, path, chunk_size, progress)
        counts = source.row_sums()
        if exclude_highly_expressed:
            keep = source.genes_below(counts, max_fraction)
            counts = source.row_sums(keep)
        out_dtype = np.dtype(np.float32) if source.dtype.kind in "biu" else source.dtype
        counts = counts.astype(out_dtype)
        if np.any(counts == 0):
            warnings.warn("Some cells have zero counts", UserWarning, stacklevel=2)
        if target_sum is None:  # scanpy >= 1.12 (1.11 took all cells for CSR matrices)
            target_sum = np.median(counts[counts > 0]) if np.any(counts > 0) else np.float32(1)
        factors = counts / target_sum
        divisors = factors + (factors == 0)  # scanpy leaves cells with no counts as they are

        def scale(block: Any, axis: int, start: int, stop: int) -> Any:
            if sp.issparse(block):
                block = block.astype(out_dtype)
                if axis == 0 and block.format == "csr":
                    block.data = block.data / np.repeat(divisors[start:stop], np.diff(block.indptr))
                else:  # a block of columns (CSC): every cell, divided by the factor of its row
                    block.data = block.data / divisors.take(block.indices)
                return block
            block = np.asarray(block, dtype=out_dtype)
            rows = divisors[start:stop] if axis == 0 else divisors
            return block / rows[:, None]

        opts = WriteOptions(transforms={path: scale}, dtypes={path: out_dtype})
        if key_added is not None:
            opts.obs_columns[key_added] = factors
        return shadow_write(shadow, dst, fmt, opts, chunk_size, progress, overwrite=overwrite)
    finally:
        if opened:
            shadow.close()


@renamed_arguments(src="source")
def log1p(
    source: Any,
    dst: str | os.PathLike,
    *,
    base: float | None = None,
    layer: str | None = None,
    chunk_size: int | None = None,
    progress: bool | None = None,
    file_format: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``source`` to ``dst`` with ``log(1 + x)`` of the matrix, as ``scanpy.pp.log1p`` (``uns["log1p"]`` set).

    Parameters
    ----------
    source
        A file or store path, or an :class:`~shadows.AnnDataShadow` (or a view).
    dst
        The new file (``.h5ad``) or store (``.zarr``).  An existing one is refused (``FileExistsError``) unless
        ``overwrite=True``; a directory that is not a zarr store is never replaced.
    base
        Logarithm base (``None``: natural logarithm).
    layer
        Transform this layer instead of ``X``.
    chunk_size, progress, file_format, overwrite
        As in :func:`normalize_total`.

    Returns
    -------
    ``dst``, as a :class:`~pathlib.Path`.
    """
    fmt = output_format(dst, file_format)
    check_output(dst, fmt, overwrite)  # before the passes over the matrix
    shadow, opened = open_source(source)
    try:
        path = f"layers/{layer}" if layer is not None else "X"
        if "log1p" in shadow.uns.keys():
            warnings.warn("adata.X seems to be already log-transformed.", UserWarning, stacklevel=2)
        from shadows.stream.elements import matrix_part, pending_value

        found, value = pending_value(shadow, path)
        dtype = np.dtype(value.dtype if found else matrix_part(shadow, path).dtype)
        out_dtype = dtype if dtype.kind == "f" else np.dtype(np.float64)  # scanpy: integers become float

        def transform(block: Any, axis: int, start: int, stop: int) -> Any:
            if sp.issparse(block):
                block = block.astype(out_dtype)
                block.data = _log1p(block.data, base)
                return block
            return _log1p(np.asarray(block, dtype=out_dtype), base)

        opts = WriteOptions(transforms={path: transform}, dtypes={path: out_dtype}, uns={"log1p": {"base": base}})
        return shadow_write(shadow, dst, fmt, opts, chunk_size, progress, overwrite=overwrite)
    finally:
        if opened:
            shadow.close()


def _log1p(x: np.ndarray, base: float | None) -> np.ndarray:
    x = np.log1p(x)
    if base is not None:
        np.divide(x, np.log(base), out=x)
    return x


class _Source:
    """The matrix being normalised, read block by block for the passes that precede the write."""

    def __init__(self, shadow: Any, path: str, chunk_size: int | None, progress: bool | None):
        from shadows.stream.elements import matrix_part, pending_value

        self.path = path
        self.chunk_size, self.progress = chunk_size, progress
        found, value = pending_value(shadow, path)
        if found:
            if value is None:
                raise ValueError(f"'{path}' of '{state_of(shadow).storage.describe()}' is None")
            self.value, self.part = value, None
            self.sparse = sp.issparse(value)
            self.dtype, self.shape = np.dtype(value.dtype), value.shape
        else:
            self.value, self.part = None, matrix_part(shadow, path)
            self.sparse = self.part.sparse
            self.dtype, self.shape = self.part.dtype, self.part.shape

    def blocks(self, desc: str):
        """``(axis, start, stop, block)`` over the whole matrix."""
        if self.part is None:
            axis = 1 if sp.issparse(self.value) and self.value.format == "csc" else 0
            for a, b, block in in_memory_blocks(self.value, axis, self.chunk_size):
                yield axis, a, b, block
            return
        bar = progress_bar(self.part.stored_bytes(), desc, progress=self.progress)
        try:
            for a, b, block in iter_major(self.part, self.chunk_size, _SUM_BYTES_PER_VALUE, None, bar, reuse=2):
                yield self.part.major_axis, a, b, block
        finally:
            bar.close()

    def row_sums(self, keep: np.ndarray | None = None) -> np.ndarray:
        """Per-cell totals in float64 (over the genes of ``keep`` only, when given)."""
        out = np.zeros(self.shape[0])
        for axis, a, b, block in self.blocks(f"totals of {self.path}"):
            if sp.issparse(block):
                m = block if keep is None else _drop_columns(block, ~(keep if axis == 0 else keep[a:b]))
                w = np.ones(m.shape[1])
                rows = slice(a, b) if axis == 0 else slice(None)
                out[rows] += sp.csr_matrix(m) @ w if m.format == "csr" else m @ w
            else:
                x = np.asarray(block, dtype=np.float64)
                if keep is not None:
                    x = x[:, keep] if axis == 0 else x[:, keep[a:b]]
                if axis == 0:
                    out[a:b] += x.sum(axis=1)
                else:
                    out += x.sum(axis=1)
        return out

    def genes_below(self, counts: np.ndarray, max_fraction: float) -> np.ndarray:
        """Genes never above ``max_fraction`` of a cell's total (scanpy's ``exclude_highly_expressed``)."""
        limit = (counts.astype(self.dtype if self.dtype.kind == "f" else np.float32) * max_fraction).astype(np.float64)
        high = np.zeros(self.shape[1], dtype=bool)
        for axis, a, b, block in self.blocks(f"highly expressed genes of {self.path}"):
            if sp.issparse(block):
                m = block.tocoo()
                rows = m.row + (a if axis == 0 else 0)
                cols = m.col + (a if axis == 1 else 0)
                hit = m.data > limit[rows]
                high[cols[hit]] = True
            else:
                x = np.asarray(block)
                lim = limit[a:b, None] if axis == 0 else limit[:, None]
                hit = (x > lim).any(axis=0)
                if axis == 0:
                    high |= hit
                else:
                    high[a:b] |= hit
        return ~high


def _drop_columns(m: Any, drop: np.ndarray) -> Any:
    """``m`` with the values of the columns in ``drop`` (a mask over all columns) set to zero."""
    m = m.copy()
    cols = m.indices if m.format == "csr" else np.repeat(np.arange(m.shape[1]), np.diff(m.indptr))
    m.data = np.where(drop[cols], 0, m.data)
    return m
