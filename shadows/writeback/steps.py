"""The steps of a write-back: element operations (:class:`Op`), column edits of obs/var (:class:`FrameEdit`) and the
:class:`Plan` that holds them; what :mod:`~shadows.writeback.plan` decides and the container modules
(:mod:`~shadows.writeback.hdf5`, :mod:`~shadows.writeback.zarr`, :mod:`~shadows.writeback.remote_zarr`) carry out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

DELETE = object()  # the value of an operation that removes an element


@dataclass
class Op:
    """One element to put at (or remove from) ``path``, a path below the shadow's root group."""

    path: str
    value: Any = DELETE
    replaces: bool = False  # an element already on disk is replaced (needs overwrite=True)
    also_remove: tuple[str, ...] = ()  # older copies removed with it (legacy layouts)
    unit: tuple[str, str] | None = None  # the shadow's pending entry this operation (partly) settles

    @property
    def is_delete(self) -> bool:
        """Whether the operation removes the element rather than putting one."""
        return self.value is DELETE


@dataclass
class FrameEdit:
    """Column changes of the dataframe group ``path`` (``obs`` or ``var``)."""

    name: str
    path: str
    old_order: list[str]
    new_order: list[str]
    puts: dict[str, Any] = field(default_factory=dict)  # added and changed columns
    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    index_key: str = "_index"
    index: Any = None  # new index values, or None when the index is unchanged
    # columns on disk that column-order does not list (left by a writer killed between linking a column and
    # naming it): invisible to readers, so replaced (in ``changed``) or removed (in ``removed``) without asking
    leftovers: list[str] = field(default_factory=list)

    @property
    def hidden(self) -> list[str]:
        """Columns that leave ``column-order`` while they are swapped or removed."""
        return [c for c in self.old_order if c in self.changed or c in self.removed]


@dataclass
class Plan:
    """What one write changes in the file: element operations, column edits of obs/var, and the pending entries settled.

    A plan is false when there is nothing to write.
    """

    ops: list[Op] = field(default_factory=list)
    frames: list[FrameEdit] = field(default_factory=list)
    units: list[tuple[str, str]] = field(default_factory=list)  # pending entries this plan settles

    def __bool__(self) -> bool:
        return bool(self.ops or self.frames)

    def overwrites(self) -> list[str]:
        """The paths of elements (and obs/var columns and indexes) already on disk that the plan replaces."""
        out = [op.path for op in self.ops if op.replaces and not op.is_delete]
        for fe in self.frames:
            out += [f"{fe.path}/{c} (column)" for c in fe.changed if c not in fe.leftovers]
            if fe.index is not None:
                out.append(f"{fe.path} index")
        return out
