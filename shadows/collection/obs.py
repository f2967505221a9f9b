"""The obs of a collection as a data frame whose columns are read one at a time, when asked for.

Why: a collection of twenty files of 50,000 cells with a dozen obs columns holds a million-row table; a filter
needs one of its columns (``coll.obs["cell_type"] == "T cell"``).  :class:`LazyFrame` is a
:class:`pandas.DataFrame` that answers ``frame[column]``, ``frame.column``, ``column in frame``, ``frame.columns``,
``frame.index`` and ``len(frame)`` from its loader (one column of each file, the names, the column list), and reads
the whole table (exactly as ``anndata.concat`` builds it) the first time anything else is asked: every pandas
operation goes through the frame's block manager, which it loads on first use.
"""

from __future__ import annotations

from typing import Any, Protocol

import pandas as pd


class FrameLoader(Protocol):
    """What a :class:`LazyFrame` reads from: the column names, the row names, one column, the whole table."""

    def keys(self) -> list[str]:
        """The column names, without reading a column."""
        ...

    def names(self) -> pd.Index:
        """The row names."""
        ...

    def column(self, key: str) -> pd.Series:
        """One column, read from every file."""
        ...

    def frame(self) -> pd.DataFrame:
        """The whole table, as ``anndata.concat`` builds it."""
        ...


class LazyFrame(pd.DataFrame):
    """A data frame read column by column until something needs all of it (then it is an ordinary frame).

    Operations return plain :class:`pandas.DataFrame` objects (``_constructor``); assignments read the whole
    table first and then change it, as on any frame.
    """

    _metadata: list[str] = []

    def __init__(self, loader: FrameLoader):
        super().__init__()
        object.__setattr__(self, "_shadows_loader", loader)

    @property
    def _constructor(self) -> type:
        return pd.DataFrame

    # --- the block manager, loaded on first use ---------------------------------------------------------------------
    def _get_mgr(self) -> Any:
        d = object.__getattribute__(self, "__dict__")
        loader = d.get("_shadows_loader")
        if loader is not None:
            full = loader.frame()
            d["_shadows_loader"] = None
            d["_shadows_mgr"] = full._mgr
            if "_item_cache" in d:  # pandas < 3 caches columns taken from the (empty) frame before
                d["_item_cache"] = {}
            d["_attrs"] = dict(full.attrs)
        return d["_shadows_mgr"]

    def _set_mgr(self, value: Any) -> None:
        object.__getattribute__(self, "__dict__")["_shadows_mgr"] = value

    _mgr = property(_get_mgr, _set_mgr)

    @property
    def is_loaded(self) -> bool:
        """Whether the whole table has been read."""
        return object.__getattribute__(self, "__dict__").get("_shadows_loader") is None

    def _lazy(self) -> FrameLoader | None:
        return object.__getattribute__(self, "__dict__").get("_shadows_loader")

    # --- what is answered without the whole table ------------------------------------------------------------------
    def __getitem__(self, key: Any) -> Any:
        loader = self._lazy()
        if loader is not None and isinstance(key, str) and key in loader.keys():
            return loader.column(key)
        return super().__getitem__(key)

    def __getattr__(self, name: str) -> Any:
        if not name.startswith("_"):
            loader = self._lazy()
            if loader is not None and name in loader.keys():
                return loader.column(name)
        return super().__getattr__(name)

    def __contains__(self, key: Any) -> bool:
        loader = self._lazy()
        if loader is not None:
            return key in loader.keys()
        return super().__contains__(key)

    def __len__(self) -> int:
        loader = self._lazy()
        return len(loader.names()) if loader is not None else super().__len__()

    @property
    def columns(self) -> pd.Index:  # type: ignore[override]
        """The column labels, from the files' metadata while the table is not read."""
        loader = self._lazy()
        if loader is not None:
            # the labels as pandas makes them for a table of these columns (str dtype in pandas 3), and string-typed
            # when there are none, as anndata leaves an empty table's columns
            cols = pd.DataFrame(columns=loader.keys()).columns
            return cols if len(cols) else cols.astype(str)
        return pd.DataFrame.columns.__get__(self)

    @columns.setter
    def columns(self, value: Any) -> None:
        """Rename the columns (reads the whole table first)."""
        self._mgr  # noqa: B018  (read the whole table, then rename as pandas does)
        pd.DataFrame.columns.__set__(self, value)

    @property
    def index(self) -> pd.Index:  # type: ignore[override]
        """The row names, read without the columns while the table is not read."""
        loader = self._lazy()
        if loader is not None:
            return loader.names()
        return pd.DataFrame.index.__get__(self)

    @index.setter
    def index(self, value: Any) -> None:
        """Set the row names (reads the whole table first)."""
        self._mgr  # noqa: B018
        pd.DataFrame.index.__set__(self, value)

    @property
    def shape(self) -> tuple[int, int]:
        """Rows and columns, without reading a column."""
        loader = self._lazy()
        if loader is not None:
            return len(loader.names()), len(loader.keys())
        return super().shape
