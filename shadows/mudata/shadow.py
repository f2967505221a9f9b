"""``MuDataShadow``: a MuData whose modalities and elements stay in the file until first asked for.

One connection serves the whole file: the MuData's own elements (global ``obs``, ``var``, ``obsm``, ``varm``,
``obsp``, ``varp``, ``uns``) are read through an internal :class:`AnnDataShadow` over the root group (the same layout
as an AnnData root, without ``X``), and each modality is an :class:`AnnDataShadow` over ``mod/<name>``, both on
child connections sharing the MuData's file handle.  A view selects rows of the global axes and, through
``obsmap``/``varmap``, the matching rows of every modality, exactly as mudata's views do.

The class subclasses :class:`mudata.MuData` (without running its constructor) so that muon and friends accept it;
mudata is an optional dependency: ``pip install shadows[mudata]``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import mudata
import numpy as np

from shadows.backends import check_backend_name
from shadows.core.anndata import _VIEW_STORAGES, AnnDataShadow, _LazyNames, suspend_views
from shadows.core.connection import ConnectionMixin
from shadows.core.mapping import ElementMapping
from shadows.core.state import state_of
from shadows.io.storage import Storage
from shadows.mudata import layout as lay
from shadows.mudata.parts import FileMaps, GlobalShadow, Modalities
from shadows.mudata.repr import html_repr, text_repr
from shadows.spec import selection as ix


class MuDataShadow(ConnectionMixin, mudata.MuData):
    """A lazy, low-memory stand-in for a MuData file (``.h5mu`` or a ``.zarr`` store, v2 or v3).

    Parameters
    ----------
    path
        An ``.h5mu`` file or a MuData ``.zarr`` store (or a path to a MuData group inside one).
    mode
        ``"r"`` (default) or ``"r+"`` (needed for :meth:`write`).
    format
        Override format detection: ``"h5mu"``, ``"hdf5"``, ``"h5"`` or ``"zarr"``.
    array_backend, table_backend, lazy
        As for :class:`~shadows.AnnDataShadow`; they apply to the global elements and every modality.

    Examples
    --------
    >>> m = MuDataShadow("citeseq.h5mu")  # doctest: +SKIP
    >>> m["rna"].X  # one modality's matrix, read now  # doctest: +SKIP
    >>> m[m.obs_names[:100]].mod["prot"].X  # the first 100 cells of the protein modality  # doctest: +SKIP
    """

    # mudata's constructor sets these on every MuData; code written for MuData may look at them
    X = None
    raw = None
    layers = None

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        mode: str = "r",
        format: str | None = None,
        array_backend: str = "numpy",
        table_backend: str = "pandas",
        lazy: bool = False,
        storage_options: dict | None = None,
    ):
        self._setup(
            path,
            mode=mode,
            format=format,
            array_backend=array_backend,
            table_backend=table_backend,
            lazy=lazy,
            storage_options=storage_options,
        )

    @classmethod
    def _internal(
        cls, path: str | os.PathLike, *, view: tuple | None = None, storage: Storage | None = None, **options: Any
    ) -> MuDataShadow:
        """A MuData shadow the package makes itself: a view (``view``: the selection on the file's axes) on a
        connection made for it (``storage``)."""
        shadow = cls.__new__(cls)
        shadow._setup(path, view=view, storage=storage, **options)
        return shadow

    def _setup(
        self,
        path: str | os.PathLike,
        *,
        mode: str = "r",
        format: str | None = None,
        array_backend: str = "numpy",
        table_backend: str = "pandas",
        lazy: bool = False,
        storage_options: dict | None = None,
        view: tuple | None = None,
        storage: Storage | None = None,
    ) -> None:
        check_backend_name(array_backend, "array")
        check_backend_name(table_backend, "table")
        st = (
            storage if storage is not None else Storage(path, mode=mode, format=format, storage_options=storage_options)
        )
        self._storage = st
        self._owns_storage = type(st) is Storage
        where = st.describe()
        try:
            root = st.root
            lay.check_mudata_root(root, where)
            self._axis_value = lay.read_axis(root, where)
            self._order = lay.modality_order(root)
        except Exception:
            if self._owns_storage:
                st.close()
            raise
        self._backends = {"array_backend": array_backend, "table_backend": table_backend, "lazy": bool(lazy)}
        self._is_view_flag = view is not None
        self._global = GlobalShadow._internal(where, storage=st.child(""), view=view, **self._backends)
        if self._is_view_flag:  # a view stays a view (as mudata's m[:]) even when it selects everything
            g = self._global
            state_of(g).oidx = state_of(g).oidx if state_of(g).oidx is not None else slice(0, state_of(g).n_obs_file, 1)
            state_of(g).vidx = (
                state_of(g).vidx if state_of(g).vidx is not None else slice(0, state_of(g).n_vars_file, 1)
            )
        self._mods: dict[str, AnnDataShadow] = {}
        self._file_maps = FileMaps(self._global, self._order)

    # --- identity -------------------------------------------------------------------------------------------------
    @property
    def file(self) -> Any:
        """The open h5py File or zarr Group."""
        return self._storage.file

    @property
    def filename(self) -> Path:
        """Path of the ``.h5mu`` file or zarr store the shadow reads (it cannot be set, unlike a backed MuData's)."""
        return self._storage.filename

    @property
    def mode(self) -> str:
        """Mode the file is open with, ``"r"`` or ``"r+"`` (:meth:`reopen` changes it)."""
        return self._storage.mode

    @property
    def isbacked(self) -> bool:
        """Always ``False``, although the shadow reads from a file (as :attr:`AnnDataShadow.isbacked`).

        Every value a shadow hands out is an in-memory object, so muon and scanpy must take their in-memory paths.
        """
        return False  # every value handed out is in memory (as for AnnDataShadow)

    @property
    def is_view(self) -> bool:
        """Whether this shadow is a view (``mdata[...]``) of another one, as :attr:`mudata.MuData.is_view`."""
        return self._is_view_flag

    @property
    def _oidx(self) -> ix.Sel:
        return state_of(self._global).oidx

    @property
    def _vidx(self) -> ix.Sel:
        return state_of(self._global).vidx

    @property
    def axis(self) -> int:
        """Which axis the modalities share, as in mudata (``0`` observations, ``1`` features, ``-1`` both)."""
        return self._axis_value

    @property
    def _axis(self) -> int:
        return self._axis_value

    @property
    def n_obs(self) -> int:
        """Number of global observations (the selected ones for a view), without reading any element."""
        return self._global.n_obs

    @property
    def n_vars(self) -> int:
        """Number of global features (the selected ones for a view), without reading any element."""
        return self._global.n_vars

    @property
    def n_var(self) -> int:
        """Same as :attr:`n_vars` (mudata's name)."""
        return self.n_vars

    @property
    def shape(self) -> tuple[int, int]:
        """``(n_obs, n_vars)`` of the global axes, without reading any element."""
        return self.n_obs, self.n_vars

    def __len__(self) -> int:
        return self.n_obs

    # --- global elements (held by the internal root shadow) --------------------------------------------------------
    @property
    def obs(self) -> Any:
        """The global observation table, as stored."""
        return self._global.obs

    @obs.setter
    def obs(self, value: Any) -> None:
        """Replace the global observation table (pending until :meth:`write`; unchanged columns are not rewritten)."""
        self._global.obs = value

    @property
    def var(self) -> Any:
        """The global feature table, as stored."""
        return self._global.var

    @var.setter
    def var(self, value: Any) -> None:
        """Replace the global feature table (pending until :meth:`write`; unchanged columns are not rewritten)."""
        self._global.var = value

    @property
    def obs_names(self) -> Any:
        """Index of the global observations, read from the global ``obs``'s index alone."""
        return self._global.obs_names

    @property
    def var_names(self) -> Any:
        """Index of the global features, read from the global ``var``'s index alone."""
        return self._global.var_names

    @property
    def obsm(self) -> ElementMapping:
        """The global ``obsm``, a mapping whose values are read on first access and cached."""
        return self._global.obsm

    @property
    def varm(self) -> ElementMapping:
        """The global ``varm``, a mapping whose values are read on first access and cached."""
        return self._global.varm

    @property
    def obsp(self) -> ElementMapping:
        """The global ``obsp``, a mapping whose values are read on first access and cached."""
        return self._global.obsp

    @property
    def varp(self) -> ElementMapping:
        """The global ``varp``, a mapping whose values are read on first access and cached."""
        return self._global.varp

    @property
    def uns(self) -> ElementMapping:
        """The global ``uns``, a mapping whose values are read on first access and cached."""
        return self._global.uns

    @uns.setter
    def uns(self, value: dict) -> None:
        """Replace all of the global ``uns`` by ``value`` (keys not in it are deleted; pending until :meth:`write`)."""
        self._global.uns = value

    def obs_keys(self) -> list[str]:
        """The global obs column names, from the file's metadata (the table is not read)."""
        return self._global.obs_keys()

    def var_keys(self) -> list[str]:
        """The global var column names, from the file's metadata (the table is not read)."""
        return self._global.var_keys()

    def obsm_keys(self) -> list[str]:
        """The keys of the global ``obsm`` (nothing is read)."""
        return list(self.obsm.keys())

    def varm_keys(self) -> list[str]:
        """The keys of the global ``varm`` (nothing is read)."""
        return list(self.varm.keys())

    def uns_keys(self) -> list[str]:
        """The keys of the global ``uns`` (nothing is read)."""
        return list(self.uns.keys())

    # --- maps -----------------------------------------------------------------------------------------------------
    def _file_map(self, axis_name: str, mod: str) -> np.ndarray:
        """``<axis>map/<mod>`` over the file's global axis."""
        return self._file_maps.get(axis_name, mod)

    def _map(self, axis_name: str, mod: str, live: bool = False) -> np.ndarray:
        sel = self._oidx if axis_name == "obs" else self._vidx
        if self.is_view:
            return lay.view_map(self._file_map(axis_name, mod), sel)
        flat = self._file_map(axis_name, mod)
        m = self._mods.get(mod)
        # as mudata's: the maps change with update(), not when a modality is filtered in place
        msel = self.__dict__.get("_mod_sels", {}).get((axis_name, mod))
        if live:
            msel = getattr(state_of(m), "oidx" if axis_name == "obs" else "vidx") if m is not None else None
        if sel is None and msel is None:
            return flat
        # filtered in place (muon's filter_obs/intersect_obs, then update()): positions among the rows kept now
        picked = flat[ix.positions(sel, len(flat))]
        if msel is None:
            return picked
        n_file = state_of(m).n_obs_file if axis_name == "obs" else state_of(m).n_vars_file
        rank = np.zeros(n_file + 1, dtype=flat.dtype)
        rank[ix.positions(msel, n_file) + 1] = np.arange(1, ix.length(msel, n_file) + 1)
        return rank[picked]

    @property
    def obsmap(self) -> Mapping[str, np.ndarray]:
        """For each modality, the 1-based position of each global observation in it (``0`` where absent)."""
        return MappingProxyType({m: self._map("obs", m) for m in self._order})

    @property
    def varmap(self) -> Mapping[str, np.ndarray]:
        """For each modality, the 1-based position of each global feature in it (``0`` where absent)."""
        return MappingProxyType({m: self._map("var", m) for m in self._order})

    # --- modalities -----------------------------------------------------------------------------------------------
    @property
    def mod(self) -> Modalities:
        """The modalities in the stored ``mod-order``, as :class:`AnnDataShadow` objects on this file's connection."""
        return Modalities(self)

    @property
    def _mod(self) -> Modalities:  # what mudata's own methods look at
        return Modalities(self)

    @property
    def n_mod(self) -> int:
        """Number of modalities."""
        return len(self._order)

    @property
    def mod_names(self) -> list[str]:
        """Names of the modalities, in the stored ``mod-order``."""
        return list(self._order)

    def _modality(self, name: str) -> AnnDataShadow:
        if name not in self._order:
            raise KeyError(f"'{self._storage.describe()}' has no modality {name!r}; modalities: {self._order}")
        if name not in self._mods:
            view = None
            if self.is_view:
                view = (
                    lay.modality_selection(self._file_map("obs", name), self._oidx),
                    lay.modality_selection(self._file_map("var", name), self._vidx),
                )
            inner = f"mod/{name}"
            mod = AnnDataShadow._internal(
                self._storage.path_of(inner), storage=self._storage.child(inner), view=view, **self._backends
            )
            if self.is_view:
                # the modality reads through this view's own file handle, closed when the view is collected: the
                # modality keeps it alive (`m[cells]["rna"].X` takes a modality of a view no one else holds); a
                # writer's reopen("r+") closes that handle (suspend_views) and the modality reopens it to read
                mod._mudata = self
            self._mods[name] = mod
        return self._mods[name]

    def __contains__(self, key: object) -> bool:
        if isinstance(key, str):
            return key in self._order
        raise TypeError(f"Unexpected key {key!r}: MuData membership is tested with a modality name")

    # --- views ----------------------------------------------------------------------------------------------------
    def __getitem__(self, index: Any) -> AnnDataShadow | MuDataShadow:
        """A modality (``m["rna"]``), or a view: a new MuDataShadow on its own connection (``m[cells, features]``)."""
        if isinstance(index, str):
            return self._modality(index)
        oidx, vidx = ix.split_index(index)
        o = ix.normalize(oidx, _LazyNames(self._global, "obs"), self.n_obs, 0)
        v = ix.normalize(vidx, _LazyNames(self._global, "var"), self.n_vars, 1)
        file_o = ix.compose(self._oidx, o, state_of(self._global).n_obs_file)
        file_v = ix.compose(self._vidx, v, state_of(self._global).n_vars_file)
        st = self._storage.sibling()
        if st.kind == "h5":
            _VIEW_STORAGES.add(st)  # a writer's reopen("r+") closes it (its modalities may outlive it)
        view = type(self)._internal(st.describe(), storage=st, view=(file_o, file_v), **self._backends)
        view._file_maps._maps.update(self._file_maps._maps)  # the same file: maps already read need no second read
        view._inherit(self, o, v)
        return view

    def _inherit(self, parent: MuDataShadow, o: ix.Sel, v: ix.Sel) -> None:
        """In-memory additions of the parent (global and per modality) are seen, sliced, by its views."""
        self._global._inherit(parent._global, o, v)
        for name, pmod in parent._mods.items():
            if not (
                state_of(pmod).pending
                or state_of(pmod).inherited
                or state_of(pmod).frame_changed("obs")
                or state_of(pmod).frame_changed("var")
            ):
                continue
            rel = (
                lay.modality_selection(parent._map("obs", name), o),
                lay.modality_selection(parent._map("var", name), v),
            )
            self._modality(name)._inherit(pmod, *rel)

    # --- cache, connection ----------------------------------------------------------------------------------------
    def _shadows(self) -> Iterator[AnnDataShadow]:
        yield self._global
        yield from self._mods.values()

    def clear_cache(self) -> MuDataShadow:
        """Free every cached element, global and of every modality (pending additions stay)."""
        for s in self._shadows():
            s.clear_cache()
        return self

    def _owned_connection(self) -> Storage | None:
        return self.__dict__.get("_storage") if self.__dict__.get("_owns_storage") else None

    def close(self) -> None:
        """Close the file (one connection for the MuData and all its modalities; cached elements stay usable)."""
        if self._storage.is_open:  # the shapes, read on first use, stay known once closed
            for shadow in (self._global, *self._mods.values()):
                state_of(shadow).file_axes()
        self._storage.close()

    def reopen(self, mode: str = "r") -> MuDataShadow:
        """Open the file again with ``mode`` ``"r"`` or ``"r+"``, for the MuData and every modality at once."""
        if self.is_view and mode != "r":
            raise ValueError("A view cannot be reopened for writing; reopen the full MuDataShadow")
        if mode != "r":
            suspend_views(self._storage)
        self._storage.open(mode)
        for s in self._shadows():
            state_of(s).storage.indptr_cache.clear()
        return self

    def __reduce__(self):
        st = self._storage
        view = (self._oidx, self._vidx) if self.is_view else None
        return (_restore, (st.describe(), st.mode, st.format, self._backends, view))

    # --- mudata's in-memory bookkeeping -----------------------------------------------------------------------------
    def update(self) -> None:
        """After modalities were filtered in place, keep the global rows still in some modality (:meth:`update_obs`,
        :meth:`update_var`); otherwise nothing changes: the global tables and maps are the file's."""
        self.update_obs()
        self.update_var()

    def update_obs(self) -> None:
        """Keep the global observations still present in some modality (after muon's in-place filters)."""
        self._follow_modalities(0)

    def update_var(self) -> None:
        """Keep the global features still present in some modality (after muon's in-place filters)."""
        self._follow_modalities(1)

    def _follow_modalities(self, axis: int) -> None:
        name = "obs" if axis == 0 else "var"
        if self.is_view or not any(m.__dict__.get("_detached") for m in self._mods.values()):
            return
        keep = np.zeros(self.n_obs if axis == 0 else self.n_vars, dtype=bool)
        for mod in self._order:
            keep |= self._map(name, mod, live=True) > 0
        sels = self.__dict__.setdefault("_mod_sels", {})
        for mod, m in self._mods.items():
            sels[(name, mod)] = state_of(m).oidx if axis == 0 else state_of(m).vidx
        if not keep.all():
            subset = self._global._inplace_subset_obs if axis == 0 else self._global._inplace_subset_var
            subset(np.flatnonzero(keep))

    # --- writing and conversions ----------------------------------------------------------------------------------
    def write(
        self, filename: os.PathLike | None = None, *, overwrite: bool = False, clear_cache: bool = False
    ) -> MuDataShadow | Path:
        """Push every pending change, of the MuData and of each modality, into the file (open it with ``"r+"``).

        Parameters
        ----------
        filename
            Stream the shadow into this new ``.h5mu`` file instead (:meth:`write_h5mu`).
        overwrite
            Write-back: replace elements the file already has; with ``filename``: replace an existing file.
        clear_cache
            Forget the values read so far once they are written.

        Returns
        -------
        The shadow, so that ``m.reopen("r+").write().reopen("r")`` chains; with ``filename``, the path written
        (as :meth:`AnnDataShadow.write <shadows.AnnDataShadow.write>` does).
        """
        if filename is not None:
            return self.write_h5mu(filename, overwrite=overwrite)
        from shadows.writeback.plan import write_many

        # every part checked (views, modes, overwrites) before any part writes anything
        write_many(list(self._shadows()), overwrite=overwrite, clear_cache=clear_cache)
        return self

    def write_h5mu(self, filename: os.PathLike, **kwargs: Any) -> Path:
        """Stream the MuData (or the view) into a new ``.h5mu`` file, one matrix block at a time.

        The result reads back with ``mudata.read_h5mu`` as mudata's own ``write_h5mu`` of :meth:`to_memory` would,
        without any modality's matrices being held in memory (see :mod:`shadows.mudata.writer`).  Keywords:
        ``compression``, ``compression_opts``, ``progress``, ``chunk_size``, ``overwrite`` (replace an existing
        file; refused without it).

        Returns
        -------
        The path written.
        """
        from shadows.mudata.writer import write_mudata

        return write_mudata(self, filename, "h5mu", **kwargs)

    def write_zarr(self, store: os.PathLike, **kwargs: Any) -> Path:
        """Stream the MuData (or the view) into a new zarr store (see :meth:`write_h5mu`); ``zarr_format`` too.

        Returns
        -------
        The path written.
        """
        from shadows.mudata.writer import write_mudata

        return write_mudata(self, store, "zarr", **kwargs)

    def to_memory(self) -> mudata.MuData:
        """A real in-memory :class:`mudata.MuData` with every element (of the view) read, pending changes included.

        It is built as ``mudata.read_h5mu`` builds one, so mudata's options (``pull_on_update``) apply as there.
        """
        return self._assemble({m: self._modality(m).to_memory() for m in self._order})

    def _assemble(self, mods: dict[str, Any]) -> mudata.MuData:
        """An in-memory MuData of ``mods`` (in-memory AnnData objects) and this MuData's own elements, read now."""
        g = self._global.to_memory()
        kwargs = {name: dict(getattr(g, name)) for name in ("obsm", "varm", "obsp", "varp")}
        return mudata.MuData(
            mods,
            obs=g.obs,
            var=g.var,
            uns=dict(g.uns),
            obsmap={m: np.asarray(self._map("obs", m)) for m in self._order},
            varmap={m: np.asarray(self._map("var", m)) for m in self._order},
            axis=self.axis,
            **kwargs,
        )

    def copy(self, filename: os.PathLike | None = None) -> mudata.MuData:
        """An in-memory MuData copy; with ``filename``, a copy streamed to that ``.h5mu`` file, opened as a shadow.

        (mudata's ``copy(filename)`` likewise returns an object backed by the new file.)
        """
        if filename is not None:
            self.write_h5mu(filename)
            return MuDataShadow(filename, **self._backends)
        return self.to_memory()

    # --- repr -----------------------------------------------------------------------------------------------------
    def __repr__(self) -> str:
        return text_repr(self)

    def _repr_html_(self, expand: int | None = None) -> str:
        return html_repr(self)

    def __eq__(self, other: object) -> bool:
        return self is other

    __hash__ = object.__hash__


def _restore(path, mode, format, backends, view) -> MuDataShadow:
    return MuDataShadow._internal(path, mode=mode, format=format, view=view, **backends)
