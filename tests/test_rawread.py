"""Raw (pread) reads of uncompressed HDF5 datasets (``shadows.io.fast.pread``) against h5py's reads of the same data.

Which datasets may be read raw is decided from HDF5's own description of the layout; everything else must be left to
h5py (``layout`` returns ``None``).  The files are written by h5py (and one by mudata, with a 512-byte user block).
"""

from __future__ import annotations

import os
import time

import h5py
import numpy as np
import pytest

from shadows.io.fast import pread as rawread


def _write(path, **datasets):
    with h5py.File(path, "w") as f:
        for name, (data, kw) in datasets.items():
            f.create_dataset(name, data=data, **kw)
    return path


@pytest.fixture
def h5(tmp_path):
    rng = np.random.default_rng(0)
    return _write(
        tmp_path / "a.h5",
        contiguous=(rng.random(3_000_000).astype(np.float32), {}),
        matrix=(rng.integers(0, 100, (700, 300)).astype(np.int64), {}),
        chunked=(rng.integers(0, 2**31, 2_500_001).astype(np.int32), {"chunks": (24_413,)}),
        compressed=(np.arange(10_000, dtype=np.float64), {"compression": "gzip", "chunks": (1000,)}),
        big_endian=(np.arange(1000, dtype=">f4"), {}),
        strings=(np.array([b"a", b"bc"]), {}),
    )


@pytest.mark.parametrize("name", ["contiguous", "chunked"])
def test_ranges_equal_h5py(h5, name):
    rng = np.random.default_rng(1)
    with h5py.File(h5, "r") as f:
        ds = f[name]
        assert rawread.layout(ds) is not None
        n = ds.shape[0]
        want = ds[...]
        cases = [(0, n), (0, 1), (n - 1, n), (24_412, 24_414), (5, 5)]
        cases += [tuple(sorted(rng.integers(0, n + 1, 2))) for _ in range(20)]
        for a, b in cases:  # small ones inline, large ones (> 4 MB) through the threads
            np.testing.assert_array_equal(rawread.read_range(ds, a, b), want[a:b], err_msg=f"{name}[{a}:{b}]")
        buf = np.empty(100_000, dtype=ds.dtype)
        got = rawread.read_range(ds, 10, 50_010, buf)
        assert np.shares_memory(got, buf)
        np.testing.assert_array_equal(got, want[10:50_010])


@pytest.mark.parametrize("name", ["contiguous", "chunked", "compressed"])
def test_range_reader_equals_h5py_and_closes_its_file(h5, name):
    """A RangeReader reads as read_range does, through one descriptor it closes (h5py reads what has no layout)."""
    with h5py.File(h5, "r") as f:
        ds = f[name]
        want = ds[...]
        r = rawread.RangeReader(ds)
        assert (r.fd is None) == (name == "compressed")
        n = ds.shape[0]
        buf = np.empty(n, dtype=ds.dtype)
        for a, b in [(0, n), (3, 7), (n - 5, n), (n // 3, n // 2), (4, 4)]:
            np.testing.assert_array_equal(r.read(a, b), want[a:b])
            got = r.read(a, b, buf)
            assert np.shares_memory(got, buf) or a == b
            np.testing.assert_array_equal(got, want[a:b])
        fd = r.fd
        r.close()
        if fd is not None:
            with pytest.raises(OSError):
                os.fstat(fd)
        np.testing.assert_array_equal(r.read(0, 10), want[:10])  # still readable, through a fresh descriptor


def test_read_together_equals_h5py(h5, monkeypatch):
    """Ranges of several datasets read by two threads at once (raw), or one by one (small, or left to h5py), give
    exactly h5py's values, each range in its own array."""
    monkeypatch.setattr(rawread, "_JOB_BYTES", 2**18)  # several jobs per range: the thread hand-out is exercised
    with h5py.File(h5, "r") as f:
        c, k, z = f["contiguous"], f["chunked"], f["compressed"]
        readers = {n: rawread.RangeReader(d) for n, d in (("c", c), ("k", k), ("z", z))}
        assert readers["c"].lay is not None and readers["k"].lay is not None and readers["z"].lay is None
        cases = [
            [("c", 5, 400_005), ("k", 24_000, 700_000)],  # large: threads, across chunk boundaries
            [("k", 0, 2_500_001), ("c", 2_999_000, 3_000_000), ("k", 10, 10)],  # whole, a tail, an empty range
            [("c", 0, 10), ("k", 3, 7)],  # small: read one after the other
            [("c", 100, 300_100), ("z", 17, 9_000), ("k", 1, 300_000)],  # one left to h5py
        ]
        for case in cases:
            got = rawread.read_together([(readers[n], lo, hi) for n, lo, hi in case])
            for (n, lo, hi), arr in zip(case, got, strict=True):
                want = {"c": c, "k": k, "z": z}[n][lo:hi]
                assert arr.dtype == want.dtype and np.array_equal(arr, want), (n, lo, hi)
        for r in readers.values():
            r.close()


def test_share_out_nested_in_a_reading_thread_finishes():
    """A job that itself shares out work (a large read inside a read of several arrays) runs its jobs in place when
    it runs on a reading thread: every reading thread waiting on a lane queued behind itself would hang forever."""
    import threading

    done = []

    def inner(job):
        done.append(job)

    def outer(job):
        rawread.share_out([(job, i) for i in range(4)], inner)

    t = threading.Thread(target=lambda: [rawread.share_out(list(range(6)), outer) for _ in range(20)], daemon=True)
    t.start()
    t.join(60)
    assert not t.is_alive(), "share_out deadlocked"
    assert len(done) == 20 * 6 * 4


def test_rows_of_a_matrix(h5, monkeypatch):
    with h5py.File(h5, "r") as f:
        ds = f["matrix"]
        assert rawread.read_rows(ds, 0, 700) is None, "below RAW_ROWS_MIN_BYTES h5py reads rows (it is as fast)"
        monkeypatch.setattr(rawread, "RAW_ROWS_MIN_BYTES", 0)
        np.testing.assert_array_equal(rawread.read_rows(ds, 0, 700), ds[...])
        np.testing.assert_array_equal(rawread.read_rows(ds, 13, 201), ds[13:201])
        assert rawread.read_rows(f["chunked"], 0, 10) is None  # rows of a chunked array: h5py's business


@pytest.mark.parametrize("name", ["compressed", "big_endian", "strings"])
def test_left_to_h5py(h5, name):
    with h5py.File(h5, "r") as f:
        assert rawread.layout(f[name]) is None
        if name != "strings":
            np.testing.assert_array_equal(rawread.read_range(f[name], 3, 900), f[name][3:900])


def test_writable_files_and_missing_chunks_are_left_to_h5py(h5, tmp_path):
    with h5py.File(h5, "r+") as f:  # a writer's bytes may still sit in HDF5's buffers
        assert rawread.layout(f["contiguous"]) is None
    p = tmp_path / "sparse_chunks.h5"
    with h5py.File(p, "w") as f:
        d = f.create_dataset("d", shape=(100_000,), dtype=np.float32, chunks=(1000,))
        d[5000:6000] = 1  # one chunk written, the others are fill values
    with h5py.File(p, "r") as f:
        assert rawread.layout(f["d"]) is None
        np.testing.assert_array_equal(rawread.read_range(f["d"], 4990, 6010), f["d"][4990:6010])


def test_a_rewritten_file_is_described_anew(tmp_path):
    p = tmp_path / "r.h5"
    _write(p, d=(np.arange(1000, dtype=np.float64), {}))
    with h5py.File(p, "r") as f:
        np.testing.assert_array_equal(rawread.read_range(f["d"], 0, 1000), np.arange(1000))
    time.sleep(0.01)
    _write(p, pad=(np.zeros(5000), {}), d=(np.arange(1000, dtype=np.float64) * 2, {}))  # moves d in the file
    os.utime(p)
    with h5py.File(p, "r") as f:
        np.testing.assert_array_equal(rawread.read_range(f["d"], 0, 1000), np.arange(1000) * 2)


def test_user_block_of_h5mu(tmp_path):
    md = pytest.importorskip("mudata")
    import anndata as ad
    import scipy.sparse as sp

    X = sp.random(500, 80, density=0.2, format="csr", dtype=np.float32, random_state=0)
    p = tmp_path / "m.h5mu"
    md.MuData({"rna": ad.AnnData(X=X)}).write_h5mu(p)
    with h5py.File(p, "r") as f:
        assert f.userblock_size == 512
        for name in ("data", "indices"):
            ds = f[f"mod/rna/X/{name}"]
            np.testing.assert_array_equal(rawread.read_range(ds, 0, ds.shape[0]), ds[...])
