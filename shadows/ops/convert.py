"""``shadows.convert``: rewrite a file with ``X`` and layers in another matrix format, out of core."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from shadows.deprecation import renamed_arguments
from shadows.stream.matrix import FORMATS, WriteOptions


def open_source(source: Any) -> tuple[Any, bool]:
    """An :class:`~shadows.AnnDataShadow` for ``source`` (a path or a shadow), and whether it was opened here."""
    from shadows.core.anndata import AnnDataShadow

    if isinstance(source, AnnDataShadow):
        return source, False
    return AnnDataShadow(source), True


def output_format(dst: str | os.PathLike, file_format: str | None) -> str:
    """``"h5ad"`` or ``"zarr"`` for a destination: given, or from its suffix (``.zarr`` is zarr, else h5ad)."""
    if file_format is not None:
        if file_format not in ("h5ad", "zarr"):
            raise ValueError(f"file_format must be 'h5ad' or 'zarr', got {file_format!r}")
        return file_format
    return "zarr" if Path(os.fspath(dst)).suffix == ".zarr" else "h5ad"


# layers=True/False (the previous release) meant X and every layer / X alone
@renamed_arguments(src="source", layers=("layer", lambda convert_layers: None if convert_layers else "X"))
def convert(
    source: Any,
    dst: str | os.PathLike,
    matrix_format: str = "csc",
    *,
    layer: str | None = None,
    chunk_size: int | None = None,
    progress: bool | None = None,
    file_format: str | None = None,
    compression: str | None = None,
    compression_opts: Any = None,
    overwrite: bool = False,
) -> Path:
    """Write a copy of ``source`` whose ``X`` (and layers) are stored as ``matrix_format``, in bounded memory.

    A change of orientation (CSR <-> CSC, CSC -> dense, dense -> CSC) reads the matrix once in blocks, regroups
    each block by the other axis into a scratch file beside ``dst``, then writes the output in order from
    bucketed reads of that file (see :mod:`shadows.stream.transpose`); CSR <-> dense goes block by block directly.
    Memory stays within ``shadows.settings.memory_budget`` (plus O(rows + columns) for offsets).  Every other
    element is copied as it is (matrices streamed, small elements through anndata).

    Parameters
    ----------
    source
        A file or store path, or an :class:`~shadows.AnnDataShadow` (a view converts the selected part).
    dst
        The new file (``.h5ad``) or store (``.zarr``).  An existing one is refused (``FileExistsError``) unless
        ``overwrite=True``; a directory that is not a zarr store is never replaced (see
        :func:`shadows.stream.shadow.write_subset`).
    matrix_format
        ``"csr"``, ``"csc"`` or ``"dense"``.
    layer
        Which matrix to convert: ``None`` (default) ``X`` and every layer, ``"X"`` X alone, the name of a layer
        that layer alone; the others are copied as they are stored.  (``layers=True``/``False``, the argument
        of the previous release, is taken with a ``FutureWarning`` as ``None``/``"X"``.)
    chunk_size
        Major positions per block (default: sized by the memory budget).
    progress
        Show a progress bar (``None``: follow ``shadows.settings``).
    file_format
        ``"h5ad"`` or ``"zarr"`` (default: from the suffix of ``dst``).
    compression, compression_opts
        h5py compression of the arrays written.
    overwrite
        Replace an existing ``dst`` file or zarr store.

    Returns
    -------
    The path written.

    Examples
    --------
    >>> shadows.convert("atlas_csr.h5ad", "atlas_csc.h5ad", matrix_format="csc")  # doctest: +SKIP
    """
    if matrix_format not in FORMATS:
        raise ValueError(f"matrix_format must be one of {list(FORMATS)}, got {matrix_format!r}")
    fmt = output_format(dst, file_format)
    check_output(dst, fmt, overwrite)
    shadow, opened = open_source(source)
    try:
        targets = _targets(shadow, layer)
        opts = WriteOptions(formats={t: matrix_format for t in targets})
        return shadow_write(
            shadow, dst, fmt, opts, chunk_size, progress, compression, compression_opts, overwrite=overwrite
        )
    finally:
        if opened:
            shadow.close()


def _targets(shadow: Any, layer: str | None) -> list[str]:
    """The elements a conversion rewrites: X and every layer (``None``), X alone (``"X"``), or one layer."""
    if layer is None:
        return ["X"] + [f"layers/{k}" for k in shadow.layers.keys()]
    if layer == "X":
        return ["X"]
    if layer not in shadow.layers.keys():
        raise KeyError(f"layer {layer!r} is not in '{shadow.filename}': layers are {list(shadow.layers.keys())}")
    return [f"layers/{layer}"]


def check_output(dst: str | os.PathLike, fmt: str, overwrite: bool) -> None:
    """Refuse an existing destination before any work is done (the output checks it again when it is created)."""
    from shadows.stream.sink import check_destination

    check_destination(Path(os.fspath(dst)), "h5" if fmt == "h5ad" else "zarr", overwrite)


def shadow_write(
    shadow, dst, fmt, opts, chunk_size, progress, compression=None, compression_opts=None, *, overwrite=False
) -> Path:
    """Stream ``shadow`` into a new file ``dst`` with the write options ``opts``; returns the path written."""
    from shadows.stream.shadow import write_subset

    return write_subset(
        shadow,
        dst,
        fmt,
        chunk_size=chunk_size,
        progress=progress,
        compression=compression,
        compression_opts=compression_opts,
        options=opts,
        overwrite=overwrite,
    )
