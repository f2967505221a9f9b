"""Streaming a :class:`~shadows.MuDataShadow` (or a view of one) into a new ``.h5mu`` file or zarr store.

mudata's own writers need the whole MuData in memory.  Here every modality is streamed by
:func:`shadows.stream.anndata_writer.write_anndata` (matrices block by block, elements taken whole copied as stored), and
only the MuData's own elements (global ``obs``/``var``, ``obsm``... ``uns``, ``obsmap``/``varmap``), which scale with
the number of cells and features, not with the matrices, are built in memory.  They are built exactly as
:meth:`MuDataShadow.to_memory` builds them (a :class:`mudata.MuData` over modalities that hold only their
``obs``/``var``), then written with ``anndata.io.write_elem`` in the order and with the attributes mudata's
``write_h5mu``/``write_zarr`` use, so that ``mudata.read_h5mu`` reads the result as it reads mudata's own files.
"""

from __future__ import annotations

import os
from importlib.metadata import version as metadata_version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anndata
import mudata
from anndata.io import write_elem

from shadows.core.state import state_of
from shadows.stream.anndata_writer import write_anndata
from shadows.stream.matrix import WriteOptions
from shadows.stream.shadow import check_output_names
from shadows.stream.sink import Output, refuse_own_file

if TYPE_CHECKING:
    from shadows.mudata.shadow import MuDataShadow

_GLOBAL_MAPPINGS = ("obsm", "varm", "obsp", "varp")  # the MuData's own aligned mappings


def write_mudata(
    shadow: MuDataShadow,
    path: str | os.PathLike,
    file_format: str = "h5mu",
    *,
    progress: bool | None = None,
    compression: str | None = None,
    compression_opts: Any = None,
    zarr_format: int | None = None,
    chunk_size: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``shadow`` (pending changes included) to a new file without holding any modality's matrices.

    Parameters
    ----------
    shadow
        The MuData shadow or view to write.
    path
        The new ``.h5mu`` file or zarr store.  It is written under a staging name and moved into place at the end,
        so a failure never leaves a half-written destination.  An existing destination is refused
        (``FileExistsError``; ``IsADirectoryError`` for a folder given as an ``.h5mu``) unless ``overwrite=True``,
        and a folder that is not a zarr store is never replaced.
    file_format
        ``"h5mu"`` or ``"zarr"``.
    progress
        Show a progress bar per modality (``None``: follow ``shadows.settings``).
    compression, compression_opts
        h5py compression of the arrays written (as in ``mudata.write_h5mu(..., compression=...)``).
    zarr_format
        2 or 3 (default ``anndata.settings.zarr_write_format``).
    chunk_size
        Major positions per block of a matrix (default: sized by ``shadows.settings.memory_budget``).
    overwrite
        Replace an existing file (or zarr store) at ``path``.

    Returns
    -------
    The path written.
    """
    if file_format not in ("h5mu", "zarr"):
        raise ValueError(f"file_format must be 'h5mu' or 'zarr', got {file_format!r}")
    dst = Path(os.fspath(path))
    refuse_own_file(shadow._storage, dst)
    for name in shadow._order:  # every name checked before the output exists: a refused one leaves nothing behind
        check_output_names(shadow._modality(name))
    skeleton = _skeleton(shadow)
    opts = WriteOptions(tmpdir=dst.parent).override(chunk_size, compression, compression_opts)
    kwargs = opts.dataset_kwargs
    version = metadata_version("mudata")  # not mudata.__version__: deprecated in its newer releases
    if file_format == "h5mu":
        fmt_version = getattr(mudata, "__mudataversion__", "0.1.0")
        header = f"MuData (format-version={fmt_version};creator=shadows;creator-version={_own_version()})".encode()
        out = Output(dst, "h5", header=header, overwrite=overwrite)
    else:
        out = Output(dst, "zarr", zarr_format, overwrite=overwrite)
    with out:
        root = out.root
        for name in ("obs", "var"):
            write_elem(root, name, _global_table(skeleton, name), dataset_kwargs=kwargs)
        for name in (*_GLOBAL_MAPPINGS, "uns", "obsmap", "varmap"):
            write_elem(root, name, dict(getattr(skeleton, name)), dataset_kwargs=kwargs)
        root.attrs["axis"] = int(skeleton.axis)
        mod = root.create_group("mod")
        for name in shadow._order:
            group = mod.create_group(name)
            write_anndata(shadow._modality(name), group, options=opts, progress=progress)
            group.attrs["encoder"] = "shadows"
            group.attrs["encoder-version"] = _own_version()
        mod.attrs["mod-order"] = list(shadow._order)
        root.attrs["encoding-type"] = "MuData"
        root.attrs["encoding-version"] = getattr(mudata, "__mudataversion__", "0.1.0")
        root.attrs["encoder"] = "shadows"
        root.attrs["encoder-version"] = f"{_own_version()} (mudata {version})"
        return out.commit()


def _skeleton(shadow: MuDataShadow) -> mudata.MuData:
    """The MuData's own elements, as :meth:`MuDataShadow.to_memory` builds them, over matrix-free modalities."""
    mods = {}
    for name in shadow._order:
        twin = state_of(shadow._modality(name)).twin(numpy=True)  # pandas tables whatever the shadow's table backend
        mods[name] = anndata.AnnData(obs=twin.obs.copy(), var=twin.var.copy())
    return shadow._assemble(mods)


def _global_table(m: mudata.MuData, name: str):
    """The global ``obs``/``var`` as mudata writes them: columns pulled from modalities on read left out again."""
    try:  # mudata 0.3's switch (None: pull on read, shrink on write); mudata 0.4 has neither
        from mudata._core.config import OPTIONS

        pull = OPTIONS.get("pull_on_update", False)
    except ImportError:
        pull = False
    shrink = getattr(m, "_shrink_attr", None)
    table = shrink(name, inplace=False) if (pull is None and shrink is not None) else getattr(m, name)
    return m.strings_to_categoricals(table.copy())


def _own_version() -> str:
    # the installed distribution's version, not ``shadows.__version__``: this layer does not import the package top
    return metadata_version("shadows")
