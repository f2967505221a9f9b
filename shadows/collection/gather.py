"""The selected rows of a collection's CSR element, read from each file straight into one preallocated matrix.

Why: a filter (``coll[coll.obs.cell_type == "T cell"].X``) keeps scattered rows of many files.  Reading each
file's rows as a matrix and stacking them (``scipy.sparse.vstack``) holds every value twice; reading whole runs
of rows and cutting out the unselected ones copies ten times what is kept for a 10 % filter.  Here the row
pointers say how many values each selected row holds, the output's ``data``/``indices``/``indptr`` are made at
their final size, and each file's rows are read into their place: uncompressed HDF5 through
:func:`shadows.io.fast.scatter.read_ranges` (nearby rows in one system call, nothing copied twice), other files
(zarr, compressed, fast I/O off) through the file's own sparse reader, one file's rows at a time, copied in.

:func:`read_csr` serves an element whose pieces all come from CSR files with no column selection (the common
case: X of a collection or of a view selecting rows); anything else returns ``None`` and is read file by file.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from shadows.io.fast import pread
from shadows.io.fast.scatter import read_ranges
from shadows.spec import selection as ix
from shadows.spec.sparse import SparseReader


def servable(src: Any, plan: Any) -> bool:
    """Whether :func:`read_csr` can read these pieces: CSR output, each piece from a stored CSR file whose columns
    are the output's columns."""
    if src.fmt != "csr" or src.pairwise or not plan.pieces:
        return False
    for f, _ in plan.pieces:
        s, cols = src.sources[f], src.columns[f]
        if s is None or s.sparse_format != "csr" or cols.read is not None or cols.place is not None:
            return False
        if len(s.sel) > 1 and s.sel[1] is not None:
            return False
        if s.shape[1] != src.n_cols:
            return False
    return True


def _index_dtype(n_values: int, n_cols: int) -> np.dtype:
    # scipy keeps int32 indices when every index and count fits (it would cast int64 ones down, a copy)
    return np.dtype(np.int32 if max(n_values, n_cols) < 2**31 - 1 else np.int64)


def read_csr(src: Any, plan: Any, n_rows: int) -> sp.csr_matrix:
    """The rows of ``plan`` (pieces of :func:`~shadows.collection.source.plan_rows`, in file order) as one CSR
    matrix of ``src``'s dtype, each file's rows read into their place."""
    files = []
    total = 0
    for f, local in plan.pieces:
        s = src.sources[f]
        group, ctx = s.open()
        reader = SparseReader(group, ctx)
        n_stored = reader.shape[0]
        rows = ix.compose(s.sel[0] if s.sel else None, local, n_stored)
        pos = ix.positions(rows, n_stored).astype(np.int64, copy=False)
        if len(pos) > 1 and not bool((pos[1:] > pos[:-1]).all()):
            ip = reader.indptr  # repeats or reordering: the whole row pointer, once
            starts, ends = ip[pos].astype(np.int64), ip[pos + 1].astype(np.int64)
        elif len(pos):
            starts, ends = reader.bounds(pos)
            starts, ends = np.asarray(starts, np.int64), np.asarray(ends, np.int64)
        else:
            starts = ends = np.zeros(0, np.int64)
        files.append((reader, pos, starts, ends))
        total += int((ends - starts).sum())
    idx_dtype = _index_dtype(total, src.n_cols)
    data = np.empty(total, dtype=src.dtype)
    indices = np.empty(total, dtype=idx_dtype)
    indptr = np.empty(n_rows + 1, dtype=idx_dtype)
    indptr[0] = 0
    at_value, at_row = 0, 0
    for reader, pos, starts, ends in files:
        counts = ends - starts
        n = int(counts.sum())
        np.cumsum(counts, out=indptr[at_row + 1 : at_row + 1 + len(pos)])
        indptr[at_row + 1 : at_row + 1 + len(pos)] += at_value
        if n:
            _fill(reader, pos, starts, ends, data[at_value : at_value + n], indices[at_value : at_value + n])
        at_value += n
        at_row += len(pos)
    m = sp.csr_matrix((n_rows, src.n_cols), dtype=src.dtype)
    m.data, m.indices, m.indptr = data, indices, indptr  # set, not passed: scipy's constructor may copy
    m.check_format(full_check=False)
    return m


def _fill(reader: SparseReader, pos: np.ndarray, starts: np.ndarray, ends: np.ndarray, data: Any, indices: Any):
    """One file's selected rows into ``data``/``indices`` (slices of the output)."""
    done = set()
    for arr, out in ((reader.data, data), (reader.indices, indices)):
        lay = pread.layout(arr) if arr.dtype == out.dtype else None
        if lay is not None and lay.n == arr.shape[0]:
            read_ranges(lay, starts, ends, out)
            done.add(id(out))
    if len(done) == 2:
        return
    # no raw layout (zarr, compressed HDF5, fast I/O off, another dtype): the file's reader reads the rows, once
    m = reader.read(pos, None)
    if id(data) not in done:
        data[:] = m.data
    if id(indices) not in done:
        indices[:] = m.indices
