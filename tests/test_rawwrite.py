"""Raw (pwrite) writes of new uncompressed HDF5 datasets (``shadows.io.fast.pwrite``) and the sinks that use them.

What is written behind HDF5's back must read back, through h5py and anndata, exactly as if h5py had written it; in
a file with a user block (``.h5mu``) too; and datasets that cannot be made for it fall back on h5py's writes.
"""

from __future__ import annotations

import os
import sys

import anndata as ad
import h5py
import numpy as np
import pytest
import scipy.sparse as sp

from shadows.io.fast import pwrite as rawwrite
from shadows.stream.sink import SparseSink


@pytest.mark.parametrize("userblock", [0, 512])
def test_raw_writes_read_back_through_h5py(tmp_path, userblock):
    path = tmp_path / "a.h5"
    rng = np.random.default_rng(0)
    want = rng.random(1_000_003).astype(np.float32)
    with h5py.File(path, "w", userblock_size=userblock) as f:
        f.create_dataset("before", data=np.arange(10))
        ds, w = rawwrite.create(f, "values", len(want), want.dtype)
        assert w is not None and ds.chunks is None and ds.compression is None
        for a, b in [(0, 7), (7, 500_000), (500_000, len(want))]:  # in pieces, as a sink appends
            w.write(a, want[a:b])
        with pytest.raises(IndexError, match="out of range"):
            w.write(len(want) - 1, want[:2])
        w.close()
        f.create_dataset("after", data=np.arange(5))  # HDF5 goes on using the file around the raw bytes
        f.attrs["x"] = 1
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f["values"][()], want)
        np.testing.assert_array_equal(f["before"][()], np.arange(10))
        np.testing.assert_array_equal(f["after"][()], np.arange(5))


def test_what_cannot_be_written_raw_goes_through_h5py(tmp_path):
    with h5py.File(tmp_path / "b.h5", "w") as f:
        for n, dt in [(0, np.float32), (10, ">f8"), (10, h5py.string_dtype())]:
            ds, w = rawwrite.create(f, f"d{len(f)}", n, dt)
            assert w is None and ds.shape == (n,)
    with h5py.File(tmp_path / "c.h5", "w", driver="core", backing_store=True) as f:
        assert rawwrite.create(f, "d", 10, np.float32)[1] is None


@pytest.mark.parametrize("fmt", ["csr", "csc"])
def test_sparse_sink_of_known_size_reads_back_through_anndata(tmp_path, fmt):
    m = sp.random(300, 200, density=0.1, format=fmt, dtype=np.float32, random_state=1)
    path = tmp_path / "m.h5"
    with h5py.File(path, "w") as f:
        sink = SparseSink(f, "X", fmt, m.shape, m.dtype, nnz=m.nnz)
        assert set(k for k, w in sink.raw.items() if w is not None) == {"data", "indices"}
        n_major = m.shape[0] if fmt == "csr" else m.shape[1]
        for a in range(0, n_major, 37):  # blocks of major positions, appended in order
            b = min(n_major, a + 37)
            sink.append_block(m[a:b] if fmt == "csr" else m[:, a:b])
        sink.close()
    with h5py.File(path, "r") as f:
        got = ad.io.read_elem(f["X"])
    assert got.format == fmt
    np.testing.assert_array_equal(got.toarray(), m.toarray())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fallocate is Linux's")
def test_preallocation_reserves_blocks_without_changing_the_size(tmp_path):
    path = tmp_path / "r.bin"
    path.write_bytes(b"head")
    fd = os.open(path, os.O_RDWR)
    try:
        assert rawwrite.preallocate(fd, 4096, 8 * 2**20, str(path))
        st = os.fstat(fd)
        assert st.st_size == 4  # reserved beyond the end: the size follows the writes
        assert st.st_blocks * 512 >= 8 * 2**20
        os.pwrite(fd, b"x" * 10, 4096)
        assert os.fstat(fd).st_size == 4106 and path.read_bytes()[4096:] == b"x" * 10
    finally:
        os.close(fd)
    # what cannot be reserved (a pipe) is written the usual way: no error
    r, w = os.pipe()
    try:
        assert not rawwrite.preallocate(w, 0, 4096)
    finally:
        os.close(r)
        os.close(w)
