"""Streaming ``shadows.pp.normalize_total`` and ``log1p`` against scanpy's in-memory functions."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
from oracle import read_oracle
from stream_data import SOURCES, as_kind, counts, dense_of, rich, write_source

import shadows
from shadows import AnnDataShadow

sc = pytest.importorskip("scanpy")
pytestmark = pytest.mark.filterwarnings("ignore:Some cells have zero counts")


def _same(got, want, what: str) -> None:
    assert (got.format if sp.issparse(got) else "dense") == (want.format if sp.issparse(want) else "dense") or (
        sp.issparse(got) and sp.issparse(want)  # scanpy turns CSC into CSR; the stream keeps the stored format
    ), what
    assert got.dtype == want.dtype, f"{what}: {got.dtype} != {want.dtype}"
    np.testing.assert_allclose(dense_of(got), dense_of(want), rtol=1e-6, atol=1e-7, err_msg=what)


def _explicit(adata, kw: dict) -> dict:
    """``kw`` with ``target_sum=None`` made explicit: the median of the non-zero totals (scanpy >= 1.12's rule;
    scanpy 1.11 took all cells of a CSR matrix)."""
    if kw.get("target_sum") is not None or kw.get("exclude_highly_expressed"):
        return kw
    x = adata.layers[kw["layer"]] if kw.get("layer") else adata.X
    totals = np.ravel(np.asarray(x.sum(axis=1)))
    return {**kw, "target_sum": float(np.median(totals[totals > 0]))}


@pytest.mark.parametrize(
    ("fmt", "zf", "kind"), [("h5ad", None, "csr"), ("zarr", 2, "csc"), ("zarr", 3, "dense"), ("h5ad", None, "csc")]
)
def test_normalize_then_log1p_equals_scanpy(tmp_path, fmt, zf, kind):
    a = rich(60, 20, kind, seed=5, light=True)
    path = write_source(a, tmp_path, fmt, zf)
    ref = read_oracle(path)
    n1 = tmp_path / ("n1.zarr" if fmt == "zarr" else "n1.h5ad")
    n2 = tmp_path / "n2.h5ad"
    assert shadows.pp.normalize_total(path, n1, target_sum=1e4, chunk_size=7) == n1
    assert shadows.pp.log1p(n1, n2) == n2  # chained: the output of one is the input of the next
    want = ref.copy()
    sc.pp.normalize_total(want, target_sum=1e4)
    _same(read_oracle(n1).X, want.X, "normalize_total")
    sc.pp.log1p(want)
    back = read_oracle(n2)
    _same(back.X, want.X, "log1p")
    assert back.uns["log1p"] == {"base": None} or back.uns["log1p"].get("base") is None
    # the other elements are copied unchanged
    np.testing.assert_array_equal(dense_of(back.layers["counts"]), dense_of(ref.layers["counts"]))
    assert list(back.obs_names) == list(ref.obs_names) and back.raw is not None


@pytest.mark.parametrize("kind", ["csr", "dense"])
def test_normalize_options_equal_scanpy(tmp_path, kind):
    x = counts(50, 16, seed=7)
    x[:, 2] *= 40  # a gene dominating some cells
    a = ad.AnnData(X=as_kind(x, kind))
    a.layers["ints"] = as_kind(x.astype(np.int64), kind)
    path = write_source(a, tmp_path, "h5ad", None)
    for kw in (
        {},
        {"exclude_highly_expressed": True, "max_fraction": 0.4, "key_added": "norm", "target_sum": 1e3},
        {"layer": "ints", "target_sum": 100.0},
    ):
        out = tmp_path / "o.h5ad"
        with pytest.warns(UserWarning, match="zero counts"):
            shadows.pp.normalize_total(path, out, overwrite=True, **kw)  # one output, replaced each time
        want = read_oracle(path)
        sc.pp.normalize_total(want, **_explicit(want, kw))
        back = read_oracle(out)
        layer = kw.get("layer")
        _same(back.layers[layer] if layer else back.X, want.layers[layer] if layer else want.X, str(kw))
        if "key_added" in kw:
            np.testing.assert_allclose(back.obs["norm"], want.obs["norm"], rtol=1e-6)
    with pytest.raises(ValueError, match="max_fraction"):
        shadows.pp.normalize_total(path, tmp_path / "x.h5ad", max_fraction=2)


def test_log1p_base_integers_views_and_pending(tmp_path):
    x = counts(30, 10, seed=1)
    a = ad.AnnData(X=sp.csr_matrix(x.astype(np.int32)))
    path = write_source(a, tmp_path, "h5ad", None)
    out = tmp_path / "l.zarr"
    shadows.pp.log1p(path, out, base=2)
    want = read_oracle(path)
    sc.pp.log1p(want, base=2)
    back = read_oracle(out)
    _same(back.X, want.X, "log1p base 2")
    assert back.uns["log1p"]["base"] == 2
    with pytest.warns(UserWarning, match="already log-transformed"):
        shadows.pp.log1p(out, tmp_path / "twice.h5ad")
    # a view as the source, with a pending layer transformed
    cells = np.arange(0, 30, 2)
    with AnnDataShadow(path) as s:
        s.layers["extra"] = sp.csr_matrix(x * 2)
        shadows.pp.log1p(s[cells], tmp_path / "v.h5ad", layer="extra")
    back = read_oracle(tmp_path / "v.h5ad")
    np.testing.assert_allclose(back.layers["extra"].toarray(), np.log1p(x[cells] * 2), rtol=1e-6)
    np.testing.assert_array_equal(back.X.toarray(), x[cells].astype(np.int32))


@pytest.mark.parametrize(("fmt", "zf"), SOURCES[:1])
def test_streaming_transform_with_a_tiny_budget(tmp_path, fmt, zf):
    x = counts(400, 30, seed=3)
    path = write_source(ad.AnnData(X=sp.csr_matrix(x)), tmp_path, fmt, zf)
    with shadows.settings.override(memory_budget=2**16), pytest.warns(UserWarning, match="zero counts"):
        shadows.pp.normalize_total(path, tmp_path / "n.h5ad")
    want = ad.AnnData(X=sp.csr_matrix(x))
    sc.pp.normalize_total(want, **_explicit(want, {}))
    _same(read_oracle(tmp_path / "n.h5ad").X, want.X, "tiny budget")
