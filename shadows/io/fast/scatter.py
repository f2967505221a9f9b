"""Many short, scattered ranges of one uncompressed HDF5 dataset read into one buffer, with few system calls.

Why this exists: the rows a filter keeps (one cell in ten, say) are short ranges of a file's ``data`` and
``indices`` (2 KB each for a cell with 500 stored values), a few rows apart.  Read one by one, each costs a system
call and Python's overhead around it (6-9 µs measured, the time to copy about 9 KB from the page cache); read as
one block and then cut, every byte of the skipped rows is copied, and the kept ones twice.  ``preadv`` reads one
stretch of the file into a list of buffers: here each wanted range goes straight to its place in the output and
each short gap into a scratch buffer that is thrown away, so a run of nearby rows costs one call and no second
copy.  Long gaps start a new call; calls are shared out to the threads of :mod:`shadows.io.fast.pread`.

:func:`read_ranges` serves a dataset with a raw :class:`~shadows.io.fast.pread.Layout` only (callers get one from
:func:`shadows.io.fast.pread.layout`, which returns ``None`` where fast I/O is off); others read through h5py.
"""

from __future__ import annotations

import os
import threading

import numpy as np

from shadows.io.fast.pread import Layout, pread_into, share_out

# A gap up to this many bytes between two wanted ranges is read into scratch instead of starting a new call: a
# call costs about as much as copying 9-10 KB from the page cache (measured on the benchmark machine, best of 7:
# 6-9 µs per preadv of 2 KB at random offsets, 1.1-1.5 GB/s for large reads).
_GAP_BYTES = 8 * 1024


def _iov_max() -> int:
    try:
        n = os.sysconf("SC_IOV_MAX")
    except (AttributeError, ValueError, OSError):  # no sysconf, or no such name: POSIX's minimum
        n = 16
    return min(1024, n if n > 0 else 16)  # (Linux: 1024)


# Pieces per call (a wanted range and the gap before it take two buffers of IOV_MAX).
_IOV = max(1, _iov_max() // 2)
# Bytes per call, so that the calls of one large read are shared out among the threads.
_CALL_BYTES = 4 * 2**20
# Reads below this many bytes in all run in the calling thread.
_THREADED_BYTES = 4 * 2**20

_scratch = threading.local()


def _junk(n: int) -> memoryview:
    """This thread's scratch buffer for gaps, at least ``n`` bytes (its content is never used)."""
    buf = getattr(_scratch, "buf", None)
    if buf is None or len(buf) < n:
        buf = _scratch.buf = memoryview(bytearray(max(n, _GAP_BYTES)))
    return buf


def pieces(lay: Layout, starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """File addresses, lengths (bytes) and output positions (bytes) of the ranges ``[starts[i], ends[i])`` (in
    elements), cut at chunk boundaries, empty ones dropped and touching ones merged."""
    starts = np.asarray(starts, dtype=np.int64)
    ends = np.asarray(ends, dtype=np.int64)
    keep = ends > starts
    starts, ends = starts[keep], ends[keep]
    if len(starts) and (starts[0] < 0 or ends.max() > lay.n):
        raise IndexError(f"ranges up to {int(ends.max())} out of range for a dataset of {lay.n} values")
    out_pos = np.concatenate([[0], np.cumsum(ends - starts)[:-1]]) if len(starts) else starts
    if lay.chunk < lay.n and len(starts):  # chunked: a range crossing chunks is cut into one piece per chunk
        first, last = starts // lay.chunk, (ends - 1) // lay.chunk
        n_per = last - first + 1
        rep = np.repeat(np.arange(len(starts)), n_per)
        k = np.repeat(first, n_per) + (np.arange(int(n_per.sum())) - np.repeat(np.cumsum(n_per) - n_per, n_per))
        p_start = np.maximum(starts[rep], k * lay.chunk)
        p_end = np.minimum(ends[rep], (k + 1) * lay.chunk)
        out_pos = out_pos[rep] + (p_start - starts[rep])
        addr = lay.offsets[k] + (p_start - k * lay.chunk) * lay.itemsize
        starts, ends = p_start, p_end
    else:
        addr = int(lay.offsets[0]) + starts * lay.itemsize
    nbytes = (ends - starts) * lay.itemsize
    out_pos = out_pos * lay.itemsize
    if len(addr) > 1:  # merge pieces that touch in the file (they always do in the output)
        touch = addr[1:] == addr[:-1] + nbytes[:-1]
        heads = np.flatnonzero(np.concatenate([[True], ~touch]))
        nbytes = np.add.reduceat(nbytes, heads)
        addr, out_pos = addr[heads], out_pos[heads]
    if len(addr) and nbytes.max() > _CALL_BYTES:  # a long piece is cut, so that the threads share it
        m = -(-nbytes // _CALL_BYTES)
        rep = np.repeat(np.arange(len(addr)), m)
        within = (np.arange(int(m.sum())) - np.repeat(np.cumsum(m) - m, m)) * _CALL_BYTES
        addr, out_pos = addr[rep] + within, out_pos[rep] + within
        nbytes = np.minimum(nbytes[rep] - within, _CALL_BYTES)
    return addr, nbytes, out_pos


def read_ranges(lay: Layout, starts: np.ndarray, ends: np.ndarray, out: np.ndarray, fd: int | None = None) -> None:
    """Copy the values ``[starts[i], ends[i])`` of the dataset, one range after the other, into ``out`` (C-contiguous,
    the sum of the range lengths long), through ``fd`` (the file opened read-only) if given."""
    buf = memoryview(out).cast("B")
    addr, nbytes, out_pos = pieces(lay, starts, ends)
    total = int(nbytes.sum())
    if len(buf) != total:
        raise ValueError(f"output holds {len(buf)} bytes, {total} needed")
    if total == 0:
        return
    calls = _calls(addr, nbytes)
    own = fd is None
    if own:
        fd = os.open(lay.path, os.O_RDONLY)
    try:
        run = [(addr, nbytes, out_pos, a, b) for a, b in calls]
        if total < _THREADED_BYTES or len(run) == 1:
            for job in run:
                _call(fd, buf, *job)
            return
        share_out(run, lambda job: _call(fd, buf, *job))
    finally:
        if own:
            os.close(fd)


def _calls(addr: np.ndarray, nbytes: np.ndarray) -> list[tuple[int, int]]:
    """Pieces ``[a, b)`` read by one call each: a new call after a long (or backward) gap, and within a run of
    nearby pieces every ``_IOV`` pieces and wherever the run crosses a multiple of ``_CALL_BYTES`` (vectorised: a
    filter of a million cells makes a hundred thousand calls)."""
    n = len(addr)
    new = np.zeros(n, dtype=bool)
    new[0] = True
    gap = addr[1:] - (addr[:-1] + nbytes[:-1])
    new[1:] = (gap < 0) | (gap > _GAP_BYTES)
    run_start = np.maximum.accumulate(np.where(new, np.arange(n), 0))
    k = np.arange(n) - run_start
    span = (addr - addr[run_start]) // _CALL_BYTES
    new[1:] |= (k[1:] % _IOV == 0) | (span[1:] != span[:-1])
    edges = np.flatnonzero(new).tolist() + [n]
    return list(zip(edges[:-1], edges[1:], strict=True))


def _call(fd: int, buf: memoryview, addr: np.ndarray, nbytes: np.ndarray, out_pos: np.ndarray, a: int, b: int) -> None:
    """Read pieces ``a..b-1`` with one ``preadv`` (gaps into scratch); a short read finishes piece by piece."""
    if b - a == 1:
        p, n = int(out_pos[a]), int(nbytes[a])
        pread_into(fd, buf[p : p + n], int(addr[a]))
        return
    iov = []
    at = int(addr[a])
    pos, lens, starts = out_pos[a:b].tolist(), nbytes[a:b].tolist(), addr[a:b].tolist()
    junk = _junk(_GAP_BYTES)  # (no gap in a call is longer: see _calls)
    for p, n, s in zip(pos, lens, starts, strict=True):
        if s > at:
            if s - at > len(junk):
                junk = _junk(s - at)
            iov.append(junk[: s - at])
        iov.append(buf[p : p + n])
        at = s + n
    want = at - int(addr[a])
    got = os.preadv(fd, iov, int(addr[a]))
    if got == want:
        return
    # a short read (a signal, a very large call): the pieces not wholly read are read one by one
    done_to = int(addr[a]) + got
    for p, n, s in zip(pos, lens, starts, strict=True):
        if s + n > done_to:
            pread_into(fd, buf[p : p + n], s)
