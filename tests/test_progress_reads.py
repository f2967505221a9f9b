"""Progress bars on long reads: a whole-matrix read and a minor-axis scan show a tqdm bar when
``shadows.settings`` asks for one, read the same values in blocks, and stay silent otherwise."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import shadows
from shadows import AnnDataShadow


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    rng = np.random.default_rng(0)
    X = sp.random(3000, 400, density=0.05, format="csr", dtype=np.float32, random_state=rng)
    obs = pd.DataFrame(index=[f"c{i}" for i in range(3000)])
    var = pd.DataFrame(index=[f"g{j}" for j in range(400)])
    d = tmp_path_factory.mktemp("progress")
    out = {"expected": X}
    for name, x, suffix in (("csr", X, "h5ad"), ("dense", X.toarray(), "h5ad"), ("zarr", X, "zarr")):
        a = ad.AnnData(X=x, obs=obs, var=var)
        path = d / f"{name}.{suffix}"
        a.write_zarr(path) if suffix == "zarr" else a.write_h5ad(path)
        out[name] = path
    return out


def _dense(x) -> np.ndarray:
    return x.toarray() if sp.issparse(x) else np.asarray(x)


@pytest.mark.parametrize("kind", ["csr", "dense", "zarr"])
def test_whole_matrix_read_shows_a_bar(files, kind, capsys):
    with shadows.settings.override(progress=True, progress_threshold=0):
        x = AnnDataShadow(files[kind]).X
    err = capsys.readouterr().err
    assert "reading" in err and "X" in err, f"no progress bar on stderr: {err!r}"
    np.testing.assert_array_equal(_dense(x), files["expected"].toarray())


@pytest.mark.parametrize("kind", ["csr", "zarr"])
def test_minor_axis_scan_shows_a_bar(files, kind, capsys):
    with shadows.settings.override(progress=True, progress_threshold=0, memory_budget=2**16):
        v = AnnDataShadow(files[kind]).obs_vector("g7")
    err = capsys.readouterr().err
    assert "scanning" in err, f"no progress bar on stderr: {err!r}"
    np.testing.assert_array_equal(v, files["expected"][:, 7].toarray().ravel())


def test_silent_unless_asked(files, capsys):
    with shadows.settings.override(progress=False, progress_threshold=0):
        reads = [AnnDataShadow(files["csr"]).X, AnnDataShadow(files["csr"]).obs_vector("g7")]
    # the default: a bar only in an interactive session, and pytest's captured stderr is not one
    reads.append(AnnDataShadow(files["dense"]).X)
    assert capsys.readouterr().err == ""
    assert reads[0].shape == reads[2].shape == (3000, 400)
