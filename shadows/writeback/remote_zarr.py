"""Write-back into a remote zarr store: a shadow's pending changes, in the order an object store allows crash safety.

An object store has no rename and no directory: an element becomes visible to a reader when the metadata that
describe it exist (``zarr.json``, or ``.zarray``/``.zgroup``/``.zattrs``) and, for a reader going by consolidated
metadata, when those list it.  So a write here is ordered:

1. each new element is written by anndata into an in-memory zarr store, then uploaded: its chunks first (all at
   once, concurrently), its metadata last, deepest first - a writer killed before the end leaves unreferenced
   chunks, never a node whose metadata point at missing chunks;
2. obs/var ``column-order`` is rewritten only after the columns it names are complete, and columns leave the
   store only after it no longer names them;
3. removed elements lose their metadata first, then their chunks;
4. the consolidated metadata (if the store had them) are written again last.

Writing into a remote HDF5 file is refused (:func:`shadows.io.remote.open_h5` says why and what to do instead).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import zarr
from anndata.io import write_elem

from shadows.io.remote_store import delete_all, invalidate, is_meta, list_keys, set_all, sync
from shadows.io.storage import Storage

if TYPE_CHECKING:
    from shadows.writeback.steps import Plan


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
        invalidate(store)
        if consolidated:  # last: readers going by the consolidated metadata see the new elements from here on
            zarr.consolidate_metadata(store)
    finally:
        invalidate(_store_of(storage))
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
    old = set(sync(list_keys(store, path + "/")))
    data = [k for k in items if not is_meta(k)]
    meta = sorted((k for k in items if is_meta(k)), key=lambda k: -k.count("/"))
    sync(set_all(store, [(k, items[k]) for k in data]))
    for k in meta:
        sync(store.set(k, items[k]))
    stale = old - set(items)  # chunks of an element replaced: unreferenced now
    sync(delete_all(store, [k for k in stale if not is_meta(k)] + [k for k in stale if is_meta(k)]))


def _remove(store: Any, path: str) -> None:
    """Remove the element at ``path``: its metadata first (it disappears), then its chunks."""
    keys = sync(list_keys(store, path + "/"))
    meta = sorted((k for k in keys if is_meta(k)), key=lambda k: k.count("/"))
    for k in meta:
        sync(store.delete(k))
    sync(delete_all(store, [k for k in keys if not is_meta(k)]))
