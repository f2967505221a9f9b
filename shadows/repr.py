"""Text and HTML representations of shadows: shape, each group with its keys, and what is cached or new.

``ᐁ`` marks an element read into the cache, ``▲`` one added (or changed) in memory and not yet in the file.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .anndata import AnnDataShadow

CACHED = "ᐁ"
NEW = "▲"
_GROUPS = ("obsm", "varm", "obsp", "varp", "layers", "uns")


def _mark(shadow: AnnDataShadow, group: str, key: str) -> str:
    k = (group, key)
    if k in shadow._pending:
        return f" {NEW}"
    if k in shadow._cache or k in shadow._inherited:
        return f" {CACHED}"
    return ""


def sections(shadow: AnnDataShadow) -> list[tuple[str, list[str], str]]:
    """``(name, [key + mark...], mark of the whole element)`` for every non-empty part of the shadow."""
    out: list[tuple[str, list[str], str]] = []
    x_mark = _mark(shadow, "X", "")
    has_x = ("X", "") in shadow._pending or "X" in shadow._root()
    if has_x:
        out.append(("X", [], x_mark))
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
        deleted = [k for (g, k) in shadow._deleted if g == group]
        if keys or deleted:
            items = [f"'{k}'{_mark(shadow, group, k)}" for k in keys] + [f"'{k}' (deleted)" for k in deleted]
            out.append((group, items, ""))
    raw = shadow.raw if ("raw", "") not in shadow._pending else None
    if raw is not None:
        parts = ["X", "var"] + (["varm"] if _has(shadow, raw) else [])
        cached = any(k[0] == "raw" for k in shadow._cache)
        out.append(("raw", parts, f" {CACHED}" if cached else ""))
    return out


def _has(shadow: AnnDataShadow, raw: Any) -> bool:
    return raw._path("varm") in shadow._root()


def header(shadow: AnnDataShadow) -> str:
    n, m = shadow.shape
    if shadow.is_view:
        return (
            f"View of AnnData Shadow object with n_obs × n_vars = {n} × {m} "
            f"(original {shadow._n_obs_file} × {shadow._n_vars_file})"
        )
    return f"AnnData Shadow object with n_obs × n_vars = {n} × {m}"


def text_repr(shadow: AnnDataShadow) -> str:
    if not shadow._storage.is_open:
        return header(shadow) + f"\n  (closed: {shadow._storage.describe()})"
    lines = [header(shadow)]
    for name, items, mark in sections(shadow):
        if name == "X":
            lines.append(f"  X{mark}")
        else:
            lines.append(f"  {name}{mark}:\t" + ", ".join(items))
    lines.append(f"  file: {shadow._storage.describe()} (mode {shadow.mode!r})")
    return "\n".join(lines)


def html_repr(shadow: AnnDataShadow) -> str:
    if not shadow._storage.is_open:
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
        f"<p><small>{html.escape(str(shadow._storage.describe()))} · {CACHED} cached · {NEW} new, not yet written"
        "</small></p></div>"
    )
