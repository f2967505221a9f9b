"""Benchmark ``shadows.concat`` (a collection of files) against anndata: wall time and peak memory.

Not part of CI (nothing here is collected by pytest): run it by hand, on Linux (``/proc``)::

    python benchmarks/collections.py                          # 20 files x 50,000 cells x 5,000 genes (CSR)
    python benchmarks/collections.py --n-files 20 --n-obs 5000 # a reduced scale for small machines

Cases (each side in a fresh Python process, the two sides run alternately ``--repeat`` times; the median time and
the median peak RSS above the post-import baseline; the CPU ratio compares the processes' CPU time, which a busy
machine disturbs less than wall time):

* ``open``: open the collection and take its shape | anndata: ``read_h5ad(f, backed="r")`` of every file;
* ``obs column``: one obs column of every file | anndata: backed open, ``a.obs["donor"]``, ``pd.concat``;
* ``filter 10 % + X``: the rows of one donor (~10 %) and their X | anndata: backed open, each file's rows
  (``a[mask].X``), ``scipy.sparse.vstack``;
* ``one gene``: one gene across the files | anndata: backed open, ``a[:, gene].X`` per file, ``vstack``;
* ``write``: the whole collection into one h5ad | ``anndata.experimental.concat_on_disk``.

The files are copies of one generated file (cell names made unique with ``index_unique``), cached in
``$SHADOWS_BENCH_DATA`` (default ``~/.cache/shadows-bench``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np

DATA = Path(os.environ.get("SHADOWS_BENCH_DATA", Path.home() / ".cache/shadows-bench"))
REPO = Path(__file__).resolve().parent.parent
GENE = "ENS0000042"

PRELUDE = """
import json, os, sys, time
import numpy as np, pandas as pd, scipy.sparse as sp, h5py, anndata as ad
import shadows
def _kib(key):
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(key + ':'):
                return int(line.split()[1])
files = json.loads(sys.argv[1]); out = sys.argv[2]; gene = sys.argv[3]
keys = [str(i) for i in range(len(files))]
"""

CASES = {
    "open": (
        "c = shadows.concat(files, index_unique='-'); r = c.shape",
        "bs = [ad.read_h5ad(f, backed='r') for f in files]; r = (sum(b.n_obs for b in bs), bs[0].n_vars)",
    ),
    "obs column": (
        "c = shadows.concat(files, index_unique='-'); r = c.obs_vector('donor')",
        "bs = [ad.read_h5ad(f, backed='r') for f in files]; r = pd.concat([b.obs['donor'] for b in bs])",
    ),
    "filter 10 % + X": (
        "c = shadows.concat(files, index_unique='-'); r = c[np.asarray(c.obs_vector('donor') == 'd0')].X",
        "bs = [ad.read_h5ad(f, backed='r') for f in files]\n"
        "r = sp.vstack([b[(b.obs['donor'] == 'd0').to_numpy()].X for b in bs], format='csr')",
    ),
    "one gene": (
        "c = shadows.concat(files, index_unique='-'); r = c[:, gene].X",
        "bs = [ad.read_h5ad(f, backed='r') for f in files]; r = sp.vstack([b[:, gene].X for b in bs], format='csr')",
    ),
    "write": (
        "shadows.concat(files, index_unique='-').write_h5ad(out)",
        "from anndata.experimental import concat_on_disk\nconcat_on_disk(files, out, index_unique='-')",
    ),
}


def _child(op: str) -> str:
    return PRELUDE + textwrap.dedent(
        f"""
        import gc; gc.collect()
        base = _kib('VmRSS')
        open('/proc/self/clear_refs', 'w').write('5')
        t0, c0 = time.perf_counter(), time.process_time()
        {textwrap.indent(op, "        ").strip()}
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
        print('@@' + json.dumps({{'s': dt, 'cpu': cpu, 'mb': (_kib('VmHWM') - base) / 1024}}))
        """
    )


def _run_once(op: str, files: list[str]) -> dict:
    # the previous run's written file is flushed first: else its writeback throttles this run's writes
    os.sync()
    with tempfile.TemporaryDirectory(dir=DATA) as d:
        out = str(Path(d) / "out.h5ad")
        p = subprocess.run(
            [sys.executable, "-c", _child(op), json.dumps(files), out, GENE],
            capture_output=True,
            text=True,
            cwd=REPO,
            env={**os.environ, "PYTHONWARNINGS": "ignore"},
        )
    line = next((ln for ln in p.stdout.splitlines() if ln.startswith("@@")), None)
    if line is None:
        raise RuntimeError(p.stderr[-2000:])
    return json.loads(line[2:])


def run_pair(ours: str, theirs: str, files: list[str], repeat: int) -> tuple[dict, dict]:
    """Both sides, alternately (a busy machine slows both alike), ``repeat`` times: the median time and memory."""
    runs: dict[str, list[dict]] = {"ours": [], "theirs": []}
    for _ in range(repeat):
        runs["ours"].append(_run_once(ours, files))
        runs["theirs"].append(_run_once(theirs, files))

    def median(rs: list[dict]) -> dict:
        return {k: float(np.median([r[k] for r in rs])) for k in ("s", "cpu", "mb")}

    return median(runs["ours"]), median(runs["theirs"])


def make_files(n_files: int, n_obs: int, n_vars: int) -> list[str]:
    """``n_files`` copies of one CSR file (written by anndata) of ``n_obs`` cells; ~10 % of the cells per donor."""
    import anndata as ad
    import numpy as np
    import pandas as pd
    import scipy.sparse as sp

    d = DATA / f"collection_{n_obs}x{n_vars}"
    d.mkdir(parents=True, exist_ok=True)
    first = d / "part00.h5ad"
    if not first.exists():
        rng = np.random.default_rng(0)
        nnz = rng.binomial(n_vars, 0.1, n_obs)
        indptr = np.concatenate([[0], np.cumsum(nnz)]).astype(np.int64)
        indices = np.concatenate([np.sort(rng.choice(n_vars, k, replace=False)) for k in nnz]).astype(np.int32)
        X = sp.csr_matrix((rng.integers(1, 99, indptr[-1]).astype(np.float32), indices, indptr), (n_obs, n_vars))
        donors = np.array([f"d{i}" for i in range(10)])
        obs = pd.DataFrame(
            {"donor": pd.Categorical(donors[rng.integers(0, 10, n_obs)])}, index=[f"cell_{i}" for i in range(n_obs)]
        )
        var = pd.DataFrame(index=[f"ENS{i:07d}" for i in range(n_vars)])
        a = ad.AnnData(X=X, obs=obs, var=var)
        a.obsm["X_pca"] = rng.normal(size=(n_obs, 50)).astype(np.float32)
        tmp = d / ".part00.tmp.h5ad"
        a.write_h5ad(tmp)
        tmp.rename(first)
    files = [first]
    for i in range(1, n_files):
        f = d / f"part{i:02d}.h5ad"
        if not f.exists():
            shutil.copyfile(first, f)
        files.append(f)
    for f in files:  # a warm page cache for both sides
        with open(f, "rb") as fh:
            while fh.read(2**24):
                pass
    return [str(f) for f in files]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-files", type=int, default=20)
    ap.add_argument("--n-obs", type=int, default=50_000)
    ap.add_argument("--n-vars", type=int, default=5_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--cases", default="", help="only cases whose name contains this")
    args = ap.parse_args(argv)
    files = make_files(args.n_files, args.n_obs, args.n_vars)
    size = sum(Path(f).stat().st_size for f in files) / 2**20
    print(f"{args.n_files} files x {args.n_obs} cells x {args.n_vars} genes (CSR, {size:.0f} MB in all)\n")
    print("| case | shadows s | anndata s | time ratio | CPU ratio | shadows MB | anndata MB | memory ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for name, (ours, theirs) in CASES.items():
        if args.cases not in name:
            continue
        a, b = run_pair(ours, theirs, files, args.repeat)
        print(
            f"| {name} | {a['s']:.3f} | {b['s']:.3f} | {a['s'] / max(b['s'], 1e-9):.2f} | "
            f"{a['cpu'] / max(b['cpu'], 1e-9):.2f} | {a['mb']:.1f} | "
            f"{b['mb']:.1f} | {a['mb'] / max(b['mb'], 1e-9):.2f} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
