"""``shadows.io.fast.zarr_chunks``: zarr chunks decoded straight into a buffer equal what zarr reads, for every layout the
decoder accepts (v2 compressors, v3 codecs, shards with and without checksums, chunks never written); every other
layout is left to zarr.  And a gene scan over such a store equals anndata's."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import zarr
from oracle import assert_element_equal
from zarr.codecs import BloscCodec, Crc32cCodec, GzipCodec, ZstdCodec

from shadows import AnnDataShadow
from shadows.io.fast.zarr_chunks import decoder

N = 10_007  # not a multiple of any chunk length: the last chunk is partial


def _values(dtype) -> np.ndarray:
    rng = np.random.default_rng(0)
    return (rng.integers(0, 1000, N) * (rng.random(N) < 0.7)).astype(dtype)


def _check(arr, values: np.ndarray) -> None:
    dec = decoder(arr)
    assert dec is not None
    np.testing.assert_array_equal(dec.read(0, N), values)
    rng = np.random.default_rng(1)
    buf = np.full(N, -1, dtype=values.dtype)
    for _ in range(40):
        a = int(rng.integers(0, N))
        b = int(rng.integers(a, min(N, a + 3000) + 1))
        got = dec.read_into(a, b, buf)
        assert got.base is buf or got is buf or np.shares_memory(got, buf)
        np.testing.assert_array_equal(got, values[a:b])
    for size in (1, 5, 300):
        pos = np.unique(rng.integers(0, N, size))
        np.testing.assert_array_equal(dec.take(pos), values[pos])
    np.testing.assert_array_equal(dec.take(np.array([N - 1])), values[-1:])
    with pytest.raises(IndexError, match="out of range"):
        dec.read(0, N + 1)
    with pytest.raises(IndexError, match="out of range"):
        dec.take(np.array([3, N]))


@pytest.mark.parametrize("compressor", ["blosc", "zstd", "gzip", None])
@pytest.mark.parametrize("dtype", [np.int32, np.float32, np.int64])
def test_v2_arrays(tmp_path, compressor, dtype):
    import numcodecs

    comp = {"blosc": numcodecs.Blosc(), "zstd": numcodecs.Zstd(), "gzip": numcodecs.GZip(), None: None}[compressor]
    values = _values(dtype)
    arr = zarr.create_array(
        tmp_path / "a.zarr", shape=(N,), chunks=(1000,), dtype=dtype, zarr_format=2, compressors=comp
    )
    arr[:] = values
    _check(zarr.open_array(tmp_path / "a.zarr", mode="r"), values)


@pytest.mark.parametrize(
    "compressors",
    [(BloscCodec(cname="lz4"),), (ZstdCodec(),), (GzipCodec(),), (ZstdCodec(), Crc32cCodec())],
    ids=["blosc", "zstd", "gzip", "zstd+crc32c"],
)
@pytest.mark.parametrize("shards", [None, (4000,)])
def test_v3_arrays_and_shards(tmp_path, compressors, shards):
    values = _values(np.float32)
    arr = zarr.create_array(
        tmp_path / "a.zarr", shape=(N,), chunks=(1000,), shards=shards, dtype=np.float32, compressors=compressors
    )
    arr[:] = values
    _check(zarr.open_array(tmp_path / "a.zarr", mode="r"), values)


def test_chunks_never_written_read_as_the_fill_value(tmp_path):
    for shards in (None, (4000,)):
        path = tmp_path / f"s{shards is not None}.zarr"
        arr = zarr.create_array(path, shape=(N,), chunks=(1000,), shards=shards, dtype=np.int32, fill_value=7)
        values = np.full(N, 7, dtype=np.int32)
        values[2500:3200] = np.arange(700)  # only chunks 2 and 3 (of shard 0) exist
        arr[2500:3200] = values[2500:3200]
        _check(zarr.open_array(path, mode="r"), values)


def test_other_layouts_are_left_to_zarr(tmp_path):
    import numcodecs

    big = zarr.create_array(tmp_path / "be.zarr", shape=(N,), chunks=(1000,), dtype=">i4", zarr_format=2)
    filt = zarr.create_array(
        tmp_path / "f.zarr", shape=(N,), chunks=(1000,), dtype="<i4", zarr_format=2, filters=[numcodecs.Delta("<i4")]
    )
    two_d = zarr.create_array(tmp_path / "2d.zarr", shape=(10, 10), chunks=(5, 5), dtype="<i4")
    mem = zarr.create_array(zarr.storage.MemoryStore(), shape=(N,), chunks=(1000,), dtype="<i4")
    for arr in (big, filt, two_d, mem):
        assert decoder(arr) is None


def test_a_damaged_chunk_raises_naming_the_array(tmp_path):
    arr = zarr.create_array(tmp_path / "a.zarr", shape=(N,), chunks=(1000,), dtype=np.int32, compressors=ZstdCodec())
    arr[:] = _values(np.int32)
    (tmp_path / "a.zarr" / "c" / "3").write_bytes(b"not zstd")
    dec = decoder(zarr.open_array(tmp_path / "a.zarr", mode="r"))
    dec.read(0, 3000)  # the chunks before it are fine
    with pytest.raises(Exception):  # noqa: B017 - numcodecs' own error for a bad frame
        dec.read(0, 4000)


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_gene_scans_over_decoded_chunks_equal_anndata(tmp_path, zarr_format):
    """Many chunks per array and a small budget: the scan decodes chunk after chunk in two threads."""
    from shadows import settings

    m = sp.random(4000, 300, density=0.1, format="csr", dtype=np.float32, random_state=3)
    path = tmp_path / f"m{zarr_format}.zarr"
    ad.settings.zarr_write_format = zarr_format
    try:
        ad.AnnData(X=m).write_zarr(path)
        # anndata's writer with small chunks (and shards of several chunks in v3), as a large file would have
        kwargs = {"chunks": (5000,)} if zarr_format == 2 else {"chunks": (5000,), "shards": (20000,)}
        ad.io.write_elem(zarr.open_group(path, mode="r+", use_consolidated=False), "X", m, dataset_kwargs=kwargs)
        zarr.consolidate_metadata(path)
    finally:
        ad.settings.zarr_write_format = 2
    g = zarr.open_group(path, mode="r")
    assert g["X/indices"].chunks[0] == 5000 < g["X/indices"].shape[0] // 10
    genes = np.array([17, 3, 250, 3, 99])
    with settings.override(memory_budget=2**18), AnnDataShadow(path) as s:
        assert decoder(g["X/indices"]) is not None
        got = s[:, genes].X
        rows = s[np.arange(0, 4000, 7), :][:, [5, 1]].X
        whole = s.X  # both arrays decoded at once, chunk by chunk
    ref = ad.read_zarr(path)
    assert whole.format == "csr" and (whole != ref.X).nnz == 0 and whole.dtype == ref.X.dtype
    np.testing.assert_array_equal(got.toarray(), ref[:, genes].X.toarray())
    np.testing.assert_array_equal(rows.toarray(), ref[np.arange(0, 4000, 7), :][:, [5, 1]].X.toarray())


def _strings() -> np.ndarray:
    rng = np.random.default_rng(2)
    words = np.array(["AAACCTG-1", "cellule-é", "细胞", "", "x" * 300, "T cell"], dtype=object)
    return np.array([f"{w}{i}" for i, w in enumerate(rng.choice(words, N))], dtype=object)


@pytest.mark.parametrize(
    "zarr_format, compressors",
    [(2, "blosc"), (2, None), (3, (ZstdCodec(),)), (3, (BloscCodec(cname="lz4"), Crc32cCodec())), (3, None)],
    ids=["v2-blosc", "v2-raw", "v3-zstd", "v3-blosc+crc32c", "v3-raw"],
)
def test_strings_equal_zarr(tmp_path, zarr_format, compressors):
    """Whole string arrays decoded to objects equal zarr's values, non-ASCII, empty and long strings, a partial last
    chunk and a chunk never written (the fill value) included."""
    import numcodecs

    from shadows.io.fast.zarr_chunks import read_strings

    comp = numcodecs.Blosc() if compressors == "blosc" else compressors
    values = _strings()
    arr = zarr.create_array(
        tmp_path / "s.zarr", shape=(N,), chunks=(1000,), dtype=str, zarr_format=zarr_format, compressors=comp
    )
    arr[:4000] = values[:4000]
    arr[5000:] = values[5000:]  # chunk 4 never written
    values[4000:5000] = arr.metadata.fill_value or ""
    ro = zarr.open_array(tmp_path / "s.zarr", mode="r")
    got = read_strings(ro)
    assert got is not None and got.dtype == object and all(type(v) is str for v in got[:50])
    assert got.tolist() == values.tolist() == ro[:].tolist()


def test_strings_left_to_zarr_where_not_handled(tmp_path):
    from shadows import settings
    from shadows.io.fast.zarr_chunks import read_strings

    sharded = zarr.create_array(tmp_path / "sh.zarr", shape=(N,), chunks=(1000,), shards=(4000,), dtype=str)
    numbers = zarr.create_array(tmp_path / "n.zarr", shape=(N,), chunks=(1000,), dtype=np.int32)
    mem = zarr.create_array(zarr.storage.MemoryStore(), shape=(N,), chunks=(1000,), dtype=str)
    for arr in (sharded, numbers, mem):
        assert read_strings(arr) is None
    plain = zarr.create_array(tmp_path / "p.zarr", shape=(N,), chunks=(1000,), dtype=str)
    with settings.override(fast_io=False):
        assert read_strings(plain) is None


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_obs_and_var_strings_equal_anndata(tmp_path, zarr_format):
    """obs/var names and string columns decoded here are what anndata reads (values, dtypes, index)."""
    obs = pd.DataFrame(
        {"kind": np.array(["é", "b", "c"] * 700, dtype=object), "n": np.arange(2100)},
        index=[f"cell-{i}-細" for i in range(2100)],
    )
    a = ad.AnnData(X=sp.random(2100, 40, density=0.1, format="csr", dtype=np.float32), obs=obs)
    a.var_names = [f"g{i}" for i in range(40)]
    path = tmp_path / "a.zarr"
    ad.settings.zarr_write_format = zarr_format
    try:
        a.write_zarr(path)
    finally:
        ad.settings.zarr_write_format = 2
    want = ad.read_zarr(path)
    with AnnDataShadow(path) as s:
        pd.testing.assert_index_equal(s.obs_names, want.obs_names)
        pd.testing.assert_index_equal(s.var_names, want.var_names)
        assert_element_equal(s.obs, want.obs, "obs")
        assert_element_equal(s.var, want.var, "var")
