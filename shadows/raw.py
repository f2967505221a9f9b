"""``raw`` of a shadow: ``raw.X``, ``raw.var``, ``raw.varm`` read lazily, sliced along cells only (as anndata does)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from . import index as ix
from .compat import NOT_A_REFERENCE, SlicedMatrix, accessor_get, matrix_is_only_sliced
from .elements import read_element, read_frame_parts
from .storage import attr, is_group

if TYPE_CHECKING:
    from .anndata import AnnDataShadow


_MISSING = object()


class RawShadow:
    """The raw part of an AnnData file (current ``raw/`` group or the legacy ``raw.X``/``raw.var`` layout).

    Elements are read on first access and cached on the owning shadow; a view's raw has the view's cells and all
    raw genes.  ``raw[:, genes]`` reads only those genes.
    """

    def __init__(self, shadow: AnnDataShadow, vidx: ix.Sel = None):
        self._shadow = shadow
        self._vidx = vidx
        self._own: dict[tuple[str, str], Any] = {}  # elements of a gene subset live as long as this object
        root = shadow._root()
        self._legacy = not ("raw" in root and is_group(root["raw"]))
        self._prefix = "raw." if self._legacy else "raw/"

    def _path(self, name: str) -> str:
        return f"{self._prefix}{name}"

    def _n_vars_file(self) -> int:
        root = self._shadow._root()
        g = root[self._path("var")]
        if not is_group(g):
            return int(g.shape[0])
        idx = g[attr(g, "_index")]
        return int(idx["values"].shape[0] if is_group(idx) else idx.shape[0])  # a nullable-string group (pandas 3)

    def _cached(self, name: str, read) -> Any:
        # the whole raw is cached on the shadow; a subset only here (one key per subset would collide or pile up)
        key = ("raw", f"{name}:")
        cache = self._shadow._cache if self._vidx is None else self._own
        # one lookup: the shadow's clear_cache() in another thread may drop the entry between two
        value = cache.get(key, _MISSING)
        if value is _MISSING:
            value = cache[key] = read()
        return value

    @property
    def X(self) -> Any:
        cache = self._shadow._cache if self._vidx is None else self._own
        if ("raw", "X:") not in cache and self._path("X") in self._shadow._root() and matrix_is_only_sliced("raw.X"):
            # sc.get.obs_df & co. slice a few genes out of it: hand out a matrix that reads only those
            return SlicedMatrix(self._shadow, self._path("X"), (self._shadow._oidx, self._vidx))

        def read():
            if self._path("X") not in self._shadow._root():
                return None
            return self._shadow._read(self._path("X"), (self._shadow._oidx, self._vidx))

        return self._cached("X", read)

    @property
    def var(self) -> pd.DataFrame:
        def read():
            parts = read_frame_parts(self._shadow._root()[self._path("var")], (self._vidx,), self._shadow._ctx())
            parts.axis_name = "var_names"  # the index column's name in polars/pyarrow tables
            parts.index = self._str_names(parts.index, parts.index_name)
            from .anndata import empty_columns_as_str

            return empty_columns_as_str(self._shadow._table(parts))

        return self._cached("var", read)

    @property
    def varm(self) -> dict:
        def read():
            root = self._shadow._root()
            if self._path("varm") not in root:
                return {}
            g = root[self._path("varm")]
            if not is_group(g):  # anndata < 0.7: one compound dataset, a field per key
                from .elements.dense import read_dense

                rows = read_dense(g, (self._vidx,))
                return {k: np.asarray(rows[k]) for k in g.dtype.names or ()}
            return {k: self._shadow._read(f"{self._path('varm')}/{k}", (self._vidx,)) for k in g.keys()}

        return self._cached("varm", read)

    @property
    def var_names(self) -> pd.Index:
        v = self.var
        if isinstance(v, pd.DataFrame):
            return v.index
        g = self._shadow._root()[self._path("var")]
        idx_key = attr(g, "_index")
        return self._str_names(read_element(g[idx_key], (self._vidx,), self._shadow._ctx()), None)

    def _str_names(self, values: Any, index_name: str | None) -> pd.Index:
        """raw's stored var index as anndata reads it (integers become strings)."""
        where = f"raw.var of '{self._shadow._storage.describe()}'"
        return ix.as_anndata_names(pd.Index(values, name=index_name), where)

    @property
    def obs_names(self) -> pd.Index:
        return self._shadow.obs_names

    @property
    def n_obs(self) -> int:
        return self._shadow.n_obs

    @property
    def n_vars(self) -> int:
        return ix.length(self._vidx, self._n_vars_file())

    @property
    def shape(self) -> tuple[int, int]:
        return self.n_obs, self.n_vars

    def __getitem__(self, index: Any) -> Any:
        if (ref := accessor_get(self, index)) is not NOT_A_REFERENCE:  # raw[A.X[:, gene]] (anndata >= 0.13)
            return ref
        oidx, vidx = ix.split_index(index)
        if oidx is not None and not (isinstance(oidx, slice) and oidx == slice(None)):
            return self._shadow[oidx].raw[:, vidx] if vidx is not None else self._shadow[oidx].raw
        v = ix.normalize(vidx, self.var_names, self.n_vars, 1)
        return RawShadow(self._shadow, ix.compose(self._vidx, v, self._n_vars_file()))

    def obs_vector(self, k: str) -> np.ndarray:
        """Values of raw gene ``k`` across cells: one column read."""
        names = self.var_names
        if k not in names:
            raise KeyError(f"{k!r} is not a raw var name of '{self._shadow._storage.describe()}'")
        # every position of a repeated name, raveled row by row (as anndata's get_vector)
        j = ix.compose(self._vidx, ix.locate(k, names, "var"), self._n_vars_file())
        col = read_element(self._shadow._root()[self._path("X")], (self._shadow._oidx, j), self._shadow._ctx())
        return np.ravel(col.toarray() if sp.issparse(col) else np.asarray(col))

    def var_vector(self, k: str) -> np.ndarray:
        return np.asarray(self.var[k])

    def to_dict(self) -> dict:
        return {"X": self.X, "var": self.var, "varm": dict(self.varm)}

    def to_adata(self):
        import anndata

        sh = self._shadow  # as anndata's Raw.to_adata: the parent's obs, obsm, obsp and uns come along
        return anndata.AnnData(
            X=self.X,
            obs=sh.obs.copy(),
            var=self.var,
            varm=dict(self.varm),
            obsm=sh.obsm.copy(),
            obsp=sh.obsp.copy(),
            uns=sh.uns.to_dict(),
        )

    def __repr__(self) -> str:
        return f"Raw Shadow with n_obs × n_vars = {self.n_obs} × {self.n_vars}"
