"""The ``"dask"`` array backend: dask arrays whose chunks read the file when computed.

``shadow.X`` (and every other array element) is a :class:`dask.array.Array` built from the element's
:class:`~shadows.spec.lazy_array.ElementSource`; nothing is read until it is computed, and each chunk task reads only its own
part (``source.read(sub)``).  A view's elements are dask arrays of the selected part only.

Chunks
    Chunks run along the element's *stored major axis* — rows of dense arrays and CSR matrices, columns of CSC
    matrices with :data:`CSC_CHUNKS` ``= "columns"`` — and span the whole of the other axes, so that every chunk is
    one contiguous read.  CSC matrices are row blocks of CSR chunks by default (:data:`CSC_CHUNKS`), what scanpy
    needs, each read through the bounded column scan: ``X.compute()`` is then a CSR matrix.  Their length is
    :data:`DASK_CHUNKS` when set (an ``int``: rows, or columns for CSC columns, per chunk), else it is chosen so that a
    chunk holds about dask's ``array.chunk-size`` (``dask.config``, 128 MiB by default) of values (for sparse
    matrices, from the stored number of non-zeros per row or column).  :func:`dask_backend` makes a backend with
    its own chunk length: ``shadows.register_array_backend("dask-1k", dask_backend(chunks=1000))``.

Sparse matrices
    Chunks are scipy sparse matrices (CSR chunks for CSR, CSC chunks for CSC), of the subclasses
    :class:`CSRChunk`/:class:`CSCChunk`: scipy's ``sum``/``mean``/``max``/``min`` take no ``keepdims``, which
    dask's reductions pass, so these add it (and mark themselves as duck arrays for dask).  Otherwise they are
    scipy matrices; ``X.sum(axis=0)``, ``X.mean(axis=1)``, ``X.max(axis=0)`` work on the dask array directly, and
    ``X.compute()`` is a plain ``scipy.sparse.csr_matrix``/``csc_matrix`` (a chunk's ``copy()`` is one).

Distributed
    The graph carries the file's path, the element's key and its selection (an :class:`~shadows.spec.lazy_array.ElementSource`),
    never an open handle: it pickles, and ``dask.distributed`` workers in other processes compute it, each opening
    the file read-only once per process and thread.
"""

from __future__ import annotations

import math
from dataclasses import replace
from functools import partial
from typing import Any

import dask
import dask.array as da
import numpy as np
import scipy.sparse as sp
from dask.array.dispatch import concatenate_lookup
from dask.base import tokenize
from dask.utils import parse_bytes

from shadows.backends import ArrayBackend
from shadows.backends.dask_chain import ChainArray
from shadows.io.storage import Storage
from shadows.spec import selection as ix
from shadows.spec.lazy_array import ElementSource, LazyArray

#: Length of a chunk along the stored major axis (rows; columns for CSC), or ``None`` to aim at dask's
#: ``array.chunk-size`` bytes per chunk.  Read each time an element is converted.
DASK_CHUNKS: int | None = None

#: How a CSC matrix is chunked: ``"rows"`` (default) gives row blocks of CSR chunks, what scanpy's dask
#: route needs (its functions reduce and transform cells block by block); each block is read through the CSC column scan in
#: bounded memory, so one pass over X reads the stored ``indices`` once per block; for repeated passes convert the
#: file once (``shadows.convert(src, dst, matrix_format="csr")``).  ``"columns"`` gives the stored major axis
#: (contiguous reads of genes) as CSC chunks.
CSC_CHUNKS: str = "rows"

#: Most bytes a chunk of a sparse matrix aims at when :data:`DASK_CHUNKS` is not set (below ``array.chunk-size``):
#: scanpy's transformations hold several copies of a chunk per thread (read, normalised, log1p), so 128 MiB chunks
#: peaked at 2.3 GB on a 763 MB file, 16 MiB ones (6,700 rows of 300 non-zeros) at under 300 MB.
SPARSE_CHUNK_BYTES: int = 16 * 2**20


# --- sparse chunks ----------------------------------------------------------------------------------------------


def _one_axis(axis: Any, ndim: int) -> int | None:
    """dask passes ``axis`` as a tuple; scipy takes ``None`` or one int."""
    if isinstance(axis, tuple):
        axis = tuple(a % ndim for a in axis)
        return None if len(axis) != 1 else axis[0]
    return axis


def _shaped(result: Any, shape: tuple, axis: int | None, keepdims: bool) -> np.ndarray:
    """A scipy reduction's result (np.matrix, sparse or scalar) as numpy gives it, with or without kept dims."""
    r = result.toarray() if sp.issparse(result) else np.asarray(result)
    if axis is None:
        return r.reshape((1,) * len(shape)) if keepdims else r.reshape(())
    out = list(shape)
    if keepdims:
        out[axis] = 1
    else:
        del out[axis]
    return r.reshape(out)


_SCIPY = object()  # keepdims not passed: the caller expects scipy's own result (an np.matrix), as scanpy does


class _Reductions:
    """numpy's reduction signature (``keepdims``) on scipy matrices, as dask calls it on every chunk.

    Called without ``keepdims`` (``np.sum(chunk, axis=0)``, ``chunk.sum(axis=1)``), a chunk answers as scipy does
    (a 2-d ``np.matrix``): scanpy's dask code drops ``keepdims`` and relies on that shape."""

    def sum(self, axis=None, dtype=None, out=None, keepdims=_SCIPY):
        ax = _one_axis(axis, self.ndim)
        r = super().sum(axis=ax, dtype=dtype)
        return r if keepdims is _SCIPY else _shaped(r, self.shape, ax, keepdims)

    def mean(self, axis=None, dtype=None, out=None, keepdims=_SCIPY):
        ax = _one_axis(axis, self.ndim)
        r = super().mean(axis=ax, dtype=dtype)
        return r if keepdims is _SCIPY else _shaped(r, self.shape, ax, keepdims)

    def max(self, axis=None, out=None, keepdims=_SCIPY, **kwargs):
        ax = _one_axis(axis, self.ndim)
        r = super().max(axis=ax, **kwargs)
        return r if keepdims is _SCIPY else _shaped(r, self.shape, ax, keepdims)

    def min(self, axis=None, out=None, keepdims=_SCIPY, **kwargs):
        ax = _one_axis(axis, self.ndim)
        r = super().min(axis=ax, **kwargs)
        return r if keepdims is _SCIPY else _shaped(r, self.shape, ax, keepdims)

    def copy(self):
        # dask copies a single-chunk result before handing it out: compute() then gives a plain scipy matrix (which
        # anndata, among others, knows how to write), as concatenating several chunks does.  Empty ones stay
        # chunks: dask's meta (an empty chunk that dask slices, so copies) must keep numpy's reduction signature.
        if 0 in self.shape:
            return super().copy()
        base = sp.csr_matrix if self.format == "csr" else sp.csc_matrix
        return base((self.data.copy(), self.indices.copy(), self.indptr.copy()), shape=self.shape)

    def __array_function__(self, func, types, args, kwargs):
        # Defined so that dask treats chunks as arrays; numpy's own implementation then runs as it would on a
        # plain scipy matrix (np.sum calls .sum(keepdims=...) above).
        impl = getattr(func, "_implementation", None)
        if impl is not None:
            return impl(*args, **kwargs)
        return func(*args, **{k: v for k, v in kwargs.items() if k != "like"})


class CSRChunk(_Reductions, sp.csr_matrix):
    """A CSR chunk of a dask array handed out by the ``"dask"`` backend (a ``scipy.sparse.csr_matrix``)."""


class CSCChunk(_Reductions, sp.csc_matrix):
    """A CSC chunk of a dask array handed out by the ``"dask"`` backend (a ``scipy.sparse.csc_matrix``)."""


def _concatenate(blocks: list, axis: int = 0) -> Any:
    """Chunks joined (scipy's vstack/hstack): a plain scipy matrix, as ``copy()`` gives; empty ones (dask's metas,
    which its reductions join while planning) stay chunks."""
    if axis not in (0, 1):
        raise ValueError(f"scipy sparse chunks join along axis 0 or 1, not {axis}")
    # in the blocks' own format (scipy stacks CSC row blocks into COO otherwise): a CSC file's X computes to CSC
    fmt = blocks[0].format if blocks and all(getattr(b, "format", None) == blocks[0].format for b in blocks) else None
    out = (sp.vstack if axis == 0 else sp.hstack)(blocks, format=fmt)
    return as_chunk(out) if 0 in out.shape else out


concatenate_lookup.register(CSRChunk, _concatenate)
concatenate_lookup.register(CSCChunk, _concatenate)


def _plain(m: Any) -> Any:
    if isinstance(m, _Reductions):
        return (sp.csr_matrix if m.format == "csr" else sp.csc_matrix)(m, copy=False)
    return m


def with_scipy_meta(x: da.Array) -> da.Array:
    """``x`` as a plain :class:`dask.array.Array`, with plain scipy chunks and meta where its chunks are
    :class:`CSRChunk`/:class:`CSCChunk` (``anndata.io.write_elem`` dispatches on exact types: the array's and its
    meta's); any other array unchanged."""
    if type(x) is not da.Array:  # a ChainArray: anndata's writers pick by the array's exact type too
        x = da.Array(x.dask, x.name, x.chunks, meta=x._meta)
    meta = getattr(x, "_meta", None)
    if not isinstance(meta, _Reductions):
        return x
    plain = (sp.csr_matrix if meta.format == "csr" else sp.csc_matrix)((0, 0), dtype=x.dtype)
    return x.map_blocks(_plain, meta=plain, dtype=x.dtype)


def as_chunk(m: Any) -> Any:
    """A scipy CSR/CSC matrix as a chunk (its arrays are shared, not copied); anything else unchanged."""
    if not sp.issparse(m) or isinstance(m, _Reductions):
        return m
    if m.format not in ("csr", "csc"):
        m = m.tocsr()
    cls = CSRChunk if m.format == "csr" else CSCChunk
    return cls((m.data, m.indices, m.indptr), shape=m.shape)


# --- arrays from sources ----------------------------------------------------------------------------------------


class _Reader(LazyArray):
    """What a dask graph holds: the element's source (picklable), read part by part as chunks."""

    def __getitem__(self, key: Any) -> Any:
        key = _whole_axes_as_none(key if isinstance(key, tuple) else (key,), self.shape)
        src = self.source
        whole_cols = len(key) == 2 and isinstance(key[1], slice) and key[1] == slice(None)
        if src.sparse_format == "csr" and whole_cols and len(src.sel) == 2 and src.sel[1] is not None:
            m = _rows_then_columns(src, key[0])
        else:
            m = super().__getitem__(key)
        if src.sparse_format == "csc" and major_axis(src) == 0:
            m = m.tocsr()  # row blocks of a CSC file: CSR chunks, what scanpy's dask route accepts (PCA checks)
        return as_chunk(m)

    def __dask_tokenize__(self):
        return ("shadows-reader", tokenize(self.source))


def _whole_axes_as_none(key: tuple, shape: tuple) -> tuple:
    """``key`` with each slice that spans its whole axis as ``slice(None)``.

    dask's getter passes every axis, the whole ones as ``slice(0, n)``; the sparse reader takes a bounded ``slice``
    on the minor axis for a column selection and scans the stored ``indices`` for it: a 4,193-row block of a 20,000-
    gene CSR file read in 126 ms that way against 9 ms as whole rows (14x; most of qc's, HVG's and PCA's reads).
    """
    out = []
    for k, n in zip(key, shape, strict=False):
        if isinstance(k, slice) and k != slice(None) and k.indices(n) == (0, n, 1):
            k = slice(None)
        out.append(k)
    return (*out, *key[len(out) :])


def _rows_then_columns(src: ElementSource, rows: Any) -> sp.csr_matrix:
    """Rows ``rows`` of a CSR source whose columns are a selection (a view, genes filtered in place): whole stored
    rows read as one contiguous range, the columns then taken in memory (scipy's O(nnz) column index).

    The column scan of the stored ``indices`` (what the reader does for a column selection) took 14x the time of the
    plain read; the whole rows are what a chunk's length was sized for (stored non-zeros per row), so memory stays
    within a chunk.
    """
    cols = src.sel[1]
    whole = replace(src, sel=(src.sel[0], None), shape=(src.shape[0], src.stored_shape[1]))
    m = LazyArray(whole)[(rows,)]
    if ix.is_identity(cols, src.stored_shape[1]):
        return m
    if isinstance(cols, slice):
        return sp.csr_matrix(m[:, cols])
    return sp.csr_matrix(m[:, np.asarray(cols, dtype=np.int64)])


def major_axis(source: ElementSource) -> int:
    """The axis the chunks run along: 1 for CSC (the stored major axis) unless :data:`CSC_CHUNKS` is ``"rows"``
    for a 2-d CSC matrix, else 0."""
    if source.sparse_format == "csc":
        if CSC_CHUNKS not in ("rows", "columns"):
            raise ValueError(f"shadows.backends.dask.CSC_CHUNKS must be 'rows' or 'columns', not {CSC_CHUNKS!r}")
        return 0 if CSC_CHUNKS == "rows" else 1
    return 0


def _bytes_per_major(source: ElementSource, axis: int) -> float:
    if source.sparse_format is None:
        return math.prod(n for i, n in enumerate(source.shape) if i != axis) * source.dtype.itemsize
    # non-zeros per row (column) from the stored matrix: a short-lived handle, nothing stays open
    st = Storage(source.path, mode="r", format=source.format)
    try:
        g = st.root[source.key]
        nnz, idx_size = g["data"].shape[0], g["indices"].dtype.itemsize
    finally:
        st.close()
    n_major = max(1, source.stored_shape[axis])
    return nnz / n_major * (source.dtype.itemsize + idx_size)


def chunk_length(source: ElementSource, chunks: int | None = None) -> int:
    """Chunk length along the major axis: ``chunks``, else :data:`DASK_CHUNKS`, else about ``array.chunk-size``."""
    n = chunks if chunks is not None else DASK_CHUNKS
    if n is None:
        target = parse_bytes(dask.config.get("array.chunk-size", "128MiB"))
        if source.sparse_format is not None:
            target = min(target, SPARSE_CHUNK_BYTES)
        n = int(target // max(1.0, _bytes_per_major(source, major_axis(source))))
    if not isinstance(n, int | np.integer) or n < 1:
        raise ValueError(f"dask chunk length must be a positive int, got {n!r}")
    return int(n)


def from_source(source: ElementSource, chunks: int | None = None) -> da.Array:
    """A dask array of ``source``: one task per chunk along the major axis, each reading its part when run."""
    shape = tuple(source.shape)
    if not shape:  # a 0-d array: nothing to chunk
        return da.from_array(np.asarray(source.read()), chunks=())
    axis = major_axis(source)
    n = chunk_length(source, chunks)
    spec = tuple(min(n, max(1, length)) if i == axis else -1 for i, length in enumerate(shape))
    if source.sparse_format is not None:
        # chunk-typed: dask's reductions (``X.sum(axis=0)``) compute the meta with numpy's keepdims; anndata's writer
        # picks by the meta's exact type, so writers hand it :func:`with_scipy_meta` of the array
        meta = (CSRChunk if source.sparse_format == "csr" or axis == 0 else CSCChunk)((0, 0), dtype=source.dtype)
    else:
        meta = np.empty((0,) * len(shape), dtype=source.dtype)
    name = f"shadows-{source.key.replace('/', '-')}-{tokenize(source, spec)}"
    x = da.from_array(
        _Reader(source), chunks=spec, name=name, asarray=False, fancy=False, lock=False, meta=meta, inline_array=False
    )
    if source.sparse_format is not None and len(shape) == 2 and axis == 0:  # CSR row blocks: scanpy's steps fused
        return ChainArray.of(x)
    return x


def from_value(value: Any, chunks: int | None = None) -> Any:
    """A dask array of a value already in memory (arrays nested in ``uns`` dicts)."""
    if sp.issparse(value):
        value = as_chunk(value)
    elif not isinstance(value, np.ndarray):
        return value
    if value.ndim == 0:
        return da.from_array(value, chunks=())
    n = chunks if chunks is not None else DASK_CHUNKS
    spec = tuple((n or -1) if i == 0 else -1 for i in range(value.ndim))
    return da.from_array(value, chunks=spec, asarray=not sp.issparse(value))


def dask_backend(chunks: int | None = None, name: str = "dask") -> ArrayBackend:
    """An array backend handing out dask arrays with ``chunks`` rows (columns for CSC) per chunk.

    ``None`` uses :data:`DASK_CHUNKS` or dask's ``array.chunk-size``.

    Examples
    --------
    >>> import shadows
    >>> shadows.register_array_backend("dask-1k", dask_backend(chunks=1000))  # doctest: +SKIP
    >>> AnnDataShadow("a.h5ad", array_backend="dask-1k").X.chunks  # doctest: +SKIP
    """
    return ArrayBackend(
        name,
        partial(from_source, chunks=chunks),
        from_source=True,
        convert_value=partial(from_value, chunks=chunks),
    )


DASK = dask_backend()

__all__ = ["DASK", "DASK_CHUNKS", "CSCChunk", "CSRChunk", "as_chunk", "chunk_length", "dask_backend", "from_source"]
