"""Reading the rows of a collection's matrix elements: which file holds each row, and how its columns line up.

A collection (:func:`shadows.concat`) stacks the rows of several files.  Its matrix elements (``X``, ``layers``,
``obsm``, ``obsp``) are described here by a :class:`Stacked` source: one :class:`~shadows.spec.lazy_array.ElementSource` per
file (``None`` where a file lacks the element), the global rows the collection (or view) selects, and per file a
:class:`Columns` plan (which stored columns to read, where they land in the joined columns).  ``read(rows)`` reads
from each file only the rows asked for, fills joined columns a file lacks as ``anndata.concat`` fills them, and
stacks the blocks in the order asked for.  Sources name files by path, never by open handle, so they pickle: dask
chunks built from them run anywhere.

The result's format and dtype are anndata's: they are found once by running ``anndata.concat``'s own array
concatenation on one-row stand-ins of each file's element (same format, dtype and columns), so that a view holding
rows of one file still has the dtype the whole concatenation has.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata._core import merge as admerge

from shadows.collection import gather
from shadows.spec import selection as ix
from shadows.spec.lazy_array import ElementSource

Sel = ix.Sel


@dataclass(frozen=True)
class Columns:
    """How one file's columns map onto the joined columns.

    Attributes
    ----------
    read
        Stored columns to read, in output order (``None``: all of them, in stored order).
    place
        Output position of each column read (``None``: the columns read are the output columns, in order).
    """

    read: Sel = None
    place: np.ndarray | None = None


@dataclass(frozen=True)
class RowPlan:
    """Rows asked for, grouped by file: ``pieces`` are ``(file, local selection)`` in file order; stacking their
    blocks and taking ``order`` (``None``: no reordering) gives the rows in the order asked for."""

    pieces: tuple
    order: np.ndarray | None


def plan_rows(rows: Sel, offsets: np.ndarray) -> RowPlan:
    """Group global row positions (``None``/slice/array over the stacked files) by file."""
    n_files = len(offsets) - 1
    total = int(offsets[-1])
    if rows is None:
        return RowPlan(tuple((f, None) for f in range(n_files) if offsets[f + 1] > offsets[f]), None)
    if isinstance(rows, slice) and rows.indices(total)[2] == 1:
        a, b, _ = rows.indices(total)
        pieces = []
        for f in range(n_files):
            lo, hi = max(a, int(offsets[f])), min(b, int(offsets[f + 1]))
            if lo < hi:
                n_f = int(offsets[f + 1] - offsets[f])
                local = slice(lo - int(offsets[f]), hi - int(offsets[f]), 1)
                pieces.append((f, None if local.indices(n_f) == (0, n_f, 1) else local))
        return RowPlan(tuple(pieces), None)
    pos = ix.positions(rows, total)
    if len(pos) == 0:
        return RowPlan((), None)
    file_of = np.searchsorted(offsets, pos, side="right") - 1
    order = None
    if np.any(np.diff(file_of) < 0):  # rows of the files interleaved: read file by file, then put back in order
        by_file = np.argsort(file_of, kind="stable")
        order = np.empty_like(by_file)
        order[by_file] = np.arange(len(by_file))
        pos, file_of = pos[by_file], file_of[by_file]
    cuts = np.flatnonzero(np.diff(file_of)) + 1
    pieces = []
    for chunk_pos, chunk_file in zip(np.split(pos, cuts), np.split(file_of, cuts), strict=True):
        f = int(chunk_file[0])
        pieces.append((f, chunk_pos - int(offsets[f])))
    return RowPlan(tuple(pieces), order)


@dataclass(frozen=True)
class Stacked:
    """A matrix element of a collection (or view): the files' elements stacked along rows.

    Attributes
    ----------
    sources
        Per file, the element (``None``: the file lacks it; its rows are filled).
    offsets
        Row offsets of the files in the collection (``len(sources) + 1`` values).
    rows
        Global rows selected (``None``: all).
    columns
        Per file, its :class:`Columns` plan (unused for ``pairwise``).
    n_cols
        Number of output columns (for ``pairwise``: the number of rows selected).
    fmt
        ``"csr"`` or ``"dense"``: the format anndata.concat gives.
    dtype
        The dtype anndata.concat gives.
    fill
        The value of joined positions a file lacks (0 for sparse, NaN for dense unless asked otherwise).
    pairwise
        An ``obsp`` element: block-diagonal, its columns are the selected rows.
    """

    sources: tuple
    offsets: np.ndarray
    rows: Sel
    columns: tuple
    n_cols: int
    fmt: str
    dtype: np.dtype
    fill: Any
    pairwise: bool = False

    @property
    def shape(self) -> tuple[int, int]:
        """``(rows selected, n_cols)``."""
        return ix.length(self.rows, int(self.offsets[-1])), int(self.n_cols)

    def with_rows(self, rows: Sel, columns: tuple | None = None, n_cols: int | None = None) -> Stacked:
        """The same element for another selection of global rows (and columns)."""
        return Stacked(
            self.sources,
            self.offsets,
            rows,
            self.columns if columns is None else columns,
            self.n_cols if n_cols is None else n_cols,
            self.fmt,
            self.dtype,
            self.fill,
            self.pairwise,
        )

    def read(self, sub: Sel = None) -> Any:
        """The rows ``sub`` (relative to this source's rows; ``None``: all) as numpy or scipy CSR."""
        total = int(self.offsets[-1])
        rows = ix.compose(self.rows, sub, total)
        plan = plan_rows(rows, self.offsets)
        n_rows = ix.length(rows, total)
        if self.pairwise:
            blocks = self._pairwise_blocks(plan)
        elif gather.servable(self, plan):  # CSR rows of CSR files: read into one preallocated matrix
            return self._stack([gather.read_csr(self, plan, n_rows)], plan.order, n_rows)
        else:
            blocks = [self._block(f, local) for f, local in plan.pieces]
        return self._stack(blocks, plan.order, n_rows)

    # --- one file's block -------------------------------------------------------------------------------------------
    def _block(self, f: int, local: Sel) -> Any:
        n = ix.length(local, int(self.offsets[f + 1] - self.offsets[f]))
        src = self.sources[f]
        if src is None:
            return self._filled(n)
        cols = self.columns[f]
        block = src.read((local, cols.read))
        return self._aligned(block, cols.place)

    def _filled(self, n: int) -> Any:
        """Rows of a file lacking the element: every value is the fill value."""
        if self.fmt == "csr":
            if self.fill == 0:
                return sp.csr_matrix((n, self.n_cols), dtype=self.dtype)
            return sp.csr_matrix(np.full((n, self.n_cols), self.fill, dtype=self.dtype))
        return np.full((n, self.n_cols), self.fill, dtype=self.dtype)

    def _aligned(self, block: Any, place: np.ndarray | None) -> Any:
        """A block of the columns read, placed at its output columns; the others filled as anndata fills them."""
        return align(block, place, self.n_cols, self.fmt, self.fill)

    def _pairwise_blocks(self, plan: RowPlan) -> list:
        """Rows of a block-diagonal element: each file's rows against the selected rows of the same file."""
        total = int(self.offsets[-1])
        selected = ix.positions(self.rows, total)  # the element's columns are the selected rows
        file_of = np.searchsorted(self.offsets, selected, side="right") - 1
        blocks = []
        for f, local in plan.pieces:
            n = ix.length(local, int(self.offsets[f + 1] - self.offsets[f]))
            src = self.sources[f]
            mine = file_of == f
            if src is None or not mine.any():
                blocks.append(sp.csr_matrix((n, self.n_cols), dtype=self.dtype))
                continue
            cols_out = np.flatnonzero(mine)
            block = src.read((local, selected[mine] - int(self.offsets[f])))
            block = block.tocsr() if sp.issparse(block) else sp.csr_matrix(np.asarray(block))
            blocks.append(sp.csr_matrix((block.data, cols_out[block.indices], block.indptr), shape=(n, self.n_cols)))
        return blocks

    def _stack(self, blocks: list, order: np.ndarray | None, n_rows: int) -> Any:
        if not blocks:
            return self._filled(0) if n_rows == 0 else None
        if self.fmt == "csr":
            out = blocks[0] if len(blocks) == 1 else sp.vstack(blocks, format="csr")
            if order is not None:
                out = out[order]
            out = out.astype(self.dtype, copy=False)
            if not out.has_sorted_indices:
                out.sort_indices()
            return out
        out = blocks[0] if len(blocks) == 1 else np.concatenate(blocks, axis=0)
        if order is not None:
            out = out[order]
        return np.asarray(out).astype(self.dtype, copy=False)


def align(block: Any, place: np.ndarray | None, n: int, fmt: str, fill: Any, axis: int = 1) -> Any:
    """A block of the columns (``axis=0``: rows) read, placed at positions ``place`` of ``n`` output columns (rows);
    the others filled as anndata fills them (a CSR block for ``fmt="csr"``, numpy for ``"dense"``)."""
    if fmt == "csr":
        block = block.tocsr() if sp.issparse(block) else sp.csr_matrix(np.asarray(block))
        if place is None:
            return block
        if axis == 0 and fill == 0:
            # rows placed in order (``place`` increasing): only the row pointers change, the values are not copied
            counts = np.zeros(n, dtype=np.int64)
            counts[place] = np.diff(block.indptr)
            indptr = np.concatenate([[0], np.cumsum(counts)]).astype(block.indptr.dtype, copy=False)
            return sp.csr_matrix((block.data, block.indices, indptr), shape=(n, block.shape[1]))
        if axis == 0:  # rows placed and filled with a value: the transposed block's columns
            return align(block.T, place, n, fmt, fill, 1).T.tocsr()
        out = sp.csr_matrix((block.data, place[block.indices], block.indptr), shape=(block.shape[0], n))
        if fill != 0:
            missing = np.setdiff1d(np.arange(n), place)
            out = out.tocsc().astype(np.result_type(out.dtype, np.asarray(fill).dtype))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", sp.SparseEfficiencyWarning)
                out[:, missing] = fill
            out = out.tocsr()
        return out
    block = np.asarray(block)
    if place is None:
        return block
    idx = np.full(n, -1, dtype=np.intp)
    idx[place] = np.arange(len(place))
    # pandas' take is what anndata's reindexer uses: the same fill and the same type promotion
    return pd.api.extensions.take(block, idx, axis=axis, allow_fill=True, fill_value=fill)


# --- format and dtype, the way anndata.concat decides them ------------------------------------------------------------
def standin(fmt: str | None, dtype: Any, n_cols: int) -> Any:
    """A one-row element of this format, dtype and width (zeros)."""
    if fmt == "csr":
        return sp.csr_matrix((1, n_cols), dtype=dtype)
    if fmt == "csc":
        return sp.csc_matrix((1, n_cols), dtype=dtype)
    return np.zeros((1, n_cols), dtype=dtype)


def concat_kind(standins: list, reindexers: list, fill_value: Any) -> tuple[str, np.dtype, Any]:
    """``(format, dtype, fill)`` of ``anndata.concat``'s concatenation of elements like ``standins``.

    ``standins`` holds one-row elements (or ``admerge.MissingVal`` for files lacking the element, outer join).
    """
    present = [s for s in standins if s is not admerge.MissingVal]
    arrays = [
        s if s is not admerge.MissingVal else admerge.missing_element(1, present, axis=0, fill_value=fill_value)
        for s in standins
    ]
    fill = fill_value if fill_value is not None else admerge.default_fill_value(arrays)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = admerge.concat_arrays(arrays, reindexers, axis=0, fill_value=fill_value)
    return ("csr" if sp.issparse(out) else "dense"), np.dtype(out.dtype), fill


def pairwise_dtype(standins: list) -> np.dtype:
    """dtype of ``scipy.sparse.block_diag`` of elements like ``standins`` (one-by-one stand-ins)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.dtype(sp.block_diag(standins, format="csr").dtype)


def source_of(value: Any) -> ElementSource | None:
    """The :class:`ElementSource` behind a lazy shadow's element (``None`` when the value is not a stored array)."""
    src = getattr(value, "source", None)
    return src if isinstance(src, ElementSource) else None


def chunk_bounds(plan: RowPlan, offsets: np.ndarray, step: int) -> list[tuple[int, int]]:
    """Output row ranges of at most ``step`` rows, none of them across a file boundary (when rows are in file order)."""
    out = []
    start = 0
    if plan.order is not None:
        n = sum(ix.length(local, int(offsets[f + 1] - offsets[f])) for f, local in plan.pieces)
        return [(a, min(n, a + step)) for a in range(0, n, step)]
    for f, local in plan.pieces:
        n = ix.length(local, int(offsets[f + 1] - offsets[f]))
        for a in range(0, n, step):
            out.append((start + a, start + min(n, a + step)))
        start += n
    return out
