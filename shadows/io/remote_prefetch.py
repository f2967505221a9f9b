"""Whole tables of a remote zarr store fetched in one concurrent batch.

Reading a table (``obs``, ``var``) column by column asks zarr for one array after another: over a network each is
a round trip (``obs`` with one categorical column: the index, the codes, the categories; 3 round trips one after
another, 60 ms at 20 ms per request, where read_lazy's whole open took 5).  When the whole table is read and the
store's consolidated metadata names its arrays, :func:`prefetched` fetches every chunk (or shard) of them at once
and serves zarr's reads from memory while the table is read; nothing else changes.  Local stores, stores without
consolidated metadata (listing a bucket costs more than it saves) and tables larger than ``MAX_BYTES`` are read as
before.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["prefetched"]

# Above this many bytes of values (uncompressed) a table is read column by column, as before: its chunks would all
# sit in memory at once besides the decoded columns.
MAX_BYTES = 256 * 2**20
_WIDTH = 16  # requests in flight at once


@contextmanager
def prefetched(group: Any) -> Iterator[None]:
    """Within the block, zarr's reads of the chunks of the arrays under ``group`` (a zarr group of a remote store
    opened by shadows) are served from bytes fetched at the start, all at once; anything else does nothing."""
    store = getattr(group, "store", None)
    keys = _chunk_keys(group) if hasattr(store, "prefetch") else []
    if not keys:
        yield
        return
    from shadows.io.remote_store import sync

    token = sync(store.prefetch(keys, _WIDTH))
    try:
        yield
    finally:
        store.drop_prefetched(token)


def _chunk_keys(group: Any) -> list[str]:
    import zarr

    meta = getattr(getattr(group, "metadata", None), "consolidated_metadata", None)
    if meta is None:
        return []
    keys, total = [], 0
    for _name, arr in group.members(max_depth=None):
        if not isinstance(arr, zarr.Array):
            continue
        total += arr.nbytes
        if total > MAX_BYTES:
            return []
        md = arr.metadata
        grid = md.chunk_grid.chunk_shape if hasattr(md, "chunk_grid") else md.chunks
        counts = [-(-int(n) // int(c)) for n, c in zip(arr.shape, grid, strict=True)]
        for coords in itertools.product(*(range(n) for n in counts)):
            keys.append(f"{arr.path}/{md.encode_chunk_key(coords)}")
    return keys


async def fetch_all(store: Any, keys: list[str], width: int) -> dict[str, bytes | None]:
    """The objects at ``keys`` of ``store`` (``None`` for a missing one: a chunk of fill values), ``width`` at a
    time."""
    from zarr.core.buffer import default_buffer_prototype

    sem = asyncio.Semaphore(width)

    async def one(k: str) -> tuple[str, bytes | None]:
        async with sem:
            buf = await store.get(k, default_buffer_prototype())
            return k, None if buf is None else buf.to_bytes()

    return dict(await asyncio.gather(*(one(k) for k in keys)))


def serve(data: bytes, byte_range: Any) -> bytes:
    """The part of a whole object zarr asks for (``RangeByteRequest``, ``OffsetByteRequest``,
    ``SuffixByteRequest`` or ``None``)."""
    if byte_range is None:
        return data
    if hasattr(byte_range, "suffix"):
        return data[len(data) - byte_range.suffix :]
    if hasattr(byte_range, "offset"):
        return data[byte_range.offset :]
    return data[byte_range.start : byte_range.end]
