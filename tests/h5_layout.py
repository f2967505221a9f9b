"""Where an HDF5 file keeps its values: the byte ranges of every dataset's raw data, and how many of a remote read's
fetched bytes fell in them (the rest is HDF5's metadata).  Used by tests/test_remote.py and benchmarks/remote.py to
split what a read fetched by the file's own layout."""

from __future__ import annotations

import bisect
from pathlib import Path

import h5py

from shadows.io.remote_h5 import coalesce


def raw_extents(path: str | Path) -> dict[str, list[tuple[int, int]]]:
    """Per dataset of an HDF5 file, the byte ranges that hold its values (contiguous data, every chunk); the rest of
    the file is HDF5 metadata: superblock, object headers, B-tree nodes, local and global heaps (the latter hold
    the characters of variable-length strings)."""
    out: dict[str, list[tuple[int, int]]] = {}

    def visit(name, obj):
        if not isinstance(obj, h5py.Dataset):
            return
        ext = out.setdefault(name, [])
        if obj.chunks is None:
            off = obj.id.get_offset()
            if off is not None:
                ext.append((off, off + obj.id.get_storage_size()))
        else:
            obj.id.chunk_iter(lambda ci: ext.append((ci.byte_offset, ci.byte_offset + ci.size)))

    with h5py.File(path, "r") as f:
        f.visititems(visit)
    return out


def merged(extents: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted, overlapping or touching ranges merged."""
    return coalesce(extents, gap=0)


def data_bytes(spans: list[tuple[str, int, int]], extents: list[tuple[int, int]]) -> int:
    """How many of the fetched bytes (``spans``: url, start, end, as :class:`shadows.remote.Counts` keeps them)
    lie in datasets' values (``extents``, merged)."""
    starts = [a for a, _ in extents]
    total = 0
    for _url, a, b in spans:
        i = max(0, bisect.bisect_right(starts, a) - 1)
        while i < len(extents) and extents[i][0] < b:
            lo, hi = max(a, extents[i][0]), min(b, extents[i][1])
            total += max(0, hi - lo)
            i += 1
    return total
