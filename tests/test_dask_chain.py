"""The fused chain of a dask shadow's sparse X (``shadows.backends.dask_chain``): scanpy's normalize_total, log1p and
HVG's expm1 applied in one task per block give, bit for bit, what scanpy's dask route and in-memory scanpy give,
never write the block the reader returned, and share its indices instead of copying them."""

from __future__ import annotations

import warnings

import anndata as ad
import cloudpickle
import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given
from hypothesis import strategies as st

from shadows import AnnDataShadow

sc = pytest.importorskip("scanpy")
da = pytest.importorskip("dask.array")
dask = pytest.importorskip("dask")

from shadows.backends.dask_chain import ChainArray, _Apply  # noqa: E402


def _counts(n: int = 120, g: int = 40, dtype=np.float32, seed: int = 5) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    X = sp.random(n, g, density=0.3, format="csr", dtype=np.float64, random_state=seed)
    X.data = rng.negative_binomial(2, 0.35, X.nnz).astype(dtype) + 1
    X[3] = 0  # a cell without counts: scanpy's zero factor replaced by one
    X.eliminate_zeros()
    return ad.AnnData(X.astype(dtype))


@pytest.fixture(scope="module", params=["h5ad", "zarr", "csc.h5ad", "int.h5ad"])
def path(request, tmp_path_factory):
    d = tmp_path_factory.mktemp("chain")
    a = _counts(dtype=np.int64 if request.param == "int.h5ad" else np.float32)
    if request.param == "csc.h5ad":
        a.X = a.X.tocsc()
    p = d / f"x.{request.param}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a.write_zarr(p) if request.param == "zarr" else a.write_h5ad(p)
    return p


def _read(p):
    return ad.read_zarr(p) if str(p).endswith(".zarr") else ad.read_h5ad(p)


def _same(x, y):
    x = x.toarray() if sp.issparse(x) else np.asarray(x)
    y = y.toarray() if sp.issparse(y) else np.asarray(y)
    assert x.dtype == y.dtype
    np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("target_sum", [1e4, None])
@pytest.mark.parametrize("base", [None, 2])
def test_normalize_log1p_equal_in_memory_scanpy_bit_for_bit(path, target_sum, base):
    mem, s = _read(path), AnnDataShadow(path, array_backend="dask")
    assert isinstance(s.X, ChainArray)
    for a in (mem, s):
        sc.pp.normalize_total(a, target_sum=target_sum)
        sc.pp.log1p(a, base=base)
    assert [step[0] for step in s.X._chain_steps][:1] == (["rows"] if "int" not in path.name else ["astype"])
    got = s.X.compute()
    assert sp.issparse(got) and got.format == "csr"
    _same(got, mem.X)


def test_hvg_on_the_chain_equals_in_memory(path):
    mem, s = _read(path), AnnDataShadow(path, array_backend="dask")
    for a in (mem, s):
        sc.pp.normalize_total(a, target_sum=1e4)
        sc.pp.log1p(a)
        sc.pp.highly_variable_genes(a, n_top_genes=10)
    for col in ("means", "dispersions", "dispersions_norm"):
        np.testing.assert_allclose(np.asarray(s.var[col], dtype=float), np.asarray(mem.var[col], dtype=float),
                                   rtol=1e-5, atol=1e-5, equal_nan=True)  # fmt: skip
    # genes tied with the cut (seurat's bins of two genes give +-0.707 exactly) may go either way, as in scanpy
    norm, hv = np.asarray(mem.var["dispersions_norm"]), np.asarray(mem.var["highly_variable"])
    cut = np.nanmin(norm[hv])
    clear = ~np.isclose(norm, cut)
    np.testing.assert_array_equal(np.asarray(s.var["highly_variable"])[clear], hv[clear])


def test_read_block_is_never_written_and_indices_are_shared(path):
    """The raw X and its chain in one compute share the read task: the raw values must come out unchanged."""
    s = AnnDataShadow(path, array_backend="dask")
    raw = s.X
    sc.pp.normalize_total(s, target_sum=1e4)
    sc.pp.log1p(s)
    chained = np.expm1(s.X)
    r, c = dask.compute(raw, chained, scheduler="sync")
    _same(r, _read(path).X.tocsr())
    assert not np.array_equal(r.data, c.data)

    block = raw.blocks[0].compute()
    before = block.data.copy()
    out = _Apply(chained._chain_steps)(block, *[p.blocks[0].compute() for p in chained._chain_params])
    np.testing.assert_array_equal(block.data, before)
    assert np.shares_memory(out.indices, block.indices) and np.shares_memory(out.indptr, block.indptr)


def test_chain_survives_copy_pickles_and_writes(path, tmp_path):
    s = AnnDataShadow(path, array_backend="dask")
    sc.pp.normalize_total(s, target_sum=1e4)
    sc.pp.log1p(s)
    x = s.X
    assert isinstance(x.copy(), ChainArray) and x.copy()._chain_steps == x._chain_steps
    # scanpy's graph holds local functions: dask.distributed ships it with cloudpickle
    _same(cloudpickle.loads(cloudpickle.dumps(x)).compute(scheduler="sync"), x.compute())
    out = tmp_path / "out.h5ad"
    s.write_h5ad(out)
    mem = _read(path)
    sc.pp.normalize_total(mem, target_sum=1e4)
    sc.pp.log1p(mem)
    _same(ad.read_h5ad(out).X, mem.X)


_STEPS = st.sampled_from(["log1p", "expm1", "mul", "div", "f64", "rows", "rows_mul", "rows_f64", "rows_by_zero"])


def _apply(x, step, factors):
    """One step as scanpy/scipy do it: on the in-memory CSR matrix (the oracle) or on the shadow's dask X."""
    import operator

    from scanpy._utils import axis_mul_or_truediv

    if step in ("log1p", "expm1"):
        return getattr(np, step)(x)
    if step == "mul":
        return x * 0.5
    if step == "div":
        return x / np.float64(3.0)
    if step == "f64":
        return x.astype(np.float64)
    op = operator.mul if step == "rows_mul" else operator.truediv
    # scanpy's default lets a zero factor divide (inf, nan): the chain must not raise where numpy does not
    return axis_mul_or_truediv(x, factors, axis=0, op=op, allow_divide_by_zero=step == "rows_by_zero")


@given(steps=st.lists(_STEPS, min_size=1, max_size=5), seed=st.integers(0, 2**16))
def test_any_sequence_of_steps_equals_in_memory(tmp_path_factory, steps, seed):
    """Differential: the same operations on the chain and on the in-memory CSR matrix, bit for bit."""
    d = tmp_path_factory.getbasetemp() / "chain_seq.h5ad"
    if not d.exists():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _counts(n=90, g=30).write_h5ad(d)
    rng = np.random.default_rng(seed)
    x, mem = AnnDataShadow(d, array_backend="dask").X, ad.read_h5ad(d).X
    for step in steps:
        factors = rng.random(x.shape[0]).astype(np.float64 if step == "rows_f64" else np.float32)
        factors[rng.integers(0, x.shape[0])] = 0
        with np.errstate(all="ignore"):
            x, mem = _apply(x, step, factors), _apply(mem, step, factors)
    assert isinstance(x, ChainArray) and x._chain_steps
    with np.errstate(all="ignore"):
        got = x.compute(scheduler="sync")
    assert x.dtype == got.dtype
    _same(got, mem)
