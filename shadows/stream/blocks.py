"""Reading a stored matrix (or the part of it a view selects) block by block, in bounded memory.

A :class:`MatrixPart` names one stored matrix element (a ``csr_matrix``/``csc_matrix`` group or a plain array) and
the file-level selection of a view.  :func:`iter_major` walks it along its stored major axis (rows of CSR and
dense arrays, columns of CSC) in blocks sized by the memory budget (or by a fixed step), each block read by the
selection-aware element readers; a background thread reads the next block while the caller works on the current
one (h5py and zarr release the GIL while they read).

Everything downstream — chunked iteration, streaming writes, conversions, statistics, transforms — is written in
terms of these blocks, in output coordinates (positions within the view).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from shadows.io.fast.pread import RangeReader, prepare
from shadows.io.storage import is_array, is_h5
from shadows.settings import settings
from shadows.spec import ReadContext, SparseReader, encoding_of, matrix_info
from shadows.spec import selection as ix
from shadows.spec.dense import read_dense
from shadows.spec.registry import DENSE_ENCODINGS, SPARSE_ENCODINGS
from shadows.spec.sparse import get_indptr

_AHEAD = True


def is_matrix(elem: Any) -> bool:
    """Whether ``elem`` is a stored sparse matrix or a numeric array: the elements that are streamed."""
    enc = encoding_of(elem)[0]
    if enc in SPARSE_ENCODINGS:
        return True
    if enc in DENSE_ENCODINGS and is_array(elem):
        return elem.dtype.kind in "biufc" and len(elem.shape) >= 1
    return False


def native(dtype: Any) -> np.dtype:
    """The canonical numpy dtype for a numeric dtype reported by h5py or zarr.

    h5py reports e.g. ``dtype('<f4')``, equal to but not the same object as ``np.dtype(np.float32)``; numpy's
    fast ``ufunc.at`` path needs the canonical one (otherwise it is ~100x slower).
    """
    dtype = np.dtype(dtype)
    if dtype.isnative and dtype.kind in "biufc" and dtype.names is None:
        return np.dtype(dtype.name)
    return dtype


@dataclass
class MatrixPart:
    """A stored matrix element and the selection of a view on it (file-level, one per leading axis).

    Parameters
    ----------
    elem
        The h5py/zarr group of a sparse matrix, or the array of a dense one.
    sels
        Per-axis selections (``None`` = all); missing axes mean all.
    ctx
        Read context (indptr cache, budget).
    """

    elem: Any
    sels: tuple
    ctx: ReadContext

    def __post_init__(self) -> None:
        self.sels = tuple(self.sels) + (None,) * (2 - len(self.sels))
        if encoding_of(self.elem)[0] in SPARSE_ENCODINGS:
            self.kind, self.file_shape = matrix_info(self.elem)
            self.dtype = native(self.elem["data"].dtype)
            self.index_dtype = native(self.elem["indices"].dtype)
        else:
            self.kind = "dense"
            self.file_shape = tuple(int(n) for n in self.elem.shape)
            self.dtype = native(self.elem.dtype)
            self.index_dtype = None

    @property
    def sparse(self) -> bool:
        """Whether the stored matrix is sparse (CSR or CSC)."""
        return self.kind != "dense"

    @property
    def major_axis(self) -> int:
        """The stored compressed axis, 1 for CSC, else 0 (rows are the major axis of CSR and dense)."""
        return 1 if self.kind == "csc" else 0

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the selected part."""
        out = list(self.file_shape)
        for a, s in enumerate(self.sels[: len(out)]):
            out[a] = ix.length(s, out[a])
        return tuple(out)

    def indptr(self) -> np.ndarray:
        """The stored matrix's ``indptr`` over the whole file (read once per read context)."""
        return get_indptr(self.elem, self.ctx)

    def major_lengths(self) -> np.ndarray:
        """Stored values in each selected major position (sparse only), in output order."""
        ip = self.indptr()
        sel = self.sels[self.major_axis]
        if sel is None:  # the common case, without a gather through an array of every position
            return np.diff(ip)
        pos = ix.positions(sel, len(ip) - 1)
        return ip[pos + 1] - ip[pos]

    def stored_bytes(self) -> int:
        """Bytes of stored values this part reads (data and indices; the minor selection is not subtracted)."""
        if self.sparse:
            return int(self.major_lengths().sum()) * (self.dtype.itemsize + self.index_dtype.itemsize)
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    def read(self, axis: int, start: int, stop: int) -> Any:
        """Positions ``start:stop`` (of the selected part) along ``axis``, everything selected along the other."""
        sels = list(self.sels)
        n = self.file_shape[axis]
        sels[axis] = ix.compose(self.sels[axis], slice(start, stop, 1), n)
        if self.sparse:
            return SparseReader(self.elem, self.ctx).read(sels[0], sels[1])
        return read_dense(self.elem, tuple(sels[: len(self.file_shape)]))


def part_of(elem: Any, sels: tuple, ctx: ReadContext | None = None, budget: int | None = None) -> MatrixPart:
    """A :class:`MatrixPart` whose reads keep their own temporaries (scans across the stored minor axis) within a
    quarter of ``budget``; the rest is left for the blocks being worked on."""
    budget = budget or settings.memory_budget
    cache = ctx.indptr_cache if ctx is not None else {}
    return MatrixPart(elem, sels, ReadContext(indptr_cache=cache, budget=max(2**16, budget // 4)))


def plan_major(part: MatrixPart, step: int | None, bytes_per_value: int, budget: int | None = None) -> list[tuple]:
    """Cut points ``(start, stop)`` along the major axis: ``step`` positions each, or sized by the budget.

    A sparse block spans about ``budget // bytes_per_value`` stored values of the file (``bytes_per_value``
    counts the caller's temporaries per value); a dense block spans as many rows of the file as fit.  Spans, not
    selected amounts, are what count: the readers read a block's scattered positions as coalesced ranges.
    """
    budget = budget or settings.memory_budget
    n = part.shape[part.major_axis]
    if n == 0:
        return []
    if step is not None:
        step = max(1, int(step))
        return [(a, min(n, a + step)) for a in range(0, n, step)]
    sel = part.sels[part.major_axis]
    if part.sparse:
        ip = part.indptr()
        if sel is None:
            lo, hi = ip[:-1], ip[1:]
        else:
            pos = ix.positions(sel, len(ip) - 1)
            lo, hi = ip[pos], ip[pos + 1]
        target = max(1, budget // max(1, bytes_per_value))
    else:
        pos = ix.positions(sel, part.file_shape[0])
        lo, hi = pos, pos + 1
        # the span read holds whole rows of the file; the caller's copies (selected, converted) come on top
        row = int(np.prod(part.file_shape[1:], dtype=np.int64)) * part.dtype.itemsize
        target = max(1, budget // max(1, row * max(16, bytes_per_value // 2)))
    return span_cuts(lo, hi, target)


def span_cuts(lo: np.ndarray, hi: np.ndarray, target: int) -> list[tuple[int, int]]:
    """Consecutive ranges of items ``[a, b)`` whose extents ``[lo, hi)`` together span at most ``target``.

    An item wider than ``target`` forms a range of its own.
    """
    n = len(lo)
    if n > 1 and bool((np.diff(lo) >= 0).all()) and bool((np.diff(hi) >= 0).all()):
        # items in order (a whole matrix, a slice): the span of [a, b) is hi[b - 1] - lo[a], and each cut is
        # found by bisection instead of running maxima over windows (10 ms for 100,000 rows)
        out = []
        a = 0
        while a < n:
            b = max(a + 1, int(np.searchsorted(hi, lo[a] + target, side="right")))
            out.append((a, b))
            a = b
        return out
    out = []
    a = 0
    window = 2**16
    while a < n:
        w = min(n - a, window)
        span = np.maximum.accumulate(hi[a : a + w]) - np.minimum.accumulate(lo[a : a + w])
        over = np.flatnonzero(span > target)
        if len(over) == 0 and a + w < n:
            window *= 2  # the whole window fits: look further before cutting
            continue
        b = a + max(1, int(over[0]) if len(over) else w)
        out.append((a, b))
        a = b
        window = max(2**16, min(window, 4 * (b - out[-1][0])))
    return out


def prefetched(jobs: list[tuple[int, int, Callable[[], Any]]], ahead: bool = _AHEAD) -> Iterator[tuple[int, int, Any]]:
    """Run ``(start, stop, read)`` jobs in order, reading the next block in a thread while the caller works.

    At most two blocks are alive: the one handed out and the one being read.
    """
    if not ahead or len(jobs) < 2:
        for a, b, read in jobs:
            yield a, b, read()
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="shadows-read") as pool:
        fut = pool.submit(jobs[0][2])
        for i, (a, b, _) in enumerate(jobs):
            block = fut.result()
            fut = pool.submit(jobs[i + 1][2]) if i + 1 < len(jobs) else None
            try:
                yield a, b, block
            except GeneratorExit:
                if fut is not None:
                    fut.cancel()
                raise
            del block


def iter_major(
    part: MatrixPart,
    step: int | None = None,
    bytes_per_value: int = 32,
    budget: int | None = None,
    bar: Any = None,
    reuse: int = 0,
    deferred: bool = False,
) -> Iterator[tuple[int, int, Any]]:
    """Yield ``(start, stop, block)`` along the stored major axis of ``part`` (blocks in the stored format).

    With ``reuse=k`` (k >= 2), contiguous sparse blocks of an HDF5 matrix are read into ``k`` buffers used in
    turn (no allocation per block, which keeps the process's memory flat): a block is then overwritten ``k - 1``
    blocks later, so only callers that hold fewer blocks than that may pass it.

    With ``deferred=True``, ``block`` is a function that reads the block when called, in the calling thread
    (callers with several worker threads: each reads what it works on, instead of waiting for one reader).  A
    contiguous sparse block is then read into buffers of the calling thread, overwritten by the next block that
    thread reads.
    """
    plan = plan_major(part, step, bytes_per_value, budget)
    axis = part.major_axis
    lengths = part.major_lengths() if part.sparse else None
    per_row = int(np.prod(part.shape[1:], dtype=np.int64)) * part.dtype.itemsize
    itemsize = part.dtype.itemsize + (part.index_dtype.itemsize if part.sparse else 0)
    slots = 0 if deferred else max(2, reuse)
    ring = _Ring(part, plan, slots) if (reuse or deferred) and _contiguous(part) and plan else None

    def job(i: int, a: int, b: int) -> Callable[[], Any]:
        if ring is not None:
            return lambda: ring.read(i % ring.slots if ring.slots else None, a, b)
        return lambda: part.read(axis, a, b)

    jobs = [(a, b, job(i, a, b)) for i, (a, b) in enumerate(plan)]
    for a, b, block in jobs if deferred else prefetched(jobs):
        if bar is not None:
            bar.update(int(lengths[a:b].sum()) * itemsize if lengths is not None else (b - a) * per_row)
        yield a, b, block


def _contiguous(part: MatrixPart) -> bool:
    """Whether every block of ``part`` is one contiguous range of an HDF5 sparse matrix's values."""
    if not part.sparse or part.sels[1 - part.major_axis] is not None or not is_h5(part.elem):
        return False
    s = part.sels[part.major_axis]
    return s is None or (isinstance(s, slice) and (s.step or 1) == 1)


class _Ring:
    """Buffers (``slots`` pairs of data and indices) that contiguous sparse blocks are read into in turn; with
    ``slots=0``, a pair per reading thread."""

    def __init__(self, part: MatrixPart, plan: list[tuple[int, int]], slots: int):
        self.part = part
        self.slots = slots
        ip = part.indptr()
        s = part.sels[part.major_axis]
        self.offset = 0 if s is None else s.indices(len(ip) - 1)[0]
        self.ip = ip
        size = max(int(ip[self.offset + b] - ip[self.offset + a]) for a, b in plan)
        total = int(ip[self.offset + plan[-1][1]] - ip[self.offset + plan[0][0]])
        prepare(part.elem["data"], total * part.dtype.itemsize)  # many block reads: decided for all of them
        prepare(part.elem["indices"], total * part.index_dtype.itemsize)
        # the layouts are looked up and the file opened once for all blocks
        self.readers = (RangeReader(part.elem["data"], 0), RangeReader(part.elem["indices"], 0))
        self.size = size
        self.data = [np.empty(size, dtype=part.dtype) for _ in range(slots)]
        self.indices = [np.empty(size, dtype=part.index_dtype) for _ in range(slots)]
        self.local = threading.local()
        self.cls = sp.csr_matrix if part.kind == "csr" else sp.csc_matrix

    def read(self, slot: int | None, a: int, b: int) -> Any:
        """Block ``a:b`` read into buffers ``slot`` (``None``: the calling thread's)."""
        a, b = a + self.offset, b + self.offset
        lo, hi = int(self.ip[a]), int(self.ip[b])
        n = hi - lo
        if slot is None:
            pair = getattr(self.local, "pair", None)
            if pair is None:
                pair = self.local.pair = (
                    np.empty(self.size, self.part.dtype),
                    np.empty(self.size, self.part.index_dtype),
                )
            data, indices = pair[0][:n], pair[1][:n]
        else:
            data, indices = self.data[slot][:n], self.indices[slot][:n]
        if n:  # without the GIL where the layout allows (shadows.io.fast.pread): the caller's work goes on meanwhile
            self.readers[0].read(lo, hi, data)
            self.readers[1].read(lo, hi, indices)
        indptr = self.ip[a : b + 1] - lo
        n_minor = self.part.shape[1 - self.part.major_axis]
        shape = (b - a, n_minor) if self.part.kind == "csr" else (n_minor, b - a)
        return self.cls((data, indices, indptr), shape=shape)


def in_memory_blocks(value: Any, axis: int, step: int | None, budget: int | None = None) -> Iterator[tuple]:
    """Blocks of an in-memory matrix (a pending value), cut like stored ones."""
    n = value.shape[axis]
    if step is None:
        budget = budget or settings.memory_budget
        nbytes = value.data.nbytes if sp.issparse(value) else np.asarray(value).nbytes
        per = max(1, nbytes // max(1, n))
        step = max(1, budget // (4 * per))
    for a in range(0, n, step):
        b = min(n, a + step)
        yield a, b, (value[a:b] if axis == 0 else value[:, a:b])
