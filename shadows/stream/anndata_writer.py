"""Writing a shadow (or a view) as an AnnData into an open group, element by element, in bounded memory.

:func:`write_anndata` is the body of ``write_h5ad``/``write_zarr`` (through :func:`shadows.stream.shadow.write_subset`),
of :func:`shadows.convert` and of :mod:`shadows.pp`, and what MuData writers call for each modality.

Each element takes the cheapest faithful route:

* taken whole and unchanged: copied as stored (:mod:`shadows.io.fast.h5copy`), no decoding;
* a matrix (X, layers, obsm, varm, obsp, varp, raw/X) that is selected, converted or transformed: streamed block
  by block (:mod:`shadows.stream.matrix`);
* anything else (tables, ``uns``, strings, data frames in obsm, pending in-memory values): read (only the
  selected part) and written by ``anndata.io.write_elem``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anndata
import numpy as np
import pandas as pd
import scipy.sparse as sp

from shadows.core.mapping import untrack
from shadows.core.state import state_of
from shadows.io.fast.h5copy import RawCopier
from shadows.io.storage import attr, is_group
from shadows.progress import progress_bar
from shadows.spec import read_element, read_frame_parts
from shadows.stream.blocks import MatrixPart, is_matrix, part_of, span_cuts
from shadows.stream.elements import pending_value, sels_for, stored_path
from shadows.stream.matrix import WriteOptions, write_in_memory, write_stored
from shadows.stream.sink import set_encoding

if TYPE_CHECKING:
    from shadows.core.anndata import AnnDataShadow

_MAPPINGS = ("obsm", "varm", "obsp", "varp", "layers")


def write_anndata(
    shadow: AnnDataShadow,
    group: Any,
    *,
    options: WriteOptions | None = None,
    progress: bool | None = None,
) -> None:
    """Write a shadow (or a view) as an AnnData into ``group``, an open h5py/zarr group (e.g. ``mod/rna``).

    This is :func:`shadows.stream.shadow.write_subset` without opening a file: MuData writers call it for each
    modality.  The group gets anndata's root attributes (``encoding-type: anndata``); zarr metadata are not
    consolidated here (the caller does it once for the whole store).

    Parameters
    ----------
    shadow
        The shadow or view to write (pending in-memory changes included).
    group
        An empty h5py or zarr group.
    options
        Conversions, transforms, compression (see :class:`~shadows.stream.matrix.WriteOptions`).
    progress
        Show a progress bar (``None``: follow ``shadows.settings``).
    """
    opts = options or WriteOptions()
    twin = state_of(shadow).twin(numpy=True)
    root = state_of(shadow).root()
    copier = RawCopier(root, group)
    copier.enabled = copier.enabled and not opts.compression
    parts = _planned_matrices(twin, root, opts.get_budget())
    streamed = {p: part for p, part in parts.items() if not _copyable(part, p, opts)}
    total = sum(part.stored_bytes() * (3 if _changes_layout(part, p, opts) else 1) for p, part in streamed.items())
    bar = progress_bar(total, f"writing {Path(str(state_of(shadow).storage.filename)).name}", progress=progress)
    w = _Writer(twin, root, opts, parts, copier, bar)

    def rest() -> None:
        w.frame(group, "var")
        for g in _MAPPINGS:
            sub = group.create_group(g)
            set_encoding(sub, "dict", "0.1.0")
            for key in state_of(twin).mapping(g).keys():
                w.matrix(sub, str(key), f"{g}/{key}")
        w.uns(group)
        w.raw(group)
        # obs last: the longest copy (a string per cell), which holds HDF5's lock, begins after X's arrays are set
        # up when the two run side by side
        w.frame(group, "obs")

    try:
        set_encoding(group, "anndata", "0.1.0")
        if set(streamed) == {"X"} and _only_copies_besides_x(twin, opts, copier):
            # X alone is streamed (a conversion) and everything else is copied as stored (HDF5's object copy,
            # tens of ms for a table of strings, without the GIL: see shadows.io.fast.h5copy): the copies run beside X's
            # conversion, whose threads leave a core partly idle, instead of after it
            from concurrent.futures import ThreadPoolExecutor

            # The copies begin once X's first block is read: HDF5 calls wait for each other (h5py's lock), and a
            # copy of a large table would hold up the creation of X's arrays and its reader's set-up (measured:
            # 55 ms of a 600 ms conversion); after that, X's reads and writes go past HDF5 (shadows.io.fast.pread,
            # shadows.io.fast.pwrite)
            x_running = threading.Event()

            def rest_once_x_runs() -> None:
                x_running.wait()
                rest()

            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="shadows-copy") as pool:
                copies = pool.submit(rest_once_x_runs)
                try:
                    w.matrix(group, "X", "X", started=x_running.set)
                finally:
                    x_running.set()
                    copies.result()  # waited for even when X failed: the output is closed only after both
        else:
            w.matrix(group, "X", "X")
            rest()
    finally:
        bar.close()


def _only_copies_besides_x(twin: AnnDataShadow, opts: WriteOptions, copier: RawCopier) -> bool:
    """Whether every element but X is taken whole and unchanged (copied as stored, in little memory)."""
    return (
        copier.enabled
        and not twin.is_view
        and state_of(twin).oidx is None
        and state_of(twin).vidx is None
        and not (state_of(twin).pending or state_of(twin).inherited or state_of(twin).deleted)
        and not opts.obs_columns
        and not opts.uns
        and set(opts.transforms) <= {"X"}
        and set(opts.formats) <= {"X"}
    )


def _whole(sels: tuple) -> bool:
    return all(s is None for s in sels)


def _copyable(part: MatrixPart, path: str, opts: WriteOptions) -> bool:
    return _whole(part.sels) and opts.formats.get(path, part.kind) == part.kind and path not in opts.transforms


def _changes_layout(part: MatrixPart, path: str, opts: WriteOptions) -> bool:
    fmt = opts.formats.get(path, part.kind)
    return fmt != part.kind and {fmt, part.kind} != {"csr", "dense"}


def _planned_matrices(twin: AnnDataShadow, root: Any, budget: int) -> dict[str, MatrixPart]:
    """The stored matrices to write (not pending, not deleted), by element path."""
    paths = ["X"] + [f"{g}/{k}" for g in _MAPPINGS for k in state_of(twin).mapping(g).keys()]
    raw_x = _raw_x_path(twin, root)
    if raw_x is not None:
        paths.append(raw_x)
    out = {}
    for path in paths:
        if path not in ("raw/X", "raw.X") and pending_value(twin, path)[0]:
            continue
        stored = stored_path(twin, path)
        if stored not in root or not is_matrix(root[stored]):
            continue
        out[path] = part_of(root[stored], sels_for(twin, path), state_of(twin).ctx(), budget)
    return out


def _raw_x_path(twin: AnnDataShadow, root: Any) -> str | None:
    if ("raw", "") in state_of(twin).pending:
        return None
    if "raw" in root and is_group(root["raw"]) and "X" in root["raw"]:
        return "raw/X"
    if "raw.X" in root:
        return "raw.X"
    return None


class _Writer:
    """Writes the elements of one AnnData, each by its cheapest faithful route."""

    def __init__(self, twin, root, opts: WriteOptions, parts: dict, copier: RawCopier, bar):
        self.twin, self.root, self.opts, self.parts, self.copier, self.bar = twin, root, opts, parts, copier, bar

    def matrix(self, parent: Any, name: str, path: str, started: Callable[[], None] | None = None) -> None:
        """Write one matrix element; ``started``: see :func:`~shadows.stream.matrix.write_stored`."""
        twin, root, opts = self.twin, self.root, self.opts
        found, value = pending_value(twin, path)
        if found:
            if value is not None:
                write_in_memory(value, parent, name, path, opts)
            return
        if path == "X" and "X" not in root:
            return
        if stored_path(twin, path) not in root:  # e.g. a field of an anndata < 0.7 compound obsm: the shadow reads it
            group, key = path.split("/", 1)
            anndata.io.write_elem(parent, name, state_of(twin).get(group, key), dataset_kwargs=opts.dataset_kwargs)
            return
        elem = root[stored_path(twin, path)]
        part = self.parts.get(path)
        whole = _whole(sels_for(twin, path))
        if (part is None or _copyable(part, path, opts)) and whole and self.copier.copy(elem, parent, name):
            return
        if part is not None:
            write_stored(part, parent, name, path, opts, self.bar, started)
            return
        # not a matrix (a data frame in obsm, strings, awkward arrays...): read the selected part, anndata writes it
        value = read_element(elem, sels_for(twin, path), state_of(twin).ctx())
        anndata.io.write_elem(parent, name, value, dataset_kwargs=opts.dataset_kwargs)

    def frame(self, parent: Any, name: str) -> None:
        twin, opts = self.twin, self.opts
        sel = state_of(twin).oidx if name == "obs" else state_of(twin).vidx
        touched = any(
            (name, "") in store for store in (state_of(twin).pending, state_of(twin).inherited, state_of(twin).cache)
        )
        extra = name == "obs" and bool(opts.obs_columns)
        # a view (even of every row) drops unused categories, as anndata's views do: no copy as stored then
        whole = sel is None and not twin.is_view
        if whole and not touched and not extra and self.copier.copy(self.root[name], parent, name):
            return
        df = _frame_blockwise(twin, self.root, name, sel) if not touched else None
        if df is None:
            df = pd.DataFrame(
                state_of(twin).frame(name)
            )  # a plain DataFrame (not anndata's view class) sharing the columns
        if extra:
            df = df.copy()
            for k, v in opts.obs_columns.items():
                df[k] = np.asarray(v)
        if opts.convert_strings:
            df = df.copy(deep=False)  # columns are replaced below, never the shadow's own table
            anndata.AnnData().strings_to_categoricals(df)  # anndata's own rule, on this table only
        anndata.io.write_elem(parent, name, df, dataset_kwargs=opts.dataset_kwargs)

    def uns(self, parent: Any) -> None:
        twin, opts = self.twin, self.opts
        changed = any(
            g == "uns" for g, _ in (*state_of(twin).pending, *state_of(twin).inherited, *state_of(twin).deleted)
        )
        if not twin.is_view and not changed and not opts.uns and "uns" in self.root:
            if self.copier.copy(self.root["uns"], parent, "uns"):
                return
        uns = untrack(dict(twin.uns.items()))
        uns.update(opts.uns)
        anndata.io.write_elem(parent, "uns", uns, dataset_kwargs=opts.dataset_kwargs)

    def raw(self, group: Any) -> None:
        twin, root, opts = self.twin, self.root, self.opts
        if ("raw", "") in state_of(twin).pending:
            value = state_of(twin).pending[("raw", "")]
            if value is not None:
                anndata.io.write_elem(group, "raw", _raw_dict(value), dataset_kwargs=opts.dataset_kwargs)
                group["raw"].attrs["encoding-type"] = "raw"
            return
        raw_x = _raw_x_path(twin, root)
        if twin.raw is None:
            return
        modern = "raw" in root and is_group(root["raw"])
        if state_of(twin).oidx is None and modern and self.copier.copy(root["raw"], group, "raw"):
            return
        g = group.create_group("raw")
        set_encoding(g, "raw", "0.1.0")
        if raw_x is not None:
            part = self.parts.get(raw_x)
            if part is not None:
                write_stored(part, g, "X", raw_x, opts, self.bar)
            else:
                value = read_element(root[raw_x], (state_of(twin).oidx,), state_of(twin).ctx())
                anndata.io.write_elem(g, "X", value, dataset_kwargs=opts.dataset_kwargs)
        prefix = "raw/" if modern else "raw."
        for name in ("var", "varm"):
            if f"{prefix}{name}" in root and self.copier.copy(root[f"{prefix}{name}"], g, name):
                continue
            value = pd.DataFrame(twin.raw.var) if name == "var" else dict(twin.raw.varm)
            anndata.io.write_elem(g, name, value, dataset_kwargs=opts.dataset_kwargs)


# Rows of the file a table read may span: a read decodes every string of its span (the readers coalesce
# scattered rows), so a view's table is read in pieces of bounded span.
_FRAME_SPAN = 2**13


def _frame_blockwise(twin: AnnDataShadow, root: Any, name: str, sel: Any) -> pd.DataFrame | None:
    """The selected rows of a table, read in pieces of bounded span (``None``: read it the usual way)."""
    g = root[name]
    if sel is None or not isinstance(sel, np.ndarray) or attr(g, "encoding-type") != "dataframe":
        return None
    n = int(g[attr(g, "_index")].shape[0]) if not is_group(g[attr(g, "_index")]) else None
    if n is None or n <= _FRAME_SPAN:
        return None
    cuts = span_cuts(sel, sel + 1, _FRAME_SPAN)
    if len(cuts) > max(1, len(sel) // 16):  # scattered in no order: pieces would be tiny, read it whole
        return None
    ctx = state_of(twin).ctx()
    pieces = [read_frame_parts(g, (sel[a:b],), ctx).to_pandas() for a, b in cuts]
    df = pd.concat(pieces) if len(pieces) > 1 else pieces[0]
    if anndata.settings.remove_unused_categories:
        for c in df.columns:
            if isinstance(df[c].dtype, pd.CategoricalDtype):
                df[c] = df[c].cat.remove_unused_categories()
    return df


def _raw_dict(value: Any) -> dict:
    """X, var and varm of a pending raw value (an AnnData, a Raw, a RawShadow or a dict)."""
    if isinstance(value, dict):
        return {"X": value.get("X"), "var": pd.DataFrame(value.get("var")), "varm": dict(value.get("varm") or {})}
    X = value.X
    if not (sp.issparse(X) or isinstance(X, np.ndarray)):
        X = np.asarray(X)
    varm = getattr(value, "varm", None)
    return {"X": X, "var": pd.DataFrame(value.var), "varm": dict(varm) if varm is not None else {}}
