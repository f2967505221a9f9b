"""Reading uncompressed HDF5 datasets with the operating system's ``pread``, in parallel threads.

Why this exists: h5py holds the GIL (and its own global lock) for the whole of a read, so a large read uses one
core and nothing else in the process can run meanwhile: a scan cannot search one chunk while it reads the next,
and reading all of ``X`` copies from the page cache at the speed of one thread.  Datasets that anndata writes
without compression are stored as plain bytes: HDF5 tells where they are (the address of a contiguous dataset,
or of each chunk of a chunked one), and ``os.preadv`` copies them straight into the numpy buffer, without the GIL
and from several threads at once.

Only the simple, common case takes this path: an HDF5 file opened read-only with the default (``sec2``) driver, a
dataset without filters, numeric values in the machine's byte order, stored contiguously, or in complete chunks
along its first axis (1-D).  Everything else goes through h5py as before (:func:`layout` returns ``None``).
Layouts are remembered per file (path, inode, size and modification time) and dataset.

:func:`layout` is the one door: it hands out no layout where ``shadows.settings.fast_io`` is off or the platform
has no ``os.preadv`` (:func:`available`), so that every read then goes through h5py.  :func:`pread_into`, which
the scratch files of :mod:`shadows.stream.transpose` use as well, falls back on ``os.pread`` or a locked seek and read
where ``preadv`` is missing.
"""

from __future__ import annotations

import os
import sys
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import h5py
import numpy as np

from shadows.settings import fast_io_enabled

# Reads below this many bytes run in the calling thread (still without the GIL): no hand-over cost.
_THREADED_BYTES = 4 * 2**20
# Bytes per job handed to a thread.
_JOB_BYTES = 4 * 2**20
_MAX_LAYOUTS = 256
# A read looks up a dataset's layout (when not known yet) only if it is large enough to earn the lookup back:
# describing a chunked dataset costs a couple of microseconds per chunk, a raw read saves a fraction of a
# nanosecond per byte.  Smaller reads use a layout only if it is known already.
_FIND_BYTES = 2**16
_FIND_BYTES_PER_CHUNK = 2**14

_layouts: OrderedDict[tuple, Layout | None] = OrderedDict()
_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_pool_pid = 0
_pool_size = 1
_POOL_PREFIX = "shadows-pread"
# Serialises seek-then-read (and seek-then-write, shadows.io.fast.pwrite) on platforms without positional reads: the
# file position is shared by every thread using the descriptor.
seek_lock = threading.Lock()


def available() -> bool:
    """Whether raw reads may be used at all: fast I/O is on (``shadows.settings.fast_io``) and the platform reads
    into buffers at an offset without the GIL (``os.preadv``: not on Windows, nor macOS before 11)."""
    return fast_io_enabled() and hasattr(os, "preadv")


@dataclass(frozen=True)
class Layout:
    """Where the bytes of a dataset are: ``offsets[k]`` is the file address of chunk ``k`` (``chunk`` elements
    each; one chunk holding everything for a contiguous dataset)."""

    path: str
    n: int  # elements (of the flattened dataset)
    itemsize: int
    chunk: int
    offsets: np.ndarray


def _reset_after_fork() -> None:
    global _lock, seek_lock
    _lock = threading.Lock()  # a fork while another thread held it would leave it held forever in the child
    seek_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


def _workers() -> ThreadPoolExecutor:
    global _pool, _pool_pid, _pool_size
    with _lock:
        # a forked child (dask, multiprocessing) inherits the pool object but not its threads: it makes its own
        if _pool is None or _pool_pid != os.getpid():
            n = max(1, min(3, (os.cpu_count() or 2) - 1))  # the caller reads too (see read_into)
            _pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix=_POOL_PREFIX)
            _pool_size = n
            _pool_pid = os.getpid()
        return _pool


def share_out(jobs: list, work: Callable[[Any], None]) -> None:
    """Run ``work(job)`` for every job on the calling thread and the reading threads together.

    Jobs are handed out one at a time to whichever thread is free (not split in fixed shares): a thread that is
    descheduled for a while (a busy machine, another read using the helpers) leaves its share to the others instead
    of holding up the whole read.
    """
    if threading.current_thread().name.startswith(_POOL_PREFIX):
        # called from a job of another share_out: the reading threads may all be busy with that one's lanes, and a
        # lane queued behind them would never start; this thread reads its jobs alone
        for job in jobs:
            work(job)
        return
    pool = _workers()  # first: it sets _pool_size
    queue = iter(jobs)
    take = threading.Lock()

    def lane() -> None:
        while True:
            with take:
                job = next(queue, None)
            if job is None:
                return
            work(job)

    futures = [pool.submit(lane) for _ in range(min(_pool_size, len(jobs) - 1))]
    try:
        lane()
    finally:
        for f in futures:
            f.result()


def layout(ds: Any, find: bool = True) -> Layout | None:
    """The raw layout of an h5py dataset, or ``None`` when it must be read through h5py.

    ``find=False`` returns only a layout found before: describing a chunked dataset visits every chunk (a few
    milliseconds for thousands), which a small read would not earn back.  ``None`` too wherever raw reads are
    not :func:`available` (fast I/O switched off, or no ``os.preadv``).
    """
    if not isinstance(ds, h5py.Dataset) or not available():
        return None
    if not find and not _layouts:  # nothing found yet: skip the ~0.5 ms of file, driver and stat lookups
        return None
    try:
        f = ds.file
        if f.mode != "r" or f.driver != "sec2":  # a writer's data may still sit in HDF5's buffers
            return None
        path = os.fspath(f.filename)
        st = os.stat(path)
    except (OSError, ValueError, TypeError):
        return None
    key = (path, st.st_ino, st.st_size, st.st_mtime_ns, ds.name)
    with _lock:
        if key in _layouts:
            _layouts.move_to_end(key)
            return _layouts[key]
    if not find:
        return None
    found = _find_layout(ds, path)
    with _lock:
        _layouts[key] = found
        while len(_layouts) > _MAX_LAYOUTS:
            _layouts.popitem(last=False)
    return found


def plain_numeric(dtype: Any) -> bool:
    """Whether values of ``dtype`` are plain numbers in the machine's byte order (their bytes are the values)."""
    dt = np.dtype(dtype)
    return dt.kind in "biuf" and dt.byteorder in ("=", "|", "<" if sys.byteorder == "little" else ">")


def _find_layout(ds: Any, path: str) -> Layout | None:
    dt = ds.dtype
    if not plain_numeric(dt):
        return None
    n = int(np.prod(ds.shape, dtype=np.int64))
    if n == 0:
        return None
    try:
        if ds.id.get_create_plist().get_nfilters() != 0:
            return None
        if ds.chunks is None:
            off = ds.id.get_offset()
            if off is None:  # contiguous but never written (fill value only)
                return None
            return Layout(path, n, dt.itemsize, n, np.array([off], dtype=np.int64))
        if len(ds.shape) != 1 or not hasattr(ds.id, "chunk_iter"):
            return None
        chunk = int(ds.chunks[0])
        n_chunks = -(-n // chunk)
        offsets = np.full(n_chunks, -1, dtype=np.int64)
        full = chunk * dt.itemsize
        ok = [True]

        def visit(info: Any) -> None:
            k = int(info.chunk_offset[0]) // chunk
            if info.filter_mask != 0 or info.size != full or not 0 <= k < n_chunks:
                ok[0] = False
            else:
                offsets[k] = info.byte_offset

        ds.id.chunk_iter(visit)
    except Exception:  # an HDF5 build without these queries: h5py reads it
        return None
    if not ok[0] or (offsets < 0).any():  # a chunk missing (fill value) or stored in another way
        return None
    return Layout(path, n, dt.itemsize, chunk, offsets)


def worth_finding(ds: Any, nbytes: int) -> bool:
    """Whether reading ``nbytes`` of ``ds`` (in one or many calls) earns back looking up its layout."""
    chunks = getattr(ds, "chunks", None)
    n_chunks = 1 if not chunks else -(-int(ds.shape[0]) // max(1, int(chunks[0])))
    return nbytes >= max(_FIND_BYTES, n_chunks * _FIND_BYTES_PER_CHUNK)


def prepare(ds: Any, nbytes: int) -> None:
    """Look up the layout of ``ds`` now if the reads to come (``nbytes`` in all) earn it back, so that each of
    them, however small, can be raw."""
    if isinstance(ds, h5py.Dataset) and worth_finding(ds, nbytes):
        layout(ds)


def read_into(lay: Layout, start: int, stop: int, out: np.ndarray, fd: int | None = None) -> None:
    """Copy elements ``start:stop`` of the flattened dataset into ``out`` (C-contiguous, ``stop - start`` long),
    through ``fd`` (the file opened read-only) if given."""
    if stop <= start:
        return
    if not (0 <= start <= stop <= lay.n):
        raise IndexError(f"elements {start}:{stop} out of range for a dataset of {lay.n}")
    buf = memoryview(out).cast("B")
    if len(buf) != (stop - start) * lay.itemsize:
        raise ValueError(f"output holds {len(buf)} bytes, {(stop - start) * lay.itemsize} needed")
    pieces = _pieces(lay, start, stop)
    own = fd is None
    if own:
        fd = os.open(lay.path, os.O_RDONLY)
    try:
        if len(buf) < _THREADED_BYTES:
            _read_pieces(fd, buf, pieces)
            return
        # the calling thread reads too: one helper thread per extra core is enough.  Pieces are handed out one at
        # a time to whichever thread is free (not split in fixed shares): a thread that is descheduled for a while
        # (a busy machine, another read using the helpers) leaves its share to the others instead of holding up
        # the whole read
        share_out(pieces, lambda piece: _read_pieces(fd, buf, [piece]))
    finally:
        if own:
            os.close(fd)


def _pieces(lay: Layout, start: int, stop: int) -> list[tuple[int, int, int]]:
    """``(position in the output, file address, bytes)`` of each piece of elements ``start:stop``: a long contiguous
    run is cut into pieces of at most :data:`_JOB_BYTES`, so that every thread gets a share."""
    pieces = []
    at = start
    while at < stop:
        k = at // lay.chunk
        end = min(stop, (k + 1) * lay.chunk)
        pos, off = (at - start) * lay.itemsize, int(lay.offsets[k]) + (at - k * lay.chunk) * lay.itemsize
        nbytes = (end - at) * lay.itemsize
        pieces += [(pos + a, off + a, min(_JOB_BYTES, nbytes - a)) for a in range(0, nbytes, _JOB_BYTES)]
        at = end
    return pieces


def _read_pieces(fd: int, buf: memoryview, pieces: list[tuple[int, int, int]]) -> None:
    for pos, off, nbytes in pieces:
        pread_into(fd, buf[pos : pos + nbytes], off)


def pread_into(fd: int, view: memoryview, offset: int) -> None:
    """Fill ``view`` (bytes) from the file's bytes at ``offset``: without the GIL and straight into ``view`` with
    ``os.preadv``; else (a platform without it) through ``os.pread``'s bytes, or a seek and a read under a lock."""
    done, nbytes = 0, len(view)
    preadv, pread = getattr(os, "preadv", None), getattr(os, "pread", None)
    while done < nbytes:
        if preadv is not None:
            got = preadv(fd, [view[done:]], offset + done)
        else:
            if pread is not None:
                chunk = pread(fd, nbytes - done, offset + done)
            else:
                with seek_lock:
                    os.lseek(fd, offset + done, os.SEEK_SET)
                    chunk = os.read(fd, nbytes - done)
            got = len(chunk)
            view[done : done + got] = chunk
        if got <= 0:
            raise OSError(f"unexpected end of file reading {nbytes} bytes at {offset}")
        done += got


def read_range(ds: Any, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
    """Elements ``start:stop`` of a 1-D dataset (raw when possible, else h5py/zarr), into ``out`` if given."""
    n = max(0, stop - start)
    lay = layout(ds, find=worth_finding(ds, n * ds.dtype.itemsize)) if isinstance(ds, h5py.Dataset) else None
    return _read(ds, lay if lay is not None and len(ds.shape) == 1 else None, start, stop, out)


def _read(ds: Any, lay: Layout | None, start: int, stop: int, out: np.ndarray | None, fd: int | None = None):
    """Elements ``start:stop`` of ``ds``: raw through ``lay`` (and ``fd``) when given, else through h5py/zarr."""
    n = max(0, stop - start)
    if out is None:
        out = np.empty(n, dtype=ds.dtype)
    if lay is not None:
        read_into(lay, start, stop, out[:n], fd)
    elif n:
        if isinstance(ds, h5py.Dataset):
            ds.read_direct(out, np.s_[start:stop], np.s_[0:n])
        else:
            out[:n] = ds[start:stop]
    return out[:n]


# Several raw ranges (the ``data`` and ``indices`` of a few thousand rows) are read by the calling thread and a
# helper together from this many bytes in all.  Measured on the 1M x 20k CSR file, 1000 contiguous rows (2 MB of
# ``data`` and 2 MB of ``indices``): 2.6 ms one after the other, most of it faulting in the fresh pages of the
# answer, against about half that on two threads; below 512 kB the hand-over costs about what it saves.
_TOGETHER_BYTES = 512 * 2**10


def read_together(requests: list[tuple[RangeReader, int, int]]) -> list[np.ndarray]:
    """Elements ``start:stop`` of each ``(reader, start, stop)``, each in a new array: the raw ones read by the
    calling thread and the reading threads together when they are large enough to earn it (see
    :data:`_TOGETHER_BYTES`), the others (no raw layout) through h5py/zarr in this thread."""
    outs = [np.empty(max(0, hi - lo), dtype=r.ds.dtype) for r, lo, hi in requests]
    raw = {k for k, (r, lo, hi) in enumerate(requests) if r.lay is not None and hi > lo}
    if len(raw) < 2 or sum(outs[k].nbytes for k in raw) < _TOGETHER_BYTES:
        raw = set()
    jobs = []  # (descriptor, output bytes, piece): every piece at most _JOB_BYTES, so that every thread gets a share
    for k, (r, lo, hi) in enumerate(requests):
        if k not in raw:
            r.read(lo, hi, outs[k])
            continue
        if not (0 <= lo <= hi <= r.lay.n):
            raise IndexError(f"elements {lo}:{hi} out of range for a dataset of {r.lay.n}")
        buf = memoryview(outs[k]).cast("B")
        jobs += [(r.fd, buf, piece) for piece in _pieces(r.lay, lo, hi)]
    if jobs:
        share_out(jobs, lambda job: _read_pieces(job[0], job[1], [job[2]]))
    return outs


class RangeReader:
    """Many reads of ranges of one 1-D dataset, with its layout looked up and its file opened once.

    Why: :func:`read_range` looks the layout up on every call (h5py file and property-list objects, a ``stat``:
    about 0.2 ms), which a scan making hundreds of reads of a few MB each pays hundreds of times, in the thread that
    feeds the others.  Datasets without a raw layout are read through h5py or zarr.
    """

    def __init__(self, ds: Any, nbytes: int | None = None):
        self.ds = ds
        self.lay = None
        if isinstance(ds, h5py.Dataset) and len(ds.shape) == 1:
            total = nbytes if nbytes is not None else int(ds.shape[0]) * ds.dtype.itemsize
            self.lay = layout(ds, find=worth_finding(ds, total))
        self.fd = None
        if self.lay is not None:
            self.fd = os.open(self.lay.path, os.O_RDONLY)
            # closed with the reader, even when a scan is abandoned half-way by an exception
            self._closer = weakref.finalize(self, os.close, self.fd)

    def read(self, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        """Elements ``start:stop``, into ``out`` if given."""
        return _read(self.ds, self.lay, start, stop, out, self.fd)

    def cached(self, positions: list[int]) -> bool:
        """Whether the elements at ``positions`` are all in the page cache (see :func:`cached`; raw layouts)."""
        return all(cached(self.fd, self._offset(int(i))) for i in positions)

    def advise(self, lo: Any, hi: Any) -> None:
        """Ask the kernel to start reading elements ``lo[k]:hi[k]`` (ints or arrays) into the page cache, without
        waiting (``posix_fadvise(WILLNEED)``): from a cold disk, reads issued this way are served together rather
        than one after another.  Raw layouts only; elsewhere (and where the system has no such call) a no-op.
        """
        advise = getattr(os, "posix_fadvise", None)
        if self.lay is None or advise is None:
            return
        lay, fd, size = self.lay, self.fd, self.lay.itemsize
        lo = np.atleast_1d(np.asarray(lo, dtype=np.int64))
        hi = np.atleast_1d(np.asarray(hi, dtype=np.int64))
        keep = hi > lo
        lo, hi = lo[keep], hi[keep]
        k = lo // lay.chunk
        off = lay.offsets[k] + (lo - k * lay.chunk) * size
        one = (hi - 1) // lay.chunk == k  # within one chunk (always, for a contiguous dataset): one call each
        try:
            for a, b, o, whole in zip(lo.tolist(), hi.tolist(), off.tolist(), one.tolist(), strict=True):
                if whole:
                    advise(fd, o, (b - a) * size, os.POSIX_FADV_WILLNEED)
                    continue
                # across chunks: chunk by chunk, those that follow each other in the file in one call
                o0, n = o, 0
                while a < b:
                    c = a // lay.chunk
                    end = min(b, (c + 1) * lay.chunk)
                    o = int(lay.offsets[c]) + (a - c * lay.chunk) * size
                    if o != o0 + n:
                        advise(fd, o0, n, os.POSIX_FADV_WILLNEED)
                        o0, n = o, 0
                    n += (end - a) * size
                    a = end
                advise(fd, o0, n, os.POSIX_FADV_WILLNEED)
        except OSError:  # advice only
            pass

    def _offset(self, i: int) -> int:
        """File address of element ``i`` (raw layouts)."""
        k = i // self.lay.chunk
        return int(self.lay.offsets[k]) + (i - k * self.lay.chunk) * self.lay.itemsize

    def close(self) -> None:
        """Close the reader's own file descriptor (if it opened one); closing twice is harmless."""
        if self.fd is not None:
            self._closer()
            self.fd = None


_PROBE = bytearray(1)


def cached(fd: int, offset: int) -> bool:
    """Whether the byte at ``offset`` of ``fd`` is in the page cache: a read that fails rather than wait for the
    disk (``preadv`` with ``RWF_NOWAIT``, about 1 us).  ``False`` where the system cannot tell.

    Why: advising pages that are cached already is not free (about 170 ns a page, 86 us per 2 MB: 23 % of one
    gene's warm scan of the 1M x 20k CSR file), so a scan asks for the ranges ahead of it only when they are not.
    """
    flag = getattr(os, "RWF_NOWAIT", None)
    if flag is None:
        return False
    try:
        return os.preadv(fd, [_PROBE], offset, flag) > 0
    except OSError:  # EAGAIN: not cached (or the file system cannot say)
        return False


# Rows of a dense array are read raw only from this many bytes on.  Measured on the 100k x 5k dense h5ad
# (benchmarks/run.py fastio/dense-1000cells, and in one process): 1000 rows (19 MB) were 1.40x *slower* raw in a
# fresh process (finding the layout costs more than h5py's one read), 20,000 rows (380 MB) 1.39x faster raw
RAW_ROWS_MIN_BYTES = 64 * 2**20


def read_rows(ds: Any, start: int, stop: int) -> np.ndarray | None:
    """Rows ``start:stop`` of a contiguous C-ordered dataset read raw, or ``None`` (the caller uses h5py): below
    :data:`RAW_ROWS_MIN_BYTES` h5py's single read is as fast."""
    row = int(np.prod(ds.shape[1:], dtype=np.int64))
    if (stop - start) * row * ds.dtype.itemsize < RAW_ROWS_MIN_BYTES:
        return None
    lay = layout(ds, find=worth_finding(ds, (stop - start) * row * ds.dtype.itemsize))
    if lay is None or lay.chunk != lay.n:  # rows of a chunked n-D array are not one range of bytes
        return None
    out = np.empty((stop - start, *ds.shape[1:]), dtype=ds.dtype)
    read_into(lay, start * row, stop * row, out.reshape(-1))
    return out


# --- zero-copy views through a memory map ------------------------------------------------------------------------------
# A single pass over a whole uncompressed matrix (statistics) spends as long copying the bytes out of the page cache
# as computing on them; a memory map hands the computation the page cache's own pages instead.  Each view maps just
# its own range and owns that map: the map (and the mapped pages, which count in the process's resident memory)
# goes when the view does, and a view can never point at unmapped memory.


def mapped_runs(lay: Layout) -> np.ndarray:
    """Element positions cutting a dataset into runs whose bytes are consecutive in the file (HDF5 puts its
    B-tree nodes between some chunks): ``[0, ..., n]``."""
    if lay.chunk >= lay.n:
        return np.array([0, lay.n], dtype=np.int64)
    gaps = np.flatnonzero(np.diff(lay.offsets) != lay.chunk * lay.itemsize) + 1
    return np.concatenate([[0], gaps * lay.chunk, [lay.n]]).astype(np.int64)


def mapped_view(lay: Layout, dtype: Any, start: int, stop: int) -> np.ndarray:
    """Elements ``start:stop`` of the dataset described by ``lay`` (within one of its runs), read-only, viewed
    through a memory map of just that range."""
    import mmap

    k = start // lay.chunk
    last = max(start, stop - 1) // lay.chunk
    if int(lay.offsets[last]) - int(lay.offsets[k]) != (last - k) * lay.chunk * lay.itemsize:
        raise ValueError(f"elements {start}:{stop} of a dataset in {lay.path} are not laid out in one run")
    off = int(lay.offsets[k]) + (start - k * lay.chunk) * lay.itemsize
    nbytes = (stop - start) * lay.itemsize
    if nbytes == 0:
        return np.zeros(0, dtype=dtype)
    base = off - off % mmap.ALLOCATIONGRANULARITY  # maps start on a page boundary
    with open(lay.path, "rb") as fh:
        if os.fstat(fh.fileno()).st_size < off + nbytes:
            raise OSError(f"{lay.path} is shorter than its dataset layout says (changed while open?)")
        # ACCESS_READ, not prot=: the one spelling Windows accepts too (on POSIX it is PROT_READ, MAP_SHARED)
        m = mmap.mmap(fh.fileno(), off + nbytes - base, access=mmap.ACCESS_READ, offset=base)
    return np.frombuffer(m, dtype=dtype, count=stop - start, offset=off - base)


def mappable(*datasets: Any) -> list[Layout] | None:
    """The layouts of 1-D h5py datasets that :func:`mapped_view` can view, or ``None`` (also wherever
    :func:`layout` hands out none: fast I/O off)."""
    lays = []
    for ds in datasets:
        if not isinstance(ds, h5py.Dataset) or len(ds.shape) != 1:
            return None
        lay = layout(ds)
        if lay is None:
            return None
        lays.append(lay)
    return lays
