"""Pieces of the minor-axis scan of :mod:`shadows.spec.sparse` that keep it near the cost of reading the arrays.

* :class:`Membership`: which stored minor indices of a scanned chunk are wanted.  A table lookup (``np.take`` of a
  boolean table) costs about 1.3 ms per 2**20 values here, ten times one comparison (0.13 ms): a few wanted
  positions, or a few clusters of them (6 cells of a CSC matrix: ``0, 3, 5`` and ``90000..90002``), are found with
  comparisons (a range test per cluster) and only the few candidates go through the table (0.8 ms -> 0.3 ms).
* :func:`hit_ranges` / :func:`read_hits`: values at scattered hits read as coalesced ranges (gaps below a
  threshold read through), never one value per read call: an HDF5 point selection makes one ``read`` syscall per
  point (4,966,830 of them for 200 genes of a 1M x 20k CSR matrix, 2.5x the time of reading ``data`` whole).
* :class:`IndptrOfHits`: the result's ``indptr`` of a scan over a contiguous range of major positions (all cells of
  a gene), from the absolute positions of the hits and ``indptr`` read piecewise: no per-row int64 arrays
  (positions, starts, ends, counts: 40 bytes a cell, 40 MB for one gene of 1M cells whose answer is 4 MB).
"""

from __future__ import annotations

import collections
from typing import Any

import h5py
import numpy as np

# Most clusters of wanted positions tested by comparisons (each costs a subtraction and a comparison pass).
_MAX_CLUSTERS = 3
# Cluster tests pay off while the candidates they let through are at most this fraction of the minor axis.
_CANDIDATE_FRACTION = 1 / 16
# Raw reads (os.preadv, about 1.5 us a call) read through gaps up to this many values (16 kB at 4 bytes);
# h5py read calls (about 20 us each) through gaps up to 2**15 values.
RAW_GAP = 4096
H5PY_GAP = 2**15
# From this many separate ranges in one chunk, the kernel is asked for all of them at once before they are read
# (posix_fadvise WILLNEED): from a cold disk the reads then wait for the slowest request, not for each in turn
# (one gene of a 1M-cell CSR matrix makes 25,000 reads of 4 bytes, 80 kB apart)
_PREFETCH_RANGES = 16
# indptr entries read at a time when it is not cached (512 kB at int64, and as much for their hit counts: the
# pieces, not the answer, would otherwise set the peak of one gene of 300k cells)
_INDPTR_PIECE = 2**16


# Values compared at a time when several passes are made over them (the clusters' range tests and their union):
# 32,768 int32 stay in the CPU's cache between passes.  Measured on a 64 MiB chunk of indices with three clusters
# (6 cells of the 1M x 20k CSC file): 49 ms in whole-chunk passes, 18.5 ms in pieces of 32,768 (21 ms of 131,072).
_CACHED_VALUES = 1 << 15


class Membership:
    """Finds the wanted minor positions in chunks of stored indices.

    Parameters
    ----------
    min_pos
        Sorted, unique wanted minor positions (at least one).
    n_minor
        Length of the minor axis.
    """

    def __init__(self, min_pos: np.ndarray, n_minor: int):
        self.n_minor = n_minor
        self.min_pos = min_pos
        self.clusters = _clusters(min_pos, n_minor)
        self.table = None
        if self.clusters is None or not all(exact for _, _, exact in self.clusters):
            self.table = np.zeros(n_minor, dtype=bool)
            self.table[min_pos] = True

    def hits(self, chunk: np.ndarray, mask_buf: np.ndarray) -> np.ndarray:
        """Positions (in ``chunk``) of the wanted values; raises ``IndexError`` on an index beyond the axis."""
        if self.clusters is None:
            mask = mask_buf[: len(chunk)]
            np.take(self.table, chunk, out=mask)  # (IndexError beyond the table: the caller reports it)
            return np.flatnonzero(mask)
        if len(chunk) <= _CACHED_VALUES or (len(self.clusters) == 1 and self.table is None):
            return self._cluster_hits(chunk, mask_buf)
        # several passes over the values (a comparison per cluster, their union): one cache-sized piece at a time
        parts = [
            self._cluster_hits(chunk[a : a + _CACHED_VALUES], mask_buf) + a
            for a in range(0, len(chunk), _CACHED_VALUES)
        ]
        return np.concatenate(parts)

    def _cluster_hits(self, chunk: np.ndarray, mask_buf: np.ndarray) -> np.ndarray:
        mask = mask_buf[: len(chunk)]
        other = np.empty(len(chunk), dtype=bool) if len(self.clusters) > 1 else None
        for k, (lo, hi, _exact) in enumerate(self.clusters):
            dst = mask if k == 0 else other
            if hi - lo == 1:
                np.equal(chunk, lo, out=dst)
            else:
                # lo <= v < hi as one unsigned comparison of v - lo (wraps below lo)
                d = np.subtract(chunk, chunk.dtype.type(lo), dtype=chunk.dtype)
                np.less(d.view(d.dtype.str.replace("i", "u")), hi - lo, out=dst)
            if k:
                np.bitwise_or(mask, dst, out=mask)
        cand = np.flatnonzero(mask)
        if self.table is None or len(cand) == 0:
            return cand
        vals = np.take(chunk, cand)
        return cand[np.take(self.table, vals)]


def _clusters(min_pos: np.ndarray, n_minor: int) -> list[tuple[int, int, bool]] | None:
    """At most ``_MAX_CLUSTERS`` ranges ``(lo, hi, exact)`` covering ``min_pos`` (cut at its largest gaps), or
    ``None`` where they would let through too many candidates (many scattered genes: the table is cheaper)."""
    if len(min_pos) == 0:
        return None
    gaps = np.diff(min_pos)
    k = min(_MAX_CLUSTERS - 1, int((gaps > 1).sum()))
    cuts = np.sort(np.argpartition(gaps, -k)[-k:]) + 1 if k > 0 else np.zeros(0, dtype=np.int64)
    edges = np.concatenate([[0], cuts, [len(min_pos)]]).astype(np.int64)
    out = []
    for a, b in zip(edges[:-1], edges[1:], strict=True):
        lo, hi = int(min_pos[a]), int(min_pos[b - 1]) + 1
        out.append((lo, hi, hi - lo == b - a))
    if len(out) == len(min_pos):  # every cluster one position: plain comparisons, exact
        return out
    span = sum(hi - lo for lo, hi, exact in out if not exact)
    return out if span <= n_minor * _CANDIDATE_FRACTION else None


def hit_ranges(pos: np.ndarray, gap: int) -> np.ndarray:
    """Where sorted positions ``pos`` split into ranges: edges ``[0, ..., len(pos)]`` such that neighbours closer
    than ``gap`` share a range ``pos[e0] : pos[e1 - 1] + 1``."""
    breaks = np.flatnonzero(np.diff(pos) > gap) + 1
    return np.concatenate([[0], breaks, [len(pos)]]).astype(np.int64)


def read_hits(
    arr: Any, pos: np.ndarray, buf: np.ndarray | None, read: Any, edges: np.ndarray | None = None
) -> np.ndarray:
    """Values of a 1-D array at sorted absolute positions ``pos``.

    ``read(lo, hi, out)`` reads elements ``lo:hi`` into ``out`` (:class:`RangeRead`).  Ranges of nearby hits are
    read into ``buf`` at their place relative to ``pos[0]`` when it is long enough (one scanned chunk), else each
    into a buffer of its own, and gathered.  ``edges``: the ranges (:func:`hit_ranges`) when the caller has cut
    them and asked the kernel for them already (:class:`DeferredHits`).
    """
    if len(pos) == 0:
        return np.zeros(0, dtype=arr.dtype)
    if edges is None:
        edges = hit_ranges(pos, RAW_GAP if getattr(read, "raw", False) else H5PY_GAP)
        if len(edges) > _PREFETCH_RANGES and getattr(read, "raw", False):
            read.prefetch(pos[edges[:-1]], pos[edges[1:] - 1] + 1)
    base = int(pos[0])
    if buf is not None and len(buf) >= int(pos[-1]) + 1 - base:
        for e0, e1 in zip(edges[:-1].tolist(), edges[1:].tolist(), strict=True):
            a, b = int(pos[e0]), int(pos[e1 - 1]) + 1
            read(a, b, buf[a - base : b - base])
        return np.take(buf, pos - base)
    out = np.empty(len(pos), dtype=arr.dtype)
    for e0, e1 in zip(edges[:-1].tolist(), edges[1:].tolist(), strict=True):
        a, b = int(pos[e0]), int(pos[e1 - 1]) + 1
        tmp = np.empty(b - a, dtype=arr.dtype)
        read(a, b, tmp)
        out[e0:e1] = np.take(tmp, pos[e0:e1] - a)
    return out


class DeferredHits:
    """The values at a scan's sparse hits, read ``depth`` chunks after the chunk that found them.

    Each chunk's hit ranges are handed to the kernel when found (``posix_fadvise(WILLNEED)``) and their places in
    the output reserved; the values are read once ``depth`` more chunks have been searched, by when a cold disk
    has served them, all in flight together.  Why: read when found, one chunk's few ranges at a time, 6 cells of
    the 1M x 20k CSC file from a cold disk spent 1.1 of their 1.5-2.0 s waiting for 3,000 such reads one after
    another (the scan's own reads of ``indices``, read ahead, took 0.43 s).  Raw HDF5 reads only.

    ``out``: the output (an appender with ``arr`` and ``n``); slots are reserved at ``n`` and filled in place
    (``arr`` may be replaced by a larger copy in between: it is looked up when filled).
    """

    def __init__(self, arr: Any, read: RangeRead, buf: np.ndarray | None, out: Any, depth: int = 8):
        self.arr, self.read, self.buf, self.out, self.depth = arr, read, buf, out, depth
        self.queue: collections.deque = collections.deque()

    def add(self, pos: np.ndarray) -> None:
        """Reserve the output's next ``len(pos)`` places for the values at sorted positions ``pos``."""
        if len(pos) == 0:
            return
        edges = hit_ranges(pos, RAW_GAP)
        self.read.prefetch(pos[edges[:-1]], pos[edges[1:] - 1] + 1)
        self.queue.append((self.out.n, pos, edges))
        self.out.n += len(pos)
        if len(self.queue) > self.depth:
            self._fill(*self.queue.popleft())

    def flush(self) -> None:
        """Read every value still owed."""
        while self.queue:
            self._fill(*self.queue.popleft())

    def _fill(self, start: int, pos: np.ndarray, edges: np.ndarray) -> None:
        self.out.arr[start : start + len(pos)] = read_hits(self.arr, pos, self.buf, self.read, edges)


class RangeRead:
    """``read(lo, hi, out)``: elements ``lo:hi`` of a 1-D HDF5 dataset into ``out``, raw through ``raw`` (a
    :class:`shadows.io.fast.pread.RangeReader` with a layout) or else one h5py ``read_direct`` per range."""

    def __init__(self, ds: h5py.Dataset, raw: Any = None):
        self.ds = ds
        self.rr = raw if raw is not None and raw.lay is not None else None
        self.raw = self.rr is not None

    def prefetch(self, lo: np.ndarray, hi: np.ndarray) -> None:
        """Ask the kernel to start reading elements ``lo[k]:hi[k]`` (raw reads only; a no-op elsewhere)."""
        if self.rr is not None:
            self.rr.advise(lo, hi)

    def __call__(self, lo: int, hi: int, out: np.ndarray) -> None:
        if self.rr is not None:
            self.rr.read(lo, hi, out)
        else:
            self.ds.read_direct(out, np.s_[lo:hi], np.s_[0 : hi - lo])


class IndptrOfHits:
    """``indptr`` of the result of a scan over major positions ``a:b``, built while the hits arrive: for each
    boundary ``indptr[r]`` of the file, the number of hits stored before it.

    Hits are handed over in stored order (``append``, chunk after chunk, each sorted); a boundary is settled as
    soon as a hit at or beyond it has been seen, the rest at the end (``result``).  ``indptr_piece(lo, hi)`` returns
    entries ``lo:hi`` of the file's ``indptr``, read in order, a piece at a time.

    Why: keeping every hit's stored position until the scan ends cost 4-8 bytes a hit, a fifth of the peak of
    200 genes of the 100k x 5k file (2M hits: 8-16 MB against a 16 MB answer).
    """

    def __init__(self, indptr_piece: Any, a: int, b: int, n_stored: int, group: Any, corrupt: Any):
        self.piece, self.a, self.b, self.group, self.corrupt = indptr_piece, a, b, group, corrupt
        # int32 where every count fits (scipy would copy an int64 one down to int32 anyway)
        self.out = np.empty(b - a + 1, dtype=np.int32 if n_stored < 2**31 - 1 else np.int64)
        self.r = a  # the next boundary to settle (a position in the file's indptr)
        self.buf, self.buf_lo = np.zeros(0, dtype=np.int64), a
        self.n = 0  # hits seen so far
        self.prev: int | None = None

    def _pending(self) -> np.ndarray:
        """The unsettled boundaries of the current piece of ``indptr`` (the next piece read when it is used up)."""
        if self.r - self.buf_lo >= len(self.buf):
            lo, hi = self.r, min(self.b + 1, self.r + _INDPTR_PIECE)
            piece = np.asarray(self.piece(lo, hi), dtype=np.int64)
            if len(piece) and (
                (self.prev is not None and piece[0] < self.prev) or bool((piece[1:] < piece[:-1]).any())
            ):
                raise self.corrupt(self.group, f"indptr decreases between positions {lo} and {hi}")
            self.prev = int(piece[-1]) if len(piece) else self.prev
            self.buf, self.buf_lo = piece, lo
        return self.buf[self.r - self.buf_lo :]

    def reserve(self, extra: int, expected_total: int) -> None:
        """Nothing to reserve (the interface of the scan's appenders)."""

    def append(self, hits: np.ndarray) -> None:
        """The stored positions of the next hits, sorted, all beyond those appended before."""
        if len(hits) == 0:
            return
        last = int(hits[-1])
        while self.r <= self.b:
            seg = self._pending()
            m = int(np.searchsorted(seg, last, side="right"))  # boundaries at or before the last hit: settled
            if m:
                k = self.r - self.a
                self.out[k : k + m] = self.n + np.searchsorted(hits, seg[:m], side="left")
                self.r += m
            if m < len(seg):
                break
        self.n += len(hits)

    def result(self) -> np.ndarray:
        """The ``indptr`` of the result, the boundaries beyond the last hit settled."""
        while self.r <= self.b:
            seg = self._pending()
            k = self.r - self.a
            self.out[k : k + len(seg)] = self.n
            self.r += len(seg)
        return self.out
