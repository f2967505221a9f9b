"""What a collection of files shares between itself and its views: the files, the join, and what is read once.

:class:`Core` opens each source as a lazy :class:`~shadows.AnnDataShadow` (lengths only), joins the names of the
other axis (``anndata.concat``'s ``merge_indices``), and reads everything else on first need, once: the concatenated
names and tables (through anndata's own ``unify_dtypes`` and ``pd.concat``), the merged ``uns`` and tables and
mappings of the joined axis (anndata's merge strategies), and, per matrix element, a
:class:`~shadows.collection.source.Stacked` description (format, dtype, fill, where each file's columns go) from
which any rows are read.

It is parameterised by the axis of the concatenation (``Core.cat``: ``"obs"``, or ``"var"`` for
``concat(..., axis="var")``; ``Core.alt`` the joined axis): names, labels, tables read column by column and merged
mappings are the same code for both; only the matrices along var are read differently
(:class:`~shadows.collection.side.SideBySide`), and ``varm``/``varp`` along var are concatenated by anndata itself
(:meth:`Core.cat_mapping`).
"""

from __future__ import annotations

import glob
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from anndata._core import merge as admerge

from shadows.collection.side import side_by_side
from shadows.collection.source import Columns, Stacked, concat_kind, pairwise_dtype, source_of, standin
from shadows.core.anndata import AnnDataShadow
from shadows.core.state import state_of
from shadows.spec.lazy_array import LazyArray

_GLOB_CHARS = set("*?[")


def expand_sources(sources: Any, keys: Any) -> tuple[list[Any], list[str] | None]:
    """Sources as a list (globs expanded in sorted order), and keys taken from a mapping's keys."""
    if isinstance(sources, Mapping):
        if keys is not None:
            raise TypeError("Cannot give keys both as the keys of a mapping of sources and as `keys`; give one")
        keys = [str(k) for k in sources.keys()]
        sources = list(sources.values())
    elif isinstance(sources, str | os.PathLike | AnnDataShadow):
        sources = [sources]
    out: list[Any] = []
    for src in sources:
        if isinstance(src, str) and _GLOB_CHARS & set(src) and not Path(src).exists():
            found = sorted(glob.glob(src))
            if not found:
                raise FileNotFoundError(f"The pattern '{src}' matches no file")
            if keys is not None:
                raise ValueError(f"keys name each source, but the pattern '{src}' stands for {len(found)} files")
            out.extend(found)
        else:
            out.append(src)
    if not out:
        raise ValueError("concat needs at least one source (a path, a glob pattern or an AnnDataShadow)")
    return out, None if keys is None else list(keys)


def open_part(src: Any, fmt: str | None) -> AnnDataShadow:
    """A lazy shadow of one source: its arrays come as :class:`LazyArray` (a picklable source, nothing read)."""
    if isinstance(src, AnnDataShadow):
        # read-only use of a shadow's private state: where it reads from, and which part of it a view selects
        if state_of(src).pending or state_of(src).deleted or state_of(src).inherited:
            raise ValueError(
                f"'{state_of(src).storage.describe()}' has changes held in memory; write them (.write()) or pass "
                "shadow.to_memory() to anndata.concat instead"
            )
        lazy = AnnDataShadow(state_of(src).storage.describe(), format=state_of(src).storage.format, lazy=True)
        if src.is_view:
            lazy = lazy[
                state_of(src).oidx if state_of(src).oidx is not None else slice(None),
                state_of(src).vidx if state_of(src).vidx is not None else slice(None),
            ]
        return lazy
    if not isinstance(src, str | os.PathLike):
        raise TypeError(
            f"A source of a collection is a path, a glob pattern or an AnnDataShadow, got {type(src).__name__}"
        )
    return AnnDataShadow(src, format=fmt, lazy=True)


def materialize(value: Any) -> Any:
    """A lazy shadow's value in memory (arrays nested in dicts too)."""
    if isinstance(value, LazyArray):
        return value.to_memory()
    if isinstance(value, Mapping):
        return {k: materialize(v) for k, v in value.items()}
    return value


class Core:
    """The files of a collection, their join, and what is read once and shared by the collection and its views."""

    def __init__(
        self,
        sources: list[Any],
        *,
        join: str,
        merge: Any,
        uns_merge: Any,
        label: str | None,
        keys: list[str] | None,
        index_unique: str | None,
        fill_value: Any,
        pairwise: bool,
        format: str | None,
        axis: int = 0,
    ):
        if join not in ("inner", "outer"):
            raise ValueError(f"join must be 'inner' or 'outer', got {join!r}")
        if keys is not None and len(keys) != len(sources):
            raise ValueError(f"keys has {len(keys)} names for {len(sources)} sources")
        self.join, self.label, self.index_unique = join, label, index_unique
        self.set_axis(axis)
        self.fill_value, self.pairwise = fill_value, pairwise
        self.merge = admerge.resolve_merge_strategy(merge)
        self.uns_merge = admerge.resolve_merge_strategy(uns_merge)
        self.merge_given, self.uns_merge_given = merge is not None, uns_merge is not None
        self.parts: list[AnnDataShadow] = []
        try:
            for src in sources:
                self.parts.append(open_part(src, format))
        except Exception:
            self.close()
            raise
        self.names = [state_of(p).storage.describe() for p in self.parts]
        self.keys = [str(k) for k in keys] if keys is not None else [str(i) for i in range(len(self.parts))]
        if len(set(self.keys)) != len(self.keys):
            raise ValueError(f"keys must be unique, got {self.keys}")
        lengths = np.array([p.shape[self.axis] for p in self.parts], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        self.joined, self.maps = self._join()
        self.cache: dict[Any, Any] = {}
        self._check_x()
        self._check_raw()

    # --- the join ---------------------------------------------------------------------------------------------------
    def _join(self) -> tuple[pd.Index, list[np.ndarray | None]]:
        file_vars = self.file_alt_names()
        joined = admerge.merge_indices(file_vars, join=self.join)
        maps: list[np.ndarray | None] = []
        for name, v in zip(self.names, file_vars, strict=True):
            if v.equals(joined):
                maps.append(None)  # the file's names are the joined names, in order
                continue
            if not v.is_unique:
                dup = list(v[v.duplicated()].unique()[:5])
                raise ValueError(
                    f"Cannot join the {self.alt} names of '{name}': they are not unique (e.g. {dup}); make them "
                    f"unique (AnnData.{self.alt}_names_make_unique) before concatenating"
                )
            maps.append(v.get_indexer(joined).astype(np.int64))
        if self.join == "inner" and len(joined) == 0 and len(self.parts) > 1:
            warnings.warn(
                f"The {len(self.parts)} files share no {self.alt} names: an inner join keeps 0 "
                f"{'genes' if self.alt == 'var' else 'cells'} "
                f"({', '.join(self.names[:4])}{', ...' if len(self.names) > 4 else ''}); use join='outer' to keep all",
                UserWarning,
                stacklevel=4,
            )
        return joined, maps

    def _check_x(self) -> None:
        has_x = [p.X is not None for p in self.parts]
        if any(has_x) and not all(has_x):
            without = [n for n, h in zip(self.names, has_x, strict=True) if not h]
            raise ValueError(
                f"Cannot concatenate files with and without X: {without} {'has' if len(without) == 1 else 'have'} "
                "no X (anndata.concat refuses this too)"
            )

    def _check_raw(self) -> None:
        """anndata.concat joins raw only if every file has one, and warns if only some do."""
        has_raw = [p.raw is not None for p in self.parts]
        self.has_raw = all(has_raw)
        if any(has_raw) and not self.has_raw:
            warnings.warn(
                "Only some AnnData objects have `.raw` attribute, not concatenating `.raw` attributes. (files with "
                f"raw: {[n for n, h in zip(self.names, has_raw, strict=True) if h]})",
                UserWarning,
                stacklevel=4,
            )

    def set_axis(self, axis: int) -> None:
        """Along which axis the files are concatenated: ``cat`` names it (``"obs"``/``"var"``), ``alt`` the other
        (whose names are joined)."""
        self.axis = axis
        self.cat, self.alt = ("obs", "var") if axis == 0 else ("var", "obs")
        # the groups read per file for the parts asked (stacked along the concatenated axis); the others
        # (varm/varp, and for axis=1 also obsm/obsp) are read whole and joined in memory by anndata
        self.stacked_groups = ("layers", "obsm", "obsp") if axis == 0 else ("layers",)

    @property
    def shape(self) -> tuple[int, int]:
        """``(n_obs, n_vars)`` of the concatenation."""
        n = (self.n_cat, len(self.joined))
        return n if self.axis == 0 else n[::-1]

    def names_of(self, name: str) -> pd.Index:
        """The ``"obs"`` or ``"var"`` names of the concatenation."""
        return self.cat_names() if name == self.cat else self.joined

    def table_of(self, name: str) -> pd.DataFrame:
        """The ``"obs"`` or ``"var"`` table of the concatenation (read whole)."""
        return self.cat_table() if name == self.cat else self.alt_table()

    def file_alt_names(self) -> list[pd.Index]:
        """Each file's names along the joined axis (what is joined)."""
        return [getattr(p, f"{self.alt}_names") for p in self.parts]

    # the class of the join of the files' raw: shadows.collection.raw.RawCore, set there (it subclasses Core, so
    # this module cannot import it without importing itself)
    raw_core: type | None = None
    side_raw_core: type | None = None

    def raw(self) -> Core | None:
        """The join of the files' ``raw`` (as ``anndata.concat`` joins it), or ``None`` unless every file has one."""
        if not self.has_raw or self.shape[0] == 0:
            return None  # (anndata's AnnData drops a raw of no cells: an inner join of files sharing no cell)
        if "raw" not in self.cache:
            self.cache["raw"] = (self.raw_core if self.axis == 0 else self.side_raw_core)(self)
        return self.cache["raw"]

    @property
    def n_cat(self) -> int:
        """Length of the concatenated axis, the cells of all files together (along var, their genes)."""
        return int(self.offsets[-1])

    def close(self) -> None:
        """Close every file of the collection."""
        for p in self.parts:
            p.close()

    def columns_for(self, f: int, cols: Any) -> tuple[Columns, bool]:
        """File ``f``'s :class:`Columns` for a selection ``cols`` of the joined axis (and whether it has them all)."""
        cmap = self.maps[f]
        if cmap is None:
            return Columns(read=cols, place=None), True
        wanted = cmap if cols is None else cmap[_positions(cols, len(self.joined))]
        present = wanted >= 0
        if present.all():
            return Columns(read=wanted, place=None), True
        return Columns(read=wanted[present], place=np.flatnonzero(present)), False

    # --- names and tables -------------------------------------------------------------------------------------------
    def label_col(self) -> pd.Categorical:
        """The ``label`` column: each cell's source key, as a categorical in file order."""
        lengths = np.diff(self.offsets)
        return pd.Categorical.from_codes(np.repeat(np.arange(len(self.parts)), lengths), categories=self.keys)

    def cat_names(self) -> pd.Index:
        """The concatenated names (cells; along var genes; with ``index_unique``: ``name + sep + key``), as
        anndata.concat makes them.

        Built file by file, each file's names dropped once copied: one file's names and the result are held at a
        time (anndata's ``pd.concat(...).str.cat(...)`` holds every intermediate at once)."""
        key = f"{self.cat}_names"
        if key not in self.cache:
            values = np.empty(self.n_cat, dtype=object)
            names = set()
            for f, p in enumerate(self.parts):
                idx = getattr(p, f"{self.cat}_names")
                names.add(idx.name)
                a, b = int(self.offsets[f]), int(self.offsets[f + 1])
                if self.index_unique is not None:
                    suffix = f"{self.index_unique}{self.keys[f]}"
                    values[a:b] = [f"{n}{suffix}" for n in idx]
                else:
                    values[a:b] = idx.to_numpy(dtype=object)
                _clear(p)  # the names are held once, here
            self.cache[key] = pd.Index(values, name=names.pop() if len(names) == 1 else None)
        return self.cache[key]

    def cat_keys(self) -> list[str]:
        """The columns of the concatenated table (obs; along var: var), from the files' column lists (nothing read)."""
        key = f"{self.cat}_keys"
        if key not in self.cache:
            empty = [pd.DataFrame(columns=_keys(p, self.cat)) for p in self.parts]
            admerge.check_combinable_cols([e.columns for e in empty], join=self.join)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                cols = [str(c) for c in pd.concat(empty, join=self.join, ignore_index=True).columns]
            if self.label is not None and self.label not in cols:
                cols.append(self.label)
            self.cache[key] = cols
        return self.cache[key]

    def cat_table(self) -> pd.DataFrame:
        """The concatenated table (obs; along var: var), as anndata.concat makes it (every column of every file read
        once)."""
        if self.cat not in self.cache:
            frames = []
            for p in self.parts:
                frame = pd.DataFrame(getattr(p, self.cat))
                _clear(p)  # the table is held once, in the concatenation
                frame.index = pd.RangeIndex(len(frame))  # (the names are held once, in obs_names)
                frames.append(frame)
            admerge.check_combinable_cols([f.columns for f in frames], join=self.join)
            df = pd.concat(admerge.unify_dtypes(frames), join=self.join, ignore_index=True)
            df.index = self.cat_names()
            if self.label is not None:
                df[self.label] = self.label_col()
            self.cache[self.cat] = _str_columns(df)
            for k in [k for k in self.cache if isinstance(k, tuple) and k[0] == f"{self.cat}_column"]:
                del self.cache[k]  # the whole table holds them now
        return self.cache[self.cat]

    def cat_column(self, key: str, index: bool = True) -> pd.Series:
        """One column of the concatenated table, reading only that column of each file (once: it is kept).

        ``index=False`` leaves the cell names out (a range index): building a million names costs more than
        reading a categorical column."""
        if self.cat in self.cache:
            col = self.cache[self.cat][key]
            return col if index else col.reset_index(drop=True)
        if key == self.label:
            values = pd.Series(self.label_col(), name=key)
        elif (f"{self.cat}_column", key) in self.cache:
            values = self.cache[(f"{self.cat}_column", key)]
        else:
            if key not in self.cat_keys():
                raise KeyError(f"{key!r} is not an {self.cat} column of the collection (columns: {self.cat_keys()})")
            frames = [_one_column(p, key, self.cat) for p in self.parts]
            values = pd.concat(admerge.unify_dtypes(frames), join=self.join, ignore_index=True)[key]
            self.cache[(f"{self.cat}_column", key)] = values
        if not index:
            return values
        col = values.copy(deep=False)
        col.index = self.cat_names()
        return col

    def alt_table(self) -> pd.DataFrame:
        """The joined axis' table (var; along var: obs) as ``merge`` merges it (read once, then cached; no columns
        when ``merge`` is ``None``)."""
        if self.alt not in self.cache:
            if self.merge_given:
                frames = [pd.DataFrame(getattr(p, self.alt)) for p in self.parts]
                df = admerge.merge_dataframes(frames, self.joined, self.merge)
            else:  # anndata's default (merge=None) keeps no var column: nothing to read
                df = pd.DataFrame(index=self.joined)
            self.cache[self.alt] = _str_columns(df)
        return self.cache[self.alt]

    def uns(self) -> dict:
        """The ``uns`` as ``uns_merge`` merges it (read once, then cached; empty when ``uns_merge`` is ``None``)."""
        if "uns" not in self.cache:
            if self.uns_merge_given:
                self.cache["uns"] = dict(self.uns_merge([materialize(dict(p.uns.items())) for p in self.parts]))
            else:
                self.cache["uns"] = {}
        return self.cache["uns"]

    def alt_mapping(self, group: str) -> dict:
        """The joined axis' ``varm``/``varp`` (along var: ``obsm``/``obsp``) merged with the merge strategy
        (anndata's default keeps none: nothing read)."""
        if group not in self.cache:
            if not self.merge_given:
                self.cache[group] = {}
            else:
                reindexers = [admerge.gen_reindexer(self.joined, v) for v in self.file_alt_names()]
                per_file = []
                for r, p in zip(reindexers, self.parts, strict=True):
                    values = {k: materialize(getattr(p, group)[k]) for k in getattr(p, group).keys()}
                    if group.endswith("m"):
                        per_file.append({k: r(v, axis=0) for k, v in values.items()})
                    else:
                        per_file.append({k: r(r(v, axis=0), axis=1) for k, v in values.items()})
                self.cache[group] = dict(self.merge(per_file))
        return self.cache[group]

    def whole_mapping(self, group: str) -> dict:
        """A mapping not read per part (``varm``/``varp``; for ``axis=1`` also ``obsm``/``obsp``), read whole."""
        return self.alt_mapping(group) if group.startswith(self.alt) else self.cat_mapping(group)

    def cat_mapping(self, group: str) -> dict:
        """``varm`` or ``varp`` of a concatenation along var: each file's read whole, concatenated by
        ``anndata.concat`` itself (on cell-less stand-ins of the files: its joins, fills and block diagonals)."""
        if "cat_mappings" not in self.cache:
            import anndata

            skeletons = []
            for p in self.parts:
                varp = {k: materialize(p.varp[k]) for k in p.varp.keys()} if self.pairwise else {}
                skeletons.append(
                    anndata.AnnData(
                        obs=pd.DataFrame(index=pd.Index([], dtype=object)),
                        var=pd.DataFrame(index=p.var_names),
                        varm={k: materialize(p.varm[k]) for k in p.varm.keys()},
                        varp=varp,
                    )
                )
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # names not unique: anndata warns, concat keeps them
                out = anndata.concat(
                    skeletons,
                    axis=1,
                    join=self.join,
                    keys=self.keys,
                    index_unique=self.index_unique,
                    fill_value=self.fill_value,
                    pairwise=self.pairwise,
                )
            self.cache["cat_mappings"] = {"varm": dict(out.varm), "varp": dict(out.varp)}
        return self.cache["cat_mappings"][group]

    # --- matrix elements --------------------------------------------------------------------------------------------
    def keys_of(self, group: str) -> list[str]:
        """The keys of ``group`` (layers, obsm, obsp) the collection has, joined over the files as ``join`` says."""
        if group not in self.stacked_groups or (group == "obsp" and not self.pairwise):
            return []
        per_file = [[str(k) for k in getattr(p, group).keys() if k is not None] for p in self.parts]
        join = admerge.intersect_keys if self.join == "inner" else admerge.union_keys
        return [str(k) for k in join(per_file)]

    def element(self, path: str) -> Stacked | Any:
        """The :class:`Stacked` description of a matrix element of the whole collection, or (for elements that are
        not stored arrays: tables in obsm...) its whole value, concatenated by anndata."""
        if path not in self.cache:
            self.cache[path] = self._element(path)
        return self.cache[path]

    def _values(self, path: str) -> list[Any]:
        if path == "X":
            return [p.X for p in self.parts]
        group, key = path.split("/", 1)
        return [getattr(p, group)[key] if key in getattr(p, group).keys() else admerge.MissingVal for p in self.parts]

    def _element(self, path: str) -> Stacked | Any:
        values = self._values(path)
        if path != "X" and path.split("/", 1)[0] not in ("layers", "obsm", "obsp"):
            raise KeyError(path)
        present = [v for v in values if v is not admerge.MissingVal]
        sources = [source_of(v) if v is not admerge.MissingVal else None for v in values]
        stored = all(
            s is not None and len(s.shape) == 2
            for s, v in zip(sources, values, strict=True)
            if v is not admerge.MissingVal
        )
        if not present:
            raise KeyError(path)
        if self.axis == 1:
            if not stored:
                missing = admerge.MissingVal
                which = [
                    n for n, s, v in zip(self.names, sources, values, strict=True) if s is None and v is not missing
                ]
                raise NotImplementedError(
                    f"shadows.concat(..., axis='var') joins stored 2-D arrays only; {path} of {which[:3]} is none "
                    "(read the files, AnnDataShadow(path).to_memory(), and use anndata.concat(..., axis='var'))"
                )
            return side_by_side(self, sources)
        if not stored:
            return self._whole(path, values)
        group = path.split("/", 1)[0]
        if group == "obsp":
            standins = [standin(s.sparse_format, s.dtype, 1) if s is not None else _bool_csr() for s in sources]
            return Stacked(
                tuple(sources), self.offsets, None, (), self.n_cat, "csr", pairwise_dtype(standins), 0, pairwise=True
            )
        if group == "obsm":
            return self._obsm(sources)
        reindexers = [admerge.gen_reindexer(self.joined, v) for v in self.file_alt_names()]
        standins = [
            standin(s.sparse_format, s.dtype, s.shape[1]) if s is not None else admerge.MissingVal for s in sources
        ]
        fmt, dtype, fill = concat_kind(standins, reindexers, self.fill_value)
        columns = tuple(self.columns_for(f, None)[0] for f in range(len(self.parts)))
        return Stacked(tuple(sources), self.offsets, None, columns, len(self.joined), fmt, dtype, fill)

    def _obsm(self, sources: list) -> Stacked:
        widths = [s.shape[1] if s is not None else 0 for s in sources]
        standins = [
            standin(s.sparse_format, s.dtype, s.shape[1]) if s is not None else admerge.MissingVal for s in sources
        ]
        if self.join == "inner":
            n_cols = min(widths)
            reindexers = admerge.gen_inner_reindexers(standins, None, axis=0)
            columns = tuple(Columns(read=slice(0, n_cols, 1) if w > n_cols else None) for w in widths)
            fill_value = None
        else:
            n_cols = max(widths)
            reindexers = admerge.gen_outer_reindexers(standins, [1] * len(standins), None, axis=0)
            columns = tuple(Columns(place=np.arange(w) if w < n_cols else None) for w in widths)
            fill_value = self.fill_value
        fmt, dtype, fill = concat_kind(standins, reindexers, fill_value)
        return Stacked(tuple(sources), self.offsets, None, columns, n_cols, fmt, dtype, fill)

    def _whole(self, path: str, values: list) -> Any:
        """An element that is no stored 2-D array (a table in obsm...): read from every file, joined by anndata."""
        els = [materialize(v) if v is not admerge.MissingVal else v for v in values]
        index = self.cat_names()
        if self.join == "inner":
            reindexers = admerge.gen_inner_reindexers(els, new_index=index, axis=0)
            return admerge.concat_arrays(els, reindexers, axis=0, index=index)
        ns = list(np.diff(self.offsets))
        reindexers = admerge.gen_outer_reindexers(els, ns, new_index=index, axis=0)
        arrays = [
            el if admerge.not_missing(el) else admerge.missing_element(n, axis=0, els=els, fill_value=self.fill_value)
            for el, n in zip(els, ns, strict=True)
        ]
        return admerge.concat_arrays(arrays, reindexers, axis=0, index=index, fill_value=self.fill_value)


def _positions(sel: Any, n: int) -> np.ndarray:
    from shadows.spec import selection as ix

    return ix.positions(sel, n)


def _bool_csr() -> Any:
    import scipy.sparse as sp

    return sp.csr_matrix((1, 1), dtype=bool)


def _str_columns(df: pd.DataFrame) -> pd.DataFrame:
    """A table without columns gets string-typed empty columns, as AnnData's constructor leaves them."""
    if len(df.columns) == 0:
        df.columns = df.columns.astype(str)
    return df


def _one_column(part: AnnDataShadow, key: str, axis_name: str = "obs") -> pd.DataFrame:
    """Column ``key`` of a file's obs as a one-column frame (an empty frame of the right length if it has none).

    Only that column is read: through anndata's own reader on the stored column (the file's obs is read whole
    when its layout is one anndata's reader cannot take column by column: anndata < 0.7, or a view)."""
    n = part.n_obs if axis_name == "obs" else part.n_vars
    if key not in _keys(part, axis_name):
        return pd.DataFrame(index=pd.RangeIndex(n))
    if not isinstance(part, AnnDataShadow):  # a file's raw (along var): its var is small, read whole
        return pd.DataFrame({key: getattr(part, axis_name)[key]}).reset_index(drop=True)
    # read-only use of the shadow's private root group: the AnnData's group inside the file (h5mu modalities too)
    root = state_of(part).root()
    g = root[axis_name]
    if part.is_view or not hasattr(g, "keys") or key not in g:
        return pd.DataFrame({key: getattr(part, axis_name)[key]}).reset_index(drop=True)
    import anndata

    values = anndata.io.read_elem(g[key])
    return pd.DataFrame({key: values}, index=pd.RangeIndex(n))


def _clear(part: Any) -> None:
    """Drop what a file's shadow holds in memory (a file's raw holds nothing to drop)."""
    if isinstance(part, AnnDataShadow):
        part.clear_cache()


def _keys(part: Any, axis_name: str) -> list[str]:
    """A part's obs or var column names (a shadow's from the file's metadata; a raw's from its table)."""
    if isinstance(part, AnnDataShadow):
        return list(getattr(part, f"{axis_name}_keys")())
    return [str(c) for c in getattr(part, axis_name).columns]
