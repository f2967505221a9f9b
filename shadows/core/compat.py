"""What anndata and scanpy do to an AnnData that a shadow has to answer in its own way.

* **Copy-on-write of views.**  anndata and scanpy turn a view into an object of its own before changing it
  (``adata._init_as_actual(adata.copy())``: ``sc.pp.neighbors``, ``sc.pp.normalize_total`` and friends on a view).
  A shadow view *detaches*: it stays a shadow of the same selection of the file, no longer a view, and takes
  assignments as pending changes.  Those changes belong to a subset of the file, so ``write()`` refuses them;
  ``write_h5ad``/``write_zarr`` or ``to_memory()`` keep them.
* **In-place subsetting.**  ``sc.pp.filter_cells``, ``filter_genes``, ``subsample``, ``highly_variable_genes(subset=True)``
  and the recipes call ``adata._inplace_subset_obs/var``: the shadow becomes a detached shadow of the subset.
  Selecting everything changes nothing (``normalize_per_cell`` always "subsets").
* **Column-only reads.**  ``sc.get.obs_df`` / ``var_df`` (and every plot built on them: violin, dotplot, matrixplot,
  heatmap, ...) take ``adata.X`` (or ``adata.raw.X``) only to slice a few genes (cells) out of it, and so does
  muon's ``mu.pl.embedding`` with a modality's ``raw.X``.  When a shadow's matrix is asked for from there, it hands
  out a :class:`SlicedMatrix`, so only those columns are read.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from shadows.spec import selection as ix

if TYPE_CHECKING:
    from shadows.core.anndata import AnnDataShadow

# the one public name: the functions below are AnnDataShadow's internals (documented here for maintainers only)
__all__ = ["SlicedMatrix"]

# scanpy functions that take the whole matrix from `_get_obs_rep` only to slice a few columns (rows) out of it
_SLICING_CALLERS = {("scanpy.get.get", "obs_df"), ("scanpy.get.get", "var_df")}
# functions that read a matrix attribute themselves only to slice it right away: (module, function, attribute)
# muon's embedding plot: `data.mod[m].raw.X[:, keysidx]` for the genes it colours by
_DIRECT_SLICERS = {("muon._core.plot", "embedding", "raw.X")}


def matrix_is_only_sliced(what: str = "X", depth: int = 2) -> bool:
    """Whether the matrix property ``what`` (``"X"`` or ``"raw.X"``) is being read only to be sliced right away.

    ``depth`` is the number of frames between the caller of this function and the code that asked for the matrix
    (2 from a property getter).  Any surprise answers ``False``: the caller then reads the whole matrix, which is
    always correct, only not bounded.
    """
    try:
        asker = sys._getframe(depth)
        name, module = asker.f_code.co_name, asker.f_globals.get("__name__")
        if (module, name, what) in _DIRECT_SLICERS:
            return True
        if name != "_get_obs_rep" or module != "scanpy.get.get":
            return False
        caller = asker.f_back
        return (caller.f_globals.get("__name__"), caller.f_code.co_name) in _SLICING_CALLERS
    except (ValueError, AttributeError):  # a shallower stack than expected
        return False


NOT_A_REFERENCE = object()


def accessor_get(obj: Any, index: Any) -> Any:
    """What anndata (>= 0.13) returns for an accessor reference: ``adata[A.obs["x"]]``, ``adata[A.X[:, "gene"]]``.

    scanpy 1.12 colours its plots through these (``adata.raw[A.X[:, gene]]``); anndata answers them through the
    object's own ``obs``, views and mappings, so a shadow reads one gene for them as for ``obs_vector``.  Returns
    :data:`NOT_A_REFERENCE` for ordinary indexers (and with anndata versions that have no accessors).
    """
    try:
        from anndata.acc import AdRef, MapAcc, RefAcc
    except ImportError:
        return NOT_A_REFERENCE
    if isinstance(index, AdRef):
        return index.acc.get(obj, index.idx)
    if isinstance(index, RefAcc):
        return index.get(obj)
    if isinstance(index, MapAcc):
        raise IndexError(f"Cannot index with {index} because this is not a path to an array-like structure.")
    return NOT_A_REFERENCE


class SlicedMatrix:
    """A stored matrix that reads only what it is sliced with, through its shadow's own connection.

    Unlike :class:`~shadows.spec.lazy_array.LazyArray` (which reads through a per-thread connection cache, so that it pickles)
    it keeps no file open of its own: ``reopen("r+")`` of the shadow still works afterwards.
    """

    def __init__(self, shadow: AnnDataShadow, path: str, sel: tuple):
        from shadows.io.storage import is_group
        from shadows.spec import matrix_info

        self._shadow, self._path, self._sel = shadow, path, sel
        elem = shadow._state.root()[path]
        if is_group(elem):
            self.stored_shape = matrix_info(elem)[1]
            self.dtype = elem["data"].dtype
        else:
            self.stored_shape, self.dtype = tuple(elem.shape), elem.dtype
        self.shape = tuple(ix.length(s, n) for s, n in zip(sel, self.stored_shape, strict=True))
        self.ndim = 2

    def __getitem__(self, key: Any) -> Any:
        from shadows.spec import read_element

        key = key if isinstance(key, tuple) else (key, slice(None))
        sub = [ix.normalize(k, None, n, axis) for axis, (k, n) in enumerate(zip(key, self.shape, strict=True))]
        sel = tuple(ix.compose(s, k, n) for s, k, n in zip(self._sel, sub, self.stored_shape, strict=True))
        return read_element(self._shadow._state.root()[self._path], sel, self._shadow._state.ctx())


def detach(shadow: AnnDataShadow) -> None:
    """Turn a view into a shadow of its own (anndata's copy-on-write) without reading its elements."""
    if not shadow.is_view:
        return
    # a view drops unused categories and trims `<col>_colors`; a detached shadow reads like the view it was
    shadow.obs, shadow.var  # noqa: B018 - read (and cache) while the view's rules apply
    for key in shadow.uns.keys():
        if str(key).endswith("_colors"):
            shadow.uns[key]  # noqa: B018
    shadow._detached = True


def subset_in_place(shadow: AnnDataShadow, index: Any, axis: int) -> None:
    """``adata._inplace_subset_obs/var(index)`` on a shadow: it becomes a detached shadow of that subset."""
    if axis == 0:
        sel = ix.normalize(index, shadow.obs_names, shadow.n_obs, 0)
        if ix.is_identity(sel, shadow.n_obs):
            return
        view = shadow[index, :]
    else:
        sel = ix.normalize(index, shadow.var_names, shadow.n_vars, 1)
        if ix.is_identity(sel, shadow.n_vars):
            return
        view = shadow[:, index]
    detach(view)
    old, owned = shadow._state.storage, shadow._state.owns_storage
    # the view holds the parent's pending changes, sliced (as `_inherited`), and its own connection to the file
    shadow.__dict__.update(view.__dict__)
    shadow._state = view._state.copy().bind(shadow)  # its own state now, owning the view's connection
    view._state.owns_storage = False
    if owned:
        old.close()


def check_attached(shadow: AnnDataShadow) -> None:
    """Refuse to write changes of a detached subset into the full file."""
    if shadow.__dict__.get("_detached"):
        raise ValueError(
            f"This shadow of '{shadow._state.storage.describe()}' is a subset of the file (a view changed in place, or "
            "filtered in place by e.g. sc.pp.filter_cells): its changes cannot be written into the full file. "
            "Save it to a new file with .write_h5ad(path) / .write_zarr(path), or use .to_memory()"
        )
