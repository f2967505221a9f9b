"""Atlas-scale scanpy: scanpy's standard pipeline on a dask shadow, side by side with in-memory scanpy.

Steps (scanpy's own functions, the same code on both sides): read/open -> ``calculate_qc_metrics`` ->
``filter_cells``/``filter_genes`` -> ``normalize_total`` -> ``log1p`` -> ``highly_variable_genes`` (2,000) ->
``pca`` (50, ``covariance_eigh``) -> ``neighbors`` -> ``umap`` -> ``leiden``.  Each side runs in its own child
process, which reports every step's wall time and peak RSS (``VmHWM``, reset before each step by writing ``5`` to
``/proc/self/clear_refs``), both absolute and above the RSS after the imports.  On the shadow, ``normalize_total``
and ``log1p`` only extend X's lazy dask chain: their work is paid by the steps that read X (HVG, PCA), so compare
the totals as well as the steps.

The data are negative-binomial counts, streamed into an h5ad with h5py one block of rows at a time
(:func:`write_nb_counts`; 1,000,000 x 20,000 at 2.5 % is a 4 GB file that never exists in memory).

Usage::

    python benchmarks/atlas.py --cells 200000 --genes 20000 --sides memory,shadow              # side by side
    python benchmarks/atlas.py --cells 1000000 --genes 20000 --sides shadow --umap-init pca    # the shadow alone
    python benchmarks/atlas.py ... --until pca                                                 # qc -> PCA only

Options: ``--umap-init`` (``spectral``, umap's default, or ``pca``), ``--density`` (default 0.025), ``--data-dir``
(default ``$SHADOWS_BENCH_DATA`` or ``~/.cache/shadows-bench``), ``--timeout`` (seconds per side), ``--json FILE``
(raw results).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

STEPS: list[tuple[str, str]] = [
    (
        "qc",
        "a.var['mt'] = a.var_names.str.startswith('MT-')\n"
        "sc.pp.calculate_qc_metrics(a, qc_vars=['mt'], inplace=True, percent_top=None)",
    ),
    ("filter", "sc.pp.filter_cells(a, min_genes=200)\nsc.pp.filter_genes(a, min_cells=10)"),
    ("normalize_total", "sc.pp.normalize_total(a, target_sum=1e4)"),
    ("log1p", "sc.pp.log1p(a)"),
    ("hvg", "sc.pp.highly_variable_genes(a, n_top_genes=2000)"),
    ("pca", "sc.pp.pca(a, n_comps=50, mask_var='highly_variable', svd_solver='covariance_eigh')"),
    ("neighbors", "sc.pp.neighbors(a, transformer=nndescent(a.n_obs))"),
    ("umap", "sc.tl.umap(a)"),
    ("leiden", "sc.tl.leiden(a, flavor='igraph', n_iterations=2, random_state=0)"),
]

OPEN = {
    "memory": "a = ad.read_h5ad(PATH)",
    "shadow": "a = AnnDataShadow(PATH, array_backend='dask')",
}


# --- data -------------------------------------------------------------------------------------------------------


def _positions(rng: np.random.Generator, n_rows: int, n_vars: int, density: float) -> tuple[np.ndarray, np.ndarray]:
    """Row and column of every non-zero of a block, sorted, each entry non-zero with probability ``density``
    (cumulative geometric gaps: O(nnz) random numbers, no loop over rows)."""
    n_cells = n_rows * n_vars
    expected = n_cells * density
    m = int(expected + 8 * np.sqrt(expected) + 64)
    pos = np.cumsum(rng.geometric(density, size=m), dtype=np.int64) - 1
    while pos[-1] < n_cells:
        pos = np.concatenate([pos, pos[-1] + np.cumsum(rng.geometric(density, size=m), dtype=np.int64)])
    pos = pos[: np.searchsorted(pos, n_cells)]
    return np.divmod(pos, n_vars)


def write_nb_counts(
    path: str | Path,
    n_obs: int,
    n_vars: int,
    density: float = 0.025,
    seed: int = 0,
    block_rows: int = 20_000,
    n_groups: int = 12,
) -> Path:
    """Stream a CSR h5ad of negative-binomial counts to ``path``, ``block_rows`` rows at a time (h5py).

    Every entry is non-zero with probability ``density``; a non-zero is ``1 + NB(2, p)`` whose mean depends on the
    gene (log-normal), on the cell's depth (log-normal) and, for a tenth of the genes, on the cell's group (one of
    ``n_groups``, stored as ``obs["group"]``), so that HVG, PCA and the clustering have structure to find.  The first
    13 genes are named ``MT-…``.  Memory: one block (``block_rows * n_vars * density`` non-zeros) at a time.
    The file is written under a temporary name and renamed when complete; anndata reads it.
    """
    import h5py
    import pandas as pd

    try:
        from anndata.io import write_elem
    except ImportError:  # anndata < 0.11
        from anndata.experimental import write_elem

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    rng = np.random.default_rng(seed)
    gene_mean = rng.lognormal(0.0, 1.0, n_vars)
    group_factor = np.ones((n_groups, n_vars))
    markers = rng.random(n_vars) < 0.1
    group_factor[:, markers] = rng.lognormal(0.0, 1.2, (n_groups, int(markers.sum())))
    groups = rng.integers(0, n_groups, n_obs)
    depth = rng.lognormal(0.0, 0.4, n_obs)
    indptr = np.zeros(n_obs + 1, dtype=np.int64)
    with h5py.File(tmp, "w") as f:
        f.attrs.update({"encoding-type": "anndata", "encoding-version": "0.1.0"})
        x = f.create_group("X")
        x.attrs.update({"encoding-type": "csr_matrix", "encoding-version": "0.1.0", "shape": (n_obs, n_vars)})
        data = x.create_dataset("data", (0,), dtype=np.float32, maxshape=(None,), chunks=(1 << 18,))
        indices = x.create_dataset("indices", (0,), dtype=np.int32, maxshape=(None,), chunks=(1 << 18,))
        nnz = 0
        for r0 in range(0, n_obs, block_rows):
            r1 = min(n_obs, r0 + block_rows)
            rows, cols = _positions(rng, r1 - r0, n_vars, density)
            mean = gene_mean[cols] * depth[r0 + rows] * group_factor[groups[r0 + rows], cols]
            values = 1 + rng.negative_binomial(2, 2.0 / (2.0 + mean))
            indptr[r0 + 1 : r1 + 1] = nnz + np.cumsum(np.bincount(rows, minlength=r1 - r0))
            n = cols.size
            data.resize((nnz + n,))
            indices.resize((nnz + n,))
            data[nnz:] = values.astype(np.float32)
            indices[nnz:] = cols.astype(np.int32)
            nnz += n
        # scipy wants indices and indptr of one dtype: int32 while the non-zeros fit (anndata writes the same)
        x.create_dataset("indptr", data=indptr.astype(np.int32) if nnz < 2**31 else indptr)
        obs = pd.DataFrame(
            {"group": pd.Categorical.from_codes(groups, [f"g{i}" for i in range(n_groups)])},
            index=pd.Index([f"cell_{i}" for i in range(n_obs)]),
        )
        var = pd.DataFrame(index=pd.Index([("MT-" if i < 13 else "G") + str(i) for i in range(n_vars)]))
        write_elem(f, "obs", obs)
        write_elem(f, "var", var)
        for key in ("obsm", "varm", "obsp", "varp", "layers", "uns"):
            write_elem(f, key, {})
    tmp.replace(path)
    return path


def data_file(data_dir: Path, n_obs: int, n_vars: int, density: float) -> Path:
    """The cached counts file for these dimensions, written when missing."""
    path = data_dir / f"atlas_nb_{n_obs}x{n_vars}_{density:g}.h5ad"
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        write_nb_counts(path, n_obs, n_vars, density)
        print(
            f"wrote {path} ({path.stat().st_size / 2**20:.0f} MB) in {time.perf_counter() - t0:.0f} s", file=sys.stderr
        )
    return path


# --- measurement ------------------------------------------------------------------------------------------------

CHILD = r"""
import json, sys, time, warnings
warnings.filterwarnings('ignore')
import anndata as ad, scanpy as sc, dask, numpy as np  # noqa: F401
from shadows import AnnDataShadow
PATH = {path!r}


def nndescent(n_obs):
    # scanpy's own default transformer for large data (same parameters), handing scanpy a csr_matrix: pynndescent
    # 0.7 returns a csr_array, on which scanpy 1.11's neighbors fail ('csr_array' object has no attribute 'getnnz')
    import numpy as np, scipy.sparse as sp
    from pynndescent import PyNNDescentTransformer

    class Transformer(PyNNDescentTransformer):
        def fit_transform(self, X, y=None, **kw):
            return sp.csr_matrix(super().fit_transform(X, y, **kw))

        def transform(self, X, y=None):
            return sp.csr_matrix(super().transform(X, y))

    return Transformer(n_neighbors=15, metric="euclidean", random_state=0, n_jobs=sc.settings.n_jobs,
                       n_trees=min(64, 5 + round(n_obs ** 0.5 / 20.0)), n_iters=max(5, round(np.log2(n_obs))))


def rss(key):
    with open('/proc/self/status') as f:
        return next(int(l.split()[1]) / 1024 for l in f if l.startswith(key))

base = rss('VmRSS')
for name, code in {steps!r}:
    open('/proc/self/clear_refs', 'w').write('5')
    t0 = time.perf_counter()
    exec(code)
    dt = time.perf_counter() - t0
    peak = rss('VmHWM')
    print(json.dumps({{'step': name, 'time_s': dt, 'peak_mb': peak, 'above_mb': peak - base,
                      'rss_mb': rss('VmRSS'), 'shape': list(a.shape)}}), flush=True)
"""


# umap-learn's default spectral initialisation runs ARPACK with sqrt(n) Lanczos vectors: at 1M cells that is 1,000
# float64 vectors of a million entries (8 GB) and, measured on this machine, more than 40 minutes before the layout
# starts; in-memory scanpy pays exactly the same.  ``--umap-init pca`` starts the layout from the first two principal
# components instead (the initialisation recommended for large data; umap-learn rescales it to [0, 10] itself).
UMAP_INIT = {
    "spectral": "sc.tl.umap(a)",
    "pca": "sc.tl.umap(a, init_pos=np.ascontiguousarray(a.obsm['X_pca'][:, :2]))",
}


def run_side(side: str, path: Path, until: str | None, timeout: float, umap_init: str = "spectral") -> list[dict]:
    """Run the pipeline on one side in a child process; the steps it finished (a timeout keeps those)."""
    names = [n for n, _ in STEPS]
    last = names.index(until) + 1 if until else len(STEPS)
    chosen = [(n, UMAP_INIT[umap_init] if n == "umap" else c) for n, c in STEPS[:last]]
    steps = [("open" if side == "shadow" else "read", OPEN[side])] + chosen
    code = CHILD.format(path=str(path), steps=steps)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SHADOWS_PROGRESS": "0"}
    out: list[dict] = []
    with subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    ) as p:
        t_end = time.monotonic() + timeout
        try:
            for line in p.stdout:
                if line.startswith("{"):
                    out.append(json.loads(line))
                    r = out[-1]
                    print(
                        f"{side:7s} {r['step']:16s} {r['time_s']:8.1f} s {r['peak_mb']:8.0f} MB peak "
                        f"({r['above_mb']:.0f} above imports)",
                        file=sys.stderr,
                        flush=True,
                    )
                if time.monotonic() > t_end:
                    p.kill()
                    out.append({"step": "timeout", "error": f"killed after {timeout:.0f} s"})
                    break
        finally:
            p.wait()
        if p.returncode not in (0, -9):
            out.append({"step": "error", "error": p.stderr.read()[-1500:]})
    return out


def table(results: dict[str, list[dict]]) -> str:
    """A markdown table, one row per step, the sides side by side (ratios shadow / memory)."""
    sides = list(results)
    by = {s: {r["step"]: r for r in results[s] if "time_s" in r} for s in sides}
    order = ["read/open"] + [n for n, _ in STEPS]
    head = "| step | " + " | ".join(f"{s}: time s | {s}: peak MB (above imports)" for s in sides)
    if len(sides) == 2:
        head += " | time ratio | memory ratio"
    lines = [head + " |", "|" + "---|" * (1 + 2 * len(sides) + (2 if len(sides) == 2 else 0))]
    for step in order:
        rows = [
            by[s].get("open" if step == "read/open" and s == "shadow" else "read" if step == "read/open" else step)
            for s in sides
        ]
        if not any(rows):
            continue
        cells = []
        for r in rows:
            cells += [f"{r['time_s']:.1f}", f"{r['peak_mb']:,.0f} ({r['above_mb']:,.0f})"] if r else ["-", "-"]
        if len(sides) == 2 and all(rows):
            m, s = rows
            cells += [f"{s['time_s'] / max(m['time_s'], 1e-3):.2f}", f"{s['above_mb'] / max(m['above_mb'], 1):.2f}"]
        elif len(sides) == 2:
            cells += ["-", "-"]
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    for label, upto in (("qc -> pca", "pca"), ("whole pipeline", None)):
        cells = []
        for s in sides:
            steps = [n for n, _ in STEPS][: [n for n, _ in STEPS].index(upto) + 1] if upto else [n for n, _ in STEPS]
            done = [by[s][n] for n in steps if n in by[s]]
            if len(done) == len(steps):
                cells += [
                    f"{sum(r['time_s'] for r in done):.1f}",
                    f"{max(r['peak_mb'] for r in done):,.0f} ({max(r['above_mb'] for r in done):,.0f})",
                ]
            else:
                cells += ["-", "-"]
        if len(sides) == 2:
            if "-" not in cells:
                t = [float(c) for c in cells[0::2]]
                mem = [float(c.split("(")[1].rstrip(")").replace(",", "")) for c in cells[1::2]]
                cells += [f"{t[1] / t[0]:.2f}", f"{mem[1] / mem[0]:.2f}"]
            else:
                cells += ["-", "-"]
        lines.append(f"| **{label}** | " + " | ".join(cells) + " |")
    errors = [f"{s}: {r['step']}: {r['error'][-300:]}" for s in sides for r in results[s] if "error" in r]
    return "\n".join(lines) + ("\n\n" + "\n".join(errors) if errors else "")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cells", type=int, default=200_000)
    p.add_argument("--genes", type=int, default=20_000)
    p.add_argument("--density", type=float, default=0.025)
    p.add_argument("--sides", default="memory,shadow", help="comma-separated: memory, shadow")
    p.add_argument("--until", default=None, choices=[n for n, _ in STEPS], help="last step to run")
    p.add_argument("--data-dir", default=os.environ.get("SHADOWS_BENCH_DATA", "~/.cache/shadows-bench"))
    p.add_argument("--timeout", type=float, default=7200, help="seconds per side")
    p.add_argument("--json", default=None, help="write the raw results here")
    p.add_argument("--generate-only", action="store_true")
    p.add_argument("--umap-init", default="spectral", choices=sorted(UMAP_INIT), help="umap's initial layout")
    args = p.parse_args(argv)
    path = data_file(Path(args.data_dir).expanduser(), args.cells, args.genes, args.density)
    if args.generate_only:
        return
    results = {}
    for side in [s.strip() for s in args.sides.split(",") if s.strip()]:
        results[side] = run_side(side, path, args.until, args.timeout, args.umap_init)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    size = path.stat().st_size / 2**20
    print(f"\n{args.cells:,} x {args.genes:,}, {args.density:.1%} non-zeros, {path.name} ({size:,.0f} MB)\n")
    print(table(results))


if __name__ == "__main__":
    main()
