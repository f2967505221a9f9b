"""Differential tests for views: ``shadow[oidx, vidx]`` against anndata's view.

The oracle is ``read_oracle(path)[oidx, vidx]`` (an anndata view of the in-memory read),
nested views included. Note anndata's view semantics that the shadow must reproduce:
an int indexer keeps the axis (length 1), repeated indices are repeated, categorical
columns of obs/var lose their unused categories (and ``uns['<col>_colors']`` is subset
accordingly), ``raw`` is subset along obs only.
"""

from __future__ import annotations

import tempfile
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from oracle import (
    STORE_FORMATS,
    anndata_key,
    assert_adata_equal,
    assert_element_equal,
    quiet,
    read_oracle,
    store_path,
    write_adata,
)
from scipy import sparse
from strategies import anndatas, describe_indexer, indexers

from shadows import AnnDataShadow

# Example counts come from the active hypothesis profile (tests/conftest.py: "ci" = 15,
# "thorough" = 200); tests whose examples each write a zarr store run half as many.
HYPOTHESIS = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)
HALF_EXAMPLES = max(1, settings.default.max_examples // 2)


def _draw_key(data, obj):
    """Draw ``oidx`` or ``(oidx, vidx)`` for ``obj`` (a shadow/anndata or one of its views)."""
    oidx = data.draw(indexers(obj.n_obs, obj.obs_names), label="oidx")
    if data.draw(st.booleans(), label="obs only"):
        return oidx
    vidx = data.draw(indexers(obj.n_vars, obj.var_names), label="vidx")
    return (oidx, vidx)


def _describe(key) -> str:
    if isinstance(key, tuple):
        return "[" + ", ".join(describe_indexer(k) for k in key) + "]"
    return f"[{describe_indexer(key)}]"


def view_of(obj, key):
    """anndata's view (the oracle) of ``obj[key]``."""
    with quiet():
        return obj[anndata_key(key, obj.shape)]


def check_view_chains(data, shadow, want, *, n_chains=2, max_depth=3):
    for _ in range(n_chains):
        depth = data.draw(st.integers(1, max_depth), label="depth")
        got_view, want_view, where = shadow, want, "shadow"
        for level in range(depth):
            key = _draw_key(data, want_view)
            where += _describe(key)
            want_view = view_of(want_view, key)
            got_view = got_view[key]
            assert_adata_equal(got_view, want_view, where, to_memory=level == depth - 1)


@HYPOTHESIS
@given(data=st.data(), x_kind=st.sampled_from(["dense", "csr", "csc"]))
def test_random_views_h5ad(data, x_kind):
    """Random object and random view chains; h5ad (cheap to write, so a new object each time)."""
    adata = data.draw(anndatas(x_kinds=(x_kind,), max_obs=8, max_vars=6), label="adata")
    with tempfile.TemporaryDirectory() as d:
        path = write_adata(adata, store_path(d, "h5ad", None), None)
        want = read_oracle(path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with AnnDataShadow(path) as shadow:
                check_view_chains(data, shadow, want)


# --------------------------------------------------------------------------------------
# deterministic views
# --------------------------------------------------------------------------------------


def _views_adata(x="csr") -> ad.AnnData:
    rng = np.random.default_rng(0)
    n, m = 8, 6
    dense = np.where(rng.random((n, m)) < 0.5, rng.normal(size=(n, m)), 0).astype(np.float32)
    X = {"csr": sparse.csr_matrix, "csc": sparse.csc_matrix, "dense": np.asarray}[x](dense)
    obs = pd.DataFrame(
        {
            "cluster": pd.Categorical.from_codes([0, 1, 2, 0, 1, 2, 0, -1], ["c0", "c1", "c2", "never"]),
            "stage": pd.Categorical.from_codes([0, 0, 1, 1, 2, 2, 0, 1], ["a", "b", "c"], ordered=True),
            "score": np.linspace(0, 1, n),
            "nint": pd.array([1, None, 3, 4, None, 6, 7, 8], dtype="Int64"),
            "label": [f"L{i}" for i in range(n)],
        },
        index=[f"cell{i}" for i in range(n)],
    )
    var = pd.DataFrame(
        {"kind": pd.Categorical(["x", "y", "x", "z", "y", "x"]), "mean": np.arange(m, dtype=np.float64)},
        index=[f"gene{i}" for i in range(m)],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adata = ad.AnnData(
            X=X,
            obs=obs,
            var=var,
            layers={"counts": sparse.csc_matrix(np.abs(dense) * 3), "dense": dense.astype(np.float64)},
            obsm={"X_pca": rng.normal(size=(n, 2)), "frame": obs[["score", "label"]].copy()},
            varm={"PCs": rng.normal(size=(m, 2))},
            obsp={"distances": sparse.csr_matrix(rng.random((n, n)) * (rng.random((n, n)) < 0.3))},
            varp={"corr": rng.normal(size=(m, m))},
            uns={"note": "unchanged", "nested": {"k": np.arange(3)}},
        )
        adata.raw = ad.AnnData(
            X=sparse.csr_matrix(rng.poisson(1.0, size=(n, m + 2)).astype(np.float32)),
            var=pd.DataFrame({"r": np.arange(m + 2.0)}, index=[f"gene{i}" for i in range(m + 2)]),
            obs=pd.DataFrame(index=adata.obs_names),
        )
    return adata


# Every format and every X kind appears; a full cross product would double the run time.
STORED = [("h5ad", None, "dense"), ("h5ad", None, "csr"), ("zarr", 2, "csc"), ("zarr", 3, "csr")]


@pytest.fixture(scope="module", params=STORED, ids=[f"{f}{z or ''}-{x}" for f, z, x in STORED])
def stored(request, tmp_path_factory):
    fmt, zarr_format, x = request.param
    directory = tmp_path_factory.mktemp(f"views_{fmt}{zarr_format or ''}_{x}")
    path = write_adata(_views_adata(x), store_path(directory, fmt, zarr_format), zarr_format)
    return path, read_oracle(path)


INDEXERS = {
    "int": 3,
    "neg_int": -2,
    "np_int": np.int64(5),
    "slice": slice(1, 7, 2),
    "slice_neg_step": slice(None, None, -1),
    "slice_neg_bounds": slice(-2, -7, -2),
    "slice_out_of_range": slice(-20, 20),
    "empty_slice": slice(4, 2),
    "int_array_unsorted_repeated": np.array([5, 1, 1, 7, 0, 5]),
    "int_array_negative": np.array([-1, 0, -8]),
    "int_list": [2, 0, 2],
    "empty_list": [],
    "bool_mask": np.array([True, False, True, True, False, False, True, False]),
    "bool_list": [False, True] * 4,
    "all_false_mask": np.zeros(8, dtype=bool),
    "names": ["cell3", "cell0", "cell3"],
    "pd_index": pd.Index(["cell7", "cell2"]),
    "name": "cell4",
    "np_str_array": np.array(["cell1", "cell6"]),
}
VAR_INDEXERS = {
    "int": 0,
    "neg_slice": slice(None, None, -2),
    "int_array": np.array([4, 4, 0]),
    "mask": np.array([True, False, False, True, True, False]),
    "names": ["gene5", "gene1"],
    "name": "gene2",
    "pd_index": pd.Index(["gene3"]),
}


ZARR_STORED = [p for p in STORED if p[0] == "zarr"]


@pytest.mark.parametrize("stored", ZARR_STORED, ids=[f"{f}{z}-{x}" for f, z, x in ZARR_STORED], indirect=True)
@settings(HYPOTHESIS, max_examples=HALF_EXAMPLES)
@given(data=st.data())
def test_random_views_fixed_store(stored, data):
    """Random view chains on fixed zarr stores (zarr writes are slow; h5ad: test_random_views_h5ad)."""
    path, want = stored
    with AnnDataShadow(path) as shadow:
        check_view_chains(data, shadow, want)


@pytest.mark.parametrize("oidx", list(INDEXERS.values()), ids=list(INDEXERS))
def test_obs_indexers(stored, oidx):
    path, want = stored
    with AnnDataShadow(path) as shadow:
        assert_adata_equal(shadow[oidx], view_of(want, oidx), f"shadow[{describe_indexer(oidx)}]", to_memory=False)


@pytest.mark.parametrize("vidx", list(VAR_INDEXERS.values()), ids=list(VAR_INDEXERS))
@pytest.mark.parametrize("oidx", [slice(None), np.array([6, 1, 1])], ids=["all", "ints"])
def test_obs_var_indexers(stored, oidx, vidx):
    path, want = stored
    with AnnDataShadow(path) as shadow:
        w = view_of(want, (oidx, vidx))
        where = f"shadow[{describe_indexer(oidx)}, {describe_indexer(vidx)}]"
        assert_adata_equal(shadow[oidx, vidx], w, where, to_memory=False)


def test_nested_views(stored):
    path, want = stored
    chain = [
        (slice(None, None, -1), slice(1, None)),
        (np.array([0, 2, 2, 5, 6]), ["gene5", "gene2", "gene1"]),
        (np.array([True, False, True, True, False]), 1),
    ]
    with AnnDataShadow(path) as shadow:
        got, exp, where = shadow, want, "shadow"
        for key in chain:
            where += _describe(key)
            exp = view_of(exp, key)
            got = got[key]
            assert_adata_equal(got, exp, where)


def test_view_obs_vector(stored):
    path, want = stored
    with AnnDataShadow(path) as shadow:
        view, exp = shadow[[7, 0, 3]], want[[7, 0, 3]]
        for key in ("cluster", "score", "nint", "gene1"):
            assert_element_equal(view.obs_vector(key), exp.obs_vector(key), f"view.obs_vector({key!r})")
        for key in ("kind", "cell3"):
            assert_element_equal(view.var_vector(key), exp.var_vector(key), f"view.var_vector({key!r})")


def test_view_uns_colors_follow_removed_categories(tmp_path):
    """anndata subsets ``uns['<col>_colors']`` when a view drops unused categories.

    (anndata ``AnnData._remove_unused_categories``; uns is otherwise unchanged in a view.)
    ``cluster_colors`` has one color per category: the view keeps the used categories' colors;
    ``stage_colors`` has the wrong length: anndata's view drops the key.
    """
    adata = _views_adata("dense")
    adata.uns["cluster_colors"] = np.array(["#aa0000", "#00aa00", "#0000aa", "#000000"], dtype=object)
    adata.uns["stage_colors"] = np.array(["#aa0000", "#00aa00"], dtype=object)
    for fmt, zarr_format in STORE_FORMATS:
        path = write_adata(adata, store_path(tmp_path, fmt, zarr_format, stem="colors"), zarr_format)
        want = read_oracle(path)
        with AnnDataShadow(path) as shadow:
            for key in ([0, 3, 6], np.array([1, 4]), slice(0, 8, 2)):
                w = view_of(want, key)
                assert_adata_equal(shadow[key], w, f"{fmt}{zarr_format or ''} shadow[{describe_indexer(key)}]")


# --------------------------------------------------------------------------------------
# bad indices: same exception type as anndata
# --------------------------------------------------------------------------------------

BAD_KEYS = {
    "obs_int_too_large": 8,
    "obs_int_too_negative": -9,
    "obs_int_array_out_of_range": np.array([0, 8]),
    "obs_mask_too_short": np.array([True, False]),
    "obs_mask_too_long": np.ones(9, dtype=bool),
    "obs_unknown_name": "no-such-cell",
    "obs_unknown_name_in_list": ["cell1", "no-such-cell"],
    "obs_float": 1.5,
    "var_int_too_large": (slice(None), 6),
    "var_int_too_negative": (slice(None), -7),
    "var_mask_wrong_length": (slice(None), np.array([True] * 5)),
    "var_unknown_name": (slice(None), "no-such-gene"),
    "var_obs_name": (slice(None), "cell1"),
}


def _anndata_error(adata, key) -> type[BaseException]:
    try:
        with quiet():
            adata[key]
    except (IndexError, KeyError) as e:
        return type(e)
    raise AssertionError(f"anndata accepts {key!r}; not a bad index")


@pytest.mark.parametrize("key", list(BAD_KEYS.values()), ids=list(BAD_KEYS))
def test_bad_index_raises_like_anndata(stored, key):
    path, want = stored
    expected = _anndata_error(want, key)
    with AnnDataShadow(path) as shadow:
        with pytest.raises(expected):
            shadow[key]


@pytest.mark.parametrize(
    "key",
    [3, -4, np.array([0, 3]), np.ones(8, dtype=bool), "cell0", (slice(None), 3)],
    ids=["int", "neg_int", "int_array", "mask_parent_length", "name_outside_view", "var_int"],
)
def test_bad_index_relative_to_view(stored, key):
    """Bounds, mask lengths and names are those of the view, not of the parent."""
    path, want = stored
    with quiet():
        parent_view = want[[1, 2, 4], [0, 1, 2]]
    expected = _anndata_error(parent_view, key)
    with AnnDataShadow(path) as shadow:
        view = shadow[[1, 2, 4], [0, 1, 2]]
        with pytest.raises(expected):
            view[key]
