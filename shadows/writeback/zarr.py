"""Carrying out a write plan in a zarr store (v2 or v3) so that neither a killed writer nor a concurrent reader
ever finds an element missing.

New elements are written with anndata into a staging store *beside* the store (never inside it: a stray group
inside would be read by ``anndata.read_zarr`` as an unknown element), made durable, and then committed through a
journal (:mod:`shadows.io.zarr_journal`): each replaced element is swapped with its new version in one atomic exchange
of directory entries, each new one renamed into place, each removed one renamed out; the consolidated metadata are
removed for the duration of the commit and written again at its end.  A writer killed at any moment leaves a
journal that the next writer (or the next ``"r+"`` open) finishes; an exception or ``KeyboardInterrupt`` during the
commit finishes it before propagating.

One writer at a time: the store directory is locked (``flock``) for the duration of a write.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zarr
from anndata.io import write_elem

from shadows.io import commit_guard
from shadows.io.storage import Storage
from shadows.io.zarr_journal import (
    DONE,
    FORMAT,
    JOURNAL,
    attrs_step,
    consolidated_kind,
    fsync_tree,
    place_step,
    recover,
    remove_step,
    run,
    staging_prefix,
    write_journal,
    writer_lock,
)
from shadows.writeback.steps import FrameEdit, Plan

__all__ = ["apply_zarr", "consolidated_kind", "writer_lock", "zarr_format_of"]


def apply_zarr(storage: Storage, plan: Plan, done: Callable[[Any], None]) -> None:
    """Write ``plan`` into the zarr store of ``storage``; ``done(step)`` is called after each committed step."""
    store = Path(storage.filename)
    try:
        with writer_lock(store):
            recover(store)  # a killed writer's half-done commit first: its staging may hold the only copy
            stage = Path(tempfile.mkdtemp(prefix=staging_prefix(store), dir=store.parent))
            try:
                fmt = zarr_format_of(store)
                staged = _stage_all(plan, stage, fmt, storage.describe())
                (stage / "trash").mkdir()
                fsync_tree(stage)  # the new elements are durable before anything points at them
                steps, owners = _steps(store, storage.inner, plan, staged, stage)
                doc = {"format": FORMAT, "zarr_format": fmt, "consolidated": consolidated_kind(store), "steps": steps}
                _commit(store, stage, doc, owners, done)
            finally:
                if not (stage / JOURNAL).exists() or (stage / DONE).exists():
                    shutil.rmtree(stage, ignore_errors=True)
    finally:
        storage.open(storage.mode)  # the open group caches the old (consolidated) metadata


def _commit(store: Path, stage: Path, doc: dict, owners: dict[int, list[Any]], done: Callable[[Any], None]) -> None:
    """Journal the steps, then run them; any exception (Ctrl-C included) finishes the commit before propagating."""
    reported: set[int] = set()

    def on_step(i: int) -> None:
        for owner in owners.get(i, ()):
            if id(owner) not in reported:
                reported.add(id(owner))
                done(owner)

    with commit_guard.shielded():
        commit_guard.point("zarr:0 staged")  # an exception up to here: nothing visible changed, staging deleted
        write_journal(stage, doc)
        try:
            on_step(-1)  # operations with nothing left to do on disk
            commit_guard.point("zarr:1 journal written")
            run(store, stage, doc, point=commit_guard.point, on_step=on_step)
        except BaseException:
            run(store, stage, doc, on_step=on_step)  # roll forward: every step is idempotent
            raise


# --- staging ---------------------------------------------------------------------------------------------------------
def zarr_format_of(store: Path) -> int:
    """The zarr format (2 or 3) of the store at ``store``, from its metadata files."""
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


# --- the steps of the commit -------------------------------------------------------------------------------------
def _steps(
    store: Path, base: str, plan: Plan, staged: dict[tuple, Path], stage: Path
) -> tuple[list[dict], dict[int, list[Any]]]:
    """The journal's steps for ``plan``, and which operations/frame edits are complete after step ``i`` (``-1``:
    those with nothing to do)."""
    steps: list[dict] = []
    owners: dict[int, list[Any]] = {}

    def full(p: str) -> str:
        return f"{base}/{p}" if base else p

    def old() -> str:
        return f"trash/t{len(steps)}"

    def place(path: str, new: Path) -> None:
        steps.append(place_step(full(path), new, stage, old()))

    def remove(path: str) -> None:
        step = remove_step(full(path), store, old())
        if step is not None:
            steps.append(step)

    for op in plan.ops:
        if op.is_delete:
            remove(op.path)
        else:
            place(op.path, staged[("op", id(op))])  # also onto a leftover: the exchange moves it out
        for p in op.also_remove:
            remove(p)
        owners.setdefault(len(steps) - 1, []).append(op)
    for fe in plan.frames:
        _frame_steps(fe, staged, place, remove, lambda g, a: steps.append(attrs_step(full(g), a)))
        owners.setdefault(len(steps) - 1, []).append(fe)
    return steps, owners


def _frame_steps(
    fe: FrameEdit,
    staged: dict[tuple, Path],
    place: Callable[[str, Path], None],
    remove: Callable[[str], None],
    attrs: Callable[[str, dict], None],
) -> None:
    """Columns (and the index) are placed before ``column-order`` names them and removed after it no longer does,
    so that a reader going by ``column-order`` finds every column it names."""
    for col in fe.puts:
        place(f"{fe.path}/{col}", staged[("col", id(fe), col)])
    if fe.index is not None:
        place(f"{fe.path}/{fe.index_key}", staged[("index", id(fe))])
    attrs(fe.path, {"column-order": list(fe.new_order)})
    for col in fe.removed:
        remove(f"{fe.path}/{col}")
