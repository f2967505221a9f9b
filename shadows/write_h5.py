"""Carrying out a write plan in an HDF5 file (``.h5ad``, ``.h5mu``) so that a killed writer leaves it readable.

Every new element is written first into an *anonymous* group (``create_group(None)``: an object in the file that
no path reaches, so no reader can see it and a crash only leaks its space), then the file is flushed, then the
complete element is hard-linked into place (a metadata-only step) and the file flushed again.  A replaced element
is unlinked in the same flush that links its successor.  For obs/var, a new column is linked before
``column-order`` names it, and a removed column leaves ``column-order`` before it is unlinked: anndata reads only
the columns ``column-order`` lists, so the dataframe stays consistent at every flush.
"""

from __future__ import annotations

import io
import posixpath
from collections.abc import Callable
from types import MappingProxyType
from typing import Any

import h5py
import numpy as np
import pandas as pd
from anndata.io import write_elem

from .storage import Storage
from .write import FrameEdit, Op, Plan

_STAGED = "v"  # the name of the staged element inside its anonymous group


def apply_h5(storage: Storage, plan: Plan, done: Callable[[Any], None]) -> None:
    """Write ``plan`` into the open HDF5 file of ``storage``; ``done(op)`` is called after each committed step."""
    f = storage.file
    root = storage.root
    staged: dict[tuple, h5py.Group] = {}
    try:
        # 1. everything new is written out of sight first: an encoding error leaves the file untouched
        for op in plan.ops:
            if not op.is_delete:
                staged[("op", id(op))] = _stage(f, op.value, f"{storage.describe()}/{op.path}")
        for fe in plan.frames:
            for col, values in fe.puts.items():
                staged[("col", id(fe), col)] = _stage(f, values, f"{storage.describe()}/{fe.path}/{col}")
            if fe.index is not None:
                staged[("index", id(fe))] = _stage(f, fe.index, f"{storage.describe()}/{fe.path} index")
        f.flush()
        # 2. link into place, one flushed metadata step at a time
        for op in plan.ops:
            _commit(f, root, op, staged.get(("op", id(op))))
            done(op)
        for fe in plan.frames:
            _commit_frame(f, root, fe, staged)
            done(fe)
    finally:
        for anon in staged.values():  # whatever was not linked is freed when its anonymous group closes
            if anon.id.valid and _STAGED in anon:
                del anon[_STAGED]


_writer: Callable[[h5py.Group, str, Any], None] | None = None


def _write_into_anonymous(group: h5py.Group, key: str, value: Any) -> None:
    """``anndata.io.write_elem`` into an anonymous group (anndata < 0.13 needs a little help, see below)."""
    global _writer
    if _writer is None:
        _writer = write_elem if _public_writer_takes_anonymous() else _legacy_writer()
    _writer(group, key, value)


def _public_writer_takes_anonymous() -> bool:
    try:
        with h5py.File(io.BytesIO(), "w") as f:
            write_elem(f.create_group(None), "probe", {"a": np.zeros(1)})
        return True
    except TypeError:
        return False


def _legacy_writer() -> Callable[[h5py.Group, str, Any], None]:
    # anndata 0.12 builds absolute paths from the parent's name, which an anonymous group lacks (None).  This writer
    # does what anndata's Writer.write_elem does for a relative key (remove an old element, dispatch on the value's
    # type through the same registry) without that path step; nested elements come back through it.
    from anndata._io.specs.registry import _REGISTRY, Writer

    class AnonymousParentWriter(Writer):
        def write_elem(self, store, k, elem, *, dataset_kwargs=MappingProxyType({}), modifiers=frozenset()):
            if k in store:
                del store[k]
            func = self.find_write_func(type(store), elem, modifiers)
            return func(store, k, elem, dataset_kwargs=dataset_kwargs)

    writer = AnonymousParentWriter(_REGISTRY)

    def write(group: h5py.Group, key: str, value: Any) -> None:
        writer.write_elem(group, key, value)

    return write


def _stage(f: h5py.File, value: Any, where: str) -> h5py.Group:
    anon = f.create_group(None)
    try:
        _write_into_anonymous(anon, _STAGED, value)
    except Exception as e:
        raise type(e)(f"Cannot write '{where}' ({type(value).__name__}): {e}") from e
    _check_complete(anon[_STAGED], value, where)
    return anon


def _check_complete(elem: Any, value: Any, where: str) -> None:
    """A staged element must carry anndata's encoding and the value's shape before it may be linked."""
    if "encoding-type" not in elem.attrs:
        raise OSError(f"Staged copy of '{where}' has no encoding-type; not linking it")
    shape = getattr(value, "shape", None)
    if not isinstance(shape, tuple) or isinstance(value, pd.DataFrame):
        return
    if isinstance(elem, h5py.Dataset):
        stored = elem.shape
    elif "shape" in elem.attrs:  # sparse matrices
        stored = tuple(int(n) for n in elem.attrs["shape"])
    else:
        return
    if tuple(stored) != tuple(shape):
        raise OSError(f"Staged copy of '{where}' has shape {tuple(stored)}, expected {shape}; not linking it")


def _link(parent: h5py.Group, name: str, anon: h5py.Group) -> None:
    parent[name] = anon[_STAGED]  # a hard link to the complete, flushed element
    del anon[_STAGED]  # the anonymous group is freed when it closes; the element lives on through the new link


def _commit(f: h5py.File, root: h5py.Group, op: Op, anon: h5py.Group | None) -> None:
    parent_path, name = posixpath.split(op.path)
    parent = root[parent_path] if parent_path else root
    if name in parent:
        del parent[name]  # unlinked in the same flush that links the new one
    if anon is not None:
        _link(parent, name, anon)
    for p in op.also_remove:
        if p in root:
            del root[p]
    f.flush()


def _commit_frame(f: h5py.File, root: h5py.Group, fe: FrameEdit, staged: dict[tuple, h5py.Group]) -> None:
    g = root[fe.path]
    if fe.removed:
        g.attrs["column-order"] = [c for c in fe.old_order if c not in fe.removed]
        f.flush()
    for col in fe.removed:
        del g[col]
    for col in fe.changed:
        del g[col]
        _link(g, col, staged[("col", id(fe), col)])
    if fe.index is not None:
        del g[fe.index_key]
        _link(g, fe.index_key, staged[("index", id(fe))])
    f.flush()
    for col in fe.puts:
        if col not in fe.changed:
            _link(g, col, staged[("col", id(fe), col)])
    f.flush()
    g.attrs["column-order"] = list(fe.new_order)  # last: only now do readers see the new columns
    f.flush()
