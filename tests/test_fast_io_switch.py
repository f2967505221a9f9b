"""The fast I/O paths behind one switch: ``shadows.settings.fast_io`` (and ``SHADOWS_FAST_IO`` at import).

Each fast path is watched where it does its work: the module attributes it goes through are wrapped to count the
calls (h5py, zarr and anndata run untouched), while real reads, statistics and conversions of real files (written
by anndata in tmp_path) run twice, with fast I/O on and off.  Off, no fast path is entered; on, the one that
serves the operation is (so that the count can tell); the results are equal either way, and equal anndata's.
A platform without ``os.preadv`` (then without ``os.pread`` and ``os.pwrite`` too, as on Windows) is simulated by
removing those functions from ``os``.
"""

from __future__ import annotations

import collections
import functools
import importlib
import os
import subprocess
import sys
import threading
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from oracle import assert_adata_equal, assert_element_equal, read_oracle, write_adata
from stream_data import counts

import shadows
from shadows import AnnDataShadow
from shadows.io.fast import h5copy as rawcopy
from shadows.io.fast import pread as rawread
from shadows.io.fast import pwrite as rawwrite
from shadows.io.fast import zarr_chunks as zarrchunks


@pytest.fixture(autouse=True)
def _raw_rows_of_small_arrays(monkeypatch):
    # the files here are small: let raw row reads serve them (production serves from RAW_ROWS_MIN_BYTES on), so
    # that the switch is seen to turn that path off too
    monkeypatch.setattr(rawread, "RAW_ROWS_MIN_BYTES", 0)


stats_module = importlib.import_module("shadows.ops.stats")

# ~1 million stored values (4 MB per array): anndata stores them in 128 chunks, and a scan earns back looking
# up where 128 chunks lie (rawread.worth_finding) from about 2 MB on
N_OBS, N_VARS, DENSITY = 4000, 500, 0.6
GENES = ["gene7", "gene250", "gene3", "gene499"]
ROWS = slice(300, 3700)
GENE_BLOCK = slice(20, 480)


# --- the spy ------------------------------------------------------------------------------------------------------------
class Spy(collections.Counter):
    """Calls entered, per fast path, in any thread."""

    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()

    def hit(self, key: str) -> None:
        with self.lock:
            self[key] += 1

    def reset(self) -> None:
        with self.lock:
            self.clear()


@pytest.fixture
def spy(monkeypatch) -> Spy:
    """Counts entries into the function each fast path does its work in (the HDF5/zarr libraries untouched)."""
    seen = Spy()

    def count(owner: object, name: str, key: str) -> None:
        real = getattr(owner, name)

        @functools.wraps(real)
        def counted(*args, **kwargs):
            seen.hit(key)
            return real(*args, **kwargs)

        monkeypatch.setattr(owner, name, counted)

    count(rawread, "read_into", "rawread")  # every pread of an HDF5 dataset (read_range, RangeReader, read_rows)
    count(rawread, "_read_pieces", "rawread")  # and those of read_together (rows: data and indices at once)
    count(stats_module, "mapped_view", "rawread")  # statistics through memory maps of HDF5 datasets
    count(zarrchunks.ChunkDecoder, "decode_chunk", "zarrchunks")
    count(rawwrite.RawWriter, "write", "rawwrite")
    count(rawwrite, "_fallocate", "fallocate")  # looked up by preallocate (new datasets, scratch files)
    count(rawcopy, "copy_files", "zarrfiles")

    return seen


# --- files --------------------------------------------------------------------------------------------------------------
def _adata(kind: str) -> ad.AnnData:
    x = counts(N_OBS, N_VARS, seed=5, density=DENSITY)
    m = {"csr": sp.csr_matrix, "csc": sp.csc_matrix, "dense": np.asarray}[kind](x)
    rng = np.random.default_rng(5)
    obs = pd.DataFrame(
        {"donor": pd.Categorical(rng.choice(["d1", "d2", "d3"], N_OBS)), "score": rng.normal(size=N_OBS)},
        index=[f"cell{i}" for i in range(N_OBS)],
    )
    var = pd.DataFrame({"symbol": [f"S{i}" for i in range(N_VARS)]}, index=[f"gene{i}" for i in range(N_VARS)])
    a = ad.AnnData(X=m, obs=obs, var=var)
    a.layers["twice"] = sp.csr_matrix(x * 2)
    a.obsm["X_pca"] = rng.normal(size=(N_OBS, 5)).astype(np.float32)
    a.uns["note"] = "fast io"
    return a


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    """``{kind: path}``: CSR, CSC and dense ``.h5ad``; CSR and CSC zarr v2 and v3 stores."""
    d = tmp_path_factory.mktemp("fastio")
    out = {k: write_adata(_adata(k), d / f"{k}.h5ad") for k in ("csr", "csc", "dense")}
    for zf in (2, 3):
        for k in ("csr", "csc"):
            out[f"{k}.zarr{zf}"] = write_adata(_adata(k), d / f"{k}.v{zf}.zarr", zf)
    # the zarr format anndata writes (a conversion's output): elements are copied as files into the same format only
    default, other = (2, 3) if int(getattr(ad.settings, "zarr_write_format", 2)) == 2 else (3, 2)
    for k in ("csr", "csc"):
        out[f"{k}.zarr-same"], out[f"{k}.zarr-other"] = out[f"{k}.zarr{default}"], out[f"{k}.zarr{other}"]
    return out


# --- operations ---------------------------------------------------------------------------------------------------------
def _genes(path: str):
    with AnnDataShadow(path) as s:
        return s[:, GENES].X


def _rows(path: str):
    with AnnDataShadow(path) as s:
        return s[ROWS].X


def _gene_block(path: str):  # a run of genes: the major axis of CSC
    with AnnDataShadow(path) as s:
        return s[:, GENE_BLOCK].X


def _whole(path: str):
    with AnnDataShadow(path) as s:
        return s.X


def _layer_genes(path: str):
    with AnnDataShadow(path) as s:
        return s[:, GENES].layers["twice"]


def _stats(axis: int):
    def run(path: str):
        return shadows.stats(path, axis=axis)

    return run


def _oracle(op: str, path: str):
    a = read_oracle(path)
    return {
        "genes": lambda: a[:, GENES].X,
        "rows": lambda: a[ROWS].X,
        "gene_block": lambda: a[:, GENE_BLOCK].X,
        "whole": lambda: a.X,
        "layer_genes": lambda: a[:, GENES].layers["twice"],
    }[op]()


READS = {"genes": _genes, "rows": _rows, "gene_block": _gene_block, "whole": _whole, "layer_genes": _layer_genes}

# (operation, file, fast paths that must serve it with fast I/O on)
READ_CASES = [
    ("genes", "csr", {"rawread"}),  # a scan of the minor axis
    ("rows", "csr", {"rawread"}),
    ("whole", "csr", {"rawread"}),
    ("layer_genes", "csr", {"rawread"}),
    ("genes", "csc", set()),  # four genes of a CSC matrix: reads too small to look up a layout for
    ("gene_block", "csc", {"rawread"}),
    ("rows", "csc", {"rawread"}),
    ("whole", "csc", {"rawread"}),
    ("genes", "dense", set()),  # columns of a dense array: h5py's selection
    ("rows", "dense", {"rawread"}),  # rows of a contiguous array: one range of bytes
    ("whole", "dense", {"rawread"}),
    *[(op, f"{k}.zarr{zf}", {"zarrchunks"}) for zf in (2, 3) for k in ("csr", "csc") for op in ("genes", "rows")],
    ("whole", "csr.zarr3", {"zarrchunks"}),
]


def _ids(cases) -> list[str]:
    return [f"{c[0]}-{c[1]}" for c in cases]


def _same(on, off, what: str) -> None:
    """``on`` and ``off`` are the same result: type, format, dtype, shape and values."""
    assert type(on) is type(off), what
    if sp.issparse(on):
        assert on.format == off.format and on.dtype == off.dtype and on.shape == off.shape, what
        assert (on != off).nnz == 0, what
    elif isinstance(on, pd.DataFrame):
        pd.testing.assert_frame_equal(on, off, check_exact=True, obj=what)
    else:
        assert on.dtype == off.dtype, what
        np.testing.assert_array_equal(on, off, err_msg=what)


def _on_then_off(spy: Spy, expected: set[str], run, what: str):
    """Run ``run()`` with fast I/O on, then off: the expected fast paths serve the first, none the second."""
    spy.reset()
    with shadows.settings.override(fast_io=True):
        on = run()
    missing = {k for k in expected if spy[k] == 0}
    assert not missing, f"{what}: with fast_io on, {sorted(missing)} never entered (counts: {dict(spy)})"
    spy.reset()
    with shadows.settings.override(fast_io=False):
        off = run()
    assert sum(spy.values()) == 0, f"{what}: with fast_io off, fast paths were entered: {dict(spy)}"
    return on, off


@pytest.mark.parametrize(("op", "kind", "expected"), READ_CASES, ids=_ids(READ_CASES))
def test_reads_bypass_every_fast_path_when_off_and_stay_equal(files, spy, op, kind, expected):
    path = files[kind]
    on, off = _on_then_off(spy, expected, lambda: READS[op](path), f"{op} of {kind}")
    _same(on, off, f"{op} of {kind}: fast_io on vs off")
    assert_element_equal(off, _oracle(op, path), f"{op} of {kind} (fast_io off) vs anndata")


STATS_CASES = [
    (0, "csr", {"rawread"}),  # per gene: memory maps of data and indices
    (1, "csr", {"rawread"}),  # per cell: blocks of rows
    (0, "csc", {"rawread"}),
    (0, "dense", {"rawread"}),
    (0, "csr.zarr2", {"zarrchunks"}),
    (1, "csc.zarr3", {"zarrchunks"}),
]


@pytest.mark.parametrize(("axis", "kind", "expected"), STATS_CASES, ids=[f"axis{a}-{k}" for a, k, _ in STATS_CASES])
def test_stats_bypass_every_fast_path_when_off_and_stay_equal(files, spy, axis, kind, expected):
    on, off = _on_then_off(spy, expected, lambda: _stats(axis)(files[kind]), f"stats(axis={axis}) of {kind}")
    assert set(on) == set(off)
    for key in on:
        _same(np.asarray(on[key]), np.asarray(off[key]), f"stats(axis={axis})[{key!r}] of {kind}")
    x = counts(N_OBS, N_VARS, seed=5, density=DENSITY).astype(np.float64)
    np.testing.assert_allclose(np.asarray(off["sum"]), x.sum(axis=axis), rtol=1e-6)


CONVERT_CASES = [
    # CSR -> CSC through a scratch file (a small budget): raw reads, raw writes of the new arrays, space reserved
    # for both, everything else copied by h5py (Group.copy)
    ("csr", "csc", "out.h5ad", 2**21, {"rawread", "rawwrite", "fallocate"}),
    ("csc", "csr", "out.h5ad", None, {"rawread", "rawwrite"}),
    ("dense", "csr", "out.h5ad", None, {"rawread"}),  # nnz unknown ahead: resizable arrays, h5py's
    ("csr.zarr-same", "csc", "out.zarr", None, {"zarrchunks", "zarrfiles"}),
    ("csc.zarr-same", "csr", "out.zarr", 2**21, {"zarrchunks", "zarrfiles"}),
    ("csr.zarr-other", "csc", "out.zarr", None, {"zarrchunks"}),  # another zarr format: re-encoded
]


@pytest.mark.parametrize(
    ("kind", "fmt", "out", "budget", "expected"), CONVERT_CASES, ids=[f"{c[0]}-to-{c[1]}" for c in CONVERT_CASES]
)
def test_conversions_bypass_every_fast_path_when_off_and_stay_equal(
    files, spy, tmp_path, kind, fmt, out, budget, expected
):
    src = files[kind]
    n = iter(range(2))

    def run() -> Path:
        dst = tmp_path / f"{next(n)}.{out}"
        with shadows.settings.override(memory_budget=budget or shadows.settings.memory_budget):
            shadows.convert(src, dst, matrix_format=fmt)
        return dst

    on, off = _on_then_off(spy, expected, run, f"convert {kind} to {fmt}")
    got_on, got_off = read_oracle(on), read_oracle(off)
    assert got_off.X.format == fmt
    assert_adata_equal(got_on, got_off, f"convert {kind} to {fmt}: fast_io on vs off", vectors=False, to_memory=False)
    ref = read_oracle(src)
    np.testing.assert_array_equal(got_off.X.toarray(), np.asarray(ref.X.toarray() if sp.issparse(ref.X) else ref.X))
    ref.X = got_off.X
    for k in ref.layers:
        ref.layers[k] = got_off.layers[k]
    assert_adata_equal(got_off, ref, f"convert {kind} to {fmt} (fast_io off) vs the source", vectors=False)


# --- the switch itself --------------------------------------------------------------------------------------------------
def test_each_fast_path_says_it_cannot_serve_when_off(files):
    """The functions that decide (layout, available, create, decoder, the copier) refuse with fast I/O off."""
    import h5py
    import zarr

    with h5py.File(files["csr"], "r") as f, shadows.settings.override(fast_io=True):
        assert rawread.layout(f["X/indices"]) is not None
        with shadows.settings.override(fast_io=False):
            assert not rawread.available() and not rawwrite.available()
            assert rawread.layout(f["X/indices"]) is None  # even a layout known already
            assert rawread.mappable(f["X/data"], f["X/indices"]) is None
    arr = zarr.open_group(files["csr.zarr3"], mode="r")["X/indices"]
    with shadows.settings.override(fast_io=True):
        assert zarrchunks.decoder(arr) is not None
    with shadows.settings.override(fast_io=False):
        assert zarrchunks.decoder(arr) is None


def test_the_setting_is_a_bool():
    with pytest.raises(ValueError, match="fast_io must be True or False"):
        shadows.settings.fast_io = "no"
    assert shadows.settings.fast_io in (True, False)


@pytest.mark.parametrize(("value", "want"), [("0", "False"), ("off", "False"), ("1", "True"), (None, "True")])
def test_environment_variable_read_at_import(files, value, want):
    """``SHADOWS_FAST_IO=0`` at import turns fast I/O off: a gene scan in that process enters no raw read."""
    script = (
        "import shadows, shadows.io.fast.pread as r\n"
        "n = [0]\n"
        "real = r.read_into\n"
        "r.read_into = lambda *a, **k: (n.__setitem__(0, n[0] + 1), real(*a, **k))[1]\n"
        f"with shadows.AnnDataShadow({files['csr']!r}) as s:\n"
        f"    x = s[:, {GENES!r}].X\n"
        "print(shadows.settings.fast_io, n[0] > 0, x.nnz)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "SHADOWS_FAST_IO"}
    if value is not None:
        env["SHADOWS_FAST_IO"] = value
    p = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    fast, entered, nnz = p.stdout.split()
    assert (fast, entered) == (want, want)
    assert int(nnz) == read_oracle(files["csr"])[:, GENES].X.nnz


def test_a_bad_environment_value_names_the_variable():
    env = {**os.environ, "SHADOWS_FAST_IO": "maybe"}
    p = subprocess.run([sys.executable, "-c", "import shadows"], env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode != 0
    assert "SHADOWS_FAST_IO='maybe'" in p.stderr


# --- platforms without positional reads and writes ----------------------------------------------------------------------
@pytest.mark.parametrize("missing", [("preadv",), ("preadv", "pread", "pwrite")], ids=["no-preadv", "windows-like"])
def test_reads_and_conversions_without_preadv(files, spy, tmp_path, monkeypatch, missing):
    """Without ``os.preadv`` every HDF5 read goes through h5py (no AttributeError); the scratch file of a
    conversion falls back on ``os.pread`` or a seek and a read (and a write where ``os.pwrite`` is missing too)."""
    for name in missing:
        if hasattr(os, name):
            monkeypatch.delattr(os, name)
    with shadows.settings.override(fast_io=True):
        for op, kind, _ in READ_CASES:
            if kind in ("csr", "csc", "dense"):
                assert_element_equal(READS[op](files[kind]), _oracle(op, files[kind]), f"{op} of {kind}, {missing}")
        x = counts(N_OBS, N_VARS, seed=5, density=DENSITY)
        np.testing.assert_allclose(np.asarray(shadows.stats(files["csr"], axis=0)["sum"]), x.sum(axis=0), rtol=1e-6)
        with shadows.settings.override(memory_budget=2**21):  # the scratch file on disk
            shadows.convert(files["csr"], tmp_path / "csc.h5ad", "csc")
    assert spy["rawread"] == 0
    if "pwrite" in missing:
        assert spy["rawwrite"] == 0
    back = read_oracle(tmp_path / "csc.h5ad")
    assert back.X.format == "csc"
    np.testing.assert_array_equal(back.X.toarray(), x)


def test_scratch_file_reads_and_writes_without_positional_io(tmp_path, monkeypatch):
    """The fallbacks of pread_into/pwrite_from move the right bytes, from several threads at once."""
    for name in ("preadv", "pread", "pwrite"):
        if hasattr(os, name):
            monkeypatch.delattr(os, name)
    path = tmp_path / "scratch"
    path.write_bytes(bytes(8 * 4096))
    fd = os.open(path, os.O_RDWR)
    try:
        values = [np.full(4096, i, dtype=np.int16) for i in range(4)]

        def write(i: int) -> None:
            rawwrite.pwrite_from(fd, memoryview(values[i]).cast("B"), i * 8192)

        threads = [threading.Thread(target=write, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        out = np.empty(4 * 4096, dtype=np.int16)
        rawread.pread_into(fd, memoryview(out).cast("B"), 0)
        np.testing.assert_array_equal(out, np.repeat(np.arange(4, dtype=np.int16), 4096))
        with pytest.raises(OSError, match="unexpected end of file"):
            rawread.pread_into(fd, memoryview(np.empty(10, dtype=np.uint8)), 8 * 4096 - 5)
    finally:
        os.close(fd)


def test_zarr_write_back_without_fcntl(tmp_path, monkeypatch):
    """A platform without ``fcntl`` (Windows) writes back into zarr under a lock file, and a second writer is
    refused while it is held."""
    import shadows.io.zarr_journal as zj
    from shadows import AnnDataShadow
    from shadows.io.storage import StorageError

    monkeypatch.setattr(zj, "fcntl", None)
    a = ad.AnnData(np.arange(12, dtype=np.float32).reshape(4, 3))
    a.write_zarr(tmp_path / "a.zarr")
    s = AnnDataShadow(tmp_path / "a.zarr", mode="r+")
    s.obsm["e"] = np.ones((4, 2))
    with zj.writer_lock(tmp_path / "a.zarr"):
        with pytest.raises(StorageError, match="lock file"):
            s.write()
    s.write()
    s.close()
    assert not list(tmp_path.glob("*.lock"))
    np.testing.assert_array_equal(ad.read_zarr(tmp_path / "a.zarr").obsm["e"], np.ones((4, 2)))
