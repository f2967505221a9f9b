"""``AnnDataShadow``: an AnnData whose elements stay in the file until first asked for.

The class is a thin façade: :mod:`shadows.io.storage` opens the file, :mod:`shadows.spec.selection` turns indexers into
positions, :mod:`shadows.spec` reads the selected part of each element, :mod:`shadows.backends` converts it,
and the result is cached here.  It subclasses :class:`anndata.AnnData` (without running its constructor) so that
scanpy and friends accept it; every element a shadow hands out is an ordinary in-memory object.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anndata
import numpy as np
import pandas as pd
import scipy.sparse as sp

from shadows.backends import check_backend_name, get_array_backend, get_table_backend
from shadows.core.compat import (
    NOT_A_REFERENCE,
    SlicedMatrix,
    accessor_get,
    check_attached,
    detach,
    matrix_is_only_sliced,
    subset_in_place,
)
from shadows.core.connection import ConnectionMixin
from shadows.core.keys import check_value
from shadows.core.lazy_dict import LazyDict
from shadows.core.lazy_x import is_dask_array, take_dask
from shadows.core.mapping import ALIGNMENT, ElementMapping, TrackedDict, untrack
from shadows.core.raw import RawShadow, RawSnapshot, empty_columns_as_str
from shadows.core.repr import html_repr, text_repr
from shadows.core.scanpy_hooks import install as install_scanpy_dask
from shadows.core.state import ShadowState, no_table
from shadows.io.remote_prefetch import prefetched
from shadows.io.storage import Storage, attr, is_array, is_group, is_h5, member
from shadows.spec import encoding_of, read_element, read_frame_parts
from shadows.spec import selection as ix
from shadows.spec.frames import index_column, inferred_strings, read_frame_values
from shadows.spec.lazy_array import ElementSource, LazyArray
from shadows.spec.legacy import categories_from_uns, legacy_uns_keys
from shadows.spec.registry import ARRAY_ENCODINGS, SPARSE_ENCODINGS, TABLE_ENCODINGS, CorruptElementError

_LEGACY_NEIGHBORS = ("distances", "connectivities")
# tables in these groups have cells (genes) as rows: the index column's name for polars/pyarrow tables
_TABLE_AXIS_NAMES = {"obsm": "obs_names", "varm": "var_names"}
# rows per block of AnnData.chunked_X when no chunk size is given (anndata's own default)
_ANNDATA_CHUNK = 6000
# X's generations: a new one whenever a shadow's X is replaced or subset (see shadows.core.raw._XLink)
_X_GENERATIONS = itertools.count()
# connections of views, by file: a writer's reopen("r+") closes them (they reopen on their next read)
_VIEW_STORAGES: weakref.WeakSet = weakref.WeakSet()
_MISSING = object()  # a cache lookup's default: None is a value an element can have


def _looks_like_mudata(root: Any) -> bool:
    """Whether ``root`` holds a MuData (``mod``, ``obs``, no ``X``, encoding-type ``MuData``), cheapest test first.

    A zarr group holds its attributes in memory and each member lookup is a round trip to zarr's event-loop thread
    (0.5-1 ms); an HDF5 attribute read costs about 60 us, a member lookup 20 us.
    """
    if is_h5(root) and "mod" not in root:
        return False
    return attr(root, "encoding-type") == "MuData" and "mod" in root and "obs" in root and "X" not in root


def fingerprint(values: Any) -> int:
    """A cheap hash of a column, to notice later whether it was changed in memory."""
    try:
        return int(pd.util.hash_pandas_object(pd.Series(values), index=False).sum())
    except TypeError:
        return id(values)


class AnnDataShadow(ConnectionMixin, anndata.AnnData):
    """A lazy, low-memory stand-in for an AnnData file (``.h5ad`` or ``.zarr``).

    Parameters
    ----------
    path
        An ``.h5ad`` file, a ``.zarr`` store (format v2 or v3), or a path inside a file naming a nested AnnData
        (``file.h5mu/mod/rna`` or ``file.h5mu/rna``); or a remote one: a URL (``s3://``, ``gs://``, ``https://``,
        any fsspec protocol), an fsspec ``OpenFile``/file/``FSMap``, or a zarr store object (see ``docs/remote.md``).
    mode
        ``"r"`` (default) or ``"r+"`` (needed for :meth:`write`).
    format
        Override format detection: ``"h5ad"``, ``"h5mu"``, ``"hdf5"``, ``"h5"`` or ``"zarr"``.
    array_backend
        Type of the arrays handed out: ``"numpy"`` (numpy/scipy), ``"jax"``, ``"torch"``, ``"dask"``, or a
        registered name.
    table_backend
        Type of the tables handed out: ``"pandas"``, ``"polars"``, ``"pyarrow"``, or a registered name.
    lazy
        Hand out :class:`~shadows.spec.lazy_array.LazyArray` objects that read only what they are sliced with.
    storage_options
        For a URL: options of its fsspec filesystem (credentials, ``client_kwargs={"endpoint_url": ...}``...).

    Examples
    --------
    >>> s = AnnDataShadow("atlas.h5ad")  # doctest: +SKIP
    >>> s.obsm["X_umap"]  # read now, cached  # doctest: +SKIP
    >>> s[:, "CD3E"].X  # one gene, read without the rest of the matrix  # doctest: +SKIP
    """

    # True for the internal shadow over a MuData's root group (its global obs/var/obsm/...; see shadows.mudata.shadow)
    _mudata_root = False

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        mode: str = "r",
        format: str | None = None,
        array_backend: str = "numpy",
        table_backend: str = "pandas",
        lazy: bool = False,
        storage_options: dict | None = None,
    ):
        self._setup(
            path,
            mode=mode,
            format=format,
            array_backend=array_backend,
            table_backend=table_backend,
            lazy=lazy,
            storage_options=storage_options,
        )

    @classmethod
    def _internal(
        cls,
        path: str | os.PathLike,
        *,
        view: tuple | None = None,
        storage: Storage | None = None,
        axes: tuple[int, int] | None = None,
        **options: Any,
    ) -> AnnDataShadow:
        """A shadow the package makes itself: a view (``view``: the selection on the file's axes), on a connection
        it shares (``storage``: a MuData's modality) or made for it, with the file's axis lengths known (``axes``)."""
        shadow = cls.__new__(cls)
        shadow._setup(path, view=view, storage=storage, axes=axes, **options)
        return shadow

    def _setup(
        self,
        path: str | os.PathLike,
        *,
        mode: str = "r",
        format: str | None = None,
        array_backend: str = "numpy",
        table_backend: str = "pandas",
        lazy: bool = False,
        storage_options: dict | None = None,
        view: tuple | None = None,
        storage: Storage | None = None,
        axes: tuple[int, int] | None = None,
    ) -> None:
        check_backend_name(array_backend, "array")
        check_backend_name(table_backend, "table")
        if array_backend != "numpy":  # before scanpy looks its functions up (sc.pp.calculate_qc_metrics(shadow))
            install_scanpy_dask()
        if storage is None:
            storage = Storage(path, mode=mode, format=format, storage_options=storage_options)
        # a modality of a MuDataShadow shares its parent's file handle and must not close it when collected
        self._state = ShadowState(
            storage,
            owns_storage=type(storage) is Storage,
            array_backend=array_backend,
            table_backend=table_backend,
            lazy=bool(lazy),
        ).bind(self)
        self._resolve_nested()
        root = self._state.storage.root
        where = self._state.storage.describe()
        if axes is not None:
            # a view of a shadow already checked: the file's axis lengths come from the parent (each attribute
            # read costs tens of microseconds; a view is often made for one small read)
            self._state.set_file_axes(axes)
        elif not self._mudata_root and _looks_like_mudata(root):
            raise ValueError(
                f"'{where}' is a MuData file: open it with MuDataShadow, or one modality as '{where}/mod/<name>'"
            )
        elif is_h5(root):
            # HDF5: the lengths are read on first use (ShadowState.file_axes), and that the tables exist is checked
            # now, so that a file holding no AnnData fails at open (a link lookup each, about 10 us)
            for name in ("obs", "var"):
                if name not in root:
                    raise no_table(root, name, where)
        elif attr(root, "encoding-type") != "anndata":
            # zarr: each member lookup is a round trip to zarr's event-loop thread (0.5-1 ms), and checking that the
            # tables exist costs two of the four that reading the lengths does.  A group whose attributes (held in
            # memory) say it is an AnnData has them (anndata writes both); any other is checked now, lengths read
            self._state.file_axes()
        o, v = view if view is not None else (None, None)
        # a selection of everything, in order (a modality of a MuData view that keeps all its features), reads as
        # no selection: whole-axis fast paths (copies as stored, major-axis reads) then apply
        self._state.oidx = None if o is None or ix.is_identity(o, self._state.n_obs_file) else o
        self._state.vidx = None if v is None or ix.is_identity(v, self._state.n_vars_file) else v
        self._is_view = view is not None  # shadow[:] is a view too (as in anndata), though it selects everything
        self._x_gen = next(_X_GENERATIONS)
        # whether each axis is selected by positions (numpy's fancy indexing) rather than a slice: anndata's views
        # take X[rows, cols] with numpy, whose result layout follows from that (see _view_layout)
        self._fancy = (isinstance(o, np.ndarray), isinstance(v, np.ndarray))

    def _resolve_nested(self) -> None:
        st = self._state.storage
        if st.inner and st.inner not in st.file and f"mod/{st.inner}" in st.file:
            st.inner = f"mod/{st.inner}"  # file.h5mu/rna means the modality rna
        if st.inner and st.inner not in st.file:
            mods = list(st.file["mod"].keys()) if "mod" in st.file else []
            raise KeyError(f"'{st.filename}' has no group '{st.inner}'" + (f"; modalities: {mods}" if mods else ""))

    # --- identity -------------------------------------------------------------------------------------------------
    @property
    def file(self) -> Any:
        """The open h5py File or zarr Group."""
        return self._state.storage.file

    @property
    def filename(self) -> os.PathLike:
        """Path of the file or zarr store the shadow reads (for a nested AnnData, the file that holds it).

        Unlike a backed AnnData's ``filename``, it cannot be set: a shadow always reads its file, and assigning
        another name would not copy anything.
        """
        return self._state.storage.filename

    @property
    def mode(self) -> str:
        """Mode the file is open with, ``"r"`` or ``"r+"`` (:meth:`reopen` changes it)."""
        return self._state.storage.mode

    @property
    def isbacked(self) -> bool:
        """Always ``False``, although the shadow reads from a file.

        ``True`` would send anndata and scanpy down their backed-mode code paths, which expect h5py datasets in
        ``X``; every value a shadow hands out is an in-memory object, so the in-memory paths are the right ones.
        """
        # False on purpose: every value handed out is in memory, so scanpy takes its in-memory code paths
        return False

    @property
    def is_view(self) -> bool:
        """Whether this shadow is a view (``shadow[...]``) of another one, as :attr:`anndata.AnnData.is_view`."""
        # a view that anndata/scanpy turned into an object of its own is no view any more (see shadows.core.compat)
        return self.__dict__.get("_is_view", False) and not self.__dict__.get("_detached", False)

    @property
    def isview(self) -> bool:
        """Same as :attr:`is_view` (anndata's old name, kept as anndata keeps it)."""
        return self.is_view

    @property
    def n_obs(self) -> int:
        """Number of observations (cells), the selected ones for a view; known without reading any element."""
        return ix.length(self._state.oidx, self._state.n_obs_file)

    @property
    def n_vars(self) -> int:
        """Number of variables (features), the selected ones for a view; known without reading any element."""
        return ix.length(self._state.vidx, self._state.n_vars_file)

    @property
    def shape(self) -> tuple[int, int]:
        """``(n_obs, n_vars)``, without reading any element."""
        return self.n_obs, self.n_vars

    def __len__(self) -> int:
        return self.n_obs

    def _owned_connection(self) -> Storage | None:
        state = self.__dict__.get("_state")  # None when __init__ failed before the state was made
        return state.storage if state is not None and state.owns_storage else None

    # --- generic element access -----------------------------------------------------------------------------------
    def _elem_path(self, group: str, key: str | None) -> str:
        if key is None:
            return group
        if group == "obsp" and key in _LEGACY_NEIGHBORS and f"obsp/{key}" not in self._state.root():
            legacy = f"uns/neighbors/{key}"
            if legacy in self._state.root():
                return legacy  # anndata moves these to obsp when reading
        return f"{group}/{key}"

    def _disk_keys(self, group: str, g: Any = _MISSING) -> list[str]:
        """The keys of ``group`` in the file (``g``: the group itself where the caller has looked it up)."""
        root = self._state.root()
        # each lookup in a zarr group is a round trip to zarr's event-loop thread (~0.5 ms): the member once
        g = member(root, group) if g is _MISSING else g
        out = [str(k) for k in g.keys()] if g is not None and is_group(g) else []
        if group in ("obsm", "varm") and g is not None and is_array(g):
            out = list(g.dtype.names or [])  # anndata < 0.7: one compound dataset
        if group == "uns":
            hidden = legacy_uns_keys(root) | (self._view_dropped_colors(out) if self.is_view else set())
            out = [k for k in out if k not in hidden]
        if group == "obsp" and (nb := member(root, "uns/neighbors")) is not None:
            out += [k for k in _LEGACY_NEIGHBORS if k in nb and k not in out]
        return out

    def _view_dropped_colors(self, keys: list[str]) -> set[str]:
        """``<col>_colors`` that anndata drops from a view's uns: their length does not match the categories."""
        out = set()
        for key in keys:
            if not key.endswith("_colors"):
                continue
            n_cats = self._n_categories(key[: -len("_colors")])
            if n_cats is not None:
                shape = self._state.root()[f"uns/{key}"].shape
                if len(shape) == 1 and shape[0] != n_cats:
                    out.add(key)
        return out

    def _n_categories(self, col: str) -> int | None:
        """Number of categories of categorical column ``col`` of obs (or var), from shapes alone; None if none."""
        root = self._state.root()
        for frame in ("obs", "var"):
            g = root[frame]
            if not is_group(g) or col not in g:
                continue
            c = g[col]
            if is_group(c) and encoding_of(c)[0] == "categorical":
                return int(c["categories"].shape[0])
            if not is_group(c) and "categories" in c.attrs:  # anndata 0.7: categories behind a reference
                from shadows.spec.legacy import read_referenced_categorical

                return len(read_referenced_categorical(g, c, (np.zeros(0, np.int64),), self._state.ctx()).categories)
        return None

    def _get(self, group: str, key: str) -> Any:
        k = (group, key)
        if k in self._state.pending:
            return self._state.pending[k]
        if k in self._state.deleted:
            raise KeyError(f"{key!r} was deleted from {group} (pending write)")
        if k in self._state.inherited:
            return self._state.inherited[k]
        # one lookup, never `in` then `[]`: clear_cache() in another thread may drop the entry in between
        if (cached := self._state.cache.get(k, _MISSING)) is not _MISSING:
            return cached
        path = self._elem_path(group, key)
        root = self._state.root()
        g = member(root, group)  # looked up once: `in` and `[]` on a zarr group are a round trip each
        if group in ("obsm", "varm") and g is not None and is_array(g) and key in self._disk_keys(group, g):
            from shadows.spec.dense import read_dense

            value = self._state.cache[k] = np.asarray(read_dense(g, self._state.sels(group))[key])
            return value
        elem = None
        if group == "uns" or path != f"{group}/{key}":  # uns' keys hide nothing read here; a legacy obsp path
            missing = path not in root
        elif "/" not in key:  # a key of the group's listing is its member of that name: looked up alone
            # (listing the group, then opening the member, were two more round trips to zarr's event-loop thread)
            elem = member(g, key) if g is not None and is_group(g) else None
            missing = elem is None
        else:
            missing = g is None or key not in self._disk_keys(group, g)
        if missing:
            raise KeyError(
                f"{group} of '{self._state.storage.describe()}' has no key {key!r}; keys: {self._disk_keys(group)}"
            )
        if group == "uns" and is_group(elem := root[path]) and encoding_of(elem)[0] == "dict":
            value = self._lazy_uns(key, path)  # a nested dict: each value read when asked for
        else:
            value = self._read(path, self._state.sels(group), group, elem)
            if group == "uns":
                value = self._uns_value(key, value)
        self._state.cache[k] = value
        return value

    def _lazy_uns(self, key: str, path: str) -> LazyDict:
        """``uns[key]`` of a dict group, as a dict that reads each of its values (at any depth) on first access."""
        hidden: frozenset[str] = frozenset()
        if key == "neighbors" and "obsp" not in self._state.root():
            # anndata moves 2-D distances/connectivities of old files from uns["neighbors"] to obsp
            group = self._state.root()[path]
            hidden = frozenset(k for k in _LEGACY_NEIGHBORS if k in group and _is_2d(group[k]))
        convert = (
            None
            if self._state.array_backend == "numpy" and self._state.table_backend == "pandas"
            else self._convert_uns_arrays
        )
        return LazyDict(self._open_element, path, lambda: self._mark_uns_changed(key), convert, hidden)

    @contextlib.contextmanager
    def _open_element(self, path: str) -> Iterator[Any]:
        """The element at ``path``; through a connection of its own for the time of the read if this one is closed
        (values cached before ``close()`` stay usable, and a lazy ``uns`` dict is such a value)."""
        if self._state.storage.is_open:
            yield self._state.root()[path]
            return
        st = Storage(self._state.storage.describe(), mode="r", format=self._state.storage.format)
        try:
            yield st.root[path]
        finally:
            st.close()

    def _read(self, path: str, sel: tuple, group: str = "", elem: Any = None) -> Any:
        """Read the element at ``path`` (``elem``, where the caller holds it) restricted to ``sel`` and convert it
        with the backends."""
        elem = self._state.root()[path] if elem is None else elem
        encoding = encoding_of(elem)
        enc = encoding[0]
        if enc in ARRAY_ENCODINGS:
            backend = get_array_backend(self._state.array_backend)
            if self._state.lazy or backend.from_source:
                source = ElementSource.from_storage(self._state.storage, path, sel)
                return LazyArray(source) if self._state.lazy else backend.convert(source)
            value = read_element(elem, sel, self._state.ctx(), encoding)
            if path == "X" or path.startswith("layers/"):
                value = _view_layout(value, self._fancy)
            return backend.convert(value)
        if enc in TABLE_ENCODINGS:
            parts = read_frame_parts(elem, sel[:1], self._state.ctx())
            parts.axis_name = _TABLE_AXIS_NAMES.get(path.rsplit("/", 2)[-2] if "/" in path else "")
            if group == "uns":
                return self._table(parts)
            if self.is_view:  # anndata's views drop unused categories of aligned tables too
                _drop_unused_categories(parts)
            return _as_view_frame(self._table(parts), self.is_view)
        value = read_element(elem, sel, self._state.ctx(), encoding)
        if group == "uns":
            value = self._convert_uns_arrays(value)
        return value

    def _convert_uns_arrays(self, value: Any) -> Any:
        """Arrays (and tables) nested in a ``uns`` dict, read with it, converted with the backends."""
        if self._state.array_backend == "numpy" and self._state.table_backend == "pandas":
            return value
        if isinstance(value, dict):
            return {k: self._convert_uns_arrays(v) for k, v in value.items()}
        if isinstance(value, np.ndarray) and value.dtype.kind in "biufc" and self._state.array_backend != "numpy":
            backend = get_array_backend(self._state.array_backend)
            # a from_source backend converts values already in memory with convert_value (if it has one)
            convert = backend.convert_value if backend.from_source else backend.convert
            return convert(value) if convert is not None else value
        if isinstance(value, pd.DataFrame) and self._state.table_backend != "pandas":
            from shadows.backends.tables import parts_from_pandas

            return self._table(parts_from_pandas(value))
        return value

    def _table(self, parts: Any) -> Any:
        backend = get_table_backend(self._state.table_backend)
        return backend.convert(parts) if backend.from_parts else backend.convert(parts.to_pandas())

    def _uns_value(self, key: str, value: Any) -> Any:
        if key == "neighbors" and isinstance(value, dict) and "obsp" not in self._state.root():
            value = {k: v for k, v in value.items() if not (k in _LEGACY_NEIGHBORS and getattr(v, "ndim", 0) == 2)}
        if self.is_view and key.endswith("_colors"):
            value = self._view_colors(key, value)
        if isinstance(value, dict):
            return TrackedDict(value, lambda: self._mark_uns_changed(key))
        return value

    def _mark_uns_changed(self, key: str) -> None:
        if ("uns", key) not in self._state.pending and (
            value := self._state.cache.pop(("uns", key), _MISSING)
        ) is not _MISSING:
            self._state.pending[("uns", key)] = value

    def _view_colors(self, key: str, colors: Any) -> Any:
        """anndata trims ``<col>_colors`` of a view to the categories still used; so do we."""
        col = key[: -len("_colors")]
        for frame, sel in (("obs", self._state.oidx), ("var", self._state.vidx)):
            g = self._state.root()[frame]
            if not is_group(g) or col not in g or encoding_of(g[col])[0] != "categorical":
                continue
            n_cats = int(g[col]["categories"].shape[0])
            colors = np.asarray(colors)
            if colors.ndim == 0:
                return colors[None]
            if len(colors) != n_cats:
                return colors  # anndata drops mismatched colors from a view; keep the file's value visible
            codes = read_element(g[col]["codes"], (sel,), self._state.ctx())
            used = np.unique(codes[codes >= 0])
            return colors[used]
        return colors

    def _set(self, group: str, key: str, value: Any) -> None:
        if self.is_view:
            raise ValueError(
                f"Cannot assign {group}[{key!r}] on a view of '{self._state.storage.describe()}'; "
                "assign on the full shadow, or call .to_memory() for an in-memory copy"
            )
        self._check_shape(group, key, value)
        k = (group, key)
        if group == "uns" and isinstance(value, dict):
            value = TrackedDict(untrack(value), lambda: None)
        self._state.pending[k] = value
        self._state.cache.pop(k, None)
        self._state.deleted.discard(k)

    def _delete(self, group: str, key: str) -> None:
        k = (group, key)
        on_disk = key in self._disk_keys(group)
        # an in-place subset (sc.pp.filter_genes) carries the pending values it cut among the inherited ones
        if k not in self._state.pending and k not in self._state.inherited and not on_disk:
            raise KeyError(f"{group} of '{self._state.storage.describe()}' has no key {key!r}")
        self._state.pending.pop(k, None)
        self._state.inherited.pop(k, None)
        self._state.cache.pop(k, None)
        if on_disk:
            self._state.deleted.add(k)

    def _check_shape(self, group: str, key: str, value: Any) -> None:
        axes = ALIGNMENT.get(group, ())
        if not axes:
            return
        shape = getattr(value, "shape", None)
        if shape is None:
            value_len = len(value) if hasattr(value, "__len__") else None
            shape = (value_len,) if value_len is not None else None
        want = tuple(self.shape[a] for a in axes)
        if shape is None or len(shape) < len(want) or tuple(shape[: len(want)]) != want:
            what = "×".join(str(w) for w in want) + (" × ..." if group in ("obsm", "varm") else "")
            raise ValueError(
                f"Value for {group}[{key!r}] has shape {tuple(shape) if shape is not None else None}; "
                f"expected {what} (the {' × '.join(ix.AXIS_NAMES[a] for a in axes)} of this AnnData)"
            )

    # --- elements -------------------------------------------------------------------------------------------------
    @property
    def X(self) -> Any:
        """The data matrix, read on first access and cached (for a view, only its selected part is read)."""
        if (before := self._edit_before()) is not None:
            return before.X  # muon's filter subsets X of before itself (see _axis_edit)
        k = ("X", "")
        if self._state.array_backend != "numpy":
            install_scanpy_dask()  # scanpy's dask route summing in float64, as its in-memory route (scanpy_dask)
        if k in self._state.pending:
            return self._state.pending[k]
        if k in self._state.inherited:
            return self._state.inherited[k]
        if (value := self._state.cache.get(k, _MISSING)) is _MISSING:
            if "X" not in self._state.root():
                return None
            if matrix_is_only_sliced():  # sc.get.obs_df & co. slice a few genes out of it: read only those
                return SlicedMatrix(self, "X", (self._state.oidx, self._state.vidx))
            return self._x_now()
        return value

    def _x_in_memory(self) -> bool:
        k = ("X", "")
        return k in self._state.pending or k in self._state.inherited or k in self._state.cache

    def _x_now(self) -> Any:
        """X as the getter hands it out, read into the cache if it is not in memory (never a SlicedMatrix)."""
        k = ("X", "")
        for store in (self._state.pending, self._state.inherited, self._state.cache):
            if (value := store.get(k, _MISSING)) is not _MISSING:  # one lookup: clear_cache() may run meanwhile
                return value
        if "X" not in self._state.root():
            return None
        value = self._state.cache[k] = self._read("X", (self._state.oidx, self._state.vidx))
        return value

    def _new_x_generation(self) -> None:
        """X is about to be replaced or subset: a raw linked to the X of now keeps it (see shadows.core.raw._XLink)."""
        for store in (self._state.pending, self._state.inherited):
            raw = store.get(("raw", ""))
            if isinstance(raw, RawSnapshot):
                raw.release(self)
        self._x_gen = next(_X_GENERATIONS)

    @X.setter
    def X(self, value: Any) -> None:
        """Replace X in memory; the file changes only on :meth:`write`.

        Raises
        ------
        ValueError
            If ``value`` is not of shape :attr:`shape`, or the shadow is a view.
        """
        if value is not None:
            shape = getattr(value, "shape", None)
            if shape is None or tuple(shape[:2]) != self.shape:
                raise ValueError(f"X must have shape {self.shape}, got {shape}")
        check_value(self, "X", "", value, assigning=True)
        if self.is_view:
            raise ValueError("Cannot assign X on a view; assign on the full shadow")
        self._new_x_generation()
        self._state.pending[("X", "")] = value
        self._edit_x_put()
        self._state.cache.pop(("X", ""), None)

    @X.deleter
    def X(self) -> None:
        """Remove X (``X = None``, pending until :meth:`write`)."""
        self.X = None

    def _frame(self, name: str) -> Any:
        k = (name, "")
        if k in self._state.pending:
            return self._state.pending[k]
        if k in self._state.inherited:
            return self._state.inherited[k]
        if (value := self._state.cache.get(k, _MISSING)) is _MISSING:
            sel = self._state.oidx if name == "obs" else self._state.vidx
            g = self._state.root()[name]
            with prefetched(g) if sel is None else contextlib.nullcontext():  # a remote zarr table: all chunks at once
                parts = read_frame_parts(g, (sel,), self._state.ctx())
            parts.axis_name = f"{name}_names"  # how table backends without an index name the index column
            parts.index = self._str_names(name, parts.index, parts.index_name)
            if sel is None:  # the axis lengths may have come from X's shape (ShadowState.file_axes): do they agree?
                self._check_table_length(name, len(parts.index))
            self._fix_categories(name, parts, sel)
            value = _as_view_frame(empty_columns_as_str(self._table(parts)), self.is_view)
            fps = None
            if isinstance(value, pd.DataFrame):
                fps = {c: fingerprint(value[c]) for c in value.columns}, value.index
            # the table and its fingerprints go in together: clear_cache() in another thread must not drop the
            # fingerprints of a table it keeps (a column changed later would then not be written)
            with self._cache_lock:
                if fps is not None:
                    self._state.frame_fp[name], self._state.index_fp[name] = fps
                self._state.cache[k] = value
        return value

    def _check_table_length(self, name: str, n: int) -> None:
        want = self._state.n_obs_file if name == "obs" else self._state.n_vars_file
        if n != want:
            raise CorruptElementError(
                f"'{self._state.storage.describe()}': {name} has {n} rows but X has {want} "
                f"{'rows' if name == 'obs' else 'columns'}: the file is damaged or was written inconsistently"
            )

    def _fix_categories(self, name: str, parts: Any, sel: ix.Sel) -> None:
        root = self._state.root()
        if not is_group(root[name]) and "uns" in root:  # anndata < 0.7: categories kept in uns
            df = pd.DataFrame(parts.columns)
            df, _ = categories_from_uns(root["uns"], df)
            parts.columns = {
                c: df[c].to_numpy() if not isinstance(df[c].dtype, pd.CategoricalDtype) else df[c].array
                for c in df.columns
            }
        # anndata drops unused categories of obs and var in every view, whichever axes it slices
        if self.is_view and anndata.settings.remove_unused_categories:
            _drop_unused_categories(parts)

    @property
    def obs(self) -> Any:
        """Cell annotations (the selected rows for a view)."""
        return self._frame("obs")

    @obs.setter
    def obs(self, value: pd.DataFrame) -> None:
        """Replace the cell annotations (pending until :meth:`write`; unchanged columns are not rewritten).

        Raises
        ------
        ValueError
            If ``value`` does not have :attr:`n_obs` rows, or the shadow is a view.
        """
        self._set_frame("obs", value)

    @property
    def var(self) -> Any:
        """Feature annotations (the selected rows for a view)."""
        return self._frame("var")

    @var.setter
    def var(self, value: pd.DataFrame) -> None:
        """Replace the feature annotations (pending until :meth:`write`; unchanged columns are not rewritten).

        Raises
        ------
        ValueError
            If ``value`` does not have :attr:`n_vars` rows, or the shadow is a view.
        """
        self._set_frame("var", value)

    def _set_frame(self, name: str, value: pd.DataFrame) -> None:
        n = self.n_obs if name == "obs" else self.n_vars
        if len(value) != n:
            raise ValueError(f"{name} must have {n} rows, got {len(value)}")
        check_value(self, name, "", value, assigning=True)
        if self.is_view:
            raise ValueError(f"Cannot assign {name} on a view; assign on the full shadow")
        if name not in self._state.frame_fp:
            self._frame(name)  # remember what was on disk, to tell changed columns from unchanged ones
        self._state.inherited.pop((name, ""), None)  # the table an in-place subset left is replaced too
        self._state.cache[(name, "")] = value

    # --- muon's in-place filters (mu.pp.filter_obs/filter_var/intersect_obs) -----------------------------------------
    # muon filters an AnnData by assigning its private tables and then each element, subset by itself:
    #   data._obs = obs[subset]; data.obsm = {...}; data.obsp = {...}; data.layers = {...}
    #   data.X = data.X[subset, :]; data.raw._X = data.raw.X[subset, :]      (X and raw read *after* _obs is set)
    # A shadow takes `_obs = table` as an in-place subset to the table's rows (every element sliced, nothing read),
    # and until muon has put X (and raw's X) back, hands out the X and raw of before, which muon subsets itself.
    @property
    def _obs(self) -> Any:
        return self.obs

    @_obs.setter
    def _obs(self, value: pd.DataFrame) -> None:
        self._axis_edit(0, value)

    @property
    def _var(self) -> Any:
        return self.var

    @_var.setter
    def _var(self, value: pd.DataFrame) -> None:
        self._axis_edit(1, value)

    def _axis_edit(self, axis: int, table: pd.DataFrame) -> None:
        name = ix.AXIS_NAMES[axis]
        names = self.obs_names if axis == 0 else self.var_names
        pos = names.get_indexer(table.index) if names.is_unique else np.full(len(table), -1)
        if (pos < 0).any():
            raise ValueError(
                f"Cannot set {name} of '{self._state.storage.describe()}' to a table whose rows are not among its "
                f"{name}_names (only a subset of the rows, as muon's filters assign, is supported)"
            )
        before = AnnDataShadow.__new__(type(self))
        before.__dict__.update(self.__dict__)
        before._state = self._state.copy().bind(before)
        before._state.owns_storage = False
        self._subset_in_place(pos, axis)
        self._set_frame(name, table)
        has_raw = axis == 0 and self.raw is not None
        self.__dict__["_muon_edit"] = (before, has_raw)

    def _edit_before(self) -> AnnDataShadow | None:
        edit = self.__dict__.get("_muon_edit")
        return edit[0] if edit is not None else None

    def _edit_x_put(self) -> None:
        edit = self.__dict__.get("_muon_edit")
        if edit is not None and not edit[1]:
            del self.__dict__["_muon_edit"]

    def _names(self, name: str) -> pd.Index:
        frame_key = (name, "")
        for store in (self._state.pending, self._state.inherited, self._state.cache):
            if isinstance(frame := store.get(frame_key), pd.DataFrame):
                return frame.index
        k = (f"{name}_names", "")
        if (cached := self._state.cache.get(k, _MISSING)) is _MISSING:
            g = self._state.root()[name]
            sel = self._state.oidx if name == "obs" else self._state.vidx
            if is_group(g):
                idx_key, col = index_column(g)
                values = inferred_strings(read_frame_values(col, (sel,), self._state.ctx()), col)
                names = self._str_names(name, values, None if idx_key == "_index" else idx_key)
            else:
                names = self._str_names(name, read_frame_parts(g, (sel,), self._state.ctx()).index, None)
            if sel is None:  # the axis lengths may have come from X's shape (ShadowState.file_axes): do they agree?
                self._check_table_length(name, len(names))
            self._state.cache[k] = names
            return names
        return cached

    def _str_names(self, name: str, values: Any, index_name: str | None) -> pd.Index:
        """The stored index of ``obs``/``var`` as anndata reads it (integers become strings)."""
        return ix.as_anndata_names(pd.Index(values, name=index_name), f"{name} of '{self._state.storage.describe()}'")

    @property
    def obs_names(self) -> pd.Index:
        """Index of the observations, read from ``obs``'s index alone (not the whole table)."""
        return self._names("obs")

    @obs_names.setter
    def obs_names(self, names: Any) -> None:
        """Set the observation names (a new ``obs`` index, pending until :meth:`write`)."""
        obs = self.obs.copy()
        obs.index = _prep_names(names, "obs", self.n_obs)
        self.obs = obs

    @property
    def var_names(self) -> pd.Index:
        """Index of the variables, read from ``var``'s index alone (not the whole table)."""
        return self._names("var")

    @var_names.setter
    def var_names(self, names: Any) -> None:
        """Set the variable names (a new ``var`` index, pending until :meth:`write`)."""
        var = self.var.copy()
        var.index = _prep_names(names, "var", self.n_vars)
        self.var = var

    def _mapping(self, group: str) -> ElementMapping:
        return ElementMapping(self, group)

    def _replace_mapping(self, group: str, value: Any) -> None:
        """``adata.obsm = {...}`` (and varm, obsp, varp, layers): the mapping becomes ``value``, as in anndata.

        Every value is checked against the shape before anything changes; keys not in ``value`` are deleted
        (pending, like every change).
        """
        if self.is_view:
            raise ValueError(
                f"Cannot assign {group} on a view of '{self._state.storage.describe()}'; assign on the full shadow, or "
                "call .to_memory() for an in-memory copy"
            )
        items = dict(value.items()) if value is not None else {}  # read now: it may be this very mapping
        if group == "layers":
            items.pop(None, None)  # anndata >= 0.13 lists X as layers[None]
        for key, v in items.items():
            if not isinstance(key, str):
                raise TypeError(f"{group} keys must be strings, got {type(key).__name__} ({key!r})")
            self._check_shape(group, key, v)
        mapping = self._mapping(group)
        for key in list(mapping.keys()):
            if key is not None and key not in items:
                del mapping[key]
        for key, v in items.items():
            self._set(group, key, v)

    @property
    def layers(self) -> ElementMapping:
        """The layers, a mapping whose values are read on first access and cached."""
        return self._mapping("layers")

    @layers.setter
    def layers(self, value: Any) -> None:
        """Replace all layers by ``value`` (keys not in it are deleted; pending until :meth:`write`)."""
        self._replace_mapping("layers", value)

    @property
    def obsm(self) -> ElementMapping:
        """Multi-dimensional cell annotations (embeddings...), read on first access and cached."""
        return self._mapping("obsm")

    @obsm.setter
    def obsm(self, value: Any) -> None:
        """Replace all of ``obsm`` by ``value`` (keys not in it are deleted; pending until :meth:`write`)."""
        self._replace_mapping("obsm", value)

    @property
    def varm(self) -> ElementMapping:
        """Multi-dimensional feature annotations (loadings...), read on first access and cached."""
        return self._mapping("varm")

    @varm.setter
    def varm(self, value: Any) -> None:
        """Replace all of ``varm`` by ``value`` (keys not in it are deleted; pending until :meth:`write`)."""
        self._replace_mapping("varm", value)

    @property
    def obsp(self) -> ElementMapping:
        """Pairwise cell annotations (neighbour graphs...), read on first access and cached."""
        return self._mapping("obsp")

    @obsp.setter
    def obsp(self, value: Any) -> None:
        """Replace all of ``obsp`` by ``value`` (keys not in it are deleted; pending until :meth:`write`)."""
        self._replace_mapping("obsp", value)

    @property
    def varp(self) -> ElementMapping:
        """Pairwise feature annotations, a mapping whose values are read on first access and cached."""
        return self._mapping("varp")

    @varp.setter
    def varp(self, value: Any) -> None:
        """Replace all of ``varp`` by ``value`` (keys not in it are deleted; pending until :meth:`write`)."""
        self._replace_mapping("varp", value)

    @property
    def uns(self) -> ElementMapping:
        """Unstructured annotations, a mapping whose values (nested ones too) are read on first access and cached."""
        return self._mapping("uns")

    @uns.setter
    def uns(self, value: dict) -> None:
        """Replace all of ``uns`` by ``value`` (keys not in it are deleted; pending until :meth:`write`)."""
        for k in list(self.uns.keys()):
            del self.uns[k]
        for k, v in value.items():
            self.uns[k] = v

    @property
    def raw(self) -> RawShadow | None:
        """The raw AnnData (``raw.X``, ``raw.var``, ``raw.varm``), or ``None`` when the file has none.

        After ``shadow.raw = adata`` it is a :class:`~shadows.core.raw.RawSnapshot` of that moment, as anndata keeps it.
        """
        if (before := self._edit_before()) is not None and self.__dict__["_muon_edit"][1]:
            return _RawOfEdit(self, before.raw)
        if ("raw", "") in self._state.pending:
            return self._state.pending[("raw", "")]
        root = self._state.root()
        if ("raw" in root and is_group(root["raw"]) and "var" in root["raw"]) or "raw.X" in root:
            return RawShadow(self)
        return None

    @raw.setter
    def raw(self, value: Any) -> None:
        """Set raw from an AnnData as anndata does (its X, var and varm of this moment); ``None`` deletes it.

        Pending until :meth:`write`.

        Raises
        ------
        ValueError
            If the shadow is a view.
        """
        if self.is_view:
            raise ValueError("Cannot assign raw on a view")
        if value is None:
            del self.raw
            return
        if isinstance(value, anndata.Raw | RawShadow):  # not what anndata takes, but written as given
            self._state.pending[("raw", "")] = value
            return
        # anndata's setter: Raw(self, X=value.X, var=value.var, varm=value.varm), at this moment
        self._state.pending[("raw", "")] = RawSnapshot.of(self, value)

    @raw.deleter
    def raw(self) -> None:
        """Remove raw (pending until :meth:`write`)."""
        self._state.pending[("raw", "")] = None

    # --- vectors --------------------------------------------------------------------------------------------------
    def _check_layer(self, layer: str | None) -> None:
        """A KeyError naming a missing layer and those there are (anndata raises KeyError too), before any read."""
        if layer is not None and layer not in self.layers:
            raise KeyError(
                f"layers of '{self._state.storage.describe()}' has no key {layer!r}; layers: {list(self.layers.keys())}"
            )

    def _columns_of(self, js: np.ndarray, layer: str | None) -> np.ndarray:
        """Columns ``js`` of X (or ``layer``), raveled row by row as anndata's ``obs_vector`` does."""
        self._check_layer(layer)
        key = ("layers", layer) if layer is not None else ("X", "")
        path = f"layers/{layer}" if layer is not None else "X"
        # a view holds its parent's assigned matrices, already subset, as inherited: the file is not its X
        m = self._state.pending.get(key, self._state.inherited.get(key))
        if m is None:
            m = self._state.cache.get(("layers", layer) if layer else ("X", ""))
            if m is not None and not (isinstance(m, np.ndarray) or sp.issparse(m)):
                m = None  # a jax/torch/dask value: read the column from the file as numpy instead
        if m is not None and not isinstance(m, LazyArray):
            col = m[:, js]
            if is_dask_array(col):  # a lazy chain (scanpy's dask route): compute these columns alone
                col = col.compute()
        else:
            sel = (self._state.oidx, ix.compose(self._state.vidx, js, self._state.n_vars_file))
            col = read_element(self._state.root()[path], sel, self._state.ctx())
        col = col.toarray() if sp.issparse(col) else np.asarray(col)
        return np.ravel(col)

    def _vector_source(self, k: str, frame: str, names_of: str) -> tuple[Any, np.ndarray | None]:
        """Where ``obs_vector``/``var_vector`` take ``k`` from: a column of ``frame`` or positions along ``names_of``.

        anndata refuses a key that is both a column and a name, and hands out every position of a repeated name.
        """
        cached = any((frame, "") in store for store in (self._state.cache, self._state.pending, self._state.inherited))
        in_col = k in (self._frame(frame).columns if cached else self._frame_columns(frame))
        names = self._names(names_of)
        in_idx = k in names
        if in_col and in_idx:
            raise ValueError(f"Key {k} could be found in both .{names_of}_names and .{frame}.columns")
        if not (in_col or in_idx):
            raise KeyError(
                f"Could not find key {k} in .{names_of}_names or .{frame}.columns of '{self._state.storage.describe()}'."
            )
        if in_col:
            return self._frame(frame)[k], None
        return None, ix.locate(k, names, names_of)

    def obs_vector(self, k: str, *, layer: str | None = None) -> np.ndarray:
        """Values of obs column ``k``, or of gene ``k`` across cells (one column read, not the matrix)."""
        layer = _x_layer(self, layer)
        col, pos = self._vector_source(k, "obs", "var")
        return _column_vector(col) if pos is None else self._columns_of(pos, layer)

    def var_vector(self, k: str, *, layer: str | None = None) -> np.ndarray:
        """Values of var column ``k``, or of cell ``k`` across genes (one row read)."""
        layer = _x_layer(self, layer)
        col, pos = self._vector_source(k, "var", "obs")
        if pos is None:
            return _column_vector(col)
        view = self[pos]
        m = view._numpy_matrix(layer)
        m = m.compute() if is_dask_array(m) else m  # a lazy chain: this row alone
        m = m.toarray() if sp.issparse(m) else np.asarray(m)
        view.close()
        return np.ravel(m)

    def _numpy_matrix(self, layer: str | None = None) -> Any:
        """X (or ``layer``) as numpy/scipy whatever the array backend: anndata's methods that return numpy use it."""
        self._check_layer(layer)
        k = ("layers", layer) if layer is not None else ("X", "")
        if self._state.array_backend == "numpy" or k in self._state.pending or k in self._state.inherited:
            return self.layers[layer] if layer is not None else self.X
        return read_element(
            self._state.root()[f"layers/{layer}" if layer is not None else "X"],
            self._state.sels("X"),
            self._state.ctx(),
        )

    def _frame_in_memory(self, name: str) -> bool:
        # an in-place subset (sc.pp.filter_cells) leaves its table among the inherited elements
        k = (name, "")
        return k in self._state.cache or k in self._state.pending or k in self._state.inherited

    def obs_keys(self) -> list[str]:
        """Names of the columns of ``obs`` (from the file's metadata until ``obs`` is read)."""
        # a polars/pyarrow table holds the index as a column: the stored column names are the keys then
        if self._frame_in_memory("obs") and isinstance(self.obs, pd.DataFrame):
            return list(self.obs.columns)
        return self._frame_columns("obs")

    def var_keys(self) -> list[str]:
        """Names of the columns of ``var`` (from the file's metadata until ``var`` is read)."""
        # a polars/pyarrow table holds the index as a column: the stored column names are the keys then
        if self._frame_in_memory("var") and isinstance(self.var, pd.DataFrame):
            return list(self.var.columns)
        return self._frame_columns("var")

    def _frame_columns(self, name: str) -> list[str]:
        g = self._state.root()[name]
        if is_group(g):
            return [str(c) for c in (attr(g, "column-order") or [])]
        return list(g.dtype.names[1:])

    def obsm_keys(self) -> list[str]:
        """Keys of ``obsm``, stored and added in memory (nothing is read)."""
        return list(self.obsm.keys())

    def varm_keys(self) -> list[str]:
        """Keys of ``varm``, stored and added in memory (nothing is read)."""
        return list(self.varm.keys())

    def uns_keys(self) -> list[str]:
        """Keys of ``uns``, stored and added in memory (nothing is read)."""
        return list(self.uns.keys())

    def layers_keys(self) -> list[str]:
        """Keys of ``layers``, stored and added in memory (nothing is read).

        anndata has no ``layers_keys``; this completes ``obsm_keys``, ``varm_keys``... for the shadow's layers.
        """
        return list(self.layers.keys())

    # --- views ----------------------------------------------------------------------------------------------------
    def __getitem__(self, index: Any) -> AnnDataShadow:
        """A view: a new shadow on its own connection that reads only the selected part of each element."""
        if (ref := accessor_get(self, index)) is not NOT_A_REFERENCE:  # adata[A.obs["x"]] (anndata >= 0.13)
            return ref
        oidx, vidx = ix.split_index(index)
        o = ix.normalize(oidx, _LazyNames(self, "obs"), self.n_obs, 0)
        v = ix.normalize(vidx, _LazyNames(self, "var"), self.n_vars, 1)
        file_o = ix.compose(self._state.oidx, o, self._state.n_obs_file)
        file_v = ix.compose(self._state.vidx, v, self._state.n_vars_file)
        st = self._state.storage.sibling()
        view = type(self)._internal(
            st.describe(),
            array_backend=self._state.array_backend,
            table_backend=self._state.table_backend,
            lazy=self._state.lazy,
            view=(file_o, file_v),
            storage=st,
            axes=(self._state.n_obs_file, self._state.n_vars_file),
        )
        view._inherit(self, o, v)
        return view

    def _inherit(self, parent: AnnDataShadow, o: ix.Sel, v: ix.Sel) -> None:
        """In-memory additions of the parent are seen, sliced, by its views (as anndata's views see them)."""
        sels = (o, v)
        self._state.deleted |= parent._state.deleted  # and so are its pending deletions
        self._fancy = (
            parent._fancy[0] or isinstance(o, np.ndarray),
            parent._fancy[1] or isinstance(v, np.ndarray),
        )
        if parent._state.storage.kind == "h5" and self._state.owns_storage:
            _VIEW_STORAGES.add(self._state.storage)
        sources = {**parent._state.inherited, **parent._state.pending}
        if ("raw", "") in sources:
            # anndata's view: `adata_ref.raw[oidx]` (its cells, every raw gene); held as pending so that a stream
            # write of the view (or of an in-place subset) writes it
            raw = sources.pop(("raw", ""))
            if isinstance(raw, RawSnapshot):
                raw = raw._subset(self, o, None)
            self._state.pending[("raw", "")] = raw
        for k in ("obs", "var"):
            frame = parent._state.cache.get((k, ""))
            # no fingerprint: the table was assigned, not read
            if isinstance(frame, pd.DataFrame) and (parent._frame_changed(k) or k not in parent._state.frame_fp):
                sources[(k, "")] = frame
        for (group, key), value in sources.items():
            if value is None or (group, key) in parent._state.deleted:
                continue
            if group in ("obs", "var"):
                s = sels[0 if group == "obs" else 1]
                sub = value.iloc[ix.positions(s, len(value))] if s is not None else value
                sub = sub.copy()
                for c in sub.columns:
                    if isinstance(sub[c].dtype, pd.CategoricalDtype):
                        sub[c] = sub[c].cat.remove_unused_categories()
                self._state.inherited[(group, key)] = sub
            elif group in ("X", "layers"):
                self._state.inherited[(group, key)] = _view_layout(_take(value, (o, v)), self._fancy)
            elif group in ALIGNMENT and ALIGNMENT[group]:
                self._state.inherited[(group, key)] = _take(value, tuple(sels[a] for a in ALIGNMENT[group]))
            elif group == "uns":
                self._state.inherited[(group, key)] = value

    @property
    def _cache_lock(self) -> threading.RLock:
        """Held while a table and its fingerprints are stored or dropped together (never during a read)."""
        lock = self.__dict__.get("_lock")
        if lock is None:
            lock = self.__dict__.setdefault("_lock", threading.RLock())  # setdefault: one lock even if raced
        return lock

    def _frame_changed(self, name: str) -> bool:
        df = self._state.cache.get((name, ""))
        fp = self._state.frame_fp.get(name)
        if not isinstance(df, pd.DataFrame) or fp is None:
            return False
        if list(df.columns) != list(fp):
            return True
        as_read = self._state.index_fp.get(name)
        if as_read is not None and df.index is not as_read and not df.index.equals(as_read):
            return True  # renamed obs_names/var_names
        return any(fingerprint(df[c]) != fp[c] for c in df.columns)

    def frame_changes(self, name: str) -> dict[str, list[str]]:
        """Columns of ``obs``/``var`` added, changed or removed in memory (not yet written)."""
        df = self._state.cache.get((name, ""))
        fp = self._state.frame_fp.get(name, {})
        if not isinstance(df, pd.DataFrame):
            return {"added": [], "changed": [], "removed": []}
        disk = set(self._frame_columns(name))
        added = [c for c in df.columns if c not in disk]
        changed = [c for c in df.columns if c in disk and c in fp and fingerprint(df[c]) != fp[c]]
        removed = [c for c in disk if c not in df.columns]
        return {"added": added, "changed": changed, "removed": removed}

    # --- cache, connection ----------------------------------------------------------------------------------------
    def clear_cache(self) -> AnnDataShadow:
        """Free every cached element.  In-memory additions not yet written stay (the repr marks them ▲)."""
        backend = (
            get_array_backend(self._state.array_backend) if self._state.array_backend in _loaded_backends() else None
        )
        # safe while other threads read: every step takes a snapshot or pops with a default (a reader may store or
        # drop entries meanwhile), and readers never look an entry up twice (see _get)
        dropped = []
        with self._cache_lock:
            for key in list(self._state.cache):
                if key in (("obs", ""), ("var", "")) and self._frame_changed(key[0]):
                    continue  # changed tables (columns or names) are pending changes, not a cache
                dropped.append(self._state.cache.pop(key, None))
            for fps in (self._state.frame_fp, self._state.index_fp):
                for name in list(fps):
                    if (name, "") not in self._state.cache:
                        fps.pop(name, None)
        if backend is not None and backend.release is not None:
            for value in dropped:
                if value is not None:
                    backend.release(value)
        self._state.storage.indptr_cache.clear()
        return self

    def close(self) -> None:
        """Close the connection to the file (cached elements stay usable, and so does the shape)."""
        if self._state.storage.is_open:
            self._state.file_axes()  # read on first use (see ShadowState.file_axes): a closed shadow still has a shape
        self._state.storage.close()

    def reopen(self, mode: str = "r") -> AnnDataShadow:
        """Open the file again, with ``mode`` ``"r"`` or ``"r+"``; returns the shadow so that calls chain."""
        if self.is_view and mode != "r":
            raise ValueError("A view cannot be reopened for writing; reopen the full shadow")
        if mode != "r":
            suspend_views(self._state.storage)
        self._state.storage.open(mode)
        return self

    def __reduce__(self):
        st = self._state.storage
        # a detached view (changed in place, or an in-place subset) is no view any more, but still a selection
        selected = self.__dict__.get("_is_view", False)
        return (
            _restore,
            (
                st.describe(),
                st.mode,
                st.format,
                self._state.array_backend,
                self._state.table_backend,
                self._state.lazy,
                (self._state.oidx, self._state.vidx) if selected else None,
                self._pickled_state(),
            ),
        )

    def _pickled_state(self) -> dict[str, Any]:
        """What a pickle carries besides the file: every change not written yet (as anndata's pickles keep them).

        Pending values, deletions, a view's inherited changes, changed ``obs``/``var`` tables (with the
        fingerprints that tell their changed columns and names), and whether the shadow is a detached subset.
        """
        frames = {}
        for name in ("obs", "var"):
            df = self._state.cache.get((name, ""))
            if isinstance(df, pd.DataFrame) and self._frame_changed(name):
                frames[name] = (df, self._state.frame_fp.get(name), self._state.index_fp.get(name))
        state = {
            "pending": {k: untrack(v) for k, v in self._state.pending.items()},
            "deleted": set(self._state.deleted),
            "inherited": dict(self._state.inherited),
            "frames": frames,
            "detached": bool(self.__dict__.get("_detached", False)),
        }
        _check_picklable(state, self._state.storage.describe())
        return state

    # --- writing and streaming (implemented in shadows.writeback.plan, shadows.stream.shadow, shadows.ops.column_index) ---------------
    def write(
        self, filename: os.PathLike | None = None, *, overwrite: bool = False, clear_cache: bool = False
    ) -> AnnDataShadow | Path:
        """Push every pending in-memory change into the file this shadow is open on (mode ``"r+"``).

        Parameters
        ----------
        filename
            Stream the shadow into this new ``.h5ad`` file instead (anndata's ``AnnData.write(filename)``).
        overwrite
            Write-back: replace elements the file already has; with ``filename``: replace an existing file.
        clear_cache
            Forget the values read so far once they are written.

        Returns
        -------
        The shadow, so that ``s.reopen("r+").write().reopen("r")`` chains; with ``filename``, the path written
        (as :meth:`MuDataShadow.write <shadows.MuDataShadow.write>` does).
        """
        if filename is not None:
            return self.write_h5ad(filename, overwrite=overwrite)
        check_attached(self)
        from shadows.writeback.plan import write_pending

        return write_pending(self, overwrite=overwrite, clear_cache=clear_cache)

    def write_h5ad(self, filename: os.PathLike, **kwargs: Any) -> Path:
        """Stream this shadow (or view) into a new ``.h5ad`` file without loading any whole matrix.

        Parameters
        ----------
        filename
            The new file; an existing one is refused unless ``overwrite=True``.
        **kwargs
            ``overwrite``, ``compression``, ``compression_opts``, ``chunk_size``, ``progress`` (see
            :func:`shadows.stream.shadow.write_subset`).

        Returns
        -------
        The path written.
        """
        from shadows.stream.shadow import write_subset

        return write_subset(self, filename, file_format="h5ad", **kwargs)

    def write_zarr(self, store: os.PathLike, **kwargs: Any) -> Path:
        """Stream this shadow (or view) into a new zarr store without loading any whole matrix.

        Parameters
        ----------
        store
            The new store; an existing one is refused unless ``overwrite=True``.
        **kwargs
            As :meth:`write_h5ad`, and ``zarr_format``.

        Returns
        -------
        The path written.
        """
        from shadows.stream.shadow import write_subset

        return write_subset(self, store, file_format="zarr", **kwargs)

    def chunked_X(
        self,
        chunk_size: int | None = None,
        *,
        layer: str | None = None,
        axis: int = 0,
        progress: bool | None = None,
    ) -> Iterator[tuple[Any, int, int]]:
        """Iterate over the rows of X (or its columns, or a layer's), reading one block at a time.

        As :meth:`anndata.AnnData.chunked_X`, it yields ``(block, start, end)`` with ``block`` equal to
        ``X[start:end]`` (``X[:, start:end]`` for ``axis=1``), so that code written for anndata runs unchanged;
        only one block is in memory at a time.

        Parameters
        ----------
        chunk_size
            Rows (columns) per block; ``None`` means 6000, anndata's default.
        layer
            Iterate over this layer instead of ``X``.
        axis
            ``0`` for blocks of rows, ``1`` for blocks of columns (read through one regrouping pass when the
            matrix is stored the other way, not a scan per block).
        progress
            Show a progress bar (``None``: follow ``shadows.settings``).

        Yields
        ------
        tuple
            ``(block, start, end)``: the block in the stored format (CSR, CSC or a numpy array), converted to the
            shadow's array backend, and its position along ``axis``.
        """
        from shadows.stream.shadow import chunked

        blocks = chunked(
            self,
            chunk_size=_ANNDATA_CHUNK if chunk_size is None else chunk_size,
            element=f"layers/{layer}" if layer else "X",
            axis=axis,
            progress=progress,
        )
        return ((block, start, end) for start, end, block in blocks)

    def add_column_index(self, element: str = "X") -> AnnDataShadow:
        """Store a column-major copy of a CSR ``element`` (row-major of CSC) in the file, for fast gene reads."""
        from shadows.ops.column_index import add_column_index

        add_column_index(self, element)
        return self

    def drop_column_index(self, element: str = "X") -> AnnDataShadow:
        """Remove the copy made by :meth:`add_column_index`."""
        from shadows.ops.column_index import drop_column_index

        drop_column_index(self, element)
        return self

    # --- what anndata and scanpy call to change an AnnData's shape in place (see shadows.core.compat) ----------------------
    def _init_as_actual(self, *args: Any, **kwargs: Any) -> None:
        was_view = self.is_view
        detach(self)
        if was_view:
            self._as_copied()  # anndata makes a view actual with `adata._init_as_actual(adata.copy())`

    def _inplace_subset_obs(self, index: Any) -> None:
        self._subset_in_place(index, axis=0)

    def _inplace_subset_var(self, index: Any) -> None:
        self._subset_in_place(index, axis=1)

    def _subset_in_place(self, index: Any, axis: int) -> None:
        """anndata's ``_inplace_subset_obs/var``: ``self._init_as_actual(self[index].copy())``.

        The shadow becomes a detached shadow of the subset (shadows.core.compat); raw keeps every raw gene and takes the
        subset's cells, copied (anndata's ``copy()`` of the view), and arrays are laid out as that copy lays them.
        """
        n = self.n_obs if axis == 0 else self.n_vars
        names = self.obs_names if axis == 0 else self.var_names
        if ix.is_identity(ix.normalize(index, names, n, axis), n):
            return  # anndata copies, but nothing changes
        self._new_x_generation()
        subset_in_place(self, index, axis=axis)
        self._as_copied()

    def _as_copied(self) -> None:
        """What anndata's ``copy()`` hands on: C-ordered arrays (``ndarray.copy()``) and raw copied."""
        self._fancy = (False, False)
        for store in (self._state.cache, self._state.inherited, self._state.pending):
            for k, v in list(store.items()):
                if k[0] in ("X", "layers") and isinstance(v, np.ndarray) and not v.flags.c_contiguous:
                    store[k] = np.ascontiguousarray(v)
        raw = self._state.pending.get(("raw", ""))
        if isinstance(raw, RawSnapshot):
            self._state.pending[("raw", "")] = raw._subset(self, None, None, copy=True)
        self._x_gen = next(_X_GENERATIONS)

    # --- whole-object conversions -----------------------------------------------------------------------------------
    def to_memory(self) -> anndata.AnnData:
        """A real in-memory :class:`anndata.AnnData` with every element (of the view) read, pending changes included."""
        numpy = self._twin(numpy=True)
        kwargs: dict[str, Any] = {
            "X": numpy.X,
            "obs": numpy.obs.copy(),
            "var": numpy.var.copy(),
            "uns": untrack(dict(numpy.uns.items())),
        }
        for g in ("obsm", "varm", "obsp", "varp", "layers"):
            kwargs[g] = {k: numpy._get(g, k) for k in numpy._mapping(g).keys() if k is not None}
        raw = numpy.raw
        if raw is not None:
            kwargs["raw"] = raw.to_dict() if isinstance(raw, RawShadow) else raw
        return anndata.AnnData(**kwargs)

    @property
    def T(self) -> anndata.AnnData:
        """The transpose, as :meth:`transpose` returns it (an in-memory :class:`anndata.AnnData`, not a shadow)."""
        return self.transpose()

    def transpose(self) -> anndata.AnnData:
        """Transpose the whole object into an in-memory :class:`anndata.AnnData`, as ``AnnData.transpose`` does.

        X and the layers are transposed, obs and var swap places, and so do obsm/varm and obsp/varp; ``uns`` and
        pending in-memory changes come along, ``raw`` is left out (as anndata leaves it out, so it is not read).
        Every other element is read into memory: the result is not a shadow.  As in anndata, a view cannot be
        transposed (``ValueError``): call ``.copy()`` (or ``.to_memory()``) first.
        """
        if self.is_view:
            # anndata's own message and type for the same request
            raise ValueError(
                "You’re trying to transpose a view of an `AnnData`, "
                "which is currently not implemented. Call `.copy()` before transposing."
            )
        return self._twin(without_raw=True).to_memory().transpose()

    def _twin(self, *, without_raw: bool = False, numpy: bool = False) -> AnnDataShadow:
        """A second shadow object on this one's connection (not owning it): the one copy path of a shadow.

        ``without_raw`` hides ``raw``.  ``numpy`` makes it hand out numpy/scipy/pandas values whatever this shadow's
        backends, with a cache of its own that starts with the obs/var tables already read (as pandas): what it reads
        (a whole copy in memory, a stream to a new file) does not stay in this shadow's cache.
        """
        twin = AnnDataShadow.__new__(type(self))
        twin.__dict__.update(self.__dict__)
        twin._state = state = self._state.copy().bind(twin)
        state.owns_storage = False
        state.pending = dict(self._state.pending)
        if numpy:
            state.array_backend, state.table_backend, state.lazy = "numpy", "pandas", False
            tables = {k: self._state.cache.get(k) for k in (("obs", ""), ("var", ""))}
            state.cache = {k: v for k, v in tables.items() if isinstance(v, pd.DataFrame)}
            state.frame_fp, state.index_fp = dict(self._state.frame_fp), dict(self._state.index_fp)
        if without_raw:
            state.pending[("raw", "")] = None  # reads as "no raw": to_memory() then skips reading it
        return twin

    def write_csvs(self, dirname: os.PathLike | str, *, skip_data: bool = True, sep: str = ",") -> Path:
        """Write the annotations (and, with ``skip_data=False``, X) to ``.csv`` files, as ``AnnData.write_csvs``.

        The files are those anndata writes for the same object (``obs.csv``, ``var.csv``, ``obsm.csv``,
        ``varm.csv``, ``uns/<key>.csv``, and ``X.csv``), but X is written in blocks of rows, never whole.

        Parameters
        ----------
        dirname
            Directory to write into (created if needed; a ``.csv`` suffix is dropped, as anndata drops it).
        skip_data
            Skip the data matrix X (the default, as in anndata).
        sep
            Field separator.

        Returns
        -------
        The directory written (without the ``.csv`` suffix, if ``dirname`` had one).
        """
        from shadows.ops.export import write_csvs

        return write_csvs(self, dirname, skip_data=skip_data, sep=sep)

    def __sizeof__(self, *, show_stratified: bool = False, with_disk: bool = False) -> int:
        """Bytes this shadow holds in memory (what ``sys.getsizeof`` reports), without reading anything.

        Counted: every element read into the cache and every in-memory change not yet written (pending or, for a
        view, inherited from its parent), per group as ``AnnData.__sizeof__`` counts them (sparse matrices by
        their ``data``, ``indices`` and ``indptr``).  Elements still only in the file count nothing, unless
        ``with_disk=True``: then their uncompressed size (shape × item size, from the file's metadata; a view
        counts its share of each) is added.

        Parameters
        ----------
        show_stratified
            Print the size of each part (X, obs, var, uns, obsm, ...), as anndata prints it.
        with_disk
            Add the uncompressed size of the elements not in memory.
        """
        from shadows.ops.export import sizes

        parts = sizes(self, with_disk=with_disk)
        if show_stratified:
            from tqdm import tqdm

            for name, size in parts.items():
                if size > 0:  # anndata's format: "Size of X      : 1.2MB", "Size of .obs   : ..."
                    label = name if name == "X" else f".{name}"
                    print(f"Size of {label:<7}: {tqdm.format_sizeof(size, 'B')}")
        return sum(parts.values())

    def copy(self, filename: os.PathLike | None = None) -> anndata.AnnData:
        """An in-memory AnnData copy (or, with ``filename``, a copy written to that file)."""
        adata = self.to_memory()
        if filename is not None:
            adata.write_h5ad(filename)
        return adata

    def to_df(self, layer: str | None = None) -> pd.DataFrame:
        """X (or a layer) as a dense pandas DataFrame indexed by :attr:`obs_names`, with :attr:`var_names` as columns.

        Reads the whole matrix (or the view's part of it) as numpy/scipy whatever the array backend.

        Parameters
        ----------
        layer
            The layer to use instead of X.
        """
        m = self._numpy_matrix(layer)
        m = m.toarray() if sp.issparse(m) else np.asarray(m)
        return pd.DataFrame(m, index=self.obs_names, columns=self.var_names)

    # --- repr -----------------------------------------------------------------------------------------------------
    def __repr__(self) -> str:
        return text_repr(self)

    def _repr_html_(self) -> str:
        return html_repr(self)

    def __eq__(self, other: object) -> bool:
        return self is other

    __hash__ = object.__hash__


class _LazyNames:
    """Names along an axis, read only if an indexer needs them (positional indexers never do); of a shadow or of a
    collection (:mod:`shadows.collection.shadow`), through its ``_names``."""

    def __init__(self, shadow: Any, name: str):
        self._shadow, self._name = shadow, name
        self._idx: pd.Index | None = None

    def _get(self) -> pd.Index:
        if self._idx is None:
            self._idx = self._shadow._names(self._name)
        return self._idx

    def __getattr__(self, item: str) -> Any:
        return getattr(self._get(), item)

    def __len__(self) -> int:
        return len(self._get())


class _RawOfEdit:
    """raw while muon filters cells (see ``AnnDataShadow._axis_edit``): the raw of before, until muon puts back
    ``raw._X``, its X subset to the kept cells, which becomes the shadow's raw X."""

    def __init__(self, shadow: AnnDataShadow, before: Any):
        self.__dict__.update(_shadow=shadow, _before=before)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["_before"], name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name != "_X":
            raise AttributeError(f"Cannot set raw.{name} of '{self._shadow._state.storage.describe()}' during a filter")
        shadow = self.__dict__["_shadow"]
        del shadow.__dict__["_muon_edit"]
        now = shadow.raw
        shadow._state.pending[("raw", "")] = RawSnapshot(shadow, value, now.var, dict(now.varm))


def _view_layout(value: Any, fancy: tuple[bool, bool]) -> Any:
    """A dense matrix of a view laid out as anndata's view hands it out.

    anndata's view takes ``X[rows, cols]`` with numpy: a slice of rows and positions of columns (``adata[:, mask]``,
    which scanpy's ``pca(mask_var=...)`` takes) gives an F-ordered array; any other selection a C-ordered one.  BLAS
    sums in another order on another layout, so results (PCA, then neighbors, leiden) differ in the last bits if a
    shadow hands out another layout than anndata would.
    """
    if isinstance(value, np.ndarray) and value.ndim == 2 and fancy[1] and not fancy[0]:
        return value if value.flags.f_contiguous else np.asfortranarray(value)
    return value


def suspend_views(storage: Storage) -> None:
    """Close the connections of views of ``storage``'s file, which would keep a writer out (HDF5 refuses to open
    a file for writing that this process holds open read-only); each view reopens it on its next read."""
    if storage.kind != "h5":
        return
    for st in list(_VIEW_STORAGES):
        if st is not storage and st.filename == storage.filename and st.file is not None:
            st.close()
            st.reattach = True


def _take(value: Any, sels: tuple) -> Any:
    """An in-memory value restricted to a selection per axis (a sparse value keeps its format)."""
    if is_dask_array(value):  # a lazy X (the dask backend, or scanpy's transformations of it): stays lazy
        return take_dask(value, sels)
    for axis, s in enumerate(sels):
        if s is None:
            continue
        pos = ix.positions(s, value.shape[axis])
        if isinstance(value, pd.DataFrame):
            value = value.iloc[pos] if axis == 0 else value.iloc[:, pos]
        elif sp.issparse(value):
            value = value[pos] if axis == 0 else value[:, pos]
        else:
            value = np.take(np.asarray(value), pos, axis=axis)
    return value


def _drop_unused_categories(parts: Any) -> None:
    for c, v in parts.columns.items():
        if isinstance(v, pd.Categorical):
            parts.columns[c] = v.remove_unused_categories()


def _as_view_frame(value: Any, is_view: bool) -> Any:
    """A view's tables are anndata's ``DataFrameView`` (as in anndata), without its copy-on-write link."""
    if not is_view or type(value) is not pd.DataFrame:
        return value
    try:
        from anndata._core.views import DataFrameView  # the class anndata's views hand out
    except ImportError:
        return value
    return DataFrameView(value, view_args=None)


def _version_tuple(dist: str) -> tuple[int, ...]:
    # importlib.metadata, not ``anndata.__version__``: that attribute is deprecated and warns on access
    from importlib.metadata import version

    return tuple(int(p) for p in version(dist).split(".")[:2] if p.isdigit())


_ANNDATA_013 = _version_tuple("anndata") >= (0, 13)


def _column_vector(col: pd.Series) -> Any:
    """A table column as ``obs_vector``/``var_vector`` hand it out: ``.array`` since anndata 0.13, ``.values`` before."""
    return col.array if _ANNDATA_013 else col.values


def _prep_names(value: Any, name: str, n: int) -> pd.Index:
    """New obs/var names as anndata's ``_prep_dim_index`` takes them: anything but a ``pd.Index`` becomes strings."""
    if len(value) != n:
        raise ValueError(f"Length of passed value for {name}_names is {len(value)}, but this AnnData has {n} {name}")
    if isinstance(value, pd.Index):
        if not isinstance(value.name, str | type(None)):
            raise ValueError(
                f"AnnData expects .{name}.index.name to be a string or None, "
                f"but you passed a name of type {type(value.name).__name__!r}"
            )
        if len(value) and not isinstance(value, pd.RangeIndex):
            kind = pd.api.types.infer_dtype(value)
            if kind not in ("string", "bytes"):  # anndata keeps such an index, with this warning
                import warnings

                warnings.warn(
                    f"AnnData expects .{name}.index to contain strings, but got values like: "
                    f"{list(value[:5])} (inferred to be: {kind})",
                    stacklevel=3,
                )
        return value
    try:
        from anndata.compat import pandas_as_str
    except ImportError:  # another anndata: pandas 2's way
        return pd.Index(value).astype(str)
    return pandas_as_str(pd.Index(value))


def _is_2d(elem: Any) -> bool:
    """Whether a stored element is a matrix (a sparse group or a 2-D array), from its metadata alone."""
    if is_group(elem):
        return encoding_of(elem)[0] in SPARSE_ENCODINGS
    return len(elem.shape) == 2


def _x_layer(adata: AnnDataShadow, layer: str | None) -> str | None:
    """``layer="X"`` means X, with anndata's FutureWarning, unless there is a layer named "X"."""
    if layer == "X" and "X" not in adata.layers:
        import warnings

        warnings.warn(
            "In a future version of AnnData, access to `.X` by passing `layer='X'` will be removed. "
            "Instead pass `layer=None`.",
            FutureWarning,
            stacklevel=3,
        )
        return None
    return layer


def _loaded_backends() -> set[str]:
    from shadows.backends import _ARRAY

    return set(_ARRAY)


def _restore(path, mode, format, array_backend, table_backend, lazy, view, state=None) -> AnnDataShadow:
    shadow = AnnDataShadow._internal(
        path, mode=mode, format=format, array_backend=array_backend, table_backend=table_backend, lazy=lazy, view=view
    )
    if state:
        for (group, key), value in state["pending"].items():
            if group == "uns" and isinstance(value, dict):  # as _set holds it: changes inside it are seen
                value = TrackedDict(value, lambda: None)
            shadow._state.pending[(group, key)] = value
        shadow._state.deleted |= state["deleted"]
        shadow._state.inherited.update(state["inherited"])
        for name, (df, fp, index_fp) in state["frames"].items():
            shadow._state.cache[(name, "")] = df
            if fp is not None:
                shadow._state.frame_fp[name] = fp
            if index_fp is not None:
                shadow._state.index_fp[name] = index_fp
        if state["detached"]:
            shadow._detached = True
    return shadow


# values that always pickle (checked by type, without pickling them twice)
_PICKLABLE = (np.ndarray, np.generic, pd.DataFrame, pd.Series, pd.Index, pd.Categorical, str, bytes, int, float)


def _check_picklable(state: dict[str, Any], where: str) -> None:
    """Refuse clearly, naming the element, a change that cannot be pickled (pickle's own error names none)."""
    import pickle

    for store in ("pending", "inherited"):
        for (group, key), value in state[store].items():
            try:
                _try_pickle(value)
            except Exception as e:
                raise pickle.PicklingError(
                    f"Cannot pickle the shadow of '{where}': its change to {group}[{key!r}] (a "
                    f"{type(value).__name__}) cannot be pickled ({type(e).__name__}: {e}); write it to the file "
                    "first (.write()) or remove it"
                ) from e


def _try_pickle(value: Any) -> None:
    """Pickle ``value`` unless its type always pickles (a large array is not pickled twice)."""
    import pickle

    if value is None or sp.issparse(value):
        return
    if isinstance(value, _PICKLABLE) and not (isinstance(value, np.ndarray) and value.dtype == object):
        return
    if isinstance(value, dict):
        for v in value.values():
            _try_pickle(v)
        return
    pickle.dumps(value)
