"""Generate the cartoon AnnData files used by the benchmarks.

The data imitate the community's h5ad tutorial ("cartoon" single-cell data):

* ``X``: 100,000 cells x 5,000 genes, ~10 % non-zero integer counts stored as float32;
* ``obs``: a categorical ``donor`` column, names ``cell_0``, ``cell_1``, ...;
* ``var``: a ``symbol`` column, names ``ENS0000000``, ``ENS0000001``, ... (``ENS%07d``);
* ``obsm``: ``X_pca`` (50 float32 columns) and ``X_umap`` (2 float32 columns).

The same AnnData object is written by anndata itself as CSR ``.h5ad``, CSC ``.h5ad``, dense ``.h5ad`` and
CSR ``.zarr``. Files are cached in a data directory (``$SHADOWS_BENCH_DATA``, default ``~/.cache/shadows-bench``)
and only written when missing (or with ``--force``).

``--scale`` multiplies the number of cells (the number of genes stays 5,000 unless ``--n-vars`` is given), so
``--scale 0.2`` makes 20,000 x 5,000 files, about a fifth of the full size.

Usage::

    python benchmarks/generate.py [--scale 1.0] [--data-dir DIR] [--kinds csr,csc,dense,zarr] [--force]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from streamed import write_streamed_h5ad  # noqa: E402,F401  (the atlas-scale writer, re-exported here)

N_OBS = 100_000
N_VARS = 5_000
DENSITY = 0.1
SEED = 0
KINDS = ("csr", "csc", "dense", "zarr")
DONORS = ("D1", "D2", "D3", "D4", "D5", "D6", "D7", "D8")


def default_data_dir() -> Path:
    return Path(os.environ.get("SHADOWS_BENCH_DATA", Path.home() / ".cache" / "shadows-bench")).expanduser()


def dims(scale: float = 1.0, n_vars: int | None = None) -> tuple[int, int]:
    """Shape of the benchmark matrix for a given scale (the scale multiplies the number of cells)."""
    n_obs = max(1_000, int(round(N_OBS * scale)))
    return n_obs, int(n_vars or N_VARS)


def random_csr(n_obs: int, n_vars: int, density: float = DENSITY, seed: int = SEED, chunk_rows: int = 10_000):
    """Random CSR count matrix (float32 integer counts), built vectorised.

    Every entry is non-zero independently with probability ``density``. The positions of the non-zeros within a
    block of rows (flattened row-major) are drawn as cumulative sums of geometric gaps, so they come out sorted and
    distinct with O(nnz) random numbers and no per-row Python loop. This is exactly "a binomial number of non-zeros
    per row, at uniformly random, sorted, distinct columns".
    """
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    indptr = np.zeros(n_obs + 1, dtype=np.int64)
    indices_parts: list[np.ndarray] = []
    for r0 in range(0, n_obs, chunk_rows):
        r1 = min(n_obs, r0 + chunk_rows)
        n_cells = (r1 - r0) * n_vars
        expected = n_cells * density
        m = int(expected + 8 * np.sqrt(expected * (1 - density)) + 64)
        pos = np.cumsum(rng.geometric(density, size=m), dtype=np.int64) - 1
        while pos[-1] < n_cells:  # extremely unlikely: draw more gaps
            more = np.cumsum(rng.geometric(density, size=m), dtype=np.int64) + pos[-1]
            pos = np.concatenate([pos, more])
        pos = pos[: np.searchsorted(pos, n_cells)]
        rows, cols = np.divmod(pos, n_vars)
        indptr[r0 + 1 : r1 + 1] = np.cumsum(np.bincount(rows, minlength=r1 - r0))
        indptr[r0 + 1 : r1 + 1] += indptr[r0]
        indices_parts.append(cols.astype(np.int32))
    indices = np.concatenate(indices_parts) if indices_parts else np.zeros(0, np.int32)
    # integer counts >= 1, geometric tail (like UMI counts), stored as float32
    data = rng.geometric(0.4, size=indices.size).astype(np.float32)
    if indptr[-1] <= np.iinfo(np.int32).max:
        indptr = indptr.astype(np.int32)
    return sp.csr_matrix((data, indices, indptr), shape=(n_obs, n_vars))


def make_adata(n_obs: int, n_vars: int, density: float = DENSITY, seed: int = SEED):
    """The cartoon AnnData object (X as CSR)."""
    import anndata as ad
    import pandas as pd

    X = random_csr(n_obs, n_vars, density=density, seed=seed)
    rng = np.random.default_rng(seed + 1)
    obs = pd.DataFrame(
        {"donor": pd.Categorical(rng.choice(DONORS, size=n_obs), categories=list(DONORS))},
        index=pd.Index([f"cell_{i}" for i in range(n_obs)]),
    )
    var = pd.DataFrame(
        {"symbol": [f"Gene_{i}" for i in range(n_vars)]},
        index=pd.Index([f"ENS{i:07d}" for i in range(n_vars)]),
    )
    obsm = {
        "X_pca": rng.standard_normal((n_obs, 50), dtype=np.float32),
        "X_umap": rng.standard_normal((n_obs, 2), dtype=np.float32),
    }
    return ad.AnnData(X=X, obs=obs, var=var, obsm=obsm)


def file_name(kind: str, n_obs: int, n_vars: int) -> str:
    suffix = ".zarr" if kind == "zarr" else ".h5ad"
    fmt = "csr" if kind == "zarr" else kind
    return f"cartoon_{n_obs}x{n_vars}_{fmt}{suffix}"


def paths(data_dir: Path | str | None = None, scale: float = 1.0, n_vars: int | None = None) -> dict[str, Path]:
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    n_obs, nv = dims(scale, n_vars)
    return {kind: data_dir / file_name(kind, n_obs, nv) for kind in KINDS}


def path_size(path: Path) -> int:
    """Size in bytes of a file, or of all files under a directory (zarr)."""
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def write_kind(adata, kind: str, dst: Path) -> None:
    """Write ``adata`` (X as CSR) as ``kind`` to ``dst`` atomically (via a temporary name)."""
    tmp = dst.with_name(dst.name + ".tmp")
    if tmp.is_dir():
        shutil.rmtree(tmp)
    elif tmp.exists():
        tmp.unlink()
    if kind == "csr":
        adata.write_h5ad(tmp)
    elif kind == "zarr":
        with warnings.catch_warnings():  # anndata 0.12 warns that its default (zarr format 2) will change
            warnings.simplefilter("ignore", UserWarning)
            adata.write_zarr(tmp)
    else:
        X = adata.X
        adata.X = X.tocsc() if kind == "csc" else X.toarray()
        try:
            adata.write_h5ad(tmp)
        finally:
            adata.X = X
    if dst.is_dir():
        shutil.rmtree(dst)
    elif dst.exists():
        dst.unlink()
    tmp.rename(dst)


def generate(
    data_dir: Path | str | None = None,
    scale: float = 1.0,
    kinds: tuple[str, ...] | list[str] = KINDS,
    force: bool = False,
    n_vars: int | None = None,
    verbose: bool = True,
) -> dict[str, Path]:
    """Make (if missing) the benchmark files and return ``{kind: path}``."""
    out = paths(data_dir, scale, n_vars)
    todo = [k for k in kinds if force or not out[k].exists()]
    if todo:
        n_obs, nv = dims(scale, n_vars)
        out[todo[0]].parent.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        adata = make_adata(n_obs, nv)
        if verbose:
            print(
                f"generated {n_obs} x {nv}, nnz={adata.X.nnz} ({adata.X.nnz / (n_obs * nv):.2%}) "
                f"in {time.perf_counter() - t0:.1f} s",
                file=sys.stderr,
            )
        for kind in todo:
            t0 = time.perf_counter()
            write_kind(adata, kind, out[kind])
            if verbose:
                print(
                    f"wrote {out[kind]} ({path_size(out[kind]) / 2**20:.0f} MB) in {time.perf_counter() - t0:.1f} s",
                    file=sys.stderr,
                )
    return {k: out[k] for k in kinds}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", type=float, default=1.0, help="multiplies the number of cells (100,000 at 1.0)")
    p.add_argument("--n-vars", type=int, default=None, help=f"number of genes (default {N_VARS})")
    p.add_argument("--data-dir", default=None, help="default: $SHADOWS_BENCH_DATA or ~/.cache/shadows-bench")
    p.add_argument("--kinds", default=",".join(KINDS), help="comma-separated subset of " + ",".join(KINDS))
    p.add_argument("--force", action="store_true", help="rewrite the files even if they exist")
    args = p.parse_args(argv)
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    bad = set(kinds) - set(KINDS)
    if bad:
        p.error(f"unknown kinds: {sorted(bad)}")
    for kind, path in generate(args.data_dir, args.scale, kinds, args.force, args.n_vars).items():
        print(f"{kind}\t{path}\t{path_size(path) / 2**20:.1f} MB")


if __name__ == "__main__":
    main()
