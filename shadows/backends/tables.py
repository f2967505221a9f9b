"""The ``"polars"`` and ``"pyarrow"`` table backends.

Tables (``obs``, ``var``, dataframes in ``obsm``/``varm``/``uns``, ``raw.var``) are built column by column from the
:class:`~shadows.spec.FrameParts` the shadow reads (for a view: only the selected rows), never through pandas.

Index
    Neither library has a row index: the index becomes the *first column*.  Its name is the stored index name when
    the table has one (as ``DataFrame.reset_index()`` names it), else ``obs_names``/``var_names`` for tables whose
    rows are cells/genes (``obs``, ``var``, ``raw.var``, dataframes in ``obsm``/``varm``; ``FrameParts.axis_name``),
    else ``index``.  If a column already has that name, ``_`` is appended until it is free
    (:func:`index_column`).  A pyarrow table records the name in its schema metadata (``b"shadows.spec.selection"``).

Columns
    * numbers and booleans: the arrays read, shared where the library can (numeric columns without missing values).
      NaN stays NaN (not null), as in pandas.
    * strings: string columns, missing values as null.
    * categoricals: ``pl.Enum`` with the categories in their stored order (polars compares by that order, as an
      ordered pandas categorical does), or a dictionary-encoded pyarrow array (``ordered`` kept); code ``-1`` is
      null.  polars enums hold strings only: a categorical with non-string categories (integers, floats) becomes
      a column of its values.
    * nullable integers and booleans (``Int64``, ``boolean``): the same type with nulls where the mask says so.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from shadows.backends import TableBackend

INDEX_METADATA = b"shadows.spec.selection"


def index_column(parts: Any) -> str:
    """Name of the column that holds the index of ``parts`` in a polars/pyarrow table (see the module doc)."""
    name = parts.index_name or getattr(parts, "axis_name", None) or "index"
    taken = {str(c) for c in parts.column_order}
    while name in taken:
        name += "_"
    return str(name)


def _columns(parts: Any) -> list[tuple[str, Any]]:
    """``(name, values)`` of the index column then of every column, in order."""
    index = _plain(parts.index.array) if isinstance(parts.index, pd.Index) else parts.index
    return [(index_column(parts), index)] + [(str(c), parts.columns[c]) for c in parts.column_order]


def _strings(values: Any) -> np.ndarray:
    """String values as an object array with ``None`` where missing (pandas NA, NaN, None)."""
    if isinstance(values, pd.api.extensions.ExtensionArray):
        return values.to_numpy(dtype=object, na_value=None)
    out = np.asarray(values, dtype=object)
    missing = pd.isna(out)
    if missing.any():
        out = out.copy()
        out[missing] = None
    return out


_MASKED = (pd.arrays.IntegerArray, pd.arrays.BooleanArray, pd.arrays.FloatingArray)


def _masked(values: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """``(values, mask)`` of a pandas masked array (``Int64``, ``boolean``, ``Float64``), else ``None``."""
    if not isinstance(values, _MASKED):
        return None
    mask = np.asarray(values.isna(), dtype=bool)
    data = getattr(values, "_data", None)  # the values under the mask, shared rather than copied out
    if not isinstance(data, np.ndarray) or data.shape != mask.shape:
        data = values.to_numpy(dtype=values.dtype.numpy_dtype, na_value=0)
    return data, mask


def _plain(values: Any) -> Any:
    """pandas' wrapper of a numpy array (``Series.array``, ``Index.array``) unwrapped."""
    return values.to_numpy() if isinstance(values, pd.arrays.NumpyExtensionArray) else values


def _kind(values: Any) -> str:
    if isinstance(values, pd.Categorical):
        return "categorical"
    if _masked(values) is not None:
        return "masked"
    dtype = getattr(values, "dtype", None)
    if isinstance(values, np.ndarray) and dtype.kind in "biufc":
        return "numeric"
    if isinstance(values, np.ndarray) and dtype.kind == "T":
        return "numpy-strings"  # numpy 2 StringDType: both libraries take it as it is
    if isinstance(dtype, pd.StringDtype) or (dtype is not None and getattr(dtype, "kind", "") in "OUS"):
        return "strings"
    return "other"


# --- polars -----------------------------------------------------------------------------------------------------


def _polars_series(name: str, values: Any) -> Any:
    import polars as pl

    kind = _kind(values)
    if kind in ("numeric", "numpy-strings"):
        return pl.Series(name, values)
    if kind == "strings":
        return pl.Series(name, _strings(values), dtype=pl.String)
    if kind == "masked":
        data, mask = _masked(values)
        s = pl.Series(name, data)
        return s.scatter(np.flatnonzero(mask), None) if mask.any() else s
    if kind == "categorical":
        return _polars_categorical(name, values)
    return pl.Series(name, np.asarray(values))


def _polars_categorical(name: str, cat: pd.Categorical) -> Any:
    import polars as pl

    codes = np.asarray(cat.codes)
    nulls = np.flatnonzero(codes < 0)
    categories = cat.categories
    if not pd.api.types.is_string_dtype(categories.dtype) or not all(isinstance(c, str) for c in categories):
        # polars enums hold strings: keep the values (typed), not a string rendering of them
        s = pl.Series(name, np.asarray(categories)[np.where(codes < 0, 0, codes)] if len(categories) else codes)
        return s.scatter(nulls, None) if len(nulls) else s
    enum = pl.Enum([str(c) for c in categories])
    physical = pl.Series(name, np.where(codes < 0, 0, codes).astype(np.uint32))
    if len(nulls):
        physical = physical.scatter(nulls, None)
    try:
        return physical.cat.to(enum)  # polars >= 2: physical codes straight into the enum
    except AttributeError:
        return pl.Series(name, [str(c) for c in categories]).gather(physical).cast(enum).alias(name)


def to_polars(parts: Any) -> Any:
    """A ``polars.DataFrame`` from :class:`~shadows.spec.FrameParts`: the index first, then every column."""
    import polars as pl

    return pl.DataFrame([_polars_series(name, values) for name, values in _columns(parts)])


# --- pyarrow ----------------------------------------------------------------------------------------------------


def _arrow_array(values: Any) -> Any:
    import pyarrow as pa

    kind = _kind(values)
    if kind in ("numeric", "numpy-strings"):
        return pa.array(values)
    if kind == "strings":
        return pa.array(_strings(values), type=pa.string())
    if kind == "masked":
        data, mask = _masked(values)
        return pa.array(data, mask=mask)
    if kind == "categorical":
        codes = np.asarray(values.codes)
        indices = pa.array(codes, mask=codes < 0)
        dictionary = _arrow_array(_plain(values.categories.array))
        return pa.DictionaryArray.from_arrays(indices, dictionary, ordered=bool(values.ordered))
    return pa.array(np.asarray(values))


def to_pyarrow(parts: Any) -> Any:
    """A ``pyarrow.Table`` from :class:`~shadows.spec.FrameParts`: the index first, then every column."""
    import pyarrow as pa

    cols = _columns(parts)
    table = pa.table({name: _arrow_array(values) for name, values in cols})
    return table.replace_schema_metadata({INDEX_METADATA: cols[0][0].encode()})


def parts_from_pandas(df: pd.DataFrame) -> Any:
    """:class:`~shadows.spec.FrameParts` of an in-memory pandas DataFrame (tables nested in ``uns`` dicts)."""
    from shadows.spec import FrameParts

    columns = {str(c): _plain(df[c].array) for c in df.columns}
    return FrameParts(
        index=_plain(df.index.array), index_name=df.index.name, columns=columns, column_order=list(columns)
    )


def __getattr__(name: str) -> TableBackend:
    # made on first access, so that a missing library fails with the extra to install (see shadows.backends)
    if name == "POLARS":
        import polars  # noqa: F401

        return TableBackend("polars", to_polars, from_parts=True)
    if name == "PYARROW":
        import pyarrow  # noqa: F401

        return TableBackend("pyarrow", to_pyarrow, from_parts=True)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["index_column", "parts_from_pandas", "to_polars", "to_pyarrow"]
