"""Where a shadow's elements are, for streaming: the stored path, the view's selection on it, a pending value.

:func:`matrix_part` names a stored matrix and the part of it a view selects (a
:class:`~shadows.stream.blocks.MatrixPart`), which :mod:`~shadows.stream.blocks` reads in blocks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shadows.core.mapping import ALIGNMENT
from shadows.core.state import state_of
from shadows.stream.blocks import MatrixPart, is_matrix, part_of

if TYPE_CHECKING:
    from shadows.core.anndata import AnnDataShadow


def sels_for(shadow: AnnDataShadow, path: str) -> tuple:
    """The file-level selection a view applies to the element at ``path`` (``X``, ``layers/k``, ``raw/X``...)."""
    group = path.split("/", 1)[0]
    if path in ("X", "raw/X", "raw.X"):
        return (state_of(shadow).oidx, state_of(shadow).vidx) if path == "X" else (state_of(shadow).oidx, None)
    if group in ALIGNMENT:
        return state_of(shadow).sels(group)
    return ()


def stored_path(shadow: AnnDataShadow, path: str) -> str:
    """Where the element of ``path`` lies in the file (legacy neighbors graphs live in ``uns``)."""
    if path in ("X", "raw/X", "raw.X") or "/" not in path:
        return path
    group, key = path.split("/", 1)
    return state_of(shadow).elem_path(group, key)


def pending_value(shadow: AnnDataShadow, path: str) -> tuple[bool, Any]:
    """``(True, value)`` when the element at ``path`` is an in-memory change (pending, or inherited by a view)."""
    key = ("X", "") if path == "X" else tuple(path.split("/", 1)) if "/" in path else None
    if key is None:
        return False, None
    for store in (state_of(shadow).pending, state_of(shadow).inherited):
        if key in store:
            return True, store[key]
    if key in state_of(shadow).deleted:
        raise KeyError(f"'{path}' was deleted from '{state_of(shadow).storage.describe()}' (pending write)")
    return False, None


def matrix_part(shadow: AnnDataShadow, path: str, budget: int | None = None) -> MatrixPart:
    """The stored matrix at ``path`` with the shadow's view selection."""
    root = state_of(shadow).root()
    stored = stored_path(shadow, path)
    if stored not in root:
        raise KeyError(f"'{state_of(shadow).storage.describe()}' has no element '{path}'")
    elem = root[stored]
    if not is_matrix(elem):
        raise TypeError(
            f"'{path}' of '{state_of(shadow).storage.describe()}' is not a matrix (sparse or numeric array)"
        )
    return part_of(elem, sels_for(shadow, path), state_of(shadow).ctx(), budget)
