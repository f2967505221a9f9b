"""Index handling: turn every indexer anndata accepts into positions, compose views, plan partial reads.

A normalised 1-D selection (``Sel``) is ``None`` (everything), a ``slice`` with a positive step and concrete
bounds, or a 1-D ``int64`` array of positions (any order, repeats allowed).  Nothing here touches a file.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

Sel = None | slice | np.ndarray


def _anndata_013() -> bool:
    # importlib.metadata, not ``anndata.__version__``: that attribute is deprecated and warns on access
    from importlib.metadata import version

    return tuple(int(p) for p in version("anndata").split(".")[:2] if p.isdigit()) >= (0, 13)


_ANNDATA_013 = _anndata_013()

AXIS_NAMES = {0: "obs", 1: "var"}


def normalize(indexer: Any, names: pd.Index | None, n: int, axis: int) -> Sel:
    """Normalise one axis of an indexer.

    Parameters
    ----------
    indexer
        int, negative int, slice (positions or names), int array, bool mask, name, names, ``pd.Index``...
    names
        The names along this axis (only consulted for name-based indexers; may be ``None`` when not needed).
    n
        Length of the axis.
    axis
        0 for obs, 1 for var (named in error messages).
    """
    ax = AXIS_NAMES.get(axis, str(axis))
    if indexer is None or indexer is Ellipsis or (isinstance(indexer, slice) and indexer == slice(None)):
        return None
    # empty boolean indexers anndata refuses: numpy arrays, and pandas ones since 0.13 (0.12 made those integers)
    strict_empty = isinstance(indexer, np.ndarray) or (
        _ANNDATA_013 and isinstance(indexer, pd.Index | pd.Series | pd.api.extensions.ExtensionArray)
    )
    if isinstance(indexer, pd.Index | pd.Series):
        indexer = indexer.to_numpy()
    if isinstance(indexer, str):
        return _name_selection(indexer, names, n, ax)
    if isinstance(indexer, int | np.integer) and not isinstance(indexer, bool | np.bool_):
        return _one(int(indexer), n, ax)
    if isinstance(indexer, slice):
        start, stop = indexer.start, indexer.stop
        if isinstance(start, str):
            start = _slice_bound(start, names, ax)
        if isinstance(stop, str):  # name slices include their end, as in pandas and anndata
            stop = _slice_bound(stop, names, ax) + 1
        s = slice(start, stop, indexer.step)
        start, stop, step = s.indices(n)
        if step < 0:
            return np.arange(start, stop, step, dtype=np.int64)
        return slice(start, max(start, stop), step)
    if sp.issparse(indexer) or isinstance(indexer, np.matrix):
        indexer = np.asarray(indexer.todense() if sp.issparse(indexer) else indexer)
    if isinstance(indexer, Sequence | np.ndarray | pd.api.extensions.ExtensionArray):
        arr = np.asarray(indexer)
        if arr.ndim == 2 and 1 in arr.shape:
            arr = arr.ravel()
        if arr.ndim != 1:
            raise IndexError(f"{ax} indexer must be one-dimensional, got shape {arr.shape}")
        if arr.dtype.kind == "b" and arr.shape[0] != n and (arr.size or strict_empty):
            # anndata's message; an empty mask of a non-empty axis is a mistake (a filter that kept no column)
            raise IndexError(
                "Boolean index does not match AnnData’s shape along this dimension. Boolean index has shape "
                f"{arr.shape} while AnnData index has shape {(n,)}."
            )
        if arr.size == 0:
            return np.zeros(0, dtype=np.int64)
        if arr.dtype.kind == "b":
            return np.flatnonzero(arr).astype(np.int64)
        if arr.dtype.kind == "f":
            if np.any(arr != np.round(arr)):
                raise IndexError(f"{ax} indexer {arr!r} has non-integer floating point values")
            arr = arr.astype(np.int64)
        if arr.dtype.kind in "iu":
            arr = arr.astype(np.int64)
            bad = (arr < -n) | (arr >= n)
            if bad.any():
                raise IndexError(f"{ax} position {int(arr[bad][0])} is out of range for an axis of length {n}")
            return np.where(arr < 0, arr + n, arr)
        return _name_positions(arr.astype(object), names, ax)
    raise IndexError(f"Cannot index {ax} with {type(indexer).__name__}: {indexer!r}")


def _one(i: int, n: int, ax: str) -> slice:
    # a single position keeps the axis (as anndata does): it becomes a one-element slice
    if i < -n or i >= n:
        raise IndexError(f"{ax} position {i} is out of range for an axis of length {n}")
    i = i + n if i < 0 else i
    return slice(i, i + 1, 1)


def _name_selection(name: str, names: pd.Index | None, n: int, ax: str) -> Sel:
    """One name: a one-element slice, or every position holding it when names repeat (``get_loc`` in anndata)."""
    pos = locate(name, names, ax)
    return _one(int(pos[0]), n, ax) if len(pos) == 1 else pos


def _slice_bound(name: str, names: pd.Index | None, ax: str) -> int:
    """Position of a name bounding a slice; a repeated name bounds nothing (anndata raises TypeError too)."""
    pos = locate(name, names, ax)
    if len(pos) > 1:
        raise TypeError(f"{ax} name {name!r} occurs {len(pos)} times: it cannot bound a slice")
    return int(pos[0])


def locate(name: str, names: pd.Index | None, ax: str) -> np.ndarray:
    """Every position of ``name`` (pandas' ``get_loc``: an int, a slice or a mask when names repeat)."""
    if names is None:
        raise KeyError(f"{ax} names are not available to look up {name!r}")
    try:
        loc = names.get_loc(name)
    except KeyError:
        raise KeyError(f"{name!r} is not a valid {ax} name") from None
    if isinstance(loc, slice):
        return np.arange(*loc.indices(len(names)), dtype=np.int64)
    if isinstance(loc, np.ndarray):
        return np.flatnonzero(loc).astype(np.int64)
    return np.array([int(loc)], dtype=np.int64)


def _name_positions(values: np.ndarray, names: pd.Index | None, ax: str) -> np.ndarray:
    if names is None:
        raise KeyError(f"{ax} names are not available to look up {list(values)[:5]}")
    if not names.is_unique:
        # anndata looks lists up with get_indexer, which refuses repeated names (pandas' InvalidIndexError)
        dups = list(pd.unique(np.asarray(names.to_numpy()[names.duplicated()], dtype=object)))[:5]
        raise pd.errors.InvalidIndexError(
            f"Reindexing only valid with uniquely valued Index objects: {ax} names repeat ({dups}); "
            f"index by position, or make them unique first ({ax}_names_make_unique())"
        )
    pos = names.get_indexer(values)
    missing = pos < 0
    if missing.any():
        bad = list(values[missing])
        raise KeyError(f"{bad[:10]} {'is' if len(bad) == 1 else 'are'} not valid {ax} names")
    return np.asarray(pos, dtype=np.int64)


def split_index(index: Any) -> tuple[Any, Any]:
    """Split ``shadow[idx]`` into an obs and a var part, as anndata does (``...`` stands for the other axes)."""
    if not isinstance(index, tuple):
        return index, None
    if sum(i is Ellipsis for i in index) > 1:
        raise IndexError("an index can only have a single ellipsis ('...')")
    if len(index) == 1:
        return index[0], None
    if len(index) == 2:
        return index
    if not any(i is Ellipsis for i in index):
        raise IndexError(f"Received a length {len(index)} index without an ellipsis")
    rest = tuple(i for i in index if i is not Ellipsis)
    if len(rest) != 2:
        # anndata unpacks what is left into (obs, var): more than two fail there with this ValueError
        raise ValueError(f"too many values to unpack (expected 2): AnnData takes two indices (obs, var), got {rest!r}")
    return rest


def length(sel: Sel, n: int) -> int:
    """Number of positions ``sel`` selects on an axis of length ``n``."""
    if sel is None:
        return n
    if isinstance(sel, slice):
        return len(range(*sel.indices(n)))
    return len(sel)


def positions(sel: Sel, n: int) -> np.ndarray:
    """The positions ``sel`` selects on an axis of length ``n``, as an int64 array."""
    if sel is None:
        return np.arange(n, dtype=np.int64)
    if isinstance(sel, slice):
        return np.arange(*sel.indices(n), dtype=np.int64)
    return sel


def compose(parent: Sel, child: Sel, n_file: int) -> Sel:
    """The selection on the file that ``child`` (relative to ``parent``'s result) picks."""
    if child is None:
        return parent
    if parent is None:
        return child
    if isinstance(parent, slice) and isinstance(child, slice):
        p0, _, ps = parent.indices(n_file)
        c0, c1, cs = child.indices(length(parent, n_file))
        m = len(range(c0, c1, cs))
        start = p0 + c0 * ps
        if m == 0:
            return slice(start, start, 1)
        return slice(start, start + (m - 1) * cs * ps + 1, cs * ps)
    return positions(parent, n_file)[positions(child, length(parent, n_file))]


def is_identity(sel: Sel, n: int) -> bool:
    """Whether ``sel`` selects every position of an axis of length ``n``, in order."""
    if sel is None:
        return True
    if isinstance(sel, slice):
        return sel.indices(n) == (0, n, 1)
    return len(sel) == n and bool(np.all(sel == np.arange(n)))


def sorted_unique(sel: Sel, n: int) -> tuple[Sel, np.ndarray | None]:
    """Sorted, de-duplicated form of ``sel`` for storage reads, and the gather that restores the order asked for."""
    if sel is None or isinstance(sel, slice):
        return sel, None
    if len(sel) == 0 or bool(np.all(sel[1:] > sel[:-1])):
        return sel, None
    u, inv = np.unique(sel, return_inverse=True)
    return u, inv.ravel()


def runs(pos: np.ndarray, max_gap: int = 1) -> list[tuple[int, int, np.ndarray]]:
    """Group sorted unique positions into ranges ``[start, stop)`` whose inner gaps are below ``max_gap``.

    Returns ``(start, stop, members)`` with ``members`` the positions inside, so that one read of the range and a
    gather of ``members - start`` serve them all.  Coalescing neighbours trades a little over-read for far fewer
    storage calls, which dominate for scattered rows.
    """
    if len(pos) == 0:
        return []
    breaks = np.flatnonzero(np.diff(pos) > max_gap) + 1
    out = []
    for part in np.split(pos, breaks):
        out.append((int(part[0]), int(part[-1]) + 1, part))
    return out


def ranges_to_positions(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenate ``arange(s, s + l)`` for each pair, vectorised."""
    lengths = np.asarray(lengths, dtype=np.int64)
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    offsets = np.repeat(np.asarray(starts, dtype=np.int64) - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
    return offsets + np.arange(total, dtype=np.int64)


def describe(sel: Sel, n: int) -> str:
    """``sel`` in words, for messages (``all 100``, ``0:10:None``, ``5 positions``)."""
    if sel is None:
        return f"all {n}"
    if isinstance(sel, slice):
        return f"{sel.start}:{sel.stop}:{sel.step}"
    return f"{len(sel)} positions"


def _all_strings(names: pd.Index) -> bool:
    """Every non-missing name is a string, decided without copying the names: pandas' string dtypes by their dtype,
    an object index by one pass of ``infer_dtype`` (a masked copy would copy every name)."""
    if names.dtype != object:
        return pd.api.types.is_string_dtype(names.dtype)
    return pd.api.types.infer_dtype(names, skipna=True) in ("string", "empty")


def as_anndata_names(names: pd.Index, where: str) -> pd.Index:
    """Names of obs or var as anndata hands them out: an integer (or other non-string) index becomes strings.

    anndata does this (with its ``ImplicitModificationWarning``) whenever it builds an AnnData from a table, so a
    file whose index was written as integers reads as strings there; the shadow reads it the same way.
    """
    import anndata

    restricted = getattr(anndata.settings, "restrict_index_types", True)  # anndata < 0.13: always restricted
    if not ((restricted and not _all_strings(names)) or pd.api.types.is_integer_dtype(names)):
        return names
    import warnings

    try:
        from anndata.compat import pandas_as_str
    except ImportError:  # another anndata: pandas 2's way
        pandas_as_str = None
    category = getattr(anndata, "ImplicitModificationWarning", UserWarning)
    warnings.warn(f"Transforming to str index. ({where})", category, stacklevel=3)
    return pandas_as_str(names) if pandas_as_str is not None else names.astype(str)
