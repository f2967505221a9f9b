"""Remote stores: h5ad/h5mu files and zarr stores on S3, GCS, HTTP or any fsspec filesystem.

A user names a remote store by a URL (``s3://``, ``gs://``, ``https://``, ``memory://``... with
``storage_options=``), an fsspec object (``OpenFile``, an open fsspec file, ``FSMap``, a ``(filesystem, path)``
pair), a zarr store object (``FsspecStore``, ``ObjectStore``) or any open binary file-like object.  :func:`locate`
turns each into a :class:`Target` (how to reach the store again: the filesystem and path, never an open handle, so
that it pickles into dask workers and other processes) and finds where the file or store starts and what it is.

Reads go through h5py (on a :class:`RangeFile`, a file-like object with a cache of 1 kB units for HDF5's small
metadata reads) and through zarr's own async stores (concurrent chunk fetches).  The local accelerators
(:mod:`shadows.io.fast.pread`, :mod:`shadows.io.fast.zarr_chunks`, :mod:`shadows.io.fast.h5copy`) never see
these: they serve only the ``sec2`` driver and ``LocalStore``.  Every request is counted (:func:`counting`).

Storage keeps the :class:`RemotePath` (a ``str`` carrying its :class:`Target`) as its ``filename``; whatever code
re-opens a connection from ``storage.describe()`` (views, lazy arrays, dask tasks, pickles) re-opens the same
remote store with the same options.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import h5py

__all__ = ["Counts", "RangeFile", "RemotePath", "Target", "counting", "is_remote", "locate"]

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")
_ZARR_META = ("zarr.json", ".zgroup", ".zattrs", ".zmetadata")
_H5_SUFFIXES = (".h5ad", ".h5mu", ".h5", ".hdf5")
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


# --- accounting -------------------------------------------------------------------------------------------------------
@dataclass
class Counts:
    """Requests made and bytes fetched from remote stores while a :func:`counting` block ran."""

    requests: int = 0
    bytes: int = 0
    by_store: dict[str, list[int]] = field(default_factory=dict)
    # (url, start, end) of every ranged read of a remote HDF5 file: where in the file the bytes came from (the
    # benchmark splits them into values and HDF5 metadata by the file's own layout)
    spans: list[tuple[str, int, int]] = field(default_factory=list)

    def __repr__(self) -> str:
        return f"Counts(requests={self.requests}, bytes={self.bytes})"


_counters: list[Counts] = []
_count_lock = threading.Lock()


def _count(where: str, nbytes: int, start: int | None = None) -> None:
    if not _counters:
        return
    with _count_lock:
        for c in _counters:
            c.requests += 1
            c.bytes += nbytes
            st = c.by_store.setdefault(where, [0, 0])
            st[0] += 1
            st[1] += nbytes
            if start is not None:
                c.spans.append((where, start, start + nbytes))


@contextmanager
def counting() -> Iterator[Counts]:
    """Count the requests and bytes fetched from remote stores (by this process, all threads) inside the block.

    Examples
    --------
    >>> with shadows.remote.counting() as c:  # doctest: +SKIP
    ...     s[:, "CD3E"].X
    >>> c.requests, c.bytes  # doctest: +SKIP
    """
    c = Counts()
    with _count_lock:
        _counters.append(c)
    try:
        yield c
    finally:
        with _count_lock:
            _counters.remove(c)


# --- naming a remote store ------------------------------------------------------------------------------------------
@dataclass
class Target:
    """How to reach a remote file or store: a filesystem and a path in it, or a zarr store / file object given."""

    url: str  # what messages and repr show
    fs: Any = None  # an fsspec filesystem (pickles as its constructor's options)
    path: str = ""  # the file's or store's path in ``fs``
    store: Any = None  # a zarr store object given by the user
    fileobj: Any = None  # an open file-like object given by the user
    kind: str | None = None  # "h5" or "zarr" once known
    # An HDF5 file's size and version (ETag...) as first asked: every re-open of the same shadow (views, lazy
    # arrays, pickles) reads the same version without asking again (a HEAD request per view before).
    info: tuple[int, Any] | None = None
    # The file's first bytes, read when its kind was sniffed: HDF5's superblock and root group lie there, and the
    # first open reads them from these (two requests fewer on the 100k x 5k h5ad); dropped once used.
    head: bytes | None = field(default=None, repr=False)

    def with_kind(self, kind: str) -> Target:
        """The same target, known to be an HDF5 file (``"h5"``) or a zarr store (``"zarr"``)."""
        return replace(self, kind=kind)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["head"] = None
        if state["fileobj"] is not None:
            try:  # a file-like object is handed to the other process only if it pickles (fsspec files do)
                import pickle

                pickle.dumps(state["fileobj"])
            except Exception as e:
                raise TypeError(
                    f"'{self.url}' was opened from a file object that cannot be pickled ({e}); open it by URL "
                    "(with storage_options=) to send it to another process"
                ) from None
        return state


class RemotePath(str):
    """A remote store's URL, plus the group inside it, that remembers how to reach it (its :class:`Target`).

    It is what ``Storage.filename`` and ``Storage.describe()`` are for a remote store, so that every place that
    re-opens a connection from them (views, lazy arrays, dask tasks, pickles) reaches the same store with the same
    options.
    """

    target: Target
    inner: str

    def __new__(cls, target: Target, inner: str = "") -> RemotePath:
        text = f"{target.url.rstrip('/')}/{inner}" if inner else target.url
        obj = super().__new__(cls, text)
        obj.target, obj.inner = target, inner
        return obj

    def __reduce__(self):
        return (RemotePath, (self.target, self.inner))


def is_remote(source: Any) -> bool:
    """Whether ``source`` names a remote store (anything :func:`locate` takes that is not a local path)."""
    if isinstance(source, RemotePath):
        return True
    if isinstance(source, str):
        return _is_url(source)
    if isinstance(source, tuple):
        return len(source) == 2 and hasattr(source[0], "protocol")
    if hasattr(source, "__fspath__") or isinstance(source, bytes):
        return False
    return _kind_of_object(source) is not None


def _is_url(s: str) -> bool:
    return (bool(_URL.match(s)) or "::" in s) and not s.startswith("file://")


def _kind_of_object(obj: Any) -> str | None:
    import zarr

    if isinstance(obj, zarr.storage.LocalStore):
        return None
    if isinstance(obj, zarr.abc.store.Store):
        return "store"
    mod = type(obj).__module__ or ""
    if mod.startswith("fsspec") or hasattr(obj, "fs") and hasattr(obj, "path") and hasattr(obj, "open"):
        if hasattr(obj, "fs") and hasattr(obj, "root") and hasattr(obj, "__getitem__"):
            return "mapper"
        if hasattr(obj, "fs") and hasattr(obj, "path") and hasattr(obj, "open") and not hasattr(obj, "read"):
            return "openfile"
    if hasattr(obj, "read") and hasattr(obj, "seek"):
        return "fileobj"
    return None


def locate(source: Any, storage_options: dict | None = None, format: str | None = None) -> tuple[RemotePath, str]:
    """The remote store ``source`` names, as a :class:`RemotePath` of its root, and the group path inside it.

    Raises
    ------
    FileNotFoundError
        Nothing there (key, bucket or URL missing), naming the URL.
    ValueError
        Something there that is neither an HDF5 file nor a zarr store.
    PermissionError, OSError
        Credentials refused, endpoint unreachable... naming the URL and the cause.
    """
    if isinstance(source, RemotePath):
        if source.target.kind is not None:
            return RemotePath(source.target), source.inner
        target, inner = source.target, source.inner
        if target.fs is not None and target.store is None and target.fileobj is None:
            return _find_root(target.fs, _join(target.path, inner), target.url, format)
        return RemotePath(target.with_kind(_sniff_given(target, format))), inner
    if storage_options and not isinstance(source, str):
        raise TypeError(f"storage_options= goes with a URL, not with a {type(source).__name__}")
    if isinstance(source, str):
        import fsspec

        try:
            fs, path = fsspec.core.url_to_fs(source, **_with_defaults(source, storage_options))
        except ImportError as e:
            raise ImportError(f"Cannot open '{source}': {e}") from e
        return _find_root(fs, path, source, format)
    if isinstance(source, tuple):
        fs, path = source
        return _find_root(fs, fs._strip_protocol(path), fs.unstrip_protocol(path), format)
    kind = _kind_of_object(source)
    if kind == "mapper":
        return _find_root(source.fs, source.root, source.fs.unstrip_protocol(source.root), format)
    if kind == "openfile" or (kind == "fileobj" and _is_fsspec_file(source)):
        fs, path = source.fs, source.path
        return _find_root(fs, path, fs.unstrip_protocol(path), format)
    if kind == "store":
        url = _store_url(source)
        return RemotePath(Target(url, store=source).with_kind("zarr")), ""
    if kind == "fileobj":
        url = str(getattr(source, "name", None) or f"<{type(source).__name__} object>")
        target = Target(url, fileobj=source)
        return RemotePath(target.with_kind(_sniff_given(target, format))), ""
    raise TypeError(f"Cannot open a {type(source).__name__}: expected a path, a URL, an fsspec or zarr store object")


def _is_fsspec_file(obj: Any) -> bool:
    return hasattr(obj, "fs") and isinstance(getattr(obj, "path", None), str) and hasattr(obj.fs, "cat_file")


def _store_url(store: Any) -> str:
    fs, path = getattr(store, "fs", None), getattr(store, "path", None)
    if fs is not None and path is not None:
        try:
            return fs.unstrip_protocol(path)
        except Exception:
            pass
    inner = getattr(store, "store", None)  # obstore: the ObjectStore's underlying store
    prefix = getattr(inner, "prefix", None)
    url = getattr(inner, "url", None)
    return str(url or prefix or repr(store))


def _join(path: str, inner: str) -> str:
    return f"{path.rstrip('/')}/{inner}" if inner else path


def _sniff_given(target: Target, format: str | None) -> str:
    from shadows.io.kinds import FORMATS

    if format is not None:
        return FORMATS[format]
    if target.store is not None:
        return "zarr"
    f = target.fileobj
    pos = f.tell()
    try:
        f.seek(0)
        head = f.read(8)
    finally:
        f.seek(pos)
    if head == HDF5_SIGNATURE:
        return "h5"
    raise ValueError(f"'{target.url}' is not an HDF5 file (an h5ad or h5mu); a zarr store is opened by URL")


# --- finding the root of a file or store ------------------------------------------------------------------------------
def _find_root(fs: Any, path: str, url: str, format: str | None) -> tuple[RemotePath, str]:
    """Walk from ``path`` up to the file (h5ad/h5mu) or the outermost zarr root; what remains is the inner group."""
    from shadows.io.kinds import FORMATS

    want = FORMATS.get(format) if format is not None else None
    if format is not None and want is None:
        raise ValueError(f"Unknown format {format!r}; choose one of {sorted(FORMATS)}")
    parts = path.rstrip("/").split("/")
    floor = _floor(fs, parts)
    with _errors_named(url):
        for i in range(len(parts), floor, -1):
            cand = "/".join(parts[:i])
            seen: dict = {}
            kind = _kind_at(fs, cand, want, seen)
            if kind is None:
                continue
            if kind == "zarr":  # climb to the outermost zarr root: a MuData modality opens from its store's top
                while i - 1 > floor and _is_zarr(fs, "/".join(parts[: i - 1])):
                    i -= 1
                cand = "/".join(parts[:i])
            inner = "/".join(parts[i:])
            root_url = fs.unstrip_protocol(cand) if not _URL.match(cand) else cand
            target = Target(root_url, fs=fs, path=cand, kind=kind, info=seen.get("info"), head=seen.get("head"))
            return RemotePath(target), inner
    raise FileNotFoundError(f"No such file or zarr store: '{url}'")


def _floor(fs: Any, parts: list[str]) -> int:
    """How many leading parts of a path name the bucket or host (never a store itself)."""
    if parts and parts[0].endswith(":") and len(parts) > 2 and parts[1] == "":  # http(s)://host/...
        return 3
    protocols = fs.protocol if isinstance(fs.protocol, tuple | list) else (fs.protocol,)
    if any(p in ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl") for p in protocols):
        return 1  # the bucket
    return 0


def _kind_at(fs: Any, path: str, want: str | None, seen: dict) -> str | None:
    """``"h5"``, ``"zarr"`` or ``None`` (nothing there) for ``path``; ValueError for something else.  What was
    read of an HDF5 file on the way (``info``: its size and version; ``head``: its first bytes) goes to ``seen``."""
    looks_h5 = path.lower().endswith(_H5_SUFFIXES)
    if want != "zarr" and looks_h5 and (kind := _file_kind(fs, path, want, seen)) is not None:
        return kind
    if want != "h5" and _is_zarr(fs, path):
        return "zarr"
    if want != "zarr" and not looks_h5:
        return _file_kind(fs, path, want, seen)
    return None


# Bytes read from an HDF5 file's start when its kind is sniffed: the signature is at 0 or after a user block (h5mu:
# 512), and the superblock, the root group's header, B-tree and heap follow; on anndata's h5ad files they end
# within the first 7 kB, and HDF5's open reads them all.
HEAD_BYTES = 8 * 1024


def _file_kind(fs: Any, path: str, want: str | None, seen: dict) -> str | None:
    try:
        info = fs.info(path)
    except FileNotFoundError:
        return None
    if info.get("type") != "file":
        return None
    size = int(info["size"])
    seen["info"] = (size, _version(info))
    head = fs.cat_file(path, start=0, end=min(HEAD_BYTES, size))
    _count(path, len(head))
    if any(head[o : o + 8] == HDF5_SIGNATURE for o in (0, 512, 1024, 2048)):
        seen["head"] = head
        return "h5"
    if want == "h5":  # the user says so: HDF5 itself will say what is wrong with it
        return "h5"
    raise ValueError(f"'{fs.unstrip_protocol(path)}' is neither an HDF5 file (h5ad, h5mu) nor a zarr store")


def _is_zarr(fs: Any, path: str) -> bool:
    return _zarr_format(fs, path) is not None


def _zarr_format(fs: Any, path: str) -> int | None:
    """2 or 3 for a zarr store (or group) at ``path``, ``None`` for none; remembered for :func:`open_zarr`.

    The metadata keys of both formats are asked for at once (one round trip; fsspec's ``cat_ranges`` is concurrent
    on S3, GCS and HTTP), and what they hold is handed to :func:`open_zarr`, which zarr then reads from memory:
    opening a zarr v2 store over HTTP took 4 round trips one after another (zarr.json, .zgroup, then .zgroup,
    .zattrs and .zmetadata again), now 1.  One GET each: over HTTP, fsspec's info() of a missing key makes two
    requests (HEAD, then GET).
    """
    keys = [f"{path}/{name}" for name in _ZARR_META]
    got = fs.cat_ranges(keys, [None] * len(keys), [None] * len(keys), on_error="return")
    found: dict[str, bytes] = {}
    for name, value in zip(_ZARR_META, got, strict=True):
        if isinstance(value, FileNotFoundError | IsADirectoryError):
            continue
        if isinstance(value, BaseException):
            raise value
        _count(path, len(value))
        found[name] = bytes(value)
    fmt = 3 if "zarr.json" in found else 2 if ".zgroup" in found or ".zmetadata" in found else None
    if fmt is not None:
        _FORMATS[(id(fs), path)] = fmt
        keep = ("zarr.json",) if fmt == 3 else (".zgroup", ".zattrs", ".zmetadata")
        with _count_lock:
            _PRELOADED[(id(fs), path)] = {k: found.get(k) for k in keep}  # None: known to be missing
    return fmt


# The metadata documents fetched while locating a store (key -> bytes), served once to the zarr.open_group that
# follows (open_zarr) instead of being fetched again.
_PRELOADED: dict[tuple[int, str], dict[str, bytes | None]] = {}
_FORMATS: dict[tuple[int, str], int] = {}


@contextmanager
def _errors_named(url: str) -> Iterator[None]:
    """Errors of a filesystem raised again with the URL and what probably went wrong."""
    try:
        yield
    except (FileNotFoundError, ValueError) as e:
        if url in str(e):
            raise
        raise type(e)(f"'{url}': {e}") from e
    except PermissionError as e:
        raise PermissionError(
            f"Access to '{url}' was refused ({e}): check the credentials (storage_options key/secret/token, "
            "anon=..., or the environment)"
        ) from e
    except Exception as e:
        raise OSError(f"Cannot reach '{url}': {_cause(e)}") from e


def _cause(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}"
    low = text.lower()
    if any(w in low for w in ("credential", "accessdenied", "access denied", "forbidden", "403", "signature")):
        return text + " (check the credentials: storage_options key/secret/token, anon=..., or the environment)"
    if any(w in low for w in ("connect", "endpoint", "timeout", "resolve")):
        return text + " (is the endpoint right and reachable? storage_options client_kwargs/endpoint_url)"
    return text


# --- opening ----------------------------------------------------------------------------------------------------------
def open_h5(root: RemotePath, mode: str) -> h5py.File:
    """An h5py File on the remote file, read-only; writing into an HDF5 file over object storage is refused."""
    t = root.target
    if mode != "r":
        raise RemoteWriteError(
            f"Cannot open '{t.url}' for writing: an HDF5 file (h5ad/h5mu) cannot be updated in place on object "
            "storage or over HTTP (HDF5 rewrites parts of the file where they are; an object is replaced whole). "
            "Write to a local copy instead (download it, then open the local file with mode='r+'), or convert it "
            "to zarr (shadow.write_zarr(...) or shadows.convert) and write into the zarr store."
        )
    if t.fileobj is not None:
        f = t.fileobj
    else:
        f = RangeFile(t.fs, t.path, t.url, *(t.info or (None, None)))
        t.info = (f.size, f.version)
        if t.head is not None:
            f.seed(t.head)
            t.head = None
    try:
        h5 = h5py.File(f, "r", rdcc_nbytes=0)
        if isinstance(f, RangeFile):
            from shadows.io import remote_h5

            remote_h5.register(h5.filename, f)
        return h5
    except Exception as e:
        raise OSError(f"Cannot open '{t.url}' as HDF5: {e}") from e


class RemoteWriteError(OSError):
    """A write into a remote store that cannot be done there (an HDF5 file on object storage)."""


def open_zarr(root: RemotePath, mode: str) -> Any:
    """The zarr root group of the remote store (zarr's own async store: chunks are fetched concurrently)."""
    import zarr

    t = root.target
    store = t.store if t.store is not None else zarr_store(t.fs, t.path, read_only=mode == "r")
    if t.store is not None and getattr(store, "read_only", False) and mode != "r":
        store = store.with_read_only(False)
    with _errors_named(t.url):
        fmt = _FORMATS.get((id(t.fs), t.path)) if t.fs is not None and mode == "r" else None
        with _count_lock:
            pre = _PRELOADED.pop((id(t.fs), t.path), None) if t.fs is not None and mode == "r" else None
        try:
            return zarr.open_group(CountingStore(store, t.url, pre), mode=mode, zarr_format=fmt)
        except (FileNotFoundError, PermissionError, ValueError):
            raise
        except Exception as e:
            raise OSError(f"Cannot open '{t.url}' as a zarr store: {e}") from e


def share_root_metadata(group: Any, root: RemotePath) -> None:
    """Have the next read-only :func:`open_zarr` of ``root`` (a view's connection) read the root metadata that
    ``group``'s connection read, instead of fetching it again: 3 requests per view of a zarr v2 store (``.zgroup``,
    ``.zattrs``, ``.zmetadata``), 1 of a v3 one.  Nothing once that connection has written to the store."""
    store, t = getattr(group, "store", None), root.target
    docs = getattr(store, "root_docs", None)
    if not docs or t.fs is None or getattr(store, "read_only", True) is False:
        return
    with _count_lock:
        _PRELOADED[(id(t.fs), t.path)] = dict(docs)


def zarr_store(fs: Any, path: str, read_only: bool) -> Any:
    """A ``zarr.storage.FsspecStore`` on ``fs`` at ``path`` (a synchronous filesystem is wrapped for zarr)."""
    from zarr.storage import FsspecStore

    from shadows.io.remote_clients import shared_async_fs

    return FsspecStore(shared_async_fs(fs), path=path, read_only=read_only)


def _counting_zarr_store(fs: Any, path: str, read_only: bool, url: str) -> Any:
    """A pickled :func:`CountingStore` of :func:`zarr_store` re-opened: through the process's shared client."""
    return CountingStore(zarr_store(fs, path, read_only), url)


def _counting_store_class() -> type:
    from zarr.storage import WrapperStore

    class _CountingStore(WrapperStore):
        """A zarr store that counts what it fetches and names the store's URL in every failure: a failed read is
        an error, never a chunk of fill values."""

        def __init__(self, store: Any, url: str, preloaded: dict[str, bytes | None] | None = None):
            super().__init__(store)
            self._url = url
            self._preloaded = dict(preloaded or {})  # metadata fetched while locating the store: served once
            # the root's metadata documents as this connection read them: handed to a view's connection
            # (share_root_metadata), which would otherwise fetch them again
            self.root_docs: dict[str, bytes | None] = {k: v for k, v in self._preloaded.items() if k in _ZARR_META}
            self._prefetched: dict[int, dict[str, bytes | None]] = {}  # see shadows.io.remote_prefetch

        def __reduce__(self):
            from shadows.io.remote_clients import sync_fs_of

            sync_fs = sync_fs_of(getattr(self._store, "fs", None))
            if sync_fs is not None:  # re-open through the other process's shared client, not a client per thread
                return (_counting_zarr_store, (sync_fs, self._store.path, self._store.read_only, self._url))
            return (CountingStore, (self._store, self._url))

        def _with_store(self, store: Any) -> Any:
            return CountingStore(store, self._url)

        def with_read_only(self, read_only: bool = False) -> Any:
            return CountingStore(self._store.with_read_only(read_only), self._url)

        async def get(self, key: str, prototype: Any, byte_range: Any = None) -> Any:
            if byte_range is None and key in self._preloaded:
                value = self._preloaded.pop(key)
                return None if value is None else prototype.buffer.from_bytes(value)
            if byte_range is None and key in _ZARR_META:
                out = await self._get_counted(key, prototype, byte_range)
                self.root_docs[key] = None if out is None else out.to_bytes()
                return out
            return await self._get_counted(key, prototype, byte_range)

        async def set(self, key: str, value: Any) -> None:
            self.root_docs.clear()  # written here: no longer what a view would read
            await super().set(key, value)

        async def delete(self, key: str) -> None:
            self.root_docs.clear()
            await super().delete(key)

        async def _get_counted(self, key: str, prototype: Any, byte_range: Any) -> Any:
            for batch in list(self._prefetched.values()):
                if key in batch:
                    from shadows.io.remote_prefetch import serve

                    value = batch[key]
                    return None if value is None else prototype.buffer.from_bytes(serve(value, byte_range))
            try:
                out = await self._store.get(key, prototype, byte_range)
            except (FileNotFoundError, KeyError):
                raise
            except Exception as e:
                raise OSError(f"Reading '{key}' of '{self._url}' failed: {type(e).__name__}: {e}") from e
            _count(self._url, len(out) if out is not None else 0)
            return out

        async def prefetch(self, keys: list[str], width: int) -> int:
            """Fetch the objects at ``keys`` now, ``width`` at a time, and serve reads of them from memory until
            :meth:`drop_prefetched` of the token returned."""
            from shadows.io.remote_prefetch import fetch_all

            batch = await fetch_all(self, keys, width)
            token = id(batch)
            self._prefetched[token] = batch
            return token

        def drop_prefetched(self, token: int) -> None:
            """Forget the objects :meth:`prefetch` fetched under ``token``."""
            self._prefetched.pop(token, None)

        async def get_partial_values(self, prototype: Any, key_ranges: Any) -> Any:
            key_ranges = list(key_ranges)
            try:
                out = await self._store.get_partial_values(prototype, key_ranges)
            except Exception as e:
                raise OSError(f"Reading from '{self._url}' failed: {type(e).__name__}: {e}") from e
            for b in out:
                _count(self._url, len(b) if b is not None else 0)
            return out

        def __repr__(self) -> str:
            return f"CountingStore({self._url!r})"

    return _CountingStore


_CountingStoreClass: type | None = None


def CountingStore(store: Any, url: str, preloaded: dict[str, bytes | None] | None = None) -> Any:  # noqa: N802
    """``store`` wrapped so that every request is counted (:func:`counting`) and every failure names ``url``;
    ``preloaded`` (key -> bytes: metadata fetched while locating the store) is served once from memory.  (A class
    made on first use: zarr is imported late.)"""
    global _CountingStoreClass
    if _CountingStoreClass is None:
        _CountingStoreClass = _counting_store_class()
    return _CountingStoreClass(store, url, preloaded)


# --- the read cache for HDF5 ------------------------------------------------------------------------------------------
# HDF5 reads its metadata (object headers, B-tree nodes, local and global heaps) in pieces of tens to hundreds of
# bytes, scattered through an h5ad file (anndata writes each element's header next to its data).  A request per
# piece costs a round trip each (about 150 for opening a file and reading its shape), so small reads go through a
# cache, filled a little more than asked.  Reads of at least BLOCK bytes (the values of a selection) are fetched
# exactly as asked, in one request, and not cached: partial reads stay partial.  Smaller reads of values are
# fetched exactly too, beforehand and all at once, by the readers that know them (shadows.io.remote_h5.staged).
BLOCK = 64 * 1024
# The cache holds UNITs of 1 kB, and a miss fetches from its own unit on: at least SPEC_UNITS (an object header read
# of 512 bytes and the B-tree root HDF5 writes right after it), more where it follows cached units closely (HDF5
# is reading a metadata-dense stretch, e.g. a table's headers): as many units again as that cached run holds, so
# the window doubles while the reads stay together.  Why not aligned 64 kB blocks, as before:
# HDF5 writes each dataset's object header next to its raw data, and a block around each header brought values
# nobody asked for.  Measured on the 100k x 5k h5ad over HTTP (docs/benchmarks.md, "Remote stores"), requests / kB
# with 64 kB blocks, then with 1 kB units: open + shape 6 / 157, 4 / 13 (with HEAD_BYTES); 6 scattered cells
# (answer 24 kB) 34 / 339, 34 / 69; 1 gene of CSC 20 / 865, 21 / 404; 1000 contiguous cells 17, 15.
UNIT = 1024
PER_BLOCK = BLOCK // UNIT
SPEC_UNITS = 4
# In a heap walk a miss fetches HEAP_UNITS from its unit on: HDF5 reads a global heap collection (64 kB unless a
# string is larger) as its first 4 kB, then the rest; an aligned block cut each collection in two.  (Outside a
# heap walk, e.g. the strings of attributes, the rest is a second request: fetching 64 kB there instead saved one
# request and cost 56-118 kB more on "1 gene" of the 100k x 5k h5ad, whose collections there are 8 kB.)
HEAP_UNITS = 64
CACHE_BLOCKS = 512
CACHE_UNITS = CACHE_BLOCKS * PER_BLOCK
_SEQ_GAP = 8 * 1024  # a read starting at most this far past the previous one continues a sequential read
# Adaptive read-ahead of metadata blocks while h5py reads variable-length strings (RangeFile.heap_walk): HDF5
# reads them through its global heap, collection after collection, in pieces smaller than a block, so a block
# cache alone made one request per 64 kB of a 4.7 MB heap (60 requests for "open + obs column" of the 100k x 5k
# h5ad, where fsspec's 5 MB read-ahead made 30).  There, a miss near the units the last misses fetched (a "run")
# fetches the gap to the run plus twice as many units as the run holds, up to MAX_AHEAD blocks: the window grows
# while the reads stay together and falls back to HEAP_UNITS at a read elsewhere; walking backwards it stops at the
# strings' own IDs (see RangeFile.heap_walk), without leaving a sliver of heap below for one more request.  Twice,
# not once, as many: "open + obs column" 19 -> 18 requests, the same bytes (the 100k x 5k h5ad over HTTP).  Only
# in a heap walk: at open and for scattered reads the same rule fetched 0.3-0.9 MB more (object headers of obs and
# var lie near each other, but HDF5 reads only a few of their blocks).
MAX_AHEAD = 32  # blocks (2 MB)
MAX_SEQ_AHEAD = 2**20  # bytes: the read-ahead of unannounced sequential reads of values (RangeFile._exact_miss)
_BLOCKS: OrderedDict[tuple[Any, int], bytes] = OrderedDict()
_BLOCKS_LOCK = threading.Lock()


def _version(info: dict) -> Any:
    """What tells one version of a remote object from another in ``fs.info``'s answer (ETag, modified time)."""
    return info.get("ETag") or info.get("etag") or info.get("LastModified") or info.get("mtime")


def forget_blocks(url: str | None = None) -> None:
    """Drop the cached metadata of the remote HDF5 file at ``url`` (of every file if ``None``): the next
    read fetches them again (a benchmark measuring a first open; a file replaced in place with the same size)."""
    with _BLOCKS_LOCK:
        for k in [k for k in _BLOCKS if url is None or k[0][0] == url]:
            del _BLOCKS[k]


class RangeFile:
    """A read-only binary file over an fsspec filesystem: exact ranged requests for large reads, an LRU cache of
    1 kB units for small ones (HDF5's metadata, see ``UNIT``), and byte ranges staged beforehand (values about to
    be read, see :mod:`shadows.io.remote_h5`).  What h5py's ``fileobj`` driver reads from."""

    def __init__(self, fs: Any, path: str, url: str, size: int | None = None, version: Any = None):
        self.fs, self.path, self.url = fs, path, url
        if size is None:
            with _errors_named(url):
                info = fs.info(path)
            size, version = int(info["size"]), _version(info)
        self.size, self.version = size, version
        self.pos = 0
        self.block = BLOCK
        self._key = (url, size, str(version))
        self._staged: dict[int, list[tuple[int, bytes]]] = {}
        self._mode = threading.local()
        self._next_token = 0
        self._lock = threading.Lock()
        self.closed = False

    def __repr__(self) -> str:
        # h5py names the file by this; shadows.io.remote_h5 finds the RangeFile of a dataset by it
        return f"<shadows RangeFile {id(self):x} of {self.url}>"

    def seed(self, head: bytes) -> None:
        """Cache the file's first bytes ``head`` (read already, see ``HEAD_BYTES``), whole units only."""
        with _BLOCKS_LOCK:
            for u in range(min(len(head), self.size) // UNIT):
                _BLOCKS[(self._key, u)] = head[u * UNIT : (u + 1) * UNIT]

    # file protocol ---------------------------------------------------------------------------------------------------
    def seek(self, offset: int, whence: int = 0) -> int:
        """Move the position (``whence`` as for :meth:`io.IOBase.seek`); nothing is fetched."""
        self.pos = offset if whence == 0 else self.pos + offset if whence == 1 else self.size + offset
        return self.pos

    def tell(self) -> int:
        """The current position."""
        return self.pos

    def seekable(self) -> bool:
        """Always ``True``: every read is a ranged request."""
        return True

    def readable(self) -> bool:
        """Always ``True``."""
        return True

    def read(self, n: int = -1) -> bytes:
        """Read ``n`` bytes (the rest of the file if ``n < 0``) from the current position."""
        if n is None or n < 0:
            n = self.size - self.pos
        out = self.pread(self.pos, n)
        self.pos += len(out)
        return out

    def readinto(self, buf: Any) -> int:
        """Read into ``buf`` from the current position; the number of bytes read."""
        mv = memoryview(buf).cast("B")
        data = self.pread(self.pos, len(mv))
        mv[: len(data)] = data
        self.pos += len(data)
        return len(data)

    def close(self) -> None:
        """Forget the staged bytes; the shared metadata blocks and the filesystem's connections stay."""
        self.closed = True
        self._staged.clear()

    def __reduce__(self):
        return (RangeFile, (self.fs, self.path, self.url, self.size, self.version))

    # staged values ----------------------------------------------------------------------------------------------------
    def stage(self, ranges: list[tuple[int, int]]) -> int:
        """Fetch the byte ranges ``[(start, end), ...]`` now, all at once (concurrently where the filesystem is
        asynchronous), and serve reads inside them from memory until :meth:`unstage`; a token for that."""
        ranges = [(a, min(b, self.size)) for a, b in ranges if a < min(b, self.size)]
        if len(ranges) == 1:
            got = [self._fetch(*ranges[0])]
        else:
            got = self._fetch_many(ranges)
        with self._lock:
            token = self._next_token
            self._next_token += 1
            self._staged[token] = [(a, d) for (a, _), d in zip(ranges, got, strict=True)]
        return token

    def unstage(self, token: int) -> None:
        """Drop the bytes :meth:`stage` fetched under ``token``."""
        with self._lock:
            self._staged.pop(token, None)

    @contextmanager
    def exact(self) -> Iterator[None]:
        """Within the block (in this thread), small reads not in a cached block are fetched exactly as asked: the
        values of a selection, and the few B-tree nodes on the path to their chunks."""
        m = self._mode
        m.exact = getattr(m, "exact", 0) + 1
        try:
            yield
        finally:
            m.exact -= 1
            if not m.exact and getattr(m, "ahead", None) is not None:  # the read-ahead ends with the read
                self.unstage(m.ahead)
                m.ahead, m.last_end = None, None

    @contextmanager
    def expect(self, nbytes: int) -> Iterator[None]:
        """Within the block (in this thread, in :meth:`exact` mode), h5py reads about ``nbytes`` of values of one
        dataset: once its reads turn out sequential (a chunked array's chunks lie one after the other, a B-tree
        node of 2 kB now and then between them), the rest is fetched in one request instead of one per chunk
        (1000 contiguous cells of the 20k x 5k h5ad: 50 chunks of X/data, 50 of X/indices; 112 requests -> 8)."""
        m = self._mode
        saved = (
            getattr(m, "remaining", 0),
            getattr(m, "last_end", None),
            getattr(m, "ahead", None),
            getattr(m, "expecting", False),
        )
        m.remaining, m.last_end, m.ahead, m.expecting = nbytes, None, None, True
        try:
            yield
        finally:
            if m.ahead is not None:
                self.unstage(m.ahead)
            m.remaining, m.last_end, m.ahead, m.expecting = saved

    @contextmanager
    def heap_walk(self, raw: tuple[int, int] | None = None) -> Iterator[None]:
        """Within the block (in this thread), cache misses near the previous ones read ahead, more the longer
        they keep together (see ``MAX_AHEAD``): h5py reading variable-length strings through HDF5's global heap.
        ``raw``: the byte range of the strings' own dataset (its heap IDs), which h5py reads exactly: the read-ahead
        stops at it (HDF5 writes the heap right after it: reading back into it fetched 1.6 MB twice for the obs
        names of the 100k x 5k h5ad)."""
        m = self._mode
        saved = getattr(m, "run", None), getattr(m, "heap", False), getattr(m, "barrier", None)
        m.run, m.heap = None, True
        m.barrier = None if raw is None else (raw[0] // UNIT, (raw[1] - 1) // UNIT)
        try:
            yield
        finally:
            m.run, m.heap, m.barrier = saved

    def _exact_miss(self, start: int, end: int) -> bytes:
        """A read in :meth:`exact` mode that nothing cached or staged holds: exact, or the rest of a sequential
        read at once (see :meth:`expect`)."""
        m = self._mode
        remaining, last = getattr(m, "remaining", 0), getattr(m, "last_end", None)
        n = end - start
        sequential = last is not None and 0 <= start - last <= _SEQ_GAP
        if not sequential:
            m.streak_start = start
        if sequential and remaining > n:
            # the chunks that follow, plus the B-tree nodes that may lie between them (one of 2 kB per 64 chunks)
            ahead_end = min(self.size, start + remaining + remaining // 32 + _SEQ_GAP)
        elif sequential and not getattr(m, "expecting", False):
            # sequential reads nobody announced (a reader without expect()): read ahead as much as the run has
            # read so far, at most MAX_SEQ_AHEAD: 200 genes of the 100k x 5k CSC h5ad, 170 chunks of X/data and
            # X/indices one request each, now ~35 requests, and at most MAX_SEQ_AHEAD more bytes at a run's end
            run = start - getattr(m, "streak_start", start)
            ahead_end = min(self.size, start + max(n, min(run, MAX_SEQ_AHEAD)))
        else:
            ahead_end = None
        if ahead_end is not None and ahead_end > end:
            if getattr(m, "ahead", None) is not None:
                self.unstage(m.ahead)
            m.ahead = self.stage([(start, ahead_end)])
            data = self._from_staged(start, end)
        else:
            data = self._fetch(start, end)
        m.last_end = end
        m.remaining = max(0, remaining - n)
        return data

    def has(self, start: int, end: int) -> bool:
        """Whether ``[start, end)`` lies in bytes staged now."""
        return self._from_staged(start, end) is not None

    def _from_staged(self, start: int, end: int) -> bytes | None:
        if not self._staged:
            return None
        with self._lock:
            for pieces in self._staged.values():
                for a, d in pieces:
                    if a <= start and end <= a + len(d):
                        return d[start - a : end - a]
        return None

    # reading ----------------------------------------------------------------------------------------------------------
    def pread(self, start: int, n: int) -> bytes:
        """``n`` bytes at ``start``: staged, else one exact request if large, else from the block cache."""
        end = min(start + n, self.size)
        if end <= start:
            return b""
        staged = self._from_staged(start, end)
        if staged is not None:
            if getattr(self._mode, "exact", 0):
                self._mode.last_end = end
                self._mode.remaining = max(0, getattr(self._mode, "remaining", 0) - (end - start))
            return staged
        if getattr(self._mode, "exact", 0) and (end - start >= BLOCK or not self._cached(start, end)):
            return self._exact_miss(start, end)
        if end - start >= BLOCK:
            return self._fetch(start, end)
        first, last = start // UNIT, (end - 1) // UNIT
        key = self._key
        with _BLOCKS_LOCK:
            got = {u: _BLOCKS.get((key, u)) for u in range(first, last + 1)}
            for u in got:
                if got[u] is not None:
                    _BLOCKS.move_to_end((key, u))
        missing = [u for u, v in got.items() if v is None]
        if missing:
            lo, hi = missing[0], missing[-1]
            lo, hi = self._ahead(lo, hi) if getattr(self._mode, "heap", False) else self._widen(lo, hi)
            data = self._fetch(lo * UNIT, min((hi + 1) * UNIT, self.size))
            with _BLOCKS_LOCK:
                for u in range(lo, hi + 1):
                    piece = data[(u - lo) * UNIT : (u - lo + 1) * UNIT]
                    _BLOCKS[(key, u)] = piece
                    if u in got:
                        got[u] = piece
                while len(_BLOCKS) > CACHE_UNITS:
                    _BLOCKS.popitem(last=False)
        joined = b"".join(got[u] for u in range(first, last + 1))
        off = start - first * UNIT
        return joined[off : off + (end - start)]

    def _n_units(self) -> int:
        return -(-self.size // UNIT)

    def _widen(self, lo: int, hi: int) -> tuple[int, int]:
        """The units to fetch for a miss of units ``lo..hi`` outside a heap walk: from ``lo`` on, ``SPEC_UNITS``,
        or, where the miss follows cached units within ``SPEC_UNITS``, the gap and as many units as that cached run
        holds (at most a BLOCK), up to the next cached unit."""
        key = self._key
        with _BLOCKS_LOCK:
            start = self._from_cached(lo, lo - SPEC_UNITS)
            run = 0
            while run < PER_BLOCK and start - 1 - run >= 0 and (key, start - 1 - run) in _BLOCKS:
                run += 1
            if not run:
                start = lo
            return start, self._until_cached(hi, lo + max(SPEC_UNITS, run) - 1)

    def _until_cached(self, hi: int, want: int) -> int:
        """``want`` (a unit), or less: not past the file's end nor past the first cached unit after ``hi``."""
        want = min(self._n_units() - 1, want)
        end = hi
        while end < want and (self._key, end + 1) not in _BLOCKS:
            end += 1
        return end

    def _from_cached(self, lo: int, want: int) -> int:
        """``want`` (a unit), or more: not before the file's start nor before the first cached unit below ``lo``."""
        want = max(0, want)
        start = lo
        while start > want and (self._key, start - 1) not in _BLOCKS:
            start -= 1
        return start

    def _ahead(self, lo: int, hi: int) -> tuple[int, int]:
        """The units to fetch for a miss of units ``lo..hi`` in a heap walk: ``HEAP_UNITS`` from ``lo`` (a
        collection), or, next to the run of the last misses, also the gap to it and a read-ahead twice as long as
        the run (see ``MAX_AHEAD``), never past a cached unit."""
        key = self._key
        run = self._mode.run
        if run is not None:
            r_lo, r_hi = run
            reach = min(MAX_AHEAD * PER_BLOCK, 2 * (r_hi - r_lo + 1))
            if r_hi < lo <= r_hi + 1 + reach:  # forward: from the run's end through the read-ahead
                new_lo = r_hi + 1
                with _BLOCKS_LOCK:
                    while new_lo < lo and (key, new_lo) in _BLOCKS:
                        new_lo += 1
                    end = self._until_cached(hi, max(hi + reach, lo + HEAP_UNITS - 1))
                new_lo, end = self._clip(lo, hi, new_lo, end)
                self._mode.run = (r_lo, end)
                return new_lo, end
            if r_lo - 1 - reach <= hi < r_lo:  # backward: HDF5 walks the heap's collections from the last one
                new_lo, new_hi = max(0, lo - reach), r_lo - 1
                barrier = getattr(self._mode, "barrier", None)
                floor = barrier[1] if barrier is not None and lo >= barrier[1] else 0
                if new_lo - floor <= HEAP_UNITS:  # no sliver of the heap left below for one more request
                    new_lo = floor
                with _BLOCKS_LOCK:
                    while new_hi > hi and (key, new_hi) in _BLOCKS:
                        new_hi -= 1
                    start = self._from_cached(lo, new_lo)
                start, new_hi = self._clip(lo, hi, start, new_hi)
                self._mode.run = (start, r_hi)
                return start, new_hi
        with _BLOCKS_LOCK:
            hi = self._until_cached(hi, lo + HEAP_UNITS - 1)
        lo, hi = self._clip(lo, hi, lo, hi)
        self._mode.run = (lo, hi)
        return lo, hi

    def _clip(self, lo: int, hi: int, a: int, b: int) -> tuple[int, int]:
        """The read-ahead ``a..b`` around a miss of ``lo..hi``, cut short of the heap walk's barrier (see
        :meth:`heap_walk`); the miss itself is always fetched."""
        barrier = getattr(self._mode, "barrier", None)
        if barrier is None:
            return a, b
        b_lo, b_hi = barrier
        if lo >= b_hi:  # the unit at an edge holds both the end of the IDs and the start of the heap
            a = max(a, b_hi)
        elif hi <= b_lo:
            b = min(b, b_lo)
        return a, b

    def _cached(self, start: int, end: int) -> bool:
        key = self._key
        with _BLOCKS_LOCK:
            return all((key, u) in _BLOCKS for u in range(start // UNIT, (end - 1) // UNIT + 1))

    def _fetch(self, start: int, end: int) -> bytes:
        try:
            data = self.fs.cat_file(self.path, start=start, end=end)
        except Exception as e:
            raise OSError(f"Reading bytes {start}-{end} of '{self.url}' failed: {type(e).__name__}: {e}") from e
        if len(data) != end - start:
            raise OSError(f"Reading bytes {start}-{end} of '{self.url}': got {len(data)} bytes")
        _count(self.url, len(data), start)
        return data

    def _fetch_many(self, ranges: list[tuple[int, int]]) -> list[bytes]:
        """Several byte ranges in one concurrent batch (fsspec's ``cat_ranges``): a failure is an error, never a
        short result."""
        n = len(ranges)
        try:
            got = self.fs.cat_ranges([self.path] * n, [a for a, _ in ranges], [b for _, b in ranges])
        except Exception as e:
            raise OSError(f"Reading {n} byte ranges of '{self.url}' failed: {type(e).__name__}: {e}") from e
        for (a, b), d in zip(ranges, got, strict=True):
            if isinstance(d, BaseException):
                raise OSError(f"Reading bytes {a}-{b} of '{self.url}' failed: {type(d).__name__}: {d}") from d
            if len(d) != b - a:
                raise OSError(f"Reading bytes {a}-{b} of '{self.url}': got {len(d)} bytes")
            _count(self.url, len(d), a)
        return got


def _with_defaults(url: str, storage_options: dict | None) -> dict:
    """``storage_options`` with the defaults shadows reads best with, where the user set none.

    s3fs (2024.12 on) asks an object's size (a HEAD request) before every whole-object read, to split large ones
    into concurrent ranged reads (``max_concurrency=10`` by default): zarr reads its chunks and metadata whole, so
    each cost two round trips.  With ``max_concurrency=1`` a whole-object read is one GET: on the 100k x 5k zarr v2
    store on S3, "open + obs column" made 14 requests, now 7.  Ranged reads (h5ad) are one GET either way.
    """
    options = dict(storage_options or {})
    if url.split("://", 1)[0] in ("s3", "s3a"):
        options.setdefault("max_concurrency", 1)
    return options


def locate_output(dest: Any, storage_options: dict | None = None) -> Target:
    """Where a new store goes: a URL (with ``storage_options``), an ``FSMap``, a zarr store object (nothing is
    looked up: the destination need not exist)."""
    if isinstance(dest, RemotePath):
        return dest.target
    if isinstance(dest, str):
        import fsspec

        fs, path = fsspec.core.url_to_fs(dest, **_with_defaults(dest, storage_options))
        return Target(dest, fs=fs, path=path, kind="zarr")
    kind = _kind_of_object(dest)
    if kind == "mapper":
        return Target(dest.fs.unstrip_protocol(dest.root), fs=dest.fs, path=dest.root, kind="zarr")
    if kind == "store":
        return Target(_store_url(dest), store=dest, kind="zarr")
    raise TypeError(f"Cannot write a zarr store to a {type(dest).__name__}: give a URL, an FSMap or a zarr store")
