"""What one AnnData shadow knows, in one object: :class:`ShadowState`, and :func:`state_of` to reach it.

A shadow's state is its connection, the file's axis lengths, its selection, and four stores of elements:

* ``cache``: values read from the file (dropped by ``clear_cache``);
* ``pending``: values set or changed in memory and not yet written (``▲`` in the repr);
* ``deleted``: elements deleted in memory and not yet deleted in the file;
* ``inherited``: what a view took over from its parent's pending values, already sliced;

plus the fingerprints of ``obs``/``var`` as read (a change of a column or of the names is a pending change), and the
options it was opened with.  Keys of the stores are ``(group, key)`` (``("obsm", "X_pca")``, ``("X", "")``).

The layers above the façade (write-back, streaming, operations, MuData, collections) take the state through
:func:`state_of` instead of reaching into the shadow's private attributes (``tests/test_architecture.py`` checks
that they do).  What only the façade can answer (an element's value, a table, a mapping, a copy in memory) the
state asks its owner for, through the few methods below: that is the whole package-internal API.
"""

from __future__ import annotations

import copy
import weakref
from typing import TYPE_CHECKING, Any

import pandas as pd

from shadows.core.mapping import ALIGNMENT
from shadows.io.storage import Storage, attr, is_array, member
from shadows.spec import ReadContext
from shadows.spec.frames import table_length

if TYPE_CHECKING:
    from shadows.core.anndata import AnnDataShadow
    from shadows.core.mapping import ElementMapping


def no_table(root: Any, name: str, where: str) -> ValueError:
    """The error for a file or group without the table ``name`` (``obs``/``var``): it holds no AnnData."""
    return ValueError(f"'{where}' holds no AnnData: there is no '{name}' element (found {sorted(root.keys())[:10]})")


def axis_length(root: Any, name: str, where: str) -> int:
    """Length of the obs or var axis, from the index dataset's shape alone (no data is read)."""
    if (g := member(root, name)) is None:
        raise no_table(root, name, where)
    return table_length(g)


def stored_x_shape(root: Any) -> tuple[int, int] | None:
    """``X``'s shape where the file keeps it with the matrix (a dense array's own shape, a sparse group's ``shape``
    attribute), else ``None`` (no ``X``, a legacy layout).

    Why not the index datasets' lengths: in a fresh process, reading the two tables' ``_index`` attributes and
    opening both index datasets cost 0.9-1.6 ms, ``X``'s one numeric attribute 0.3 ms (a 100k-cell h5ad); the
    first read of cells then paid the difference.  That the tables agree with ``X`` is checked when they are read
    (``AnnDataShadow._frame``).
    """
    x = member(root, "X")
    if x is None:
        return None
    shape = tuple(x.shape) if is_array(x) else attr(x, "shape")
    if isinstance(shape, list | tuple) and len(shape) == 2:
        return int(shape[0]), int(shape[1])
    return None


class ElementStores:
    """The four stores of a shadow's elements, keyed by ``(group, key)``: what the lazy mappings
    (:class:`~shadows.core.mapping.ElementMapping`) read and change, for an AnnData shadow and a collection alike.

    Attributes
    ----------
    cache
        Values read from the file (dropped by ``clear_cache``).
    pending
        Values set or changed in memory and not yet written.
    deleted
        Elements deleted in memory and not yet in the file.
    inherited
        What a view took over from its parent's pending values, already sliced.
    """

    def __init__(self) -> None:
        self.cache: dict[tuple[str, str], Any] = {}
        self.pending: dict[tuple[str, str], Any] = {}
        self.deleted: set[tuple[str, str]] = set()
        self.inherited: dict[tuple[str, str], Any] = {}

    def copy(self) -> ElementStores:
        """A shallow copy (the stores themselves are shared, as a twin of the shadow shares its values)."""
        return copy.copy(self)


class ShadowState(ElementStores):
    """The state of one :class:`~shadows.AnnDataShadow` (see the module docstring).

    Attributes
    ----------
    storage
        The connection (:class:`~shadows.io.storage.Storage`); a modality shares its MuData's.
    owns_storage
        Whether closing (or collecting) the shadow closes the connection (false for a modality).
    array_backend, table_backend, lazy
        The options the shadow was opened with.
    cache, pending, deleted, inherited
        The element stores, keyed by ``(group, key)``.
    frame_fp, index_fp
        Fingerprints of ``obs``/``var`` columns as read, and the names as read (kept by reference).
    n_obs_file, n_vars_file
        The stored axis lengths, read on first use (see :meth:`file_axes`).
    oidx, vidx
        The selection on the stored axes (``None``: everything), see :mod:`shadows.spec.selection`.
    """

    def __init__(
        self,
        storage: Storage,
        *,
        owns_storage: bool,
        array_backend: str = "numpy",
        table_backend: str = "pandas",
        lazy: bool = False,
    ):
        super().__init__()
        self.storage = storage
        self.owns_storage = owns_storage
        self.array_backend, self.table_backend, self.lazy = array_backend, table_backend, lazy
        self.frame_fp: dict[str, dict[str, int]] = {}
        # obs_names/var_names as read (the same object: no copy, no hash): a renamed axis is a pending change.  A hash
        # of the names, as the columns have, cost the UMAP-by-gene memory test 8 MB of pyarrow buffers on pandas 3
        self.index_fp: dict[str, pd.Index] = {}
        self._axes: tuple[int, int] | None = None
        self.oidx: Any = None
        self.vidx: Any = None
        self._owner: weakref.ref | None = None

    # --- what the state answers itself ------------------------------------------------------------------------------
    def file_axes(self) -> tuple[int, int]:
        """The stored ``(n_obs, n_vars)``, read the first time they are needed: ``X``'s own shape where the file
        keeps it (:func:`stored_x_shape`), else the index datasets' lengths.

        Not at open: reading them (from the index datasets: two attributes, two dataset headers) cost 0.7 of the
        2.7 ms that opening a 100k-cell h5ad and reading one obsm array took in a fresh process, and a read of
        obsm, obs or uns needs neither length.
        """
        if self._axes is None:
            root, where = self.root(), self.storage.describe()
            self._axes = stored_x_shape(root) or (axis_length(root, "obs", where), axis_length(root, "var", where))
        return self._axes

    def set_file_axes(self, axes: tuple[int, int]) -> None:
        """Take the stored axis lengths as known (a view's, from the shadow it was made from)."""
        self._axes = (int(axes[0]), int(axes[1]))

    @property
    def n_obs_file(self) -> int:
        """The stored number of observations."""
        return self.file_axes()[0]

    @property
    def n_vars_file(self) -> int:
        """The stored number of variables."""
        return self.file_axes()[1]

    def root(self) -> Any:
        """The AnnData group in the open file (a closed view's connection is opened again, read-only)."""
        st = getattr(self.storage, "parent", self.storage)  # a modality reads through its MuData's connection
        if st.file is None and getattr(st, "reattach", False):
            st.reattach = False  # closed for a writer of the same file (see suspend_views): open again, read-only
            st.open("r")
        if not self.storage.is_open:
            raise ValueError(f"'{self.storage.describe()}' is closed; call .reopen() to read from it again")
        return self.storage.root

    def ctx(self) -> ReadContext:
        """The read context of this connection (its cache of ``indptr`` arrays)."""
        return ReadContext(indptr_cache=self.storage.indptr_cache)

    def sels(self, group: str) -> tuple:
        """The selection on each stored axis of an element of ``group`` (``layers``/``X``: cells and genes)."""
        sel = (self.oidx, self.vidx)
        return tuple(sel[a] for a in ALIGNMENT.get(group, (0, 1)))

    def describe(self) -> str:
        """The file (and group inside it) the shadow reads, for messages."""
        return self.storage.describe()

    def has_changes(self) -> bool:
        """Whether anything is held in memory that the file does not have (elements, or edited obs/var)."""
        owner = self.owner
        return bool(self.pending or self.deleted or self.inherited) or (
            owner._frame_changed("obs") or owner._frame_changed("var")
        )

    # --- what the state asks its shadow ------------------------------------------------------------------------------
    @property
    def owner(self) -> AnnDataShadow:
        """The shadow this state belongs to."""
        owner = self._owner() if self._owner is not None else None
        if owner is None:
            raise ReferenceError(f"the shadow of '{self.describe()}' is gone")
        return owner

    def bind(self, owner: AnnDataShadow) -> ShadowState:
        """Make ``owner`` the shadow this state answers for (a weak reference: the shadow owns its state)."""
        self._owner = weakref.ref(owner)
        return self

    def get(self, group: str, key: str) -> Any:
        """The value of an element as the shadow hands it out (pending, cached, or read now)."""
        return self.owner._get(group, key)

    def frame(self, name: str) -> Any:
        """``obs`` or ``var`` as a pandas DataFrame (the table backend left aside)."""
        return self.owner._frame(name)

    def frame_columns(self, name: str) -> list[str]:
        """The column names of ``obs``/``var`` without reading the columns."""
        return self.owner._frame_columns(name)

    def frame_changed(self, name: str) -> bool:
        """Whether ``obs``/``var`` (a column or the names) changed in memory since it was read."""
        return self.owner._frame_changed(name)

    def mapping(self, group: str) -> ElementMapping:
        """The shadow's mapping of ``group`` (``obsm``, ``layers``, ``uns``, ...)."""
        return self.owner._mapping(group)

    def elem_path(self, group: str, key: str | None) -> str:
        """The path of an element in the file (legacy places included, as anndata reads them)."""
        return self.owner._elem_path(group, key)

    def disk_keys(self, group: str) -> list[str]:
        """The keys of ``group`` in the file, as anndata would read them."""
        return self.owner._disk_keys(group)

    def twin(self, *, without_raw: bool = False, numpy: bool = False) -> AnnDataShadow:
        """A shadow over the same state (``numpy``: with the numpy/pandas backends), for whole-object answers."""
        return self.owner._twin(without_raw=without_raw, numpy=numpy)

    @property
    def detached(self) -> bool:
        """Whether anndata or scanpy turned the shadow (a view) into an object of its own (see ``compat``)."""
        return bool(self.owner.__dict__.get("_detached", False))


def state_of(shadow: AnnDataShadow) -> ShadowState:
    """The :class:`ShadowState` of a shadow: the one way into it from outside :mod:`shadows.core`."""
    try:
        return shadow._state
    except AttributeError:
        raise TypeError(f"{type(shadow).__name__} is not an AnnDataShadow: it has no shadow state") from None
