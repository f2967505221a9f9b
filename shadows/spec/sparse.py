"""Partial reads of ``csr_matrix`` / ``csc_matrix`` groups, written here because anndata's readers cannot do them.

anndata's backed matrices read the whole ``data`` and ``indices`` arrays for any minor-axis selection (a gene of a
CSR matrix, a cell of a CSC one).  Here:

* major-axis selections (rows of CSR, columns of CSC) read only the ``indptr`` ranges they need, neighbouring
  ranges coalesced into one read;
* minor-axis selections scan ``indices`` in chunks bounded by the memory budget, and read ``data`` only where
  a chunk has hits (scattered hits are read point-wise in coalesced runs; dense hits as one block);
* ``indptr`` is read once per matrix and connection and cached.

The result is a scipy matrix of the stored format, rows and columns in the order asked for.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import scipy.sparse as sp

from shadows.io.fast.pread import RangeReader, prepare, read_range, read_together
from shadows.io.fast.zarr_chunks import ChunkDecoder, decoder
from shadows.io.remote_h5 import expect, read_points, staged
from shadows.io.storage import attr, is_h5, member
from shadows.progress import progress_bar
from shadows.settings import settings
from shadows.spec import selection as ix
from shadows.spec.h5_ranges import read_ranges, union_worth
from shadows.spec.registry import ReadContext, corrupt, register_reader, sel_at, where_of
from shadows.spec.sparse_scan import DeferredHits, IndptrOfHits, Membership, RangeRead, read_hits
from shadows.spec.whole import read_all, wants_bar

# A copy of the matrix in the other orientation, kept inside the matrix's own group (anndata reads only data,
# indices and indptr there and ignores it).  Written by shadows.ops.column_index; used for minor-axis reads.
COLUMN_INDEX = "shadows_column_index"

# Coalesce two major-axis ranges when fewer than this many stored values lie between them.
_MAJOR_GAP_NNZ = 32 * 1024
# Within a scanned chunk, read ``data`` as one block when hits are denser than 1 in this many values.
_DENSE_HITS = 64
# zarr reads of scattered major positions spanning up to this many values in all are awaited together.
_CONCURRENT_ZARR = 2**22
# A scan of raw HDF5 indices asks the kernel for this many bytes ahead of the chunk it reads (posix_fadvise
# WILLNEED, a no-op for pages already cached): page cache only, not the process's memory
READ_AHEAD = 32 * 2**20
# Up to this many major positions, read only their indptr entries when indptr is not cached yet.
_FEW_MAJOR = 4096


def matrix_info(group: Any) -> tuple[str, tuple[int, int]]:
    """Format (``"csr"``/``"csc"``) and shape of a sparse group, current or legacy layout."""
    et = attr(group, "encoding-type")
    if et in ("csr_matrix", "csc_matrix"):
        fmt = et[:3]
        shape = attr(group, "shape")
    else:
        fmt = attr(group, "h5sparse_format")
        shape = attr(group, "h5sparse_shape")
    if fmt in ("csr", "csc") and (shape is None or len(shape) != 2):
        raise corrupt(group, f"a {fmt} matrix needs a 2-element 'shape' attribute, found {shape!r}")
    if fmt not in ("csr", "csc"):
        raise ValueError(f"{where_of(group)} is not a sparse matrix group (encoding-type {et!r})")
    return fmt, (int(shape[0]), int(shape[1]))


def part(group: Any, name: str) -> Any:
    """The array ``name`` (``data``, ``indices``, ``indptr``) of a sparse group; a clear error if it is missing."""
    if (arr := member(group, name)) is None:
        raise corrupt(group, f"the sparse matrix has no '{name}' array (found {sorted(group.keys())})")
    return arr


def get_indptr(group: Any, ctx: ReadContext | None) -> np.ndarray:
    """The ``indptr`` of a stored sparse matrix, as int64, read and checked once per matrix and connection.

    Raises
    ------
    CorruptElementError
        If the stored ``indptr`` does not start at 0, decreases, or ends past the stored values.
    """
    cache = ctx.indptr_cache if ctx is not None else {}
    key = group.name
    ip = cache.get(key)
    if ip is None:
        arr = indptr_array(group)
        dec = None if is_h5(arr) else decoder(arr)  # zarr on local disk: decoded without zarr's event loop
        ip = np.asarray(dec.read(0, dec.n) if dec is not None else arr[...], dtype=np.int64)
        check_indptr(group, ip)
        cache[key] = ip
    return ip


def indptr_array(group: Any, info: tuple[str, tuple[int, int]] | None = None) -> Any:
    """``indptr`` of a sparse group, checked to have one entry per row (CSR) or column (CSC) plus one.

    ``info``: the group's ``matrix_info`` when the caller has it (each attribute read costs tens of microseconds).
    """
    fmt, shape = info if info is not None else matrix_info(group)
    arr = part(group, "indptr")
    n_major = shape[0] if fmt == "csr" else shape[1]
    if len(arr.shape) != 1 or arr.shape[0] != n_major + 1:
        raise corrupt(
            group, f"indptr has shape {tuple(arr.shape)}, expected ({n_major + 1},) for a {fmt} matrix of {shape}"
        )
    if arr.dtype.kind not in "iu":
        raise corrupt(group, f"indptr has dtype {arr.dtype}, expected integers")
    return arr


def check_indptr(group: Any, ip: np.ndarray) -> None:
    """A whole ``indptr``: starts at 0, never decreases, ends within ``indices`` (read once per matrix)."""
    n_stored = part(group, "indices").shape[0]
    if len(ip) and ip[0] != 0:
        raise corrupt(group, f"indptr starts at {int(ip[0])}, expected 0")
    if len(ip) > 1 and bool((ip[1:] < ip[:-1]).any()):
        at = int(np.flatnonzero(ip[1:] < ip[:-1])[0])
        raise corrupt(group, f"indptr decreases at position {at + 1} ({int(ip[at])} then {int(ip[at + 1])})")
    if len(ip) and ip[-1] > n_stored:
        raise corrupt(group, f"indptr ends at {int(ip[-1])} but indices holds only {n_stored} values")


def _read_range(arr: Any, start: int, stop: int, dec: ChunkDecoder | None = None) -> np.ndarray:
    if is_h5(arr):
        with expect(arr, (stop - start) * arr.dtype.itemsize):  # a remote file: sequential chunks in one request
            return read_range(arr, start, stop)  # without the GIL, in parallel, where the layout allows
    # zarr with the caller's decoder (local disk): chunks decoded one by one, without zarr's event loop or its
    # concurrent copies of whole chunks
    return dec.read(start, stop) if dec is not None else np.asarray(arr[start:stop])


def _zarr_ranges(ranges: list[tuple[Any, int, int]]) -> list[np.ndarray] | None:
    """``arr[lo:hi]`` for each zarr array range, awaited together on zarr's event loop (a few scattered cells wait
    for their chunks once instead of once per range); ``None`` where zarr's async API is not there."""
    try:
        import asyncio

        from zarr.core.sync import sync
    except ImportError:  # pragma: no cover - another zarr: the caller reads range by range
        return None

    async def gather() -> list:
        return await asyncio.gather(*(arr.async_array.getitem(slice(lo, hi)) for arr, lo, hi in ranges))

    return [np.asarray(v) for v in sync(gather())]


def _read_points(arr: Any, pos: np.ndarray, block_len: int, reader: _ChunkReader | None = None) -> np.ndarray:
    """Values of ``arr`` at sorted absolute positions ``pos`` that all lie in one scanned block.

    Dense hits are read as one span (into ``reader``'s reused buffer when given) and gathered.
    """
    if len(pos) == 0:
        return np.zeros(0, dtype=arr.dtype)
    dense = len(pos) * _DENSE_HITS >= block_len
    lo, hi = int(pos[0]), int(pos[-1]) + 1
    if reader is not None and (dense or reader.dec is not None):
        # (a zarr chunk with a hit is decoded whole anyway: read the span of the hits)
        return np.take(reader.read(lo, hi), pos - lo)
    if not is_h5(arr):
        # whole chunks are decompressed anyway: each chunk touched is decoded once
        dec = decoder(arr)
        return dec.take(pos) if dec is not None else np.asarray(arr.get_coordinate_selection(pos))
    if dense:
        return np.take(read_range(arr, lo, hi), pos - lo)
    # coalesced ranges, never a read call per value (an HDF5 point selection makes one read syscall per point)
    raw = reader.raw if reader is not None else None
    return read_hits(arr, pos, reader.buf if raw is not None else None, RangeRead(arr, raw))


class _Appender:
    """Hits appended into one output array, sized from the hit rate seen so far (no list of pieces to
    concatenate at the end: the peak stays near one copy of the result instead of two).

    The first ``reserve`` call sizes the array for the whole scan (the hit rate of the first chunk times the
    values to scan, plus a tenth); a later shortfall grows it by half again.
    """

    def __init__(self, dtype: Any):
        self.arr = np.empty(0, dtype=dtype)
        self.n = 0

    def reserve(self, extra: int, expected_total: int) -> None:
        need = self.n + extra
        if need > len(self.arr):
            size = max(need, int(expected_total * 1.1) + 1024, int(len(self.arr) * 1.5))
            grown = np.empty(size, dtype=self.arr.dtype)
            grown[: self.n] = self.arr[: self.n]
            self.arr = grown

    def append(self, values: np.ndarray) -> None:
        self.arr[self.n : self.n + len(values)] = values
        self.n += len(values)

    def result(self) -> np.ndarray:
        out = self.arr[: self.n]
        # the usual margin (a tenth) stays allocated behind the view; only a poor estimate is worth a copy
        return out.copy() if self.n < len(self.arr) // 2 else out


class _ChunkReader:
    """Reads consecutive ranges of a 1-D array into one reused buffer (no fresh pages to fault in per chunk).

    zarr arrays on local disk are decoded chunk by chunk straight into the buffer (:mod:`shadows.io.fast.zarr_chunks`);
    other zarr arrays are read through zarr, into fresh arrays.
    """

    def __init__(self, arr: Any, size: int):
        self.arr = arr
        self.h5 = is_h5(arr)
        self.dec = None if self.h5 else decoder(arr)
        # raw reads through a layout looked up once (the caller has decided, with ``prepare``, whether the whole
        # scan reads raw): a lookup per chunk cost about 0.2 ms, in the thread that feeds the other
        self.raw = RangeReader(arr, 0) if self.h5 else None
        self.buf = np.empty(size, dtype=arr.dtype) if self.h5 or self.dec is not None else None

    @property
    def in_place(self) -> bool:
        """Whether reads go into the reused buffer (and release the GIL), which makes a second thread worth it."""
        return self.buf is not None

    def advise(self, start: int, stop: int) -> None:
        """Ask the kernel to start reading elements ``start:stop`` (raw HDF5 reads only; a no-op elsewhere)."""
        if self.raw is not None:
            self.raw.advise(start, stop)

    def all_cached(self, positions: list[int]) -> bool:
        """Whether the elements at ``positions`` are in the page cache (raw HDF5 reads only; elsewhere true: there
        is nothing to advise)."""
        return self.raw is None or self.raw.lay is None or self.raw.cached(positions)

    def read(self, start: int, stop: int) -> np.ndarray:
        if self.dec is not None:
            return self.dec.read_into(start, stop, self.buf)
        if not self.h5:
            return np.asarray(self.arr[start:stop])
        return self.raw.read(start, stop, self.buf)


class _pipeline:
    """Runs jobs one after another in a worker thread, at most two outstanding (or inline when ``threaded`` is
    false).  The caller reads the next chunk while the worker searches the previous one; ``wait_slot`` before
    refilling a buffer makes sure the job that used it (two turns ago) is done.  Errors surface in the caller."""

    def __init__(self, threaded: bool):
        self.threaded = threaded
        self.pending: list = []
        self.pool = None

    def __enter__(self) -> _pipeline:
        if self.threaded:
            from concurrent.futures import ThreadPoolExecutor

            self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shadows-scan")
        return self

    def wait_slot(self) -> None:
        while len(self.pending) >= 2:
            self.pending.pop(0).result()

    def submit(self, fn, *args) -> None:
        if self.pool is None:
            fn(*args)
        else:
            self.pending.append(self.pool.submit(fn, *args))

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                for f in self.pending:
                    f.result()
        finally:
            if self.pool is not None:
                self.pool.shutdown(wait=True, cancel_futures=True)


class SparseReader:
    """Reads a selection of one stored sparse matrix."""

    def __init__(self, group: Any, ctx: ReadContext | None = None):
        self.group = group
        self.ctx = ctx
        self.format, self.shape = matrix_info(group)

    # opened on first use: a read served by the column index never touches this matrix's own arrays
    @functools.cached_property
    def data(self) -> Any:
        """The stored ``data`` array, opened on first use and checked against ``indices``."""
        data = part(self.group, "data")
        n = part(self.group, "indices").shape[0]
        if len(data.shape) != 1 or data.shape[0] != n:
            raise corrupt(self.group, f"data has shape {tuple(data.shape)} but indices has ({n},): they must match")
        return data

    @functools.cached_property
    def indices(self) -> Any:
        """The stored ``indices`` array, opened on first use and checked to hold integers."""
        indices = part(self.group, "indices")
        if indices.dtype.kind not in "iu":
            raise corrupt(self.group, f"indices has dtype {indices.dtype}, expected integers")
        return indices

    @property
    def dtype(self) -> np.dtype:
        """The dtype of the stored values."""
        return self.data.dtype

    @functools.cached_property
    def _decoders(self) -> tuple[ChunkDecoder | None, ChunkDecoder | None]:
        """Chunk decoders of ``data`` and ``indices`` (zarr on local disk; ``None`` otherwise)."""
        if is_h5(self.data):
            return None, None
        return decoder(self.data), decoder(self.indices)

    @property
    def indptr(self) -> np.ndarray:
        """The matrix's ``indptr`` (read once per connection, see :func:`get_indptr`)."""
        return get_indptr(self.group, self.ctx)

    @property
    def budget(self) -> int:
        """Bytes one read may hold in memory (the read context's budget, else ``settings.memory_budget``)."""
        b = self.ctx.budget if self.ctx is not None and self.ctx.budget else settings.memory_budget
        return int(b)

    def read(self, rows: ix.Sel = None, cols: ix.Sel = None) -> sp.spmatrix:
        """The submatrix ``[rows, cols]`` in the stored format."""
        major, minor = (rows, cols) if self.format == "csr" else (cols, rows)
        n_major, n_minor = self.shape if self.format == "csr" else self.shape[::-1]
        if minor is not None and ix.is_identity(minor, n_minor):
            # every minor position in order (dask passes whole axes as slice(0, n)): a major-axis read, not a scan
            # of `indices` (a 4,193-row block of a 20,000-gene CSR file: 9 ms against 126 ms)
            minor = None
        if major is not None and ix.is_identity(major, n_major):
            major = None
        if major is None and minor is None:
            return self._whole()
        if minor is not None and COLUMN_INDEX in self.group:
            # the other orientation turns this minor-axis read into a cheap major-axis one
            other = SparseReader(self.group[COLUMN_INDEX], self.ctx)
            if other.shape == self.shape and other.format != self.format:
                m = other.read(rows, cols)
                return (sp.csr_matrix if self.format == "csr" else sp.csc_matrix)(m)
        maj_u, maj_inv = ix.sorted_unique(major, n_major)
        min_u, min_inv = ix.sorted_unique(minor, n_minor)
        span = _contiguous(maj_u, n_major) if minor is not None else None
        # a contiguous range of major positions (all cells of a gene) scans as one range: no per-position arrays
        maj_pos = ix.positions(maj_u, n_major) if span is None else None
        min_out = None
        if min_inv is not None and len(min_inv) == len(min_u):
            # an unsorted selection without repeats: the scan writes output positions directly (no reorder copy)
            min_out = np.empty(len(min_inv), dtype=np.int64)
            min_out[min_inv] = np.arange(len(min_inv))
            min_inv = None
        min_pos = None if minor is None else ix.positions(min_u, n_minor)
        if span is None:
            data, indices, indptr = self._read_major_minor(maj_pos, min_pos, min_out)
        else:
            data, indices, indptr = self._scan_range(*span, min_pos, min_out)
        n_min_out = n_minor if minor is None else ix.length(min_u, n_minor)
        cls = sp.csr_matrix if self.format == "csr" else sp.csc_matrix
        shape = (ix.length(maj_u, n_major), n_min_out)
        m = cls((data, indices, indptr), shape=shape if self.format == "csr" else shape[::-1])
        if maj_inv is not None or min_inv is not None:
            # restore order and repeats: the gathers run on the (small) selected matrix only
            r_inv, c_inv = (maj_inv, min_inv) if self.format == "csr" else (min_inv, maj_inv)
            if r_inv is not None:
                m = m[r_inv, :]
            if c_inv is not None:
                m = m[:, c_inv]
            m = cls(m)
        return m

    def _whole(self) -> sp.spmatrix:
        cls = sp.csr_matrix if self.format == "csr" else sp.csc_matrix
        ip = self.indptr
        decs = self._decoders
        if wants_bar(self.data, self.indices):  # a large read in an interactive session: show its progress
            data, indices = read_all([self.data, self.indices], f"reading {self.group.name}")
        elif all(d is not None for d in decs):
            # zarr on local disk: each array decoded chunk by chunk straight into its result, the two at once (zarr
            # would also hold its concurrently decoded chunks besides the result)
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(max_workers=2, thread_name_prefix="shadows-decode") as pool:
                data, indices = pool.map(lambda d: d.read(0, d.n), decs)
        else:
            data = _read_range(self.data, 0, self.data.shape[0])
            indices = _read_range(self.indices, 0, self.indices.shape[0])
        return cls((data, indices, ip.astype(indices.dtype, copy=False) if len(ip) else ip), shape=self.shape)

    # --- the two access paths -------------------------------------------------------------------------------------
    def _bounds(self, maj_pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Start and end (in stored values) of each selected major position.

        A few positions on a connection that has not cached ``indptr`` yet read just their entries (one point
        selection), so that "these 6 cells" costs 12 numbers instead of the whole ``indptr``.
        """
        cache = self.ctx.indptr_cache if self.ctx is not None else {}
        n_major = self.shape[0] if self.format == "csr" else self.shape[1]
        if self.group.name not in cache and 0 < len(maj_pos) < n_major:
            lo, hi = int(maj_pos[0]), int(maj_pos[-1]) + 1
            if hi - lo == len(maj_pos):  # a contiguous range: one slice of indptr
                arr = indptr_array(self.group, (self.format, self.shape))
                with staged([(arr, lo, hi + 1)]):  # a remote file: the entries exactly (else nothing)
                    part = np.asarray(arr[lo : hi + 1], dtype=np.int64)
                return self._checked_bounds(part[:-1], part[1:])
        if self.group.name not in cache and 0 < len(maj_pos) <= _FEW_MAJOR:
            want = np.unique(np.concatenate([maj_pos, maj_pos + 1]))
            arr = indptr_array(self.group, (self.format, self.shape))
            # a remote file: the entries in one batch of exact requests, not a 64 kB block per entry (else nothing)
            with staged([(arr, int(p), int(p) + 1) for p in want]):
                got = read_points(arr, want)  # a remote chunked indptr: each run exactly (else None)
                if got is None and union_worth(arr, len(want)):
                    got = read_ranges(arr, want, want + 1)  # a local h5ad: one HDF5 read
                if got is None:
                    got = _read_points(arr, want, block_len=len(want) * _DENSE_HITS + 1)
                got = got.astype(np.int64)
            return self._checked_bounds(got[np.searchsorted(want, maj_pos)], got[np.searchsorted(want, maj_pos + 1)])
        ip = self.indptr
        return ip[maj_pos], ip[maj_pos + 1]

    def bounds(self, maj_pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Start and end (in stored values) of each of the sorted major positions ``maj_pos``."""
        return self._bounds(np.asarray(maj_pos, dtype=np.int64))

    def _checked_bounds(self, starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Entries of ``indptr`` read piecewise (a whole one is checked in ``check_indptr``): within ``indices``."""
        n_stored = self.indices.shape[0]
        bad = (starts < 0) | (ends < starts) | (ends > n_stored)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise corrupt(
                self.group,
                f"indptr gives the range {int(starts[i])}:{int(ends[i])} for a {'row' if self.format == 'csr' else 'column'}"
                f", outside the {n_stored} stored values (or decreasing)",
            )
        return starts, ends

    def _scan_range(self, a: int, b: int, min_pos: np.ndarray, min_out: np.ndarray | None):
        """Minor positions ``min_pos`` of major positions ``a:b``: one scan of the stored range
        ``indptr[a]:indptr[b]``; the result's ``indptr`` from the hits' stored positions (see ``IndptrOfHits``)."""
        cache = self.ctx.indptr_cache if self.ctx is not None else {}
        ip = cache.get(self.group.name)
        arr = indptr_array(self.group, (self.format, self.shape)) if ip is None else None

        def piece(lo: int, hi: int) -> np.ndarray:
            if ip is not None:
                return ip[lo:hi]
            return np.asarray(_read_range(arr, lo, hi, None if is_h5(arr) else decoder(arr)), dtype=np.int64)

        ends = piece(a, a + 1) if a == b else np.concatenate([piece(a, a + 1), piece(b, b + 1)])
        starts, ends = self._checked_bounds(ends[:1], ends[-1:])
        positions = IndptrOfHits(piece, a, b, int(ends[-1] - starts[0]), self.group, corrupt)
        data, minor, _ = self._scan_minor(np.zeros(1, np.int64), starts, ends, min_pos, min_out, positions)
        indptr = positions.result()
        return data, minor, indptr

    def _read_major_minor(self, maj_pos: np.ndarray, min_pos: np.ndarray | None, min_out: np.ndarray | None = None):
        starts, ends = self._bounds(maj_pos)
        if min_pos is None:
            data, indices = self._read_major(maj_pos, starts, ends)
            indptr = np.concatenate([[0], np.cumsum(ends - starts)]).astype(np.int64)
            return data, indices, indptr
        return self._scan_minor(maj_pos, starts, ends, min_pos, min_out)

    @staticmethod
    def _major_blocks(starts: np.ndarray, ends: np.ndarray):
        """Coalesced ranges ``(first, last + 1, lo, hi)`` of selected positions and of the stored values they span."""
        if len(starts) == 0:
            return
        # gap between consecutive selected positions measured in stored values, not rows
        breaks = np.flatnonzero(starts[1:] - ends[:-1] > _MAJOR_GAP_NNZ) + 1
        edges = np.concatenate([[0], breaks, [len(starts)]])
        for i0, i1 in zip(edges[:-1], edges[1:], strict=True):
            yield int(i0), int(i1), int(starts[i0]), int(ends[i1 - 1])

    def _read_major(self, maj_pos: np.ndarray, starts: np.ndarray, ends: np.ndarray):
        blocks = list(self._major_blocks(starts, ends))
        got = None
        dec_data = self._decoders[0]
        concurrent = not is_h5(self.data) and dec_data is None  # (zarr, not decoded here)
        if concurrent and 1 < len(blocks) and int(blocks[-1][3] - blocks[0][2]) > 0:
            ranges = [(arr, lo, hi) for _, _, lo, hi in blocks for arr in (self.data, self.indices)]
            if sum(hi - lo for _, lo, hi in ranges) <= _CONCURRENT_ZARR:
                got = _zarr_ranges(ranges)
        # a remote HDF5 file: the values of every block fetched at once, exactly (on a local file: nothing)
        remote = (
            [(arr, lo, hi) for _, _, lo, hi in blocks for arr in (self.data, self.indices)] if is_h5(self.data) else []
        )
        with staged(remote):
            return self._read_blocks(blocks, starts, ends, got)

    def _read_blocks(self, blocks: list, starts: np.ndarray, ends: np.ndarray, got: list | None):
        datas, idxs = [], []
        dec_data, dec_indices = self._decoders
        # HDF5: each array's layout looked up (and its file opened) once for all blocks, not once per block (200
        # scattered columns of a CSC matrix made 400 lookups of about 0.2 ms each)
        total = sum(hi - lo for _, _, lo, hi in blocks)
        raw = [RangeReader(a, total * a.dtype.itemsize) if is_h5(a) else None for a in (self.data, self.indices)]
        if got is None and all(r is not None and r.lay is None for r in raw) and union_worth(self.data, len(blocks)):
            got = self._union_blocks(blocks)
        if got is None and all(r is not None and r.lay is not None for r in raw):
            got = read_together([(r, lo, hi) for _, _, lo, hi in blocks for r in raw])
        for k, (i0, i1, lo, hi) in enumerate(blocks):
            if got is not None:
                d, i = got[2 * k], got[2 * k + 1]
            else:
                # a remote file: each block's chunks in one request (expect), not one request per chunk
                with expect(self.data, (hi - lo) * self.data.dtype.itemsize):
                    d = raw[0].read(lo, hi) if raw[0] is not None else _read_range(self.data, lo, hi, dec_data)
                with expect(self.indices, (hi - lo) * self.indices.dtype.itemsize):
                    i = raw[1].read(lo, hi) if raw[1] is not None else _read_range(self.indices, lo, hi, dec_indices)
            st, en = starts[i0:i1], ends[i0:i1]
            if hi - lo != int((en - st).sum()):  # the block spans unselected rows: cut them out
                keep = ix.ranges_to_positions(st - lo, en - st)
                d, i = d[keep], i[keep]
            datas.append(d)
            idxs.append(i)
        if not datas:
            return np.zeros(0, dtype=self.dtype), np.zeros(0, dtype=self.indices.dtype)
        return (np.concatenate(datas) if len(datas) > 1 else datas[0]), (
            np.concatenate(idxs) if len(idxs) > 1 else idxs[0]
        )

    def _union_blocks(self, blocks: list) -> list[np.ndarray]:
        """``data`` and ``indices`` of every block, each array in one HDF5 read (see :mod:`.h5_ranges`),
        interleaved as ``[data_0, indices_0, data_1, ...]``."""
        los = np.array([lo for _, _, lo, _ in blocks], dtype=np.int64)
        his = np.array([hi for _, _, _, hi in blocks], dtype=np.int64)
        cuts = np.cumsum(his - los)[:-1]
        data = np.split(read_ranges(self.data, los, his), cuts)
        indices = np.split(read_ranges(self.indices, los, his), cuts)
        return [a for pair in zip(data, indices, strict=True) for a in pair]

    def _scan_minor(
        self,
        maj_pos: np.ndarray,
        starts: np.ndarray,
        ends: np.ndarray,
        min_pos: np.ndarray,
        min_out: np.ndarray | None = None,
        positions: _Appender | None = None,
    ):
        """Scan ``indices`` of the selected major ranges in bounded chunks; keep hits on the wanted minor positions.

        ``min_out`` gives the output position of each wanted minor position (default: their rank); with an
        unsorted selection the minor indices of a major position then come in stored order, unsorted, exactly as
        scipy's own column indexing leaves them, and no reordering copy of the result is needed.
        """
        n_minor = self.shape[1] if self.format == "csr" else self.shape[0]
        if len(min_pos) == 0:  # no minor position wanted (e.g. a MuData view keeping none of a modality's features)
            return np.zeros(0, self.dtype), np.zeros(0, np.int32), np.zeros(len(maj_pos) + 1, np.int64)
        member = Membership(min_pos, n_minor)
        out_pos = np.arange(len(min_pos)) if min_out is None else min_out
        # output positions by stored minor position; int16 where it fits keeps the kept pieces small
        lut = np.zeros(n_minor, dtype=np.int16 if len(min_pos) < 2**15 else np.int32)
        lut[min_pos] = out_pos
        step = scan_step(self.budget)
        if is_h5(self.indices):
            step = max(2**16, step // 2)  # two chunks in flight (see below): each half as long
        elif self.indices.chunks:
            # whole zarr chunks per step: a chunk cut in two would be decompressed twice; decoded chunks are in
            # flight two at a time (as HDF5's), so each step is half as long
            c = int(self.indices.chunks[0])
            if self._decoders[1] is not None:
                step //= 2
            step = max(c, step - step % c)
        item = self.indices.dtype.itemsize
        scanned = int((ends - starts).sum()) * item
        prepare(self.indices, scanned)  # the whole scan decides whether its many reads go raw, not each chunk
        prepare(self.data, scanned)
        values = _ChunkReader(self.data, step)
        decoded = values.dec is not None
        out_minor, out_data = _Appender(np.int32), _Appender(self.dtype)
        raw_values = values.raw is not None and values.raw.lay is not None
        late = DeferredHits(self.data, RangeRead(self.data, values.raw), values.buf, out_data) if raw_values else None
        bar = progress_bar(
            scanned, f"scanning {self.group.name} for {len(min_pos)} {'genes' if self.format == 'csr' else 'cells'}"
        )
        # hits arrive in stored order (major non-decreasing), so counts per selected major position are enough to
        # build indptr; only the minor position and the value are kept per hit
        counts = np.zeros(len(maj_pos), dtype=np.int64)
        progress = {"scanned": 0}
        total_span = max(1, int((ends - starts).sum()))

        def process(
            chunk: np.ndarray, c0: int, c1: int, i0: int, i1: int, mask_buf: np.ndarray, vals: np.ndarray | None
        ) -> None:
            st, en = starts[i0:i1], ends[i0:i1]
            # comparisons for a few wanted positions or clusters of them, else a table (see sparse_scan)
            try:
                hit = member.hits(chunk, mask_buf)
            except IndexError:
                raise corrupt(
                    self.group, f"indices hold {int(chunk.max())}, beyond the {n_minor} positions of the minor axis"
                ) from None
            # read the next chunk's values ahead while hits are dense; for zarr chunks, decoded whole for any hit,
            # while there are hits at all
            progress["dense"] = len(hit) > 0 if decoded else len(hit) * _DENSE_HITS >= c1 - c0
            if len(hit) == 0:
                progress["scanned"] += c1 - c0
                return
            # the selected major positions overlapping this chunk, and their hits: two binary searches per position
            # (not one per hit); hits in unselected positions between selected ones fall outside
            r0 = int(np.searchsorted(en, c0, side="right"))
            r1 = int(np.searchsorted(st, c1, side="left"))
            first = np.searchsorted(hit, np.clip(st[r0:r1], c0, c1) - c0)
            n_hits = np.searchsorted(hit, np.clip(en[r0:r1], c0, c1) - c0) - first
            counts[i0 + r0 : i0 + r1] += n_hits
            if int(n_hits.sum()) != len(hit):
                hit = hit[ix.ranges_to_positions(first, n_hits)]
                if len(hit) == 0:
                    progress["scanned"] += c1 - c0
                    return
            progress["scanned"] += c1 - c0
            expected = int(out_minor.n + len(hit)) * total_span // progress["scanned"]
            out_minor.reserve(len(hit), expected)
            out_data.reserve(len(hit), expected)
            out_minor.append(np.take(lut, np.take(chunk, hit)))
            if positions is not None:
                positions.reserve(len(hit), expected)
                positions.append(hit + c0)
            if vals is not None:  # the caller read this chunk's values already
                out_data.append(np.take(vals, hit))
            elif late is not None and len(hit) * _DENSE_HITS < c1 - c0:
                late.add(hit + c0)  # asked of the kernel now, read a few chunks later (see DeferredHits)
            else:
                out_data.append(_read_points(self.data, hit + c0, c1 - c0, values))

        jobs = [
            (c0, min(hi, c0 + step), i0, i1)
            for i0, i1, lo, hi in self._major_blocks(starts, ends)
            for c0 in range(lo, hi, step)
        ]
        # two buffers in turn: while one chunk is searched (numpy releases the GIL), the next one is read (HDF5)
        # or decoded (zarr on local disk); zarr's own reads return fresh arrays: a second chunk in flight would only
        # add memory
        threaded = len(jobs) > 1 and values.in_place
        n_slots = 2 if threaded else 1
        masks = [np.empty(step, dtype=bool) for _ in range(n_slots)]
        slots = [(_ChunkReader(self.indices, step), masks[i], _ChunkReader(self.data, step)) for i in range(n_slots)]
        # while the chunks searched so far hit densely (every chunk does for a few hundred genes of a CSR matrix),
        # the next chunk's values are read along with its indices, by the reading thread: the searching thread,
        # the busier one, then only gathers them
        progress["dense"] = False
        # the kernel is asked for the indices of the next jobs (READ_AHEAD bytes) before they are read.  6 cells of
        # the 1M x 20k CSC file from a cold disk (a scan of 2 GB of indices in 2 MB reads, one at a time): 3.9-5.5 s
        # without, 2.1-2.6 s with 8, 32 or 128 MB ahead (the floor's one read of all the indices: 4.7-5.6 s)
        ahead = READ_AHEAD // max(1, step * item) if len(jobs) > 2 else 0
        # a scan whose indices are cached (probed at the ends of 8 jobs spread over it) asks nothing: advising
        # cached pages costs about 86 us per 2 MB, and probing each job cost one gene's warm scan 9 %
        if ahead and slots[0][0].all_cached([jobs[i][1] - 1 for i in np.linspace(1, len(jobs) - 1, 8, dtype=int)]):
            ahead = 0
        advised = v_advised = 1  # the first job is read at once
        try:
            with _pipeline(threaded) as run:
                for k, (c0, c1, i0, i1) in enumerate(jobs):
                    reader, mask_buf, vreader = slots[k % n_slots]
                    if ahead:
                        for a0, a1, _, _ in jobs[advised : k + 1 + ahead]:
                            reader.advise(a0, a1)
                        if progress["dense"]:  # the values are read along with the indices: asked for ahead too
                            for a0, a1, _, _ in jobs[max(v_advised, k) : k + 1 + ahead]:
                                vreader.advise(a0, a1)
                            v_advised = min(len(jobs), k + 1 + ahead)
                        advised = max(advised, min(len(jobs), k + 1 + ahead))
                    run.wait_slot()  # the job that used this slot two turns ago is done
                    chunk = reader.read(c0, c1)
                    vals = vreader.read(c0, c1) if threaded and progress["dense"] else None
                    run.submit(process, chunk, c0, c1, i0, i1, mask_buf, vals)
                    bar.update((c1 - c0) * item)
            if late is not None:
                late.flush()
        finally:
            slots.clear()
            bar.close()
        minor, data = out_minor.result(), out_data.result()
        indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        return data, minor, indptr


def _contiguous(sel: ix.Sel, n: int) -> tuple[int, int] | None:
    """``(a, b)`` where ``sel`` is all of ``range(a, b)`` in order (``None``, a slice of step 1), else ``None``."""
    if sel is None:
        return 0, n
    if isinstance(sel, slice):
        a, b, step = sel.indices(n)
        if step == 1:
            return a, max(a, b)
    return None


def scan_step(budget: int) -> int:
    """Stored values per scanned chunk: the chunk and its temporaries (about 16 bytes a value) fit the budget.

    Chunks are capped at 2**20 values: reads of that size already run at full storage speed, and smaller chunks
    keep the peak well under the budget.
    """
    return int(max(2**16, min(budget // 16, 2**20)))


@register_reader("csr_matrix", "0.1.0")
@register_reader("csc_matrix", "0.1.0")
@register_reader("legacy-csr")
@register_reader("legacy-csc")
def read_sparse(elem: Any, sel: tuple, ctx: ReadContext) -> sp.spmatrix:
    """Reader of CSR and CSC matrices (current and legacy): the selected rows and columns as a scipy sparse matrix."""
    return SparseReader(elem, ctx).read(sel_at(sel, 0), sel_at(sel, 1))
