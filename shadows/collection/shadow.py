"""Many files as one shadow: :func:`concat` is ``anndata.concat`` over files, without reading them.

``shadows.concat(["a.h5ad", "b.zarr", "more/*.h5ad"], join="outer", label="batch")`` opens each file lazily (its
lengths and names only) and returns a :class:`CollectionShadow`: an :class:`anndata.AnnData` whose elements are
what ``anndata.concat`` of the files read into memory would hold, read only when asked for.  A view
(``coll[coll.obs.cell_type == "T cell", genes]``) reads only the rows (and files) it selects; ``write_h5ad``
streams the collection (or a view) file by file into one new file in bounded memory.

Reading is split in three modules: :mod:`shadows.collection.core` (the files, the join, what is read once),
:mod:`shadows.collection.source` (reading rows of matrix elements across files) and
:mod:`shadows.collection.write` (the streamed write).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anndata
import numpy as np
import pandas as pd
import scipy.sparse as sp

from shadows.backends import check_backend_name, get_array_backend, get_table_backend
from shadows.collection.core import Core, expand_sources
from shadows.collection.obs import LazyFrame
from shadows.collection.raw import CollectionRaw  # also sets Core.raw_core
from shadows.collection.side import SideBySide
from shadows.collection.source import Stacked
from shadows.core.anndata import _ANNDATA_013, _as_view_frame, _LazyNames, _take
from shadows.core.compat import NOT_A_REFERENCE, accessor_get
from shadows.core.mapping import ElementMapping, untrack
from shadows.core.state import ElementStores
from shadows.spec import selection as ix


def concat(
    sources: Any,
    *,
    axis: str | int = "obs",
    join: str = "inner",
    merge: Any = None,
    uns_merge: Any = None,
    label: str | None = None,
    keys: Any = None,
    index_unique: str | None = None,
    fill_value: Any = None,
    pairwise: bool = False,
    format: str | None = None,
    array_backend: str = "numpy",
    table_backend: str = "pandas",
) -> CollectionShadow:
    """Concatenate AnnData files along obs (or var) as one lazy shadow, as ``anndata.concat`` does in memory.

    Parameters
    ----------
    sources
        Paths (``.h5ad`` files, zarr stores, ``file.h5mu/mod/rna``), glob patterns (expanded in sorted order) and
        :class:`~shadows.AnnDataShadow` objects (or views), mixed; or a mapping of key to source (its keys are the
        ``keys``).
    axis
        ``"obs"`` (0): the files' cells one after the other, their genes joined.  ``"var"`` (1): files of (some of)
        the same cells side by side, their genes one after the other (X column by column), their cell names
        joined; ``label`` and ``index_unique`` then apply to the genes, ``merge`` to obs/obsm/obsp, varm is
        concatenated and varp (``pairwise``) block-diagonal.
    join
        ``"inner"``: the genes all files share (along var: the cells); ``"outer"``: all of them, a file's missing
        ones filled (sparse matrices with zeros, dense ones with NaN, unless ``fill_value``).
    merge
        How the joined axis' elements are merged (var, varm and varp; along var: obs, obsm and obsp), with
        anndata's strategies: ``None``, ``"same"``, ``"unique"``, ``"first"``, ``"only"``; ``None`` keeps none
        (and reads none).
    uns_merge
        How ``uns`` is merged (same strategies); ``None`` keeps none.
    label
        Name of an obs column recording each cell's source (its key); along var, a var column (each gene's).
    keys
        Names of the sources (default ``"0"``, ``"1"``, ...).
    index_unique
        If given, cell names (along var: gene names) become ``"{name}{index_unique}{key}"``.
    fill_value
        Value of joined positions a file lacks (``join="outer"``).
    pairwise
        Keep ``obsp`` (along var: ``varp``), block-diagonal (one block per file), as anndata's ``pairwise=True``.
    format
        Format of path sources (``"h5ad"``, ``"zarr"``...; default: detected per file).
    array_backend
        Type of the arrays handed out (``"numpy"``, ``"dask"``, ``"jax"``, ``"torch"``...).
    table_backend
        Type of ``obs`` and ``var`` handed out (``"pandas"``, ``"polars"``, ``"pyarrow"``); the collection itself
        (views, writes, ``obs_vector``) works on pandas tables.

    Returns
    -------
    A :class:`CollectionShadow` (an :class:`anndata.AnnData`).

    Examples
    --------
    >>> coll = shadows.concat(["a.h5ad", "b.zarr"], join="outer", label="batch")  # doctest: +SKIP
    >>> t = coll[coll.obs["cell_type"] == "T cell"]  # reads one obs column per file  # doctest: +SKIP
    >>> t.X  # the T cells' rows of each file, nothing else  # doctest: +SKIP
    >>> both = shadows.concat(["rna.h5ad", "atac.zarr"], axis="var", join="inner")  # doctest: +SKIP
    >>> both[:, ["CD3E"]].X  # reads rna.h5ad only  # doctest: +SKIP

    Raises
    ------
    ValueError
        For an ``axis`` or ``join`` anndata does not know, or files that cannot be joined (names along the joined
        axis not unique, some files without X).
    """
    if axis not in ("obs", 0, "var", 1) or isinstance(axis, bool):
        raise ValueError(f"axis must be 0, 1, 'obs' or 'var', got {axis!r}")
    check_backend_name(array_backend, "array")
    check_backend_name(table_backend, "table")
    items, keys = expand_sources(sources, keys)
    core = Core(
        items,
        join=join,
        merge=merge,
        uns_merge=uns_merge,
        label=label,
        keys=keys,
        index_unique=index_unique,
        fill_value=fill_value,
        pairwise=pairwise,
        format=format,
        axis=0 if axis in ("obs", 0) else 1,
    )
    return CollectionShadow(core, array_backend=array_backend, table_backend=table_backend)


class CollectionShadow(anndata.AnnData):
    """Several AnnData files stacked along obs (or side by side along var), read lazily; made by
    :func:`shadows.concat`.

    Every element equals that of ``anndata.concat`` of the files read into memory (with the same arguments).
    Assignments (``coll.obs["x"] = ...``, ``coll.obsm["X_new"] = ...``) are held in memory; ``write_h5ad`` and
    ``write_zarr`` write them with the rest.
    """

    def __init__(
        self,
        core: Core,
        *,
        array_backend: str = "numpy",
        table_backend: str = "pandas",
        _rows: ix.Sel = None,
        _cols: ix.Sel = None,
        _view: bool = False,
    ):
        # AnnData's constructor is not run: every element is answered by the properties below
        self._core = core
        self._array_backend = array_backend
        self._table_backend = table_backend
        self._rows, self._cols = _rows, _cols  # global selections: rows of the stacked files, joined var
        self._is_view = _view
        self._detached = False
        self._frames: dict[str, pd.DataFrame] = {}
        self._state = ElementStores()  # cache, pending, deleted, inherited (what the lazy mappings read)
        self._base: CollectionShadow | None = None  # where a view takes its tables from
        self._base_sel: tuple = (None, None)  # the view's selection relative to its base

    # --- identity ---------------------------------------------------------------------------------------------------
    @property
    def sources(self) -> list[str]:
        """The files of the collection, in order."""
        return list(self._core.names)

    @property
    def keys(self) -> list[str]:
        """The name of each source (the values of ``label``, the suffixes of ``index_unique``)."""
        return list(self._core.keys)

    @property
    def parts(self) -> list[Any]:
        """The lazy :class:`~shadows.AnnDataShadow` of each file (arrays come as :class:`~shadows.LazyArray`)."""
        return list(self._core.parts)

    @property
    def isbacked(self) -> bool:
        """Always ``False``; every value handed out is in memory, so anndata and scanpy take their in-memory paths."""
        return False  # every value handed out is in memory: scanpy takes its in-memory code paths

    @property
    def filename(self) -> None:
        """Always ``None``, as a collection has no file of its own (:attr:`sources` lists its files)."""
        return None

    @property
    def is_view(self) -> bool:
        """Whether this collection is a view (``coll[...]``) of another one."""
        return self._is_view and not self._detached

    @property
    def isview(self) -> bool:
        """Same as :attr:`is_view` (anndata's old name)."""
        return self.is_view

    @property
    def n_obs(self) -> int:
        """Number of cells of all files together (the selected ones for a view)."""
        return ix.length(self._rows, self._core.shape[0])

    @property
    def n_vars(self) -> int:
        """Number of joined genes (the selected ones for a view)."""
        return ix.length(self._cols, self._core.shape[1])

    @property
    def shape(self) -> tuple[int, int]:
        """``(n_obs, n_vars)``, without reading any element."""
        return self.n_obs, self.n_vars

    def __len__(self) -> int:
        return self.n_obs

    def close(self) -> None:
        """Close every file of the collection (views share them)."""
        self._core.close()

    def __enter__(self) -> CollectionShadow:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- tables -----------------------------------------------------------------------------------------------------
    def _frame(self, name: str) -> pd.DataFrame:
        if name in self._frames:
            return self._frames[name]
        if self._base is None and name == self._core.cat:
            df = LazyFrame(_CatColumns(self._core))  # columns read when asked for; all at once when needed
        elif self._base is None:
            df = self._core.alt_table().copy()  # assignments change this collection's table, not the shared one
        else:
            sel = self._base_sel[0 if name == "obs" else 1]
            src = self._base._frame(name)
            df = src.iloc[ix.positions(sel, len(src))] if sel is not None else src.copy()
            if anndata.settings.remove_unused_categories:  # as anndata's views do
                df = _without_unused_categories(df)
            df = _as_view_frame(df, True)
        self._frames[name] = df
        return df

    @property
    def obs(self) -> pd.DataFrame:
        """The concatenated cell annotations (for a view, its rows); a column is read from every file when asked
        for (``coll.obs["donor"]``), the whole table when anything else needs it."""
        return self._as_table("obs")

    @obs.setter
    def obs(self, value: pd.DataFrame) -> None:
        """Replace the cell annotations (held in memory; written by :meth:`write_h5ad`).

        Raises
        ------
        ValueError
            If ``value`` does not have :attr:`n_obs` rows, or the collection is a view.
        """
        self._set_frame("obs", value)

    @property
    def var(self) -> pd.DataFrame:
        """The joined genes (columns as ``merge`` keeps them, none by default)."""
        return self._as_table("var")

    def _as_table(self, name: str) -> Any:
        """A table in the collection's table backend (the pandas table itself for ``"pandas"``)."""
        df = self._frame(name)
        if self._table_backend == "pandas":
            return df
        from shadows.backends.tables import parts_from_pandas

        backend = get_table_backend(self._table_backend)
        if not backend.from_parts:
            return backend.convert(pd.DataFrame(df))
        parts = parts_from_pandas(pd.DataFrame(df))
        parts.axis_name = f"{name}_names"  # how table backends without an index name the index column
        return backend.convert(parts)

    @var.setter
    def var(self, value: pd.DataFrame) -> None:
        """Replace the gene annotations (held in memory; written by :meth:`write_h5ad`).

        Raises
        ------
        ValueError
            If ``value`` does not have :attr:`n_vars` rows, or the collection is a view.
        """
        self._set_frame("var", value)

    def _set_frame(self, name: str, value: pd.DataFrame) -> None:
        n = self.n_obs if name == "obs" else self.n_vars
        if len(value) != n:
            raise ValueError(f"{name} must have {n} rows, got {len(value)}")
        self._check_not_view(name)
        self._frames[name] = value

    def _names(self, name: str) -> pd.Index:
        if name in self._frames:
            return self._frames[name].index
        if self._base is not None and name in self._base._frames:
            idx = self._base._frames[name].index
            sel = self._base_sel[0 if name == "obs" else 1]
            return idx[ix.positions(sel, len(idx))] if sel is not None else idx
        full = self._core.names_of(name)
        sel = self._rows if name == "obs" else self._cols
        return full[ix.positions(sel, len(full))] if sel is not None else full

    @property
    def obs_names(self) -> pd.Index:
        """The cell names of all files, in order (suffixed as ``index_unique`` says), without reading ``obs``."""
        return self._names("obs")

    @obs_names.setter
    def obs_names(self, names: Any) -> None:
        """Set the cell names (a new ``obs`` index, held in memory)."""
        obs = self._frame("obs").copy()
        obs.index = pd.Index(names)
        self.obs = obs

    @property
    def var_names(self) -> pd.Index:
        """The joined gene names (those all files share for ``join="inner"``, those of any file for ``"outer"``)."""
        return self._names("var")

    @var_names.setter
    def var_names(self, names: Any) -> None:
        """Set the gene names (a new ``var`` index, held in memory)."""
        var = self._frame("var").copy()
        var.index = pd.Index(names)
        self.var = var

    def obs_keys(self) -> list[str]:
        """The obs column names, from the files' metadata when ``obs`` has not been read (nothing is read)."""
        if not self._obs_on_disk():
            return [str(c) for c in self._frame("obs").columns]
        return list(self._core.cat_keys())

    def var_keys(self) -> list[str]:
        """The var column names (those ``merge`` keeps)."""
        return [str(c) for c in self._frame("var").columns]

    def obsm_keys(self) -> list[str]:
        """The ``obsm`` keys of the collection (as ``join`` joins the files' keys)."""
        return list(self.obsm.keys())

    def varm_keys(self) -> list[str]:
        """The ``varm`` keys of the collection (those ``merge`` keeps)."""
        return list(self.varm.keys())

    def uns_keys(self) -> list[str]:
        """The ``uns`` keys of the collection (those ``uns_merge`` keeps)."""
        return list(self.uns.keys())

    # --- mappings (the protocol of shadows.core.mapping.ElementMapping) --------------------------------------------------
    def _disk_keys(self, group: str) -> list[str]:
        if group in self._core.stacked_groups:
            return self._core.keys_of(group)
        if group == "uns":
            return [str(k) for k in self._core.uns().keys()]
        return [str(k) for k in self._core.whole_mapping(group).keys()]

    def _mapping(self, group: str) -> ElementMapping:
        return ElementMapping(self, group)

    @property
    def layers(self) -> ElementMapping:
        """The layers, stacked across files and read on first access."""
        return self._mapping("layers")

    @property
    def obsm(self) -> ElementMapping:
        """The ``obsm`` elements, stacked across files and read on first access."""
        return self._mapping("obsm")

    @property
    def obsp(self) -> ElementMapping:
        """The ``obsp`` elements (block-diagonal; empty unless ``pairwise=True``), read on first access."""
        return self._mapping("obsp")

    @property
    def varm(self) -> ElementMapping:
        """The ``varm`` elements as ``merge`` merges them (none by default)."""
        return self._mapping("varm")

    @property
    def varp(self) -> ElementMapping:
        """The ``varp`` elements as ``merge`` merges them (none by default)."""
        return self._mapping("varp")

    @property
    def uns(self) -> ElementMapping:
        """The ``uns`` as ``uns_merge`` merges it (empty by default)."""
        return self._mapping("uns")

    @uns.setter
    def uns(self, value: dict) -> None:
        """Replace all of ``uns`` by ``value`` (held in memory)."""
        for k in list(self.uns.keys()):
            del self.uns[k]
        for k, v in value.items():
            self.uns[k] = v

    def _get(self, group: str, key: str) -> Any:
        k = (group, key)
        for store in (self._state.pending, self._state.inherited, self._state.cache):
            if k in store:
                return store[k]
        if k in self._state.deleted:
            raise KeyError(f"{key!r} was deleted from {group}")
        if key not in self._disk_keys(group):
            raise KeyError(f"{group} of the collection has no key {key!r}; keys: {self._disk_keys(group)}")
        if group == "uns":
            value = self._core.uns()[key]
        elif group not in self._core.stacked_groups:  # read whole: the selection of the view taken
            sel = self._rows if group.startswith("obs") else self._cols
            value = _take(self._core.whole_mapping(group)[key], (sel,) * (1 if group.endswith("m") else 2))
        else:
            value = self._read(f"{group}/{key}")
        self._state.cache[k] = value
        return value

    def _set(self, group: str, key: str, value: Any) -> None:
        self._check_not_view(f"{group}[{key!r}]")
        axes = {"layers": (0, 1), "obsm": (0,), "varm": (1,), "obsp": (0, 0), "varp": (1, 1)}.get(group, ())
        want = tuple(self.shape[a] for a in axes)
        shape = tuple(getattr(value, "shape", (len(value),) if hasattr(value, "__len__") else ()))
        if axes and shape[: len(want)] != want:
            raise ValueError(f"Value for {group}[{key!r}] has shape {shape}; expected {want} (this collection's)")
        self._state.pending[(group, key)] = value
        self._state.cache.pop((group, key), None)
        self._state.deleted.discard((group, key))

    def _delete(self, group: str, key: str) -> None:
        k = (group, key)
        known = key in self._disk_keys(group)
        if k not in self._state.pending and k not in self._state.inherited and not known:
            raise KeyError(f"{group} of the collection has no key {key!r}")
        self._check_not_view(f"{group}[{key!r}]")
        for store in (self._state.pending, self._state.inherited, self._state.cache):
            store.pop(k, None)
        if known:
            self._state.deleted.add(k)

    def _check_not_view(self, what: str) -> None:
        if self.is_view:
            raise ValueError(
                f"Cannot assign {what} on a view of a collection; assign on the collection, or call .to_memory()"
            )

    # --- matrices ---------------------------------------------------------------------------------------------------
    def stacked(self, path: str) -> Stacked | Any:
        """The :class:`~shadows.collection.source.Stacked` source of a matrix element of this collection (or view):
        ``X``, ``layers/<key>``, ``obsm/<key>``, ``obsp/<key>``.  (Elements that are no stored arrays come whole.)"""
        group, key = path.split("/", 1) if "/" in path else (path, "")
        if path != "X" and group not in self._core.stacked_groups:  # (axis=1: obsm, obsp) read whole, joined
            return self._get(group, key)
        whole = self._core.element(path)
        if isinstance(whole, SideBySide):
            return whole.select(self._rows, self._cols)
        if not isinstance(whole, Stacked):
            return _take_rows(whole, self._rows, self.is_view)
        if whole.pairwise:
            return whole.with_rows(self._rows, n_cols=self.n_obs)
        if path == "X" or path.startswith("layers/"):
            if self._cols is None:
                return whole.with_rows(self._rows)
            columns = tuple(self._core.columns_for(f, self._cols)[0] for f in range(len(self._core.parts)))
            return whole.with_rows(self._rows, columns=columns, n_cols=self.n_vars)
        return whole.with_rows(self._rows)

    def _read(self, path: str) -> Any:
        src = self.stacked(path)
        if not isinstance(src, Stacked | SideBySide):
            return src
        return self._read_source(src)

    def _read_source(self, src: Stacked) -> Any:
        """The values of a :class:`Stacked` source, in this collection's array backend."""
        name = self._array_backend
        if name == "numpy":
            return src.read()
        backend = get_array_backend(name)
        if backend.from_source:
            if name.startswith("dask"):
                from shadows.collection.write import dask_array

                return dask_array(src)
            value = src.read()
            return backend.convert_value(value) if backend.convert_value is not None else value
        return backend.convert(src.read())

    @property
    def X(self) -> Any:
        """The data matrix of the concatenation (for a view, its rows and genes), read on first access."""
        k = ("X", "")
        for store in (self._state.pending, self._state.inherited, self._state.cache):
            if k in store:
                return store[k]
        if not self._has_x():
            return None
        self._state.cache[k] = self._read("X")
        return self._state.cache[k]

    def _has_x(self) -> bool:
        """Whether the collection has an X (in memory, or in its files), without reading it."""
        k = ("X", "")
        for store in (self._state.pending, self._state.inherited):
            if k in store:
                return store[k] is not None
        return self._core.parts[0].X is not None  # a lazy shadow's X: a LazyArray, nothing read

    @X.setter
    def X(self, value: Any) -> None:
        """Replace X (held in memory; written by :meth:`write_h5ad`).

        Raises
        ------
        ValueError
            If ``value`` is not of shape :attr:`shape`, or the collection is a view.
        """
        if value is not None and tuple(getattr(value, "shape", ())[:2]) != self.shape:
            raise ValueError(f"X must have shape {self.shape}, got {getattr(value, 'shape', None)}")
        self._check_not_view("X")
        self._state.pending[("X", "")] = value
        self._state.cache.pop(("X", ""), None)

    @property
    def raw(self) -> Any:
        """The files' ``raw`` joined as ``anndata.concat`` joins it (only if every file has one), for this
        collection's (view's) cells and every raw gene; its X is read per file on first access."""
        if ("raw", "") in self._state.cache:
            return self._state.cache[("raw", "")]
        core = self._core.raw()
        if core is None:
            return None
        self._state.cache[("raw", "")] = CollectionRaw(self, core)
        return self._state.cache[("raw", "")]

    # --- vectors ----------------------------------------------------------------------------------------------------
    def obs_vector(self, k: str, *, layer: str | None = None) -> Any:
        """Values of obs column ``k`` (that column alone is read from each file), or of gene ``k`` across cells."""
        if k in self.obs_keys():
            col = self._lazy_obs_column(k)
            if col is None:
                col = self._frame("obs")[k]
            return col.array if _ANNDATA_013 else col.values
        names = self.var_names
        if k not in names:
            raise KeyError(f"{k!r} is neither an obs column nor a var name of the collection")
        j = int(names.get_loc(k))
        m = self._matrix_numpy(layer, (slice(None), slice(j, j + 1)))
        return np.ravel(m.toarray() if sp.issparse(m) else np.asarray(m))

    def _obs_on_disk(self) -> bool:
        """Whether obs is still only in the files (no table read whole, none assigned): columns are read alone."""
        if self._core.cat != "obs":
            return False  # (axis=1: obs is the files' obs merged, read whole)
        if "obs" in self._frames and self._base is not None:
            return False  # a view's own table (read already)
        frame = (self._base if self._base is not None else self)._frames.get("obs")
        return frame is None or (isinstance(frame, LazyFrame) and not frame.is_loaded)

    def _lazy_obs_column(self, k: str) -> pd.Series | None:
        """Column ``k`` of obs (of this view's rows) read alone, while the whole table is not in memory (else
        ``None``): one column of each file, without the cell names."""
        if not self._obs_on_disk():
            return None
        col = self._core.cat_column(k, index=False)
        if self._base is None:
            return col
        sel = self._base_sel[0]
        col = col.iloc[ix.positions(sel, len(col))] if sel is not None else col
        if anndata.settings.remove_unused_categories and isinstance(col.dtype, pd.CategoricalDtype):
            col = col.cat.remove_unused_categories()  # as anndata's views do
        return col

    def var_vector(self, k: str, *, layer: str | None = None) -> Any:
        """Values of var column ``k``, or of cell ``k`` across genes (that row alone is read)."""
        if k in self.var_keys():
            col = self._frame("var")[k]
            return col.array if _ANNDATA_013 else col.values
        names = self.obs_names
        if k not in names:
            raise KeyError(f"{k!r} is neither a var column nor an obs name of the collection")
        i = int(names.get_loc(k))
        m = self._matrix_numpy(layer, (slice(i, i + 1), slice(None)))
        return np.ravel(m.toarray() if sp.issparse(m) else np.asarray(m))

    def _matrix_numpy(self, layer: str | None, index: tuple) -> Any:
        """Part of X (or a layer) as numpy/scipy: in-memory values sliced, stored ones read for that part only."""
        k = ("layers", layer) if layer is not None else ("X", "")
        for store in (self._state.pending, self._state.inherited):
            if k in store:
                return store[k][index]
        view = self[index]
        return view.stacked(f"layers/{layer}" if layer is not None else "X").read()

    def to_df(self, layer: str | None = None) -> pd.DataFrame:
        """X (or a layer) as a dense pandas DataFrame indexed by :attr:`obs_names`, with :attr:`var_names` as columns.

        Parameters
        ----------
        layer
            The layer to use instead of X.
        """
        m = self.layers[layer] if layer is not None else self.X
        m = m.toarray() if sp.issparse(m) else np.asarray(m)
        return pd.DataFrame(m, index=self.obs_names, columns=self.var_names)

    def chunked_X(self, chunk_size: int | None = None, *, layer: str | None = None) -> Iterator[tuple[Any, int, int]]:
        """Yield ``(block, start, end)`` over the rows of X (or ``layer``), as ``AnnData.chunked_X`` does; each
        block reads only its rows, from the files holding them."""
        chunk_size = 6000 if chunk_size is None else int(chunk_size)
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive number of rows, got {chunk_size}")
        path = f"layers/{layer}" if layer is not None else "X"
        k = ("layers", layer) if layer is not None else ("X", "")
        value = self._state.pending.get(k, self._state.inherited.get(k))
        src = self.stacked(path) if value is None else None
        n = self.n_obs
        for start in range(0, n, chunk_size):
            end = min(n, start + chunk_size)
            yield (value[start:end] if value is not None else src.read(slice(start, end, 1))), start, end

    def matrix_blocks(self, layer: str | None = None, chunk_size: int | None = None) -> tuple[tuple, np.dtype, Any]:
        """``(shape, dtype, blocks)`` of X (or ``layer``): ``blocks`` yields ``(start, stop, rows)`` (numpy or
        scipy) in bounded memory, each file's rows read through its own view (what :func:`shadows.stats` reads)."""
        from shadows.collection.write import row_blocks
        from shadows.stream.blocks import in_memory_blocks

        numpy = self._as_numpy()
        path = f"layers/{layer}" if layer is not None else "X"
        k = ("layers", layer) if layer is not None else ("X", "")
        for store in (numpy._state.pending, numpy._state.inherited):
            if k in store:
                value = store[k]
                if value is None:
                    raise ValueError(f"{path} of the collection is None")
                return (
                    value.shape,
                    value.dtype,
                    in_memory_blocks(sp.csr_matrix(value) if sp.issparse(value) else value, 0, chunk_size),
                )
        if layer is not None and layer not in numpy._disk_keys("layers"):
            raise KeyError(f"The collection has no layer {layer!r}; layers: {numpy._disk_keys('layers')}")
        if layer is None and not numpy._has_x():
            raise ValueError(f"The collection ({', '.join(self._core.names[:3])}...) has no X")
        src = numpy.stacked(path)
        return src.shape, src.dtype, row_blocks(numpy, src, path, chunk_size)

    # --- views ------------------------------------------------------------------------------------------------------
    def __getitem__(self, index: Any) -> CollectionShadow:
        """A view: reads only the rows (of the files) and genes it selects."""
        if (ref := accessor_get(self, index)) is not NOT_A_REFERENCE:
            return ref
        oidx, vidx = ix.split_index(index)
        o = ix.normalize(oidx, _LazyNames(self, "obs"), self.n_obs, 0)
        v = ix.normalize(vidx, _LazyNames(self, "var"), self.n_vars, 1)
        view = CollectionShadow(
            self._core,
            array_backend=self._array_backend,
            table_backend=self._table_backend,
            _rows=ix.compose(self._rows, o, self._core.shape[0]),
            _cols=ix.compose(self._cols, v, self._core.shape[1]),
            _view=True,
        )
        if self.is_view:  # a view of a view takes its tables from the same base
            view._base = self._base
            view._base_sel = (
                ix.compose(self._base_sel[0], o, self._base_n(0)),
                ix.compose(self._base_sel[1], v, self._base_n(1)),
            )
        else:
            view._base, view._base_sel = self, (o, v)
        view._state.deleted = set(self._state.deleted)
        for (group, key), value in {**self._state.inherited, **self._state.pending}.items():
            if value is None:
                view._state.inherited[(group, key)] = None
                continue
            axes = {"X": (0, 1), "layers": (0, 1), "obsm": (0,), "varm": (1,), "obsp": (0, 0), "varp": (1, 1)}
            view._state.inherited[(group, key)] = _take(value, tuple((o, v)[a] for a in axes.get(group, ())))
        return view

    def _base_n(self, axis: int) -> int:
        return self._base.n_obs if axis == 0 else self._base.n_vars

    # --- what anndata and scanpy call to change an AnnData in place -------------------------------------------------
    def _init_as_actual(self, *args: Any, **kwargs: Any) -> None:
        self._detach()

    def _detach(self) -> None:
        """A view becomes a collection of its own (anndata's copy-on-write), still reading only its rows."""
        if not self.is_view:
            return
        self._frames = {name: pd.DataFrame(self._frame(name)).copy() for name in ("obs", "var")}
        self._detached = True
        self._base, self._base_sel = None, (None, None)

    def _inplace_subset_obs(self, index: Any) -> None:
        self._subset_in_place(self[index, :], index, 0)

    def _inplace_subset_var(self, index: Any) -> None:
        self._subset_in_place(self[:, index], index, 1)

    def _subset_in_place(self, view: CollectionShadow, index: Any, axis: int) -> None:
        if ix.is_identity(
            ix.normalize(index, self.obs_names if axis == 0 else self.var_names, self.shape[axis], axis),
            self.shape[axis],
        ):
            return
        view._detach()
        self.__dict__.update(view.__dict__)
        self._state = view._state.copy()

    # --- whole-object conversions -----------------------------------------------------------------------------------
    def to_memory(self) -> anndata.AnnData:
        """An in-memory :class:`anndata.AnnData` with every element (of the view) read."""
        numpy = self._as_numpy()
        kwargs: dict[str, Any] = {
            "X": numpy.X,
            "obs": pd.DataFrame(self._frame("obs")).copy(),
            "var": pd.DataFrame(self._frame("var")).copy(),
            "uns": untrack(dict(self.uns.items())),
        }
        for g in ("obsm", "varm", "obsp", "varp", "layers"):
            kwargs[g] = {k: numpy._get(g, k) for k in numpy._mapping(g).keys() if k is not None}
        if numpy.raw is not None:
            kwargs["raw"] = {"X": numpy.raw.X, "var": numpy.raw.var.copy()}
        return anndata.AnnData(**kwargs)

    def copy(self, filename: os.PathLike | None = None) -> anndata.AnnData:
        """An in-memory copy (``to_memory()``); with ``filename``, streamed into that new h5ad file instead."""
        if filename is not None:
            self.write_h5ad(filename)
            return anndata.read_h5ad(filename)
        return self.to_memory()

    def _as_numpy(self) -> CollectionShadow:
        if self._array_backend == "numpy":
            return self
        twin = CollectionShadow.__new__(CollectionShadow)
        twin.__dict__.update(self.__dict__)
        twin._state = self._state.copy()
        twin._array_backend = "numpy"
        twin._state.cache = {}
        return twin

    def write_h5ad(self, filename: os.PathLike | str, **kwargs: Any) -> Path:
        """Stream the collection (or view) into one new ``.h5ad`` file, file by file, in bounded memory.

        An existing ``filename`` is refused (never replaced).  Keyword arguments: ``compression``,
        ``compression_opts``, ``chunk_size`` (rows per block), ``convert_strings_to_categoricals``, ``progress``.
        """
        from shadows.collection.write import write_collection

        return write_collection(self, filename, "h5ad", **kwargs)

    def write_zarr(self, store: os.PathLike | str, **kwargs: Any) -> Path:
        """Stream the collection (or view) into one new zarr store (see :meth:`write_h5ad`)."""
        from shadows.collection.write import write_collection

        return write_collection(self, store, "zarr", **kwargs)

    def write(self, filename: os.PathLike | str | None = None, **kwargs: Any) -> Path:
        """Same as :meth:`write_h5ad` (the path written): a collection has no file of its own to write back into.

        Raises
        ------
        ValueError
            If no ``filename`` is given.
        """
        if filename is None:
            raise ValueError("A collection has no file of its own: give a filename (write_h5ad(path))")
        return self.write_h5ad(filename, **kwargs)

    # --- repr -------------------------------------------------------------------------------------------------------
    def __repr__(self) -> str:
        core = self._core
        head = "View of " if self.is_view else ""
        lines = [
            f"{head}CollectionShadow of {len(core.parts)} files ({core.join} join{', axis=var' if core.axis else ''}) "
            f"with n_obs × n_vars = "
            f"{self.n_obs} × {self.n_vars}"
        ]
        shown = core.names if len(core.names) <= 8 else core.names[:4] + ["..."] + core.names[-3:]
        lengths = np.diff(core.offsets)
        for name in shown:
            if name == "...":
                lines.append("        ...")
                continue
            f = core.names.index(name)
            unit = "cells" if core.axis == 0 else "genes"
            lines.append(f"        {core.keys[f]}: {name} ({int(lengths[f])} {unit})")
        lines.insert(1, "    sources:")
        for name in ("obs", "var"):  # (the merged table's columns only if merge keeps some: nothing read else)
            known = name == core.cat or name in self._frames or core.merge_given
            cols = (self.obs_keys() if name == "obs" else self.var_keys()) if known else []
            if cols:
                lines.append(f"    {name}: " + ", ".join(f"'{c}'" for c in cols))
        for group in ("uns", "obsm", "varm", "layers", "obsp", "varp"):
            keys = [k for k in getattr(self, group).keys() if k is not None]
            if keys:
                lines.append(f"    {group}: " + ", ".join(f"'{k}'" for k in keys))
        return "\n".join(lines)

    def __eq__(self, other: object) -> bool:
        return self is other

    __hash__ = object.__hash__


class _CatColumns:
    """A collection's table along the concatenated axis (obs; var for ``axis=1``), read through its
    :class:`~shadows.collection.core.Core` (see :class:`LazyFrame`)."""

    def __init__(self, core: Core):
        self._core = core

    def keys(self) -> list[str]:
        return self._core.cat_keys()

    def names(self) -> pd.Index:
        return self._core.cat_names()

    def column(self, key: str) -> pd.Series:
        return self._core.cat_column(key)

    def frame(self) -> pd.DataFrame:
        return self._core.cat_table().copy()  # assignments change this collection's table, not the shared one


def _take_rows(value: Any, rows: ix.Sel, is_view: bool) -> Any:
    """Rows of a whole element (a table in obsm...); a view's tables drop unused categories, as anndata's do."""
    if rows is None and not is_view:
        return value
    if isinstance(value, pd.DataFrame):
        out = value.iloc[ix.positions(rows, len(value))] if rows is not None else value.copy()
        return _as_view_frame(_without_unused_categories(out), True) if is_view else out
    return _take(value, (rows,))


def _without_unused_categories(df: pd.DataFrame) -> pd.DataFrame:
    df = pd.DataFrame(df).copy()
    for c in df.columns:
        if isinstance(df[c].dtype, pd.CategoricalDtype):
            df[c] = df[c].cat.remove_unused_categories()
    return df
