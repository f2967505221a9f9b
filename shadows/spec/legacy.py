"""Readers of the layouts anndata wrote before 0.8 (no encoding attributes).

* anndata < 0.7: obs/var as one compound HDF5 dataset of fixed-length byte strings, the first field the index;
  categorical columns stored as integer codes, their categories in ``uns/<column>_categories``.
* anndata 0.7: ``dataframe`` 0.1.0 groups whose categorical columns are code datasets with an attribute
  ``categories`` that is an object reference into ``__categories/<column>``.
* sparse groups marked by ``h5sparse_format``/``h5sparse_shape`` (read by :mod:`shadows.spec.sparse`).
"""

from __future__ import annotations

from typing import Any

import h5py
import numpy as np
import pandas as pd

from shadows.io.storage import decode_strings, is_h5
from shadows.spec.dense import read_dense
from shadows.spec.frame_parts import FrameParts
from shadows.spec.registry import ReadContext, register_reader


def _decode_field(values: np.ndarray) -> np.ndarray:
    if values.dtype.kind in "SO":
        return decode_strings(values)
    return values


def read_compound_parts(elem: Any, sel: tuple, ctx: ReadContext) -> FrameParts:
    """A compound (structured) dataset as a table: the first field is the index."""
    rows = read_dense(elem, sel[:1])
    names = list(rows.dtype.names)
    index = pd.Index(_decode_field(rows[names[0]]), name=names[0])
    cols = {n: _decode_field(np.asarray(rows[n])) for n in names[1:]}
    return FrameParts(index=index, index_name=names[0], columns=cols, column_order=names[1:])


@register_reader("legacy-compound")
def read_compound(elem: Any, sel: tuple, ctx: ReadContext) -> pd.DataFrame:
    """Reader of legacy (anndata < 0.7) compound datasets: a table with one column per field."""
    return read_compound_parts(elem, sel, ctx).to_pandas()


def read_referenced_categorical(frame: Any, col: Any, row: tuple, ctx: ReadContext) -> pd.Categorical:
    """A 0.7 categorical column: codes here, categories behind an object reference (or a path in zarr)."""
    ref = col.attrs["categories"]
    if is_h5(col) and isinstance(ref, h5py.Reference):
        cats_ds = col.file[ref]
    else:
        name = ref.decode() if isinstance(ref, bytes) else str(ref)
        cats_ds = frame[name] if name in frame else frame["__categories"][name.split("/")[-1]]
    cats = read_dense(cats_ds)
    if cats.dtype.kind in "SO":
        cats = decode_strings(cats)
    ordered = bool(cats_ds.attrs.get("ordered", False))
    codes = read_dense(col, row)
    return pd.Categorical.from_codes(codes, cats, ordered=ordered)


def categories_from_uns(uns_group: Any, frame: pd.DataFrame) -> tuple[pd.DataFrame, set[str]]:
    """Apply ``uns/<col>_categories`` to integer code columns of ``frame`` as anndata < 0.7 did.

    Returns the frame and the uns keys used (anndata drops them from ``uns``).
    """
    used = set()
    if uns_group is None:
        return frame, used
    for key in list(uns_group.keys()):
        if not key.endswith("_categories"):
            continue
        name = key.replace("_categories", "")
        if name not in frame.columns:
            continue
        cats = read_dense(uns_group[key])
        if np.ndim(cats) == 0:
            cats = np.array([cats])
        cats = decode_strings(cats) if cats.dtype.kind in "SO" else cats
        codes = frame[name].to_numpy()
        if codes.dtype.kind not in "iu" or not np.all(codes < len(cats)):
            continue
        frame[name] = pd.Categorical.from_codes(codes, cats)
        used.add(key)
    return frame, used


def legacy_uns_keys(storage_root: Any) -> set[str]:
    """uns keys that a pre-0.7 file used for categories (hidden from ``uns``, as anndata hides them)."""
    if "obs" not in storage_root or not isinstance(storage_root["obs"], h5py.Dataset) or "uns" not in storage_root:
        return set()
    uns = storage_root["uns"]
    hidden = set()
    for part in ("obs", "var"):
        if part not in storage_root or not isinstance(storage_root[part], h5py.Dataset):
            continue
        fields = storage_root[part].dtype.names or ()
        for key in uns.keys():
            if key.endswith("_categories") and key.replace("_categories", "") in fields[1:]:
                hidden.add(key)
    return hidden


__all__ = ["categories_from_uns", "legacy_uns_keys", "read_compound_parts", "read_referenced_categorical"]
