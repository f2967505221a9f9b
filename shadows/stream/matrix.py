"""Streaming one matrix element into an open output group: same format, another format, or transformed.

The source is a :class:`~shadows.stream.blocks.MatrixPart` (a stored matrix and a view's selection) or an in-memory
value (a pending change).  Blocks are read along the stored major axis and appended to a sink in the target
format; a change of orientation (CSR <-> CSC, or a CSC matrix written dense by rows) goes through
:mod:`shadows.stream.transpose`.  An optional transform (``shadows.pp``) is applied to each block just before it is
written: ``transform(block, axis, start, stop)`` with ``axis`` the axis the block was cut along and
``start:stop`` its positions on that axis; it must keep the sparsity structure of sparse blocks.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import anndata
import numpy as np
import scipy.sparse as sp

from shadows.settings import settings
from shadows.stream.blocks import MatrixPart, iter_major
from shadows.stream.sink import DenseSink, SparseSink
from shadows.stream.transpose import SPOOL_BYTES_PER_VALUE, transposed_blocks
from shadows.writeback.values import writable

Transform = Callable[[Any, int, int, int], Any]
FORMATS = ("csr", "csc", "dense")
# Bytes held per stored value while a block is read (two blocks alive: the one written and the next one read).
READ_BYTES_PER_VALUE = 32


@dataclass
class WriteOptions:
    """How :func:`shadows.stream.shadow.write_anndata` writes.

    Attributes
    ----------
    chunk_size
        Major positions (rows of CSR/dense, columns of CSC) per block; ``None`` sizes blocks by the budget.
    compression, compression_opts
        Passed to h5py for every array written (as ``anndata.AnnData.write_h5ad`` does).
    budget
        Bytes the operation may hold (default ``shadows.settings.memory_budget``).
    tmpdir
        Directory for scratch files of orientation changes (default: beside the output).
    formats
        Target format per element path (``"X"``, ``"layers/counts"``): ``"csr"``, ``"csc"`` or ``"dense"``.
    transforms
        Block transform per element path (see the module docstring).
    dtypes
        Output type per element path (for transforms that change it).
    obs_columns
        Columns added to (or replacing those of) ``obs``.
    uns
        Entries added to (or replacing those of) ``uns``.
    convert_strings
        Turn string columns of obs/var with repeated values into categoricals, as anndata's writers do.
    """

    chunk_size: int | None = None
    compression: str | None = None
    compression_opts: Any = None
    budget: int | None = None
    tmpdir: str | os.PathLike | None = None
    formats: dict[str, str] = field(default_factory=dict)
    transforms: dict[str, Transform] = field(default_factory=dict)
    dtypes: dict[str, Any] = field(default_factory=dict)
    obs_columns: dict[str, Any] = field(default_factory=dict)
    uns: dict[str, Any] = field(default_factory=dict)
    convert_strings: bool = True

    def override(self, chunk_size: int | None = None, compression: str | None = None, compression_opts: Any = None):
        """Set the fields a writer's keyword arguments give (``None``: keep the field); returns ``self``."""
        if chunk_size is not None:
            self.chunk_size = chunk_size
        if compression is not None:
            self.compression, self.compression_opts = compression, compression_opts
        return self

    @property
    def dataset_kwargs(self) -> dict[str, Any]:
        """The compression keyword arguments for new datasets (none without ``compression``)."""
        if not self.compression:
            return {}
        return {"compression": self.compression, "compression_opts": self.compression_opts}

    def get_budget(self) -> int:
        """Bytes a write may hold in memory: ``budget``, else ``settings.memory_budget``."""
        return int(self.budget or settings.memory_budget)


def target_format(path: str, source_kind: str, opts: WriteOptions) -> str:
    """The matrix format the element at ``path`` is written in: the one asked for, else that of the source.

    Raises
    ------
    ValueError
        If the format asked for is not ``csr``, ``csc`` or ``dense``.
    """
    fmt = opts.formats.get(path, source_kind)
    if fmt not in FORMATS:
        raise ValueError(f"Unknown matrix format {fmt!r} for '{path}'; choose one of {list(FORMATS)}")
    return fmt


def write_stored(
    part: MatrixPart,
    parent: Any,
    name: str,
    path: str,
    opts: WriteOptions,
    bar: Any = None,
    started: Callable[[], None] | None = None,
) -> None:
    """Write the selected part of a stored matrix as ``parent[name]``, block by block.

    ``started`` is called once the first block is read: by then the output arrays are created and the reader is
    set up, so that what follows needs HDF5's lock (h5py's, held by other threads' h5py calls) no more than
    now and then.
    """
    fmt = target_format(path, part.kind, opts)
    dtype = np.dtype(opts.dtypes.get(path, part.dtype))
    tf = opts.transforms.get(path)
    shape = part.shape
    budget = opts.get_budget()
    kw = opts.dataset_kwargs
    # blocks are consumed one at a time here: two buffers used in turn suffice
    blocks = _announcing(iter_major(part, opts.chunk_size, READ_BYTES_PER_VALUE, budget, bar, reuse=2), started)

    def fix(block: Any, axis: int, a: int, b: int) -> Any:
        if tf is not None:
            block = tf(block, axis, a, b)
        return block

    if part.kind == fmt:  # same layout: blocks go straight through
        if fmt == "dense":
            sink: Any = DenseSink(parent, name, shape, dtype, **kw)
            for a, b, block in blocks:
                sink.write(0, a, b, fix(np.asarray(block), 0, a, b))
        else:
            minor = 1 - part.major_axis
            nnz = int(part.major_lengths().sum()) if part.sels[minor] is None else None
            sink = SparseSink(parent, name, fmt, shape, dtype, nnz=nnz, **kw)
            for a, b, block in blocks:
                sink.append_block(fix(block, part.major_axis, a, b))
        sink.close()
        return
    if part.kind == "csr" and fmt == "dense":  # rows of CSR are rows of the dense array
        sink = DenseSink(parent, name, shape, dtype, **kw)
        for a, b, block in blocks:
            sink.write(0, a, b, fix(block, 0, a, b).toarray())
        sink.close()
        return
    if part.kind == "dense" and fmt == "csr":
        sink = SparseSink(parent, name, "csr", shape, dtype, **kw)
        for a, b, block in blocks:
            sink.append_block(fix(sp.csr_matrix(np.asarray(block)), 0, a, b))
        sink.close()
        return
    # an orientation change: stream through the transposer, with smaller blocks (it holds more of them at once)
    blocks.close()
    # (blocks are read by the transposer's workers, each into buffers of its own)
    blocks = _announcing(iter_major(part, opts.chunk_size, SPOOL_BYTES_PER_VALUE, budget, bar, deferred=True), started)
    write_transposed(part, blocks, parent, name, fmt, dtype, fix, opts, bar)


def _announcing(blocks: Iterator[tuple], started: Callable[[], None] | None) -> Iterator[tuple]:
    """``blocks``, calling ``started`` when the first one is in hand (or when there is none)."""
    first = True
    for item in blocks:
        if first and started is not None:
            started()
        first = False
        yield item
    if first and started is not None:
        started()


def write_transposed(
    part: MatrixPart, blocks: Any, parent: Any, name: str | None, fmt: str, dtype: np.dtype, fix: Callable, opts, bar
) -> None:
    """CSR -> CSC, CSC -> CSR, dense -> CSC, CSC -> dense: regroup by the other axis, then write."""
    shape = part.shape
    if part.kind == "csc":  # columns of A are rows of M = A.T; the pieces are rows of A
        m_shape = (shape[1], shape[0])

        def as_rows(blk: Any) -> sp.csr_matrix:
            return blk.T.tocsr()
    else:  # rows of A (CSR or dense) are rows of M = A; the pieces are columns of A
        m_shape = shape

        def as_rows(blk: Any) -> sp.csr_matrix:
            return sp.csr_matrix(blk) if not sp.issparse(blk) else blk.tocsr()

    # blocks may come as reading functions (iter_major(deferred=True)): converted when read, in the worker
    rows_of_m = ((a, b, (lambda read=blk: as_rows(read())) if callable(blk) else as_rows(blk)) for a, b, blk in blocks)
    max_cols = None
    if fmt == "dense":  # a dense piece of ``k`` rows of A must fit the budget too
        max_cols = max(1, opts.get_budget() // (4 * max(1, shape[1]) * dtype.itemsize))
    pieces = transposed_blocks(
        rows_of_m,
        m_shape[0],
        m_shape[1],
        part.dtype,
        budget=opts.get_budget(),
        in_memory=part.stored_bytes() <= opts.get_budget() // 4,
        directory=opts.tmpdir,
        max_cols=max_cols,
        bar=bar,
    )
    out_axis = 0 if fmt in ("csr", "dense") else 1
    sink: Any = DenseSink(parent, name, shape, dtype, **opts.dataset_kwargs) if fmt == "dense" else None
    if sink is None:
        # without a selection across the blocks, the number of values is known: arrays are made at their size
        # (contiguous in HDF5, the fastest layout to read a gene from)
        minor = 1 - part.major_axis
        nnz = int(part.major_lengths().sum()) if part.sparse and part.sels[minor] is None else None
        sink = SparseSink(parent, name, fmt, shape, dtype, nnz=nnz, **opts.dataset_kwargs)
    for c0, c1, piece in pieces:
        # piece: CSR of M.T rows c0:c1 = the target's major positions c0:c1, compressed the target's way
        block = sp.csr_matrix(piece) if fmt in ("csr", "dense") else sp.csc_matrix(piece.T)
        block = fix(block, out_axis, c0, c1)
        if fmt == "dense":
            sink.write(0, c0, c1, block.toarray())
        else:
            sink.append_block(block)
    sink.close()


def write_in_memory(value: Any, parent: Any, name: str, path: str, opts: WriteOptions) -> None:
    """Write a pending in-memory value through anndata, converted and transformed like a stored one."""
    kind = "dense" if not sp.issparse(value) else value.format
    fmt = opts.formats.get(path, kind)
    if fmt != kind:
        value = value.toarray() if fmt == "dense" and sp.issparse(value) else value
        if fmt in ("csr", "csc"):
            value = sp.csr_matrix(value) if fmt == "csr" else sp.csc_matrix(value)
    tf = opts.transforms.get(path)
    if tf is not None:
        if path in opts.dtypes:
            value = value.astype(opts.dtypes[path])
        value = tf(value, 0, 0, value.shape[0])
    anndata.io.write_elem(parent, name, writable(value), dataset_kwargs=opts.dataset_kwargs)
