"""The ``raw`` of a collection: the files' raw joined as ``anndata.concat`` joins it, read only when asked for.

``anndata.concat`` keeps ``raw`` only if every file has one (and warns if only some do); it then concatenates
``AnnData(X=raw.X, var=raw.var, varm=raw.varm)`` of each file with the same ``join``, ``index_unique`` and
``fill_value`` and the default ``merge=None``: the raw genes are the join of the files' raw genes, raw ``var`` keeps
no column and ``varm`` nothing.  :class:`RawCore` is that join (a :class:`~shadows.collection.core.Core` over the
files' raw ``X``); :class:`CollectionRaw` is what ``collection.raw`` hands out: the rows of the collection (or
view) and every raw gene, ``X`` read per file for those rows only, on first access.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anndata
import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata._core import merge as admerge

from shadows.collection.core import Core
from shadows.spec import selection as ix

if TYPE_CHECKING:
    from shadows.collection.shadow import CollectionShadow


class RawCore(Core):
    """The join of the files' raw: the files and rows of the collection, the genes of their raw."""

    def __init__(self, parent: Core):  # (Core's own constructor opens the files: they are open already)
        self.join, self.label, self.index_unique = parent.join, None, parent.index_unique
        self.set_axis(parent.axis)
        self.fill_value, self.pairwise = parent.fill_value, False
        self.merge = self.uns_merge = admerge.resolve_merge_strategy(None)
        self.merge_given = self.uns_merge_given = False
        self.parts, self.names, self.keys, self.offsets = parent.parts, parent.names, parent.keys, parent.offsets
        self.parent = parent
        self.has_raw = False
        self.cache: dict[Any, Any] = {}
        self.joined, self.maps = self._join()

    def file_alt_names(self) -> list[pd.Index]:
        """Each file's raw gene names, in file order."""
        return [p.raw.var_names for p in self.parts]

    def cat_names(self) -> pd.Index:
        """The collection's cell names (raw has the cells of the collection)."""
        return self.parent.cat_names()

    def _values(self, path: str) -> list[Any]:
        if path != "X":
            raise KeyError(f"raw of a collection holds X, var and varm only, not {path!r}")
        return [p.raw.X for p in self.parts]


class SideRawCore(Core):
    """Along var: the files' raw side by side, as ``anndata.concat(..., axis=1)`` joins them (the concatenation of
    ``AnnData(X=raw.X, var=raw.var, varm=raw.varm)`` of each file with the same ``join``, ``label``, ``keys``,
    ``index_unique`` and ``fill_value``): the collection's cells, each file's raw genes one after another.

    Its parts are the files' raw (:class:`~shadows.core.raw.RawShadow`: names, ``var``, ``varm``, ``X``)."""

    def __init__(self, parent: Core):  # (Core's own constructor opens the files: they are open already)
        self.join, self.label, self.index_unique = parent.join, parent.label, parent.index_unique
        self.set_axis(1)
        self.fill_value, self.pairwise = parent.fill_value, False
        self.merge = self.uns_merge = admerge.resolve_merge_strategy(None)
        self.merge_given = self.uns_merge_given = False
        self.parts = [p.raw for p in parent.parts]
        self.names, self.keys = parent.names, parent.keys
        lengths = np.array([r.n_vars for r in self.parts], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        self.parent = parent
        self.has_raw = False
        self.cache: dict[Any, Any] = {}
        self.joined, self.maps = parent.joined, parent.maps  # raw has the cells of the files: the same join

    def _values(self, path: str) -> list[Any]:
        if path != "X":
            raise KeyError(f"raw of a collection holds X, var and varm only, not {path!r}")
        return [r.X for r in self.parts]


class CollectionRaw:
    """``raw`` of a collection or of a view of one: its cells, every raw gene (as anndata's ``Raw``)."""

    def __init__(self, coll: CollectionShadow, core: RawCore):
        self._coll = coll
        self._core = core
        self._x: Any = None

    @property
    def X(self) -> Any:
        """The joined raw matrix of the collection's (view's) cells, read per file on first access."""
        if self._x is None:
            src = self._core.element("X")
            if not hasattr(src, "with_rows"):  # no stored array: joined in memory by anndata
                self._x = src if self._coll._rows is None else src[ix.positions(self._coll._rows, src.shape[0])]
            else:
                self._x = self._coll._read_source(src.with_rows(self._coll._rows))
        return self._x

    @property
    def var(self) -> pd.DataFrame:
        """The joined raw genes (no columns, as anndata.concat keeps them; along var, the files' raw var
        concatenated)."""
        return self._core.table_of("var")

    @property
    def var_names(self) -> pd.Index:
        """The joined raw gene names (along var, the files' raw gene names one after another)."""
        return self._core.names_of("var")

    @property
    def obs_names(self) -> pd.Index:
        """The cell names of the collection (or view)."""
        return self._coll.obs_names

    @property
    def varm(self) -> dict:
        """Empty, as ``anndata.concat`` leaves raw.varm along obs; along var, the files' raw varm concatenated."""
        return {} if self._core.axis == 0 else dict(self._core.cat_mapping("varm"))

    @property
    def n_obs(self) -> int:
        """The number of cells."""
        return self._coll.n_obs

    @property
    def n_vars(self) -> int:
        """The number of raw genes."""
        return len(self.var_names)

    @property
    def shape(self) -> tuple[int, int]:
        """``(n_obs, n_vars)``."""
        return self.n_obs, self.n_vars

    def __len__(self) -> int:
        return self.n_obs

    def stacked(self) -> Any:
        """The :class:`~shadows.collection.source.Stacked` source of raw X for these cells."""
        return self._core.element("X").with_rows(self._coll._rows)

    def to_raw(self) -> anndata.Raw:
        """anndata's in-memory ``Raw`` of these cells (X read)."""
        holder = anndata.AnnData(obs=pd.DataFrame(index=self.obs_names))
        return anndata.Raw(holder, X=self._coll._as_numpy().raw.X, var=self.var.copy(), varm=self.varm or None)

    def to_adata(self) -> anndata.AnnData:
        """An in-memory AnnData of these cells' raw (X read), as ``anndata.Raw.to_adata``."""
        return anndata.AnnData(X=self._coll._as_numpy().raw.X, obs=self._coll.obs.copy(), var=self.var.copy())

    def __getitem__(self, index: Any) -> anndata.Raw:
        return self.to_raw()[index]

    def obs_vector(self, k: str) -> np.ndarray:
        """Values of raw gene ``k`` across the cells (that column alone is read from each file)."""
        j = int(self.var_names.get_loc(k))
        src = self.stacked()
        if self._core.axis == 1:  # (only the file holding the gene is read)
            m = src.select(src.rows, slice(j, j + 1, 1)).read()
            return np.ravel(m.toarray() if sp.issparse(m) else np.asarray(m))
        cols = tuple(self._core.columns_for(f, slice(j, j + 1, 1))[0] for f in range(len(self._core.parts)))
        m = src.with_rows(src.rows, columns=cols, n_cols=1).read()
        return np.ravel(m.toarray() if sp.issparse(m) else np.asarray(m))

    def __repr__(self) -> str:
        return f"Raw of a collection with n_obs × n_vars = {self.n_obs} × {self.n_vars}"


Core.raw_core = RawCore  # what Core.raw() builds
Core.side_raw_core = SideRawCore  # (along var)
