"""``repack``: rewrite an HDF5 file without the space its replaced and deleted elements still occupy.

HDF5 never gives back the space of a deleted or overwritten dataset (nor of a new element whose writer was killed
before linking it): the file only grows.  Repacking copies every element, streamed by the HDF5 library itself
(``H5Ocopy`` through h5py), into a new file beside the old one and then swaps it in with one atomic ``os.replace``;
readers that still hold the old file keep reading it undisturbed, and a crash leaves the original untouched.
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py

from shadows.deprecation import renamed_arguments
from shadows.io import commit_guard
from shadows.io.storage import StorageError, split_path
from shadows.stream.sink import stale, temp_path


@renamed_arguments(path="source")
def repack(source: str | os.PathLike) -> Path:
    """Rewrite the HDF5 file ``source`` (``.h5ad``, ``.h5mu``) compactly, in place.

    Parameters
    ----------
    source
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

    The repacked file keeps the permission bits of the original (and its owner and group, where this process may
    set them).  The copy is written under ``.<name>.shadows-<host>-<pid>-<token>.repack`` beside the file; it is
    removed when the repack fails or is interrupted, and one left by a killed repack (its process gone) is removed
    by the next repack of the same file.
    """
    path, inner = split_path(source)
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
    try:
        for old, _ in stale(path.parent, f".{path.name}.", (".repack",)):
            old.unlink(missing_ok=True)  # a killed repack's copy: its process is gone
        st = os.stat(path)
        tmp = temp_path(path, ".repack")
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))  # no one reads it before it is whole
    except BaseException:
        src.close()
        raise
    try:
        with src:
            userblock = src.userblock_size
            with h5py.File(tmp, "w", userblock_size=userblock) as dst:
                _copy_attrs(src, dst)
                for name in src:
                    commit_guard.point("repack.element")
                    # expand_refs: object references (anndata 0.7 categoricals) point into the copy, not the old file
                    src.copy(src[name], dst, name=name, expand_refs=True)
            if userblock:
                with open(path, "rb") as fin, open(tmp, "r+b") as fout:
                    fout.write(fin.read(userblock))
            _take_owner_and_mode(tmp, st)  # now, not earlier: a read-only mode would keep the copy from being written
            commit_guard.point("repack.copied")
            os.replace(tmp, path)  # while src is still open (and locked): no writer slips in between
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _take_owner_and_mode(tmp: Path, st: os.stat_result) -> None:
    """Give ``tmp`` the permission bits of the original file (``st``) and, where allowed, its owner and group."""
    try:
        os.chown(tmp, st.st_uid, st.st_gid)  # before chmod: a change of owner may clear setuid/setgid bits
    except (PermissionError, AttributeError):
        try:
            os.chown(tmp, -1, st.st_gid)  # the group at least, when this user belongs to it
        except (PermissionError, AttributeError):
            pass
    os.chmod(tmp, st.st_mode & 0o7777)


def _copy_attrs(src: h5py.Group, dst: h5py.Group) -> None:
    for name in src.attrs:
        aid = src.attrs.get_id(name)
        dst.attrs.create(name, src.attrs[name], dtype=aid.dtype)
