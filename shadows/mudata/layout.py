"""What a MuData group on disk says about itself: modalities and their order, the axis, and the maps.

A MuData root holds ``mod/<name>`` AnnData groups, the global ``obs``/``var`` and ``obsmap``/``varmap``: for each
modality an unsigned array over the global axis giving the 1-based position of each global row in that modality
(0 = absent).  Everything about how a MuData view slices its modalities follows from these maps, so this module
reads them (or, for files written before mudata 0.2 that have none, derives them from the names) and turns a
selection on the global axis into the selection on each modality.  Nothing here builds a shadow.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from shadows.io.storage import attr, is_group, is_h5
from shadows.spec import ReadContext, read_frame_parts
from shadows.spec import selection as ix


def check_mudata_root(root: Any, where: str) -> None:
    """Raise a ``ValueError`` saying what the group is when it holds no MuData (no ``mod`` group)."""
    if "mod" in root and is_group(root["mod"]):
        return
    keys = sorted(str(k) for k in root.keys()) if is_group(root) else []
    if "X" in keys or "obs" in keys or str(attr(root, "encoding-type", "")) == "anndata":
        raise ValueError(
            f"'{where}' is an AnnData (it has no 'mod' group of modalities): open it with shadows.AnnDataShadow"
        )
    raise ValueError(f"'{where}' holds no MuData: there is no 'mod' group (found {keys[:10]})")


def read_axis(root: Any, where: str) -> int:
    """The shared axis: 0 shared observations (also when the attribute is absent, mudata < 0.2), 1 shared features."""
    value = attr(root, "axis", 0)
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    try:
        axis = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"'{where}': attribute 'axis' is {value!r}; expected 0, 1 or -1") from None
    if axis not in (-1, 0, 1):
        raise ValueError(f"'{where}': attribute 'axis' is {axis}; expected 0, 1 or -1")
    return axis


def modality_order(root: Any) -> list[str]:
    """Modality names in the user's order.

    The ``mod-order`` attribute of ``mod`` is used when it names exactly the stored modalities; mudata's
    specification says to ignore it when it misses some (or names absent ones), and then the stored order is kept:
    HDF5's (alphabetical, as the specification says they are stored), or alphabetical for zarr, whose listing
    order depends on the store.
    """
    stored = [str(k) for k in root["mod"].keys()]
    if not is_h5(root):
        stored = sorted(stored)
    order = attr(root["mod"], "mod-order")
    if isinstance(order, str):
        order = [order]
    if isinstance(order, list):
        order = [str(o) for o in order]
        if len(order) == len(stored) and set(order) == set(stored):
            return order
    return stored


def index_of(frame: Any, ctx: ReadContext) -> pd.Index:
    """The index (names) of a stored obs/var table, without reading its columns."""
    return pd.Index(read_frame_parts(frame, (None,), ctx, columns=[]).index)


def stored_map(root: Any, axis_name: str, mod: str) -> np.ndarray | None:
    """``obsmap/<mod>`` (or ``varmap``) as stored, or ``None`` when the file has none (mudata < 0.2)."""
    group = f"{axis_name}map"
    if group not in root or not is_group(root[group]) or mod not in root[group]:
        return None
    return np.asarray(root[group][mod][...])


def derive_maps(global_names: pd.Index, mod_names: dict[str, pd.Index], where: str, axis_name: str) -> dict:
    """Maps for a file that stores none (mudata < 0.2), from the names, as mudata's ``update()`` rebuilds them.

    The global axis is either the modalities' axes one after another (the axis that is not shared) or their union
    (the shared one).  The first is recognised by the names matching block by block, which also covers names
    repeated across modalities; otherwise each global name is looked up in each modality, which needs unique names.
    """
    out: dict[str, np.ndarray] = {}
    blocks = [np.asarray(n, dtype=object) for n in mod_names.values()]
    total = sum(len(b) for b in blocks)
    if total == len(global_names) and (
        total == 0 or np.array_equal(np.concatenate(blocks).astype(str), np.asarray(global_names).astype(str))
    ):
        start = 0
        for mod, names in mod_names.items():
            m = np.zeros(len(global_names), dtype=np.uint32)
            m[start : start + len(names)] = np.arange(1, len(names) + 1, dtype=np.uint32)
            out[mod] = m
            start += len(names)
        return out
    if not global_names.is_unique or not all(n.is_unique for n in mod_names.values()):
        raise ValueError(
            f"'{where}' has no {axis_name}map (written by mudata < 0.2) and its {axis_name}_names are not unique, "
            f"so the {axis_name} of each modality cannot be matched to the global {axis_name}"
        )
    for mod, names in mod_names.items():
        pos = names.get_indexer(global_names)
        out[mod] = np.where(pos >= 0, pos + 1, 0).astype(np.uint32)
    return out


def compact(pos: np.ndarray) -> ix.Sel:
    """Positions as a slice when they are a contiguous ascending run (cheaper to read), else as they are."""
    pos = np.asarray(pos, dtype=np.int64)
    if len(pos) > 0 and pos[0] >= 0 and pos[-1] - pos[0] == len(pos) - 1 and bool(np.all(np.diff(pos) == 1)):
        return slice(int(pos[0]), int(pos[-1]) + 1, 1)
    return pos


def modality_selection(mapping: np.ndarray, sel: ix.Sel) -> ix.Sel:
    """The positions in a modality that a selection on the global axis picks, in the selection's order.

    As mudata's views: ``mapping[sel]``, the rows absent from the modality (0) dropped, made 0-based.
    """
    flat = np.asarray(mapping).reshape(-1)
    picked = flat[ix.positions(sel, len(flat))]
    return compact(picked[picked > 0].astype(np.int64) - 1)


def view_map(mapping: np.ndarray, sel: ix.Sel) -> np.ndarray:
    """The map of a view: for each selected global row present in the modality, its 1-based rank among them."""
    flat = np.asarray(mapping).reshape(-1)
    present = flat[ix.positions(sel, len(flat))] > 0
    out = np.zeros(len(present), dtype=flat.dtype)
    out[present] = np.arange(1, int(present.sum()) + 1)
    return out
