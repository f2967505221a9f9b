"""Carrying out a write plan in an HDF5 file (``.h5ad``, ``.h5mu``) so that a failed or killed writer leaves it readable.

Every new element is written first into an *anonymous* group (``create_group(None)``: an object in the file that
no path reaches, so no reader can see it and a crash only leaks its space), then the file is flushed.  Staging may be
interrupted (Ctrl-C, an encoding error): nothing is linked yet, the file is unchanged.

Then comes the commit, metadata-only and shielded from Ctrl-C (:func:`shadows.io.commit_guard.shielded`): each element
in turn is made final in one flush.  A replaced or deleted element is first hard-linked into an anonymous *holder*
group, so that it stays reachable once unlinked; the new element is hard-linked into place.  Each of these steps is
recorded in an undo log: an exception at any step (a :func:`shadows.io.commit_guard.point`) rolls the element back to
its old state (relinked from the holder) and flushes before the exception propagates, so that every element is old
or new, and the shadow's pending entries match the file.  A SIGKILL cannot be caught: then the file keeps what its
last flush put down, which is likewise old or new for every element.

For obs/var, a removed column leaves ``column-order`` (one flush) before it is unlinked, changed columns and the
index are swapped in one flush, new columns are linked (a flush) before ``column-order`` names them (the last
flush): anndata reads only the columns ``column-order`` lists, so the dataframe is consistent at every flush.
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

from shadows.io import commit_guard
from shadows.io.storage import Storage
from shadows.writeback.steps import FrameEdit, Op, Plan

_STAGED = "v"  # the name of the staged element inside its anonymous group


# The commit points (see shadows.io.commit_guard), in the order a commit passes them; tests pause, kill or raise there.
STAGED = "h5 1: everything staged and flushed, nothing linked"
HELD = "h5 2: old element hard-linked into the holder"
UNLINKED = "h5 3: old element unlinked"
LINKED = "h5 4: new element linked"
LEGACY_REMOVED = "h5 5: legacy copy unlinked"
COMMITTED = "h5 6: element flushed"
ORDER_SHRUNK = "h5 7: removed columns out of column-order, flushed"
COLUMN_SWAPPED = "h5 8: a column or the index swapped or removed"
COLUMNS_LINKED = "h5 9: new columns linked, flushed"
ORDER_SET = "h5 10: column-order updated, flushed"


def apply_h5(storage: Storage, plan: Plan, done: Callable[[Any], None]) -> None:
    """Write ``plan`` into the open HDF5 file of ``storage``; ``done(step)`` is called after each committed step.

    Each step (an :class:`~shadows.writeback.plan.Op`, a :class:`~shadows.writeback.plan.FrameEdit`) is committed whole or, when an
    exception interrupts it, rolled back before the exception propagates; steps committed before it stay.
    """
    f = storage.file
    root = storage.root
    staged: dict[tuple, h5py.Group] = {}
    try:
        # 1. everything new is written out of sight first: an error or Ctrl-C here leaves the file unchanged
        for op in plan.ops:
            if not op.is_delete:
                staged[("op", id(op))] = _stage(f, op.value, f"{storage.describe()}/{op.path}")
        for fe in plan.frames:
            for col, values in fe.puts.items():
                staged[("col", id(fe), col)] = _stage(f, values, f"{storage.describe()}/{fe.path}/{col}")
            if fe.index is not None:
                staged[("index", id(fe))] = _stage(f, fe.index, f"{storage.describe()}/{fe.path} index")
        f.flush()
        # 2. link into place, metadata only: Ctrl-C waits until every step is committed
        with commit_guard.shielded():
            commit_guard.point(STAGED)
            for op in plan.ops:
                _atomically(f, lambda log, op=op: _commit(root, op, staged.get(("op", id(op))), log))
                done(op)
            for fe in plan.frames:
                _atomically(f, lambda log, fe=fe: _commit_frame(f, root, fe, staged, log))
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


# --- committing ---------------------------------------------------------------------------------------------------
class UndoLog:
    """The metadata steps of one commit, each undoable, so that a failure part-way can restore the old state.

    Replaced and deleted elements are hard-linked into an anonymous *holder* group before they are unlinked: they
    stay in the file (unreachable by readers) until the commit is final, and can be linked back meanwhile.
    """

    def __init__(self, f: h5py.File):
        self._file = f
        self._holder: h5py.Group | None = None
        self._undo: list[Callable[[], None]] = []

    @property
    def holder(self) -> h5py.Group:
        """The anonymous group keeping replaced and deleted elements until the commit is final (made on first use)."""
        if self._holder is None:  # created on first use: most steps replace nothing
            self._holder = self._file.create_group(None)
        return self._holder

    def unlink(self, parent: h5py.Group, name: str) -> None:
        """Unlink ``parent[name]``, keeping the element reachable from the holder."""
        key = str(len(self.holder))
        self.holder[key] = parent[name]
        commit_guard.point(HELD)
        del parent[name]
        self._undo.append(lambda: parent.__setitem__(name, self.holder[key]))
        commit_guard.point(UNLINKED)

    def link(self, parent: h5py.Group, name: str, anon: h5py.Group) -> None:
        """Hard-link the staged element of ``anon`` at ``parent[name]`` (it stays in ``anon`` until released)."""
        parent[name] = anon[_STAGED]
        self._undo.append(lambda: parent.__delitem__(name))
        commit_guard.point(LINKED)

    def set_attr(self, obj: h5py.HLObject, name: str, value: Any) -> None:
        """Set ``obj.attrs[name]``; undone by writing the old value back with its old type (or removing it)."""
        if name in obj.attrs:
            dtype, old = obj.attrs.get_id(name).dtype, obj.attrs[name]
            self._undo.append(lambda: obj.attrs.create(name, old, dtype=dtype))
            obj.attrs[name] = value
        else:
            obj.attrs[name] = value
            self._undo.append(lambda: obj.attrs.__delitem__(name))

    def rollback(self) -> None:
        """Undo every recorded step, last first."""
        while self._undo:
            self._undo.pop()()

    def release(self) -> None:
        """The commit is final: drop the holder's links (old elements are freed once nothing refers to them)."""
        self._undo.clear()
        if self._holder is not None:
            for key in list(self._holder):
                del self._holder[key]


def _atomically(f: h5py.File, step: Callable[[UndoLog], None]) -> None:
    """Run one commit step; on any exception (Ctrl-C included) undo what it did, flush, and re-raise."""
    log = UndoLog(f)
    try:
        step(log)
        f.flush()
        commit_guard.point(COMMITTED)
    except BaseException:
        log.rollback()
        f.flush()
        raise
    log.release()


def _link(parent: h5py.Group, name: str, anon: h5py.Group, log: UndoLog) -> None:
    if name in parent:  # an invisible leftover of a killed writer, or an element being replaced
        log.unlink(parent, name)
    log.link(parent, name, anon)


def _commit(root: h5py.Group, op: Op, anon: h5py.Group | None, log: UndoLog) -> None:
    parent_path, name = posixpath.split(op.path)
    parent = root[parent_path] if parent_path else root
    if name in parent:
        log.unlink(parent, name)  # unlinked in the same flush that links the new one
    if anon is not None:
        log.link(parent, name, anon)
    for p in op.also_remove:
        legacy_parent, legacy_name = posixpath.split(p)
        if p in root:
            log.unlink(root[legacy_parent] if legacy_parent else root, legacy_name)
            commit_guard.point(LEGACY_REMOVED)


def _commit_frame(f: h5py.File, root: h5py.Group, fe: FrameEdit, staged: dict[tuple, h5py.Group], log: UndoLog) -> None:
    g = root[fe.path]
    if any(c in fe.removed for c in fe.old_order):
        # a removed column leaves column-order first: a kill after this flush leaves it an invisible leftover
        log.set_attr(g, "column-order", [c for c in fe.old_order if c not in fe.removed])
        f.flush()
        commit_guard.point(ORDER_SHRUNK)
    for col in fe.removed:
        if col in g:
            log.unlink(g, col)
            commit_guard.point(COLUMN_SWAPPED)
    for col in fe.changed:  # swapped in one flush: a changed column is never missing from the frame
        _link(g, col, staged[("col", id(fe), col)], log)
        commit_guard.point(COLUMN_SWAPPED)
    if fe.index is not None:
        _link(g, fe.index_key, staged[("index", id(fe))], log)
        commit_guard.point(COLUMN_SWAPPED)
    f.flush()
    for col in fe.puts:
        if col not in fe.changed:
            _link(g, col, staged[("col", id(fe), col)], log)
    f.flush()
    commit_guard.point(COLUMNS_LINKED)
    log.set_attr(g, "column-order", list(fe.new_order))  # last: only now do readers see the new columns
    f.flush()
    commit_guard.point(ORDER_SET)
