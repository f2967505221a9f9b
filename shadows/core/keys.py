"""Which keys and values a shadow can take: names that HDF5 and zarr can both store, values AnnData's format allows.

Checked on assignment (the mappings, ``X``, ``obs``/``var``) and again before anything is written (write-back,
streamed outputs), so that a bad key fails early with the element it names, never half-way through a commit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pandas as pd

if TYPE_CHECKING:
    from shadows.core.anndata import AnnDataShadow


# Names a zarr store uses for its own metadata: an element named so would overwrite (or be overwritten by) its
# parent's metadata, which destroys the parent group (zarr v2: ``.zgroup``, ``.zattrs``; v3: ``zarr.json``).  They
# are refused in HDF5 files too, so that every file can be converted to zarr.
RESERVED_KEYS = frozenset({".zgroup", ".zattrs", ".zarray", ".zmetadata", "zarr.json"})


def check_key(key: Any, where: str, *, slash_ok: bool = False) -> None:
    """Raise unless ``key`` can name an element or column in HDF5 and zarr alike.

    Keys become HDF5/zarr names: non-empty strings without ``/`` or NUL, not ``.``/``..``, and not one of the names
    zarr keeps for its metadata (:data:`RESERVED_KEYS`).  ``slash_ok`` lets a ``/`` pass (see :func:`check_value`).
    """
    if not isinstance(key, str):
        raise ValueError(f"{where}: {key!r} cannot be written as a key: keys must be strings, got {type(key).__name__}")
    if not key or ("/" in key and not slash_ok) or "\0" in key or key in (".", ".."):
        raise ValueError(
            f"{where}: {key!r} cannot be written as a key (a non-empty string without '/', other than '.' and '..', "
            "is needed)"
        )
    if key in RESERVED_KEYS:
        raise ValueError(
            f"{where}: {key!r} cannot be written as a key: zarr stores keep their metadata under that name "
            f"(reserved: {', '.join(sorted(RESERVED_KEYS))})"
        )


def check_value(shadow: AnnDataShadow, group: str, key: Any, value: Any, *, assigning: bool = False) -> None:
    """Raise (``ValueError``, as anndata does on assignment) unless ``value`` can be written as ``group[key]``.

    Checked: every key inside the value (nested ``uns`` dicts, data frame columns), the index of a data frame in
    ``obsm``/``varm`` against ``obs_names``/``var_names``, and the dimensions of ``X`` (2-D, as the AnnData
    specification requires: anndata 0.12 refuses another on assignment, later versions when writing) and of layers
    (2-D where anndata refuses to write others).  Shapes along the aligned axes are checked by the shadow.

    ``assigning``: the check of an assignment.  A ``/`` inside a value (a data frame column of
    ``sc.tl.rank_genes_groups(pts=True)`` named after a group such as ``"CD4+/CD25 T Reg"``) passes then, as anndata
    takes it in memory; it is refused when the value is written.
    """
    where = f"{group}[{key!r}]" if group not in ("X", "obs", "var") else group
    if group not in ("X", "obs", "var"):
        check_key(key, f"{group}[{key!r}] of '{_where(shadow)}'")
    # obs/var tables: anndata takes a non-string column name on assignment and refuses it when writing (checked
    # then); the names that break a store are refused now
    check_nested_keys(value, where, strings_only=group in ("obs", "var"), slash_ok=assigning)
    if value is None:
        return
    if group == "X" or (group == "layers" and _spec_needs_2d()):
        shape = getattr(value, "shape", None)
        if shape is not None and len(shape) != 2:
            raise ValueError(
                f"{where} must be 2-dimensional (AnnData's on-disk specification), got shape {tuple(shape)}"
            )
    if group in ("obsm", "varm") and isinstance(value, pd.DataFrame):
        names = shadow.obs_names if group == "obsm" else shadow.var_names
        if not value.index.equals(names):  # anndata's own test (pandas' Index.equals)
            axis = "obs" if group == "obsm" else "var"
            raise ValueError(
                f"value.index does not match parent's {axis} names: {where} is a DataFrame whose index is not "
                f"the {axis}_names of '{_where(shadow)}' (same values, same order); set its index first"
            )


def _where(shadow: Any) -> str:
    """The file a shadow is open on, or a collection's sources (shadows.concat), for error messages."""
    describe = getattr(getattr(shadow, "_state", None), "describe", None)  # a collection's state has no file
    if describe is not None:
        return describe()
    return ", ".join(getattr(shadow, "sources", [])) or type(shadow).__name__


def check_nested_keys(value: Any, where: str, *, strings_only: bool = False, slash_ok: bool = False) -> None:
    """Check the keys inside a value that become names in the file: nested dicts and data frame columns
    (``strings_only``: let non-string column names pass; ``slash_ok``: let a ``/`` pass, see :func:`check_key`)."""
    if isinstance(value, dict):
        for k, v in value.items():
            check_key(k, f"{where}[{k!r}]", slash_ok=slash_ok)
            check_nested_keys(v, f"{where}[{k!r}]", slash_ok=slash_ok)
    elif isinstance(value, pd.DataFrame):
        for c in value.columns:
            if isinstance(c, str) or not strings_only:
                check_key(c, f"{where} column {c!r}", slash_ok=slash_ok)
        if value.index.name is not None:
            check_key(str(value.index.name), f"{where} index name", slash_ok=slash_ok)


def _spec_needs_2d() -> bool:
    """Whether this anndata refuses to write layers that are not 2-D (it says so where it warns on assignment)."""
    try:
        from anndata._core.storage import _non_2d_message  # noqa: F401  (anndata >= 0.13)
    except ImportError:
        return False
    return True
