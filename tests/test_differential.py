"""Differential tests: every element of an AnnDataShadow equals what anndata reads.

Random AnnData objects (tests/strategies.py) are written with anndata to .h5ad, zarr v2 and
zarr v3; the oracle is ``anndata.read_h5ad``/``anndata.read_zarr`` of the same store.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from oracle import STORE_FORMATS, assert_adata_equal, assert_element_equal, read_oracle, store_path, write_adata
from scipy import sparse
from strategies import OBS_COLUMN_KINDS, X_DTYPES, anndatas, make_column

from shadows import AnnDataShadow

# Example counts come from the active hypothesis profile (tests/conftest.py: "ci" = 15,
# "thorough" = 200); tests whose examples each write a zarr store run half as many.
HYPOTHESIS = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)
HALF_EXAMPLES = max(1, settings.default.max_examples // 2)

FORMAT_IDS = [f"{fmt}{zf or ''}" for fmt, zf in STORE_FORMATS]


def check_store(adata: ad.AnnData, directory, fmt: str, zarr_format: int | None, stem="adata"):
    """Write ``adata``, read it with anndata and with a shadow; compare every element."""
    path = write_adata(adata, store_path(directory, fmt, zarr_format, stem), zarr_format)
    want = read_oracle(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with AnnDataShadow(path) as shadow:
            assert_adata_equal(shadow, want, f"shadow({Path(path).name})")
    return path, want


# --------------------------------------------------------------------------------------
# hypothesis
# --------------------------------------------------------------------------------------


@HYPOTHESIS
@given(adata=anndatas())
def test_random_anndata_h5ad(adata):
    with tempfile.TemporaryDirectory() as d:
        check_store(adata, d, "h5ad", None)


# zarr writes cost ~1 s per random object (zarr's per-array overhead): fewer examples, and no
# shrinking (shrinking a failure here can take hypothesis' full 5 minutes); the failing example
# is still printed, and test_random_anndata_h5ad shrinks the same objects cheaply.
@pytest.mark.parametrize("zarr_format", [2, 3], ids=["zarr2", "zarr3"])
@settings(HYPOTHESIS, max_examples=HALF_EXAMPLES, phases=[Phase.explicit, Phase.reuse, Phase.generate])
@given(adata=anndatas())
def test_random_anndata_zarr(zarr_format, adata):
    with tempfile.TemporaryDirectory() as d:
        check_store(adata, d, "zarr", zarr_format)


@HYPOTHESIS
@given(adata=anndatas(max_obs=12, max_vars=9, x_kinds=("dense", "csr", "csc"), with_uns=False, with_raw=False))
def test_random_X_and_columns_h5ad(adata):
    """More weight on X (dtype, format) and obs/var columns, h5ad only."""
    with tempfile.TemporaryDirectory() as d:
        check_store(adata, d, "h5ad", None)


# --------------------------------------------------------------------------------------
# deterministic edge cases
# --------------------------------------------------------------------------------------


def _frame(index, kinds=OBS_COLUMN_KINDS, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {f"col_{k}": make_column(k, len(index), rng) for k in kinds},
        index=pd.Index(list(index), dtype=object),
    )


def _sink_uns() -> dict:
    return {
        "int": 3,
        "float": 2.5,
        "bool": True,
        "str": "ünïcode ☃",
        "np_float32": np.float32(0.25),
        "strings": np.array(["a", "β", "中文"], dtype=object),
        "ints": np.arange(4, dtype=np.int16),
        "matrix": np.arange(6.0).reshape(2, 3) / 7,
        "empty": np.array([], dtype=np.float64),
        "frame": pd.DataFrame({"a": [1, 2], "b": ["x", "y"]}, index=["r0", "r1"]),
        "sparse": sparse.csr_matrix(np.eye(3)),
        "nested": {"level2": {"value": 1.5, "names": np.array(["p", "q"])}, "empty": {}},
    }


def kitchen_sink(
    n_obs=6, n_vars=5, *, obs_names=None, var_names=None, x="csr", raw=True, obs_kinds=OBS_COLUMN_KINDS, uns=True
) -> ad.AnnData:
    """Every element kind at once (deterministic)."""
    rng = np.random.default_rng(42)
    obs_names = [f"cell{i}" for i in range(n_obs)] if obs_names is None else obs_names
    var_names = [f"gene{i}" for i in range(n_vars)] if var_names is None else var_names
    dense = np.where(rng.random((n_obs, n_vars)) < 0.5, rng.normal(size=(n_obs, n_vars)), 0).astype(np.float32)
    X = {"csr": sparse.csr_matrix, "csc": sparse.csc_matrix, "dense": np.asarray}[x](dense) if x else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adata = ad.AnnData(
            X=X,
            obs=_frame(obs_names, kinds=obs_kinds, seed=1),
            var=_frame(var_names, kinds=obs_kinds, seed=2),
            layers={
                "counts": sparse.csc_matrix(np.round(np.abs(dense) * 10).astype(np.int32)),
                "dense64": dense.astype(np.float64),
                "mask": dense > 0,
            },
            obsm={
                "X_pca": rng.normal(size=(n_obs, 3)),
                "X_sparse": sparse.csr_matrix(dense[:, :2]),
                "frame": _frame(obs_names, kinds=("float", "cat", "str"), seed=3),
                "cube": rng.normal(size=(n_obs, 2, 2)),
            },
            varm={"PCs": rng.normal(size=(n_vars, 3)).astype(np.float32)},
            obsp={
                "distances": sparse.csr_matrix(np.where(rng.random((n_obs, n_obs)) < 0.3, 1.0, 0.0)),
                "dense": rng.normal(size=(n_obs, n_obs)),
            },
            varp={"corr": sparse.csc_matrix(np.eye(n_vars))},
            uns=_sink_uns() if uns else {"int": 3, "nested": {"names": np.array(["p", "q"])}},
        )
        if raw:
            raw_names = list(var_names) + ["extra0", "extra1"]
            adata.raw = ad.AnnData(
                X=sparse.csr_matrix(rng.poisson(1.0, size=(n_obs, len(raw_names))).astype(np.float32)),
                var=_frame(raw_names, kinds=("float", "cat", "str"), seed=4),
                varm={"PCs": rng.normal(size=(len(raw_names), 2))},
                obs=pd.DataFrame(index=adata.obs_names),
            )
    return adata


@pytest.fixture(params=STORE_FORMATS, ids=FORMAT_IDS)
def store_format(request):
    return request.param


@pytest.fixture(scope="module", params=STORE_FORMATS, ids=FORMAT_IDS)
def sink_store(request, tmp_path_factory):
    """The kitchen sink written once per format (zarr writes are slow): (path, anndata read)."""
    fmt, zarr_format = request.param
    path = write_adata(kitchen_sink(), store_path(tmp_path_factory.mktemp("sink"), fmt, zarr_format), zarr_format)
    return path, read_oracle(path)


def test_kitchen_sink(sink_store):
    path, want = sink_store
    with AnnDataShadow(path) as shadow:
        assert_adata_equal(shadow, want, f"shadow({Path(path).name})")


@pytest.mark.parametrize("x", ["csc", "dense", None])
def test_kitchen_sink_x_kinds_h5ad(tmp_path, x):
    check_store(kitchen_sink(x=x), tmp_path, "h5ad", None)


# The edge cases below use a lighter object on every format.
LIGHT = {"obs_kinds": ("float", "cat", "string", "Int64", "bool"), "uns": False}


def test_zero_obs(tmp_path, store_format):
    adata = kitchen_sink(n_obs=0, raw=False, **LIGHT)
    assert adata.n_obs == 0
    _, want = check_store(adata, tmp_path, *store_format)
    assert want.n_obs == 0


def test_zero_vars(tmp_path, store_format):
    check_store(kitchen_sink(n_vars=0, **LIGHT), tmp_path, *store_format)


@pytest.mark.parametrize("x", ["csr", None])
def test_zero_by_zero(tmp_path, x):
    for fmt, zarr_format in STORE_FORMATS:
        check_store(kitchen_sink(n_obs=0, n_vars=0, x=x, raw=False, **LIGHT), tmp_path, fmt, zarr_format, stem=f"z{x}")


def test_unicode_names_and_keys(tmp_path, store_format):
    obs_names = ["Zelle-ä", "细胞_1", "клетка", "😀 cell", "naïve", "ØÆÅ"]
    var_names = ["Gén1", "基因", "ген", "γ-globin", "ß"]
    adata = kitchen_sink(obs_names=obs_names, var_names=var_names, **LIGHT)
    adata.obs["größe"] = np.arange(6.0)
    adata.obs["类别"] = pd.Categorical(["α", "β", "α", "γ", "β", "α"], categories=["γ", "β", "α"])
    adata.obsm["埋め込み"] = np.ones((6, 2))
    adata.layers["слой"] = np.zeros((6, 5), dtype=np.float32)
    adata.uns["ключ"] = {"值": "värde", "列表": np.array(["é", "ü"])}
    check_store(adata, tmp_path, *store_format)


def test_non_unique_names(tmp_path, store_format):
    obs_names = ["a", "b", "a", "c", "b", "a"]
    var_names = ["g", "g", "h", "i", "g"]
    adata = kitchen_sink(obs_names=obs_names, var_names=var_names, **LIGHT)
    assert not adata.obs_names.is_unique and not adata.var_names.is_unique
    check_store(adata, tmp_path, *store_format)


def test_x_absent_with_layers(tmp_path, store_format):
    adata = kitchen_sink(x=None, raw=False, **LIGHT)
    assert adata.X is None
    check_store(adata, tmp_path, *store_format)


X_KINDS = ("dense", "csr", "csc")


@pytest.mark.parametrize("dtype", X_DTYPES)
@pytest.mark.parametrize("x", X_KINDS)
def test_x_dtypes(tmp_path, x, dtype):
    rng = np.random.default_rng(0)
    dense = (rng.random((7, 4)) < 0.4) * rng.integers(1, 5, size=(7, 4))
    dense = dense.astype(dtype)
    X = {"csr": sparse.csr_matrix, "csc": sparse.csc_matrix, "dense": np.asarray}[x](dense)
    adata = ad.AnnData(X=X, obs=pd.DataFrame(index=[f"o{i}" for i in range(7)]))
    check_store(adata, tmp_path, "h5ad", None, stem=f"x_{x}_{dtype}")
    # one zarr format per case (alternating) keeps zarr's slow writes down; both are covered
    zarr_format = 2 if (X_KINDS.index(x) + X_DTYPES.index(dtype)) % 2 else 3
    check_store(adata, tmp_path, "zarr", zarr_format, stem=f"x_{x}_{dtype}")


@pytest.mark.parametrize("kind", OBS_COLUMN_KINDS)
def test_each_column_kind(tmp_path, kind):
    rng = np.random.default_rng(1)
    n = 9
    obs = pd.DataFrame({kind: make_column(kind, n, rng)}, index=[f"o{i}" for i in range(n)])
    var = pd.DataFrame({kind: make_column(kind, 3, rng)}, index=["a", "b", "c"])
    adata = ad.AnnData(X=np.ones((n, 3), dtype=np.float32), obs=obs, var=var)
    check_store(adata, tmp_path, "h5ad", None, stem=f"col_{kind}")
    zarr_format = 2 if OBS_COLUMN_KINDS.index(kind) % 2 else 3  # alternating, both covered
    check_store(adata, tmp_path, "zarr", zarr_format, stem=f"col_{kind}")


def test_mapping_protocol(sink_store):
    path, want = sink_store
    with AnnDataShadow(path) as shadow:
        for name in ("obsm", "varm", "obsp", "varp", "uns"):
            got_m, want_m = getattr(shadow, name), getattr(want, name)
            assert sorted(got_m.keys()) == sorted(want_m.keys()), name
            assert len(got_m) == len(want_m), name
            for k in want_m.keys():
                assert k in got_m, (name, k)
            assert "no-such-key" not in got_m, name
            with pytest.raises(KeyError):
                got_m["no-such-key"]
        layer_keys = [k for k in shadow.layers.keys() if k is not None]
        assert sorted(layer_keys) == sorted(k for k in want.layers.keys() if k is not None)
        assert "counts" in shadow.layers
        with pytest.raises(KeyError):
            shadow.layers["no-such-layer"]


def test_repeated_access_and_close(sink_store):
    path, want = sink_store
    shadow = AnnDataShadow(path)
    try:
        for _ in range(2):  # cached or re-read, the answer must not change
            assert_element_equal(shadow.X, want.X, "X")
            assert_element_equal(shadow.obs, want.obs, "obs")
            assert_element_equal(shadow.obsm["X_pca"], want.obsm["X_pca"], "obsm['X_pca']")
            assert_element_equal(shadow.uns["nested"], want.uns["nested"], "uns['nested']")
    finally:
        shadow.close()


def test_context_manager_returns_shadow(sink_store):
    path, want = sink_store
    with AnnDataShadow(path) as shadow:
        assert isinstance(shadow, AnnDataShadow)
        assert shadow.shape == want.shape


def test_pathlib_path(sink_store):
    path, want = sink_store
    with AnnDataShadow(Path(path)) as shadow:
        assert_adata_equal(shadow, want, "shadow(Path)", vectors=False, to_memory=False)


def test_to_memory_is_independent_anndata(sink_store):
    path, want = sink_store
    with AnnDataShadow(path) as shadow:
        mem = shadow.to_memory()
    # usable after the shadow is closed, and a plain in-memory AnnData
    assert isinstance(mem, ad.AnnData)
    assert not mem.isbacked
    assert_adata_equal(mem, want, "to_memory()", to_memory=False)


# --------------------------------------------------------------------------------------
# the comparator itself must be strict (a lenient oracle would hide shadow bugs)
# --------------------------------------------------------------------------------------

_CAT = pd.Categorical(["a", "b", "a"], categories=["a", "b", "c"])
_FRAME = pd.DataFrame({"x": [1.0, 2.0, 3.0], "c": _CAT}, index=["i", "j", "k"])
_MISMATCHES = {
    "float_dtype": (np.zeros(3, np.float32), np.zeros(3, np.float64)),
    "int_vs_float": (np.zeros(3, np.int64), np.zeros(3, np.float64)),
    "values": (np.array([1, 2, 3]), np.array([1, 2, 4])),
    "shape": (np.zeros((3, 1)), np.zeros(3)),
    "nan_vs_value": (np.array([np.nan]), np.array([0.0])),
    "strings": (np.array(["a", "b"], dtype=object), np.array(["a", "c"], dtype=object)),
    "string_vs_number": (np.array([1, 2]), np.array(["1", "2"], dtype=object)),
    "dense_vs_sparse": (np.eye(2), sparse.csr_matrix(np.eye(2))),
    "csr_vs_csc": (sparse.csc_matrix(np.eye(2)), sparse.csr_matrix(np.eye(2))),
    "sparse_array_vs_matrix": (sparse.csr_array(np.eye(2)), sparse.csr_matrix(np.eye(2))),
    "sparse_dtype": (sparse.csr_matrix(np.eye(2, dtype=np.float32)), sparse.csr_matrix(np.eye(2))),
    "sparse_values": (sparse.csr_matrix(2 * np.eye(2)), sparse.csr_matrix(np.eye(2))),
    "category_order": (
        pd.Categorical(["a", "b", "a"], categories=["b", "a", "c"]),
        _CAT,
    ),
    "unused_category": (pd.Categorical(["a", "b", "a"], categories=["a", "b"]), _CAT),
    "ordered": (pd.Categorical(["a", "b", "a"], categories=["a", "b", "c"], ordered=True), _CAT),
    "column_order": (_FRAME[["c", "x"]], _FRAME),
    "index_values": (_FRAME.set_axis(["i", "j", "z"]), _FRAME),
    "index_name": (_FRAME.rename_axis("name"), _FRAME),
    "column_dtype": (_FRAME.astype({"x": np.float32}), _FRAME),
    "categorical_vs_strings": (_FRAME.astype({"c": object}), _FRAME),
    "nullable_vs_float": (pd.array([1, None], dtype="Int64"), pd.array([1.0, np.nan], dtype="Float64")),
    "dict_keys": ({"a": 1}, {"a": 1, "b": 2}),
    "nested_value": ({"a": {"b": np.arange(2)}}, {"a": {"b": np.arange(3)}}),
    "numpy_scalar_dtype": (np.float32(1.5), np.float64(1.5)),
    "python_scalar_kind": (1, 1.0),
    "str_vs_bytes": ("a", b"a"),
    "none_vs_value": (None, 1),
}


@pytest.mark.parametrize(("got", "want"), list(_MISMATCHES.values()), ids=list(_MISMATCHES))
def test_oracle_detects_mismatch(got, want):
    with pytest.raises(AssertionError):
        assert_element_equal(got, want, "probe")


@pytest.mark.parametrize(
    ("got", "want"),
    [
        (np.array(["a", "b"], dtype=object), np.array(["a", "b"])),  # object vs <U vs StringDType
        (np.float64(2.0), 2.0),
        (2, np.int64(2)),
        (True, np.bool_(True)),
        (np.array([np.nan, 1.0]), np.array([np.nan, 1.0])),
        (_FRAME.copy(), _FRAME),
        ({"a": {"b": np.arange(2)}}, {"a": {"b": np.arange(2)}}),
    ],
)
def test_oracle_accepts_equal(got, want):
    assert_element_equal(got, want, "probe")
