"""Storage access: open an h5ad/h5mu file or a zarr store (or a group inside one) and hide h5py/zarr differences.

Everything above this module talks to a :class:`Storage` (one connection) and to the group/array objects of h5py
or zarr through the small helpers here (``is_group``, ``attr``, ``read_strings``...), never to ``h5py.File`` or
``zarr.open_group`` directly.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import zarr

from shadows.io import remote, remote_h5
from shadows.io.kinds import FORMATS, MODES, StorageError


def _is_zarr_dir(p: Path) -> bool:
    return p.is_dir() and any((p / m).exists() for m in ("zarr.json", ".zgroup", ".zmetadata", ".zattrs"))


def split_path(path: str | os.PathLike) -> tuple[Path, str]:
    """Split ``file.h5mu/mod/rna`` into the file (or store) on disk and the group path inside it.

    A path that exists as a file is returned whole.  A zarr store is looked up from its outermost ancestor that is
    a zarr root, so that ``store.zarr/mod/rna`` opens the whole store (and its consolidated metadata) and then
    descends: this makes a modality opened by path behave like one reached from its MuData.
    """
    p = Path(os.fspath(path))
    if p.is_file():
        return p, ""
    parts: list[str] = []
    cur = p
    while not cur.exists():
        if cur.parent == cur:
            raise FileNotFoundError(f"No such file or zarr store: '{p}'")
        parts.insert(0, cur.name)
        cur = cur.parent
    if cur.is_file():
        return cur, "/".join(parts)
    # a directory: climb to the outermost zarr root so that the store opens from its top
    root = cur
    while _is_zarr_dir(root.parent) and root.parent != root:
        parts.insert(0, root.name)
        root = root.parent
    if not _is_zarr_dir(root):
        if not p.exists():  # nothing there: its nearest existing ancestor is just some directory
            raise FileNotFoundError(errno.ENOENT, "No such file or zarr store", str(p))
        raise FileNotFoundError(f"'{p}' is a directory but not a zarr store (no zarr.json or .zgroup in '{root}')")
    return root, "/".join(parts)


def sniff_format(path: Path, fmt: str | None) -> str:
    """Return ``"h5"`` or ``"zarr"`` for a file or store, checking the bytes rather than trusting the suffix."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise ValueError(f"Unknown format {fmt!r}; choose one of {sorted(FORMATS)}")
        return FORMATS[fmt]
    if path.is_dir():
        if _is_zarr_dir(path):
            return "zarr"
        raise ValueError(f"'{path}' is a directory but not a zarr store (no zarr.json or .zgroup)")
    if h5py.is_hdf5(path):
        return "h5"
    raise ValueError(
        f"'{path}' is neither an HDF5 file nor a zarr store; pass format= if it is one of {sorted(FORMATS)}"
    )


class Storage:
    """One open connection to a file or store, rooted at the group that holds the AnnData (or MuData).

    Parameters
    ----------
    path
        File, store, or a path inside one (``file.h5mu/mod/rna``).
    mode
        ``"r"`` or ``"r+"``.
    format
        ``None`` to detect, or one of ``h5ad``, ``h5mu``, ``hdf5``, ``h5``, ``zarr``.
    """

    def __init__(
        self, path: str | os.PathLike, mode: str = "r", format: str | None = None, storage_options: dict | None = None
    ):
        if mode not in MODES:
            raise ValueError(f"Unknown mode {mode!r}; choose one of {list(MODES)}")
        if remote.is_remote(path):  # a URL, fsspec or zarr store object: see shadows.remote
            self.filename, self.inner = remote.locate(path, storage_options, format)
            self.kind = self.filename.target.kind
        elif storage_options:
            raise TypeError(f"storage_options= is for remote stores (URLs), not the local path '{os.fspath(path)}'")
        else:
            self.filename, self.inner = split_path(path)
            self.kind = sniff_format(self.filename, format)
        self.format = format
        self.mode = mode
        self.file: Any = None
        # indptr arrays read once per open matrix (keyed by the matrix's path): repeated row reads do not re-read it
        self.indptr_cache: dict[str, np.ndarray] = {}
        self._opened = False
        self.open(mode)

    # --- connection -----------------------------------------------------------------------------------------------
    def open(self, mode: str | None = None) -> None:
        """(Re)open the file in ``mode`` (default: the current mode), closing the handle held now.

        A refused reopen (``"r+"`` on a read-only file) leaves the file open in the mode it had.

        Raises
        ------
        ValueError
            If ``mode`` is not one of the known modes.
        """
        mode = mode or self.mode
        if mode not in MODES:
            raise ValueError(f"Unknown mode {mode!r}; choose one of {list(MODES)}")
        previous = self.mode if self.file is not None else None
        self.close()
        if self._opened and self.is_remote:
            # a re-open asks a remote file's size and version again (views opened from it since reuse what the
            # first open asked: one version for the whole session, no request per view)
            self.filename.target.info = None
        try:
            self._open(mode)
            self._opened = True
        except Exception:
            if previous is not None and previous != mode:
                self._open(previous)  # a refused reopen("r+") leaves the shadow as it was, still readable
            raise
        self.indptr_cache.clear()

    def _open(self, mode: str) -> None:
        self.mode = mode
        if self.is_remote:
            self.file = (
                remote.open_h5(self.filename, mode) if self.kind == "h5" else remote.open_zarr(self.filename, mode)
            )
        elif self.kind == "h5":
            if mode != "r":  # HDF5 refuses a writer while this process reads the file: lazy readers let go first
                for release in RELEASE_READERS:
                    release(self.filename)
            try:
                # locking: readers share the file; a writer that cannot get it fails at once (see write.py)
                # no chunk cache: reads here are large sequential ranges or one-shot point selections, and the
                # cache (sized per dataset) costs more memory than it saves time (measured: 23 MB vs 6 MB per gene)
                self.file = _open_h5(self.filename, mode)
            except BlockingIOError as e:
                raise StorageError(
                    f"'{self.filename}' is opened by another process; cannot open it with mode {mode!r} ({e})"
                ) from e
            except OSError as e:
                if "already open" in str(e).lower():
                    raise StorageError(
                        f"'{self.filename}' is still open in this process in another mode (a view or a lazy array "
                        f"of it?); close those before opening it with mode {mode!r}: {e}"
                    ) from e
                if "truncated file" in str(e).lower():  # HDF5's "sblock" in this message is no lock
                    raise StorageError(_truncated(self.filename, str(e))) from e
                if _is_lock_error(str(e)):
                    raise StorageError(
                        f"'{self.filename}' is locked by another process (a writer or readers); "
                        f"cannot open it with mode {mode!r}: {e}"
                    ) from e
                raise OSError(f"Cannot open '{self.filename}' as HDF5: {e}") from e
        else:
            if mode == "r+":  # finish a killed writer's half-done commit first ("r" never changes a byte)
                from shadows.io.zarr_journal import recover_if_unlocked

                recover_if_unlocked(Path(self.filename))
            try:
                self.file = zarr.open_group(self.filename, mode=mode)
            except Exception as e:  # zarr raises several types for a broken store
                raise OSError(f"Cannot open '{self.filename}' as a zarr store: {e}") from e

    def close(self) -> None:
        """Close the file handle (an HDF5 file; a zarr store holds none); closing twice is harmless."""
        if self.file is not None and self.kind == "h5":
            try:
                self.file.close()
            except Exception:  # closing twice or after a crash is harmless
                pass
        self.file = None

    @property
    def is_remote(self) -> bool:
        """Whether the file or store is remote (a URL, fsspec or zarr store object; see :mod:`shadows.remote`)."""
        return isinstance(self.filename, remote.RemotePath)

    @property
    def is_open(self) -> bool:
        """Whether the file handle is open."""
        if self.file is None:
            return False
        return bool(self.file) if self.kind == "h5" else True

    @property
    def root(self) -> Any:
        """The group holding the AnnData (or MuData) this connection is for."""
        if self.file is None:
            raise ValueError(f"'{self.filename}' is closed; call reopen() first")
        if not self.inner:
            return self.file
        try:
            return self.file[self.inner]
        except KeyError:
            raise KeyError(f"'{self.filename}' has no group '{self.inner}'") from None

    def sibling(self) -> Storage:
        """Another read-only connection to the same store (a view's own); for a remote zarr store it reads the
        root metadata this connection read instead of fetching it again (see
        :func:`shadows.io.remote.share_root_metadata`)."""
        if self.is_remote and self.kind == "zarr" and self.file is not None and self.mode == "r":
            remote.share_root_metadata(self.file, self.filename)
        return Storage(self.describe(), mode="r", format=self.format)

    def describe(self) -> str:
        """The path for messages and reprs, with the inner group if any (``file.h5mu/mod/rna``).

        For a remote store: a :class:`~shadows.io.remote.RemotePath`, a ``str`` that re-opens the same store (its
        URL, and the options to reach it) wherever it goes (views, dask tasks, pickles).
        """
        if self.is_remote:
            return remote.RemotePath(self.filename.target, self.inner)
        return f"{self.filename}/{self.inner}" if self.inner else str(self.filename)

    def __getstate__(self) -> dict:
        return {"filename": self.filename, "inner": self.inner, "format": self.format, "mode": self.mode}

    def __setstate__(self, state: dict) -> None:
        if isinstance(state["filename"], remote.RemotePath):
            p = remote.RemotePath(state["filename"].target, state["inner"])
        else:
            p = Path(state["filename"]) / state["inner"] if state["inner"] else state["filename"]
        self.__init__(p, mode=state["mode"], format=state["format"])

    def child(self, inner: str) -> ChildStorage:
        """A connection to the group ``inner`` below this root that shares this one's file handle."""
        return ChildStorage(self, inner)

    def path_of(self, key: str) -> Path | str:
        """A path that a new :class:`Storage` can open to reach ``key`` below the root."""
        if self.is_remote:
            return remote.RemotePath(self.filename.target, "/".join(p for p in (self.inner, key) if p))
        return f"{self.describe()}/{key}" if key else self.describe()


class ChildStorage(Storage):
    """A group inside another connection's file (a MuData modality): one file handle for the whole file."""

    def __init__(self, parent: Storage, inner: str):
        self.parent = parent
        self.filename = parent.filename
        self.inner = "/".join(p for p in (parent.inner, inner) if p)
        self.kind = parent.kind
        self.format = parent.format
        self.indptr_cache = {}

    @property
    def mode(self) -> str:  # type: ignore[override]
        """The mode of the parent connection."""
        return self.parent.mode

    @property
    def file(self) -> Any:  # type: ignore[override]
        """The parent connection's file handle."""
        return self.parent.file

    def open(self, mode: str | None = None) -> None:
        """Reopen the parent connection (the whole file) in ``mode``."""
        self.parent.open(mode)
        self.indptr_cache.clear()

    def close(self) -> None:
        """Close the parent connection (the whole file)."""
        self.parent.close()


#: Callbacks ``f(filename)`` run before an HDF5 file is opened for writing: each closes the read-only connections
#: it keeps to that file (shadows.spec.lazy_array: those of dask chunks and lazy arrays, reopened on their next read).
RELEASE_READERS: list[Callable[[str], None]] = []


def _is_lock_error(message: str) -> bool:
    """Whether HDF5 refused the file lock (not any message that happens to contain "lock", like "sblock")."""
    return re.search(r"\block(ed|ing)?\b", message.lower()) is not None


def _truncated(filename: Path, message: str) -> str:
    """What to say about a truncated HDF5 file: its size, the size HDF5 expects, and what likely happened."""
    m = re.search(r"eof = (\d+).*stored_eof = (\d+)", message)
    sizes = f" (it has {m.group(1)} bytes, its header says {m.group(2)})" if m else ""
    return (
        f"'{filename}' is truncated or corrupt{sizes}: an interrupted copy or download, or a full disk while it "
        f"was written? Copy it again or restore it from a backup ({message})"
    )


# HDF5 reads small pieces of contiguous datasets through a "sieve" buffer (64 kB): a column of a dense matrix then
# costs a 64 kB read every few rows, copying the whole matrix (measured: 190-220 ms for a gene of a 2 GB matrix).
# With a sieve of a few bytes HDF5 reads each element where it is: 96-98 ms.  Large reads bypass the sieve anyway.
_READ_SIEVE_BYTES = 8


def _open_h5(filename: str, mode: str) -> h5py.File:
    """``h5py.File(filename, mode, rdcc_nbytes=0)``; read-only files with HDF5's sieve buffer made tiny."""
    if mode == "r":
        try:
            from h5py._hl.files import make_fapl, make_fid  # what h5py.File itself calls

            fapl = make_fapl(None, rdcc_nbytes=0)
            fapl.set_sieve_buf_size(_READ_SIEVE_BYTES)
        except (ImportError, TypeError, AttributeError):  # another h5py: its own File, default sieve
            pass
        else:
            return h5py.File(make_fid(os.fsencode(filename), "r", None, fapl))
    return h5py.File(filename, mode, rdcc_nbytes=0)


# --- helpers over h5py and zarr objects ----------------------------------------------------------------------------
def is_group(x: Any) -> bool:
    """Whether ``x`` is an h5py or zarr group."""
    return isinstance(x, h5py.Group | zarr.Group)


def is_array(x: Any) -> bool:
    """Whether ``x`` is an h5py dataset or zarr array."""
    return isinstance(x, h5py.Dataset | zarr.Array)


def member(group: Any, name: str) -> Any:
    """``group[name]``, or ``None`` where there is no such member.

    One lookup where ``name in group`` then ``group[name]`` makes two: in a zarr group each is a round trip to
    zarr's event-loop thread (0.5-1 ms; nine of them were half of opening a local zarr store and reading an
    ``obsm`` array of it).
    """
    try:
        return group[name]
    except KeyError:
        return None


def is_h5(x: Any) -> bool:
    """Whether ``x`` is an h5py object (group or dataset) rather than a zarr one."""
    return isinstance(x, h5py.Group | h5py.Dataset)


def attr(x: Any, name: str, default: Any = None) -> Any:
    """An attribute decoded to plain Python (bytes to str, 0-d and 1-element arrays unwrapped where sensible)."""
    try:
        v = x.attrs[name]
    except KeyError:
        return default
    return _plain(v)


def _plain(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.ndarray):
        if v.dtype.kind in "SO":
            return [_plain(e) for e in v.tolist()]
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    return v


def is_string_array(x: Any) -> bool:
    """Whether the stored array ``x`` holds strings (variable- or fixed-length, HDF5 or zarr v2/v3)."""
    dt = x.dtype
    if is_h5(x):
        return h5py.check_string_dtype(dt) is not None or dt.kind in "SU"
    return dt.kind in "OUST" or str(dt) in ("str", "string", "StringDType()") or "String" in type(dt).__name__


def decode_strings(a: Any) -> np.ndarray:
    """Any array of strings (bytes, numpy unicode, numpy StringDType, object) as an object array of ``str``."""
    a = np.asarray(a)
    if a.dtype.kind == "S":
        return np.char.decode(a, "utf-8").astype(object)
    if a.dtype.kind == "O":
        if a.size and isinstance(a.flat[0], bytes):
            return np.array([v.decode() if isinstance(v, bytes) else v for v in a.ravel()], dtype=object).reshape(
                a.shape
            )
        return a
    return a.astype(object)


def read_raw(x: Any, key: Any = ()) -> Any:
    """Read ``x[key]`` returning strings decoded; ``key`` is anything h5py/zarr basic indexing takes."""
    if is_h5(x) and h5py.check_string_dtype(x.dtype) is not None:
        return _read_h5_strings(x, key) if x.shape != () else x.asstr()[()]
    v = x[key]
    # zarr's numpy StringDType arrays are left as they are (anndata hands them to pandas that way too); bytes and
    # objects holding bytes are decoded
    if isinstance(v, np.ndarray) and v.dtype.kind in "SO" and is_string_array(x):
        return decode_strings(v)
    return v


def _read_h5_strings(x: Any, key: Any) -> np.ndarray:
    """Variable-length strings of an h5py dataset as an object array of ``str``.

    h5py decodes them into numpy's ``StringDType`` in C, about twice as fast as ``asstr()`` (which decodes one
    Python object at a time): names of a 50,000-gene atlas are the first read of every gene lookup.
    """
    info = h5py.check_string_dtype(x.dtype)
    string_dtype = getattr(getattr(np, "dtypes", None), "StringDType", None)
    with remote_h5.heap_walk(x):  # a remote file: read the global heap ahead (nothing for a local file)
        if info is not None and info.length is None and string_dtype is not None:
            try:
                return x.astype(string_dtype())[key].astype(object)
            except (TypeError, ValueError, UnicodeDecodeError):  # an h5py without it, or bytes that are not UTF-8
                pass
        return decode_strings(x.asstr()[key])


def _warm_up_h5py() -> None:
    """h5py sets up its type conversions on the first file operation (~1 ms); pay that at import, not at open."""
    import io

    try:
        with h5py.File(io.BytesIO(), "w") as f:
            g = f.create_group("g")
            g.attrs["a"] = "b"
            _ = g.attrs["a"], "g" in f, f.create_dataset("d", data=np.zeros(1)).shape
    except Exception:  # never let a warm-up break the import
        pass


_warm_up_h5py()
