"""Exact, concurrent ranged requests for the values of a remote HDF5 file (h5ad, h5mu) read through h5py.

h5py reads a remote file through :class:`shadows.io.remote.RangeFile`, which cannot tell HDF5's metadata reads
(object headers, B-tree nodes: tens to thousands of bytes, best fetched in cached blocks) from reads of values (a
cell's 2 kB of ``data``: best fetched exactly).  Rounding every small read up to a block made "6 scattered cells"
of a 20k x 5k CSR h5ad fetch 1.6 MB for a 24 kB answer, one round trip after another.

The readers know which values they are about to read.  :func:`staged` takes those element ranges; for contiguous
datasets it finds their bytes in the file, fetches them all at once (one concurrent batch of exact ranged
requests, nearby ranges coalesced) and hands them to the :class:`RangeFile` for the duration of the read; h5py then
reads, decodes and copies the values as usual, from memory.  For chunked datasets (anndata's sparse arrays) the
RangeFile is put in exact mode for the read: what h5py asks for (a B-tree node on the chunk's path, the piece of
the chunk) is fetched exactly, not rounded up to a block.  On a local file, or when no remote file is
open in this process, :func:`staged` does nothing.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import h5py
import numpy as np

# Open remote files by the name h5py knows them by (``repr`` of their RangeFile, see ``RangeFile.__repr__``).
_OPEN: weakref.WeakValueDictionary[str, Any] = weakref.WeakValueDictionary()

# Two wanted byte ranges closer than this are fetched as one request: a round trip costs more than a few kB (an
# HDF5 B-tree node of 2 kB sits between two chunks of ``data``; 1000 contiguous cells span ~50 chunks of X/data).
_GAP = 8 * 1024
# Staged bytes are held besides the result while h5py copies them: past this many, only the small ranges (which
# the RangeFile would round up to a block) are staged; the large ones are exact requests anyway.
_MAX_STAGED = 64 * 2**20
# read_points: past this many runs of positions, one request each would cost more than reading the span.
_MAX_POINT_RUNS = 256


def register(name: str, rangefile: Any) -> None:
    """Remember the :class:`RangeFile` h5py opened under ``name`` (while it is open)."""
    _OPEN[name] = rangefile


def rangefile_of(ds: Any) -> Any:
    """The :class:`RangeFile` a dataset of a remote file reads from; ``None`` for a local file (no cost then)."""
    if not _OPEN or not isinstance(ds, h5py.Dataset):
        return None
    try:
        return _OPEN.get(ds.file.filename)
    except Exception:  # a closed file: h5py raises when asked
        return None


def byte_ranges(ds: h5py.Dataset, lo: int, hi: int) -> list[tuple[int, int]]:
    """The file's byte range that holds elements ``lo:hi`` of a contiguous 1-D dataset; ``[]`` for a chunked one.

    Why not chunked ones: HDF5 finds a chunk's address (``get_chunk_info_by_coord``) by walking the dataset's
    whole chunk index, i.e. reading every B-tree node (90 nodes of 2 kB spread over 400 MB for X/data of the
    100k x 5k h5ad), where its own read walks one path from the root.  Chunked values are read by h5py in
    :meth:`RangeFile.exact` mode instead: one exact request per piece, B-tree nodes included.
    """
    if hi <= lo or len(ds.shape) != 1 or ds.chunks is not None:
        return []
    off = ds.id.get_offset()
    isz = ds.dtype.itemsize
    return [] if off is None else [(off + lo * isz, off + hi * isz)]


def expect(ds: Any, nbytes: int) -> Any:
    """A context in which h5py reads about ``nbytes`` of values of ``ds`` (see :meth:`RangeFile.expect`); does
    nothing for local files."""
    rf = rangefile_of(ds)
    return nullcontext() if rf is None else rf.expect(nbytes)


def heap_walk(ds: Any) -> Any:
    """A context in which h5py reads the variable-length strings of ``ds`` (HDF5's global heap, collection after
    collection) with an adaptive read-ahead (see :meth:`RangeFile.heap_walk`); does nothing for local files."""
    rf = rangefile_of(ds)
    if rf is None:
        return nullcontext()
    off = ds.id.get_offset() if ds.chunks is None else None
    return rf.heap_walk(None if off is None else (off, off + ds.id.get_storage_size()))


def read_points(ds: Any, pos: Any) -> Any:
    """Values of a remote chunked 1-D dataset at sorted positions ``pos``, one exact read per run of consecutive
    positions; ``None`` for a local file, a contiguous dataset or too many runs (the caller reads as usual).

    Why: the local reader coalesces nearby positions into one span (one pread is cheaper than many), which over a
    network meant the whole span, chunk by chunk: the ``indptr`` entries of "6 scattered cells" of the 100k x 5k
    h5ad were 25 requests and 300 kB of ``indptr``, where each entry pair is one exact request of 8 bytes.
    """
    rf = rangefile_of(ds)
    if rf is None or ds.chunks is None or len(ds.shape) != 1 or len(pos) == 0:
        return None
    runs = np.split(pos, np.flatnonzero(np.diff(pos) != 1) + 1)
    if len(runs) > _MAX_POINT_RUNS:
        return None
    # expect(0): the runs are all there is to read; nearby runs are not a sequential read to read ahead of (that
    # fetched 14 kB of indptr for 6 cells 1,000 rows apart)
    with rf.exact(), rf.expect(0):
        return np.concatenate([ds[int(r[0]) : int(r[-1]) + 1] for r in runs])


def coalesce(ranges: list[tuple[int, int]], gap: int = _GAP) -> list[tuple[int, int]]:
    """Sorted byte ranges, overlapping or nearly adjacent ones (within ``gap`` bytes) merged."""
    out: list[list[int]] = []
    for a, b in sorted(ranges):
        if out and a <= out[-1][1] + gap:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


def staged(items: list[tuple[Any, int, int]]) -> Any:
    """A context in which h5py's reads of elements ``lo:hi`` of each ``(dataset, lo, hi)`` are served from bytes
    fetched beforehand, exactly and concurrently.  Does nothing for local files."""
    if not _OPEN or not items:
        return nullcontext()
    rf = rangefile_of(items[0][0])
    if rf is None:
        return nullcontext()
    return _staged(rf, items)


@contextmanager
def _staged(rf: Any, items: list[tuple[Any, int, int]]) -> Iterator[None]:
    ranges = coalesce([r for ds, lo, hi in items for r in byte_ranges(ds, int(lo), int(hi))])
    ranges = [(a, b) for a, b in ranges if not rf.has(a, b)]
    if sum(b - a for a, b in ranges) > _MAX_STAGED:
        ranges = [(a, b) for a, b in ranges if b - a < rf.block]
    token = rf.stage(ranges) if ranges else None
    try:
        with rf.exact():
            yield
    finally:
        if token is not None:
            rf.unstage(token)
