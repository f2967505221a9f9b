"""Carrying out a write plan in a zarr store (v2 or v3) so that a killed writer leaves it readable.

New elements are written with anndata into a staging store *beside* the store (never inside it: a stray group
inside would be read by ``anndata.read_zarr`` as an unknown element), then renamed into place, one atomic directory
rename each.  Most readers (anndata's included) go by the consolidated metadata, so it is kept valid at every
moment: whatever will be removed or replaced is first dropped from it (an atomic rewrite of one small JSON file),
then the directories move, and only at the end is the metadata consolidated again with
:func:`zarr.consolidate_metadata` (which also writes atomically).  A reader that lists directories instead sees a
new element only once complete, and obs/var columns only while ``column-order`` names them.

One writer at a time: the store directory is locked (``flock``) for the duration of a write.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import zarr
from anndata.io import write_elem

from .storage import Storage, StorageError
from .write import FrameEdit, Op, Plan


def apply_zarr(storage: Storage, plan: Plan, done: Callable[[Any], None]) -> None:
    """Write ``plan`` into the zarr store of ``storage``; ``done(step)`` is called after each committed step."""
    store = Path(storage.filename)
    base = storage.inner
    with writer_lock(store):
        _remove_stale_staging(store)
        stage_dir = Path(tempfile.mkdtemp(prefix=_staging_prefix(store), dir=store.parent))
        touched = False
        try:
            staged = _stage_all(plan, stage_dir, zarr_format_of(store), storage.describe())
            trash = stage_dir / "trash"
            trash.mkdir()
            consolidated = consolidated_kind(store)
            if consolidated:
                touched = True
                _hide_from_consolidated(store, consolidated, base, plan)
            for op in plan.ops:
                _commit(store / base, op, staged.get(("op", id(op))), trash)
                done(op)
            for fe in plan.frames:
                _commit_frame(store, base, fe, staged, trash)
                done(fe)
        finally:
            try:
                if touched:
                    zarr.consolidate_metadata(str(store))
            finally:
                shutil.rmtree(stage_dir, ignore_errors=True)
                storage.open(storage.mode)  # the open group caches the old (consolidated) metadata


# --- staging ------------------------------------------------------------------------------------------------------
def _staging_prefix(store: Path) -> str:
    return f".{store.name}.shadows-write-"


def _remove_stale_staging(store: Path) -> None:
    """Staging directories of writers that were killed (we hold the store's lock, so no live writer owns one)."""
    for p in store.parent.glob(_staging_prefix(store) + "*"):
        shutil.rmtree(p, ignore_errors=True)


def zarr_format_of(store: Path) -> int:
    meta = store / "zarr.json"
    if meta.exists():
        return int(json.loads(meta.read_text()).get("zarr_format", 3))
    return 2


def _stage_all(plan: Plan, stage_dir: Path, zarr_format: int, where: str) -> dict[tuple, Path]:
    group = zarr.open_group(str(stage_dir / "new"), mode="w", zarr_format=zarr_format)
    staged: dict[tuple, Path] = {}

    def stage(key: tuple, value: Any, what: str) -> None:
        name = f"e{len(staged)}"
        try:
            write_elem(group, name, value)
        except Exception as e:
            raise type(e)(f"Cannot write '{where}/{what}' ({type(value).__name__}): {e}") from e
        staged[key] = stage_dir / "new" / name

    for op in plan.ops:
        if not op.is_delete:
            stage(("op", id(op)), op.value, op.path)
    for fe in plan.frames:
        for col, values in fe.puts.items():
            stage(("col", id(fe), col), values, f"{fe.path}/{col}")
        if fe.index is not None:
            stage(("index", id(fe)), fe.index, f"{fe.path} index")
    return staged


# --- committing ---------------------------------------------------------------------------------------------------
def _away(path: Path, trash: Path) -> None:
    """Move an element out of the store in one rename (deleted with the staging directory)."""
    if path.exists():
        os.rename(path, trash / f"t{len(os.listdir(trash))}")


def _commit(root_dir: Path, op: Op, staged: Path | None, trash: Path) -> None:
    target = root_dir / op.path
    _away(target, trash)
    if staged is not None:
        os.rename(staged, target)
    for p in op.also_remove:
        _away(root_dir / p, trash)


def _commit_frame(store: Path, base: str, fe: FrameEdit, staged: dict[tuple, Path], trash: Path) -> None:
    gdir = store / base / fe.path
    group = zarr.open_group(
        str(store), path="/".join(p for p in (base, fe.path) if p), mode="r+", use_consolidated=False
    )
    if fe.hidden:  # columns being swapped or removed leave column-order first
        group.attrs["column-order"] = [c for c in fe.old_order if c not in fe.hidden]
    for col in fe.removed:
        _away(gdir / col, trash)
    for col in fe.changed:
        _away(gdir / col, trash)
        os.rename(staged[("col", id(fe), col)], gdir / col)
    if fe.index is not None:
        _away(gdir / fe.index_key, trash)
        os.rename(staged[("index", id(fe))], gdir / fe.index_key)
    for col in fe.puts:
        if col not in fe.changed:
            os.rename(staged[("col", id(fe), col)], gdir / col)
    group.attrs["column-order"] = list(fe.new_order)


# --- consolidated metadata ----------------------------------------------------------------------------------------
def consolidated_kind(store: Path) -> str | None:
    """``"v2"`` (a ``.zmetadata`` file), ``"v3"`` (inline in the root ``zarr.json``) or ``None``."""
    if (store / ".zmetadata").exists():
        return "v2"
    meta = store / "zarr.json"
    if meta.exists() and json.loads(meta.read_text()).get("consolidated_metadata"):
        return "v3"
    return None


def _hide_from_consolidated(store: Path, kind: str, base: str, plan: Plan) -> None:
    """Drop from the consolidated metadata every element about to be removed or replaced (and those columns from
    ``column-order``), so that readers see it absent, not half-swapped, until the store is consolidated again."""

    def full(p: str) -> str:
        return f"{base}/{p}" if base else p

    drop = [full(op.path) for op in plan.ops if op.is_delete or op.replaces]
    drop += [full(p) for op in plan.ops for p in op.also_remove]
    orders = {}
    for fe in plan.frames:
        drop += [full(f"{fe.path}/{c}") for c in fe.hidden]
        if fe.hidden:
            orders[full(fe.path)] = [c for c in fe.old_order if c not in fe.hidden]
    if not drop and not orders:
        return
    if kind == "v2":
        path = store / ".zmetadata"
        doc = json.loads(path.read_text())
        meta = doc["metadata"]
        for k in [k for k in meta if any(k.startswith(d + "/") for d in drop)]:
            del meta[k]
        for g, order in orders.items():
            if f"{g}/.zattrs" in meta:
                meta[f"{g}/.zattrs"]["column-order"] = order
    else:
        path = store / "zarr.json"
        doc = json.loads(path.read_text())
        _drop_v3(doc, drop, orders)
    _atomic_write_json(path, doc)


def _drop_v3(node: dict, drop: list[str], orders: dict[str, list[str]]) -> None:
    meta = (node.get("consolidated_metadata") or {}).get("metadata") or {}
    for k in [k for k in meta if any(k == d or k.startswith(d + "/") for d in drop)]:
        del meta[k]
    for g, order in orders.items():
        if g in meta:
            meta[g].setdefault("attributes", {})["column-order"] = order
    for k, child in meta.items():  # groups consolidated on their own carry their children again, relative
        if isinstance(child, dict) and (child.get("consolidated_metadata") or {}).get("metadata"):
            rel = [d[len(k) + 1 :] for d in drop if d.startswith(k + "/")]
            rel_orders = {g[len(k) + 1 :]: o for g, o in orders.items() if g.startswith(k + "/")}
            _drop_v3(child, rel, rel_orders)


def _atomic_write_json(path: Path, doc: dict) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(doc, fh, indent=2)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# --- one writer at a time -----------------------------------------------------------------------------------------
@contextmanager
def writer_lock(store: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the store directory; fail at once if another process is writing to it."""
    fd = os.open(store, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise StorageError(
                    f"'{store}' is being written by another process; try again once that write has finished"
                ) from e
            raise
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock
