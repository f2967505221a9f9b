"""The table of scanpy calls that ``test_scanpy_compat.py`` runs on a shadow and on the same AnnData in memory.

Each :class:`Call` names a public scanpy function (``pp``, ``tl``, ``pl``, ``get``, ``metrics``), the data it runs on
and a function taking the AnnData (shadow or in-memory) and returning what the call returns.  ``"dense"`` is
``sc.datasets.pbmc68k_reduced()`` as shipped (dense scaled X, log-normalised sparse ``raw``); ``"counts"`` is the same
cells with integer-valued counts as a CSR X, for the functions that expect counts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

GENES = ["CD79A", "MS4A1", "CD3D", "FCER1G", "FCGR3A", "NKG7", "GNLY", "LYZ"]
MARKERS = {"B": ["CD79A", "MS4A1"], "T": ["CD3D"], "NK": ["NKG7"], "Mono": ["FCER1G", "LYZ"]}
GROUP = "bulk_labels"


@dataclass(frozen=True)
class Call:
    """One scanpy call: ``run(adata)`` does it (and any preparation) and returns what the call returns."""

    id: str
    run: Callable[[Any], Any]
    data: str = "dense"  # "dense" or "counts"
    zarr: bool = False  # also run on a zarr store
    # (rtol, atol) for floats; looser only where the same input in another memory layout changes the rounding
    tol: tuple[float, float] = (1e-5, 1e-6)
    slow: bool = False  # over ~10 s of CPU: runs only with `-m slow`


def _sc():
    import scanpy as sc

    return sc


def _seq(*steps: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Run preparation steps, return the last one's result."""

    def run(a):
        out = None
        for step in steps:
            out = step(a)
        return out

    return run


def _iroot(a) -> None:
    a.uns["iroot"] = int(np.flatnonzero(a.obs[GROUP].to_numpy() == "CD34+")[0])


def _diffmap(a):
    return _sc().tl.diffmap(a, n_comps=10)


def _paga(a):
    return _sc().tl.paga(a, groups="louvain")


def _densify(a) -> None:
    a.X = a.X.toarray()


def _pca_all(a):
    return _sc().pp.pca(a, n_comps=10, mask_var=None)


def _mt(a) -> None:
    a.var["ribo"] = a.var_names.str.startswith(("RPS", "RPL"))


def _on_view(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Run ``fn`` on a view of the G1 cells; return the view (scanpy turns it into an object of its own)."""

    def run(a):
        v = a[a.obs["phase"] == "G1"]
        fn(v)
        return v

    return run


def _reference():
    """An in-memory reference with a PCA and a UMAP, for ``tl.ingest``."""
    sc = _sc()
    ref = sc.datasets.pbmc68k_reduced()
    sc.pp.pca(ref, n_comps=20)
    sc.pp.neighbors(ref, n_neighbors=10)
    sc.tl.umap(ref, maxiter=50)
    return ref


def _pp(sc) -> list[Call]:
    pp = sc.pp
    return [
        Call("pp.calculate_qc_metrics", lambda a: pp.calculate_qc_metrics(a, inplace=True), "counts", zarr=True),
        Call(
            "pp.calculate_qc_metrics(qc_vars)",
            _seq(_mt, lambda a: pp.calculate_qc_metrics(a, qc_vars=["ribo"])),
            "counts",
        ),
        Call(
            "pp.calculate_qc_metrics(inplace=False)", lambda a: pp.calculate_qc_metrics(a, percent_top=None), "counts"
        ),
        Call("pp.combat", lambda a: pp.combat(a, key="phase")),
        Call("pp.downsample_counts", lambda a: pp.downsample_counts(a, counts_per_cell=200, random_state=0), "counts"),
        Call("pp.filter_cells(inplace=False)", lambda a: pp.filter_cells(a, min_genes=150, inplace=False), "counts"),
        Call("pp.filter_cells", lambda a: pp.filter_cells(a, min_genes=150), "counts"),
        Call("pp.filter_genes(inplace=False)", lambda a: pp.filter_genes(a, min_cells=30, inplace=False), "counts"),
        Call("pp.filter_genes", lambda a: pp.filter_genes(a, min_cells=30), "counts"),
        Call("pp.filter_genes_dispersion", lambda a: pp.filter_genes_dispersion(a, subset=False)),
        Call("pp.highly_variable_genes", lambda a: pp.highly_variable_genes(a, n_top_genes=100)),
        Call(
            "pp.highly_variable_genes(cell_ranger)",
            lambda a: pp.highly_variable_genes(a, flavor="cell_ranger", n_top_genes=100),
        ),
        Call(
            "pp.highly_variable_genes(batch_key)",
            lambda a: pp.highly_variable_genes(a, n_top_genes=100, batch_key="phase"),
        ),
        Call("pp.log1p", lambda a: pp.log1p(a), "counts", zarr=True),
        Call("pp.neighbors", lambda a: pp.neighbors(a, n_neighbors=10), zarr=True),
        Call("pp.neighbors(key_added)", lambda a: pp.neighbors(a, n_neighbors=5, n_pcs=10, key_added="nn5")),
        Call("pp.neighbors(view)", _on_view(lambda v: pp.neighbors(v, n_neighbors=5))),
        Call("pp.normalize_total(view)", _on_view(lambda v: pp.normalize_total(v, target_sum=1e4)), "counts"),
        Call("pp.normalize_per_cell", lambda a: pp.normalize_per_cell(a), "counts"),
        Call("pp.normalize_total", lambda a: pp.normalize_total(a, target_sum=1e4), "counts", zarr=True),
        Call("pp.normalize_total(inplace=False)", lambda a: pp.normalize_total(a, inplace=False), "counts"),
        # anndata's view of the highly variable genes is F-ordered, the shadow's read C-ordered: BLAS sums in another
        # order, and the smallest of 20 components move by ~1e-3
        Call("pp.pca", lambda a: pp.pca(a, n_comps=20), tol=(1e-2, 1e-2)),
        Call("pp.pca(sparse)", lambda a: pp.pca(a, n_comps=20), "counts"),
        Call("pp.recipe_seurat", lambda a: pp.recipe_seurat(a), "counts"),
        # its PCA runs on the kept genes, read C-ordered by the shadow and F-ordered by anndata's view (see pp.pca)
        Call("pp.recipe_weinreb17", _seq(_densify, lambda a: pp.recipe_weinreb17(a)), "counts", tol=(1e-2, 1e-2)),
        Call("pp.recipe_zheng17", lambda a: pp.recipe_zheng17(a, n_top_genes=200), "counts"),
        Call("pp.regress_out", lambda a: pp.regress_out(a, ["n_counts"])),
        Call("pp.sample(copy=True)", lambda a: pp.sample(a, fraction=0.5, copy=True, rng=0)),
        Call("pp.sample", lambda a: pp.sample(a, fraction=0.5, rng=0)),
        Call(
            "pp.highly_variable_genes(subset=True)", lambda a: pp.highly_variable_genes(a, n_top_genes=100, subset=True)
        ),
        Call("pp.scale", lambda a: pp.scale(a, max_value=10), "counts"),
        Call("pp.scrublet", lambda a: pp.scrublet(a, threshold=0.25, random_state=0), "counts"),
        Call("pp.scrublet_simulate_doublets", lambda a: pp.scrublet_simulate_doublets(a, random_seed=0), "counts"),
        Call("pp.sqrt", lambda a: pp.sqrt(a), "counts"),
        Call("pp.subsample(copy=True)", lambda a: pp.subsample(a, fraction=0.5, copy=True)),
        Call("pp.subsample", lambda a: pp.subsample(a, n_obs=300)),
    ]


def _tl(sc) -> list[Call]:
    tl = sc.tl
    return [
        Call("tl.dendrogram", lambda a: tl.dendrogram(a, GROUP)),
        Call("tl.diffmap", _diffmap),
        Call("tl.dpt", _seq(_diffmap, _iroot, lambda a: tl.dpt(a))),
        Call("tl.draw_graph", lambda a: tl.draw_graph(a, layout="fr")),
        Call("tl.embedding_density", lambda a: tl.embedding_density(a, basis="umap", groupby="phase")),
        Call("tl.filter_rank_genes_groups", lambda a: tl.filter_rank_genes_groups(a)),
        # ~40 s: the reference's PCA, neighbors and UMAP, then pynndescent's index
        Call("tl.ingest", lambda a: tl.ingest(a, _reference(), obs=GROUP, embedding_method=["umap", "pca"]), slow=True),
        Call("tl.leiden", lambda a: tl.leiden(a, flavor="igraph", n_iterations=2), zarr=True),
        Call("tl.louvain", lambda a: tl.louvain(a, flavor="igraph")),
        Call("tl.marker_gene_overlap", lambda a: tl.marker_gene_overlap(a, MARKERS)),
        Call("tl.paga", _paga),
        Call("tl.paga_degrees", _seq(_paga, lambda a: tl.paga_degrees(a))),
        # paga_expression_entropies takes a sparse X
        Call(
            "tl.paga_expression_entropies",
            _seq(lambda a: sc.pp.pca(a, n_comps=20), sc.pp.neighbors, _paga, lambda a: tl.paga_expression_entropies(a)),
            "counts",
        ),
        Call("tl.rank_genes_groups", lambda a: tl.rank_genes_groups(a, GROUP), zarr=True),
        Call(
            "tl.rank_genes_groups(wilcoxon, pts)", lambda a: tl.rank_genes_groups(a, GROUP, method="wilcoxon", pts=True)
        ),
        Call("tl.rank_genes_groups(logreg)", lambda a: tl.rank_genes_groups(a, "phase", method="logreg", max_iter=50)),
        Call(
            "tl.rank_genes_groups(reference, use_raw=False)",
            lambda a: tl.rank_genes_groups(a, GROUP, groups=["CD14+ Monocyte"], reference="Dendritic", use_raw=False),
        ),
        Call("tl.score_genes", lambda a: tl.score_genes(a, GENES[:4], random_state=0)),
        Call(
            "tl.score_genes_cell_cycle",
            lambda a: tl.score_genes_cell_cycle(a, s_genes=GENES[:4], g2m_genes=GENES[4:], random_state=0),
        ),
        Call("tl.tsne", lambda a: tl.tsne(a, n_pcs=10, perplexity=20, random_state=0), slow=True),
        Call("tl.umap", lambda a: tl.umap(a, maxiter=50), zarr=True),
    ]


def _pl(sc) -> list[Call]:
    pl = sc.pl
    kw = {"show": False}
    genes = GENES[:4]
    return [
        Call("pl.umap(color=gene)", lambda a: pl.umap(a, color="CD79A", **kw), zarr=True),
        Call("pl.umap(color=category)", lambda a: pl.umap(a, color=GROUP, **kw), zarr=True),
        Call(
            "pl.umap(use_raw=False, several)",
            lambda a: pl.umap(a, color=["CD3D", "phase", "n_genes"], use_raw=False, **kw),
        ),
        Call(
            "pl.umap(groups, on data)",
            lambda a: pl.umap(a, color="louvain", groups=["1", "2"], legend_loc="on data", **kw),
        ),
        Call("pl.umap(view)", lambda a: pl.umap(a[a.obs["phase"] == "G1"], color=["CD79A", GROUP], **kw)),
        Call(
            "pl.umap(new string column)",
            _seq(
                lambda a: a.obs.__setitem__("tag", np.where(a.obs["n_genes"] > 200, "hi", "lo")),
                lambda a: pl.umap(a, color="tag", **kw),
            ),
        ),
        Call("pl.embedding", lambda a: pl.embedding(a, basis="X_pca", color=[GROUP, "NKG7"], **kw)),
        Call("pl.pca", lambda a: pl.pca(a, color=GROUP, **kw)),
        # the stored PCs of pbmc68k_reduced hold NaN (genes left out of its PCA): compute them again first
        Call("pl.pca_loadings", _seq(_pca_all, lambda a: pl.pca_loadings(a, components=[1, 2], **kw))),
        Call("pl.pca_overview", _seq(_pca_all, lambda a: pl.pca_overview(a, color=GROUP, **kw))),
        Call("pl.pca_variance_ratio", lambda a: pl.pca_variance_ratio(a, **kw)),
        # tl.tsne takes ~30 s of CPU (it is in the table, marked slow); the plot only needs an embedding
        Call(
            "pl.tsne",
            _seq(
                lambda a: a.obsm.__setitem__("X_tsne", a.obsm["X_umap"][:, ::-1]),
                lambda a: pl.tsne(a, color=GROUP, **kw),
            ),
        ),
        Call("pl.diffmap", _seq(_diffmap, lambda a: pl.diffmap(a, color=GROUP, **kw))),
        Call(
            "pl.draw_graph",
            _seq(lambda a: sc.tl.draw_graph(a, layout="fr"), lambda a: pl.draw_graph(a, color=GROUP, **kw)),
        ),
        Call(
            "pl.embedding_density",
            _seq(
                lambda a: sc.tl.embedding_density(a, basis="umap"),
                lambda a: pl.embedding_density(a, basis="umap", **kw),
            ),
        ),
        Call("pl.scatter(obs)", lambda a: pl.scatter(a, x="n_counts", y="n_genes", color=GROUP, **kw)),
        Call("pl.scatter(genes)", lambda a: pl.scatter(a, x="CD79A", y="MS4A1", **kw)),
        Call("pl.violin", lambda a: pl.violin(a, ["CD79A", "n_genes"], groupby=GROUP, **kw)),
        Call("pl.stacked_violin", lambda a: pl.stacked_violin(a, genes, groupby=GROUP, **kw)),
        Call("pl.dotplot", lambda a: pl.dotplot(a, genes, groupby=GROUP, **kw), zarr=True),
        Call("pl.dotplot(dendrogram, dict)", lambda a: pl.dotplot(a, MARKERS, groupby=GROUP, dendrogram=True, **kw)),
        Call("pl.DotPlot", lambda a: pl.DotPlot(a, genes, groupby=GROUP).style(cmap="Reds").make_figure()),
        Call("pl.matrixplot", lambda a: pl.matrixplot(a, genes, groupby=GROUP, standard_scale="var", **kw)),
        Call("pl.heatmap", lambda a: pl.heatmap(a, genes, groupby=GROUP, **kw)),
        Call("pl.tracksplot", lambda a: pl.tracksplot(a, genes, groupby=GROUP, **kw)),
        Call("pl.clustermap", lambda a: pl.clustermap(a, obs_keys=GROUP, **kw)),
        Call("pl.correlation_matrix", lambda a: pl.correlation_matrix(a, GROUP, **kw)),
        Call("pl.dendrogram", lambda a: pl.dendrogram(a, GROUP, **kw)),
        Call("pl.highest_expr_genes", lambda a: pl.highest_expr_genes(a, n_top=10, **kw)),
        Call(
            "pl.highly_variable_genes",
            _seq(
                lambda a: sc.pp.highly_variable_genes(a, n_top_genes=100), lambda a: pl.highly_variable_genes(a, **kw)
            ),
        ),
        Call("pl.ranking", _seq(_pca_all, lambda a: pl.ranking(a, "varm", "PCs", indices=[0, 1], n_points=10, **kw))),
        Call("pl.paga", _seq(_paga, lambda a: pl.paga(a, random_state=0, **kw))),
        Call(
            "pl.paga_compare",
            _seq(
                _paga,
                lambda a: pl.paga(a, random_state=0, **kw),  # paga's positions, which draw_graph starts from
                lambda a: sc.tl.draw_graph(a, layout="fr", init_pos="paga"),
                lambda a: pl.paga_compare(a, basis="draw_graph_fr", **kw),
            ),
        ),
        Call(
            "pl.paga_path",
            _seq(
                _paga, _diffmap, _iroot, lambda a: sc.tl.dpt(a), lambda a: pl.paga_path(a, ["0", "1"], genes[:2], **kw)
            ),
        ),
        Call(
            "pl.dpt_groups_pseudotime",
            _seq(
                _diffmap,
                _iroot,
                lambda a: sc.tl.dpt(a, n_branchings=1),
                lambda a: pl.dpt_groups_pseudotime(a, show=False),
            ),
        ),
        Call(
            "pl.dpt_timeseries",
            _seq(_diffmap, _iroot, lambda a: sc.tl.dpt(a, n_branchings=1), lambda a: pl.dpt_timeseries(a, show=False)),
        ),
        Call("pl.rank_genes_groups", lambda a: pl.rank_genes_groups(a, n_genes=5, **kw)),
        Call("pl.rank_genes_groups_dotplot", lambda a: pl.rank_genes_groups_dotplot(a, n_genes=2, **kw)),
        Call("pl.rank_genes_groups_heatmap", lambda a: pl.rank_genes_groups_heatmap(a, n_genes=2, **kw)),
        Call("pl.rank_genes_groups_matrixplot", lambda a: pl.rank_genes_groups_matrixplot(a, n_genes=2, **kw)),
        Call(
            "pl.rank_genes_groups_stacked_violin",
            lambda a: pl.rank_genes_groups_stacked_violin(a, groups=["CD14+ Monocyte", "Dendritic"], n_genes=2, **kw),
        ),
        Call("pl.rank_genes_groups_tracksplot", lambda a: pl.rank_genes_groups_tracksplot(a, n_genes=2, **kw)),
        Call(
            "pl.rank_genes_groups_violin",
            lambda a: pl.rank_genes_groups_violin(a, groups=["CD14+ Monocyte"], n_genes=3, **kw),
        ),
        Call(
            "pl.scrublet_score_distribution",
            _seq(
                lambda a: sc.pp.scrublet(a, threshold=0.25, random_state=0),
                lambda a: pl.scrublet_score_distribution(a, **kw),
            ),
            "counts",
        ),
    ]


def _get_metrics(sc) -> list[Call]:
    return [
        Call(
            "get.obs_df", lambda a: sc.get.obs_df(a, ["CD79A", GROUP, "n_genes"], obsm_keys=[("X_umap", 0)]), zarr=True
        ),
        Call("get.obs_df(use_raw)", lambda a: sc.get.obs_df(a, ["CD79A", "MS4A1"], use_raw=True)),
        Call("get.obs_df(counts)", lambda a: sc.get.obs_df(a, ["CD79A", GROUP]), "counts"),
        Call("get.var_df", lambda a: sc.get.var_df(a, [a.obs_names[3], "n_counts"], varm_keys=[("PCs", 1)])),
        Call("get.rank_genes_groups_df", lambda a: sc.get.rank_genes_groups_df(a, group="CD14+ Monocyte")),
        Call("get.aggregate", lambda a: sc.get.aggregate(a, by=GROUP, func=["mean", "count_nonzero"]), "counts"),
        Call("metrics.confusion_matrix", lambda a: sc.metrics.confusion_matrix(GROUP, "louvain", a.obs)),
        Call("metrics.gearys_c", lambda a: sc.metrics.gearys_c(a, obsm="X_pca")),
        Call("metrics.morans_i", lambda a: sc.metrics.morans_i(a, obsm="X_pca")),
        Call("metrics.morans_i(X)", lambda a: sc.metrics.morans_i(a)),
    ]


def _anndata_api(sc) -> list[Call]:
    """AnnData methods that scanpy workflows call directly on the object."""
    return [
        Call("AnnData.copy", lambda a: a.copy()),
        Call("AnnData.raw.to_adata", lambda a: a.raw.to_adata()),
        Call("AnnData[hvg].copy", lambda a: a[:, a.var["highly_variable"]].copy()),
        Call("AnnData.obs_vector", lambda a: a.obs_vector("CD79A")),
        Call(
            "AnnData.strings_to_categoricals",
            _seq(
                lambda a: a.obs.__setitem__("tag", np.where(a.obs["n_genes"] > 200, "hi", "lo")),
                lambda a: a.strings_to_categoricals(),
            ),
        ),
        Call("AnnData.to_df", lambda a: a.to_df()),
    ]


def all_calls() -> list[Call]:
    """Every call of the table (scanpy is imported here, not when the test module is collected)."""
    sc = _sc()
    return _pp(sc) + _tl(sc) + _pl(sc) + _get_metrics(sc) + _anndata_api(sc)
