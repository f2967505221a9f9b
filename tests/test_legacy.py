"""Pre-0.8 layouts, built by hand (tests/legacy_files.py), read through a shadow.

For each file: (1) the installed anndata reads it and the result has the documented meaning;
(2) the shadow has the same documented meaning — checked independently of anndata, so the
check stands even where an anndata release could no longer read a layout; (3) every shadow
element equals anndata's, also through views.

All these layouts are read by anndata 0.12 and 0.13 (checked when this was written); should an
anndata release be unable to read one, the tests that need anndata's reading skip with the
reason, and the shadow is still held to the documented meaning by
``test_shadow_has_documented_meaning``.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from legacy_files import BUILDERS, Column, Meaning
from oracle import assert_adata_equal, quiet, read_oracle
from scipy import sparse

from shadows import AnnDataShadow


@pytest.fixture(scope="module")
def legacy_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("legacy")


@pytest.fixture(params=list(BUILDERS), scope="module")
def legacy(request, legacy_dir):
    name = request.param
    path, meaning = BUILDERS[name](legacy_dir)
    return name, path, meaning


# --------------------------------------------------------------------------------------
# documented meaning
# --------------------------------------------------------------------------------------


def _dense(x):
    return x.toarray() if sparse.issparse(x) else np.asarray(x)


def _check_matrix(got, want, what, *, check_format=True):
    assert got is not None, f"{what} missing"
    if sparse.issparse(want) and check_format:
        assert sparse.issparse(got), f"{what}: expected sparse {want.format}, got {type(got).__name__}"
        assert got.format == want.format, f"{what}: format {got.format} != {want.format}"
    assert tuple(got.shape) == tuple(want.shape), f"{what}: shape {got.shape} != {want.shape}"
    assert np.dtype(got.dtype) == np.dtype(want.dtype), f"{what}: dtype {got.dtype} != {want.dtype}"
    np.testing.assert_array_equal(_dense(got), _dense(want), err_msg=what)


def _check_column(series: pd.Series, col: Column, what):
    if col.categories is not None:
        assert isinstance(series.dtype, pd.CategoricalDtype), f"{what}: expected categorical, got {series.dtype}"
        assert list(series.cat.categories) == col.categories, f"{what}: categories {list(series.cat.categories)}"
        assert bool(series.cat.ordered) == col.ordered, f"{what}: ordered"
    values = [None if pd.isna(v) else v for v in series.tolist()]
    expected = [None if v is None or (isinstance(v, float) and np.isnan(v)) else v for v in col.values]
    if values and isinstance(values[0], float | np.floating):
        np.testing.assert_allclose(np.array(values, dtype=float), np.array(expected, dtype=float), err_msg=what)
    else:
        assert values == expected, f"{what}: {values} != {expected}"


def _check_frame(df: pd.DataFrame, names, columns: dict, index_name, what):
    assert isinstance(df, pd.DataFrame), f"{what}: {type(df).__name__}"
    assert list(df.index) == list(names), f"{what}.index {list(df.index)} != {names}"
    assert df.index.name == index_name, f"{what}.index.name {df.index.name!r} != {index_name!r}"
    assert list(df.columns) == list(columns), f"{what}.columns {list(df.columns)} != {list(columns)}"
    for k, col in columns.items():
        _check_column(df[k], col, f"{what}[{k!r}]")


def check_meaning(obj, m: Meaning, who: str):
    """``obj`` (an AnnData or a shadow) denotes what the hand-built file means."""
    n, v = len(m.obs_names), len(m.var_names)
    assert tuple(obj.shape) == (n, v), f"{who}.shape"
    _check_matrix(obj.X, m.X, f"{who}.X")
    assert list(obj.obs_names) == m.obs_names, f"{who}.obs_names"
    assert list(obj.var_names) == m.var_names, f"{who}.var_names"
    _check_frame(obj.obs, m.obs_names, m.obs, m.obs_index_name, f"{who}.obs")
    _check_frame(obj.var, m.var_names, m.var, m.var_index_name, f"{who}.var")
    uns_keys = set(obj.uns.keys())
    assert m.uns_keys <= uns_keys, f"{who}.uns keys {sorted(uns_keys)} lack {sorted(m.uns_keys - uns_keys)}"
    assert not (m.uns_absent & uns_keys), f"{who}.uns still has {sorted(m.uns_absent & uns_keys)}"
    for name in ("obsm", "varm", "obsp", "layers"):
        want = getattr(m, name)
        got = getattr(obj, name)
        got_keys = {k for k in got.keys() if k is not None}
        assert got_keys == set(want), f"{who}.{name} keys {sorted(got_keys)} != {sorted(want)}"
        for k, w in want.items():
            _check_matrix(got[k], w, f"{who}.{name}[{k!r}]")
    if m.neighbors_uns is not None:
        assert set(obj.uns["neighbors"].keys()) == m.neighbors_uns, f"{who}.uns['neighbors'] keys"
    if m.raw_X is None:
        assert obj.raw is None, f"{who}.raw should be None"
    else:
        raw = obj.raw
        assert raw is not None, f"{who}.raw missing"
        _check_matrix(raw.X, m.raw_X, f"{who}.raw.X")
        assert list(raw.var_names) == m.raw_var_names, f"{who}.raw.var_names"
        _check_frame(raw.var, m.raw_var_names, m.raw_var, raw.var.index.name, f"{who}.raw.var")
        assert set(raw.varm.keys()) == set(m.raw_varm), f"{who}.raw.varm keys"
        for k, w in m.raw_varm.items():
            _check_matrix(raw.varm[k], w, f"{who}.raw.varm[{k!r}]")


# --------------------------------------------------------------------------------------
# tests
# --------------------------------------------------------------------------------------


def _read_or_skip(name, path):
    """anndata's reading of a legacy file; skip (not fail) if this anndata cannot read it."""
    try:
        return read_oracle(path)
    except Exception as e:  # noqa: BLE001 - any failure means "no oracle"
        pytest.skip(
            f"installed anndata cannot read {name} ({type(e).__name__}: {e}); "
            "the shadow is still checked against the documented meaning"
        )


def test_anndata_reads_legacy(legacy):
    """The installed anndata reads the file and gives it its documented meaning."""
    name, path, meaning = legacy
    adata = _read_or_skip(name, path)
    check_meaning(adata, meaning, f"anndata.read({name})")


def test_shadow_has_documented_meaning(legacy):
    name, path, meaning = legacy
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with AnnDataShadow(path) as shadow:
            check_meaning(shadow, meaning, f"shadow({name})")


def test_shadow_equals_anndata(legacy):
    name, path, _ = legacy
    want = _read_or_skip(name, path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with AnnDataShadow(path) as shadow:
            assert_adata_equal(shadow, want, f"shadow({name})")


VIEW_KEYS = {
    "rows": np.array([4, 0, 0, 2]),
    "reversed": slice(None, None, -1),
    "mask_and_cols": (np.array([True, False, True, True, False]), np.array([1, 0, 1])),
    "int_and_slice": (1, slice(1, None, 2)),
}


@pytest.mark.parametrize("key", list(VIEW_KEYS.values()), ids=list(VIEW_KEYS))
def test_shadow_views_equal_anndata(legacy, key):
    name, path, _ = legacy
    want = _read_or_skip(name, path)
    if isinstance(key, tuple) and isinstance(key[0], np.ndarray) and key[0].dtype == bool:
        key = (np.resize(key[0], want.n_obs), key[1])
    with quiet():
        want_view = want[key]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with AnnDataShadow(path) as shadow:
            # uns of views (colors follow removed categories) is covered by test_views_differential
            assert_adata_equal(shadow[key], want_view, f"shadow({name})[{key!r}]", uns=False)
