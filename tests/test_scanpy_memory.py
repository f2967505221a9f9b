"""``sc.pl.umap(shadow, color=gene)`` on a large CSR file reads one gene, not the matrix: its peak RSS above the
post-open baseline stays under 10 % of the file's size.

The plot runs in a child process (``sys.executable``) that imports everything, opens the shadow, reads ``VmRSS``
as the baseline, resets the high-water mark (``5`` into ``/proc/self/clear_refs``), plots and renders the figure,
and reports ``VmHWM - baseline`` with the sum of the plotted colour values (so a plot of nothing cannot pass).
Both a ~200 MB file and the ~400 MB file of the issue run by default (the larger one takes ~15 s, mostly writing
it).  Not smaller: about 12 MiB of the peak does not grow with the matrix (obs and var names, HDF5's
buffers, the figure), which is more than 10 % of a 100 MB file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from rss_child import RSS_HELPERS

pytest.importorskip("scanpy")
pytestmark = pytest.mark.skipif(
    not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc/self/clear_refs and VmHWM"
)

# shaped like a typical single-cell atlas: 20,000 genes, 5 % non-zero
N_VARS, DENSITY, GENE_INDEX = 20_000, 0.05, 1234


def _random_csr(n_obs: int, n_vars: int, density: float, seed: int = 0):
    """Bernoulli(density) sparsity, built in blocks of rows so that generating 400 MB stays near 400 MB."""
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    indptr = np.zeros(n_obs + 1, dtype=np.int64)
    indices, data = [], []
    block = max(1, 2**22 // n_vars)
    for r0 in range(0, n_obs, block):
        r1 = min(n_obs, r0 + block)
        n = (r1 - r0) * n_vars
        pos = np.cumsum(rng.geometric(density, size=int(n * density + 8 * np.sqrt(n * density) + 64))) - 1
        pos = pos[pos < n]
        rows, cols = np.divmod(pos, n_vars)
        indptr[r0 + 1 : r1 + 1] = indptr[r0] + np.cumsum(np.bincount(rows, minlength=r1 - r0))
        indices.append(cols.astype(np.int32))
        data.append(rng.geometric(0.4, size=pos.size).astype(np.float32))
    return sp.csr_matrix((np.concatenate(data), np.concatenate(indices), indptr), shape=(n_obs, n_vars))


def _write(path: Path, n_obs: int) -> float:
    """A CSR .h5ad with obsm['X_umap']; returns the sum of the plotted gene."""
    import anndata as ad
    import pandas as pd

    X = _random_csr(n_obs, N_VARS, DENSITY)
    rng = np.random.default_rng(1)
    adata = ad.AnnData(
        X=X,
        obs=pd.DataFrame(index=[f"cell_{i}" for i in range(n_obs)]),
        var=pd.DataFrame(index=[f"gene_{j}" for j in range(N_VARS)]),
        obsm={"X_umap": rng.standard_normal((n_obs, 2), dtype=np.float32)},
    )
    adata.write_h5ad(path)
    return float(X[:, GENE_INDEX].sum(dtype=np.float64))


CHILD = RSS_HELPERS + textwrap.dedent(
    """
    import gc, json, sys
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import scanpy as sc
    from shadows import AnnDataShadow


    path, gene = sys.argv[1], sys.argv[2]
    # the plotting stack's one-time costs (imports, font cache, colormaps, first canvas) are not the data's:
    # pay them on a tiny in-memory AnnData first
    import anndata
    tiny = anndata.AnnData(X=np.ones((3, 1), dtype=np.float32), obsm={"X_umap": np.zeros((3, 2))})
    tiny.var_names = [gene]
    sc.pl.umap(tiny, color=gene, show=False, size=1).figure.canvas.draw()
    plt.close("all")
    s = AnnDataShadow(path)
    # pyarrow's allocator pool (pandas 3 string indexes) is set up once per process: not the data's cost either
    import pandas as pd
    pd.Index(np.array(["a", "b"], dtype=object)).str.len()
    if sys.argv[3] == "warm":
        # so are the caches that plotting this many points leaves behind (a first plot of the same embedding
        # coloured by an in-memory vector): what is measured below is the gene's read plus one plot's own cost
        emb = np.asarray(s.obsm["X_umap"])
        warm = anndata.AnnData(obs=pd.DataFrame({"v": np.zeros(len(emb))}), obsm={"X_umap": emb})
        sc.pl.umap(warm, color="v", show=False, size=1).figure.canvas.draw()
        plt.close("all")
        del warm, emb
    gc.collect()
    base = kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    ax = sc.pl.umap(s, color=gene, show=False, size=1)
    ax.figure.canvas.draw()
    peak = kib("VmHWM")
    values = np.asarray(ax.collections[0].get_array(), dtype=np.float64)
    whole = [k for k in s._state.cache if k[0] == "X"]
    print(json.dumps({"peak_bytes": (peak - base) * 1024, "n": int(values.size), "sum": float(values.sum()),
                      "whole_matrix_cached": bool(whole)}))
    """
)


def _check(tmp_path: Path, n_obs: int, min_mb: int, max_mb: int, frac: float = 0.10, warm: bool = False) -> None:
    path = tmp_path / "big.h5ad"
    expected = _write(path, n_obs)
    size = path.stat().st_size
    assert min_mb * 2**20 <= size <= max_mb * 2**20, f"file is {size / 2**20:.0f} MiB"
    p = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), f"gene_{GENE_INDEX}", "warm" if warm else "cold"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, f"child failed:\n{p.stderr[-3000:]}"
    r = json.loads(p.stdout.strip().splitlines()[-1])
    assert r["n"] == n_obs and r["sum"] == pytest.approx(expected), r
    assert not r["whole_matrix_cached"], "sc.pl.umap(color=gene) read the whole X"
    assert r["peak_bytes"] < frac * size, (
        f"sc.pl.umap(color=gene): peak {r['peak_bytes'] / 2**20:.1f} MiB >= {frac:.0%} of the {size / 2**20:.0f} MiB file"
    )


def test_umap_gene_memory_200mb(tmp_path):
    # Half the file: plotting 25k points with pandas 3 (pyarrow-backed names) has ~25 MB of cost that does
    # not shrink with the file (27-29 MB in all with the newest matplotlib and pandas, against 29 MB for 15 %: a
    # bound at the noise).  Here the plot's lasting caches are paid before measuring ("warm": 14-18 MB measured,
    # 7-9 %), and the bound is 12 %; the issue's own case, 400 MB measured cold at 10 %, is the test below.
    _check(tmp_path, 25_000, 180, 230, frac=0.12, warm=True)


def test_umap_gene_memory_400mb(tmp_path):
    _check(tmp_path, 50_000, 370, 450)
