"""``raw`` of a shadow: ``raw.X``, ``raw.var``, ``raw.varm`` read lazily, sliced along cells only (as anndata does)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from shadows.core.compat import NOT_A_REFERENCE, SlicedMatrix, accessor_get, matrix_is_only_sliced
from shadows.io.storage import attr, is_group
from shadows.spec import read_element, read_frame_parts
from shadows.spec import selection as ix
from shadows.spec.frames import table_length

if TYPE_CHECKING:
    from shadows.core.anndata import AnnDataShadow


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
        root = shadow._state.root()
        self._legacy = not ("raw" in root and is_group(root["raw"]))
        self._prefix = "raw." if self._legacy else "raw/"

    def _path(self, name: str) -> str:
        return f"{self._prefix}{name}"

    def _n_vars_file(self) -> int:
        root = self._shadow._state.root()
        return table_length(root[self._path("var")])

    def _cached(self, name: str, read) -> Any:
        # the whole raw is cached on the shadow; a subset only here (one key per subset would collide or pile up)
        key = ("raw", f"{name}:")
        cache = self._shadow._state.cache if self._vidx is None else self._own
        # one lookup: the shadow's clear_cache() in another thread may drop the entry between two
        value = cache.get(key, _MISSING)
        if value is _MISSING:
            value = cache[key] = read()
        return value

    @property
    def X(self) -> Any:
        """raw's matrix for the shadow's cells (and this raw's genes), read on first access and cached."""
        cache = self._shadow._state.cache if self._vidx is None else self._own
        if (
            ("raw", "X:") not in cache
            and self._path("X") in self._shadow._state.root()
            and matrix_is_only_sliced("raw.X")
        ):
            # sc.get.obs_df & co. slice a few genes out of it: hand out a matrix that reads only those
            return SlicedMatrix(self._shadow, self._path("X"), (self._shadow._state.oidx, self._vidx))

        def read():
            if self._path("X") not in self._shadow._state.root():
                return None
            value = self._shadow._read(self._path("X"), (self._shadow._state.oidx, self._vidx))
            # anndata's raw[:, genes] takes X[:, positions] with numpy: F-ordered for a dense X
            if isinstance(self._vidx, np.ndarray) and isinstance(value, np.ndarray) and value.ndim == 2:
                value = np.asfortranarray(value)
            return value

        return self._cached("X", read)

    @property
    def var(self) -> pd.DataFrame:
        """raw's feature table (this raw's genes), read on first access and cached."""

        def read():
            parts = read_frame_parts(
                self._shadow._state.root()[self._path("var")], (self._vidx,), self._shadow._state.ctx()
            )
            parts.axis_name = "var_names"  # the index column's name in polars/pyarrow tables
            parts.index = self._str_names(parts.index, parts.index_name)
            return empty_columns_as_str(self._shadow._table(parts))

        return self._cached("var", read)

    @property
    def varm(self) -> dict:
        """raw's ``varm`` as a dict (this raw's genes), read on first access and cached."""

        def read():
            root = self._shadow._state.root()
            if self._path("varm") not in root:
                return {}
            g = root[self._path("varm")]
            if not is_group(g):  # anndata < 0.7: one compound dataset, a field per key
                from shadows.spec.dense import read_dense

                rows = read_dense(g, (self._vidx,))
                return {k: np.asarray(rows[k]) for k in g.dtype.names or ()}
            return {k: self._shadow._read(f"{self._path('varm')}/{k}", (self._vidx,)) for k in g.keys()}

        return self._cached("varm", read)

    @property
    def var_names(self) -> pd.Index:
        """raw's gene names, from ``var``'s index alone when ``var`` has not been read."""
        v = self.var
        if isinstance(v, pd.DataFrame):
            return v.index
        g = self._shadow._state.root()[self._path("var")]
        idx_key = attr(g, "_index")
        return self._str_names(read_element(g[idx_key], (self._vidx,), self._shadow._state.ctx()), None)

    def _str_names(self, values: Any, index_name: str | None) -> pd.Index:
        """raw's stored var index as anndata reads it (integers become strings)."""
        where = f"raw.var of '{self._shadow._state.storage.describe()}'"
        return ix.as_anndata_names(pd.Index(values, name=index_name), where)

    @property
    def obs_names(self) -> pd.Index:
        """The owning shadow's cell names (raw has the cells of its shadow)."""
        return self._shadow.obs_names

    @property
    def n_obs(self) -> int:
        """Number of cells (those of the owning shadow)."""
        return self._shadow.n_obs

    @property
    def n_vars(self) -> int:
        """Number of raw genes (the selected ones for ``raw[:, genes]``)."""
        return ix.length(self._vidx, self._n_vars_file())

    @property
    def shape(self) -> tuple[int, int]:
        """``(n_obs, n_vars)``, without reading any element."""
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
            raise KeyError(f"{k!r} is not a raw var name of '{self._shadow._state.storage.describe()}'")
        # every position of a repeated name, raveled row by row (as anndata's get_vector)
        j = ix.compose(self._vidx, ix.locate(k, names, "var"), self._n_vars_file())
        col = read_element(
            self._shadow._state.root()[self._path("X")], (self._shadow._state.oidx, j), self._shadow._state.ctx()
        )
        return np.ravel(col.toarray() if sp.issparse(col) else np.asarray(col))

    def var_vector(self, k: str) -> np.ndarray:
        """The values of column ``k`` of raw's ``var``, as anndata's ``Raw.var_vector``."""
        return np.asarray(self.var[k])

    def to_dict(self) -> dict:
        """``{'X': ..., 'var': ..., 'varm': ...}``, read into memory (as anndata's ``Raw.to_dict``)."""
        return {"X": self.X, "var": self.var, "varm": dict(self.varm)}

    def to_adata(self):
        """An in-memory AnnData of raw, with the owning shadow's obs, obsm, obsp and uns (as ``Raw.to_adata``)."""
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


def _anndata_subset(value: Any, sels: tuple) -> Any:
    """``value[sels]`` as anndata's views take it (``anndata._core.index._subset``): same values, same layout."""
    sels = tuple(slice(None) if s is None else s for s in sels)
    try:
        from anndata._core.index import _subset
    except ImportError:  # another anndata: numpy's own rules, which anndata follows
        if all(isinstance(s, np.ndarray) for s in sels) and isinstance(value, np.ndarray):
            return value[np.ix_(*sels)]
        return value[sels]
    return _subset(value, sels)


class _XLink:
    """raw.X of a shadow whose X was not read when ``raw`` was assigned: the X of that moment, read on demand.

    While ``generation`` is the source's current X generation (its X was neither replaced nor subset since), raw.X
    *is* the source's X: the object it reads on first access, so that an in-place change shows in both (anndata's
    ``Raw`` keeps a reference to ``adata.X``, not a copy).  Afterwards (``generation`` None) it is the file's X at
    ``sel``, which the file still holds (it changes only by ``write()``, which writes this raw with it).
    """

    def __init__(self, source: AnnDataShadow, sel: tuple, generation: int | None, fortran: bool = False):
        self.source, self.sel, self.generation = source, sel, generation
        self.fortran = fortran  # numpy's layout of X[:, cols] (see AnnDataShadow._fancy)

    def live(self) -> bool:
        return self.generation is not None and self.source.__dict__.get("_x_gen") == self.generation

    def read(self, sel: tuple | None = None) -> Any:
        """The file's X at ``sel`` (default: the whole snapshot), through the source's connection."""
        value = self.source._read("X", self.sel if sel is None else sel, "X")
        if self.fortran and sel is None and isinstance(value, np.ndarray) and value.ndim == 2:
            value = np.asfortranarray(value)
        return value

    def sub(self, o: ix.Sel, v: ix.Sel) -> _XLink:
        """The link of ``X[o, v]`` (positions relative to this snapshot), on the file only."""
        n = self.source._state.n_obs_file, self.source._state.n_vars_file
        sel = (ix.compose(self.sel[0], o, n[0]), ix.compose(self.sel[1], v, n[1]))
        return _XLink(self.source, sel, None, fortran=not isinstance(o, np.ndarray) and isinstance(v, np.ndarray))


class RawSnapshot(RawShadow):
    """``raw`` after ``shadow.raw = adata``: what anndata's setter keeps, ``Raw(shadow, X=adata.X, var=adata.var,
    varm=adata.varm)``, held in memory (pending) until ``write()``.

    anndata's ``Raw`` keeps a reference to the X object of that moment, not a copy: an in-place change of that very
    object (``sc.pp.scale`` of a dense X) shows in raw too, a replaced X does not; a subset of the AnnData copies it.
    A snapshot does the same.  When the shadow's X had not been read yet, it keeps an :class:`_XLink` instead of
    reading it: raw.X is then read only when asked for, or sliced from the file when only a few genes are wanted.

    Parameters
    ----------
    owner
        The shadow this raw belongs to: its cells (``obs_names``, ``n_obs``) are raw's cells.
    X
        The matrix, or ``None`` while ``link`` stands for it.
    var, varm
        raw's var table and varm mapping.
    link
        Where X is read from while it is not in memory.
    """

    def __init__(self, owner: AnnDataShadow, X: Any, var: pd.DataFrame, varm: dict, link: _XLink | None = None):
        self._shadow = owner
        self._matrix = X
        self._link = link
        self._var = var
        self._varm = dict(varm)
        self._vidx = None
        self._own = {}

    @classmethod
    def of(cls, owner: AnnDataShadow, value: Any) -> RawSnapshot:
        """The snapshot ``owner.raw = value`` leaves (``value``: an AnnData, a shadow, or ``owner`` itself)."""
        import anndata

        if not isinstance(value, anndata.AnnData):
            raise ValueError(
                f"Can only init raw attribute with an AnnData object, got {type(value).__name__} "
                f"(assigning raw of '{owner._state.storage.describe()}')"
            )
        if value.n_obs != owner.n_obs:
            raise ValueError(
                f"raw must have the cells of '{owner._state.storage.describe()}': it has {value.n_obs} rows, but n_obs is "
                f"{owner.n_obs}"
            )
        link = None
        if value is owner and not owner._x_in_memory():
            link = _XLink(owner, (owner._state.oidx, owner._state.vidx), owner._x_gen)
            X = None
        else:
            X = value.X
        var = pd.DataFrame(value.var).copy(deep=False)  # as anndata's _gen_dataframe: a shallow copy
        if not len(var.columns):
            var.columns = var.columns.astype(str)
        varm = {k: value.varm[k] for k in value.varm.keys() if k is not None}
        return cls(owner, X, var, varm, link)

    # --- X ----------------------------------------------------------------------------------------------------------
    @property
    def X(self) -> Any:
        """The X kept at assignment (the object assigned, or the file's X of that moment, read on first access)."""
        link = self._link
        if link is None:
            return self._matrix
        if link.live() and link.source._x_in_memory():
            return self._settle()
        if matrix_is_only_sliced("raw.X"):  # sc.get.obs_df(use_raw=True) & co. slice a few genes out of it
            return SlicedMatrix(link.source, "X", link.sel)
        return self._settle()

    @property
    def _X(self) -> Any:
        return self.X

    @_X.setter
    def _X(self, value: Any) -> None:
        # muon's filter_obs subsets raw this way (`data.raw._X = data.raw.X[subset, :]`), as on anndata's Raw
        self._matrix, self._link = value, None

    def _get_X(self, layer: str | None = None) -> Any:
        if layer is not None:
            raise ValueError("raw has no layers")
        return self.X

    def _settle(self) -> Any:
        """Turn the link into the matrix: the source's own X while the link is live, else the file's."""
        link = self._link
        if link is not None:
            self._matrix = link.source._x_now() if link.live() else link.read()
            self._link = None
        return self._matrix

    def release(self, source: AnnDataShadow) -> None:
        """``source`` is about to replace or subset its X: keep its X of now (if in memory), else the file's."""
        link = self._link
        if link is None or link.source is not source or not link.live():
            return
        if source._x_in_memory():
            self._settle()
        else:
            link.generation = None

    # --- the rest of anndata's Raw --------------------------------------------------------------------------------
    @property
    def var(self) -> pd.DataFrame:
        """The var table kept at assignment."""
        return self._var

    @property
    def varm(self) -> dict:
        """The varm mapping kept at assignment."""
        return self._varm

    @property
    def var_names(self) -> pd.Index:
        """The gene names of the var table kept at assignment."""
        return self._var.index

    @property
    def n_vars(self) -> int:
        """Number of genes of the var table kept at assignment."""
        return len(self._var)

    def _n_vars_file(self) -> int:
        return self.n_vars

    def __getitem__(self, index: Any) -> RawSnapshot:
        if (ref := accessor_get(self, index)) is not NOT_A_REFERENCE:
            return ref
        oidx, vidx = ix.split_index(index)
        o = ix.normalize(oidx, self._shadow.obs_names, self.n_obs, 0)
        v = ix.normalize(vidx, self.var_names, self.n_vars, 1)
        return self._subset(self._shadow[oidx] if o is not None else self._shadow, o, v)

    def _subset(self, owner: AnnDataShadow, o: ix.Sel, v: ix.Sel, *, copy: bool = False) -> RawSnapshot:
        """``raw[o, v]`` for ``owner`` (anndata's ``Raw.__getitem__``; with ``copy``, then ``.copy()``)."""
        if self._link is not None and self._link.live() and self._link.source._x_in_memory():
            self._settle()
        var = self._var.iloc[ix.positions(v, self.n_vars)] if v is not None else self._var
        varm = {k: (val[ix.positions(v, self.n_vars)] if v is not None else val) for k, val in self._varm.items()}
        if self._link is not None:
            out = RawSnapshot(owner, None, var, varm, self._link.sub(o, v))
        else:
            out = RawSnapshot(owner, _anndata_subset(self._matrix, (o, v)), var, varm)
        return out.copy() if copy else out

    def copy(self) -> RawSnapshot:
        """A snapshot of its own: copies of X (or a link to the file's X), var and varm."""
        if self._link is not None:  # the file's values, read when asked for, are a copy already
            return RawSnapshot(
                self._shadow,
                None,
                self._var.copy(),
                {k: v.copy() for k, v in self._varm.items()},
                self._link.sub(None, None),
            )
        X = self._matrix.copy() if self._matrix is not None else None
        return RawSnapshot(self._shadow, X, self._var.copy(), {k: v.copy() for k, v in self._varm.items()})

    def obs_vector(self, k: str) -> np.ndarray:
        """Values of raw gene ``k`` across cells (one column read while X is still in the file)."""
        if k not in self.var_names:
            raise KeyError(f"{k!r} is not a raw var name of '{self._shadow._state.storage.describe()}'")
        j = int(self.var_names.get_loc(k))
        if self._link is not None and not (self._link.live() and self._link.source._x_in_memory()):
            col = self._link.read(
                (self._link.sel[0], ix.compose(self._link.sel[1], np.array([j]), self._link.source._state.n_vars_file))
            )
        else:
            col = self.X[:, j]
        return np.ravel(col.toarray() if sp.issparse(col) else np.asarray(col))

    def var_vector(self, k: str) -> np.ndarray:
        """The values of column ``k`` of the kept ``var``."""
        return np.asarray(self._var[k])

    def to_dict(self) -> dict:
        """``{'X': ..., 'var': ..., 'varm': ...}`` of the snapshot (X read if it is a link to the file)."""
        return {"X": self.X, "var": self._var, "varm": dict(self._varm)}

    def to_adata(self):
        """An in-memory AnnData of the snapshot (copies), with the owner's obs, obsm, obsp and uns."""
        import anndata

        sh = self._shadow  # as anndata's Raw.to_adata: the owner's obs, obsm, obsp and uns come along
        return anndata.AnnData(
            X=self.X.copy(),
            var=self._var.copy(),
            varm={k: v.copy() for k, v in self._varm.items()},
            obs=sh.obs.copy(),
            obsm=sh.obsm.copy(),
            obsp=sh.obsp.copy(),
            uns=sh.uns.to_dict(),
        )

    def __repr__(self) -> str:
        return f"Raw AnnData with n_obs × n_vars = {self.n_obs} × {self.n_vars} (in memory, not yet written)"


def empty_columns_as_str(value: Any) -> Any:
    """An obs/var without columns gets string-typed empty columns, as AnnData's constructor leaves them."""
    if isinstance(value, pd.DataFrame) and len(value.columns) == 0:
        value.columns = value.columns.astype(str)
    return value
