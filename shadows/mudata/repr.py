"""Text and HTML representations of a MuDataShadow, in the style of MuData's: the global elements, then each
modality with its elements.  ``ᐁ`` marks an element read into the cache, ``▲`` one added in memory, not yet written.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

from shadows.core.repr import CACHED, NEW, sections
from shadows.core.repr import html_repr as anndata_html_repr

if TYPE_CHECKING:
    from shadows.mudata.shadow import MuDataShadow

_AXIS_NOTE = {0: "", 1: " (shared var)", -1: " (shared obs and var)"}


def header(m: MuDataShadow) -> str:
    """First line of the repr, as MuData's (``View of`` for a view, which axis the modalities share)."""
    n, v = m.shape
    view = "View of " if m.is_view else ""
    return f"{view}MuData Shadow object with n_obs × n_vars = {n} × {v}{_AXIS_NOTE.get(m.axis, '')}"


def _global_sections(m: MuDataShadow) -> list[tuple[str, list[str], str]]:
    # obsm/varm keys named after a modality are mudata's masks of that modality's rows: MuData's repr hides them too
    out = []
    for name, items, mark in sections(m._global):
        if name in ("obsm", "varm"):
            items = [i for i in items if i.split("'")[1] not in m.mod_names] if items else items
            if not items:
                continue
        out.append((name, items, mark))
    return out


def _lines(secs: list[tuple[str, list[str], str]], indent: str) -> list[str]:
    out = []
    for name, items, mark in secs:
        out.append(f"{indent}X{mark}" if name == "X" else f"{indent}{name}{mark}:\t" + ", ".join(items))
    return out


def text_repr(m: MuDataShadow) -> str:
    """``repr(mdata)``: the global elements, then each modality's, marked cached or new (nothing is read)."""
    if not m._storage.is_open:
        return header(m) + f"\n  (closed: {m._storage.describe()})"
    lines = [header(m)]
    lines += _lines(_global_sections(m), "  ")
    n = m.n_mod
    lines.append(f"  {n} modalit{'y' if n == 1 else 'ies'}")
    for name in m.mod_names:
        a = m.mod[name]
        lines.append(f"    {name}:\t{a.n_obs} × {a.n_vars}")
        lines += _lines(sections(a), "      ")
    lines.append(f"  file: {m._storage.describe()} (mode {m.mode!r})")
    return "\n".join(lines)


def html_repr(m: MuDataShadow) -> str:
    """The repr for notebooks: the global elements as a table, each modality as a collapsible AnnDataShadow repr."""
    if not m._storage.is_open:
        return f"<pre>{html.escape(text_repr(m))}</pre>"
    rows = "".join(
        f"<tr><th style='text-align:left'>{html.escape(name + mark)}</th>"
        f"<td style='text-align:left'>{html.escape(', '.join(items))}</td></tr>"
        for name, items, mark in _global_sections(m)
    )
    mods = []
    for name in m.mod_names:
        a = m.mod[name]
        mods.append(
            f"<details><summary><b>{html.escape(name)}</b> {a.n_obs} × {a.n_vars}</summary>"
            f"{anndata_html_repr(a)}</details>"
        )
    n = m.n_mod
    return (
        f"<div><p><b>{html.escape(header(m))}</b></p><table>{rows}</table>"
        f"<p>{n} modalit{'y' if n == 1 else 'ies'}</p>{''.join(mods)}"
        f"<p><small>{html.escape(str(m._storage.describe()))} · {CACHED} cached · {NEW} new, not yet written"
        "</small></p></div>"
    )
