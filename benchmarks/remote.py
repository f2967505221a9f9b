"""Remote stores: requests, bytes and time of shadows against anndata.experimental.read_lazy over HTTP.

The benchmark files (benchmarks/generate.py: CSR and CSC h5ad, CSR zarr v2) and a zarr v3 copy are served by a
Range-capable HTTP server on 127.0.0.1 (tests/remote_servers.py) that counts requests and bytes; ``--latency-ms``
adds a delay to every request (a cloud bucket answers in 10-50 ms).  Each case opens the store afresh, with
shadows (``AnnDataShadow(url)``) and with anndata's own lazy route (``read_lazy`` on ``zarr.open_group`` of an
``FsspecStore``, or on ``h5py.File`` of an fsspec file for h5ad), and reports what the server sent, beside the
bytes of the answer itself.

Usage::

    python benchmarks/remote.py [--scale 1.0] [--latency-ms 0] [--out -|docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

import generate  # noqa: E402
from h5_layout import data_bytes, merged, raw_extents  # noqa: E402
from remote_servers import RangeServer  # noqa: E402

warnings.filterwarnings("ignore")
CASE_LIMIT_S = 60  # a case still running after this is reported as TimeoutError


def _too_slow(signum, frame):
    raise TimeoutError(f"more than {CASE_LIMIT_S} s")


CELLS6 = [11, 2_000, 9_999, 31_337, 50_001, 77_777]


def answer_bytes(paths: dict, n_obs: int) -> dict[str, int]:
    """The bytes each answer needs (values as stored, uncompressed; HDF5's string heap for names)."""
    import h5py

    def vlen(ds) -> int:
        return int(ds.id.get_storage_size()) + sum(16 + -(-len(s.encode()) // 8) * 8 for s in ds.asstr()[:])

    out = {"open + shape": 0}
    with h5py.File(paths["csr"], "r") as f:
        ip = f["X/indptr"][:]
        per = f["X/data"].dtype.itemsize + f["X/indices"].dtype.itemsize
        out["open + obs column"] = f["obs/donor/codes"].nbytes + vlen(f["obs/donor/categories"]) + vlen(f["obs/_index"])
        out["obsm['X_pca']"] = f["obsm/X_pca"].size * f["obsm/X_pca"].dtype.itemsize
        cells = [c % n_obs for c in CELLS6]
        out["6 scattered cells"] = sum(int(ip[c + 1] - ip[c]) * per + 16 for c in cells)
        a = n_obs // 2
        out["1000 contiguous cells"] = int(ip[a + 1000] - ip[a]) * per + 1001 * 8
    with h5py.File(paths["csc"], "r") as f:
        ip = f["X/indptr"][:]
        per = f["X/data"].dtype.itemsize + f["X/indices"].dtype.itemsize
        out["1 gene of CSC"] = int(ip[43] - ip[42]) * per + 16
        out["200 genes of CSC"] = int(ip[1200] - ip[1000]) * per + 201 * 8
    return out


# The datasets each h5ad case reads values of (the rest of what it fetches is HDF5 metadata, or values of other
# datasets that share a metadata block)
READS = {
    "open + shape": (),
    "open + obs column": ("obs/_index", "obs/donor/codes", "obs/donor/categories"),
    "obsm['X_pca']": ("obsm/X_pca",),
    "6 scattered cells": ("X/data", "X/indices", "X/indptr"),
    "1000 contiguous cells": ("X/data", "X/indices", "X/indptr"),
    "1 gene of CSC": ("X/data", "X/indices", "X/indptr"),
    "1 gene through the column index": (
        "X/shadows_column_index/data",
        "X/shadows_column_index/indices",
        "X/shadows_column_index/indptr",
        "X/data",
        "X/indices",
        "X/indptr",
    ),
    "200 genes of CSC": ("X/data", "X/indices", "X/indptr"),
}


def split_bytes(spans: list, per_ds: dict[str, list[tuple[int, int]]], label: str) -> tuple[int, int]:
    """Fetched bytes in the values of the datasets the case reads, and in other datasets' values."""
    read = merged([r for name in READS.get(label, ()) for r in per_ds.get(name, [])])
    every = merged([r for ext in per_ds.values() for r in ext])
    own = data_bytes(spans, read)
    return own, data_bytes(spans, every) - own


def cases(n_obs: int, var_names: list[str]):
    """``label -> (file kind, operation)``: the file kind is ``csr``, ``csc`` or ``csr_index`` (CSR with shadows'
    column index)."""
    cells = sorted(c % n_obs for c in CELLS6)
    a = n_obs // 2
    gene, genes = var_names[42], var_names[1000:1200]

    def to_np(x):
        if hasattr(type(x), "compute"):  # of the type: a pandas Series looks a name up among its index labels
            x = x.compute()
        if hasattr(x, "to_numpy"):
            x = x.to_numpy()
        return x

    return {
        "open + shape": ("csr", lambda s: s.shape),
        "open + obs column": ("csr", lambda s: to_np(s.obs["donor"])),
        "obsm['X_pca']": ("csr", lambda s: to_np(s.obsm["X_pca"])),
        "6 scattered cells": ("csr", lambda s: to_np(s[cells].X)),
        "1000 contiguous cells": ("csr", lambda s: to_np(s[a : a + 1000].X)),
        "1 gene of CSC": ("csc", lambda s: to_np(s[:, gene].X)),
        "1 gene through the column index": ("csr_index", lambda s: to_np(s[:, gene].X)),
        "200 genes of CSC": ("csc", lambda s: to_np(s[:, genes].X)),
    }


class _Backed:
    """anndata's own route where ``read_lazy`` cannot go: on an h5ad opened from an fsspec file, read_lazy's
    arrays re-open the file by its name (``h5py.File(Path(filename))`` in anndata's lazy readers), which a file
    object has not; anndata's backed accessors (``ad.io.sparse_dataset``, ``read_elem``) read from the open
    ``h5py.File`` instead.  Keeps the fsspec file open as long as it lives."""

    def __init__(self, url: str):
        import anndata as ad
        import fsspec
        import h5py

        self._fobj = fsspec.open(url, "rb").open()
        self._f = h5py.File(self._fobj, "r")
        self._lazy = ad.experimental.read_lazy(self._f)
        self.shape, self.obs = self._lazy.shape, self._lazy.obs
        self._var_names = list(self._lazy.var_names)
        self.obsm = {"X_pca": ad.io.read_elem(self._f["obsm/X_pca"])}

    def __getitem__(self, key):
        import anndata as ad

        rows, cols = key if isinstance(key, tuple) else (key, slice(None))
        if isinstance(cols, str | list):
            names = [cols] if isinstance(cols, str) else cols
            cols = [self._var_names.index(n) for n in names]

        class _V:
            X = ad.io.sparse_dataset(self._f["X"])[rows, cols]

        return _V


def open_shadow(url: str, storage_options: dict | None = None):
    from shadows.io.remote import forget_blocks

    forget_blocks()  # each case opens the store afresh, as a new process would
    from shadows import AnnDataShadow

    return AnnDataShadow(url, storage_options=storage_options)


def open_lazy(url: str, storage_options: dict | None = None):
    import anndata as ad
    import zarr

    if url.endswith(".h5ad"):
        return _Backed(url)
    store = zarr.storage.FsspecStore.from_url(url, read_only=True, storage_options=storage_options)
    return ad.experimental.read_lazy(zarr.open_group(store, mode="r"))


def _with_column_index(csr: Path, data_dir: Path) -> Path:
    """A copy of the CSR h5ad with shadows' column index of X (made once, kept with the benchmark files)."""
    out = data_dir / csr.name.replace("_csr.h5ad", "_csr_index.h5ad")
    if not out.exists():
        import shutil

        from shadows import AnnDataShadow

        tmp = out.with_suffix(".part")
        shutil.copyfile(csr, tmp)
        with AnnDataShadow(tmp, mode="r+") as s:
            s.add_column_index()
        tmp.rename(out)
    return out


class _S3Counts:
    """Requests and bytes of s3fs calls in this process (moto's server does not count them)."""

    def __init__(self):
        import s3fs

        self.requests = self.bytes = 0
        fs_cls = s3fs.S3FileSystem
        orig_call, orig_cat = fs_cls._call_s3, fs_cls._cat_file
        me = self

        async def call_s3(fs, method, *a, **k):
            me.requests += 1
            return await orig_call(fs, method, *a, **k)

        async def cat_file(fs, path, *a, **k):
            out = await orig_cat(fs, path, *a, **k)
            me.bytes += len(out)
            return out

        fs_cls._call_s3, fs_cls._cat_file = call_s3, cat_file

    def reset(self):
        self.requests = self.bytes = 0

    def totals(self):
        return self.requests, self.bytes


STORES = {  # label -> (protocol, file name on the server for CSR; h5ad cases pick their own file)
    "h5ad": ("http", None),
    "zarr v2": ("http", "csr.v2.zarr"),
    "zarr v3": ("http", "csr.v3.zarr"),
    "zarr v2 on S3": ("s3", "csr.v2.zarr"),
    "zarr v3 on S3": ("s3", "csr.v3.zarr"),
}


def _files(scale: float) -> tuple[dict[str, Path], dict]:
    import anndata as ad

    paths = generate.generate(scale=scale, kinds=("csr", "csc", "zarr"))
    n_obs, n_vars = generate.dims(scale)
    v3 = generate.default_data_dir() / f"cartoon_{n_obs}x{n_vars}_csr.v3.zarr"
    if not v3.exists():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            a = ad.read_zarr(paths["zarr"])
            old = ad.settings.zarr_write_format
            ad.settings.zarr_write_format = 3
            try:
                a.write_zarr(v3)
            finally:
                ad.settings.zarr_write_format = old
            del a
    files = {
        "csr.h5ad": paths["csr"],
        "csc.h5ad": paths["csc"],
        "csr_index.h5ad": _with_column_index(paths["csr"], generate.default_data_dir()),
        "csr.v2.zarr": paths["zarr"],
        "csr.v3.zarr": v3,
    }
    answers = answer_bytes(paths, n_obs)
    answers["1 gene through the column index"] = answers["1 gene of CSC"]
    return files, answers


def _measure(op, opener, counter, repeat: int = 1) -> tuple:
    """Requests, bytes, seconds and error of ``op(opener())``; the time is the best of ``repeat`` runs (the
    machine is shared: one run's time is noise-prone), the counts those of the first (they are the same each run)."""
    first = _measure_once(op, opener, counter)
    times = [first[2]] + [_measure_once(op, opener, counter)[2] for _ in range(repeat - 1)]
    return (first[0], first[1], min(times), first[3])


def _measure_once(op, opener, counter) -> tuple:
    counter.reset()
    t0 = time.perf_counter()
    signal.signal(signal.SIGALRM, _too_slow)
    signal.alarm(CASE_LIMIT_S)
    try:
        op(opener())
        err = ""
    except Exception as e:  # noqa: BLE001 - reported in the table
        err = f"{type(e).__name__}"
    finally:
        signal.alarm(0)
    dt = time.perf_counter() - t0
    return (*counter.totals(), dt, err)


def run(scale: float, latency_ms: float, s3: bool = True, repeat: int = 3) -> list[tuple]:
    files, answers = _files(scale)
    n_obs, n_vars = generate.dims(scale)
    www = Path(tempfile.mkdtemp(prefix="shadows-remote-bench-"))
    for name, p in files.items():
        (www / name).symlink_to(p)
    srv = RangeServer(www, latency=latency_ms / 1000)
    s3srv = s3count = None
    if s3 and not latency_ms:  # (moto adds no latency: S3 is measured once)
        from remote_servers import S3Server

        s3srv = S3Server().start()
        fs = s3srv.filesystem()
        fs.mkdir("bench")
        for name in ("csr.v2.zarr", "csr.v3.zarr"):
            fs.put(str(files[name]), f"bench/{name}", recursive=True)
        s3count = _S3Counts()
    var_names = [f"ENS{i:07d}" for i in range(n_vars)]
    rows = []
    extents: dict[Path, dict[str, list[tuple[int, int]]]] = {}
    from shadows.remote import counting

    try:
        # warm up: imports, connection pools (each measured case then opens its store afresh)
        for store in ("csr.h5ad", "csr.v2.zarr"):
            _ = open_shadow(f"{srv.url}/{store}").shape
            _ = open_lazy(f"{srv.url}/{store}").shape
        for label, (kind, op) in cases(n_obs, var_names).items():
            for store, (proto, name) in STORES.items():
                if (kind != "csr" and store != "h5ad") or (proto == "s3" and s3srv is None):
                    continue  # CSC and the column index: h5ad only; S3: zarr only, once
                if proto == "http":
                    url, so, counter = f"{srv.url}/{name or kind + '.h5ad'}", None, srv
                else:
                    url, so, counter = f"s3://bench/{name}", s3srv.storage_options, s3count
                with counting() as c:
                    sh = _measure_once(op, lambda u=url, o=so: open_shadow(u, o), counter)
                if repeat > 1:  # the best time of `repeat` runs; the counts are the first run's
                    more = [
                        _measure_once(op, lambda u=url, o=so: open_shadow(u, o), counter)[2] for _ in range(1, repeat)
                    ]
                    sh = (sh[0], sh[1], min([sh[2], *more]), sh[3])
                if store == "h5ad":  # values of datasets vs HDF5 metadata, by the file's own layout
                    f = files[name or kind + ".h5ad"]
                    if f not in extents:
                        extents[f] = raw_extents(f)
                    sh = (*sh, *split_bytes(c.spans, extents[f], label))
                lazy = _measure(op, lambda u=url, o=so: open_lazy(u, o), counter, repeat)
                got = {"shadows": sh, "read_lazy": lazy}
                rows.append((label, store, answers[label], got["shadows"], got["read_lazy"]))
                print(rows[-1], file=sys.stderr, flush=True)
    finally:
        srv.stop()
        if s3srv is not None:
            s3srv.stop()
    return rows


def table(rows: list[tuple], scale: float, latency_ms: float) -> str:
    """The markdown table; "bytes goal": shadows' bytes <= 1.5 x the answer's + the store's metadata (what
    shadows fetched for open + shape of the same store)."""
    n_obs, n_vars = generate.dims(scale)
    mb = 2**20
    meta = {store: sh[1] for label, store, _, sh, _ in rows if label == "open + shape"}
    split = [
        "",
        "h5ad: shadows' fetched bytes split by the file's own layout (`raw_extents`: contiguous datasets' "
        '`id.get_offset()`/`get_storage_size()`, chunked ones\' `chunk_iter`): "values read" lie in the raw data '
        'of the datasets the case reads, "other values" in other datasets\' raw data (next to metadata read, '
        'or the var names a gene lookup reads), "metadata" is the rest (superblock, object headers, B-tree nodes, local heaps, and '
        'the global heap that holds variable-length strings\' characters). "values goal": values read <= 1.5 x '
        "answer.",
        "",
        "| case | answer MB | shadows MB | values read MB | other values MB | metadata MB | values read / answer "
        "| values goal |",
        "|---|---:|---:|---:|---:|---:|---:|:---:|",
    ]
    for label, store, answer, sh, _lz in rows:
        if store != "h5ad" or len(sh) < 6:
            continue
        own, other = sh[4], sh[5]
        meta_b = sh[1] - own - other
        ratio = f"{own / answer:.2f}" if answer else "-"
        goal = "-" if not answer else ("yes" if own <= 1.5 * answer else "no")
        split.append(
            f"| {label} | {answer / mb:.3f} | {sh[1] / mb:.3f} | {own / mb:.3f} | {other / mb:.3f} | "
            f"{meta_b / mb:.3f} | {ratio} | {goal} |"
        )
    lines = [
        f"{n_obs:,} x {n_vars:,} cells x genes"
        + (f", HTTP with {latency_ms:.0f} ms added per request" if latency_ms else ", no added latency"),
        "",
        "| case | store | answer MB | shadows: requests / MB / s | anndata: requests / MB / s "
        "| bytes ratio | requests ratio | time ratio | bytes goal |",
        "|---|---|---:|---:|---:|---:|---:|---:|:---:|",
    ]
    for label, store, answer, sh, lz in rows:

        def cell(r):
            return f"{r[0]} / {r[1] / mb:.3f} / {r[2]:.2f}" + (f" ({r[3]})" if r[3] else "")

        ok = not lz[3]
        br = f"{sh[1] / lz[1]:.2f}" if ok and lz[1] else "-"
        rr = f"{sh[0] / lz[0]:.2f}" if ok and lz[0] else "-"
        tr = f"{sh[2] / lz[2]:.2f}" if ok and lz[2] else "-"
        goal = "-" if label == "open + shape" else ("yes" if sh[1] <= 1.5 * answer + meta.get(store, 0) else "no")
        lines.append(
            f"| {label} | {store} | {answer / mb:.3f} | {cell(sh)} | {cell(lz)} | {br} | {rr} | {tr} | {goal} |"
        )
    return "\n".join(lines + split)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scale", type=float, default=1.0)
    p.add_argument("--latency-ms", type=float, nargs="*", default=[0.0, 20.0])
    p.add_argument("--no-s3", action="store_true", help="HTTP only (no moto S3 server)")
    p.add_argument("--repeat", type=int, default=3, help="runs per case; the best time is reported")
    p.add_argument("--out", default="-", help="'-' prints; a path appends the section to that markdown file")
    args = p.parse_args(argv)
    parts = []
    for lat in args.latency_ms:
        parts.append(table(run(args.scale, lat, s3=not args.no_s3, repeat=args.repeat), args.scale, lat))
    text = "\n\n".join(parts)
    print(text)
    if args.out != "-":
        cmd = f"python benchmarks/remote.py --scale {args.scale:g} --latency-ms " + " ".join(
            f"{x:g}" for x in args.latency_ms
        )
        section = f"\n\n## Remote stores\n\nReproduce with `{cmd} --out docs/benchmarks.md`.\n\n{text}\n"
        with open(args.out, "a") as f:
            f.write(section)


if __name__ == "__main__":
    os.environ.setdefault("SHADOWS_PROGRESS", "0")
    main()
