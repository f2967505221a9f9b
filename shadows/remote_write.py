"""Writing into remote zarr stores: pending changes of a shadow, and new stores streamed from a shadow.

An object store has no rename and no directory: an element becomes visible to a reader when the metadata that
describe it exist (``zarr.json``, or ``.zarray``/``.zgroup``/``.zattrs``) and, for a reader going by consolidated
metadata, when those list it.  So a write here is ordered as the object store allows crash safety:

1. each new element is written by anndata into an in-memory zarr store, then uploaded: its chunks first (all at
   once, concurrently), its metadata last, deepest first - a writer killed before the end leaves unreferenced
   chunks, never a node whose metadata point at missing chunks;
2. obs/var ``column-order`` is rewritten only after the columns it names are complete, and columns leave the
   store only after it no longer names them;
3. removed elements lose their metadata first, then their chunks;
4. the consolidated metadata (if the store had them) are written again last.

Writing into a remote HDF5 file is refused (:func:`shadows.remote.open_h5` says why and what to do instead).
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import Callable
from typing import Any

import zarr
from anndata.io import write_elem

from .remote import RemotePath, locate_output, zarr_store
from .storage import Storage
from .write import Plan

__all__ = ["RemoteOutput", "apply_remote_zarr"]

_META = ("zarr.json", ".zarray", ".zgroup", ".zattrs")


def _sync(coro: Any) -> Any:
    from zarr.core.sync import sync

    return sync(coro)


def _is_meta(key: str) -> bool:
    return key.rsplit("/", 1)[-1] in _META


def _store_of(storage: Storage) -> Any:
    return storage.file.store


def apply_remote_zarr(storage: Storage, plan: Plan, done: Callable[[Any], None]) -> None:
    """Write ``plan`` into the remote zarr store of ``storage``; ``done(op)`` after each operation is complete."""
    try:
        root = storage.file
        store = root.store
        fmt = root.metadata.zarr_format
        consolidated = root.metadata.consolidated_metadata is not None
        base = storage.inner

        def full(p: str) -> str:
            return f"{base}/{p}" if base else p

        for op in plan.ops:
            if op.is_delete:
                _remove(store, full(op.path))
            else:
                _place(store, full(op.path), op.value, fmt, storage.describe())
            for p in op.also_remove:
                _remove(store, full(p))
            done(op)
        for fe in plan.frames:
            for col, values in fe.puts.items():
                _place(store, full(f"{fe.path}/{col}"), values, fmt, storage.describe())
            if fe.index is not None:
                _place(store, full(f"{fe.path}/{fe.index_key}"), fe.index, fmt, storage.describe())
            group = zarr.open_group(store, path=full(fe.path), mode="r+", use_consolidated=False)
            group.attrs["column-order"] = list(fe.new_order)
            for col in fe.removed:
                _remove(store, full(f"{fe.path}/{col}"))
            done(fe)
        _invalidate(store)
        if consolidated:  # last: readers going by the consolidated metadata see the new elements from here on
            zarr.consolidate_metadata(store)
    finally:
        _invalidate(_store_of(storage))
        storage.open(storage.mode)  # the open group holds the old (consolidated) metadata


def _place(store: Any, path: str, value: Any, fmt: int, where: str) -> None:
    """Write ``value`` as the element at ``path``: chunks first, metadata last (deepest first)."""
    mem = zarr.storage.MemoryStore()
    group = zarr.open_group(mem, mode="w", zarr_format=fmt)
    try:
        write_elem(group, "e", value)
    except Exception as e:
        raise type(e)(f"Cannot write '{where}/{path}' ({type(value).__name__}): {e}") from e
    items = {f"{path}/{k[2:]}" if k != "e" else path: v for k, v in mem._store_dict.items() if k.startswith("e/")}
    old = set(_sync(_list(store, path + "/")))
    data = [k for k in items if not _is_meta(k)]
    meta = sorted((k for k in items if _is_meta(k)), key=lambda k: -k.count("/"))
    _sync(_set_all(store, [(k, items[k]) for k in data]))
    for k in meta:
        _sync(store.set(k, items[k]))
    stale = old - set(items)  # chunks of an element replaced: unreferenced now
    _sync(_delete_all(store, [k for k in stale if not _is_meta(k)] + [k for k in stale if _is_meta(k)]))


def _remove(store: Any, path: str) -> None:
    """Remove the element at ``path``: its metadata first (it disappears), then its chunks."""
    keys = _sync(_list(store, path + "/"))
    meta = sorted((k for k in keys if _is_meta(k)), key=lambda k: k.count("/"))
    for k in meta:
        _sync(store.delete(k))
    _sync(_delete_all(store, [k for k in keys if not _is_meta(k)]))


async def _list(store: Any, prefix: str) -> list[str]:
    return [k async for k in store.list_prefix(prefix)]


async def _set_all(store: Any, items: list[tuple[str, Any]]) -> None:
    await asyncio.gather(*(store.set(k, v) for k, v in items))


async def _delete_all(store: Any, keys: list[str]) -> None:
    await asyncio.gather(*(store.delete(k) for k in keys))


def _invalidate(store: Any) -> None:
    """Forget the filesystem's cached listings (s3fs keeps them): the next listing sees what was written."""
    inner = store
    while inner is not None and not hasattr(inner, "fs"):
        inner = getattr(inner, "_store", None)
    fs = getattr(inner, "fs", None)
    if fs is not None:
        try:
            fs.invalidate_cache()
        except Exception:
            pass


# --- new stores streamed from a shadow ---------------------------------------------------------------------------------
class RemoteOutput:
    """A new zarr store at a remote destination (what :class:`shadows.sink.Output` is for local paths).

    The store is written into a local staging directory first (zarr writes one object per request: uploading
    them afterwards, many at a time, is what makes a remote output fast), then uploaded by :meth:`commit` in the
    order an object store allows crash safety: chunks first, metadata deepest first, consolidated metadata last.
    An existing store is refused unless ``overwrite=True``.
    """

    def __init__(self, dest: Any, kind: str, zarr_format: int | None = None, *, overwrite: bool = False, **kw: Any):
        target = locate_output(dest, kw.get("storage_options"))
        self.path = RemotePath(target)
        url = target.url
        if kind != "zarr":
            raise ValueError(
                f"Cannot write an h5ad file to '{url}': HDF5 files are written locally (write_h5ad to a local path, "
                "then upload it), or write a zarr store there (write_zarr)"
            )
        store = target.store if target.store is not None else zarr_store(target.fs, target.path, read_only=False)
        if getattr(store, "read_only", False):
            store = store.with_read_only(False)
        self.store = store
        self.existing = _sync(_exists_any(store, ["zarr.json", ".zgroup", ".zattrs", ".zmetadata"]))
        if self.existing and not overwrite:
            raise FileExistsError(f"'{url}' already holds a zarr store; pass overwrite=True to replace it")
        if zarr_format is None:
            import anndata

            zarr_format = int(getattr(anndata.settings, "zarr_write_format", 2))
        self._stage = tempfile.mkdtemp(prefix="shadows-remote-output-")
        self.root = zarr.open_group(self._stage, mode="w", zarr_format=zarr_format)

    def __enter__(self) -> RemoteOutput:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        import shutil

        shutil.rmtree(self._stage, ignore_errors=True)

    def commit(self) -> RemotePath:
        zarr.consolidate_metadata(self._stage)
        local = zarr.storage.LocalStore(self._stage, read_only=True)
        keys = _sync(_list(local, ""))
        consolidated = {".zmetadata", "zarr.json"}  # the root's: last of all
        data = [k for k in keys if not _is_meta(k) and k != ".zmetadata"]
        meta = sorted((k for k in keys if _is_meta(k) and k not in consolidated), key=lambda k: -k.count("/"))
        last = [k for k in keys if k in consolidated]
        if self.existing:  # overwrite=True: the old store's objects go first (the new ones cannot mix with them)
            _sync(_delete_all(self.store, _sync(_list(self.store, ""))))
        for batch in (data, meta):
            _sync(_copy_all(local, self.store, batch))
        for k in sorted(last, key=lambda k: k == ".zmetadata"):
            _sync(_copy_all(local, self.store, [k]))
        _invalidate(self.store)
        return self.path


async def _copy_all(src: Any, dst: Any, keys: list[str], width: int = 32) -> None:
    from zarr.core.buffer import default_buffer_prototype

    sem = asyncio.Semaphore(width)

    async def one(k: str) -> None:
        async with sem:
            buf = await src.get(k, default_buffer_prototype())
            await dst.set(k, buf)

    await asyncio.gather(*(one(k) for k in keys))


async def _exists_any(store: Any, keys: list[str]) -> bool:
    for k in keys:
        if await store.exists(k):
            return True
    return False


def write_subset_remote(
    shadow: Any, dest: Any, file_format: str, zarr_format: int | None, overwrite: bool, opts: Any, progress: bool | None
) -> RemotePath:
    """:func:`shadows.stream.write_subset` into a remote zarr store (after its checks of names and options)."""
    from .stream_write import write_anndata

    if opts.tmpdir is None or not os.path.isdir(opts.tmpdir):
        opts.tmpdir = tempfile.gettempdir()
    out = RemoteOutput(dest, "h5" if file_format == "h5ad" else "zarr", zarr_format, overwrite=overwrite)
    with out:
        write_anndata(shadow, out.root, options=opts, progress=progress)
        return out.commit()
