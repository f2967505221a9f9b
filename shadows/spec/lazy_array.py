"""On-disk array objects: an element plus a selection, read only when (and as far as) it is sliced.

:class:`ElementSource` names an element by file path, element path and selection, never by an open handle, so it
pickles: dask tasks built from it run in other processes.  :class:`LazyArray` is what ``lazy=True`` hands out.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from shadows.io.storage import RELEASE_READERS, Storage, is_group
from shadows.spec import ReadContext, matrix_info, read_element
from shadows.spec import selection as ix

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
        The per-axis selection on the stored element (see :mod:`shadows.spec.selection`).
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
        """The source of ``storage``'s element ``key`` at the selection ``sel`` (shape and dtype from the metadata).

        Parameters
        ----------
        storage
            An open connection; only its path and format are kept.
        key
            The element's path below the connection's root.
        sel
            The per-axis selection on the stored element.
        """
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

    def open(self) -> tuple[Any, ReadContext]:
        """The stored element (on this thread's read-only connection) and a read context sharing its caches."""
        st = _connection(self.path, self.format)
        return st.root[self.key], ReadContext(indptr_cache=st.indptr_cache)

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
        """Shape of the selected part (no data is read)."""
        return self.source.shape

    @property
    def dtype(self) -> np.dtype:
        """The stored dtype (no data is read)."""
        return self.source.dtype

    @property
    def ndim(self) -> int:
        """Number of dimensions."""
        return len(self.shape)

    @property
    def format(self) -> str | None:
        """``"csr"`` or ``"csc"`` for a sparse element, ``None`` for a dense one."""
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
        """Read the whole selected part, as numpy or scipy."""
        return self.source.read()

    def __array__(self, dtype=None, copy=None):
        v = self.to_memory()
        v = v.toarray() if sp.issparse(v) else np.asarray(v)
        return v.astype(dtype) if dtype is not None else v

    def __repr__(self) -> str:
        kind = f"{self.format} matrix" if self.format else "array"
        return f"LazyArray({kind}, shape={self.shape}, dtype={self.dtype}, key={self.source.key!r})"
