"""On-disk array objects: an element plus a selection, read only when (and as far as) it is sliced.

:class:`LazyDict` is the same idea for the nested dicts of ``uns``: a value is read when first asked for.

:class:`ElementSource` names an element by file path, element path and selection, never by an open handle, so it
pickles: dask tasks built from it run in other processes.  :class:`LazyArray` is what ``lazy=True`` hands out.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from . import index as ix
from .elements import ReadContext, encoding_of, matrix_info, read_element
from .mapping import TrackedDict
from .storage import RELEASE_READERS, Storage, is_group

_local = threading.local()
# every thread's read-only connections, so that a writer of the same file can close them (see release_readers)
_ALL_CONNECTIONS: weakref.WeakSet[Storage] = weakref.WeakSet()
_ALL_LOCK = threading.Lock()


def _connection(path: str, fmt: str | None) -> Storage:
    """A read-only connection per process and thread, reused across reads of the same file."""
    conns = getattr(_local, "conns", None)
    if conns is None:
        conns = _local.conns = {}
    key = (path, fmt)
    st = conns.get(key)
    if st is None or not st.is_open:
        st = conns[key] = Storage(path, mode="r", format=fmt)
        with _ALL_LOCK:
            _ALL_CONNECTIONS.add(st)
    return st


def release_readers(filename: str) -> None:
    """Close every thread's read-only connection to ``filename`` (each reopens on its next read).

    HDF5 refuses to open a file for writing that this process holds open read-only: dask's worker threads keep
    their connections after a computation, so ``reopen("r+")`` of a shadow whose X is a dask array would fail."""
    with _ALL_LOCK:
        conns = [st for st in _ALL_CONNECTIONS if st.filename == filename]
    for st in conns:
        st.close()


RELEASE_READERS.append(release_readers)


@dataclass(frozen=True)
class ElementSource:
    """A picklable reference to (part of) an element of a file.

    Attributes
    ----------
    path
        The file or store, with the path of the AnnData group inside it if nested (``file.h5mu/mod/rna``).
    key
        The element's path below that group (``"X"``, ``"layers/counts"``, ``"obsm/X_pca"``).
    sel
        The per-axis selection on the stored element (see :mod:`shadows.index`).
    shape, dtype
        Shape after selection and stored dtype.
    sparse_format
        ``"csr"``/``"csc"`` for sparse elements, else ``None``.
    format
        The ``format=`` the shadow was opened with.
    """

    path: str
    key: str
    sel: tuple
    shape: tuple
    dtype: Any
    sparse_format: str | None = None
    format: str | None = None
    stored_shape: tuple = ()

    @classmethod
    def from_storage(cls, storage: Storage, key: str, sel: tuple) -> ElementSource:
        elem = storage.root[key]
        if is_group(elem):
            fmt, shape = matrix_info(elem)
            dtype = elem["data"].dtype
        else:
            fmt, shape, dtype = None, tuple(elem.shape), elem.dtype
        stored = tuple(shape)
        out_shape = tuple(ix.length(s, n) for s, n in zip(sel + (None,) * (len(shape) - len(sel)), shape, strict=False))
        return cls(storage.describe(), key, tuple(sel), out_shape, np.dtype(dtype), fmt, storage.format, stored)

    def subselect(self, sub: tuple) -> ElementSource:
        """The source of ``self[sub]`` (``sub`` normalised per axis, relative to this source)."""
        sel = list(self.sel) + [None] * (len(self.stored_shape) - len(self.sel))
        new = []
        for axis, n_file in enumerate(self.stored_shape):
            s = sub[axis] if axis < len(sub) else None
            new.append(ix.compose(sel[axis], s, n_file))
        shape = tuple(ix.length(s, n) for s, n in zip(new, self.stored_shape, strict=False))
        return ElementSource(
            self.path, self.key, tuple(new), shape, self.dtype, self.sparse_format, self.format, self.stored_shape
        )

    def read(self, sub: tuple = ()) -> Any:
        """Read the selected part (further restricted by ``sub``) as numpy / scipy."""
        src = self.subselect(sub) if sub else self
        st = _connection(self.path, self.format)
        return read_element(st.root[self.key], src.sel, ReadContext(indptr_cache=st.indptr_cache))


class LazyArray:
    """An element that stays on disk until sliced; slicing reads only the selected part.

    ``a[rows, cols]`` returns numpy or scipy values; ``a.to_memory()`` (or ``np.asarray(a)``) reads all of it.
    """

    def __init__(self, source: ElementSource):
        self.source = source

    @property
    def shape(self) -> tuple:
        return self.source.shape

    @property
    def dtype(self) -> np.dtype:
        return self.source.dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def format(self) -> str | None:
        return self.source.sparse_format

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> Any:
        key = key if isinstance(key, tuple) else (key,)
        if any(k is Ellipsis for k in key):
            raise IndexError("LazyArray does not take Ellipsis; index each axis")
        squeeze = [i for i, k in enumerate(key) if isinstance(k, int | np.integer)]
        sub = tuple(ix.normalize(k, None, n, axis) for axis, (k, n) in enumerate(zip(key, self.shape, strict=False)))
        out = self.source.read(sub)
        if squeeze:
            if sp.issparse(out):
                out = out.toarray()
            out = np.squeeze(out, axis=tuple(squeeze))
        return out

    def to_memory(self) -> Any:
        return self.source.read()

    def __array__(self, dtype=None, copy=None):
        v = self.to_memory()
        v = v.toarray() if sp.issparse(v) else np.asarray(v)
        return v.astype(dtype) if dtype is not None else v

    def __repr__(self) -> str:
        kind = f"{self.format} matrix" if self.format else "array"
        return f"LazyArray({kind}, shape={self.shape}, dtype={self.dtype}, key={self.source.key!r})"


class _Unread:
    """Stands in a :class:`LazyDict` for a value not read yet; never handed out."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<unread>"


_UNREAD = _Unread()


class LazyDict(TrackedDict):
    """A dict of ``uns`` (at any depth) whose values are read from the file on first access, one key at a time.

    ``s.uns["a"]["b"]`` reads only ``uns/a/b`` however large the rest of ``uns/a`` is.  It is a real ``dict`` (as
    anndata hands out): keys, ``in`` and ``len`` come from the file's keys; whatever hands out values (``[]``,
    ``get``, ``items``, ``values``, ``==``, ``copy``, ``dict(d)``, ``{**d}``, pickling) reads them first, so no
    caller ever sees a value that is not read.  Changes notify the shadow (``on_change``) as a
    :class:`~shadows.mapping.TrackedDict` does.

    Parameters
    ----------
    open_element
        ``open_element(path)``: a context manager giving the group or array at ``path`` of the shadow's file.
    path
        The group this dict stands for (``"uns/neighbors"``).
    on_change
        Called after every change.
    convert
        Applied to every value read (the array backends), or ``None``.
    hidden
        Keys of the group that are not part of the dict (anndata moves them elsewhere when reading).
    """

    def __init__(
        self,
        open_element: Callable[[str], Any],
        path: str,
        on_change: Callable[[], None],
        convert: Callable[[Any], Any] | None = None,
        hidden: frozenset[str] = frozenset(),
    ):
        dict.__init__(self)
        self._on_change = on_change
        self._open_element, self._path, self._convert = open_element, path, convert
        with open_element(path) as group:
            for k in group.keys():
                if str(k) not in hidden:
                    dict.__setitem__(self, str(k), _UNREAD)

    def _load(self, key: Any) -> Any:
        value = dict.__getitem__(self, key)
        if value is not _UNREAD:
            return value
        path = f"{self._path}/{key}"
        with self._open_element(path) as elem:
            if is_group(elem) and encoding_of(elem)[0] == "dict":
                value = LazyDict(self._open_element, path, self._on_change, self._convert)
            else:
                value = read_element(elem, (), ReadContext())
                value = self._convert(value) if self._convert is not None else value
        # a concurrent change (or a concurrent load) wins; only a key still unread takes what was read
        if dict.get(self, key) is _UNREAD:
            dict.__setitem__(self, key, value)
        return dict.get(self, key, value)

    def _load_all(self) -> None:
        for key in list(dict.keys(self)):
            if dict.get(self, key) is _UNREAD:
                self._load(key)

    # --- reading: every way a value comes out loads it first ------------------------------------------------------
    def __getitem__(self, key: Any) -> Any:
        dict.__getitem__(self, key)  # KeyError for an unknown key, as a dict
        return self._load(key)

    def get(self, key: Any, default: Any = None) -> Any:
        return self[key] if key in self else default

    def __iter__(self):
        # defined here (not inherited) so that dict(d), {**d} and f(**d) take values through __getitem__, not
        # straight from the dict's storage
        return dict.__iter__(self)

    def items(self):
        self._load_all()
        return dict.items(self)

    def values(self):
        self._load_all()
        return dict.values(self)

    def copy(self) -> dict:
        return {k: self[k] for k in self}

    def __eq__(self, other: object) -> bool:
        self._load_all()
        if isinstance(other, LazyDict):
            other._load_all()
        return dict.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        eq = self.__eq__(other)
        return eq if eq is NotImplemented else not eq

    __hash__ = None  # a dict

    def __repr__(self) -> str:
        self._load_all()
        return dict.__repr__(self)

    def __or__(self, other: Any) -> dict:
        if not isinstance(other, dict):
            return NotImplemented
        return {**self, **other}

    def __ror__(self, other: Any) -> dict:
        if not isinstance(other, dict):
            return NotImplemented
        return {**other, **self}

    def __ior__(self, other: Any) -> LazyDict:
        self.update(other)
        return self

    # --- changes: values handed back are read values --------------------------------------------------------------
    def pop(self, key: Any, *default: Any) -> Any:
        if key in self:
            self._load(key)
        return super().pop(key, *default)

    def popitem(self) -> tuple:
        if not self:
            raise KeyError("popitem(): dictionary is empty")
        key = next(reversed(dict.keys(self)))
        return key, self.pop(key)

    def setdefault(self, key: Any, default: Any = None) -> Any:
        if key not in self:
            self[key] = default
        return self[key]
