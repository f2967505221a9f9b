"""One public API: one name for the source and the layer arguments, paths returned by every writer of a file,
both shadows' ``write`` alike, no private constructor arguments, and the previous release's names still accepted
(with a ``FutureWarning``) for one release."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from oracle import assert_adata_equal, read_oracle, write_adata

import shadows
from shadows import AnnDataShadow, MuDataShadow


@pytest.fixture
def path(tmp_path):
    rng = np.random.default_rng(0)
    x = sp.random(40, 12, density=0.3, format="csr", dtype=np.float32, random_state=0)
    a = ad.AnnData(
        x,
        obs=pd.DataFrame({"g": pd.Categorical(rng.choice(["a", "b"], 40))}, index=[f"c{i}" for i in range(40)]),
        var=pd.DataFrame(index=[f"g{i}" for i in range(12)]),
        layers={"counts": x.copy(), "dense": x.toarray()},
    )
    return Path(write_adata(a, tmp_path / "a.h5ad"))


def test_modules_are_not_hidden_by_functions():
    # the functions are shadows.convert/stats/repack; their modules live in shadows.ops and stay importable
    for name in ("convert", "stats", "repack", "pp"):
        module = importlib.import_module(f"shadows.ops.{name}")
        assert inspect.ismodule(module)
    assert inspect.ismodule(importlib.import_module("shadows.pp"))
    assert callable(shadows.convert) and callable(shadows.stats) and callable(shadows.repack)


def test_one_name_for_the_source_and_the_layer():
    funcs = [shadows.convert, shadows.stats, shadows.pp.normalize_total, shadows.pp.log1p, shadows.repack]
    for f in funcs:
        assert next(iter(inspect.signature(f).parameters)) == "source", f.__name__
    for f in (shadows.convert, shadows.stats, shadows.pp.normalize_total, shadows.pp.log1p, AnnDataShadow.chunked_X):
        p = inspect.signature(f).parameters["layer"]
        assert p.default is None, f.__name__


def test_constructors_show_no_private_arguments():
    for cls in (AnnDataShadow, MuDataShadow):
        names = list(inspect.signature(cls.__init__).parameters)
        assert not [n for n in names if n.startswith("_")], (cls.__name__, names)


def test_writers_of_files_return_their_paths(path, tmp_path):
    s = AnnDataShadow(path)
    assert s.write_h5ad(tmp_path / "o.h5ad") == tmp_path / "o.h5ad"
    assert s.write_zarr(tmp_path / "o.zarr") == tmp_path / "o.zarr"
    assert s.write(tmp_path / "w.h5ad") == tmp_path / "w.h5ad"
    assert s.write_csvs(tmp_path / "csv") == tmp_path / "csv"
    assert shadows.convert(path, tmp_path / "c.h5ad") == tmp_path / "c.h5ad"
    assert shadows.pp.log1p(path, tmp_path / "l.h5ad") == tmp_path / "l.h5ad"
    s.close()
    assert shadows.repack(tmp_path / "o.h5ad") == tmp_path / "o.h5ad"
    w = AnnDataShadow(path, mode="r+")
    assert w.write() is w, "write-back returns the shadow (it chains)"
    w.close()


def test_mudata_write_returns_as_anndata_does(tmp_path):
    md = pytest.importorskip("mudata")
    a = ad.AnnData(np.ones((4, 3), dtype=np.float32))
    md.MuData({"rna": a}).write_h5mu(tmp_path / "m.h5mu")
    m = MuDataShadow(tmp_path / "m.h5mu", mode="r+")
    assert m.write() is m
    assert m.write(tmp_path / "n.h5mu") == tmp_path / "n.h5mu"
    assert m.write_zarr(tmp_path / "n.zarr") == tmp_path / "n.zarr"
    m.close()


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (lambda p, o: shadows.convert(src=p, dst=o), lambda p, o: shadows.convert(source=p, dst=o)),
        (lambda p, o: shadows.pp.log1p(src=p, dst=o), lambda p, o: shadows.pp.log1p(source=p, dst=o)),
        (
            lambda p, o: shadows.pp.normalize_total(src=p, dst=o, target_sum=10.0),
            lambda p, o: shadows.pp.normalize_total(source=p, dst=o, target_sum=10.0),
        ),
    ],
    ids=["convert", "log1p", "normalize_total"],
)
def test_renamed_arguments_still_work_with_a_warning(path, tmp_path, old, new):
    with pytest.warns(FutureWarning, match="deprecated"):
        old(path, tmp_path / "old.h5ad")
    new(path, tmp_path / "new.h5ad")
    assert_adata_equal(read_oracle(tmp_path / "old.h5ad"), read_oracle(tmp_path / "new.h5ad"))


def test_stats_data_argument_still_works(path):
    with pytest.warns(FutureWarning, match=r"stats\(data=\.\.\.\)"):
        old = shadows.stats(data=path)
    new = shadows.stats(source=path)
    for k in new:
        np.testing.assert_array_equal(old[k], new[k])
    with pytest.raises(TypeError, match="both 'data' and 'source'"):
        shadows.stats(data=path, source=path)


def test_convert_layers_flag_becomes_layer(path, tmp_path):
    with pytest.warns(FutureWarning, match="layers"):
        shadows.convert(path, tmp_path / "x_only_old.h5ad", "csc", layers=False)
    shadows.convert(path, tmp_path / "x_only.h5ad", "csc", layer="X")
    shadows.convert(path, tmp_path / "one.h5ad", "csc", layer="counts")
    shadows.convert(path, tmp_path / "all.h5ad", "csc")
    import h5py

    def formats(p):
        with h5py.File(p, "r") as f:
            return {k: f[k].attrs.get("encoding-type") for k in ("X", "layers/counts", "layers/dense")}

    assert formats(tmp_path / "x_only_old.h5ad") == formats(tmp_path / "x_only.h5ad")
    assert formats(tmp_path / "x_only.h5ad") == {
        "X": "csc_matrix",
        "layers/counts": "csr_matrix",
        "layers/dense": "array",
    }
    assert formats(tmp_path / "one.h5ad") == {"X": "csr_matrix", "layers/counts": "csc_matrix", "layers/dense": "array"}
    assert formats(tmp_path / "all.h5ad") == {
        "X": "csc_matrix",
        "layers/counts": "csc_matrix",
        "layers/dense": "csc_matrix",
    }
    with pytest.raises(KeyError, match="'nope'"):
        shadows.convert(path, tmp_path / "bad.h5ad", "csc", layer="nope")
    got, want = read_oracle(tmp_path / "all.h5ad"), read_oracle(path)
    for k in ("counts", "dense"):
        np.testing.assert_array_equal(sp.csr_matrix(got.layers[k]).toarray(), sp.csr_matrix(want.layers[k]).toarray())
    np.testing.assert_array_equal(got.X.toarray(), want.X.toarray())


def test_collection_writers_return_their_paths(path, tmp_path):
    coll = shadows.concat([path, path], index_unique="-")
    assert coll.write_h5ad(tmp_path / "c.h5ad") == tmp_path / "c.h5ad"
    assert coll.write_zarr(tmp_path / "c.zarr") == tmp_path / "c.zarr"
    assert coll.write(tmp_path / "w.h5ad") == tmp_path / "w.h5ad"
