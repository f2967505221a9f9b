"""The parts a :class:`~shadows.MuDataShadow` is made of: the shadow of its own elements, the file's modality maps,
and the ``mod`` mapping.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import anndata
import numpy as np

from shadows.core.anndata import AnnDataShadow
from shadows.core.state import state_of
from shadows.mudata import layout as lay
from shadows.spec import ReadContext
from shadows.spec import selection as ix

if TYPE_CHECKING:
    from shadows.mudata.shadow import MuDataShadow


class GlobalShadow(AnnDataShadow):
    """The MuData's own elements (obs, var, obsm, varm, obsp, varp, uns) over its root group, laid out as an
    AnnData root without ``X``: ``shadows.writeback.plan.write_pending`` writes its pending changes as for any shadow."""

    _mudata_root = True

    def _fix_categories(self, name: str, parts: Any, sel: ix.Sel) -> None:
        # mudata's views slice the global tables with .iloc and keep every category (anndata's views drop unused ones)
        with anndata.settings.override(remove_unused_categories=False):
            super()._fix_categories(name, parts, sel)

    def _view_colors(self, key: str, colors: Any) -> Any:
        return colors  # mudata's views hand out the parent's uns as it is


class FileMaps:
    """``obsmap``/``varmap`` over the file's global axes, read once (or, for files of mudata < 0.2 that have none,
    derived from the names as mudata's ``update()`` does)."""

    def __init__(self, shadow: GlobalShadow, order: list[str]):
        self._shadow = shadow
        self._order = order
        self._maps: dict[tuple[str, str], np.ndarray] = {}

    def get(self, axis_name: str, mod: str) -> np.ndarray:
        """``<axis_name>map/<mod>`` over the file's global axis, flat, read (or derived from the names) once.

        Raises
        ------
        ValueError
            If the stored map's length is not that of the global axis.
        """
        k = (axis_name, mod)
        if k in self._maps:
            return self._maps[k]
        root = state_of(self._shadow).root()
        where = state_of(self._shadow).storage.describe()
        value = lay.stored_map(root, axis_name, mod)
        if value is None:
            ctx = ReadContext(indptr_cache={})
            names = {m: lay.index_of(root[f"mod/{m}/{axis_name}"], ctx) for m in self._order}
            derived = lay.derive_maps(lay.index_of(root[axis_name], ctx), names, where, axis_name)
            self._maps.update({(axis_name, m): v for m, v in derived.items()})
            return self._maps[k]
        n = state_of(self._shadow).n_obs_file if axis_name == "obs" else state_of(self._shadow).n_vars_file
        if value.shape[0] != n:
            raise ValueError(
                f"'{where}': {axis_name}map/{mod} has {value.shape[0]} entries but the global {axis_name} has {n}"
            )
        self._maps[k] = value.reshape(-1)  # mudata hands the maps out flat, whatever their stored shape
        return self._maps[k]


class Modalities(Mapping):
    """``MuDataShadow.mod``: modality name to :class:`AnnDataShadow`, each made on first access and then kept."""

    def __init__(self, mdata: MuDataShadow):
        self._mdata = mdata

    def __getitem__(self, name: str) -> AnnDataShadow:
        return self._mdata._modality(name)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._mdata._order))

    def __len__(self) -> int:
        return len(self._mdata._order)

    def __contains__(self, name: object) -> bool:
        return name in self._mdata._order

    def __setitem__(self, name: str, value: Any) -> None:
        raise TypeError(
            "The modalities of a MuDataShadow are the file's; call .to_memory() for a MuData whose modalities "
            "can be replaced"
        )

    def __repr__(self) -> str:
        parts = [f"{k}: {self[k].n_obs} × {self[k].n_vars}" for k in self]
        return "Modalities of a MuDataShadow (" + ", ".join(parts) + ")"
