"""Streamed writers of large cartoon AnnData files (1M x 20k and up), in row (or column) blocks, never the whole
matrix in memory.

Why: ``generate.make_adata`` builds the whole matrix in memory and lets anndata write it: fine at 100k x 5k
(50M non-zeros), impossible at atlas scale (1M x 20k at 2.5 % is 500M non-zeros, 4.3 GB on disk, about 12 GB
while scipy builds it).  Here each block of rows is drawn from its own random stream (``default_rng([seed, b])``),
so a first pass can count the non-zeros of every block cheaply and a second pass regenerates the same blocks and
writes them into contiguous, uncompressed datasets of the final size (the layout anndata itself writes); memory
stays at about one block (a few tens of MB).

The result is an ordinary anndata file (``anndata.read_h5ad`` / ``read_zarr`` read it): ``X`` (CSR or CSC, float32
counts, int32 indices, int64 indptr), ``obs`` (``donor`` categorical, names ``cell_%d``), ``var`` (``symbol``,
names ``ENS%07d``), ``obsm`` (``X_pca`` 50 and ``X_umap`` 2 float32 columns).  A CSC file is the CSR draw of the
transposed shape (columns are the streamed blocks): the same distribution, not the same matrix as the CSR file.
"""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import numpy as np

DONORS = ("D1", "D2", "D3", "D4", "D5", "D6", "D7", "D8")
# Cells (major positions x minor length) per generated block: about 5M non-zeros at 2.5 %, 40 MB of temporaries.
_BLOCK_CELLS = 200_000_000


def _block_rows(n_major: int, n_minor: int) -> int:
    return max(1, min(n_major, _BLOCK_CELLS // max(1, n_minor)))


def _positions(rng: np.random.Generator, n_cells: int, density: float) -> np.ndarray:
    """Sorted distinct flat positions in ``[0, n_cells)``, each present with probability ``density`` (cumulative
    geometric gaps: O(nnz) random numbers)."""
    expected = n_cells * density
    m = int(expected + 8 * np.sqrt(expected * (1 - density) + 1) + 64)
    pos = np.cumsum(rng.geometric(density, size=m), dtype=np.int64) - 1
    while pos[-1] < n_cells:  # extremely unlikely: draw more gaps
        pos = np.concatenate([pos, np.cumsum(rng.geometric(density, size=m), dtype=np.int64) + pos[-1]])
    return pos[: np.searchsorted(pos, n_cells)]


def _block(seed: int, b: int, r0: int, r1: int, n_minor: int, density: float, counts: str | None):
    """(per-row counts, minor indices, values) of major positions ``r0:r1``; values ``None`` when ``counts`` is."""
    rng = np.random.default_rng([seed, b])
    pos = _positions(rng, (r1 - r0) * n_minor, density)
    rows, cols = np.divmod(pos, n_minor)
    per_row = np.bincount(rows, minlength=r1 - r0)
    if counts is None:
        return per_row, None, None
    if counts == "nb":  # UMI-like counts >= 1: 1 + negative binomial (mean 2, overdispersed)
        vals = (1 + rng.negative_binomial(2, 0.5, size=pos.size)).astype(np.float32)
    elif counts == "geometric":
        vals = rng.geometric(0.4, size=pos.size).astype(np.float32)
    else:
        raise ValueError(f"counts must be 'nb' or 'geometric', got {counts!r}")
    return per_row, cols.astype(np.int32), vals


def _frames(n_obs: int, n_vars: int, seed: int):
    import pandas as pd

    rng = np.random.default_rng([seed, 10**9])
    obs = pd.DataFrame(
        {"donor": pd.Categorical(np.asarray(DONORS)[rng.integers(0, len(DONORS), n_obs)], categories=list(DONORS))},
        index=pd.Index([f"cell_{i}" for i in range(n_obs)]),
    )
    var = pd.DataFrame(
        {"symbol": [f"Gene_{i}" for i in range(n_vars)]}, index=pd.Index([f"ENS{i:07d}" for i in range(n_vars)])
    )
    obsm = {
        "X_pca": rng.standard_normal((n_obs, 50), dtype=np.float32),
        "X_umap": rng.standard_normal((n_obs, 2), dtype=np.float32),
    }
    return obs, var, obsm


def _write_matrix(group, n_major: int, n_minor: int, density: float, seed: int, counts: str, zarr_chunks=None):
    """Stream the matrix into ``group`` (h5py or zarr group, attributes set by the caller)."""
    step = _block_rows(n_major, n_minor)
    starts = list(range(0, n_major, step))
    # pass 1: non-zeros per block (the gaps only: a tenth of the cost of a block)
    nnz = [
        int(_block(seed, b, r0, min(n_major, r0 + step), n_minor, density, None)[0].sum())
        for b, r0 in enumerate(starts)
    ]
    total = int(sum(nnz))
    kw = {} if zarr_chunks is None else {"chunks": (zarr_chunks,)}
    data = group.create_dataset("data", shape=(total,), dtype=np.float32, **kw)
    indices = group.create_dataset("indices", shape=(total,), dtype=np.int32, **kw)
    indptr = np.zeros(n_major + 1, dtype=np.int64)
    at = 0
    pend_d, pend_i = [], []  # zarr: writes aligned to whole chunks (a partial chunk would be re-read and rewritten)
    pend_at = 0
    for b, r0 in enumerate(starts):
        r1 = min(n_major, r0 + step)
        per_row, cols, vals = _block(seed, b, r0, r1, n_minor, density, counts)
        indptr[r0 + 1 : r1 + 1] = at + np.cumsum(per_row)
        if zarr_chunks is None:
            data[at : at + len(vals)] = vals
            indices[at : at + len(cols)] = cols
        else:
            pend_d.append(vals)
            pend_i.append(cols)
            n_pend = sum(len(v) for v in pend_d)
            cut = n_pend - n_pend % zarr_chunks if b < len(starts) - 1 else n_pend
            if cut:
                d, i = np.concatenate(pend_d), np.concatenate(pend_i)
                data[pend_at : pend_at + cut] = d[:cut]
                indices[pend_at : pend_at + cut] = i[:cut]
                pend_d, pend_i, pend_at = [d[cut:]], [i[cut:]], pend_at + cut
        at += len(vals)
    if zarr_chunks is None:
        group.create_dataset("indptr", data=indptr)
    else:
        ip = group.create_dataset("indptr", shape=indptr.shape, dtype=indptr.dtype, chunks=(min(len(indptr), 2**20),))
        ip[:] = indptr
    return total


def write_streamed_h5ad(
    path: str | os.PathLike,
    n_obs: int,
    n_vars: int,
    density: float = 0.025,
    seed: int = 0,
    fmt: str = "csr",
    counts: str = "nb",
) -> int:
    """Write a cartoon ``.h5ad`` (or ``.zarr`` when ``path`` ends so) of ``n_obs x n_vars`` in blocks; return nnz.

    Parameters
    ----------
    path
        Destination, written atomically (through ``<path>.tmp``).  A name ending in ``.zarr`` writes a zarr store
        (format 2, blosc lz4 as anndata writes it, chunks of 2**18 values).
    n_obs, n_vars
        Shape of ``X``.
    density
        Probability of each entry being non-zero (exact Bernoulli sampling, per entry).
    seed
        Seed of all random streams (the file is a function of all arguments).
    fmt
        ``"csr"`` or ``"csc"``.
    counts
        ``"nb"`` (1 + negative binomial) or ``"geometric"`` values, stored as float32.
    """
    import anndata as ad

    if fmt not in ("csr", "csc"):
        raise ValueError(f"fmt must be 'csr' or 'csc', got {fmt!r}")
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    for p in (tmp,):
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    is_zarr = path.suffix == ".zarr"
    obs, var, obsm = _frames(n_obs, n_vars, seed)
    n_major, n_minor = (n_obs, n_vars) if fmt == "csr" else (n_vars, n_obs)
    if is_zarr:
        import zarr

        root = zarr.open_group(tmp, mode="w", zarr_format=2)
        f = root
    else:
        import h5py

        f = h5py.File(tmp, "w")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            f.attrs["encoding-type"] = "anndata"
            f.attrs["encoding-version"] = "0.1.0"
            ad.io.write_elem(f, "obs", obs)
            ad.io.write_elem(f, "var", var)
            ad.io.write_elem(f, "obsm", obsm)
            for k in ("layers", "obsp", "varm", "varp", "uns"):
                ad.io.write_elem(f, k, {})
        g = f.create_group("X")
        g.attrs["encoding-type"] = f"{fmt}_matrix"
        g.attrs["encoding-version"] = "0.1.0"
        g.attrs["shape"] = [int(n_obs), int(n_vars)]
        if is_zarr:
            import zarr

            # anndata's own zarr writes: blosc lz4 with shuffle (zarr format 2 defaults)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                nnz = _write_matrix(g, n_major, n_minor, density, seed, counts, zarr_chunks=2**18)
        else:
            nnz = _write_matrix(g, n_major, n_minor, density, seed, counts)
    finally:
        if not is_zarr:
            f.close()
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
    tmp.rename(path)
    return nnz
