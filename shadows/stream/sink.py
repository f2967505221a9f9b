"""Writing new files block by block: the output file or store, and appendable sparse and dense arrays.

:class:`Output` writes into a staging name beside the destination and moves it into place only when everything
is written (a crash leaves the destination untouched); zarr stores get their metadata consolidated, as anndata
does.  :class:`SparseSink` appends compressed blocks (``data``/``indices`` grow, ``indptr`` is filled as blocks
arrive) and :class:`DenseSink` writes row or column blocks; both set the encoding attributes anndata writes, so
anndata reads the result as if it had written it.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import socket
import threading
import uuid
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import zarr

from shadows.io import commit_guard
from shadows.io.fast import pwrite as rawwrite
from shadows.io.storage import Storage, is_h5
from shadows.io.zarr_journal import consolidate

USERBLOCK = 512  # bytes reserved before the HDF5 superblock when a header is asked for (mudata's size)

# Elements per chunk of the 1-D arrays of a sparse matrix that grows (256 KiB of float32).
SPARSE_CHUNK = 2**16
# Bytes per chunk of a dense zarr array written by row blocks.
DENSE_CHUNK_BYTES = 2**20


def set_encoding(node: Any, encoding_type: str, version: str, **extra: Any) -> None:
    """Set ``encoding-type``/``encoding-version`` (and extra attributes such as ``shape``) as anndata does."""
    node.attrs["encoding-type"] = encoding_type
    node.attrs["encoding-version"] = version
    for k, v in extra.items():
        node.attrs[k] = v


def new_array(
    parent: Any,
    name: str,
    shape: tuple[int, ...],
    dtype: Any,
    *,
    resizable: bool = False,
    chunks: tuple[int, ...] | None = None,
    compression: str | None = None,
    compression_opts: Any = None,
) -> Any:
    """Create an array in an h5py or zarr group: contiguous in HDF5 unless it must grow or be compressed."""
    dtype = np.dtype(dtype)
    if is_h5(parent):
        kw: dict[str, Any] = {}
        if resizable:
            kw["maxshape"] = (None,) * len(shape)
        if resizable or compression:
            kw["chunks"] = chunks or _default_chunks(shape, dtype)
            if not resizable:  # HDF5 refuses chunks larger than a fixed shape
                kw["chunks"] = tuple(max(1, min(c, n)) for c, n in zip(kw["chunks"], shape, strict=True))
        if compression:
            kw["compression"] = compression
            kw["compression_opts"] = compression_opts
        return parent.create_dataset(name, shape=shape, dtype=dtype, **kw)
    return parent.create_array(name, shape=shape, dtype=dtype, chunks=chunks or _default_chunks(shape, dtype))


def _default_chunks(shape: tuple[int, ...], dtype: np.dtype) -> tuple[int, ...]:
    if len(shape) == 1:
        return (SPARSE_CHUNK,)
    row = max(1, int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize)
    rows = int(max(1, min(max(shape[0], 1), DENSE_CHUNK_BYTES // row)))
    return (rows, *(max(1, int(n)) for n in shape[1:]))


def index_dtype_for(n: int) -> np.dtype:
    """The smallest index type scipy would use for positions below ``n``."""
    return np.dtype(np.int32) if n < 2**31 - 1 else np.dtype(np.int64)


class SparseSink:
    """A ``csr_matrix``/``csc_matrix`` group filled by appending major-axis blocks in order.

    Parameters
    ----------
    parent, name
        Where to create the group (``name=None``: fill ``parent`` itself, an empty group).
    fmt
        ``"csr"`` or ``"csc"``.
    shape
        Shape of the whole matrix.
    dtype
        Type of the stored values.
    nnz
        Number of stored values when known in advance (the arrays are then created at their final size);
        ``None`` makes them grow.
    """

    def __init__(
        self,
        parent: Any,
        name: str | None,
        fmt: str,
        shape: tuple[int, int],
        dtype: Any,
        nnz: int | None = None,
        compression: str | None = None,
        compression_opts: Any = None,
    ):
        self.fmt = fmt
        self.shape = (int(shape[0]), int(shape[1]))
        self.group = parent.create_group(name) if name is not None else parent
        set_encoding(self.group, f"{fmt}_matrix", "0.1.0", shape=list(self.shape))
        n_major, n_minor = self.shape if fmt == "csr" else self.shape[::-1]
        self.n_major = n_major
        self.index_dtype = index_dtype_for(max(n_minor, 1))
        grows = nnz is None
        self.indptr_dtype = np.dtype(np.int64) if grows or nnz >= 2**31 - 1 else np.dtype(np.int32)
        kw = {"compression": compression, "compression_opts": compression_opts}
        # values of arrays made at their final size go to the file with pwrite (shadows.io.fast.pwrite), without holding
        # the GIL: the thread preparing the next block (a conversion's merge) runs meanwhile
        self.raw: dict[str, rawwrite.RawWriter] = {}
        for key, dt in (("data", dtype), ("indices", self.index_dtype)):
            if not grows and not compression and is_h5(self.group):
                arr, writer = rawwrite.create(self.group, key, nnz, dt)
                if writer is not None:
                    self.raw[key] = writer
            else:
                arr = new_array(self.group, key, (nnz or 0,), dt, resizable=grows, **kw)
            setattr(self, key, arr)
        self.indptr = new_array(self.group, "indptr", (n_major + 1,), self.indptr_dtype, **kw)
        self.grows = grows
        self.nnz = 0
        self.major = 0
        self.indptr[0:1] = np.zeros(1, dtype=self.indptr_dtype)

    def append(self, data: np.ndarray, indices: np.ndarray, indptr: np.ndarray) -> None:
        """Append major positions given as a compressed block (``indptr`` starting at 0)."""
        n = int(indptr[-1]) - int(indptr[0])
        k = len(indptr) - 1
        if self.major + k > self.n_major:
            raise ValueError(f"'{self.group.name}': {self.major + k} major positions appended, shape is {self.shape}")
        if n:
            lo, hi = self.nnz, self.nnz + n
            if self.grows:
                self.data.resize((hi,))
                self.indices.resize((hi,))
            for key, values in (("data", data), ("indices", indices)):
                part = np.asarray(values[int(indptr[0]) : int(indptr[-1])], dtype=getattr(self, key).dtype)
                if key in self.raw:
                    self.raw[key].write(lo, part)
                else:
                    getattr(self, key)[lo:hi] = part
        if k:
            ip = np.asarray(indptr[1:], dtype=np.int64) - int(indptr[0]) + self.nnz
            self.indptr[self.major + 1 : self.major + 1 + k] = ip.astype(self.indptr_dtype)
        self.nnz += n
        self.major += k

    def append_block(self, block: Any) -> None:
        """Append a scipy block compressed along this sink's major axis."""
        self.append(block.data, block.indices, block.indptr)

    def close(self) -> None:
        """Finish the matrix: close the raw writers and check that it is complete.

        Raises
        ------
        ValueError
            If fewer major positions, or (for a matrix made at its final size) fewer values, were written than
            announced.
        """
        for w in self.raw.values():
            w.close()
        if self.major != self.n_major:
            raise ValueError(f"'{self.group.name}': {self.major} of {self.n_major} major positions were written")
        if not self.grows and self.nnz != self.data.shape[0]:
            raise ValueError(f"'{self.group.name}': {self.nnz} values written, {self.data.shape[0]} expected")


class DenseSink:
    """A dense ``array`` element written block by block along axis 0 or 1."""

    def __init__(
        self,
        parent: Any,
        name: str,
        shape: tuple[int, ...],
        dtype: Any,
        compression: str | None = None,
        compression_opts: Any = None,
    ):
        self.array = new_array(
            parent,
            name,
            tuple(int(n) for n in shape),
            dtype,
            compression=compression,
            compression_opts=compression_opts,
        )
        set_encoding(self.array, "array", "0.2.0")

    def write(self, axis: int, start: int, stop: int, block: Any) -> None:
        """Store ``block`` as positions ``start:stop`` along ``axis`` (0 rows, 1 columns), cast to the array's dtype."""
        block = np.asarray(block, dtype=self.array.dtype)
        if axis == 0:
            self.array[start:stop] = block
        else:
            self.array[:, start:stop] = block

    def close(self) -> None:
        """Nothing to finish: every block is in the array once written (there for the sinks' common interface)."""
        pass


def refuse_own_file(storage: Storage, dst: Path) -> None:
    """Raise if ``dst`` is the file a shadow reads from (its ``storage``): streaming into it would destroy it."""
    src = Path(storage.filename)
    if dst.exists() and src.exists() and os.path.samefile(dst, src):
        raise ValueError(f"Cannot stream '{storage.describe()}' into the file it is read from ('{dst}')")


class Output:
    """A new ``.h5ad`` file or zarr store, written under a staging name and moved into place on :meth:`commit`.

    Nothing the library did not create is ever deleted: an existing destination is refused
    (``FileExistsError``) unless ``overwrite=True``, and even then only an existing *file* (HDF5) or an existing
    *zarr store* (a directory with ``.zgroup``/``zarr.json`` at its root and nothing else) is replaced; a directory
    given as an HDF5 destination raises ``IsADirectoryError``.  Staging names carry this host and process id, so
    that what a killed writer left behind is recognised and removed by the next write to the same destination.

    Parameters
    ----------
    path
        Destination.
    kind
        ``"h5"`` or ``"zarr"``.
    zarr_format
        2 or 3 for a zarr store (default: ``anndata.settings.zarr_write_format``).
    header
        HDF5 only: bytes put in a 512-byte user block at the start of the file (``.h5mu`` files carry one).
    overwrite
        Replace an existing file (HDF5) or zarr store (see above).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        kind: str,
        zarr_format: int | None = None,
        header: bytes | None = None,
        *,
        overwrite: bool = False,
    ):
        self.path = Path(os.fspath(path))
        self.kind = kind
        self.header = header
        self.overwrite = overwrite
        if kind == "h5" and header is not None and len(header) > USERBLOCK:
            raise ValueError(f"a file header holds at most {USERBLOCK} bytes, got {len(header)}")
        clean_stale(self.path)  # first: it may move back an output a killed writer had moved aside
        check_destination(self.path, kind, overwrite)
        self.stage = temp_path(self.path, ".tmp")
        if kind == "h5":
            self.root: Any = h5py.File(self.stage, "w-", userblock_size=USERBLOCK if header is not None else 0)
        else:
            if zarr_format is None:
                import anndata

                zarr_format = int(getattr(anndata.settings, "zarr_write_format", 2))
            self.root = zarr.open_group(str(self.stage), mode="w-", zarr_format=zarr_format)

    def commit(self) -> Path:
        """Close, consolidate (zarr), and move the staged file into place."""
        if self.kind == "h5":
            self.root.close()
            if self.header is not None:
                with open(self.stage, "r+b") as f:  # the user block is HDF5's to reserve, ours to fill
                    f.write(self.header.ljust(USERBLOCK, b"\0"))
        else:
            consolidate(self.stage)
        commit_guard.point("output.staged")
        with commit_guard.shielded():  # a Ctrl-C between two renames would leave no destination
            old = self._place()
        if old is not None:
            # freeing the blocks of a large old file takes a while: delete it in the background
            threading.Thread(target=_remove, args=(old,), name="shadows-remove-old", daemon=False).start()
        return self.path

    def _place(self) -> Path | None:
        """Move the staged output to the destination; the replaced one's new name (to delete), if any."""
        if not _exists(self.path):
            if not _rename2(self.stage, self.path, _RENAME_NOREPLACE):
                if _exists(self.path):  # created meanwhile: never clobbered
                    check_destination(self.path, self.kind, False)
                os.rename(self.stage, self.path)
            return None
        # checked again: the destination may have changed since this output was opened
        check_destination(self.path, self.kind, self.overwrite)
        if _rename2(self.stage, self.path, _RENAME_EXCHANGE):
            return self.stage  # one atomic swap: the staging name now holds the old destination
        old = temp_path(self.path, ".old")
        if self.kind == "h5" and not self.path.is_symlink():
            try:
                os.link(self.path, old)  # a second name for the old file: the replacement below stays atomic
            except OSError:
                os.rename(self.path, old)
            commit_guard.point("output.old_aside")
            os.replace(self.stage, self.path)
        else:
            os.rename(self.path, old)  # a killed writer's next run moves it back if the destination is missing
            try:
                commit_guard.point("output.old_aside")
                os.rename(self.stage, self.path)
            except BaseException:
                os.rename(old, self.path)  # the old output stays where it was
                raise
        return old

    def abort(self) -> None:
        """Drop the staged file (the destination is left as it was)."""
        if self.kind == "h5":
            try:
                self.root.close()
            except Exception:  # already closed or broken: the staged file is removed anyway
                pass
        _remove(self.stage)

    def __enter__(self) -> Output:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()


# --- destinations -----------------------------------------------------------------------------------------------------
# Files a zarr store may hold at its root besides its nodes' directories.
ZARR_ROOT_FILES = frozenset({".zgroup", ".zattrs", ".zmetadata", "zarr.json"})
# Files that make a directory a zarr node (group or array).
_ZARR_NODE_FILES = (".zgroup", ".zarray", "zarr.json")


def _exists(p: Path) -> bool:
    return p.exists() or p.is_symlink()


def foreign_entries(path: Path) -> list[str] | None:
    """What in directory ``path`` is not part of a zarr store (``None``: ``path`` is no zarr group at all).

    Only the root is inspected: its files must be zarr metadata and its subdirectories zarr nodes.
    """
    names = set(os.listdir(path))
    if not names & {".zgroup", "zarr.json"}:
        return None
    foreign = []
    for name in sorted(names - ZARR_ROOT_FILES):
        sub = path / name
        if sub.is_symlink() or not sub.is_dir() or not any((sub / m).is_file() for m in _ZARR_NODE_FILES):
            foreign.append(name)
    return foreign


def check_destination(path: Path, kind: str, overwrite: bool) -> bool:
    """Raise unless ``path`` may be written as a new ``kind`` (``"h5"``/``"zarr"``) output; whether it exists.

    An existing file is replaced only with ``overwrite`` (HDF5 outputs), an existing zarr store only with
    ``overwrite`` and when it holds nothing but zarr nodes; any other directory is never replaced.
    """
    path = Path(path)
    if not _exists(path):
        return False
    if kind == "h5":
        if path.is_dir():
            raise IsADirectoryError(
                errno.EISDIR,
                f"'{path}' is a directory; an h5ad file cannot be written in its place (nothing was written)",
                str(path),
            )
        if not overwrite:
            raise FileExistsError(
                errno.EEXIST, f"'{path}' exists; pass overwrite=True to replace it (nothing was written)", str(path)
            )
        if not (path.is_file() or path.is_symlink()):
            raise FileExistsError(errno.EEXIST, f"'{path}' exists and is not a regular file; not replaced", str(path))
        return True
    if not path.is_dir() or path.is_symlink():
        raise FileExistsError(
            errno.EEXIST,
            f"'{path}' exists and is not a zarr store directory; it is never replaced by a zarr store",
            str(path),
        )
    foreign = foreign_entries(path)
    if foreign is None:
        raise FileExistsError(
            errno.EEXIST,
            f"'{path}' is a directory that is not a zarr store (no .zgroup or zarr.json at its root); "
            "it is never replaced, even with overwrite=True (nothing was written)",
            str(path),
        )
    if foreign:
        raise FileExistsError(
            errno.EEXIST,
            f"'{path}' is a zarr store holding other files too ({', '.join(foreign[:5])}"
            f"{', ...' if len(foreign) > 5 else ''}); it is never replaced, even with overwrite=True",
            str(path),
        )
    if not overwrite:
        raise FileExistsError(
            errno.EEXIST,
            f"zarr store '{path}' exists; pass overwrite=True to replace it (nothing was written)",
            str(path),
        )
    return True


# --- temporary names --------------------------------------------------------------------------------------------------
# Every temporary file or directory the library puts beside a user's data is named
# ``<prefix>shadows-<host>-<pid>-<token><suffix>``: a later run recognises those of a dead process on this host (a
# killed writer's) and removes them; nothing else ever matches.
_TEMP_RE = re.compile(r"shadows-(?P<host>[0-9a-f]{8})-(?P<pid>[0-9]{1,10})-[0-9a-f]{8}")


def _host() -> str:
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


def temp_name(prefix: str, suffix: str) -> str:
    """A temporary name of this process: ``<prefix>shadows-<host>-<pid>-<token><suffix>``."""
    return f"{prefix}shadows-{_host()}-{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}"


def temp_path(path: Path, suffix: str) -> Path:
    """A temporary name beside ``path`` (``.<name>.shadows-...<suffix>``)."""
    return path.with_name(temp_name(f".{path.name}.", suffix))


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True  # another thread of this process may be writing the same destination
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):  # another user's process (or an impossible pid): left alone
        return True
    return True


def stale(directory: Path, prefix: str, suffixes: tuple[str, ...]) -> list[tuple[Path, str]]:
    """Temporary entries of dead processes of this host in ``directory``: ``(path, suffix)`` pairs."""
    out = []
    host = _host()
    try:
        names = os.listdir(directory)
    except OSError:
        return out
    for name in names:
        if not name.startswith(prefix):
            continue
        for suffix in suffixes:
            if not name.endswith(suffix):
                continue
            m = _TEMP_RE.fullmatch(name[len(prefix) : len(name) - len(suffix)])
            if m and m["host"] == host and not _pid_alive(int(m["pid"])):
                out.append((directory / name, suffix))
    return out


def clean_stale(path: Path) -> None:
    """Remove what writers killed while writing ``path`` left beside it (staging names, replaced outputs).

    A replaced output moved aside (``.old``) goes back to ``path`` when ``path`` is missing: the writer was killed
    between its two renames, and the old output is all there is.
    """
    for p, suffix in sorted(stale(path.parent, f".{path.name}.", (".tmp", ".old")), key=lambda e: e[1] == ".tmp"):
        if suffix == ".old" and not _exists(path):
            os.rename(p, path)
        else:
            _remove(p)


# renameat2(2) flags (Linux): fail if the destination exists; swap two paths atomically.
_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _renameat2() -> Any:
    try:
        import ctypes

        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # not Linux, or a libc without it
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return fn


def _rename2(src: Path, dst: Path, flags: int) -> bool:
    """``renameat2(src, dst, flags)``; ``False`` where the system or file system does not support it."""
    fn = _renameat2()
    if fn is None:
        return False
    import ctypes

    if fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV):
        return False
    raise OSError(err, os.strerror(err), str(src), None, str(dst))


def _remove(p: Path) -> None:
    """Remove a file or directory the library created (a link is removed, never what it points to)."""
    if p.is_symlink() or p.is_file():
        p.unlink(missing_ok=True)
    elif p.is_dir():
        shutil.rmtree(p, ignore_errors=True)
