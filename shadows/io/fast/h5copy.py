"""Copying whole elements byte for byte, without decoding them, when the output can take them as they are.

An element that a write takes whole (no selection, no change, no conversion) is copied as stored: HDF5 to HDF5
by ``H5Ocopy`` (h5py's ``Group.copy``: raw chunks, no Python objects), zarr to zarr of the same format by copying
its files.  Only elements written by anndata >= 0.8 (whose root says ``encoding-type: anndata``) are copied this
way, so that the output carries the encodings current anndata writes; anything else is decoded and re-encoded.

The zarr copy goes past zarr where ``shadows.settings.fast_io`` allows it (fastio/copy-zarr in
``docs/benchmarks.md``); with fast I/O off, zarr elements are decoded and written again through anndata and zarr.
HDF5 objects are always copied by h5py's ``Group.copy``.  (An ``H5Ocopy`` called through ctypes, without the GIL,
was removed: on its own case, fastio/copy-h5ad, it gained 1.05x, short of the 1.2x an accelerator must earn.)
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import h5py
import zarr

from shadows.io.storage import attr
from shadows.settings import fast_io_enabled


class RawCopier:
    """Copies elements of one AnnData group (``src_root``) into groups of another file or store.

    Parameters
    ----------
    src_root
        The h5py/zarr group of the AnnData being written from.
    dst_root
        The h5py/zarr group being written to.
    """

    def __init__(self, src_root: Any, dst_root: Any):
        self.enabled = attr(src_root, "encoding-type") == "anndata" and _same_kind(src_root, dst_root)
        # zarr elements are copied as files, past zarr: a fast path like the others (HDF5's copies have h5py's)
        self.enabled = self.enabled and (fast_io_enabled() or isinstance(dst_root, h5py.Group))

    def copy(self, elem: Any, parent: Any, name: str) -> bool:
        """Copy ``elem`` as ``parent[name]``; ``False`` (nothing done) when it cannot be copied as stored."""
        if not self.enabled or attr(elem, "encoding-type") is None:
            return False
        if isinstance(parent, h5py.Group):
            parent.copy(elem, parent, name=name)
            return True
        src = _local_path(elem)
        dst = _local_path(parent)
        if src is None or dst is None:
            return False
        copy_files(src, dst / name)
        return True


def copy_files(src: Path, dst: Path) -> None:
    """Copy the directory of a zarr element as files (the fast path of :meth:`RawCopier.copy` for zarr)."""
    shutil.copytree(src, dst)


def _same_kind(a: Any, b: Any) -> bool:
    if isinstance(a, h5py.Group) or isinstance(b, h5py.Group):
        return isinstance(a, h5py.Group) and isinstance(b, h5py.Group)
    try:
        return a.metadata.zarr_format == b.metadata.zarr_format
    except AttributeError:
        return False


def _local_path(node: Any) -> Path | None:
    """The directory of a zarr node in a local store, or ``None`` for other stores."""
    store = getattr(node, "store", None)
    root = getattr(store, "root", None)
    if root is None or not isinstance(node, zarr.Group | zarr.Array):
        return None
    p = Path(root) / node.path if node.path else Path(root)
    return p if p.is_dir() else None
