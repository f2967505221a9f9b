"""``repack``: rewrite an HDF5 file without the space its replaced and deleted elements still occupy.

HDF5 never gives back the space of a deleted or overwritten dataset (nor of a new element whose writer was killed
before linking it): the file only grows.  Repacking copies every element, streamed by the HDF5 library itself
(``H5Ocopy`` through h5py), into a new file beside the old one and then swaps it in with one atomic ``os.replace``;
readers that still hold the old file keep reading it undisturbed, and a crash leaves the original untouched.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import h5py

from .storage import StorageError, split_path


def repack(path: str | os.PathLike) -> Path:
    """Rewrite the HDF5 file ``path`` (``.h5ad``, ``.h5mu``) compactly, in place.

    Parameters
    ----------
    path
        The file.  It is opened read-only for the copy, which keeps writers out (HDF5 file locking) until the
        repacked copy has replaced it.

    Returns
    -------
    The path of the repacked file.

    Notes
    -----
    The copy needs as much free space beside the file as the live data takes.  A MuData file's 512-byte user block
    (``MuData (format-version=...``) is carried over.  zarr stores need no repacking: deleting an element there
    deletes its files.
    """
    path, inner = split_path(path)
    if inner:
        raise ValueError(f"repack() rewrites a whole file; got a path inside one: '{path}/{inner}'")
    if not h5py.is_hdf5(path):
        raise ValueError(f"'{path}' is not an HDF5 file; only HDF5 files (h5ad, h5mu) need repacking")
    try:
        src = h5py.File(path, "r")
    except OSError as e:
        if "lock" in str(e).lower():
            raise StorageError(f"Cannot repack '{path}': it is opened by another process for writing ({e})") from e
        raise
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".repack", dir=path.parent)
    os.close(fd)
    try:
        with src:
            userblock = src.userblock_size
            with h5py.File(tmp, "w", userblock_size=userblock) as dst:
                _copy_attrs(src, dst)
                for name in src:
                    # expand_refs: object references (anndata 0.7 categoricals) point into the copy, not the old file
                    src.copy(src[name], dst, name=name, expand_refs=True)
            if userblock:
                with open(path, "rb") as fin, open(tmp, "r+b") as fout:
                    fout.write(fin.read(userblock))
            os.replace(tmp, path)  # while src is still open (and locked): no writer slips in between
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _copy_attrs(src: h5py.Group, dst: h5py.Group) -> None:
    for name in src.attrs:
        aid = src.attrs.get_id(name)
        dst.attrs.create(name, src.attrs[name], dtype=aid.dtype)
