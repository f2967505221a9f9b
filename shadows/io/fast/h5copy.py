"""Copying whole elements byte for byte, without decoding them, when the output can take them as they are.

An element that a write takes whole (no selection, no change, no conversion) is copied as stored: HDF5 to HDF5
by ``H5Ocopy`` (h5py's ``Group.copy``: raw chunks, no Python objects), zarr to zarr of the same format by copying
its files.  Only elements written by anndata >= 0.8 (whose root says ``encoding-type: anndata``) are copied this
way, so that the output carries the encodings current anndata writes; anything else is decoded and re-encoded.

Both go past the libraries where ``shadows.settings.fast_io`` allows it: ``H5Ocopy`` is called through ctypes
(without the GIL) and zarr elements are copied as files.  With fast I/O off, HDF5 objects are copied by h5py
(``Group.copy``) and zarr elements are decoded and written again through anndata and zarr.
"""

from __future__ import annotations

import functools
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
            if not _h5ocopy_without_gil(elem, parent, name):
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


def _h5ocopy_without_gil(elem: h5py.HLObject, parent: h5py.Group, name: str) -> bool:
    """``H5Ocopy`` called through ctypes: under h5py's lock (HDF5 is not thread-safe) but without the GIL.

    Why: h5py holds the GIL for the whole copy (tens of ms for 100,000 strings), so a copy made beside a long
    conversion would stop the conversion's threads; ctypes releases the GIL for the call.  ``False`` (nothing
    done) when fast I/O is off, the HDF5 library h5py uses cannot be found, the name is not ASCII (h5py then writes
    a UTF-8 link name), or the copy fails (h5py then makes it, and raises what it raises).
    """
    lib = _hdf5() if fast_io_enabled() else None
    if lib is None or not name.isascii():
        return False
    from h5py._objects import phil

    with phil:
        if name in parent:
            return False
        return lib.H5Ocopy(elem.id.id, b".", parent.id.id, name.encode(), 0, 0) >= 0


@functools.cache
def _hdf5() -> Any:
    """The HDF5 library h5py is linked with (found among the process's mapped files), through ctypes, or ``None``.

    (``hid_t`` is a 64-bit integer in every HDF5 that h5py 3 supports, 1.10.4 and later; ``H5P_DEFAULT`` is 0.)
    ``None`` on a platform without ``/proc/self/maps`` (macOS, Windows) or a Python without ctypes.
    """
    import re

    try:
        import ctypes

        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if re.search(r"/libhdf5[-.][^/]*\.so", line)}
        paths = [p for p in paths if "_hl" not in Path(p).name]
        if len(paths) != 1:
            return None
        lib = ctypes.CDLL(paths[0])
        lib.H5Ocopy.argtypes = [ctypes.c_int64, ctypes.c_char_p, ctypes.c_int64, ctypes.c_char_p]
        lib.H5Ocopy.argtypes += [ctypes.c_int64, ctypes.c_int64]
        lib.H5Ocopy.restype = ctypes.c_int
        return lib
    except (ImportError, OSError, AttributeError):
        return None


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
