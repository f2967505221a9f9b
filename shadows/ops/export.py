"""Whole-object answers that anndata computes from its in-memory elements: CSV export and memory size.

* :func:`write_csvs` writes the files ``AnnData.write_csvs`` writes; the annotations go through anndata's own
  writer (same files, byte for byte), ``X`` is written in blocks of rows so that it is never dense in memory whole.
* :func:`sizes` counts what a shadow holds in memory (its cache and its pending changes) per part, and optionally
  the uncompressed size of what is still only in the file, from the file's metadata (nothing is read).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from shadows.core.mapping import ALIGNMENT, untrack
from shadows.core.state import state_of
from shadows.io.storage import is_array, is_group
from shadows.settings import settings
from shadows.spec.sparse import COLUMN_INDEX

if TYPE_CHECKING:
    from shadows.core.anndata import AnnDataShadow

# the parts AnnData.__sizeof__ reports, in its order; a shadow adds raw (anndata counts no raw)
PARTS = ("X", "obs", "var", "uns", "obsm", "varm", "varp", "obsp", "layers", "raw")
_MATRIX_GROUPS = ("layers", "obsm", "varm", "obsp", "varp")


# --- write_csvs -------------------------------------------------------------------------------------------------------
def write_csvs(shadow: AnnDataShadow, dirname: str | os.PathLike, *, skip_data: bool = True, sep: str = ",") -> Path:
    """``AnnData.write_csvs`` for a shadow: annotations through anndata, X streamed block by block; the directory."""
    import anndata
    from anndata.io import write_csvs as anndata_write_csvs

    twin = state_of(shadow).twin(numpy=True)
    annotations = anndata.AnnData(
        obs=twin.obs.copy(),
        var=twin.var.copy(),
        obsm={k: twin.obsm[k] for k in twin.obsm.keys()},
        varm={k: twin.varm[k] for k in twin.varm.keys()},
        uns=untrack(dict(twin.uns.items())),
    )
    anndata_write_csvs(dirname, annotations, skip_data=True, sep=sep)
    if not skip_data:
        _write_x_csv(twin, _csv_dir(dirname) / "X.csv", sep)
    return _csv_dir(dirname)


def _csv_dir(dirname: str | os.PathLike) -> Path:
    d = Path(os.fspath(dirname))
    return d.with_suffix("") if d.suffix == ".csv" else d  # as anndata names the directory


def _write_x_csv(twin: AnnDataShadow, path: Path, sep: str) -> None:
    """X as anndata writes it (``pd.DataFrame(X).to_csv(header=False, index=False)``), one block of rows at a time.

    Each value is formatted on its own, so the blocks concatenated are the file anndata writes in one call.
    """
    from shadows.stream.shadow import chunked

    has_x = (
        state_of(twin).pending[("X", "")] is not None
        if ("X", "") in state_of(twin).pending
        else "X" in state_of(twin).root()
    )
    if not has_x:
        pd.DataFrame(None).to_csv(path, sep=sep, header=False, index=False)
        return
    # a dense block costs 8 bytes a value, and its text several times that: stay well within the budget
    rows = max(1, settings.memory_budget // (64 * max(1, twin.n_vars)))
    # newline="": pandas writes its own line terminator (as when it opens the file itself)
    with open(path, "w", newline="", encoding="utf-8") as f:
        for _, _, block in chunked(twin, rows, element="X"):
            dense = block.toarray() if sp.issparse(block) else np.asarray(block)
            pd.DataFrame(dense).to_csv(f, sep=sep, header=False, index=False)


# --- __sizeof__ -------------------------------------------------------------------------------------------------------
def sizes(shadow: AnnDataShadow, *, with_disk: bool = False) -> dict[str, int]:
    """Bytes per part (``X``, ``obs``, ``var``, ``uns``, ``obsm``... ``raw``) held in memory by ``shadow``.

    With ``with_disk``, parts not in memory add their uncompressed stored size (a view: its share of it).
    """
    out = dict.fromkeys(PARTS, 0)
    held: set[tuple[str, str]] = set()
    for store in (state_of(shadow).cache, state_of(shadow).inherited, state_of(shadow).pending):
        for (group, key), value in store.items():
            part = {"obs_names": "obs", "var_names": "var"}.get(group, group)
            if part in out and (group, key) not in held:
                held.add((group, key))
                out[part] += value_nbytes(value)
    if with_disk and state_of(shadow).storage.is_open:
        for part, group, key, path in _stored_elements(shadow):
            if (group, key) not in held and (group, key) not in state_of(shadow).deleted:
                out[part] += int(stored_nbytes(state_of(shadow).root()[path]) * _share(shadow, group))
    return out


def value_nbytes(value: Any) -> int:
    """Bytes held by an in-memory value (a lazily read value, e.g. a dask array or a LazyArray, holds none)."""
    if value is None:
        return 0
    if sp.issparse(value):
        return sum(
            int(getattr(value, a).nbytes) for a in ("data", "indices", "indptr", "row", "col") if hasattr(value, a)
        )
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if isinstance(value, pd.DataFrame | pd.Series):
        return int(np.sum(value.memory_usage(deep=True)))
    if isinstance(value, pd.Index):
        return int(value.memory_usage(deep=True))
    if isinstance(value, dict):
        return sum(value_nbytes(v) for v in value.values())
    module = type(value).__module__ or ""
    if module.startswith(("dask", "shadows")):  # computed or sliced on demand: nothing held yet
        return 0
    nbytes = getattr(value, "nbytes", None)
    return int(nbytes) if isinstance(nbytes, int | np.integer) else sys.getsizeof(value)


def stored_nbytes(elem: Any) -> int:
    """Uncompressed bytes of a stored element: its arrays' shape × item size (a column index not counted)."""
    if is_array(elem):
        return int(np.prod(elem.shape, dtype=np.int64)) * int(elem.dtype.itemsize)
    if is_group(elem):
        return sum(stored_nbytes(elem[k]) for k in elem.keys() if k != COLUMN_INDEX)
    return 0


def _stored_elements(shadow: AnnDataShadow) -> list[tuple[str, str, str, str]]:
    """``(part, group, key, path)`` of every element in the file, as the cache keys them."""
    root = state_of(shadow).root()
    out = [("X", "X", "", "X")] if "X" in root else []
    out += [(f, f, "", f) for f in ("obs", "var") if f in root]
    for group in (*_MATRIX_GROUPS, "uns"):
        out += [(group, group, k, state_of(shadow).elem_path(group, k)) for k in state_of(shadow).disk_keys(group)]
    if "raw" in root and is_group(root["raw"]):
        out += [("raw", "raw", k, f"raw/{k}") for k in root["raw"].keys()]
    return [e for e in out if e[3] in root]


def _share(shadow: AnnDataShadow, group: str) -> float:
    """Fraction of a stored element of ``group`` that a view selects (1 for a whole shadow)."""
    fractions = (
        shadow.n_obs / max(1, state_of(shadow).n_obs_file),
        shadow.n_vars / max(1, state_of(shadow).n_vars_file),
    )
    axes = {"X": (0, 1), "obs": (0,), "var": (1,), "raw": (0,)}.get(group, ALIGNMENT.get(group, ()))
    return float(np.prod([fractions[a] for a in axes])) if axes else 1.0
