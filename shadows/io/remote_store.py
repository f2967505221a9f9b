"""Object-store primitives for writing into remote zarr stores: listing, uploading and deleting many keys at once.

An object store has no rename and no directory: an element becomes visible when the metadata that describe it
exist, so every writer orders its requests (chunks first, metadata last, deepest first; consolidated metadata last
of all).  These are the requests themselves, issued concurrently through zarr's async store API; the orderings
live with the writers (:mod:`shadows.writeback.remote_zarr`, :mod:`shadows.stream.remote_output`).
"""

from __future__ import annotations

import asyncio
from typing import Any

META_KEYS = ("zarr.json", ".zarray", ".zgroup", ".zattrs")


def sync(coro: Any) -> Any:
    """Run a coroutine of zarr's async store API on zarr's own event loop and return its result."""
    from zarr.core.sync import sync

    return sync(coro)


def is_meta(key: str) -> bool:
    """Whether a store key holds metadata (a node's description) rather than a chunk."""
    return key.rsplit("/", 1)[-1] in META_KEYS


async def list_keys(store: Any, prefix: str) -> list[str]:
    """The keys of ``store`` under ``prefix``."""
    return [k async for k in store.list_prefix(prefix)]


async def set_all(store: Any, items: list[tuple[str, Any]]) -> None:
    """Upload every ``(key, buffer)`` at once."""
    await asyncio.gather(*(store.set(k, v) for k, v in items))


async def delete_all(store: Any, keys: list[str]) -> None:
    """Delete every key at once."""
    await asyncio.gather(*(store.delete(k) for k in keys))


async def copy_all(src: Any, dst: Any, keys: list[str], width: int = 32) -> None:
    """Copy ``keys`` from ``src`` to ``dst``, ``width`` requests at a time."""
    from zarr.core.buffer import default_buffer_prototype

    sem = asyncio.Semaphore(width)

    async def one(k: str) -> None:
        async with sem:
            buf = await src.get(k, default_buffer_prototype())
            await dst.set(k, buf)

    await asyncio.gather(*(one(k) for k in keys))


async def exists_any(store: Any, keys: list[str]) -> bool:
    """Whether any of ``keys`` exists in ``store``."""
    for k in keys:
        if await store.exists(k):
            return True
    return False


def invalidate(store: Any) -> None:
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
