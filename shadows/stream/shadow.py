"""Out-of-core work on a shadow: chunked iteration, and streaming a shadow or a view into a new file.

* :func:`chunked` yields ``(start, stop, block)`` over the rows (or columns) of any matrix element of a shadow or
  a view, in bounded memory (``AnnDataShadow.chunked_X`` calls it, and yields ``(block, start, end)`` as anndata does);
* :func:`write_subset` streams a shadow or a view into a new ``.h5ad`` file or zarr store without materialising
  any whole matrix (``AnnDataShadow.write_h5ad``/``write_zarr`` call it); the file equals what anndata writes
  for ``anndata.read_h5ad(src)[idx]``;
* :func:`shadows.stream.anndata_writer.write_anndata` does the same into a group of a file the caller has open (MuData
  writers use it for each modality).

Matrices (``X``, ``layers``, ``obsm``, ``varm``, ``obsp``, ``varp``, ``raw/X``) are read block by block and
appended to the output; tables, ``uns`` and other small elements go through ``anndata.io.write_elem``; elements
taken whole and unchanged are copied as stored.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shadows.core.state import state_of
from shadows.io.remote import is_remote
from shadows.progress import progress_bar
from shadows.settings import settings
from shadows.stream.blocks import MatrixPart, in_memory_blocks, iter_major, prefetched
from shadows.stream.elements import matrix_part, pending_value
from shadows.stream.matrix import WriteOptions
from shadows.stream.sink import Output, refuse_own_file
from shadows.stream.transpose import transposed_blocks

if TYPE_CHECKING:
    from shadows.core.anndata import AnnDataShadow

_MAPPINGS = ("obsm", "varm", "obsp", "varp", "layers")


# --- chunked iteration ------------------------------------------------------------------------------------------------
def chunked(
    shadow: AnnDataShadow,
    chunk_size: int | None = 1000,
    element: str = "X",
    axis: int = 0,
    progress: bool | None = None,
) -> Iterator[tuple[int, int, Any]]:
    """Yield ``(start, stop, block)`` over ``axis`` of a matrix element, ``chunk_size`` positions at a time.

    Parameters
    ----------
    shadow
        An :class:`~shadows.AnnDataShadow` or a view of one (blocks are of the view).
    chunk_size
        Rows (``axis=0``) or columns (``axis=1``) per block; ``None`` sizes blocks by
        ``shadows.settings.memory_budget``.
    element
        ``"X"``, ``"layers/<key>"``, ``"obsm/<key>"``, ``"raw/X"``... any matrix element.
    axis
        0: blocks of rows (``X[start:stop]``); 1: blocks of columns (``X[:, start:stop]``).
    progress
        Show a progress bar (``None``: follow ``shadows.settings.progress``).

    Yields
    ------
    ``(start, stop, block)`` with ``block`` in the stored format (CSR, CSC or a numpy array), converted to the
    shadow's array backend.  Blocks along the stored major axis (rows of CSR, columns of CSC) are single reads;
    along the other axis the matrix is regrouped once through a scratch file (no repeated scans).
    """
    if axis not in (0, 1):
        raise ValueError(f"axis must be 0 or 1, got {axis!r}")
    if chunk_size is not None and int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be a positive number of positions, got {chunk_size!r}")
    return _convert_blocks(shadow, _blocks(shadow, chunk_size, element, axis, progress))


def _blocks(shadow, chunk_size, element, axis, progress) -> Iterator[tuple[int, int, Any]]:
    found, value = pending_value(shadow, element)
    if found:
        if value is None:
            raise KeyError(f"'{element}' of '{state_of(shadow).storage.describe()}' is None")
        yield from in_memory_blocks(value, axis, chunk_size)
        return
    part = matrix_part(shadow, element)
    bar = progress_bar(part.stored_bytes(), f"chunks of {element}", progress=progress)
    try:
        if axis == part.major_axis:
            yield from iter_major(part, chunk_size, 32, None, bar)
        elif not part.sparse:
            yield from _dense_columns(part, chunk_size, bar)
        else:
            yield from _minor_blocks(part, chunk_size, bar)
    finally:
        bar.close()


def _dense_columns(part: MatrixPart, chunk_size: int | None, bar: Any) -> Iterator[tuple[int, int, Any]]:
    n_rows, n_cols = part.shape[0], part.shape[1]
    step = chunk_size or max(1, settings.memory_budget // (4 * max(1, n_rows) * part.dtype.itemsize))

    def job(a: int, b: int):
        return lambda: part.read(1, a, b)

    jobs = [(a, min(n_cols, a + step), job(a, min(n_cols, a + step))) for a in range(0, n_cols, step)]
    for a, b, block in prefetched(jobs):
        bar.update(block.nbytes)
        yield a, b, block


def _minor_blocks(part: MatrixPart, chunk_size: int | None, bar: Any) -> Iterator[tuple[int, int, Any]]:
    """Blocks across the stored minor axis (columns of CSR, rows of CSC): one regrouping pass, not a scan each."""
    shape = part.shape
    major = part.major_axis
    n_out = shape[1 - major]
    budget = settings.memory_budget
    if part.stored_bytes() <= budget // 4:  # small: read once, cut in memory
        whole = part.read(major, 0, shape[major])
        bar.update(part.stored_bytes())
        step = chunk_size or n_out
        for a in range(0, n_out, step):
            b = min(n_out, a + step)
            yield a, b, (whole[:, a:b] if major == 0 else whole[a:b, :])
        return
    # rows of M: for CSR, M = A (pieces are columns of A); for CSC, M = A.T (pieces are rows of A)
    blocks = iter_major(part, None, 32, budget, bar)
    rows_of_m = ((a, b, blk if major == 0 else blk.T.tocsr()) for a, b, blk in blocks)
    m_rows, m_cols = (shape[0], shape[1]) if major == 0 else (shape[1], shape[0])
    step = chunk_size or None
    pieces = transposed_blocks(rows_of_m, m_rows, m_cols, part.dtype, budget=budget, align=step or 1, bar=bar)
    for c0, c1, piece in pieces:
        for a in range(c0, c1, step or (c1 - c0)):
            b = min(c1, a + (step or (c1 - c0)))
            sub = piece[a - c0 : b - c0]  # rows of M.T
            yield a, b, (sub.T.tocsr() if major == 0 else sub.tocsc())


def _convert_blocks(shadow: AnnDataShadow, blocks: Iterator) -> Iterator[tuple[int, int, Any]]:
    name = state_of(shadow).array_backend
    if name == "numpy" or state_of(shadow).lazy:
        yield from blocks
        return
    from shadows.backends import get_array_backend

    backend = get_array_backend(name)
    for a, b, block in blocks:
        yield a, b, (block if backend.from_source else backend.convert(block))


# --- streaming a shadow into a new file -------------------------------------------------------------------------------
def write_subset(
    shadow: AnnDataShadow,
    path: str | os.PathLike,
    file_format: str = "h5ad",
    *,
    chunk_size: int | None = None,
    progress: bool | None = None,
    compression: str | None = None,
    compression_opts: Any = None,
    zarr_format: int | None = None,
    as_dense: Sequence[str] = (),
    convert_strings_to_categoricals: bool = True,
    options: WriteOptions | None = None,
    overwrite: bool = False,
) -> Path:
    """Stream a shadow (or a view) into a new ``.h5ad`` file or zarr store.

    No whole matrix is held: sparse matrices are appended in blocks of rows (columns for CSC), dense ones in
    blocks of rows; obs/var/uns and other small elements are written by ``anndata.io.write_elem``.  The result
    equals ``anndata.read_h5ad(src)[idx]`` written by anndata (unused categories of obs/var dropped, colors in
    ``uns`` trimmed, ``raw`` with the view's cells and all its genes), and pending in-memory changes are included.

    Parameters
    ----------
    shadow
        The shadow or view to write.
    path
        Destination file (h5ad) or directory (zarr).  It is written under a staging name and moved into place at
        the end, so a crash never leaves a half-written destination (and the next write to it removes what the
        crashed one left).  An existing destination is refused (``FileExistsError``) unless ``overwrite=True``;
        a directory is never replaced by an h5ad file (``IsADirectoryError``), nor replaced at all unless it is
        a zarr store holding nothing else.  Unlike anndata, which replaces an existing file silently and
        empties an existing directory to write a zarr store in it.
    file_format
        ``"h5ad"`` or ``"zarr"``.
    chunk_size
        Major positions per block (default: sized by ``shadows.settings.memory_budget``).
    progress
        Show a progress bar (``None``: follow ``shadows.settings``).
    compression, compression_opts
        h5py compression for every array (as in ``AnnData.write_h5ad``).
    zarr_format
        2 or 3 (default ``anndata.settings.zarr_write_format``).
    as_dense
        Matrices to write dense (``"X"``, ``"raw/X"``, ``"layers/<key>"``), as in ``AnnData.write_h5ad``.
    convert_strings_to_categoricals
        Turn string columns of obs/var with repeated values into categoricals (anndata's default).
    options
        Advanced: a :class:`~shadows.stream.matrix.WriteOptions` (conversions and transforms, used by
        :func:`shadows.convert` and :mod:`shadows.pp`); the keyword arguments above override its fields.
    overwrite
        Replace an existing file, or an existing zarr store (see ``path``).

    Raises
    ------
    FileExistsError, IsADirectoryError
        The destination exists (see ``path``); nothing was written.
    ValueError
        A key or column name cannot be written (``/``, empty, a zarr metadata name such as ``.zgroup``), or a
        pending value is one anndata would not read back (see :func:`shadows.writeback.plan.check_value`).

    Returns
    -------
    The path written.
    """
    if file_format not in ("h5ad", "zarr"):
        raise ValueError(f"file_format must be 'h5ad' or 'zarr', got {file_format!r}")
    remote_dst = is_remote(path)  # a URL or zarr store object: written by shadows.stream.remote_output
    dst = None if remote_dst else Path(os.fspath(path))
    if dst is not None:
        refuse_own_file(state_of(shadow).storage, dst)
    opts = (options or WriteOptions()).override(chunk_size, compression, compression_opts)
    for name in [as_dense] if isinstance(as_dense, str) else as_dense:
        opts.formats[name] = "dense"
    opts.convert_strings = opts.convert_strings and convert_strings_to_categoricals
    if opts.tmpdir is None and dst is not None:
        opts.tmpdir = dst.parent
    check_output_names(shadow, opts)  # before the output exists: a refused name leaves nothing behind
    if remote_dst:
        from shadows.stream.remote_output import write_subset_remote

        return write_subset_remote(shadow, path, file_format, zarr_format, overwrite, opts, progress)
    out = Output(dst, "h5" if file_format == "h5ad" else "zarr", zarr_format, overwrite=overwrite)
    from shadows.stream.anndata_writer import write_anndata

    with out:
        write_anndata(shadow, out.root, options=opts, progress=progress)
        return out.commit()


def check_output_names(shadow: AnnDataShadow, opts: WriteOptions | None = None) -> None:
    """Raise ``ValueError`` before writing anything when an element or column name of the output cannot be written
    (see :func:`shadows.writeback.plan.check_key`), or a pending value is one anndata would not read back.

    Names stored in an HDF5 source are checked too: HDF5 takes ``.zgroup`` as a name, zarr does not (and the
    refusal is the same for both formats, so that every file written converts to the other).
    """
    from shadows.core.keys import check_key, check_nested_keys, check_value

    where = state_of(shadow).storage.describe()
    for (group, key), value in [*state_of(shadow).inherited.items(), *state_of(shadow).pending.items()]:
        if group not in ("obs", "var", "raw"):
            check_value(shadow, group, key, value)
    for name in ("obs", "var"):
        for c in _frame_columns(shadow, name):
            check_key(c, f"{name} column {c!r} of '{where}'")
    for group in (*_MAPPINGS, "uns"):
        for key in state_of(shadow).mapping(group).keys():
            check_key(key, f"{group}[{key!r}] of '{where}'")
    if opts is not None:
        for c in opts.obs_columns:
            check_key(c, f"new obs column {c!r}")
        check_nested_keys(opts.uns, "uns")
    _check_stored_names(shadow)


def _frame_columns(shadow: AnnDataShadow, name: str) -> list:
    """The columns ``obs``/``var`` will have: of the table changed in memory (a view's inherited one too)."""
    import pandas as pd

    for store in (state_of(shadow).pending, state_of(shadow).inherited, state_of(shadow).cache):
        if isinstance(store.get((name, "")), pd.DataFrame):
            return list(store[(name, "")].columns)
    return state_of(shadow).frame_columns(name)


def _check_stored_names(shadow: AnnDataShadow) -> None:
    """Names deeper in an HDF5 source (nested ``uns`` keys, columns of data frames in obsm) that zarr refuses."""
    from shadows.core.keys import RESERVED_KEYS
    from shadows.io.storage import is_h5

    root = state_of(shadow).root()
    if not is_h5(root):
        return  # a zarr source cannot hold them
    found: list[str] = []

    def visit(name: str) -> None:
        parts = name.split("/")
        if parts[-1] not in RESERVED_KEYS:
            return
        unit = (parts[0], parts[1] if len(parts) > 1 else "")
        if unit in state_of(shadow).deleted or unit in state_of(shadow).pending:
            return  # not written from the file (removed, or replaced by a value checked above)
        found.append(name)

    root.visit(visit)
    if found:
        raise ValueError(
            f"'{state_of(shadow).storage.describe()}' holds elements named like zarr metadata ({', '.join(found[:5])}); "
            "they cannot be written: rename or delete them first"
        )
