"""Writing back: push a shadow's pending in-memory changes into the file it is open on.

``shadow.reopen("r+").write()`` lands here.  This module decides *what* to write (a plan of element operations and
dataframe edits, checked for overwrites before anything is touched); :mod:`shadows.writeback.hdf5` and
:mod:`shadows.writeback.zarr` decide *how*, so that a writer killed at any moment leaves a file that anndata and mudata
still read: every new element is first written where no reader looks (an anonymous HDF5 object, a zarr staging
directory beside the store), then linked or renamed into place, and a replaced element is swapped as late as possible.

Values are written with anndata's own encodings (:func:`anndata.io.write_elem`).  HDF5 does not reclaim the space of
replaced or deleted elements: :func:`shadows.repack` rewrites a file compactly.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import anndata
import numpy as np
import pandas as pd
from anndata.io import read_elem

from shadows.core.keys import check_key, check_nested_keys
from shadows.core.state import state_of
from shadows.io import commit_guard
from shadows.io.storage import attr, is_group
from shadows.spec import encoding_of
from shadows.writeback.steps import FrameEdit, Op, Plan
from shadows.writeback.values import strings, values_equal, writable

if TYPE_CHECKING:
    from shadows.core.anndata import AnnDataShadow

_LEGACY_RAW = ("raw.X", "raw.var", "raw.varm")


def write_pending(shadow: AnnDataShadow, *, overwrite: bool = False, clear_cache: bool = False) -> AnnDataShadow:
    """Write every pending addition, change and deletion of ``shadow`` into the file it is open on.

    Parameters
    ----------
    shadow
        An :class:`~shadows.AnnDataShadow` (also one over a MuData modality or a MuData's own elements) opened
        with mode ``"r+"``.
    overwrite
        Allow replacing elements (and obs/var columns) that already exist in the file.  Without it, a
        ``ValueError`` names every such element and nothing is written.
    clear_cache
        Also free every cached element afterwards.

    Returns
    -------
    The shadow, so that ``s.reopen("r+").write().reopen("r")`` chains.

    Notes
    -----
    New elements are written out of sight first and linked into place when complete; a process killed while
    writing leaves the file readable, with every earlier element intact and the element being written either
    absent or complete.  HDF5 never reclaims the space of replaced or deleted elements: use
    :func:`shadows.repack` to rewrite the file compactly.
    """
    write_many([shadow], overwrite=overwrite, clear_cache=clear_cache)
    return shadow


def write_many(shadows: list[AnnDataShadow], *, overwrite: bool = False, clear_cache: bool = False) -> None:
    """:func:`write_pending` for several shadows of one file (a MuData's own elements and its modalities): every
    shadow is checked, and every overwrite refused, before any of them writes anything."""
    plans = []
    for shadow in shadows:
        check_writable(shadow)
        plans.append(build_plan(shadow))
    many = len(shadows) > 1
    clashes = [
        f"{state_of(s).storage.describe()}: {c}" if many else c
        for s, p in zip(shadows, plans, strict=True)
        for c in p.overwrites()
    ]
    if clashes and not overwrite:
        where = state_of(shadows[0]).storage.filename if many else state_of(shadows[0]).storage.describe()
        raise ValueError(
            f"write() would replace elements that already exist in '{where}': "
            f"{', '.join(clashes)}. Pass overwrite=True to replace them (nothing was written)."
        )
    for shadow, plan in zip(shadows, plans, strict=True):
        _apply(shadow, plan)
        if clear_cache:
            shadow.clear_cache()


def _apply(shadow: AnnDataShadow, plan: Plan) -> None:
    """Carry out ``plan``, then settle the pending entries that reached the file (also when it failed part-way:
    each committed step is final, every other one was rolled back, so the shadow then matches the file)."""
    done: list[Any] = []
    completed = False
    try:
        if plan:
            if state_of(shadow).storage.is_remote:  # h5 refused at reopen("r+") (see shadows.io.remote.open_h5)
                from shadows.writeback.remote_zarr import apply_remote_zarr as apply
            elif state_of(shadow).storage.kind == "h5":
                from shadows.writeback.hdf5 import apply_h5 as apply
            else:
                from shadows.writeback.zarr import apply_zarr as apply
            apply(state_of(shadow).storage, plan, done.append)
        completed = True
    finally:
        with commit_guard.shielded():  # a Ctrl-C half-way through settling would desynchronise shadow and file
            _settle(shadow, plan, done, completed)


def check_writable(shadow: AnnDataShadow) -> None:
    """Raise a clear error when ``shadow`` cannot write: a view, a closed file, or one open read-only."""
    where = state_of(shadow).storage.describe()
    if shadow.is_view:
        raise ValueError(
            f"Cannot write a view of '{where}': views are read-only. Assign and write on the full shadow, "
            "or save the view to a new file with .write_h5ad(path) / .write_zarr(path)"
        )
    if not state_of(shadow).storage.is_open:
        raise ValueError(f"'{where}' is closed; call .reopen('r+') before write()")
    if state_of(shadow).storage.mode != "r+":
        raise OSError(f"'{where}' is read-only; reopen with .reopen('r+') to write")


# --- planning -----------------------------------------------------------------------------------------------------
def build_plan(shadow: AnnDataShadow) -> Plan:
    """Every operation that ``write()`` would carry out, in order, without touching the file."""
    root = state_of(shadow).storage.root
    plan = Plan()
    for group, key in sorted(state_of(shadow).deleted):
        plan.units.append((group, key))
        path = state_of(shadow).elem_path(group, key)
        if path in root:
            plan.ops.append(Op(path, unit=(group, key)))
    by_group: dict[str, dict[str, Any]] = {}
    for (group, key), value in state_of(shadow).pending.items():
        if group in ("obs", "var") and key == "":
            continue  # a replaced frame lives in the cache and is diffed column by column below
        plan.units.append((group, key))
        if group == "X":
            _plan_x(plan, root, value)
        elif group == "raw":
            _plan_raw(plan, root, value)
        elif group == "uns":
            by_group.setdefault("uns", {})[key] = value
        else:
            by_group.setdefault(group, {})[key] = value
    for group, items in by_group.items():
        if group not in root or not is_group(root[group]):
            # no such group in the file (older writers): the whole group is one new element
            plan.ops.append(Op(group, {k: writable(v) for k, v in items.items()}))
            for key, value in items.items():
                _check_entry(group, key, value)
            plan.ops[-1].unit = (group, "*")
            continue
        for key, value in items.items():
            _check_entry(group, key, value)
            if group == "uns":
                plan.ops += _uns_ops(root, key, value)
                continue
            path = f"{group}/{key}"
            legacy = state_of(shadow).elem_path(group, key) if group == "obsp" else path
            on_disk = exists(root, path) or exists(root, legacy)
            plan.ops.append(
                Op(
                    path,
                    writable(value),
                    replaces=on_disk,
                    also_remove=(legacy,) if legacy != path else (),
                    unit=(group, key),
                )
            )
    for name in ("obs", "var"):
        fe = _frame_edit(shadow, root, name)
        if fe is not None:
            plan.frames.append(fe)
    return plan


def _check_entry(group: str, key: Any, value: Any) -> None:
    """The key and every name inside the value (nested dicts, data frame columns), fully: assignment let a ``/``
    inside a value pass (see :func:`check_value`), writing does not."""
    check_key(key, f"{group}[{key!r}]")
    check_nested_keys(value, f"{group}[{key!r}]")


def exists(root: Any, path: str) -> bool:
    """An element is at ``path`` (anndata writes an absent ``raw`` as a ``null`` placeholder in zarr)."""
    return path in root and encoding_of(root[path])[0] != "null"


def _plan_x(plan: Plan, root: Any, value: Any) -> None:
    if value is None:
        if "X" in root:
            plan.ops.append(Op("X", unit=("X", "")))
        return
    plan.ops.append(Op("X", writable(value), replaces=exists(root, "X"), unit=("X", "")))


def _plan_raw(plan: Plan, root: Any, value: Any) -> None:
    legacy = tuple(p for p in _LEGACY_RAW if p in root)
    if value is None:
        for p in ("raw", *legacy):
            if exists(root, p):
                plan.ops.append(Op(p, unit=("raw", "")))
        return
    replaces = exists(root, "raw") or bool(legacy)
    plan.ops.append(Op("raw", _as_raw(value), replaces=replaces, also_remove=legacy, unit=("raw", "")))


def _as_raw(value: Any) -> Any:
    from shadows.core.anndata import AnnDataShadow
    from shadows.core.raw import RawShadow

    if isinstance(value, anndata.Raw):
        return value
    if isinstance(value, RawShadow):
        value = value.to_adata()
    if isinstance(value, AnnDataShadow):
        value = value.to_memory()
    if isinstance(value, anndata.AnnData):
        return anndata.Raw(value)
    raise TypeError(f"raw must be an AnnData or anndata.Raw, got {type(value).__name__}")


def _uns_ops(root: Any, key: str, value: Any) -> list[Op]:
    """Operations turning ``uns/key`` on disk into ``value``: nested dicts are compared key by key, so that a new
    nested key is an addition and only a changed leaf is a replacement."""
    unit = ("uns", key)
    path = f"uns/{key}"
    value = writable(value)
    if path not in root:
        return [Op(path, value, unit=unit)]
    # anndata moves a legacy uns/neighbors/{distances,connectivities} to obsp; the shadow hides them from uns too
    hidden = {"distances", "connectivities"} if key == "neighbors" and "obsp" not in root else set()
    ops = _diff(root, path, value, hidden)
    for op in ops:
        op.unit = unit
    return ops


def _diff(root: Any, path: str, value: Any, hidden: set[str] = frozenset()) -> list[Op]:
    elem = root[path]
    if isinstance(value, dict) and is_group(elem) and encoding_of(elem)[0] == "dict":
        ops: list[Op] = []
        on_disk = [str(k) for k in elem.keys()]
        for k, v in value.items():
            check_key(k, f"{path}[{k!r}]")
            sub = f"{path}/{k}"
            ops += _diff(root, sub, v) if k in on_disk else [Op(sub, v)]
        ops += [Op(f"{path}/{k}") for k in on_disk if k not in value and k not in hidden]
        return ops
    try:
        same = values_equal(read_elem(elem), value)
    except Exception:  # unreadable by anndata (legacy encodings): treat as changed
        same = False
    return [] if same else [Op(path, value, replaces=True)]


def _frame_edit(shadow: AnnDataShadow, root: Any, name: str) -> FrameEdit | None:
    df = state_of(shadow).cache.get((name, ""))
    if not isinstance(df, pd.DataFrame) or name not in root:
        return None
    changes = shadow.frame_changes(name)
    g = root[name]
    old_order = state_of(shadow).frame_columns(name)
    new_order = list(df.columns)
    index_key = attr(g, "_index", "_index") if is_group(g) else None
    new_index = None
    if index_key is not None and index_key in g and not _index_equal(g[index_key], df.index):
        new_index = df.index._values
    if not (changes["added"] or changes["changed"] or changes["removed"]) and new_index is None:
        if new_order == old_order:
            return None
    where = f"{name} of '{state_of(shadow).storage.describe()}'"
    if not is_group(g) or encoding_of(g) != ("dataframe", "0.2.0"):
        raise ValueError(
            f"{where} is stored in an old layout ({encoding_of(g)[0]}) that cannot be edited in place; "
            "write the shadow to a new file with .write_h5ad(path) instead"
        )
    for c in new_order:
        if not isinstance(c, str):
            raise ValueError(f"{where}: column names must be strings to be written, got {c!r}")
        check_key(c, f"{name}[{c!r}]")
        if c in ("_index", index_key):
            raise ValueError(f"{where}: column name {c!r} is the name of the index; rename the column")
    if len(set(new_order)) != len(new_order):
        raise ValueError(f"{where}: repeated column names {sorted({c for c in new_order if new_order.count(c) > 1})}")
    puts = {c: writable(df[c]._values) for c in changes["added"] + changes["changed"]}
    leftovers = _leftover_columns(shadow, g, name, old_order, index_key)
    changed = list(changes["changed"]) + [c for c in leftovers if c in puts]
    removed = list(changes["removed"]) + [c for c in leftovers if c not in puts]
    return FrameEdit(name, name, old_order, new_order, puts, changed, removed, index_key, new_index, leftovers)


def _leftover_columns(shadow: AnnDataShadow, g: Any, name: str, order: list[str], index_key: str) -> list[str]:
    """Children of the dataframe group ``g`` that are neither its index nor listed in ``column-order``.

    A writer killed after linking a new column but before naming it in ``column-order`` leaves one; anndata never
    reads it, but it holds the name.  A zarr store is listed from its directory too: an element moved in after
    the metadata was last consolidated is missing from the consolidated listing.
    """
    on_disk = {str(k) for k in g.keys()}
    storage = state_of(shadow).storage
    if storage.kind == "zarr" and not storage.is_remote:  # a remote store was listed by zarr (g.keys())
        directory = Path(storage.filename, storage.inner or "", name)
        if directory.is_dir():
            on_disk |= {p.name for p in directory.iterdir() if p.is_dir() and not p.name.startswith(".")}
    listed = set(order) | {index_key, "_index"}
    return sorted(c for c in on_disk if c not in listed)


def _index_equal(elem: Any, index: pd.Index) -> bool:
    disk = np.asarray(read_elem(elem), dtype=object)
    if len(disk) != len(index):
        return False
    return strings(disk) == strings(np.asarray(index, dtype=object))


# --- after writing ------------------------------------------------------------------------------------------------
def _settle(shadow: AnnDataShadow, plan: Plan, done: list[Any], completed: bool) -> None:
    """Forget the pending entries whose every operation reached the file; those elements now read from disk."""
    finished = {id(x) for x in done}
    ops_of: dict[tuple[str, str], list[Op]] = {}
    for op in plan.ops:
        if op.unit is None:
            continue
        whole = [u for u in plan.units if u[0] == op.unit[0]] if op.unit[1] == "*" else [op.unit]
        for u in whole:
            ops_of.setdefault(u, []).append(op)
    # an entry needing no operation (a dict equal to the file's) is settled once the write went through
    ok = {u: all(id(o) in finished for o in ops_of[u]) if u in ops_of else completed for u in plan.units}
    for unit in plan.units:
        if not ok[unit]:
            continue
        state_of(shadow).pending.pop(unit, None)
        state_of(shadow).cache.pop(unit, None)
        state_of(shadow).deleted.discard(unit)
        if unit[0] == "raw":
            for k in [k for k in state_of(shadow).cache if k[0] == "raw"]:
                state_of(shadow).cache.pop(k)
    for fe in plan.frames:
        if id(fe) in finished:
            state_of(shadow).cache.pop((fe.name, ""), None)
            state_of(shadow).cache.pop((f"{fe.name}_names", ""), None)
            state_of(shadow).frame_fp.pop(fe.name, None)
    if done:
        state_of(shadow).storage.indptr_cache.clear()  # a replaced sparse matrix has another indptr
