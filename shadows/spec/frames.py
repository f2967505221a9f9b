"""Readers of tables and their columns (``dataframe``, ``categorical``, ``nullable-*``) and of ``dict``.

A whole element goes through ``anndata.io.read_elem``, so values and dtypes are anndata's by construction.
A row selection is read column by column with the same construction as anndata's readers applied to the selected
rows only (codes, values and masks are read partially; categories whole), so only the selected rows ever sit in
memory.
"""

from __future__ import annotations

from typing import Any

import anndata
import numpy as np
import pandas as pd

from shadows.io.fast.zarr_chunks import read_strings
from shadows.io.remote_h5 import heap_walk
from shadows.io.storage import attr, is_array, is_group, is_h5, member
from shadows.spec.dense import read_dense
from shadows.spec.frame_parts import FrameParts
from shadows.spec.registry import CorruptElementError, ReadContext, read_element, register_reader, sel_at, where_of


def _whole(sel: tuple) -> bool:
    return all(s is None for s in sel)


@register_reader("categorical", "0.2.0")
def read_categorical(elem: Any, sel: tuple, ctx: ReadContext) -> pd.Categorical:
    """Reader of categorical arrays: the selected codes with all categories (anndata reads the whole array)."""
    if _whole(sel):
        return anndata.io.read_elem(elem)
    return pd.Categorical.from_codes(
        codes=read_dense(elem["codes"], sel[:1]),
        categories=anndata.io.read_elem(elem["categories"]),
        ordered=bool(attr(elem, "ordered", False)),
    )


@register_reader("nullable-integer", "0.1.0")
@register_reader("nullable-boolean", "0.1.0")
def read_nullable(elem: Any, sel: tuple, ctx: ReadContext) -> Any:
    """Reader of nullable integer and boolean arrays: the selected values and mask as a pandas masked array."""
    if _whole(sel):
        return anndata.io.read_elem(elem)
    cls = pd.arrays.IntegerArray if attr(elem, "encoding-type") == "nullable-integer" else pd.arrays.BooleanArray
    values = read_dense(elem["values"], sel[:1])
    mask = read_dense(elem["mask"], sel[:1]).astype(bool)
    if cls is pd.arrays.IntegerArray and values.dtype.kind not in "iu":
        values = values.astype(np.int64)
    return cls(values, mask=mask)


def index_column(g: Any) -> tuple[str, Any]:
    """The name and the stored column of a ``dataframe`` group's index (its attribute ``_index`` names it).

    Raises
    ------
    CorruptElementError
        If the attribute is missing or names no column, naming the file and the table.
    """
    key = attr(g, "_index")
    col = None if key is None else member(g, key)
    if col is None:
        what = "no attribute '_index'" if key is None else f"its attribute '_index' names {key!r}, no column"
        raise CorruptElementError(f"{where_of(g)} has no index: {what}")
    return key, col


def table_length(g: Any) -> int:
    """The number of rows of a stored table (obs, var, raw/var), from its index's shape alone (no data is read)."""
    if is_array(g):  # anndata < 0.7: a compound dataset
        return int(g.shape[0])
    _, idx = index_column(g)
    if is_group(idx):  # anndata >= 0.13 with pandas 3: a nullable-string-array group
        return int(idx["values"].shape[0])
    return int(idx.shape[0])


@register_reader("nullable-string-array", "0.1.0")
def read_nullable_string(elem: Any, sel: tuple, ctx: ReadContext) -> Any:
    """Reader of nullable string arrays: anndata reads them whole, and the selected rows through anndata."""
    if _whole(sel):
        # a remote h5ad: HDF5 walks the strings' global heap, read ahead (anndata >= 0.13 writes obs names so)
        with heap_walk(elem["values"] if "values" in elem else None):
            return anndata.io.read_elem(elem)
    return read_rows_via_anndata(elem, sel[:1])


def read_rows_via_anndata(elem: Any, sel: tuple) -> Any:
    """Read the selected rows of every child of ``elem`` into a small in-memory HDF5 group and let anndata build
    the value from it: anndata's construction (which differs between its versions) on only the selected rows."""
    import io

    import h5py

    from shadows.io.storage import decode_strings

    buf = h5py.File(io.BytesIO(), "w")
    try:
        g = buf.create_group("e")
        for k, v in elem.attrs.items():
            g.attrs[k] = v
        for name in elem.keys():
            child = elem[name]
            values = read_dense(child, sel)
            if values.dtype.kind in "OUT":
                g.create_dataset(name, data=decode_strings(values).astype(object), dtype=h5py.string_dtype())
            else:
                g.create_dataset(name, data=values)
            for k, v in child.attrs.items():
                g[name].attrs[k] = v
        return anndata.io.read_elem(g)
    finally:
        buf.close()


@register_reader("awkward-array", "0.1.0")
def read_whole_then_take(elem: Any, sel: tuple, ctx: ReadContext) -> Any:
    """Reader of awkward arrays: anndata reads the whole array, then the selected rows are taken."""
    # rare encodings whose construction differs between anndata versions: anndata builds them, we take the rows
    value = anndata.io.read_elem(elem)
    s = sel_at(sel, 0)
    if s is None:
        return value
    return value[s] if not isinstance(s, np.ndarray) else value[np.asarray(s)]


# the dtype pandas infers for strings: object in pandas 2, "str" in pandas 3
_STRINGS = pd.Index(np.array(["a"], dtype=object)).dtype


def inferred_strings(values: Any, stored: Any) -> Any:
    """An empty array of strings read from a non-empty stored one (an empty selection) as the dtype pandas infers
    for strings: pandas 3 infers "str" from strings but leaves an empty object array object, while anndata's views
    (slices of the whole table) keep "str".  An empty stored array stays as anndata reads it (object)."""
    if (
        _STRINGS != np.dtype(object)
        and isinstance(values, np.ndarray)
        and values.dtype.kind in "OUT"
        and len(values) == 0
        and _stored_length(stored) > 0
    ):
        return pd.array(values.astype(object), dtype=_STRINGS)
    return values


def _stored_length(elem: Any) -> int:
    if is_group(elem):  # nullable-string-array and the like: their values array
        elem = elem["values"] if "values" in elem else None
    shape = getattr(elem, "shape", None)
    return int(shape[0]) if shape else 0


def read_frame_parts(
    elem: Any, sel: tuple = (), ctx: ReadContext | None = None, columns: list | None = None
) -> FrameParts:
    """Read a ``dataframe`` group (current or 0.1.0 layout) into :class:`FrameParts`, rows restricted by ``sel``."""
    ctx = ctx or ReadContext()
    if not is_group(elem):  # legacy compound dataset
        from shadows.spec.legacy import read_compound_parts

        return read_compound_parts(elem, sel, ctx)
    order = [str(c) for c in (attr(elem, "column-order") or [])]
    if columns is not None:
        order = [c for c in order if c in columns]
    idx_key, idx = index_column(elem)
    version = str(attr(elem, "encoding-version", ""))
    row = sel[:1]
    cols = {}
    for k in order:
        col = elem[k]  # opened once (each opening is a lookup; on a remote zarr store a round trip to its loop)
        cols[k] = inferred_strings(_read_column(elem, col, row, ctx, version), col)
    index = inferred_strings(_read_column(elem, idx, row, ctx, version), idx)
    return FrameParts(
        index=index, index_name=None if idx_key == "_index" else idx_key, columns=cols, column_order=order
    )


def _read_column(elem: Any, col: Any, row: tuple, ctx: ReadContext, version: str) -> Any:
    if version != "0.2.0" and not is_group(col) and "categories" in col.attrs:
        from shadows.spec.legacy import read_referenced_categorical

        return read_referenced_categorical(elem, col, row, ctx)
    return read_frame_values(col, row, ctx)


def read_frame_values(col: Any, row: tuple, ctx: ReadContext) -> Any:
    """An index or column of a dataframe, rows restricted by ``row``: a whole zarr array of strings on local disk as
    the object array of ``str`` that pandas makes of it (see :func:`~shadows.io.fast.zarr_chunks.read_strings`),
    anything else through its reader."""
    if _whole(row) and is_array(col) and not is_h5(col) and attr(col, "encoding-type") == "string-array":
        got = read_strings(col)
        if got is not None:
            return got
    return read_element(col, row, ctx)


@register_reader("dataframe", "0.2.0")
@register_reader("dataframe", "0.1.0")
@register_reader("legacy-dataframe")
def read_dataframe(elem: Any, sel: tuple, ctx: ReadContext) -> pd.DataFrame:
    """Reader of dataframes (current and legacy): a selection column by column; a whole current one through anndata."""
    if _whole(sel) and attr(elem, "encoding-type") == "dataframe":
        return anndata.io.read_elem(elem)
    return read_frame_parts(elem, sel, ctx).to_pandas()


@register_reader("dict")  # any version: pre-0.8 groups carry none
def read_dict(elem: Any, sel: tuple, ctx: ReadContext) -> dict:
    """Reader of ``dict`` groups (``uns`` and nested groups): every member read whole; an array is read as an array."""
    if not is_group(elem):
        return read_element(elem, sel, ctx)
    return {k: read_element(elem[k], (), ctx) for k in elem.keys()}
