"""Small AnnData objects with every kind of element, for the out-of-core tests (written to disk by anndata)."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from oracle import write_adata

#: (file kind, zarr format) of every store the out-of-core tests write their sources as.
SOURCES = (("h5ad", None), ("zarr", 2), ("zarr", 3))


def counts(n_obs: int, n_vars: int, seed: int = 0, density: float = 0.3) -> np.ndarray:
    """A dense count matrix with empty rows and columns here and there."""
    rng = np.random.default_rng(seed)
    x = (rng.random((n_obs, n_vars)) < density) * rng.integers(1, 50, (n_obs, n_vars))
    x[::7] = 0  # some cells without counts
    x[:, 3] = 0  # a gene without counts
    return x.astype(np.float32)


def as_kind(x: np.ndarray, kind: str):
    return {"dense": x, "csr": sp.csr_matrix(x), "csc": sp.csc_matrix(x)}[kind]


def rich(n_obs: int = 40, n_vars: int = 15, kind: str = "csr", seed: int = 0, light: bool = False) -> ad.AnnData:
    """X, obs/var of several dtypes (categories that a subset leaves unused), layers, obsm/varm/obsp/varp, uns, raw.

    ``light``: one element of each group only (quicker to write, for tests about the matrices).
    """
    rng = np.random.default_rng(seed)
    x = counts(n_obs, n_vars, seed)
    obs = pd.DataFrame(
        {
            "group": pd.Categorical(rng.choice(["a", "b", "c", "d"], n_obs), categories=["d", "a", "b", "c"]),
            "rare": pd.Categorical(["only_first"] + ["common"] * (n_obs - 1)),
            "score": rng.normal(size=n_obs),
            "n": rng.integers(0, 9, n_obs),
            "flag": rng.random(n_obs) > 0.5,
            "name": [f"n{i % 5}" for i in range(n_obs)],
            "maybe": pd.array(np.where(rng.random(n_obs) > 0.7, None, rng.integers(0, 5, n_obs)), dtype="Int64"),
        },
        index=[f"cell{i}" for i in range(n_obs)],
    )
    var = pd.DataFrame(
        {"symbol": [f"S{i}" for i in range(n_vars)], "hv": rng.random(n_vars) > 0.5},
        index=[f"gene{i}" for i in range(n_vars)],
    )
    if light:
        obs = obs[["group", "rare", "score"]]
    a = ad.AnnData(X=as_kind(x, kind), obs=obs, var=var)
    a.layers["counts"] = sp.csr_matrix(x * 2)
    if light:
        a.layers["dense"] = x + 1
        a.obsm["X_pca"] = rng.normal(size=(n_obs, 4)).astype(np.float32)
        a.uns["group_colors"] = np.array(["#d00000", "#00a000", "#0000d0", "#a0a000"])
        a.raw = a[:, : n_vars // 2].copy()
        return a
    a.layers["dense"] = x + 1
    a.layers["csc"] = sp.csc_matrix(x)
    a.obsm["X_pca"] = rng.normal(size=(n_obs, 4)).astype(np.float32)
    a.obsm["sparse"] = sp.random(n_obs, 6, density=0.3, format="csr", random_state=seed)
    a.obsm["frame"] = pd.DataFrame(
        {"u": rng.random(n_obs), "c": pd.Categorical(rng.choice(["x", "y"], n_obs))}, index=obs.index
    )
    a.varm["PCs"] = rng.normal(size=(n_vars, 3))
    a.obsp["distances"] = sp.random(n_obs, n_obs, density=0.2, format="csr", random_state=seed)
    a.obsp["dense"] = rng.random((n_obs, n_obs))
    a.varp["corr"] = rng.random((n_vars, n_vars))
    a.uns["title"] = "rich"
    a.uns["params"] = {"k": 3, "nested": {"arr": np.arange(4)}}
    a.uns["group_colors"] = np.array(["#d00000", "#00a000", "#0000d0", "#a0a000"])
    a.raw = a.copy()
    return a


def write_source(adata: ad.AnnData, directory, fmt: str, zarr_format: int | None, stem: str = "src") -> str:
    """Write ``adata`` as ``stem.h5ad`` or ``stem.v{2,3}.zarr`` in ``directory`` (with anndata)."""
    name = f"{stem}.h5ad" if fmt == "h5ad" else f"{stem}.v{zarr_format}.zarr"
    return write_adata(adata, f"{directory}/{name}", zarr_format)


def dense_of(m) -> np.ndarray:
    return m.toarray() if sp.issparse(m) else np.asarray(m)
