"""The matrices of a collection concatenated along var (``shadows.concat(..., axis="var")``): files side by side.

Why a module of its own: along obs (:class:`~shadows.collection.source.Stacked`) each output row comes from one
file, so rows are grouped by file and each file's columns are aligned to the joined genes.  Along var each output
row is made of every selected file's part of that row, so the plan is the transpose: the selected columns are
grouped by file (:func:`~shadows.collection.source.plan_rows` on the column offsets), each file's rows are found
through the join of the cell names (``Core.maps``: joined cell -> file row, ``-1`` where a file lacks the cell,
filled as anndata fills it) and the blocks are put side by side (``scipy.sparse.hstack`` / ``numpy.hstack``).
The names, the join, the tables and the mappings are those of the axis-parameterised
:class:`~shadows.collection.core.Core`; only this reading differs.  A gene selection reads only the files
holding the genes, and only the rows asked.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata._core import merge as admerge

from shadows.collection.source import align, plan_rows
from shadows.spec import selection as ix
from shadows.spec.sparse import SparseReader

if TYPE_CHECKING:
    from shadows.collection.core import Core


@dataclass(frozen=True)
class SideBySide:
    """A matrix element (X or a layer) of a collection along var: the files' elements side by side.

    Attributes
    ----------
    sources
        Per file, its :class:`~shadows.spec.lazy_array.ElementSource` (``None``: the file lacks the element;
        its columns are filled).
    offsets
        Column offsets of the files (``len(sources) + 1`` values).
    maps
        Per file, the file row of each joined cell (``-1``: the file lacks it), or ``None``: the file's cells are
        the joined cells, in order.
    n_joined
        Number of joined cells.
    rows
        Joined cells selected (``None``: all).
    cols
        Concatenated columns selected (``None``: all).
    fmt
        ``"csr"`` or ``"dense"``: the format anndata.concat gives.
    dtype
        The dtype anndata.concat gives.
    fill
        The value of cells a file lacks (0 for sparse, NaN for dense unless ``fill_value``).
    """

    sources: tuple
    offsets: np.ndarray
    maps: tuple
    n_joined: int
    rows: ix.Sel
    cols: ix.Sel
    fmt: str
    dtype: np.dtype
    fill: Any
    pairwise: bool = False  # (what every matrix source of a collection says; never block-diagonal here)

    @property
    def n_cols(self) -> int:
        """Number of columns selected."""
        return ix.length(self.cols, int(self.offsets[-1]))

    @property
    def shape(self) -> tuple[int, int]:
        """``(cells selected, columns selected)``."""
        return ix.length(self.rows, self.n_joined), self.n_cols

    def select(self, rows: ix.Sel, cols: ix.Sel) -> SideBySide:
        """The same element for another selection of joined cells and concatenated columns."""
        return dataclasses.replace(self, rows=rows, cols=cols)

    def with_rows(self, rows: ix.Sel) -> SideBySide:
        """The same element for another selection of joined cells (the columns kept)."""
        return dataclasses.replace(self, rows=rows)

    def read(self, sub: ix.Sel = None) -> Any:
        """The rows ``sub`` (relative to this source's rows; ``None``: all) as numpy or scipy CSR."""
        rows = ix.compose(self.rows, sub, self.n_joined)
        n_rows = ix.length(rows, self.n_joined)
        plan = plan_rows(self.cols, self.offsets)  # the selected columns, grouped by file
        blocks = [self._block(f, rows, n_rows, local) for f, local in plan.pieces]
        if not blocks:
            return self._filled(n_rows, 0)
        if self.fmt == "csr":
            out = blocks[0] if len(blocks) == 1 else sp.hstack(blocks, format="csr")
            if plan.order is not None:
                out = out[:, plan.order]
            out = sp.csr_matrix(out).astype(self.dtype, copy=False)
            if not out.has_sorted_indices:
                out.sort_indices()
            return out
        out = blocks[0] if len(blocks) == 1 else np.hstack(blocks)
        if plan.order is not None:
            out = out[:, plan.order]
        return np.asarray(out).astype(self.dtype, copy=False)

    def _block(self, f: int, rows: ix.Sel, n_rows: int, local: ix.Sel) -> Any:
        """File ``f``'s columns ``local`` for the joined cells ``rows``, cells it lacks filled."""
        n_f = ix.length(local, int(self.offsets[f + 1] - self.offsets[f]))
        src = self.sources[f]
        if src is None:
            return self._filled(n_rows, n_f)
        cmap = self.maps[f]
        if cmap is None:
            return align(src.read((rows, local)), None, n_rows, self.fmt, self.fill, axis=0)
        wanted = cmap if rows is None else cmap[ix.positions(rows, self.n_joined)]
        present = wanted >= 0
        if present.all():
            return align(src.read((_as_range(wanted), local)), None, n_rows, self.fmt, self.fill, axis=0)
        block = src.read((_as_range(wanted[present]), local))
        return align(block, np.flatnonzero(present), n_rows, self.fmt, self.fill, axis=0)

    def stored_count(self) -> int | None:
        """The number of stored values of the (CSR) result, when the files' row pointers tell it: every column of
        each selected file kept, CSR files, zeros as fill; ``None`` otherwise.

        With it the written arrays are made at their final size: growing them block by block costs HDF5 memory
        for every chunk added (9 MB for a 7 MB file written in 2,000 blocks)."""
        if self.fmt != "csr":
            return None
        total = 0
        for f, local in plan_rows(self.cols, self.offsets).pieces:
            src, cmap = self.sources[f], self.maps[f]
            if src is None:
                if self.fill != 0:
                    return None
                continue
            if local is not None or src.sparse_format != "csr" or (len(src.sel) > 1 and src.sel[1] is not None):
                return None
            if cmap is None:
                wanted = self.rows
            else:
                wanted = cmap if self.rows is None else cmap[ix.positions(self.rows, self.n_joined)]
                if self.fill != 0 and bool((wanted < 0).any()):
                    return None
                wanted = wanted[wanted >= 0]
            group, ctx = src.open()
            reader = SparseReader(group, ctx)
            pos = ix.positions(ix.compose(src.sel[0] if src.sel else None, wanted, reader.shape[0]), reader.shape[0])
            ip = np.asarray(reader.indptr, dtype=np.int64)
            total += int((ip[pos + 1] - ip[pos]).sum())
        return total

    def _filled(self, n_rows: int, n_cols: int) -> Any:
        """A block of a file lacking the element: every value is the fill value."""
        if self.fmt == "csr":
            if self.fill == 0:
                return sp.csr_matrix((n_rows, n_cols), dtype=self.dtype)
            return sp.csr_matrix(np.full((n_rows, n_cols), self.fill, dtype=self.dtype))
        return np.full((n_rows, n_cols), self.fill, dtype=self.dtype)


def _as_range(pos: np.ndarray) -> Any:
    """Consecutive increasing positions as a slice (one range read instead of a gather)."""
    if len(pos) and int(pos[-1]) - int(pos[0]) == len(pos) - 1 and bool((np.diff(pos) == 1).all()):
        return slice(int(pos[0]), int(pos[-1]) + 1, 1)
    return pos


def side_by_side(core: Core, sources: list) -> SideBySide:
    """The :class:`SideBySide` element of a collection along var whose files hold ``sources``."""
    fmt, dtype, fill = side_kind(sources, core.maps, core.fill_value)
    return SideBySide(tuple(sources), core.offsets, tuple(core.maps), len(core.joined), None, None, fmt, dtype, fill)


def side_kind(sources: list, maps: list, fill_value: Any) -> tuple[str, np.dtype, Any]:
    """``(format, dtype, fill)`` of ``anndata.concat(..., axis=1)`` of elements like ``sources``.

    Found by running anndata's own array concatenation on stand-ins: per file one column of its format and dtype,
    two cells where the file has every joined cell, one (the other filled) where it lacks some, and anndata's
    missing element where it lacks the element."""
    new = pd.Index(["a", "b"])
    arrays, reindexers = [], []
    for s, cmap in zip(sources, maps, strict=True):
        if s is None:
            arrays.append(admerge.missing_element(1, [], axis=1, fill_value=fill_value))
            reindexers.append(admerge.Reindexer(pd.Index(["a"]), new))
            continue
        full = cmap is None or bool((cmap >= 0).all())
        arrays.append(_standin(s.sparse_format, s.dtype, 2 if full else 1))
        reindexers.append(admerge.Reindexer(new if full else pd.Index(["a"]), new))
    fill = fill_value if fill_value is not None else admerge.default_fill_value(arrays)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = admerge.concat_arrays(arrays, reindexers, axis=1, fill_value=fill_value)
    return ("csr" if sp.issparse(out) else "dense"), np.dtype(out.dtype), fill


def _standin(fmt: str | None, dtype: Any, n_rows: int) -> Any:
    if fmt == "csr":
        return sp.csr_matrix((n_rows, 1), dtype=dtype)
    if fmt == "csc":
        return sp.csc_matrix((n_rows, 1), dtype=dtype)
    return np.zeros((n_rows, 1), dtype=dtype)
