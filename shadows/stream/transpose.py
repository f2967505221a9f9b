"""Out-of-core change of orientation of a sparse matrix (CSR <-> CSC), in bounded memory.

The matrix ``M`` arrives as CSR row blocks (for a CSC input, its column blocks are row blocks of the transpose).
Two passes:

1. **spool**: worker threads each take a row block (reading it themselves when handed a reading function),
   regroup it by column (scipy's ``tocsc``, a C counting sort) and append it to a scratch file (its space
   reserved ahead), with its per-column offsets; the per-column totals are counted on the way;
2. **merge**: columns are cut into buckets whose values fit the memory budget; for each bucket, the slice of
   every spooled block that holds these columns is read (one contiguous read per block) into one buffer and the
   slices are stacked side by side (scipy's ``csr_hstack``, a C copy): the bucket's columns, compressed, in
   order, ready to be appended to the output.  Two buckets are merged at once while the caller writes the one
   before.

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

from shadows.io.fast.pread import pread_into
from shadows.io.fast.pwrite import preallocate, pwrite_from
from shadows.settings import settings

# Buckets merged at once (each in its own thread).
MERGE_WORKERS = 2
# Bytes held per value of a bucket: for each bucket being merged, the gathered slices (values, 16-bit rows and
# their widened copy: up to 14 bytes) and the merged copy (up to 12); the merged copy of the bucket the caller is
# writing.
MERGE_BYTES_PER_VALUE = 64
# Blocks read and regrouped at once (each in its own thread).
REGROUP_WORKERS = 2
# Sets the size of input blocks (``budget // SPOOL_BYTES_PER_VALUE`` values): each worker holds a block (8-16
# bytes per value) and its regrouped copy (10-16), and blocks handed over already read wait in a queue.  Smaller
# than the budget allows on purpose: scipy's regrouping scatters each value to one of the block's columns, and
# blocks of 512k values regroup faster per value than blocks of 1M (measured: 4.3 against 5.5 ns).
SPOOL_BYTES_PER_VALUE = 128
# Blocks handed over already read, into buffers used in turn: the transposer holds at most READ_SLOTS - 2 of
# them (the one being read and the one handed over take the other two).
READ_SLOTS = REGROUP_WORKERS + 2
# Bytes of scratch file reserved at a time, ahead of the writes.
SPOOL_RESERVE = 64 * 2**20


class Spool:
    """Append-only scratch space for arrays: a list in memory, or an unlinked temporary file."""

    def __init__(self, in_memory: bool, directory: str | os.PathLike | None = None):
        self.in_memory = in_memory
        self.items: list[np.ndarray] = []
        self.file = None
        if not in_memory:
            # unlinked at once: nothing is left behind, whatever happens to this process
            # unbuffered: written and read back through its descriptor (pwrite, pread: no seeks, no flushes)
            self.file = tempfile.TemporaryFile(dir=directory, prefix="shadows-spool-", buffering=0)
            self.fd = self.file.fileno()
            self.offset = 0
            self.reserved = 0  # bytes of the file reserved ahead of the writes (shadows.io.fast.pwrite.preallocate)

    def put(self, arr: np.ndarray) -> tuple:
        """Store a copy of ``arr``; returns the handle that :meth:`get` and :meth:`get_into` read it back with."""
        arr = np.ascontiguousarray(arr)
        if self.in_memory:
            self.items.append(arr.copy())  # the caller reuses its buffers
            return (len(self.items) - 1, arr.dtype, len(arr))
        off = self.offset
        if off + arr.nbytes > self.reserved:
            self.reserved = off + max(SPOOL_RESERVE, arr.nbytes)
            preallocate(self.fd, off, self.reserved - off, self.file.name)
        pwrite_from(self.fd, memoryview(arr).cast("B"), off)
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
        pread_into(self.fd, memoryview(out).cast("B"), where + lo * dtype.itemsize)

    def get_many(self, handles: list[tuple], lo: np.ndarray, at: np.ndarray, out: np.ndarray) -> None:
        """For each ``j``: elements ``lo[j]:lo[j] + at[j + 1] - at[j]`` of stored array ``handles[j]`` into
        ``out[at[j]:at[j + 1]]`` (a bucket's slice of every block, in one loop of few Python operations)."""
        if self.in_memory or any(h[1] != out.dtype for h in handles):
            for h, a, b, c in zip(handles, lo.tolist(), at[:-1].tolist(), at[1:].tolist(), strict=True):
                self.get_into(h, a, a + c - b, out[b:c])
            return
        view, size, fd = memoryview(out).cast("B"), out.itemsize, self.fd
        for (where, _, _), a, b, c in zip(handles, lo.tolist(), at[:-1].tolist(), at[1:].tolist(), strict=True):
            if c > b:
                pread_into(fd, view[b * size : c * size], where + a * size)

    def get(self, handle: tuple, lo: int, hi: int) -> np.ndarray:
        """Elements ``lo:hi`` of the stored array ``handle``, in a new array."""
        out = np.empty(max(0, hi - lo), dtype=handle[1])
        self.get_into(handle, lo, hi, out)
        return out

    def close(self) -> None:
        """Drop what is stored; a scratch file is closed (and so freed) in a background thread."""
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

    @staticmethod
    def of_thread(local: threading.local, name: str) -> Buffers:
        """The calling thread's set ``name`` kept in ``local`` (made on first use)."""
        buffers = getattr(local, name, None)
        if buffers is None:
            buffers = Buffers()
            setattr(local, name, buffers)
        return buffers

    def get(self, name: str, n: int, dtype: Any) -> np.ndarray:
        """The array ``name`` with ``n`` elements of ``dtype``, reused from earlier calls (grown when too small)."""
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
        ``(r0, r1, block)``: consecutive row ranges covering ``0..n_rows`` in order, ``block`` a CSR matrix or a
        function returning one (called in a worker thread, the way to have blocks read in parallel).  Blocks
        should hold at most ``budget // SPOOL_BYTES_PER_VALUE`` values.
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
    kept = [0]  # bytes of column offsets kept in memory

    out_buffers = Buffers()
    local_buffers = threading.local()
    spooling = threading.Lock()  # the scratch file, the records and the counts, one block at a time

    def regroup(r0: int, r1: int, block: Any) -> None:
        # runs in one of the workers, which read (when handed a reading function), regroup (scipy's C conversion,
        # without the GIL) and write to scratch space each block on their own: the workers keep both cores busy
        # instead of waiting, in turn, for one reader and for the scratch writes to go in block order
        if callable(block):
            block = block()
        buffers = Buffers.of_thread(local_buffers, "regroup")
        data, indices, ip = _to_columns(block, n_cols, buffers)
        # rows are local to the block: 16 bits suffice for most blocks and halve the scratch traffic
        if r1 - r0 <= 2**16:
            local = buffers.get("local16", len(indices), np.uint16)
            np.copyto(local, indices, casting="unsafe")
        else:
            local = indices
        with spooling:
            counts[:] += np.diff(ip)
            # each bucket of the merge needs a slice of every block's column offsets: kept in memory while they
            # take little room (a read from the scratch file per block and bucket costs more than the slice)
            if kept[0] + 4 * len(ip) <= budget // 16 and int(ip[-1]) < 2**31:
                offsets: Any = ip.astype(np.int32)
                kept[0] += offsets.nbytes
            else:
                offsets = spool.put(ip)
            records.append((r0, r1, offsets, spool.put(local), spool.put(data.astype(dtype, copy=False))))
        if bar is not None:
            bar.update(data.nbytes + indices.nbytes)

    try:
        with ThreadPoolExecutor(max_workers=REGROUP_WORKERS, thread_name_prefix="shadows-regroup") as worker:
            queued: deque = deque()
            expect = 0
            for r0, r1, block in blocks:
                if r0 != expect:
                    raise ValueError(f"row blocks must be consecutive: got {r0}:{r1} after {expect}")
                expect = r1
                # a block handed over as it is, held here until a worker takes it, counts in memory; a reading
                # function does not: more of them may wait
                depth = 2 * REGROUP_WORKERS if callable(block) else READ_SLOTS - 2
                queued.append(worker.submit(regroup, r0, r1, block))
                del block
                while len(queued) > depth:
                    queued.popleft().result()
            while queued:
                queued.popleft().result()
        if expect != n_rows:
            raise ValueError(f"row blocks cover {expect} of {n_rows} rows")
        spooled = _Blocks(records)
        del records[:]
        target = max(1, budget // MERGE_BYTES_PER_VALUE)
        plan = plan_buckets(counts, target, align, max_cols)
        with ThreadPoolExecutor(max_workers=MERGE_WORKERS, thread_name_prefix="shadows-merge") as worker:
            # the next buckets are merged (each in its own thread) while the caller writes the current one; the
            # pieces are built in MERGE_WORKERS + 1 sets of buffers used in turn: the caller must be done with a
            # piece when it asks for the next one
            def merge(i: int) -> sp.csr_matrix:
                out = (out_buffers, f"out{i % (MERGE_WORKERS + 1)}")
                return _merge(spool, spooled, *plan[i], n_rows, dtype, Buffers.of_thread(local_buffers, "merge"), out)

            ahead = deque(worker.submit(merge, i) for i in range(min(MERGE_WORKERS, len(plan))))
            for i, (c0, c1) in enumerate(plan):
                piece = ahead.popleft().result()
                if i + MERGE_WORKERS < len(plan):
                    ahead.append(worker.submit(merge, i + MERGE_WORKERS))
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


class _Blocks:
    """The spooled blocks, in row order, as arrays a merge slices instead of a list it loops over."""

    def __init__(self, records: list[tuple]):
        records = sorted(records, key=lambda rec: rec[0])  # written in the order the workers finished them
        self.n = len(records)
        self.widths = np.array([r1 - r0 for r0, r1, *_ in records], dtype=np.int64)
        self.rows = [rec[3] for rec in records]
        self.data = [rec[4] for rec in records]
        # each block's column offsets: an array kept in memory, or a handle in the scratch file; stacked into one
        # row per block when all were kept
        self.handles = [rec[2] for rec in records]
        kept = all(isinstance(h, np.ndarray) for h in self.handles)
        self.offsets = np.stack(self.handles) if kept and records else None
        if self.offsets is not None:
            self.handles = []  # (not held twice)

    def column_offsets(self, spool: Spool, c0: int, c1: int) -> np.ndarray:
        """Offsets of columns ``c0:c1 + 1`` in each block: ``(n, c1 - c0 + 1)``."""
        if self.offsets is not None:
            return self.offsets[:, c0 : c1 + 1].astype(np.int64)
        parts = [h[c0 : c1 + 1] if isinstance(h, np.ndarray) else spool.get(h, c0, c1 + 1) for h in self.handles]
        return np.stack(parts).astype(np.int64)


def _merge(
    spool: Spool,
    blocks: _Blocks,
    c0: int,
    c1: int,
    n_rows: int,
    dtype: np.dtype,
    buffers: Buffers,
    out: tuple[Buffers, str],
) -> sp.csr_matrix:
    """Columns ``c0:c1`` of every spooled block, stacked side by side: ``M[:, c0:c1].T`` as CSR."""
    k = c1 - c0
    if not blocks.n:
        return sp.csr_matrix((k, n_rows), dtype=dtype)
    ips = blocks.column_offsets(spool, c0, c1)
    lo = ips[:, 0]
    at = np.zeros(blocks.n + 1, dtype=np.int64)
    np.cumsum(ips[:, -1] - lo, out=at[1:])
    nnz = int(at[-1])
    idx_dtype = np.int32 if max(nnz, n_rows) < 2**31 - 1 else np.int64
    data_cat = buffers.get("data_cat", nnz, dtype)
    indices_cat = buffers.get("indices_cat", nnz, idx_dtype)
    # rows stored as 16 bits (blocks of at most 65536 rows) are read as such, then widened in one pass
    narrow = all(h[1] == np.uint16 for h in blocks.rows)
    rows_cat = buffers.get("rows16_cat", nnz, np.uint16) if narrow else indices_cat
    spool.get_many(blocks.data, lo, at, data_cat)
    spool.get_many(blocks.rows, lo, at, rows_cat)
    if narrow:
        np.copyto(indices_cat, rows_cat, casting="unsafe")
    indptr_cat = (ips - lo[:, None]).astype(idx_dtype).ravel()
    widths = blocks.widths.astype(idx_dtype)
    if _csr_hstack is None or blocks.n == 1:
        pieces = []
        for b in range(blocks.n):
            ip = indptr_cat[b * (k + 1) : (b + 1) * (k + 1)]
            part = (data_cat[at[b] : at[b + 1]], indices_cat[at[b] : at[b + 1]], ip)
            pieces.append(sp.csr_matrix(part, shape=(k, int(widths[b]))))
        merged = pieces[0] if len(pieces) == 1 else sp.hstack(pieces, format="csr")
        return sp.csr_matrix(merged, copy=True)
    out_buffers, slot = out
    indptr = out_buffers.get(f"{slot}_indptr", k + 1, idx_dtype)
    indices = out_buffers.get(f"{slot}_indices", nnz, idx_dtype)
    data = out_buffers.get(f"{slot}_data", nnz, dtype)
    _csr_hstack(blocks.n, k, widths, indptr_cat, indices_cat, data_cat, indptr, indices, data)
    return sp.csr_matrix((data, indices, indptr), shape=(k, n_rows))
