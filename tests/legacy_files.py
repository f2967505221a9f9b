"""Hand-built stores in pre-0.8 AnnData layouts (no anndata involved in writing them).

Layouts follow anndata's published on-disk description and its backwards-compatible readers:

* anndata < 0.7 ("pre07"): ``obs``/``var`` (and ``obsm``/``varm``/``raw.var``/``raw.varm``) are
  one HDF5 *compound* dataset each, strings as fixed-length byte strings, the first field
  (``index``) holding the names. Categorical columns are stored as integer codes, their
  categories as ``uns/<column>_categories`` (a 1-element array for a single category).
  See scverse/scanpy_usage ``170505_seurat/info_h5ad.md`` ("obs Dataset ... struct {"index"
  16-byte null-padded ASCII string ... "louvain" native signed char}"; "we store category
  labels (e.g. louvain_categories) ... in the unstructured annotation").
* sparse matrices of that era: a group with ``data``/``indices``/``indptr`` and the attributes
  ``h5sparse_format`` ('csr'/'csc') and ``h5sparse_shape``, no encoding attributes.
* anndata 0.7 dataframes (``encoding-type`` 'dataframe', ``encoding-version`` '0.1.0'): a group
  with attributes ``_index`` and ``column-order``; every column a dataset; a categorical column
  is its codes dataset whose attribute ``categories`` refers to ``<df>/__categories/<column>``
  (an HDF5 object reference in .h5ad, a relative path string in zarr), the categories
  dataset carrying the ``ordered`` attribute.
* raw stored at the root as ``raw.X``, ``raw.var``, ``raw.varm`` (before the ``raw`` group).
* ``uns/neighbors/{distances,connectivities}`` (before ``obsp``; anndata moves them to obsp).

Each builder returns ``(path, Meaning)``; ``Meaning`` is what the file denotes, used to check
anndata's reading of it and, independently of anndata, the shadow's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
from scipy import sparse

VLEN_STR = h5py.string_dtype(encoding="utf-8")


@dataclass
class Column:
    """Expected meaning of one column: values (None = missing) or categorical."""

    values: list
    categories: list | None = None
    ordered: bool = False


@dataclass
class Meaning:
    X: np.ndarray | sparse.spmatrix | None
    obs_names: list
    var_names: list
    obs: dict[str, Column]
    var: dict[str, Column]
    obs_index_name: str | None = None
    var_index_name: str | None = None
    uns_keys: set = field(default_factory=set)
    uns_absent: set = field(default_factory=set)  # keys that must NOT be in uns (consumed by the reader)
    obsm: dict = field(default_factory=dict)
    varm: dict = field(default_factory=dict)
    obsp: dict = field(default_factory=dict)
    layers: dict = field(default_factory=dict)
    raw_X: np.ndarray | sparse.spmatrix | None = None
    raw_var_names: list | None = None
    raw_var: dict[str, Column] = field(default_factory=dict)
    raw_varm: dict = field(default_factory=dict)
    neighbors_uns: dict | None = None  # expected remaining uns['neighbors'] content (keys)
    note: str = ""


# --------------------------------------------------------------------------------------
# low level writers
# --------------------------------------------------------------------------------------


def _fixed_bytes(strings) -> np.ndarray:
    encoded = [s.encode("utf-8") for s in strings]
    width = max([len(b) for b in encoded] + [1])
    return np.array(encoded, dtype=f"S{width}")


def _compound(records: dict[str, np.ndarray]) -> np.ndarray:
    """Structured array from ordered fields; str fields become fixed-length bytes."""
    fields = []
    converted = {}
    for name, values in records.items():
        values = np.asarray(values)
        if values.dtype.kind in "UO":
            values = _fixed_bytes([str(v) for v in values])
        converted[name] = values
        fields.append((name, values.dtype, values.shape[1:]) if values.ndim > 1 else (name, values.dtype))
    n = len(next(iter(converted.values())))
    out = np.zeros(n, dtype=fields)
    for name, values in converted.items():
        out[name] = values
    return out


def h5sparse_group(parent, key: str, mat) -> None:
    """Pre-0.7 sparse matrix: group + ``h5sparse_format``/``h5sparse_shape``, no encoding."""
    g = parent.create_group(key)
    g.attrs["h5sparse_format"] = mat.format
    g.attrs["h5sparse_shape"] = np.array(mat.shape, dtype=np.int64)
    g.create_dataset("data", data=mat.data)
    g.create_dataset("indices", data=mat.indices)
    g.create_dataset("indptr", data=mat.indptr)


def encoded_sparse_group_v07(parent, key: str, mat) -> None:
    """anndata 0.7 sparse matrix: ``encoding-type`` csr_matrix/csc_matrix 0.1.0 + ``shape``."""
    g = parent.create_group(key)
    g.attrs["encoding-type"] = f"{mat.format}_matrix"
    g.attrs["encoding-version"] = "0.1.0"
    g.attrs["shape"] = np.array(mat.shape, dtype=np.int64)
    g.create_dataset("data", data=mat.data)
    g.create_dataset("indices", data=mat.indices)
    g.create_dataset("indptr", data=mat.indptr)


def dataframe_v07_h5(parent, key: str, index: list, columns: dict, index_name: str = "_index") -> None:
    """anndata 0.7 dataframe (encoding 'dataframe' 0.1.0) with ``__categories`` references."""
    g = parent.create_group(key)
    g.attrs["encoding-type"] = "dataframe"
    g.attrs["encoding-version"] = "0.1.0"
    g.attrs["_index"] = index_name
    g.attrs["column-order"] = np.array(list(columns), dtype=object) if columns else np.array([], dtype=VLEN_STR)
    g.create_dataset(index_name, data=np.array(index, dtype=object), dtype=VLEN_STR)
    for name, values in columns.items():
        if isinstance(values, pd.Categorical):
            cats = g.require_group("__categories")
            cats_ds = cats.create_dataset(name, data=np.array(values.categories, dtype=object), dtype=VLEN_STR)
            cats_ds.attrs["ordered"] = bool(values.ordered)
            codes = g.create_dataset(name, data=np.asarray(values.codes))
            codes.attrs["categories"] = cats_ds.ref  # HDF5 object reference
        elif np.asarray(values).dtype.kind in "UO":
            g.create_dataset(name, data=np.array(values, dtype=object), dtype=VLEN_STR)
        else:
            g.create_dataset(name, data=np.asarray(values))


def _col(values) -> Column:
    if isinstance(values, pd.Categorical):
        return Column(
            values=[None if pd.isna(v) else v for v in values],
            categories=list(values.categories),
            ordered=bool(values.ordered),
        )
    return Column(values=list(np.asarray(values).tolist()))


# --------------------------------------------------------------------------------------
# (a) anndata < 0.7, dense X, compound obs/var, categories in uns, raw.* at the root
# --------------------------------------------------------------------------------------


def build_pre07_dense(directory) -> tuple[str, Meaning]:
    path = str(Path(directory) / "pre07_dense.h5ad")
    n, m = 6, 4
    X = (np.arange(n * m, dtype=np.float32).reshape(n, m) - 7) / 4
    obs_names = [f"cell{i}" for i in range(n)]
    var_names = [f"gene{i}" for i in range(m)]
    louvain_codes = np.array([0, 2, 1, 0, -1, 2], dtype=np.int8)
    louvain_cats = ["0", "1", "2"]
    raw_var_names = [f"gene{i}" for i in range(m + 2)]
    raw_X = np.arange(n * (m + 2), dtype=np.float32).reshape(n, m + 2)
    X_pca = np.arange(n * 3, dtype=np.float32).reshape(n, 3) / 3
    X_umap = np.arange(n * 2, dtype=np.float64).reshape(n, 2) / 7
    PCs = np.arange(m * 2, dtype=np.float32).reshape(m, 2)
    raw_PCs = np.arange((m + 2) * 2, dtype=np.float64).reshape(m + 2, 2)
    with h5py.File(path, "w") as f:
        f.create_dataset("X", data=X)
        f.create_dataset(
            "obs",
            data=_compound(
                {
                    "index": np.array(obs_names),
                    "n_genes": np.arange(n, dtype=np.int64) * 10,
                    "percent_mito": np.linspace(0, 1, n).astype(np.float32),
                    "louvain": louvain_codes,
                    "batch": np.zeros(n, dtype=np.int8),
                    "name": np.array(["a", "bb", "ccc", "dd", "e", "ff"]),
                }
            ),
        )
        f.create_dataset(
            "var",
            data=_compound(
                {
                    "index": np.array(var_names),
                    "gene_ids": np.array([f"ENSG{i:05d}" for i in range(m)]),
                    "highly_variable": np.array([True, False, True, False]),
                    "means": np.arange(m, dtype=np.float64) / 3,
                    "gene_type": np.array([1, 0, 1, 1], dtype=np.int8),
                }
            ),
        )
        uns = f.create_group("uns")
        uns.create_dataset("louvain_categories", data=_fixed_bytes(louvain_cats))
        uns.create_dataset("batch_categories", data=_fixed_bytes(["b1"]))  # single category: 1-element
        uns.create_dataset("gene_type_categories", data=_fixed_bytes(["lncRNA", "protein_coding"]))
        uns.create_dataset("louvain_colors", data=_fixed_bytes(["#ff0000", "#00ff00", "#0000ff"]))
        pca = uns.create_group("pca")
        pca.create_dataset("variance_ratio", data=np.array([0.5, 0.25, 0.125]))
        f.create_dataset("obsm", data=_compound({"X_pca": X_pca, "X_umap": X_umap}))
        f.create_dataset("varm", data=_compound({"PCs": PCs}))
        f.create_dataset("raw.X", data=raw_X)
        f.create_dataset(
            "raw.var",
            data=_compound(
                {"index": np.array(raw_var_names), "gene_ids": np.array([f"ENSG{i:05d}" for i in range(m + 2)])}
            ),
        )
        f.create_dataset("raw.varm", data=_compound({"PCs": raw_PCs}))
    meaning = Meaning(
        X=X,
        obs_names=obs_names,
        var_names=var_names,
        obs_index_name="index",
        var_index_name="index",
        obs={
            "n_genes": Column(list(range(0, 10 * n, 10))),
            "percent_mito": Column(np.linspace(0, 1, n).astype(np.float32).tolist()),
            "louvain": _col(pd.Categorical.from_codes(louvain_codes, louvain_cats)),
            "batch": Column(["b1"] * n, categories=["b1"]),
            "name": Column(["a", "bb", "ccc", "dd", "e", "ff"]),
        },
        var={
            "gene_ids": Column([f"ENSG{i:05d}" for i in range(m)]),
            "highly_variable": Column([True, False, True, False]),
            "means": Column((np.arange(m) / 3).tolist()),
            "gene_type": _col(pd.Categorical.from_codes([1, 0, 1, 1], ["lncRNA", "protein_coding"])),
        },
        uns_keys={"louvain_colors", "pca"},
        uns_absent={"louvain_categories", "batch_categories", "gene_type_categories"},
        obsm={"X_pca": X_pca, "X_umap": X_umap},
        varm={"PCs": PCs},
        raw_X=raw_X,
        raw_var_names=raw_var_names,
        raw_var={"gene_ids": Column([f"ENSG{i:05d}" for i in range(m + 2)])},
        raw_varm={"PCs": raw_PCs},
        note="anndata<0.7: compound obs/var/obsm/varm/raw.var/raw.varm, categories in uns",
    )
    return path, meaning


# --------------------------------------------------------------------------------------
# (b) anndata < 0.7 with sparse X (h5sparse attributes), also a sparse layer
# --------------------------------------------------------------------------------------


def build_pre07_h5sparse(directory, fmt: str) -> tuple[str, Meaning]:
    path = str(Path(directory) / f"pre07_h5sparse_{fmt}.h5ad")
    n, m = 5, 7
    rng = np.random.default_rng(7 if fmt == "csr" else 8)
    dense = np.where(rng.random((n, m)) < 0.4, rng.integers(1, 9, (n, m)), 0).astype(np.float32)
    X = sparse.csr_matrix(dense) if fmt == "csr" else sparse.csc_matrix(dense)
    other = "csc" if fmt == "csr" else "csr"
    spliced_dense = (dense * 2).astype(np.float64)
    spliced = sparse.csr_matrix(spliced_dense) if other == "csr" else sparse.csc_matrix(spliced_dense)
    obs_names = [f"AAAC-{i}" for i in range(n)]
    var_names = [f"g{i}" for i in range(m)]
    with h5py.File(path, "w") as f:
        h5sparse_group(f, "X", X)
        f.create_dataset(
            "obs",
            data=_compound({"index": np.array(obs_names), "n_counts": dense.sum(1), "cluster": np.arange(n) % 2}),
        )
        f.create_dataset("var", data=_compound({"index": np.array(var_names), "n_cells": (dense > 0).sum(0)}))
        uns = f.create_group("uns")
        uns.create_dataset("cluster_categories", data=_fixed_bytes(["T cell", "B cell"]))
        layers = f.create_group("layers")
        h5sparse_group(layers, "spliced", spliced)
    meaning = Meaning(
        X=X,
        obs_names=obs_names,
        var_names=var_names,
        obs_index_name="index",
        var_index_name="index",
        obs={
            "n_counts": Column(dense.sum(1).tolist()),
            "cluster": _col(pd.Categorical.from_codes(np.arange(n) % 2, ["T cell", "B cell"])),
        },
        var={"n_cells": Column((dense > 0).sum(0).tolist())},
        uns_absent={"cluster_categories"},
        layers={"spliced": spliced},
        note=f"anndata<0.7 with h5sparse_format={fmt!r} X and a {other} layer",
    )
    return path, meaning


# --------------------------------------------------------------------------------------
# (c) + (d) anndata 0.7: dataframe 0.1.0 with __categories refs, raw.* at the root
# --------------------------------------------------------------------------------------


def _v07_content():
    n, m = 6, 5
    obs_names = [f"c{i}é" for i in range(n)]
    var_ids = [f"ENSG{i}" for i in range(m)]
    obs_cols = {
        "leiden": pd.Categorical.from_codes([0, 1, -1, 1, 0, 2], ["0", "1", "2", "unused"]),
        "stage": pd.Categorical.from_codes([2, 0, 1, 1, 0, 2], ["early", "mid", "late"], ordered=True),
        "n_counts": np.arange(n, dtype=np.int32) * 3,
        "score": np.linspace(-1, 1, n),
        "flag": np.array([True, False, True, True, False, False]),
        "barcode": np.array([f"AC{i}中" for i in range(n)], dtype=object),
    }
    var_cols = {
        "symbol": np.array([f"SYM{i}" for i in range(m)], dtype=object),
        "chrom": pd.Categorical.from_codes([0, 0, 1, 2, 1], ["chr1", "chr2", "chrX"]),
    }
    rng = np.random.default_rng(3)
    dense = np.where(rng.random((n, m)) < 0.5, rng.normal(size=(n, m)), 0)
    X = dense.astype(np.float32)
    raw_names = [f"ENSG{i}" for i in range(m + 3)]
    raw_dense = np.where(rng.random((n, m + 3)) < 0.5, rng.integers(1, 5, (n, m + 3)), 0).astype(np.float32)
    raw_X = sparse.csr_matrix(raw_dense)
    raw_var_cols = {"kind": pd.Categorical.from_codes([0, 1, 0, 1, 1, 0, 0, 1], ["a", "b"])}
    return n, m, obs_names, var_ids, obs_cols, var_cols, X, raw_names, raw_X, raw_var_cols, rng


def build_v07(directory) -> tuple[str, Meaning]:
    path = str(Path(directory) / "v07_dataframe.h5ad")
    n, m, obs_names, var_ids, obs_cols, var_cols, X, raw_names, raw_X, raw_var_cols, rng = _v07_content()
    X_pca = rng.normal(size=(n, 2))
    conn = sparse.csr_matrix(np.where(rng.random((n, n)) < 0.3, rng.random((n, n)), 0))
    counts = sparse.csc_matrix(np.where(rng.random((n, m)) < 0.4, 1.0, 0.0))
    raw_PCs = rng.normal(size=(m + 3, 2))
    with h5py.File(path, "w") as f:
        f.create_dataset("X", data=X)  # dense X without encoding attributes
        dataframe_v07_h5(f, "obs", obs_names, obs_cols)
        dataframe_v07_h5(f, "var", var_ids, var_cols, index_name="gene_ids")  # custom index name
        uns = f.create_group("uns")
        uns.create_dataset(
            "leiden_colors", data=np.array(["#1f77b4", "#ff7f0e", "#279e68"], dtype=object), dtype=VLEN_STR
        )
        uns.create_dataset("title", data="0.7 file", dtype=VLEN_STR)
        uns.create_dataset("n_pcs", data=np.int64(2))
        f.create_group("obsm").create_dataset("X_pca", data=X_pca)
        f.create_group("varm")
        encoded_sparse_group_v07(f.create_group("obsp"), "connectivities", conn)
        encoded_sparse_group_v07(f.create_group("layers"), "counts", counts)
        h5sparse_group(f, "raw.X", raw_X)
        dataframe_v07_h5(f, "raw.var", raw_names, raw_var_cols)
        f.create_group("raw.varm").create_dataset("PCs", data=raw_PCs)
    meaning = Meaning(
        X=X,
        obs_names=obs_names,
        var_names=var_ids,
        obs_index_name=None,
        var_index_name="gene_ids",
        obs={k: _col(v) for k, v in obs_cols.items()},
        var={k: _col(v) for k, v in var_cols.items()},
        uns_keys={"leiden_colors", "title", "n_pcs"},
        obsm={"X_pca": X_pca},
        obsp={"connectivities": conn},
        layers={"counts": counts},
        raw_X=raw_X,
        raw_var_names=raw_names,
        raw_var={k: _col(v) for k, v in raw_var_cols.items()},
        raw_varm={"PCs": raw_PCs},
        note="anndata 0.7: dataframe 0.1.0 with __categories object references; raw.X/raw.var/raw.varm",
    )
    return path, meaning


def build_v07_zarr(directory) -> tuple[str, Meaning]:
    """The anndata 0.7 layout in a zarr v2 store (categories attribute = relative path)."""
    import zarr

    path = str(Path(directory) / "v07_dataframe.zarr")
    n, m, obs_names, var_ids, obs_cols, var_cols, X, raw_names, raw_X, raw_var_cols, rng = _v07_content()
    dist = sparse.csr_matrix(np.where(rng.random((n, n)) < 0.3, rng.random((n, n)), 0))

    root = zarr.open_group(path, mode="w", zarr_format=2)

    def strings(group, key, values):
        arr = np.array([str(v) for v in values], dtype=object)
        a = group.create_array(key, shape=arr.shape, dtype=str, chunks=(max(len(arr), 1),))
        a[:] = arr
        return a

    def df(group, key, index, columns, index_name="_index"):
        g = group.create_group(key)
        g.attrs.update(
            {
                "encoding-type": "dataframe",
                "encoding-version": "0.1.0",
                "_index": index_name,
                "column-order": list(columns),
            }
        )
        strings(g, index_name, index)
        for name, values in columns.items():
            if isinstance(values, pd.Categorical):
                cats = strings(g, f"__categories/{name}", values.categories)
                cats.attrs["ordered"] = bool(values.ordered)
                codes = g.create_array(name, data=np.asarray(values.codes))
                codes.attrs["categories"] = f"__categories/{name}"
            elif np.asarray(values).dtype.kind in "UO":
                strings(g, name, values)
            else:
                g.create_array(name, data=np.asarray(values))

    def h5sparse(group, key, mat):
        g = group.create_group(key)
        g.attrs.update({"h5sparse_format": mat.format, "h5sparse_shape": list(mat.shape)})
        for part in ("data", "indices", "indptr"):
            g.create_array(part, data=getattr(mat, part))

    root.create_array("X", data=X)
    df(root, "obs", obs_names, obs_cols)
    df(root, "var", var_ids, var_cols, index_name="gene_ids")
    uns = root.create_group("uns")
    strings(uns, "leiden_colors", ["#1f77b4", "#ff7f0e", "#279e68"])
    neighbors = uns.create_group("neighbors")
    h5sparse(neighbors, "distances", dist)
    neighbors.create_group("params").create_array("n_neighbors", data=np.array([3]))
    h5sparse(root, "raw.X", raw_X)
    df(root, "raw.var", raw_names, raw_var_cols)
    meaning = Meaning(
        X=X,
        obs_names=obs_names,
        var_names=var_ids,
        obs_index_name=None,
        var_index_name="gene_ids",
        obs={k: _col(v) for k, v in obs_cols.items()},
        var={k: _col(v) for k, v in var_cols.items()},
        uns_keys={"leiden_colors", "neighbors"},
        obsp={"distances": dist},
        raw_X=raw_X,
        raw_var_names=raw_names,
        raw_var={k: _col(v) for k, v in raw_var_cols.items()},
        neighbors_uns={"params"},
        note="anndata 0.7 zarr v2 store: dataframe 0.1.0, h5sparse groups, raw.X/raw.var, uns/neighbors",
    )
    return path, meaning


# --------------------------------------------------------------------------------------
# (e) neighbors graphs in uns
# --------------------------------------------------------------------------------------


def build_pre07_neighbors(directory) -> tuple[str, Meaning]:
    path = str(Path(directory) / "pre07_neighbors.h5ad")
    n, m = 6, 3
    rng = np.random.default_rng(11)
    X = rng.normal(size=(n, m))
    dist = sparse.csr_matrix(np.where(rng.random((n, n)) < 0.4, rng.random((n, n)) * 3, 0))
    conn = sparse.csr_matrix(np.where(dist.toarray() > 0, 1 / (1 + dist.toarray()), 0))
    obs_names = [f"o{i}" for i in range(n)]
    var_names = [f"v{i}" for i in range(m)]
    with h5py.File(path, "w") as f:
        f.create_dataset("X", data=X)
        f.create_dataset("obs", data=_compound({"index": np.array(obs_names), "q": np.arange(n, dtype=np.float64)}))
        f.create_dataset("var", data=_compound({"index": np.array(var_names)}))
        nb = f.create_group("uns").create_group("neighbors")
        h5sparse_group(nb, "distances", dist)
        h5sparse_group(nb, "connectivities", conn)
        params = nb.create_group("params")
        params.create_dataset("n_neighbors", data=np.int64(3))
        # a python str: h5py (then and now) stores it as a variable-length string scalar
        params.create_dataset("method", data="umap")
    meaning = Meaning(
        X=X,
        obs_names=obs_names,
        var_names=var_names,
        obs_index_name="index",
        var_index_name="index",
        obs={"q": Column(np.arange(n, dtype=np.float64).tolist())},
        var={},
        uns_keys={"neighbors"},
        obsp={"distances": dist, "connectivities": conn},
        neighbors_uns={"params"},
        note="anndata<0.7: uns/neighbors/{distances,connectivities} as h5sparse groups",
    )
    return path, meaning


def build_modern_neighbors_in_uns(directory, fmt: str = "h5ad", zarr_format: int | None = None):
    """A current-format store written by anndata whose graphs still sit in uns/neighbors.

    Assigning ``uns['neighbors']`` after construction bypasses anndata's constructor-time
    move, so the file keeps them in uns exactly as files from anndata < 0.7 did.
    """
    import warnings

    import anndata as ad
    from oracle import store_path, write_adata

    n = 5
    rng = np.random.default_rng(5)
    dist = sparse.csr_matrix(np.where(rng.random((n, n)) < 0.4, rng.random((n, n)), 0))
    conn = np.where(rng.random((n, n)) < 0.4, rng.random((n, n)), 0)  # dense graphs are moved too
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adata = ad.AnnData(
            X=rng.normal(size=(n, 2)),
            obs=pd.DataFrame(index=[f"c{i}" for i in range(n)]),
            var=pd.DataFrame(index=["a", "b"]),
        )
        adata.uns["neighbors"] = {"distances": dist, "connectivities": conn, "params": {"n_neighbors": 3}}
        adata.uns["other"] = 1
    path = write_adata(adata, store_path(directory, fmt, zarr_format, stem="modern_neighbors"), zarr_format)
    meaning = Meaning(
        X=adata.X,
        obs_names=list(adata.obs_names),
        var_names=["a", "b"],
        obs={},
        var={},
        uns_keys={"neighbors", "other"},
        obsp={"distances": dist, "connectivities": conn},
        neighbors_uns={"params"},
        note=f"current {fmt} format with graphs in uns/neighbors",
    )
    return path, meaning


#: name -> builder(directory) for the parametrized legacy tests.
BUILDERS = {
    "pre07_dense": build_pre07_dense,
    "pre07_h5sparse_csr": lambda d: build_pre07_h5sparse(d, "csr"),
    "pre07_h5sparse_csc": lambda d: build_pre07_h5sparse(d, "csc"),
    "v07_dataframe": build_v07,
    "v07_dataframe_zarr": build_v07_zarr,
    "pre07_neighbors": build_pre07_neighbors,
    "modern_neighbors_in_uns_h5ad": lambda d: build_modern_neighbors_in_uns(d, "h5ad"),
    "modern_neighbors_in_uns_zarr3": lambda d: build_modern_neighbors_in_uns(d, "zarr", 3),
}
