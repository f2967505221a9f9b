"""Tables and goal checks from the raw runs that ``benchmarks/harness.py --json FILE`` appends (one case a line).

Usage::

    python benchmarks/harness_report.py results_100k_warm.jsonl [more.jsonl ...]

The goals (issue 17): every case within 1.5x of the floor; <= 0.7x of a peer that reads more than the answer
needs (a minor-axis selection: genes of CSR/zarr, cells of CSC; open, obs and obsm, which anndata's backed mode
and read_lazy answer after reading all of obs/var or the whole array), parity (<= 1.0x) elsewhere; one gene of CSR
at 1M x 20k <= 0.5x backed warm and <= 0.7x cold; convert <= 3x and stats <= 2x the floor.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import summarize, table  # noqa: E402


def peer_reads_more(fmt: str, case: str) -> bool:
    if case in ("open", "obs", "obsm"):
        return True
    if case in ("gene1", "genes200"):
        return fmt != "csc"
    if case in ("cells6", "cells1000"):
        return fmt == "csc"
    return False


def goals(row: dict) -> list[tuple[str, float, float, bool]]:
    """``(what, measured, goal, met)`` for each goal that applies to the row."""
    sm = summarize(row)
    p = sm["peers"]
    out = []
    fl = p.get("floor", {}).get("ratio")
    case, fmt = row["case"], row["fmt"]
    floor_goal = {"convert": 3.0, "stats": 2.0}.get(case, 1.5)
    if fl is not None:
        out.append(("÷ floor", fl, floor_goal, fl <= floor_goal))
    for peer in ("backed", "lazy"):
        r = p.get(peer, {}).get("ratio")
        if r is None:
            continue
        g = 0.7 if peer_reads_more(fmt, case) else 1.0
        if peer == "backed" and case == "gene1" and fmt == "csr" and row["shape"] == "1m":
            g = 0.5 if row["mode"] == "warm" else 0.7
        out.append((f"÷ {'read_lazy' if peer == 'lazy' else peer}", r, g, r <= g))
    return out


def render(rows: list[dict]) -> str:
    lines = [table(rows), "", "| file | case | goal | measured | met |", "|---|---|---|---|---|"]
    for row in rows:
        for what, v, g, ok in goals(row):
            lines.append(f"| {row['fmt']} | {row['case']} | {what} ≤ {g:g} | {v:.2f} | {'✅' if ok else '❌'} |")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    for name in argv:
        rows = [json.loads(line) for line in Path(name).read_text().splitlines() if line.strip()]
        if not rows:
            continue
        r0 = rows[0]
        print(f"\n### {r0['shape']} {r0['mode']} ({name})\n")
        print(render(rows))


if __name__ == "__main__":
    main(sys.argv[1:])
