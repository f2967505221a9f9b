"""Deep comparison of what a call returns and of the state it leaves, for the scanpy/muon compatibility suites.

``assert_same(got, want)`` compares a value handed out by a shadow with the one the in-memory AnnData gave:
tables, arrays (dense, sparse, structured), nested dicts, AnnData objects (every element), numbers.  Matplotlib
objects are not compared here: the suites compare the rendered figures instead (:func:`render_figures`).
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

_TOL = {"rtol": 1e-5, "atol": 1e-6}
ELEMENT_GROUPS = ("layers", "obsm", "varm", "obsp", "varp")


@contextmanager
def tolerance(rtol: float, atol: float) -> Iterator[None]:
    """Float tolerance of the comparisons inside the ``with`` block."""
    old = dict(_TOL)
    _TOL.update(rtol=rtol, atol=atol)
    try:
        yield
    finally:
        _TOL.update(old)


def _is_plot(x: Any) -> bool:
    mod = type(x).__module__ or ""
    return mod.startswith(("matplotlib", "scanpy.plotting", "seaborn"))


def _untrack(x: Any) -> Any:
    return {k: _untrack(v) for k, v in x.items()} if isinstance(x, Mapping) else x


def assert_same(got: Any, want: Any, where: str = "result") -> None:
    """Assert that ``got`` (from the shadow) equals ``want`` (from memory), with float tolerance."""
    import anndata as ad

    if isinstance(want, ad.AnnData):
        assert isinstance(got, ad.AnnData), f"{where}: got {type(got).__name__}, want AnnData"
        assert_adata_same(got, want, where)
    elif isinstance(want, pd.DataFrame):
        assert isinstance(got, pd.DataFrame), f"{where}: got {type(got).__name__}, want DataFrame"
        if len(want.columns) == 0 and len(got.columns) == 0:  # the dtype of an empty column index says nothing
            got = got.set_axis(want.columns, axis=1)
        pd.testing.assert_frame_equal(
            got, want, check_exact=False, rtol=_TOL["rtol"], atol=_TOL["atol"], check_frame_type=False, obj=where
        )
    elif isinstance(want, pd.Series):
        pd.testing.assert_series_equal(got, want, check_exact=False, rtol=_TOL["rtol"], atol=_TOL["atol"], obj=where)
    elif isinstance(want, pd.Index):
        pd.testing.assert_index_equal(got, want, obj=where)
    elif isinstance(want, pd.Categorical):
        pd.testing.assert_categorical_equal(got, want, obj=where)
    elif sp.issparse(want) or sp.issparse(got):
        assert sp.issparse(got) and sp.issparse(want), f"{where}: {type(got).__name__} vs {type(want).__name__}"
        assert_array_same(got.toarray(), want.toarray(), where)
    elif isinstance(want, np.ndarray) and want.dtype == object and any(_is_plot(x) for x in want.flat):
        # an array of Axes (scrublet_score_distribution): the figures themselves are compared as images
        assert isinstance(got, np.ndarray) and got.shape == want.shape, f"{where}: {got!r} vs {want!r}"
        assert [type(x) for x in got.flat] == [type(x) for x in want.flat], f"{where}: {got!r} vs {want!r}"
    elif isinstance(want, np.ndarray) or isinstance(got, np.ndarray):
        assert_array_same(np.asarray(got), np.asarray(want), where)
    elif isinstance(want, Mapping):
        assert isinstance(got, Mapping), f"{where}: got {type(got).__name__}, want a mapping"
        assert set(got.keys()) == set(want.keys()), f"{where}: keys {sorted(map(str, got))} != {sorted(map(str, want))}"
        for k in want:
            assert_same(got[k], want[k], f"{where}[{k!r}]")
    elif isinstance(want, list | tuple):
        assert isinstance(got, list | tuple) and len(got) == len(want), f"{where}: {got!r} vs {want!r}"
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_same(g, w, f"{where}[{i}]")
    elif _is_plot(want):
        assert type(got) is type(want), f"{where}: {type(got).__name__} vs {type(want).__name__}"
    elif isinstance(want, float | np.floating):
        assert np.isclose(got, want, rtol=_TOL["rtol"], atol=_TOL["atol"], equal_nan=True), (
            f"{where}: {got!r} != {want!r}"
        )
    else:
        assert got == want, f"{where}: {got!r} != {want!r}"


def assert_array_same(got: np.ndarray, want: np.ndarray, where: str) -> None:
    assert got.shape == want.shape, f"{where}: shape {got.shape} != {want.shape}"
    if want.dtype.names:  # structured arrays: uns['rank_genes_groups'] fields
        assert got.dtype.names == want.dtype.names, f"{where}: fields {got.dtype.names} != {want.dtype.names}"
        for f in want.dtype.names:
            assert_array_same(np.asarray(got[f]), np.asarray(want[f]), f"{where}.{f}")
    elif want.dtype.kind == "O" or got.dtype.kind == "O":  # strings with NaN for missing (filtered ranks)
        g, w = pd.isna(pd.Series(got.ravel())).to_numpy(), pd.isna(pd.Series(want.ravel())).to_numpy()
        np.testing.assert_array_equal(g, w, err_msg=f"{where} (missing values)")
        np.testing.assert_array_equal(got.ravel()[~g], want.ravel()[~w], err_msg=where)
    elif want.dtype.kind in "fc" or got.dtype.kind in "fc":
        np.testing.assert_allclose(got, want, rtol=_TOL["rtol"], atol=_TOL["atol"], equal_nan=True, err_msg=where)
    else:
        np.testing.assert_array_equal(got, want, err_msg=where)


def assert_adata_same(got: Any, want: Any, where: str = "adata") -> None:
    """Every element of two AnnData objects (a shadow and an AnnData, or two AnnData) is the same."""
    assert got.shape == want.shape, f"{where}: shape {got.shape} != {want.shape}"
    assert_same(got.obs_names, want.obs_names, f"{where}.obs_names")
    assert_same(got.var_names, want.var_names, f"{where}.var_names")
    assert_same(got.obs, want.obs, f"{where}.obs")
    assert_same(got.var, want.var, f"{where}.var")
    assert_same(got.X, want.X, f"{where}.X")
    for g in ELEMENT_GROUPS:
        got_m, want_m = getattr(got, g), getattr(want, g)
        keys = [k for k in want_m.keys() if k is not None]
        assert sorted(k for k in got_m.keys() if k is not None) == sorted(keys), (
            f"{where}.{g}: keys {sorted(got_m.keys())} != {sorted(keys)}"
        )
        for k in keys:
            assert_same(got_m[k], want_m[k], f"{where}.{g}[{k!r}]")
    assert_same(_untrack(dict(got.uns.items())), _untrack(dict(want.uns.items())), f"{where}.uns")
    assert (got.raw is None) == (want.raw is None), f"{where}.raw: {got.raw!r} vs {want.raw!r}"
    if want.raw is not None:
        assert_same(got.raw.X, want.raw.X, f"{where}.raw.X")
        assert_same(got.raw.var, want.raw.var, f"{where}.raw.var")


def same(got: Any, want: Any) -> bool:
    try:
        assert_same(got, want)
    except AssertionError:
        return False
    return True


def changed_elements(after: Any, before: Any) -> set[tuple[str, str]]:
    """``(group, key)`` of every element of in-memory ``after`` that is new or differs from ``before``.

    obs/var columns are reported as ``("obs", column)``; a changed X as ``("X", "")``.
    """
    out: set[tuple[str, str]] = set()
    if after.shape != before.shape:
        return {("shape", "")}
    if not same(after.X, before.X):
        out.add(("X", ""))
    for name in ("obs", "var"):
        a, b = getattr(after, name), getattr(before, name)
        out |= {(name, c) for c in a.columns if c not in b.columns or not same(a[c], b[c])}
    for g in (*ELEMENT_GROUPS, "uns"):
        a, b = getattr(after, g), getattr(before, g)
        for k in a.keys():
            if k is not None and (k not in b.keys() or not same(_untrack(a[k]), _untrack(b[k]))):
                out.add((g, k))
    return out


def pending_elements(shadow: Any) -> set[tuple[str, str]]:
    """What a shadow holds in memory, not yet written: pending elements and changed obs/var columns."""
    out = {(g, k) for (g, k) in shadow._state.pending if g not in ("obs", "var")}
    for name in ("obs", "var"):
        ch = shadow.frame_changes(name)
        out |= {(name, c) for c in ch["added"] + ch["changed"]}
    return out


def render_figures() -> list[np.ndarray]:
    """Every open matplotlib figure rendered to RGBA at a low resolution (then all are closed)."""
    import matplotlib.pyplot as plt

    out = []
    for num in plt.get_fignums():
        fig = plt.figure(num)
        buf = io.BytesIO()
        fig.savefig(buf, format="rgba", dpi=25)
        out.append(np.frombuffer(buf.getvalue(), dtype=np.uint8))
    plt.close("all")
    return out
