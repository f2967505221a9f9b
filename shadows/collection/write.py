"""Streaming a collection (or a view of one) into one new file, and its matrices as dask arrays.

:func:`write_collection` writes what ``anndata.concat(...).write_h5ad(path)`` would write, without holding any
whole matrix: each matrix element is written file by file, each file's rows read in blocks of bounded size
(:func:`shadows.stream.shadow.chunked` on that file's own view: CSR/dense row blocks are single reads, a CSC file is
regrouped once through a scratch file), aligned to the joined columns and appended to one sink
(:class:`~shadows.stream.sink.SparseSink`/:class:`~shadows.stream.sink.DenseSink`).  Tables, ``uns`` and gene-aligned
elements are small and written by ``anndata.io.write_elem``.  The file is staged beside the destination and moved
into place at the end (:class:`~shadows.stream.sink.Output`); an existing destination is refused, never replaced.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anndata
import numpy as np
import pandas as pd
import scipy.sparse as sp

from shadows.collection.side import SideBySide
from shadows.collection.source import Stacked, chunk_bounds, plan_rows
from shadows.core.mapping import untrack
from shadows.settings import settings
from shadows.spec import selection as ix
from shadows.stream.elements import matrix_part
from shadows.stream.matrix import WriteOptions, write_in_memory
from shadows.stream.shadow import chunked
from shadows.stream.sink import DenseSink, Output, SparseSink, set_encoding

if TYPE_CHECKING:
    from shadows.collection.shadow import CollectionShadow

_ROW_GROUPS = ("obsm", "layers", "obsp")


def write_collection(
    coll: CollectionShadow,
    path: str | os.PathLike,
    file_format: str = "h5ad",
    *,
    chunk_size: int | None = None,
    compression: str | None = None,
    compression_opts: Any = None,
    convert_strings_to_categoricals: bool = True,
    zarr_format: int | None = None,
    progress: bool | None = None,
) -> Path:
    """Stream ``coll`` into a new ``.h5ad`` file or zarr store; returns the path written.

    Parameters
    ----------
    coll
        A collection or a view of one (in-memory assignments included).
    path
        The destination; it must not exist.
    file_format
        ``"h5ad"`` or ``"zarr"``.
    chunk_size
        Rows per block (default: sized by ``shadows.settings.memory_budget``).
    compression, compression_opts
        h5py compression of every array, as in ``AnnData.write_h5ad``.
    convert_strings_to_categoricals
        Turn string columns of obs/var with repeated values into categoricals, as anndata's writers do.
    zarr_format
        2 or 3 (default ``anndata.settings.zarr_write_format``).
    progress
        Unused (kept for the signature of the shadows' writers).
    """
    if file_format not in ("h5ad", "zarr"):
        raise ValueError(f"file_format must be 'h5ad' or 'zarr', got {file_format!r}")
    dst = Path(os.fspath(path))
    _refuse_existing(dst)
    opts = WriteOptions().override(chunk_size, compression, compression_opts)
    opts.tmpdir = dst.parent
    numpy = coll._as_numpy()
    out = Output(dst, "h5" if file_format == "h5ad" else "zarr", zarr_format)
    with out:
        root = out.root
        set_encoding(root, "anndata", "0.1.0")
        if numpy._has_x():
            _matrix(numpy, root, "X", "X", opts)
            release_memory()
        for group in _ROW_GROUPS:
            sub = root.create_group(group)
            set_encoding(sub, "dict", "0.1.0")
            for key in numpy._mapping(group).keys():
                if key is not None:
                    _matrix(numpy, sub, str(key), f"{group}/{key}", opts)
                    release_memory()
        if numpy.raw is not None:
            _raw(numpy.raw, root, opts)
            release_memory()
        for group in ("varm", "varp"):
            values = {str(k): numpy._get(group, k) for k in numpy._mapping(group).keys()}
            anndata.io.write_elem(root, group, values, dataset_kwargs=opts.dataset_kwargs)
        anndata.io.write_elem(root, "uns", untrack(dict(numpy.uns.items())), dataset_kwargs=opts.dataset_kwargs)
        for name in ("var", "obs"):
            df = pd.DataFrame(numpy._frame(name))
            if convert_strings_to_categoricals:
                df = df.copy(deep=False)  # columns are replaced, never the collection's own table
                anndata.AnnData().strings_to_categoricals(df)  # anndata's own rule, on this table only
            anndata.io.write_elem(root, name, df, dataset_kwargs=opts.dataset_kwargs)
        _refuse_existing(dst)  # checked again: the destination may have appeared while writing
        return out.commit()


def _raw(raw: Any, root: Any, opts: WriteOptions) -> None:
    """The joined raw (X streamed in blocks of rows, var and varm: empty along obs), as anndata writes a ``Raw``."""
    group = root.create_group("raw")
    set_encoding(group, "raw", "0.1.0")
    src = raw.stacked()
    if isinstance(src, Stacked | SideBySide):
        _stream(group, "X", src, opts)
    else:
        anndata.io.write_elem(group, "X", src, dataset_kwargs=opts.dataset_kwargs)
    anndata.io.write_elem(group, "var", pd.DataFrame(raw.var), dataset_kwargs=opts.dataset_kwargs)
    anndata.io.write_elem(group, "varm", dict(raw.varm), dataset_kwargs=opts.dataset_kwargs)


def _stream(parent: Any, name: str, src: Stacked | SideBySide, opts: WriteOptions) -> None:
    """Write a stacked element in blocks of output rows (each read from the files holding them)."""
    kw = opts.dataset_kwargs
    step = opts.chunk_size or _rows_per_block(src)
    if isinstance(src, SideBySide):
        bounds = [(a, min(src.shape[0], a + step)) for a in range(0, src.shape[0], step)]
    else:
        bounds = chunk_bounds(plan_rows(src.rows, src.offsets), src.offsets, step)
    if src.fmt == "csr":
        sink: Any = SparseSink(parent, name, "csr", src.shape, src.dtype, nnz=None, **kw)
        for a, b in bounds:
            sink.append_block(src.read(slice(a, b, 1)))
    else:
        sink = DenseSink(parent, name, src.shape, src.dtype, **kw)
        for a, b in bounds:
            sink.write(0, a, b, src.read(slice(a, b, 1)))
    sink.close()


def _refuse_existing(dst: Path) -> None:
    if dst.exists() or dst.is_symlink():
        raise FileExistsError(
            f"'{dst}' exists: a collection is written into a new file only (remove it first, or choose another name)"
        )


def _matrix(coll: CollectionShadow, parent: Any, name: str, path: str, opts: WriteOptions) -> None:
    """Write one matrix element: in-memory values through anndata, stored ones block by block."""
    key = ("X", "") if path == "X" else tuple(path.split("/", 1))
    for store in (coll._state.pending, coll._state.inherited):
        if key in store:
            if store[key] is not None:
                write_in_memory(store[key], parent, name, path, opts)
            return
    src = coll.stacked(path)
    if not isinstance(src, Stacked | SideBySide):  # a table in obsm... (axis=1: obsm, obsp): written by anndata
        anndata.io.write_elem(parent, name, pd.DataFrame(src) if isinstance(src, pd.DataFrame) else src)
        return
    kw = opts.dataset_kwargs
    if src.fmt == "csr":
        sink: Any = SparseSink(parent, name, "csr", src.shape, src.dtype, nnz=known_nnz(coll, src, path), **kw)
        for _, _, block in row_blocks(coll, src, path, opts.chunk_size):
            sink.append_block(block)
    else:
        sink = DenseSink(parent, name, src.shape, src.dtype, **kw)
        for a, b, block in row_blocks(coll, src, path, opts.chunk_size):
            sink.write(0, a, b, block)
    sink.close()


def known_nnz(coll: CollectionShadow, src: Stacked, path: str) -> int | None:
    """The number of stored values of a sparse element written, when the files' row pointers tell it (every value
    of the rows read is kept: no column dropped, no dense file, zeros as fill); ``None`` otherwise.

    With it the output's arrays are made at their final size (contiguous, written past HDF5's buffers) instead of
    growing chunk by chunk."""
    if isinstance(src, SideBySide):
        return src.stored_count()
    if src.fmt != "csr" or src.pairwise:
        return None
    total = 0
    for f, local in plan_rows(src.rows, src.offsets).pieces:
        s, cols = src.sources[f], src.columns[f]
        if s is None:
            if src.fill != 0:
                return None
            continue
        if s.sparse_format is None or (cols.place is not None and src.fill != 0):
            return None
        n_cols_file = s.shape[1]
        if cols.read is not None and len(np.unique(ix.positions(cols.read, n_cols_file))) != n_cols_file:
            return None  # columns dropped (an inner join): the count is known only once read
        view = coll._core.parts[f][local if local is not None else slice(None)]
        try:
            part = matrix_part(view, path)
            if part.major_axis != 0 and local is not None:
                return None  # rows of a CSC matrix: their count needs a scan
            total += int(part.major_lengths().sum())
        finally:
            view.close()
    return total


def row_blocks(coll: CollectionShadow, src: Stacked, path: str, chunk_size: int | None) -> Iterator[tuple]:
    """``(start, stop, block)`` over the rows of a matrix element, in bounded memory, aligned as ``src`` says.

    Rows in file order (a whole collection, slices, masks, sorted positions) are read file by file through
    each file's own view; rows of the files interleaved, and the rows of a collection along var (every file's
    part of each row), are read in blocks of output rows."""
    if isinstance(src, SideBySide):
        step = chunk_size or _rows_per_block(src)
        for a in range(0, src.shape[0], step):
            b = min(src.shape[0], a + step)
            yield a, b, src.read(slice(a, b, 1))
        return
    plan = plan_rows(src.rows, src.offsets)
    if plan.order is not None:
        step = chunk_size or _rows_per_block(src)
        for a, b in chunk_bounds(plan, src.offsets, step):
            yield a, b, src.read(slice(a, b, 1))
        return
    start = 0
    for f, local in plan.pieces:
        n_f = ix.length(local, int(src.offsets[f + 1] - src.offsets[f]))
        for a, b, block in _file_blocks(coll, src, path, f, local, n_f, chunk_size, start):
            yield start + a, start + b, block
        start += n_f


def _file_blocks(coll, src: Stacked, path: str, f: int, local: Any, n_f: int, chunk_size, start: int) -> Iterator:
    """Blocks of one file's rows, aligned to the output's columns and type."""
    if src.sources[f] is None:
        step = chunk_size or _rows_per_block(src)
        for a in range(0, n_f, step):
            b = min(n_f, a + step)
            yield a, b, src._filled(b - a)
        return
    part = coll._core.parts[f]
    rows = local if local is not None else slice(None)
    group = path.split("/", 1)[0]
    cols = src.columns[f] if not src.pairwise else None
    if path == "X" or group == "layers":
        view = part[rows, cols.read if cols.read is not None else slice(None)]
    else:
        view = part[rows]
    try:
        step = chunk_size or _file_rows_per_block(view, path, n_f)
        yield from _aligned_blocks(view, src, path, cols, start, step)
    finally:
        view.close()
        release_memory()


def _aligned_blocks(view: Any, src: Stacked, path: str, cols: Any, start: int, step: int) -> Iterator:
    """One file's blocks (read through its own view), placed at the output's columns in the output's type."""
    group = path.split("/", 1)[0]
    for a, b, block in chunked(view, chunk_size=step, element=path, axis=0):
        if src.pairwise:  # the file's block of the diagonal: its columns shifted to where its rows are
            block = block.tocsr() if sp.issparse(block) else sp.csr_matrix(np.asarray(block))
            block = sp.csr_matrix((block.data, block.indices + start, block.indptr), shape=(block.shape[0], src.n_cols))
        else:
            if group == "obsm" and cols.read is not None:
                block = block[:, cols.read]
            block = src._aligned(block, cols.place)
        yield a, b, block.astype(src.dtype, copy=False)


def release_memory() -> None:
    """Hand freed memory back to the system (glibc only; elsewhere nothing happens).

    The blocks of one file are read by worker threads: glibc keeps what each thread freed in that thread's arena,
    so the process's resident size would grow file after file although nothing is held."""
    global _TRIM
    if _TRIM is None:
        try:
            import ctypes

            _TRIM = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _TRIM = False
    if _TRIM:
        _TRIM(0)


_TRIM: Any = None


def _file_rows_per_block(view: Any, path: str, n_rows: int) -> int:
    """Rows per block of one file's element: an eighth of the memory budget of stored values per block (the
    reader keeps a few blocks in flight, and each is aligned and appended)."""
    per_row = matrix_part(view, path).stored_bytes() / max(1, n_rows)
    return max(1, int(settings.memory_budget // 8 // max(1.0, per_row)))


def _rows_per_block(src: Stacked | SideBySide) -> int:
    per_row = max(1, src.n_cols) * (src.dtype.itemsize + (8 if src.fmt == "csr" else 0))
    if isinstance(src, SideBySide) and src.fmt == "csr" and (nnz := src.stored_count()) is not None:
        # the files' row pointers tell the stored values per row: a 10 % dense matrix takes 10x the rows per block
        per_row = max(1.0, nnz / max(1, src.shape[0])) * (src.dtype.itemsize + 8) + 8
    return max(1, min(100_000, int(settings.memory_budget // (4 * per_row))))


# --- dask -------------------------------------------------------------------------------------------------------------
class _Reader:
    """What a dask graph holds: a collection's element, read block by block (picklable: files named by path)."""

    def __init__(self, src: Stacked):
        self.src = src
        self.shape = src.shape
        self.dtype = src.dtype
        self.ndim = 2

    def __getitem__(self, key: Any) -> Any:
        from shadows.backends.dask import as_chunk

        rows, cols = key if isinstance(key, tuple) else (key, slice(None))
        block = self.src.read(ix.normalize(rows, None, self.shape[0], 0))
        if cols != slice(None) and ix.normalize(cols, None, self.shape[1], 1) is not None:
            block = block[:, cols]
        return as_chunk(block)


def dask_array(src: Stacked) -> Any:
    """A dask array of a collection's element: chunks of rows within one file each, read when computed."""
    import dask.array as da

    from shadows.backends.dask import CSRChunk, chunk_length

    if isinstance(src, SideBySide):  # every chunk of rows reads each file's part of them
        step = max(1, _rows_per_block(src))
        bounds = [(a, min(src.shape[0], a + step)) for a in range(0, src.shape[0], step)]
    else:
        plan = plan_rows(src.rows, src.offsets)
        first = next((s for s in src.sources if s is not None), None)
        step = chunk_length(first) if first is not None and not src.pairwise else _rows_per_block(src)
        bounds = chunk_bounds(plan, src.offsets, max(1, step))
    row_chunks = tuple(b - a for a, b in bounds) or (0,)
    meta = CSRChunk((0, 0), dtype=src.dtype) if src.fmt == "csr" else np.empty((0, 0), dtype=src.dtype)
    return da.from_array(
        _Reader(src),
        chunks=(row_chunks, (src.n_cols,)),
        name=f"shadows-collection-{uuid.uuid4().hex}",
        asarray=False,
        fancy=False,
        lock=False,
        meta=meta,
        inline_array=False,
    )
