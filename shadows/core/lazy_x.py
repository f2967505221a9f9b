"""Lazy matrices in a shadow's state: dask arrays that scanpy's own functions leave in ``X`` and ``layers``.

With ``array_backend="dask"``, ``X`` is a dask array of scipy CSR chunks read from the file; scanpy's dask support
transforms it into a chain of dask operations (normalize, log1p, scale, subsetting), which the shadow keeps as a
pending value.  This module holds what the shadow needs to do with such a chain without computing it: select a
part of it (views, in-place subsets) and tell it apart from values that are in memory.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from shadows.spec import selection as ix


def is_dask_array(value: Any) -> bool:
    """Whether ``value`` is a dask array (without importing dask when nobody has)."""
    da = sys.modules.get("dask.array")
    return da is not None and isinstance(value, da.Array)


def take_dask(value: Any, sels: tuple) -> Any:
    """A dask array restricted to a selection per axis, still lazy (slices stay slices: no fancy indexing)."""
    for axis, s in enumerate(sels):
        if s is None:
            continue
        key = s if isinstance(s, slice) else _as_slice(ix.positions(s, value.shape[axis]))
        value = value[key] if axis == 0 else value[:, key]
    return value


def _as_slice(pos: np.ndarray) -> slice | np.ndarray:
    """Positions as a slice where they are one (dask slices chunks; positions it gathers and shuffles)."""
    pos = np.asarray(pos)
    if pos.size == 0:
        return slice(0, 0)
    if pos.size == 1 or (np.all(np.diff(pos) == 1)):
        return slice(int(pos[0]), int(pos[-1]) + 1)
    return pos


def dask_matrix_of(adata: Any, layer: str | None = None, use_raw: bool | None = None) -> Any:
    """The matrix a scanpy function would use (``raw.X``, a layer or ``X``) when it is a dask array, else ``None``."""
    try:
        if use_raw and adata.raw is not None:
            x = adata.raw.X
        else:
            x = adata.layers[layer] if layer is not None else adata.X
    except (AttributeError, KeyError):
        return None
    return x if is_dask_array(x) else None
