"""Remote stores (shadows.remote): shadows over S3 (moto on 127.0.0.1) and HTTP (a Range server on 127.0.0.1) read
what anndata reads from the local copy; views, pickles, dask (threads and worker processes), write-back to zarr on
S3, the refusal to write into a remote h5ad, and the errors for bad URLs and endpoints."""

from __future__ import annotations

import hashlib
import os
import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
from h5_layout import data_bytes, merged, raw_extents
from oracle import assert_element_equal, read_oracle, write_adata
from remote_servers import RangeServer, S3Server
from stream_data import rich

pytest.importorskip("s3fs")
pytest.importorskip("moto.server")

import fsspec  # noqa: E402
import zarr  # noqa: E402

from shadows import AnnDataShadow  # noqa: E402
from shadows.remote import counting  # noqa: E402

BUCKET = "shadows-test-remote"
TAGS = ("h5ad", "zarr2", "zarr3")  # zarr3 is sharded where anndata shards (0.13)
ROOT = Path(__file__).resolve().parents[1]


def _write_all(directory: Path) -> dict[str, Path]:
    a = rich(40, 15, "csr", seed=3)
    out = {"h5ad": Path(write_adata(a, directory / "a.h5ad")), "zarr2": Path(write_adata(a, directory / "a2.zarr", 2))}
    shard = getattr(ad.settings, "auto_shard_zarr_v3", None)
    if shard is not None:
        ad.settings.auto_shard_zarr_v3 = True
    try:
        out["zarr3"] = Path(write_adata(a, directory / "a3.zarr", 3))
    finally:
        if shard is not None:
            ad.settings.auto_shard_zarr_v3 = shard
    return out


@pytest.fixture(scope="session")
def servers(tmp_path_factory):
    """An S3 server holding the files, an HTTP server serving them, and anndata's readings of the local copies."""
    d = tmp_path_factory.mktemp("remote")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        local = _write_all(d)
    s3 = S3Server().start()
    http = RangeServer(d)
    try:
        fs = s3.filesystem()
        fs.mkdir(BUCKET)
        for p in local.values():
            fs.put(str(p), f"{BUCKET}/{p.name}", recursive=p.is_dir())
        fs.pipe(f"{BUCKET}/text.h5ad", b"not an HDF5 file\n" * 10)
        oracle = {tag: read_oracle(p) for tag, p in local.items()}
        yield {"s3": s3, "fs": fs, "http": http, "local": local, "oracle": oracle}
    finally:
        http.stop()
        s3.stop()


def url_of(servers, where: str, tag: str) -> tuple[str, dict | None]:
    name = servers["local"][tag].name
    if where == "s3":
        return f"s3://{BUCKET}/{name}", servers["s3"].storage_options
    return f"{servers['http'].url}/{name}", None


def _dense(x) -> np.ndarray:
    return np.ravel(np.asarray(x.todense() if hasattr(x, "todense") else x))


def assert_same(s, ref) -> None:
    assert tuple(s.shape) == tuple(ref.shape)
    for name in ("obs", "var", "X"):
        assert_element_equal(getattr(s, name), getattr(ref, name), name)
    for g in ("obsm", "layers"):
        for k in getattr(ref, g).keys():
            if k is not None:
                assert_element_equal(getattr(s, g)[k], getattr(ref, g)[k], f"{g}/{k}")


@pytest.mark.parametrize("where", ["s3", "http"])
@pytest.mark.parametrize("tag", TAGS)
def test_every_element_equals_anndata(servers, where, tag):
    url, so = url_of(servers, where, tag)
    ref = servers["oracle"][tag]
    with AnnDataShadow(url, storage_options=so) as s:
        assert url in repr(s)
        assert_same(s, ref)
        assert_element_equal(dict(s.uns), dict(ref.uns), "uns")
        s.clear_cache()
        s.reopen("r")
        assert_element_equal(s.obsm["X_pca"] if "X_pca" in ref.obsm else s.X, ref.obsm.get("X_pca", ref.X), "again")


@pytest.mark.parametrize("where,tag", [("s3", "h5ad"), ("s3", "zarr3"), ("http", "h5ad"), ("http", "zarr2")])
def test_views_equal_anndata_views(servers, where, tag):
    url, so = url_of(servers, where, tag)
    ref = servers["oracle"][tag]
    mask = np.arange(ref.n_obs) % 3 == 0
    genes = list(ref.var_names[[4, 0, 7]])
    s = AnnDataShadow(url, storage_options=so)
    for make in (lambda x: x[mask], lambda x: x[:, genes], lambda x: x[mask, genes], lambda x: x[5:30][::2, genes]):
        v, rv = make(s), make(ref).copy()
        assert isinstance(v, AnnDataShadow)
        assert_same(v, rv)


def test_fsspec_and_zarr_objects(servers):
    fs, so, ref = servers["fs"], servers["s3"].storage_options, servers["oracle"]
    with fs.open(f"{BUCKET}/a.h5ad", "rb") as f:
        assert_same(AnnDataShadow(f), ref["h5ad"])
    assert_same(AnnDataShadow(fsspec.open(f"s3://{BUCKET}/a.h5ad", "rb", **so)), ref["h5ad"])
    assert_same(AnnDataShadow((fs, f"{BUCKET}/a.h5ad")), ref["h5ad"])
    assert_same(AnnDataShadow(fs.get_mapper(f"{BUCKET}/a2.zarr")), ref["zarr2"])
    store = zarr.storage.FsspecStore.from_url(f"s3://{BUCKET}/a3.zarr", storage_options=so, read_only=True)
    assert_same(AnnDataShadow(store), ref["zarr3"])
    fsspec.filesystem("memory").put(str(servers["local"]["zarr2"]), "/test_remote/a2.zarr", recursive=True)
    assert_same(AnnDataShadow("memory://test_remote/a2.zarr"), ref["zarr2"])


def test_partial_reads_stay_partial_and_are_counted(servers):
    """counting() sees every byte the server sent; one embedding fetches less than the whole store."""
    srv = servers["http"]
    s = AnnDataShadow(f"{srv.url}/a3.zarr")
    srv.reset()
    with counting() as c:
        x = s[2:30].obsm["X_pca"]
    assert_element_equal(x, servers["oracle"]["zarr3"][2:30].obsm["X_pca"], "obsm")
    n_req, n_bytes = srv.totals()
    assert c.bytes == n_bytes and 0 < c.requests <= n_req  # the server also answers HEAD requests (sizes)
    whole = sum(p.stat().st_size for p in servers["local"]["zarr3"].rglob("*") if p.is_file())
    assert n_bytes < whole


def test_pickled_view_reads_in_a_fresh_process(servers):
    # both views in one child process: each child pays the imports (shadows, s3fs, zarr) again, 5-12 s on CI
    views, refs = [], []
    for where, tag in (("s3", "h5ad"), ("http", "zarr3")):
        url, so = url_of(servers, where, tag)
        views.append(AnnDataShadow(url, storage_options=so)[::2, [0, 3]])
        refs.append(servers["oracle"][tag][::2, [0, 3]].X)
    blobs = [pickle.dumps(v) for v in views]
    assert all(len(b) < 16384 for b in blobs)
    code = (
        "import pickle, sys; vs = pickle.loads(sys.stdin.buffer.read()); "
        "sys.stdout.buffer.write(pickle.dumps([pickle.loads(v).X for v in vs]))"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    p = subprocess.run(
        [sys.executable, "-c", code], input=pickle.dumps(blobs), capture_output=True, timeout=120, env=env
    )
    assert p.returncode == 0, p.stderr.decode()[-2000:]
    for got, ref in zip(pickle.loads(p.stdout), refs, strict=True):
        assert_element_equal(got, ref, "X")


def test_dask_backend_threads_and_worker_processes(servers):
    distributed = pytest.importorskip("dask.distributed")
    import dask

    url, so = url_of(servers, "s3", "zarr3")
    ref = servers["oracle"]["zarr3"]
    s = AnnDataShadow(url, storage_options=so, array_backend="dask")
    want = np.asarray(ref.X.sum(axis=0)).ravel()
    np.testing.assert_allclose(_dense(s.X.sum(axis=0).compute()), want, rtol=1e-6)
    with dask.config.set({"distributed.worker.multiprocessing-method": "fork"}):
        cluster = distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
        )
    try:
        with distributed.Client(cluster):
            h = AnnDataShadow(*url_of(servers, "s3", "h5ad")[:1], storage_options=so, array_backend="dask")
            got = h[::2].X.sum(axis=0).compute()
            want = np.asarray(servers["oracle"]["h5ad"][::2].X.sum(axis=0)).ravel()
            np.testing.assert_allclose(_dense(got), want, rtol=1e-6)
    finally:
        cluster.close()


@pytest.mark.parametrize("tag", [pytest.param("zarr2", marks=pytest.mark.slow), "zarr3"])
def test_write_back_to_s3_zarr_reads_back_with_anndata(servers, tag):
    fs, so = servers["fs"], servers["s3"].storage_options
    key = f"{BUCKET}/writeback_{tag}.zarr"
    fs.put(str(servers["local"][tag]), key, recursive=True)
    before = servers["oracle"][tag]
    x_new = np.random.default_rng(0).normal(size=(before.n_obs, 3)).astype(np.float32)
    col = np.array([f"c{i % 3}" for i in range(before.n_obs)])
    s = AnnDataShadow(f"s3://{key}", storage_options=so)
    s.obsm["X_new"] = x_new
    s.obs["cluster"] = col
    s.layers["twice"] = before.X * 2
    s.uns["note"] = {"by": "test_remote"}
    s.reopen("r+").write().reopen("r")
    # a fresh view of the bucket (no cached listings); an instance fsspec caches, not one that is collected with
    # its network client open (a ResourceWarning in whichever test runs then)
    fresh = {**so, "use_listings_cache": False}
    after = ad.read_zarr(zarr.storage.FsspecStore.from_url(f"s3://{key}", storage_options=fresh, read_only=True))
    assert_element_equal(after.obsm["X_new"], x_new, "obsm/X_new")
    assert [str(c) for c in after.obs["cluster"]] == list(col)
    assert_element_equal(after.layers["twice"], before.X * 2, "layers/twice")
    assert after.uns["note"]["by"] == "test_remote"
    assert_element_equal(after.X, before.X, "X")
    assert_element_equal(after.obs[list(before.obs.columns)], before.obs, "old obs")
    assert_element_equal(s.obsm["X_new"], x_new, "the shadow after write")


def test_view_streamed_to_s3_zarr(servers):
    so = servers["s3"].storage_options
    s = AnnDataShadow(url_of(servers, "s3", "h5ad")[0], storage_options=so)
    dest = f"s3://{BUCKET}/streamed.zarr"
    s[::3, [0, 2, 5]].write_zarr(zarr.storage.FsspecStore.from_url(dest, storage_options=so, read_only=False))
    back = ad.read_zarr(zarr.storage.FsspecStore.from_url(dest, storage_options=so, read_only=True))
    rv = servers["oracle"]["h5ad"][::3, [0, 2, 5]].copy()
    assert_element_equal(back.X, rv.X, "X")
    assert_element_equal(back.obs, rv.obs, "obs")
    with pytest.raises(FileExistsError, match="streamed.zarr"):  # an existing store is not replaced unasked
        s[:5].write_zarr(zarr.storage.FsspecStore.from_url(dest, storage_options=so, read_only=False))


def test_writing_into_remote_h5ad_is_refused(servers):
    fs, so = servers["fs"], servers["s3"].storage_options
    url = f"s3://{BUCKET}/a.h5ad"
    digest = hashlib.sha256(fs.cat_file(f"{BUCKET}/a.h5ad")).hexdigest()
    s = AnnDataShadow(url, storage_options=so)
    s.obsm["X_new"] = np.zeros((s.n_obs, 2))
    with pytest.raises(OSError, match="HDF5") as e:
        s.reopen("r+")
    assert url in str(e.value) and "zarr" in str(e.value) and "local" in str(e.value)
    with pytest.raises(OSError, match="HDF5"):
        AnnDataShadow(url, storage_options=so, mode="r+")
    assert hashlib.sha256(fs.cat_file(f"{BUCKET}/a.h5ad")).hexdigest() == digest
    assert_element_equal(s.obs, servers["oracle"]["h5ad"].obs, "still readable")


def test_errors_name_the_url(servers):
    so = servers["s3"].storage_options
    for url in (f"s3://{BUCKET}/missing.h5ad", f"s3://{BUCKET}/missing.zarr", "s3://no-such-bucket-here/x.h5ad"):
        with pytest.raises(FileNotFoundError, match=url):
            AnnDataShadow(url, storage_options=so)
    missing = f"{servers['http'].url}/missing.h5ad"
    with pytest.raises(FileNotFoundError, match=missing):
        AnnDataShadow(missing)
    with pytest.raises(ValueError, match=f"s3://{BUCKET}/text.h5ad"):
        AnnDataShadow(f"s3://{BUCKET}/text.h5ad", storage_options=so)
    with pytest.raises(TypeError, match="storage_options"):
        AnnDataShadow(str(servers["local"]["h5ad"]), storage_options=so)


def test_dead_endpoint_names_the_url(servers):
    import socket

    with socket.socket() as dead:
        dead.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        endpoint = f"http://127.0.0.1:{dead.getsockname()[1]}"
        url = f"s3://{BUCKET}/a.h5ad"
        so = {"client_kwargs": {"endpoint_url": endpoint}, "config_kwargs": {"retries": {"max_attempts": 1}}}
        with pytest.raises(OSError, match=url):
            AnnDataShadow(url, storage_options=so)


@pytest.mark.parametrize("tag", ["h5ad", "zarr3"])
def test_http_errors_after_open_are_errors_not_fill_values(servers, tag):
    url, _ = url_of(servers, "http", tag)
    s = AnnDataShadow(url)
    servers["http"].fail_status = 503
    try:
        with pytest.raises(OSError, match=url):
            s.reopen("r")  # a fresh connection (a small h5ad may sit whole in the cache of the first one)
            s.obsm["X_pca"]
    finally:
        servers["http"].fail_status = 0
    assert_element_equal(
        s.reopen("r").obsm["X_pca"], servers["oracle"][tag].obsm["X_pca"], "after the server recovered"
    )


_CLIENTS_SESSION = """
import gc, sys, threading
import fsspec, s3fs
from fsspec.implementations.http import HTTPFileSystem
from shadows import AnnDataShadow
http, so = sys.argv[1], {"client_kwargs": {"endpoint_url": sys.argv[2]}}
def session():
    for url, opts in ((http + "/a3.zarr", None), (http + "/a2.zarr", None), (http + "/a.h5ad", None),
                      ("s3://%s/a3.zarr" % sys.argv[3], so), ("s3://%s/a.h5ad" % sys.argv[3], so)):
        s = AnnDataShadow(url, storage_options=opts)
        s.obsm["X_pca"], s[::2, :4].X
threads = [threading.Thread(target=session) for _ in range(3)]
session()
for t in threads: t.start()
for t in threads: t.join()
HTTPFileSystem.clear_instance_cache(); s3fs.S3FileSystem.clear_instance_cache()
gc.collect()  # the clients fsspec cached per thread are collected here: warnings if left open
"""


def test_no_unclosed_clients_after_reads_from_threads(servers):
    """A remote read session from several threads leaves no network client unclosed, neither when fsspec's
    instances are collected nor at exit ("Unclosed client session", "Unclosed connector" are errors here)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    args = [servers["http"].url, servers["s3"].endpoint, BUCKET]
    p = subprocess.run(
        [sys.executable, "-W", "error::ResourceWarning", "-c", _CLIENTS_SESSION, *args],
        capture_output=True,
        timeout=300,
        env=env,
    )
    err = p.stderr.decode()
    assert p.returncode == 0, err[-3000:]
    assert "Unclosed" not in err and "ResourceWarning" not in err, err[-3000:]


def test_obs_names_of_remote_h5ad_read_in_few_requests(servers, tmp_path):
    """HDF5 reads variable-length strings through its global heap one collection after another, in pieces smaller
    than a metadata block: the read-ahead keeps that to a few requests (one per 64 kB block without it) and fetches
    at most twice the heap."""
    n = 20_000
    names = [f"cell_{i:06d}_" + "ACGT" * 8 for i in range(n)]
    a = ad.AnnData(obs={"k": np.arange(n) % 3}, shape=(n, 2))
    a.obs_names = names
    path = servers["http"].root / "many_names.h5ad"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a.write_h5ad(path)
    heap = sum(16 + len(s) for s in names)  # the strings and their heap object headers, about 1 MB
    s = AnnDataShadow(f"{servers['http'].url}/{path.name}")
    with counting() as c:
        got = s.obs_names
    assert list(got) == names
    blocks = -(-heap // 65536)
    # + 1: with anndata 0.13 the names are a group (values, mask) whose headers and attributes, read from 1 kB
    # units, are one request more than from 64 kB blocks (shadows.io.remote.UNIT); the heap walk itself is 5
    assert c.requests <= blocks // 2 + 1, (c.requests, blocks)
    assert c.bytes <= 2 * heap + 2 * 65536, (c.bytes, heap)


def _sparse_h5ad(servers, name: str, n_obs: int = 30_000, n_vars: int = 1_000, density: float = 0.05):
    """A CSR h5ad as anndata writes it (chunked data/indices/indptr, each with its object header and first B-tree
    node next to its raw data), served over HTTP."""
    x = sp.random(n_obs, n_vars, density=density, format="csr", dtype=np.float32, random_state=0)
    a = ad.AnnData(x)
    path = servers["http"].root / name
    if not path.exists():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            a.write_h5ad(path)
    return f"{servers['http'].url}/{name}", a


def test_scattered_cells_of_remote_h5ad_fetch_few_values_beyond_the_answer(servers):
    """Opening X's datasets reads their object headers, which HDF5 writes next to their raw values: the read cache
    fetches a few kB there, not a 64 kB block of values nobody asked for.  Of the values fetched (bytes in any
    dataset's raw data), at most half the answer again is not the answer (with 64 kB blocks: 7x the answer)."""
    from shadows.io.remote import forget_blocks

    url, a = _sparse_h5ad(servers, "dense_rows.h5ad", n_obs=6_000, n_vars=2_000, density=0.25)
    raw = merged([r for ext in raw_extents(servers["http"].root / "dense_rows.h5ad").values() for r in ext])
    cells = [11, 900, 1_999, 3_337, 4_601, 5_977]
    forget_blocks()
    s = AnnDataShadow(url)
    with counting() as c:
        got = s[cells].X
    want = a.X[cells]
    assert_element_equal(got, want, "6 scattered cells")
    answer = want.nnz * 8 + len(cells) * 16  # values, indices and two indptr entries per cell
    values = data_bytes(c.spans, raw)
    assert c.spans and values <= 1.5 * answer, (values, answer, c.bytes, c.requests)


def test_views_of_remote_h5ad_ask_the_size_once(servers):
    """A view re-opens the file without asking its size and version again (a HEAD request each before); reopen()
    asks again."""
    url, a = _sparse_h5ad(servers, "scattered.h5ad")
    http = servers["http"]
    s = AnnDataShadow(url)
    http.reset()
    assert_element_equal(s[3:9].X, a.X[3:9], "a view")
    assert_element_equal(s[3:9][::2].obs_names, a.obs_names[3:9][::2], "a view of a view")
    assert http.heads == 0, dict(http.stats)
    s.reopen("r")
    assert http.heads == 1, dict(http.stats)


@pytest.mark.parametrize("tag", ["zarr2", "zarr3"])
def test_views_of_remote_zarr_read_no_metadata_again(servers, tag):
    """A view's connection takes the root metadata its parent read: only the chunks of the answer are fetched."""
    http = servers["http"]
    url = url_of(servers, "http", tag)[0]
    s = AnnDataShadow(url)
    meta = (".zgroup", ".zattrs", ".zmetadata", "zarr.json")
    http.reset()
    v = s[5:25]
    got = v.X
    v2 = v[::2, :4]  # a view of a view too
    got2 = v2.X
    fetched = list(http.stats)
    assert fetched and not [k for k in fetched if k.endswith(meta)], fetched
    want = servers["oracle"][tag][5:25]
    assert_element_equal(got, want.X, "view X")
    assert_element_equal(got2, want[::2, :4].X, "view of a view X")


def test_views_after_a_remote_write_see_the_new_metadata(servers):
    fs, so = servers["fs"], servers["s3"].storage_options
    key = f"{BUCKET}/views_after_write.zarr"
    fs.put(str(servers["local"]["zarr2"]), key, recursive=True)
    s = AnnDataShadow(f"s3://{key}", storage_options=so)
    s[:3].X  # noqa: B018 - a view read before the write
    x_new = np.arange(s.n_obs * 2, dtype=np.float32).reshape(-1, 2)
    s.obsm["X_new"] = x_new
    s.reopen("r+").write().reopen("r")
    assert "X_new" in AnnDataShadow(f"s3://{key}", storage_options=so)[2:7].obsm
    assert_element_equal(s[2:7].obsm["X_new"], x_new[2:7], "a view after the write")


def test_s3_reads_each_object_with_one_request(servers, monkeypatch):
    """s3fs asks an object's size before each whole-object GET unless max_concurrency is 1 (shadows' default):
    zarr reads chunks whole, so that was two round trips per chunk.  An option the user sets is kept."""
    import s3fs

    calls: list[tuple[str, str | None]] = []
    orig = s3fs.S3FileSystem._call_s3

    async def call_s3(fs, method, *a, **k):
        calls.append((method, k.get("Key")))
        return await orig(fs, method, *a, **k)

    monkeypatch.setattr(s3fs.S3FileSystem, "_call_s3", call_s3)
    url, so = url_of(servers, "s3", "zarr2")
    s = AnnDataShadow(url, storage_options=so)
    calls.clear()
    col = s.obs[s.obs.columns[0]]
    gets = [k for m, k in calls if m == "get_object"]
    assert gets and not [k for m, k in calls if m == "head_object"], calls
    assert_element_equal(col, servers["oracle"]["zarr2"].obs[s.obs.columns[0]], "obs column")
    kept = AnnDataShadow(url, storage_options={**so, "max_concurrency": 3})
    assert kept._state.storage.filename.target.fs.max_concurrency == 3
