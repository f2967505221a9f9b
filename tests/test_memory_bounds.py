"""Memory bounds of common accesses, measured as peak RSS in a fresh child process.

Each check writes a ~50 MB ``.h5ad`` (20,000 cells x 3,000 genes, 10 % non-zero), then runs the access in a child
process (``sys.executable``): the child imports everything, does the setup, reads ``VmRSS`` as the baseline, resets
the high-water mark (``5`` into ``/proc/self/clear_refs``), runs the access and reports ``VmHWM - baseline``.
Only memory is asserted here, never time. The child also returns a checksum of what it read, so an access that
reads nothing cannot pass.
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

try:
    import shadows  # noqa: F401

    HAVE_SHADOWS = True
except ImportError:
    HAVE_SHADOWS = False

pytestmark = [
    pytest.mark.skipif(not HAVE_SHADOWS, reason="shadows is not importable"),
    # the measurement itself needs Linux's /proc (VmHWM and clear_refs)
    pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc/self/clear_refs"),
]

N_OBS, N_VARS, DENSITY = 20_000, 3_000, 0.1
GENE = "ENS0000042"
CELLS6 = [0, 3, 5, 18_000, 18_001, 18_002]


def _random_csr(n_obs: int, n_vars: int, density: float, seed: int = 0):
    """Bernoulli(density) sparsity via geometric gaps: sorted distinct columns, binomial nnz per row."""
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    n = n_obs * n_vars
    m = int(n * density + 8 * np.sqrt(n * density) + 64)
    pos = np.cumsum(rng.geometric(density, size=m), dtype=np.int64) - 1
    pos = pos[pos < n]
    rows, cols = np.divmod(pos, n_vars)
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n_obs))]).astype(np.int32)
    data = rng.geometric(0.4, size=pos.size).astype(np.float32)
    return sp.csr_matrix((data, cols.astype(np.int32), indptr), shape=(n_obs, n_vars))


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    import anndata as ad
    import pandas as pd

    X = _random_csr(N_OBS, N_VARS, DENSITY)
    rng = np.random.default_rng(1)
    obs = pd.DataFrame(
        {"donor": pd.Categorical(rng.choice(["D1", "D2", "D3", "D4"], size=N_OBS))},
        index=[f"cell_{i}" for i in range(N_OBS)],
    )
    var = pd.DataFrame({"symbol": [f"Gene_{i}" for i in range(N_VARS)]}, index=[f"ENS{i:07d}" for i in range(N_VARS)])
    obsm = {
        "X_pca": rng.standard_normal((N_OBS, 50), dtype=np.float32),
        "X_umap": rng.standard_normal((N_OBS, 2), dtype=np.float32),
    }
    d = tmp_path_factory.mktemp("membounds")
    adata = ad.AnnData(X=X, obs=obs, var=var, obsm=obsm)
    csr = d / "csr.h5ad"
    adata.write_h5ad(csr)
    adata.write_zarr(d / "csr.zarr")
    # chunks of 2**16 values (zarr's automatic ones here are ~190,000): a chunk is decoded whole, so the chunk
    # length, not only the budget, sets the floor of a zarr scan's memory
    import zarr

    g = zarr.open_group(d / "csr.zarr", mode="r+", use_consolidated=False)
    ad.io.write_elem(g, "X", X, dataset_kwargs={"chunks": (2**16,)})
    zarr.consolidate_metadata(d / "csr.zarr")
    adata.X = X.tocsc()
    csc = d / "csc.h5ad"
    adata.write_h5ad(csc)
    j = int(GENE[3:])
    expected = {
        "gene_sum": float(X[:, j].sum(dtype=np.float64)),
        "cells6_sum": float(X[CELLS6].sum(dtype=np.float64)),
        "umap_sum": float(obsm["X_umap"].sum(dtype=np.float64)),
    }
    return {"csr": csr, "csc": csc, "zarr": d / "csr.zarr", "expected": expected}


CHILD = RSS_HELPERS + textwrap.dedent(
    """
    import gc, json, sys
    import numpy as np, scipy.sparse as sp, pandas, h5py, anndata
    import shadows
    from shadows import AnnDataShadow


    def total(x):
        for _ in range(3):
            if hasattr(x, "to_memory"):
                x = x.to_memory()
            elif hasattr(x, "compute"):
                x = x.compute()
        if sp.issparse(x):
            return list(x.shape), float(x.sum(dtype=np.float64))
        x = np.asarray(x)
        return list(x.shape), float(x.astype(np.float64).sum())

    path, what, arg = sys.argv[1], sys.argv[2], sys.argv[3]
    if what == "open_shape":
        op = lambda: AnnDataShadow(path).shape
    elif what == "obsm":
        op = lambda: AnnDataShadow(path).obsm[arg]
    else:
        s = AnnDataShadow(path)
        # the name index is a few kB of data, but under pandas 3 its first build sets up pyarrow's allocator pool
        # (several MB, once per process): pay that before the measurement, which is about the matrix read
        s.var_names, s.obs_names
        if what == "gene":
            op = lambda: s[:, arg].X
        elif what == "obs_vector":
            op = lambda: s.obs_vector(arg)
        elif what == "cells":
            idx = np.array(json.loads(arg))
            op = lambda: s[idx].X
        else:
            raise ValueError(what)
    gc.collect()
    base = kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    res = op()
    if what == "open_shape":
        peak = kib("VmHWM")
        shape, checksum = list(res), None
    else:
        shape, checksum = total(res)  # materialising lazy results counts towards the peak
        peak = kib("VmHWM")
    print(json.dumps({"peak_bytes": (peak - base) * 1024, "shape": shape, "sum": checksum}))
    """
)


def _peak(path: Path, what: str, arg: str = "") -> dict:
    # A 50 MB file stands in for a large one, so the scan budget shrinks with it (the 64 MiB default is meant for
    # files of gigabytes): what is tested is that the peak follows the budget, not the size of the matrix.
    env = {**os.environ, "SHADOWS_MEMORY_BUDGET": str(2**20)}
    p = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), what, arg], capture_output=True, text=True, timeout=600, env=env
    )
    assert p.returncode == 0, f"child failed:\n{p.stderr[-3000:]}"
    return json.loads(p.stdout.strip().splitlines()[-1])


def _check(r: dict, path: Path, frac: float, what: str) -> None:
    size = path.stat().st_size
    assert r["peak_bytes"] < frac * size, (
        f"{what}: peak {r['peak_bytes'] / 2**20:.2f} MiB >= {frac:.0%} of the {size / 2**20:.1f} MiB file "
        f"({frac * size / 2**20:.2f} MiB)"
    )


def test_file_size_in_range(files):
    size = files["csr"].stat().st_size
    assert 40 * 2**20 <= size <= 60 * 2**20, size


def test_open_and_shape(files):
    r = _peak(files["csr"], "open_shape")
    assert r["shape"] == [N_OBS, N_VARS]
    _check(r, files["csr"], 0.05, "open + shape")


def test_one_gene_csr(files):
    r = _peak(files["csr"], "gene", GENE)
    assert r["shape"] == [N_OBS, 1]
    assert r["sum"] == pytest.approx(files["expected"]["gene_sum"])
    _check(r, files["csr"], 0.10, "s[:, gene].X on CSR")


def test_obs_vector_gene_csr(files):
    r = _peak(files["csr"], "obs_vector", GENE)
    assert r["shape"] == [N_OBS]
    assert r["sum"] == pytest.approx(files["expected"]["gene_sum"])
    _check(r, files["csr"], 0.10, "s.obs_vector(gene) on CSR")


def test_six_cells_csc(files):
    r = _peak(files["csc"], "cells", json.dumps(CELLS6))
    assert r["shape"] == [len(CELLS6), N_VARS]
    assert r["sum"] == pytest.approx(files["expected"]["cells6_sum"])
    _check(r, files["csc"], 0.10, "6 cells of CSC")


def test_obsm_does_not_read_x(files):
    r = _peak(files["csr"], "obsm", "X_umap")
    assert r["shape"] == [N_OBS, 2]
    assert r["sum"] == pytest.approx(files["expected"]["umap_sum"], rel=1e-5)
    _check(r, files["csr"], 0.10, "obsm['X_umap'] (open included)")


def test_zarr_gene_and_cells(files):
    """A zarr store's chunks are decoded into reused buffers: a gene scan and six cells stay as small as with HDF5
    (bounded by the matrix's uncompressed size, the h5ad file, since the store itself is compressed)."""
    r = _peak(files["zarr"], "gene", GENE)
    assert r["shape"] == [N_OBS, 1]
    assert r["sum"] == pytest.approx(files["expected"]["gene_sum"])
    _check(r, files["csr"], 0.10, "s[:, gene].X on a CSR zarr store")
    r = _peak(files["zarr"], "cells", json.dumps(CELLS6))
    assert r["sum"] == pytest.approx(files["expected"]["cells6_sum"])
    _check(r, files["csr"], 0.05, "6 cells of a CSR zarr store")
