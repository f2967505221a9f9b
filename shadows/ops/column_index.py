"""A column-major copy of a CSR matrix (row-major of CSC) stored inside the matrix's own group.

``X/shadows_column_index/{data,indices,indptr}`` (encoding ``csc_matrix`` with the matrix's shape) makes reading
a gene of a CSR matrix a contiguous read of that gene's values instead of a scan of the whole matrix; the
selection-aware reader (:mod:`shadows.spec.sparse`) uses it automatically.  anndata, its backed mode and
mudata read only ``data``, ``indices`` and ``indptr`` of a sparse group, so they read the file unchanged.

The copy is built out of core (:mod:`shadows.stream.transpose`) and appears in the file only once complete: in HDF5 it
is written in an anonymous group then linked under its name (a crash leaves no trace but unused space); in zarr
it is written in a staging directory then renamed, and the store's consolidated metadata are rewritten.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import zarr

from shadows.core.state import state_of
from shadows.io import commit_guard
from shadows.io.storage import is_group
from shadows.io.zarr_journal import consolidate, consolidated_kind
from shadows.progress import progress_bar
from shadows.spec.sparse import COLUMN_INDEX, matrix_info
from shadows.stream.blocks import iter_major, part_of
from shadows.stream.matrix import WriteOptions, write_transposed
from shadows.stream.sink import stale, temp_name
from shadows.stream.transpose import SPOOL_BYTES_PER_VALUE

if TYPE_CHECKING:
    from shadows.core.anndata import AnnDataShadow

# A zarr copy is built in ``<matrix>/shadows_column_index.staging-shadows-<host>-<pid>-<token>``: the name tells
# whose it is, so that a later run removes the staging directories of killed processes and no one else's.
STAGING = COLUMN_INDEX + ".staging"


def _matrix_group(shadow: AnnDataShadow, element: str, action: str) -> Any:
    where = state_of(shadow).storage.describe()
    if shadow.is_view:
        raise ValueError(f"{action} works on a whole shadow, not a view of '{where}'")
    if state_of(shadow).storage.mode != "r+":
        raise ValueError(
            f"{action} writes into '{where}', which is open read-only; "
            "open it with AnnDataShadow(path, mode='r+') or call .reopen('r+') first"
        )
    root = state_of(shadow).root()
    if element not in root or not is_group(root[element]):
        raise KeyError(f"'{where}' has no sparse matrix '{element}'")
    group = root[element]
    matrix_info(group)  # raises a clear error for anything but a CSR/CSC group
    return group


def add_column_index(shadow: AnnDataShadow, element: str = "X", *, progress: bool | None = None) -> None:
    """Store a copy of the sparse matrix ``element`` in the other orientation, inside its group.

    Parameters
    ----------
    shadow
        A shadow opened with ``mode="r+"`` (not a view).
    element
        Path of a CSR or CSC matrix: ``"X"``, ``"layers/<key>"``, ``"raw/X"``.
    progress
        Show a progress bar (``None``: follow ``shadows.settings``).
    """
    group = _matrix_group(shadow, element, "add_column_index")
    key = ("X", "") if element == "X" else tuple(element.split("/", 1))
    if key in state_of(shadow).pending:
        raise ValueError(f"'{element}' has pending in-memory changes; write() them before indexing the file's matrix")
    fmt, shape = matrix_info(group)
    if COLUMN_INDEX in group:
        existing = group[COLUMN_INDEX]
        if is_group(existing) and matrix_info(existing) == ("csc" if fmt == "csr" else "csr", shape):
            return
        raise ValueError(f"'{group.name}/{COLUMN_INDEX}' exists but does not match the matrix; drop it first")
    other = "csc" if fmt == "csr" else "csr"
    st = state_of(shadow).storage
    part = part_of(group, (None, None), state_of(shadow).ctx())
    opts = WriteOptions(tmpdir=Path(st.filename).parent)
    bar = progress_bar(3 * part.stored_bytes(), f"column index of {element}", progress=progress)

    def build(target: Any) -> None:
        blocks = iter_major(part, None, SPOOL_BYTES_PER_VALUE, None, bar, deferred=True)
        write_transposed(part, blocks, target, None, other, part.dtype, lambda b, *_: b, opts, bar)

    try:
        if st.kind == "h5":
            # an anonymous group: invisible until linked, so a crash leaves the file as it was
            staging = h5py.Group(h5py.h5g.create(group.file.id, None))
            build(staging)
            group[COLUMN_INDEX] = staging
            group.file.flush()
        else:
            gdir = _zarr_dir(group)
            _remove_stale(gdir)
            staging_dir = gdir / temp_name(f"{STAGING}-", "")
            try:
                build(zarr.open_group(str(staging_dir), mode="w", zarr_format=group.metadata.zarr_format))
            except BaseException:
                _remove_dir(staging_dir)  # a half-built copy never becomes visible
                raise
            commit_guard.point("column_index.staged")
            os.replace(staging_dir, gdir / COLUMN_INDEX)
            _refresh_zarr(shadow)
    finally:
        bar.close()
    st.indptr_cache.clear()


def drop_column_index(shadow: AnnDataShadow, element: str = "X") -> None:
    """Remove the copy made by :func:`add_column_index` (nothing happens when there is none).

    In HDF5 the space is not given back to the file system (``h5repack`` does that); in zarr it is.
    """
    group = _matrix_group(shadow, element, "drop_column_index")
    st = state_of(shadow).storage
    if st.kind == "h5":
        if COLUMN_INDEX in group:
            del group[COLUMN_INDEX]
            group.file.flush()
    else:
        gdir = _zarr_dir(group)
        present = (gdir / COLUMN_INDEX).exists()
        _remove_dir(gdir / COLUMN_INDEX)
        present = _remove_stale(gdir) or present
        if present:
            _refresh_zarr(shadow)
    st.indptr_cache.clear()


def _zarr_dir(group: Any) -> Path:
    root = getattr(group.store, "root", None)
    if root is None:
        raise NotImplementedError(f"column indexes need a zarr store on the local file system, got {group.store!r}")
    return Path(root) / group.path


def _remove_stale(gdir: Path) -> bool:
    """Remove the staging directories that killed builds left in ``gdir``; whether there were any."""
    found = [p for p, _ in stale(gdir, f"{STAGING}-", ("",))]
    if (gdir / STAGING).is_dir():  # the fixed name earlier versions staged under
        found.append(gdir / STAGING)
    for p in found:
        _remove_dir(p)
    return bool(found)


def _remove_dir(p: Path) -> None:
    if p.exists():
        shutil.rmtree(p)


def _refresh_zarr(shadow: AnnDataShadow) -> None:
    """Rewrite the consolidated metadata (when the store has them) and reopen the shadow's connection."""
    st = state_of(shadow).storage
    root = Path(st.filename)
    if consolidated_kind(root) is not None:
        consolidate(root)
    st.open(st.mode)
