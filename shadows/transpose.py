"""Out-of-core change of orientation of a sparse matrix (CSR <-> CSC), in bounded memory.

The matrix ``M`` arrives as CSR row blocks (for a CSC input, its column blocks are row blocks of the transpose).
Two passes:

1. **spool**: each row block is regrouped by column (scipy's ``tocsc``, a C counting sort) and appended to a
   scratch file, together with its per-column offsets; the per-column totals are counted on the way;
2. **merge**: columns are cut into buckets whose values fit the memory budget; for each bucket, the slice of
   every spooled block that holds these columns is read (one contiguous read per block) into one buffer and the
   slices are stacked side by side (scipy's ``csr_hstack``, a C copy): the bucket's columns, compressed, in
   order, ready to be appended to the output.

Every value is read once from the input, written once to scratch and read once from it.  Small matrices stay in
memory (no scratch file).
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import scipy.sparse as sp

try:  # the C routines behind scipy's tocsc and hstack, called with buffers of ours (no allocation per block)
    from scipy.sparse._sparsetools import csr_hstack as _csr_hstack
    from scipy.sparse._sparsetools import csr_tocsc as _csr_tocsc
except ImportError:  # pragma: no cover - a future scipy without them: fall back on the public methods
    _csr_hstack = _csr_tocsc = None

from .settings import settings

# Bytes held per value of a bucket: the gathered slices and the merged copy of the bucket being merged, and the
# merged copy of the bucket the caller is writing.
MERGE_BYTES_PER_VALUE = 48
# Blocks regrouped at once (each in its own thread).
REGROUP_WORKERS = 2
# Bytes held per value of an input block: the block being read, the one queued, and the ones being regrouped
# with their regrouped copies (input blocks are read into ``REGROUP_WORKERS + 2`` reused buffers).
SPOOL_BYTES_PER_VALUE = 64
READ_SLOTS = REGROUP_WORKERS + 2


class Spool:
    """Append-only scratch space for arrays: a list in memory, or an unlinked temporary file."""

    def __init__(self, in_memory: bool, directory: str | os.PathLike | None = None):
        self.in_memory = in_memory
        self.items: list[np.ndarray] = []
        self.file = None
        if not in_memory:
            # unlinked at once: nothing is left behind, whatever happens to this process
            self.file = tempfile.TemporaryFile(dir=directory, prefix="shadows-spool-")
            self.offset = 0

    def put(self, arr: np.ndarray) -> tuple:
        arr = np.ascontiguousarray(arr)
        if self.in_memory:
            self.items.append(arr.copy())  # the caller reuses its buffers
            return (len(self.items) - 1, arr.dtype, len(arr))
        off = self.offset
        self.file.write(memoryview(arr).cast("B"))
        self.offset += arr.nbytes
        return (off, arr.dtype, len(arr))

    def get_into(self, handle: tuple, lo: int, hi: int, out: np.ndarray) -> None:
        """Copy elements ``lo:hi`` of a stored array into ``out`` (whose length is ``hi - lo``)."""
        where, dtype, _ = handle
        if hi <= lo:
            return
        if self.in_memory:
            out[:] = self.items[where][lo:hi]
            return
        if out.dtype != dtype:
            tmp = np.empty(hi - lo, dtype=dtype)
            self.get_into(handle, lo, hi, tmp)
            out[:] = tmp
            return
        self.file.seek(where + lo * dtype.itemsize)
        view = memoryview(out).cast("B")
        got = self.file.readinto(view)
        if got != view.nbytes:
            raise OSError(f"scratch file truncated: read {got} of {view.nbytes} bytes")

    def get(self, handle: tuple, lo: int, hi: int) -> np.ndarray:
        out = np.empty(max(0, hi - lo), dtype=handle[1])
        self.get_into(handle, lo, hi, out)
        return out

    def close(self) -> None:
        self.items = []
        if self.file is not None:
            f, self.file = self.file, None
            # closing the (unlinked) file frees its pages, tens of ms for a large spool: done in the background,
            # the result is complete without it
            threading.Thread(target=f.close, name="shadows-spool-close", daemon=True).start()


class Buffers:
    """Named arrays kept between blocks and grown when needed: blocks of any size, no allocation per block.

    Freshly allocated large arrays are what makes a process's memory grow in steps well beyond what it uses
    (allocator arenas per thread, fragmentation); reusing them keeps the peak close to the budget.
    """

    def __init__(self) -> None:
        self._arrays: dict[str, np.ndarray] = {}

    def get(self, name: str, n: int, dtype: Any) -> np.ndarray:
        dtype = np.dtype(dtype)
        arr = self._arrays.get(name)
        if arr is None or arr.dtype != dtype or len(arr) < n:
            self._arrays[name] = arr = np.empty(max(n, 1), dtype=dtype)
        return arr[:n]


def plan_buckets(counts: np.ndarray, target: int, align: int = 1, max_cols: int | None = None) -> list[tuple[int, int]]:
    """Cut ``len(counts)`` columns into ranges holding about ``target`` values each.

    Boundaries fall on multiples of ``align`` (so that fixed-size chunks are never split) and no range is wider
    than ``max_cols`` (rounded up to ``align``).
    """
    n = len(counts)
    if n == 0:
        return []
    align = max(1, int(align))
    cum = np.cumsum(counts, dtype=np.int64)
    total = int(cum[-1])
    marks = np.arange(max(1, target), max(total, 1), max(1, target), dtype=np.int64)
    cuts = np.searchsorted(cum, marks, side="left") + 1
    cuts = -(-cuts // align) * align  # round up to the alignment
    if max_cols:
        width = max(align, -(-int(max_cols) // align) * align)
        cuts = np.concatenate([cuts, np.arange(width, n, width)])
    cuts = np.unique(cuts[(cuts > 0) & (cuts < n)])
    bounds = [0, *[int(c) for c in cuts], n]
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def transposed_blocks(
    blocks: Iterable[tuple[int, int, Any]],
    n_rows: int,
    n_cols: int,
    dtype: Any,
    *,
    budget: int | None = None,
    in_memory: bool = False,
    directory: str | os.PathLike | None = None,
    align: int = 1,
    max_cols: int | None = None,
    bar: Any = None,
) -> Iterator[tuple[int, int, sp.csr_matrix]]:
    """Turn CSR row blocks of ``M`` (``n_rows`` x ``n_cols``) into CSR row blocks of ``M.T``.

    Parameters
    ----------
    blocks
        ``(r0, r1, block)``: consecutive row ranges covering ``0..n_rows`` in order, ``block`` a CSR matrix.
        Blocks should hold at most ``budget // SPOOL_BYTES_PER_VALUE`` values.
    dtype
        Type of the values.
    budget
        Bytes the merge may hold (default ``shadows.settings.memory_budget``).
    in_memory
        Keep the spooled blocks in memory (for matrices known to be small).
    directory
        Where the scratch file goes (default: the system's temporary directory).
    align, max_cols
        Constraints on the output ranges (see :func:`plan_buckets`).

    Yields
    ------
    ``(c0, c1, piece)``: ``piece`` is ``M[:, c0:c1].T`` as a CSR matrix (``c1 - c0`` x ``n_rows``).
    """
    budget = budget or settings.memory_budget
    dtype = np.dtype(dtype)
    spool = Spool(in_memory, directory)
    records: list[tuple] = []
    counts = np.zeros(n_cols, dtype=np.int64)

    merge_buffers = Buffers()
    local_buffers = threading.local()
    turns: dict[int, threading.Event] = {}

    def regroup(i: int, r0: int, r1: int, block: Any) -> None:
        # runs in one of the workers: the C conversion (which releases the GIL) of two blocks proceeds at once,
        # while the next block is read; the scratch writes then go strictly in block order
        try:
            buffers = getattr(local_buffers, "b", None)
            if buffers is None:
                buffers = local_buffers.b = Buffers()
            data, indices, ip = _to_columns(block, n_cols, buffers)
            # rows are local to the block: 16 bits suffice for most blocks and halve the scratch traffic
            if r1 - r0 <= 2**16:
                local = buffers.get("local16", len(indices), np.uint16)
                np.copyto(local, indices, casting="unsafe")
            else:
                local = indices
            if i > 0:
                turns[i - 1].wait()
            counts[:] += np.diff(ip)
            records.append((r0, r1, spool.put(ip), spool.put(local), spool.put(data.astype(dtype, copy=False))))
        finally:
            turns[i].set()  # even on failure: the next block must not wait forever (the error surfaces anyway)
        if bar is not None:
            bar.update(data.nbytes + indices.nbytes)

    try:
        with ThreadPoolExecutor(max_workers=REGROUP_WORKERS, thread_name_prefix="shadows-regroup") as worker:
            queued: deque = deque()
            expect = 0
            for i, (r0, r1, block) in enumerate(blocks):
                if r0 != expect:
                    raise ValueError(f"row blocks must be consecutive: got {r0}:{r1} after {expect}")
                expect = r1
                turns[i] = threading.Event()
                queued.append(worker.submit(regroup, i, r0, r1, block))
                del block
                while len(queued) > REGROUP_WORKERS:
                    queued.popleft().result()
                turns.pop(i - REGROUP_WORKERS - 1, None)
            while queued:
                queued.popleft().result()
        if expect != n_rows:
            raise ValueError(f"row blocks cover {expect} of {n_rows} rows")
        target = max(1, budget // MERGE_BYTES_PER_VALUE)
        plan = plan_buckets(counts, target, align, max_cols)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="shadows-merge") as worker:
            # the next bucket is merged while the caller writes the current one
            # pieces are built in two sets of buffers used in turn: the caller must be done with a piece when it
            # asks for the next one
            def merge(i: int) -> sp.csr_matrix:
                return _merge(spool, records, *plan[i], n_rows, dtype, merge_buffers, f"out{i % 2}")

            fut = worker.submit(merge, 0) if plan else None
            for i, (c0, c1) in enumerate(plan):
                piece = fut.result()
                fut = worker.submit(merge, i + 1) if i + 1 < len(plan) else None
                if bar is not None:
                    bar.update(piece.data.nbytes + piece.indices.nbytes)
                yield c0, c1, piece
                del piece
    finally:
        spool.close()


def _to_columns(block: Any, n_cols: int, buffers: Buffers) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A CSR block regrouped by column: ``(data, row indices, indptr)``, in reused buffers."""
    block = sp.csr_matrix(block)
    n_rows, nnz = block.shape[0], block.nnz
    if _csr_tocsc is None:
        t = block.tocsc()
        return t.data, t.indices, np.asarray(t.indptr, dtype=np.int64)
    idx = np.int32 if max(nnz, n_rows, n_cols) < 2**31 - 1 else np.int64
    ap = np.asarray(block.indptr, dtype=idx)
    aj = np.asarray(block.indices, dtype=idx)
    ax = block.data[: int(ap[-1])] if nnz else block.data[:0]
    bp = buffers.get("indptr", n_cols + 1, idx)
    bi = buffers.get("indices", nnz, idx)
    bx = buffers.get("data", nnz, ax.dtype)
    _csr_tocsc(n_rows, n_cols, ap, aj, ax, bp, bi, bx)
    return bx, bi, bp.astype(np.int64)


def _merge(
    spool: Spool, records: list, c0: int, c1: int, n_rows: int, dtype: np.dtype, buffers: Buffers, slot: str
) -> sp.csr_matrix:
    """Columns ``c0:c1`` of every spooled block, stacked side by side: ``M[:, c0:c1].T`` as CSR."""
    k = c1 - c0
    if not records:
        return sp.csr_matrix((k, n_rows), dtype=dtype)
    ips = [spool.get(rec[2], c0, c1 + 1) for rec in records]
    nnz = int(sum(int(ip[-1] - ip[0]) for ip in ips))
    idx_dtype = np.int32 if max(nnz, n_rows) < 2**31 - 1 else np.int64
    data_cat = buffers.get("data_cat", nnz, dtype)
    indices_cat = buffers.get("indices_cat", nnz, idx_dtype)
    indptr_cat = buffers.get("indptr_cat", len(records) * (k + 1), idx_dtype)
    widths = np.empty(len(records), dtype=idx_dtype)
    at = 0
    for b, ((r0, r1, _, h_idx, h_data), ip) in enumerate(zip(records, ips, strict=True)):
        lo, hi = int(ip[0]), int(ip[-1])
        spool.get_into(h_data, lo, hi, data_cat[at : at + hi - lo])
        spool.get_into(h_idx, lo, hi, indices_cat[at : at + hi - lo])
        indptr_cat[b * (k + 1) : (b + 1) * (k + 1)] = ip - lo
        widths[b] = r1 - r0
        at += hi - lo
    del ips
    if _csr_hstack is None or len(records) == 1:
        pieces, at = [], 0
        for b in range(len(records)):
            ip = indptr_cat[b * (k + 1) : (b + 1) * (k + 1)]
            n = int(ip[-1])
            pieces.append(
                sp.csr_matrix((data_cat[at : at + n], indices_cat[at : at + n], ip), shape=(k, int(widths[b])))
            )
            at += n
        out = pieces[0] if len(pieces) == 1 else sp.hstack(pieces, format="csr")
        return sp.csr_matrix(out, copy=True)
    indptr = buffers.get(f"{slot}_indptr", k + 1, idx_dtype)
    indices = buffers.get(f"{slot}_indices", nnz, idx_dtype)
    data = buffers.get(f"{slot}_data", nnz, dtype)
    _csr_hstack(len(records), k, widths, indptr_cat, indices_cat, data_cat, indptr, indices, data)
    return sp.csr_matrix((data, indices, indptr), shape=(k, n_rows))
