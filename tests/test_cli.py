"""The ``shadows`` command, run as a subprocess (``python -m shadows``) on files written by anndata and mudata.

What a command writes is checked with anndata (the oracle); what ``info`` prints, against h5py/zarr's own view of
the file.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pytest
import scipy.sparse as sp
from oracle import assert_adata_equal, read_oracle
from stream_data import rich, write_source

from shadows.cli import main

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore", "SHADOWS_PROGRESS": "0"}
    return subprocess.run(
        [sys.executable, "-m", "shadows", *map(str, args)], capture_output=True, text=True, env=env, timeout=300
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("cli")
    a = rich(kind="csr", seed=7, light=True)
    out = {"h5ad": Path(write_source(a, d, "h5ad", None)), "zarr2": Path(write_source(a, d, "zarr", 2))}
    out["zarr3"] = Path(write_source(a, d, "zarr", 3))
    a.write_h5ad(d / "gzip.h5ad", compression="gzip", compression_opts=3)
    out["gzip"] = d / "gzip.h5ad"
    return out


# --- info -------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["h5ad", "gzip", "zarr2", "zarr3"])
def test_info_prints_repr_and_each_element(files, kind):
    path = files[kind]
    p = run("info", path)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("AnnData Shadow object with n_obs × n_vars = 40 × 15")
    rows = {line.split()[0]: line for line in p.stdout.splitlines()[1:] if line and not line.startswith(" ")}
    ref = ad.read_h5ad(path) if kind in ("h5ad", "gzip") else ad.read_zarr(path)
    for element in ("X", "layers/counts", "layers/dense", "obsm/X_pca", "obs", "obs/group", "raw/X"):
        assert element in rows, (element, p.stdout)
    x = rows["X"].split()
    assert x[1:4] == ["csr_matrix", str(ref.X.dtype), "40×15"], rows["X"]
    assert rows["obs/group"].split()[1] == "categorical"
    assert "40×4" in rows["obsm/X_pca"]
    if kind in ("h5ad", "gzip"):
        with h5py.File(path) as f:
            data = f["X/data"]
            assert str(data.chunks[0]) in rows["X"]
            assert (f"gzip({data.compression_opts})" in rows["X"]) == (kind == "gzip")
            assert ("contiguous" in rows["obsm/X_pca"]) == (f["obsm/X_pca"].chunks is None)
    else:
        import zarr

        arr = zarr.open_group(path, mode="r")["X/data"]
        assert repr(arr.compressors[0]) in rows["X"]


def test_info_of_a_mudata_file(tmp_path):
    md = pytest.importorskip("mudata")
    a = rich(kind="csr", seed=1, light=True)
    path = tmp_path / "m.h5mu"
    md.MuData({"rna": a, "prot": a[:, :4].copy()}).write(path)
    p = run("info", path)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("MuData Shadow object")
    assert any(line.startswith("mod/prot/X ") and "40×4" in line for line in p.stdout.splitlines()), p.stdout
    p = run("info", f"{path}/mod/rna")  # one modality by its path
    assert p.returncode == 0 and p.stdout.startswith("AnnData Shadow object with n_obs × n_vars = 40 × 15")


def test_info_in_process(files, capsys):
    assert main(["info", str(files["h5ad"])]) == 0
    assert "csr_matrix" in capsys.readouterr().out


def test_errors_are_one_line_and_exit_codes(tmp_path, files):
    p = run("info", tmp_path / "missing.h5ad")
    assert p.returncode == 1 and p.stdout == ""
    assert p.stderr.strip().splitlines() == [
        f"shadows info: error: FileNotFoundError: [Errno 2] No such file or zarr store: '{tmp_path / 'missing.h5ad'}'"
    ]
    p = run("repack", files["zarr3"])
    assert p.returncode == 1 and "not an HDF5 file" in p.stderr and "Traceback" not in p.stderr
    assert run("frobnicate").returncode == 2
    assert run("convert", files["h5ad"]).returncode == 2  # DST missing
    assert run("--version").stdout.startswith("shadows ")


# --- convert ----------------------------------------------------------------------------------------------------------
def test_convert_writes_what_anndata_reads(files, tmp_path):
    src = files["h5ad"]
    dst = tmp_path / "csc.h5ad"
    p = run("convert", src, dst, "--to", "csc", "--no-layers")
    assert p.returncode == 0, p.stderr
    got, want = ad.read_h5ad(dst), read_oracle(src)
    assert sp.issparse(got.X) and got.X.format == "csc"
    assert got.layers["counts"].format == "csr", "--no-layers leaves the layers as stored"
    np.testing.assert_array_equal(got.X.toarray(), want.X.toarray())
    want.X = sp.csc_matrix(want.X)
    assert_adata_equal(got, want, "converted", vectors=False, to_memory=False)
    before = dst.read_bytes()
    p = run("convert", src, dst)
    assert p.returncode == 1 and "--overwrite" in p.stderr and dst.read_bytes() == before
    assert run("convert", src, dst, "--overwrite", "--to", "dense").returncode == 0
    assert isinstance(ad.read_h5ad(dst).X, np.ndarray)


# --- add-column-index, repack -----------------------------------------------------------------------------------------
def test_add_column_index_and_drop(files, tmp_path):
    path = tmp_path / "x.h5ad"
    path.write_bytes(files["h5ad"].read_bytes())
    p = run("add-column-index", path, "--element", "X", "--element", "layers/counts")
    assert p.returncode == 0, p.stderr
    with h5py.File(path) as f:
        assert "shadows_column_index" in f["X"] and "shadows_column_index" in f["layers/counts"]
    assert_adata_equal(read_oracle(path), read_oracle(files["h5ad"]), "indexed", vectors=False, to_memory=False)
    assert "column index (csc)" in run("info", path).stdout
    assert run("add-column-index", path, "--drop").returncode == 0
    with h5py.File(path) as f:
        assert "shadows_column_index" not in f["X"]
    p = run("add-column-index", path, "--element", "layers/nope")
    assert p.returncode == 1 and "layers/nope" in p.stderr


def test_repack_gives_space_back(files, tmp_path):
    path = tmp_path / "r.h5ad"
    path.write_bytes(files["h5ad"].read_bytes())
    with h5py.File(path, "r+") as f:
        f["uns/big"] = np.random.default_rng(0).random(2**18)  # 2 MiB, then another element after it
        f["uns/after"] = np.ones(2**10)
    with h5py.File(path, "r+") as f:
        del f["uns/big"]  # HDF5 keeps the space in the middle of the file: it does not shrink
    grown = path.stat().st_size
    p = run("repack", path)
    assert p.returncode == 0, p.stderr
    assert path.stat().st_size < grown - 2**20 and "repacked" in p.stdout
    got, want = read_oracle(path), read_oracle(files["h5ad"])
    np.testing.assert_array_equal(got.uns.pop("after"), np.ones(2**10))
    assert_adata_equal(got, want, "repacked", vectors=False, to_memory=False)


def test_console_script_is_declared():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, func = scripts["shadows"].split(":")
    assert module == "shadows.cli" and func == "main"
    p = subprocess.run(
        [sys.executable, "-c", f"import sys; from {module} import {func}; sys.exit({func}(['--help']))"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert p.returncode == 0 and "info" in p.stdout and "add-column-index" in p.stdout
