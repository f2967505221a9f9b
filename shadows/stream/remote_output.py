"""Streaming a shadow into a new zarr store at a remote destination (a URL, an fsspec mapper, a zarr store).

The store is written into a local staging directory first (zarr writes one object per request: uploading them
afterwards, many at a time, is what makes a remote output fast), then uploaded in the order an object store allows
crash safety: chunks first, metadata deepest first, consolidated metadata last.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

import zarr

from shadows.io.remote import RemotePath, locate_output, zarr_store
from shadows.io.remote_store import copy_all, delete_all, exists_any, invalidate, is_meta, list_keys, sync


class RemoteOutput:
    """A new zarr store at a remote destination (what :class:`shadows.stream.sink.Output` is for local paths).

    The store is written into a local staging directory first (zarr writes one object per request: uploading
    them afterwards, many at a time, is what makes a remote output fast), then uploaded by :meth:`commit` in the
    order an object store allows crash safety: chunks first, metadata deepest first, consolidated metadata last.
    An existing store is refused unless ``overwrite=True``.
    """

    def __init__(self, dest: Any, kind: str, zarr_format: int | None = None, *, overwrite: bool = False, **kw: Any):
        target = locate_output(dest, kw.get("storage_options"))
        self.path = RemotePath(target)
        url = target.url
        if kind != "zarr":
            raise ValueError(
                f"Cannot write an h5ad file to '{url}': HDF5 files are written locally (write_h5ad to a local path, "
                "then upload it), or write a zarr store there (write_zarr)"
            )
        store = target.store if target.store is not None else zarr_store(target.fs, target.path, read_only=False)
        if getattr(store, "read_only", False):
            store = store.with_read_only(False)
        self.store = store
        self.existing = sync(exists_any(store, ["zarr.json", ".zgroup", ".zattrs", ".zmetadata"]))
        if self.existing and not overwrite:
            raise FileExistsError(f"'{url}' already holds a zarr store; pass overwrite=True to replace it")
        if zarr_format is None:
            import anndata

            zarr_format = int(getattr(anndata.settings, "zarr_write_format", 2))
        self._stage = tempfile.mkdtemp(prefix="shadows-remote-output-")
        self.root = zarr.open_group(self._stage, mode="w", zarr_format=zarr_format)

    def __enter__(self) -> RemoteOutput:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:

        shutil.rmtree(self._stage, ignore_errors=True)

    def commit(self) -> RemotePath:
        """Upload the staged store: chunks, then metadata deepest first, the consolidated metadata last."""
        zarr.consolidate_metadata(self._stage)
        local = zarr.storage.LocalStore(self._stage, read_only=True)
        keys = sync(list_keys(local, ""))
        consolidated = {".zmetadata", "zarr.json"}  # the root's: last of all
        data = [k for k in keys if not is_meta(k) and k != ".zmetadata"]
        meta = sorted((k for k in keys if is_meta(k) and k not in consolidated), key=lambda k: -k.count("/"))
        last = [k for k in keys if k in consolidated]
        if self.existing:  # overwrite=True: the old store's objects go first (the new ones cannot mix with them)
            sync(delete_all(self.store, sync(list_keys(self.store, ""))))
        for batch in (data, meta):
            sync(copy_all(local, self.store, batch))
        for k in sorted(last, key=lambda k: k == ".zmetadata"):
            sync(copy_all(local, self.store, [k]))
        invalidate(self.store)
        return self.path


def write_subset_remote(
    shadow: Any, dest: Any, file_format: str, zarr_format: int | None, overwrite: bool, opts: Any, progress: bool | None
) -> RemotePath:
    """:func:`shadows.stream.shadow.write_subset` into a remote zarr store (after its checks of names and options)."""
    from shadows.stream.anndata_writer import write_anndata

    if opts.tmpdir is None or not os.path.isdir(opts.tmpdir):
        opts.tmpdir = tempfile.gettempdir()
    out = RemoteOutput(dest, "h5" if file_format == "h5ad" else "zarr", zarr_format, overwrite=overwrite)
    with out:
        write_anndata(shadow, out.root, options=opts, progress=progress)
        return out.commit()
