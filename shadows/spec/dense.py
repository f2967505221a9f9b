"""Readers of plain arrays (``array``, ``string-array``, scalars): the selected hyperslab, never more.

h5py accepts only increasing positions and one list per selection, so positions are sorted and de-duplicated,
grouped into coalesced ranges along the first axis, read range by range, and put back in the order asked for.
zarr's orthogonal indexing takes one array per axis, so it gets the sorted positions directly.
"""

from __future__ import annotations

from typing import Any

import anndata
import numpy as np

from shadows.io.fast.pread import read_rows
from shadows.io.storage import is_h5, read_raw
from shadows.spec import selection as ix
from shadows.spec.registry import ReadContext, register_reader
from shadows.spec.whole import read_all, wants_bar

# Largest gap (in rows) bridged when coalescing scattered rows into one read: reading a few unwanted rows costs
# less than another storage call.  Scaled by row size in ``_gap_rows``.
_GAP_BYTES = 256 * 1024


def _gap_rows(arr: Any) -> int:
    # variable-length strings report the size of a pointer, but each one read costs a decode: bridge few of them
    itemsize = 256 if arr.dtype.kind in "OSUT" else max(arr.dtype.itemsize, 1)
    row_bytes = max(1, int(np.prod(arr.shape[1:], dtype=np.int64)) * itemsize)
    return max(1, _GAP_BYTES // row_bytes)


def _as_key(sel: ix.Sel) -> Any:
    return slice(None) if sel is None else sel


def read_dense(arr: Any, sel: tuple = ()) -> np.ndarray:
    """Read ``arr`` restricted to ``sel`` (one selection per leading axis), in the order ``sel`` gives."""
    ndim = len(arr.shape)
    if ndim == 0:
        return read_raw(arr, ())
    sel = tuple(sel[:ndim]) + (None,) * (ndim - len(sel))
    if all(s is None for s in sel):
        if wants_bar(arr):  # a large read in an interactive session: show its progress
            return read_all([arr], f"reading {arr.name}")[0]
        if is_h5(arr) and (out := read_rows(arr, 0, arr.shape[0])) is not None:
            return out
        return read_raw(arr, ())
    out_shape = tuple(ix.length(s, n) for s, n in zip(sel, arr.shape, strict=True))
    if 0 in out_shape:
        # nothing to read: h5py fails on an empty axis combined with a list of >= 16 positions on another one
        # ("Dataspaces don't have hyperslab selections"); an empty read of the element keeps its dtype as read
        return read_raw(arr, tuple(slice(0, 0) for _ in arr.shape)).reshape(out_shape)
    uniq, inverse = [], []
    for s, n in zip(sel, arr.shape, strict=False):
        u, inv = ix.sorted_unique(s, n)
        uniq.append(u)
        inverse.append(inv)
    if is_h5(arr):
        out = _read_h5(arr, uniq)
    else:
        keys = tuple(_as_key(u) for u in uniq)
        if all(not isinstance(k, np.ndarray) for k in keys):
            out = read_raw(arr, keys)
        else:
            out = arr.oindex[keys]
    for axis, inv in enumerate(inverse):
        if inv is not None:
            out = np.take(out, inv, axis=axis)
    return out


def _read_h5(arr: Any, uniq: list) -> np.ndarray:
    first, rest = uniq[0], [_as_key(u) for u in uniq[1:]]
    fancy_rest = [i for i, k in enumerate(rest) if isinstance(k, np.ndarray)]
    # h5py allows one list per read: lists beyond the first axis but one are applied in memory after the read
    if len(fancy_rest) > 1:
        keep = fancy_rest[0]
        post = {i + 1: rest[i] for i in fancy_rest[1:]}
        rest = [k if (i == keep or not isinstance(k, np.ndarray)) else slice(None) for i, k in enumerate(rest)]
    else:
        post = {}
    rest = [k if not (isinstance(k, np.ndarray) and len(k) == 0) else slice(0, 0) for k in rest]
    if (
        isinstance(first, slice)
        and first.step in (None, 1)
        and all(isinstance(k, slice) and k == slice(None) for k in rest)
        and not post
    ):
        # a block of whole rows of a contiguous array is one range of bytes: read it raw (see shadows.io.fast.pread)
        a, b, _ = first.indices(arr.shape[0])
        out = read_rows(arr, a, max(a, b))
        if out is not None:
            return out
    if first is None or isinstance(first, slice):
        out = read_raw(arr, (_as_key(first), *rest))
    elif len(first) == 0:
        out = read_raw(arr, (slice(0, 0), *rest))
    else:
        blocks = []
        for start, stop, members in ix.runs(first, _gap_rows(arr)):
            block = read_raw(arr, (slice(start, stop), *rest))
            blocks.append(block if stop - start == len(members) else block[members - start])
        out = np.concatenate(blocks, axis=0) if len(blocks) > 1 else blocks[0]
    for axis, k in post.items():
        out = np.take(out, k, axis=axis)
    return out


@register_reader("array", "0.2.0")
@register_reader("string-array", "0.2.0")
@register_reader("legacy-array")
def read_array(elem: Any, sel: tuple, ctx: ReadContext) -> Any:
    """Reader of dense arrays: a selection through :func:`read_dense`, a whole zarr array through anndata."""
    if all(s is None for s in sel) and not is_h5(elem) and elem.shape != ():
        # anndata's own reader for whole zarr arrays: the exact dtype anndata hands out (strings in zarr v3)
        return anndata.io.read_elem(elem)
    return read_dense(elem, sel)


@register_reader("numeric-scalar", "0.2.0")
@register_reader("string", "0.2.0")
@register_reader("null", "0.1.0")
@register_reader("bytes", "0.2.0")
@register_reader("rec-array", "0.2.0")
def read_whole_via_anndata(elem: Any, sel: tuple, ctx: ReadContext) -> Any:
    """Small elements anndata decodes in its own way: read whole through ``anndata.io.read_elem``."""
    return anndata.io.read_elem(elem)
