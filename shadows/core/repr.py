"""Text and HTML representations of shadows: shape, each group with its keys, and what is cached or new.

``ᐁ`` marks an element read into the cache, ``▲`` one added (or changed) in memory and not yet in the file.
X's line tells its encoding, dtype and shape (``X: csr_matrix float32 (1000, 200)``), from the file's metadata.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shadows.core.anndata import AnnDataShadow

CACHED = "ᐁ"
NEW = "▲"
_GROUPS = ("obsm", "varm", "obsp", "varp", "layers", "uns")


def _mark(shadow: AnnDataShadow, group: str, key: str) -> str:
    k = (group, key)
    if k in shadow._state.pending:
        return f" {NEW}"
    if k in shadow._state.cache or k in shadow._state.inherited:
        return f" {CACHED}"
    return ""


def sections(shadow: AnnDataShadow) -> list[tuple[str, list[str], str]]:
    """``(name, [key + mark...], mark of the whole element)`` for every non-empty part of the shadow."""
    out: list[tuple[str, list[str], str]] = []
    x_mark = _mark(shadow, "X", "")
    x = x_summary(shadow)
    if x is not None:
        out.append(("X", [x], x_mark))
    for frame in ("obs", "var"):
        changes = shadow.frame_changes(frame)
        new = set(changes["added"]) | set(changes["changed"])
        cols = shadow.obs_keys() if frame == "obs" else shadow.var_keys()
        whole = _mark(shadow, frame, "")
        if cols:
            out.append((frame, [f"'{c}'" + (f" {NEW}" if c in new else "") for c in cols], whole))
    for group in _GROUPS:
        mapping = getattr(shadow, group)
        keys = [k for k in mapping.keys() if k is not None]
        deleted = [k for (g, k) in shadow._state.deleted if g == group]
        if keys or deleted:
            items = [f"'{k}'{_mark(shadow, group, k)}" for k in keys] + [f"'{k}' (deleted)" for k in deleted]
            out.append((group, items, ""))
    raw = _raw_section(shadow)
    if raw is not None:
        out.append(raw)
    return out


def _raw_section(shadow: AnnDataShadow) -> tuple[str, list[str], str] | None:
    if ("raw", "") in shadow._state.pending:  # assigned (▲) or deleted in memory, not yet written
        value = shadow._state.pending[("raw", "")]
        if value is None:
            return ("raw", ["(deleted)"], "") if _stored_raw(shadow) else None
        varm = getattr(value, "varm", None)
        return ("raw", ["X", "var"] + (["varm"] if varm is not None and len(varm) else []), f" {NEW}")
    raw = shadow.raw
    if raw is None:
        return None
    parts = ["X", "var"] + (["varm"] if raw._path("varm") in shadow._state.root() else [])
    cached = any(k[0] == "raw" for k in shadow._state.cache)
    return ("raw", parts, f" {CACHED}" if cached else "")


def _stored_raw(shadow: AnnDataShadow) -> bool:
    root = shadow._state.root()
    return "raw" in root or "raw.X" in root


def x_summary(shadow: AnnDataShadow) -> str | None:
    """``"csr_matrix float32 (1000, 200)"``: X's encoding, dtype and shape (of the view), or None without X.

    A stored X is described from the file's metadata (nothing is read); an X assigned in memory, from its value.
    """
    for store in (shadow._state.pending, shadow._state.inherited):
        if ("X", "") in store:
            return _value_summary(store[("X", "")])
    root = shadow._state.root()
    if "X" not in root:
        return None
    from shadows.io.storage import is_group
    from shadows.spec import encoding_of

    elem = root["X"]
    dtype = elem["data"].dtype if is_group(elem) and "data" in elem else getattr(elem, "dtype", "?")
    n, m = shadow.shape
    return f"{encoding_of(elem)[0]} {dtype} ({n}, {m})"


def _value_summary(value: Any) -> str | None:
    if value is None:
        return None
    import scipy.sparse as sp

    if sp.issparse(value):
        kind = f"{value.format}_matrix"  # anndata's encoding for scipy's matrices and arrays alike
    elif type(value).__module__ == "numpy":
        kind = "array"
    else:
        kind = type(value).__name__
    shape = tuple(int(d) for d in getattr(value, "shape", ()))
    return f"{kind} {getattr(value, 'dtype', '?')} {shape}"


def header(shadow: AnnDataShadow) -> str:
    """First line of the repr, as AnnData's (for a view, also the file's shape)."""
    n, m = shadow.shape
    if shadow.is_view:
        return (
            f"View of AnnData Shadow object with n_obs × n_vars = {n} × {m} "
            f"(original {shadow._state.n_obs_file} × {shadow._state.n_vars_file})"
        )
    return f"AnnData Shadow object with n_obs × n_vars = {n} × {m}"


def text_repr(shadow: AnnDataShadow) -> str:
    """``repr(shadow)``: the elements of each group, marked cached or new, and the file (nothing is read)."""
    if not shadow._state.storage.is_open:
        return header(shadow) + f"\n  (closed: {shadow._state.storage.describe()})"
    lines = [header(shadow)]
    for name, items, mark in sections(shadow):
        if name == "X":
            lines.append(f"  X{mark}: {items[0]}")
        else:
            lines.append(f"  {name}{mark}:\t" + ", ".join(items))
    lines.append(f"  file: {shadow._state.storage.describe()} (mode {shadow.mode!r})")
    return "\n".join(lines)


def html_repr(shadow: AnnDataShadow) -> str:
    """The repr for notebooks: the elements of each group as a table (nothing is read)."""
    if not shadow._state.storage.is_open:
        return f"<pre>{html.escape(text_repr(shadow))}</pre>"
    rows = []
    for name, items, mark in sections(shadow):
        rows.append(
            f"<tr><th style='text-align:left'>{html.escape(name + mark)}</th>"
            f"<td style='text-align:left'>{html.escape(', '.join(items))}</td></tr>"
        )
    return (
        f"<div><p><b>{html.escape(header(shadow))}</b></p>"
        f"<table>{''.join(rows)}</table>"
        f"<p><small>{html.escape(str(shadow._state.storage.describe()))} · {CACHED} cached · {NEW} new, not yet written"
        "</small></p></div>"
    )
