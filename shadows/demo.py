"""The main job in one command: ``python -m shadows.demo [file.h5ad]``.

Makes a small dataset if none is given, opens it as a shadow, prints it, reads one gene (and plots it on the
UMAP), slices the T cells, computes an embedding and writes it back into the same file.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np


def make_dataset(path: str | os.PathLike, n_obs: int = 3000, n_vars: int = 800, seed: int = 0) -> Path:
    """Write a small single-cell-like AnnData (sparse counts, cell types, a UMAP) with anndata itself.

    Parameters
    ----------
    path
        Where to write the ``.h5ad`` file (its folder is created if needed).
    n_obs, n_vars
        Number of cells and genes.
    seed
        Seed of the random generator: the same seed writes the same data.

    Returns
    -------
    Path
        The path of the written file.
    """
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    types = np.array(["T cell", "B cell", "NK cell", "Monocyte"])
    cell_type = rng.choice(types, n_obs, p=[0.45, 0.2, 0.15, 0.2])
    # each type over-expresses its own block of marker genes
    base = rng.gamma(0.3, 1.0, size=n_vars)
    rate = np.tile(base, (n_obs, 1))
    for i, t in enumerate(types):
        rate[cell_type == t, i * 20 : (i + 1) * 20] = 1.0 + 8 * rate[cell_type == t, i * 20 : (i + 1) * 20]
    counts = sp.csr_matrix(rng.poisson(rate).astype(np.float32))
    centres = {t: rng.normal(scale=6, size=2) for t in types}
    umap = np.stack([centres[t] for t in cell_type]) + rng.normal(size=(n_obs, 2))
    genes = [f"CD{i}" if i < 80 else f"GENE{i}" for i in range(n_vars)]
    genes[0], genes[20] = "CD3E", "MS4A1"
    a = ad.AnnData(
        X=counts,
        obs=pd.DataFrame(
            {"cell_type": pd.Categorical(cell_type), "n_counts": np.asarray(counts.sum(axis=1)).ravel()},
            index=[f"cell{i}" for i in range(n_obs)],
        ),
        var=pd.DataFrame(index=genes),
    )
    a.obsm["X_umap"] = umap.astype(np.float32)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    a.write_h5ad(path)
    return path


def _bar(values: np.ndarray, width: int = 40) -> str:
    hist, edges = np.histogram(values, bins=8)
    top = max(int(hist.max()), 1)
    return "\n".join(
        f"    {lo:8.2f} | {'#' * int(width * h / top)} {h}" for lo, h in zip(edges[:-1], hist, strict=True)
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m shadows.demo [path] [--gene GENE]``: the demo; returns the exit status."""
    from shadows import AnnDataShadow

    parser = argparse.ArgumentParser(prog="python -m shadows.demo", description=__doc__.splitlines()[0])
    parser.add_argument("path", nargs="?", help="an .h5ad file or .zarr store (default: make demo_data/demo.h5ad)")
    parser.add_argument("--gene", default=None, help="gene to show (default: CD3E, or the first gene)")
    args = parser.parse_args(argv)

    path = Path(args.path) if args.path else Path("demo_data") / "demo.h5ad"
    if not path.exists():
        if args.path:
            print(f"error: {path} does not exist", file=sys.stderr)
            return 2
        print(f"Making a small dataset at {path} ...")
        make_dataset(path)

    shadow = AnnDataShadow(path)
    print("\n== The file, opened as a shadow (nothing read yet) ==")
    print(shadow)

    gene = args.gene or ("CD3E" if "CD3E" in shadow.var_names else shadow.var_names[0])
    values = shadow.obs_vector(gene)  # one column of the matrix, read without the rest
    print(f"\n== Gene {gene}: {np.count_nonzero(values)} of {len(values)} cells express it ==")
    print(_bar(values))
    if "X_umap" in shadow.obsm:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt

            umap = np.asarray(shadow.obsm["X_umap"])
            fig, ax = plt.subplots(figsize=(5, 4))
            pts = ax.scatter(umap[:, 0], umap[:, 1], c=values, s=4, cmap="viridis")
            fig.colorbar(pts, label=gene)
            ax.set_title(f"UMAP coloured by {gene}")
            out = path.with_name(f"umap_{gene}.png")
            fig.savefig(out, dpi=100)
            plt.close(fig)
            print(f"  plot written to {out}")
        except ImportError:
            print("  (install matplotlib for a UMAP plot)")

    if "cell_type" in shadow.obs_keys():
        cells = (shadow.obs["cell_type"] == "T cell").to_numpy()
        view = shadow[cells]
        print("\n== The T cells: a view, on its own connection, reading only their rows ==")
        print(view)
        print(f"  mean {gene} in T cells: {view.obs_vector(gene).mean():.3f} (all cells: {values.mean():.3f})")
        view.close()

    print("\n== A new embedding (PCA of log counts), added in memory and written back ==")
    X = shadow.X
    X = np.log1p(X.toarray() if hasattr(X, "toarray") else np.asarray(X))
    X -= X.mean(axis=0)
    u, s, _ = np.linalg.svd(X, full_matrices=False)
    overwrite = "X_demo_pca" in shadow.obsm  # in the file already (a second run): it is replaced
    shadow.obsm["X_demo_pca"] = (u[:, :10] * s[:10]).astype(np.float32)
    print(shadow)
    shadow.reopen("r+").write(overwrite=overwrite).reopen("r")
    print("\nAfter write(): the embedding lives in the file")
    print(shadow)
    import anndata as ad

    back = ad.read_h5ad(path) if path.suffix != ".zarr" else ad.read_zarr(path)
    assert np.allclose(back.obsm["X_demo_pca"], shadow.obsm["X_demo_pca"]), "written embedding differs"
    print(f"anndata reads it back: obsm['X_demo_pca'] {back.obsm['X_demo_pca'].shape}")
    shadow.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
