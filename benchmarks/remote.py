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


def cases(n_obs: int, var_names: list[str]):
    cells = sorted(c % n_obs for c in CELLS6)
    a = n_obs // 2
    gene, genes = var_names[42], var_names[1000:1200]

    def to_np(x):
        if hasattr(x, "compute"):
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
        "200 genes of CSC": ("csc", lambda s: to_np(s[:, genes].X)),
    }


def open_shadow(url: str):
    from shadows.io.remote import forget_blocks

    forget_blocks()  # each case opens the store afresh, as a new process would
    from shadows import AnnDataShadow

    return AnnDataShadow(url)


def open_lazy(url: str):
    import anndata as ad
    import fsspec
    import h5py
    import zarr

    if url.endswith(".h5ad"):
        return ad.experimental.read_lazy(h5py.File(fsspec.open(url, "rb").open(), "r"))
    store = zarr.storage.FsspecStore.from_url(url, read_only=True)
    return ad.experimental.read_lazy(zarr.open_group(store, mode="r"))


def run(scale: float, latency_ms: float) -> list[tuple]:
    import anndata as ad

    paths = generate.generate(scale=scale, kinds=("csr", "csc", "zarr"))
    n_obs, n_vars = generate.dims(scale)
    www = Path(tempfile.mkdtemp(prefix="shadows-remote-bench-"))
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
    for name, p in {
        "csr.h5ad": paths["csr"],
        "csc.h5ad": paths["csc"],
        "csr.v2.zarr": paths["zarr"],
        "csr.v3.zarr": v3,
    }.items():
        (www / name).symlink_to(p)
    answers = answer_bytes(paths, n_obs)
    srv = RangeServer(www, latency=latency_ms / 1000)
    var_names = [f"ENS{i:07d}" for i in range(n_vars)]
    rows = []
    try:
        for label, (kind, op) in cases(n_obs, var_names).items():
            for store in ("h5ad", "zarr v2", "zarr v3"):
                if kind == "csc" and store != "h5ad":
                    continue  # the zarr copies are CSR
                name = {"h5ad": f"{kind}.h5ad", "zarr v2": "csr.v2.zarr", "zarr v3": "csr.v3.zarr"}[store]
                url = f"{srv.url}/{name}"
                got = {}
                for who, opener in (("shadows", open_shadow), ("read_lazy", open_lazy)):
                    srv.reset()
                    t0 = time.perf_counter()
                    signal.signal(signal.SIGALRM, _too_slow)
                    signal.alarm(CASE_LIMIT_S)
                    try:
                        op(opener(url))
                        err = ""
                    except Exception as e:  # noqa: BLE001 - reported in the table
                        err = f"{type(e).__name__}"
                    finally:
                        signal.alarm(0)
                    dt = time.perf_counter() - t0
                    got[who] = (*srv.totals(), dt, err)
                rows.append((label, store, answers[label], got["shadows"], got["read_lazy"]))
                print(rows[-1], file=sys.stderr)
    finally:
        srv.stop()
    return rows


def table(rows: list[tuple], scale: float, latency_ms: float) -> str:
    n_obs, n_vars = generate.dims(scale)
    mb = 2**20
    lines = [
        f"{n_obs:,} x {n_vars:,} cells x genes over HTTP on 127.0.0.1"
        + (f", {latency_ms:.0f} ms added per request" if latency_ms else ", no added latency"),
        "",
        "| case | store | answer MB | shadows: requests / MB / s | read_lazy: requests / MB / s | bytes ratio | time ratio |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for label, store, answer, sh, lz in rows:

        def cell(r):
            return f"{r[0]} / {r[1] / mb:.2f} / {r[2]:.2f}" + (f" ({r[3]})" if r[3] else "")

        br = f"{sh[1] / lz[1]:.2f}" if lz[1] and not lz[3] else "-"
        tr = f"{sh[2] / lz[2]:.2f}" if lz[2] and not lz[3] else "-"
        lines.append(f"| {label} | {store} | {answer / mb:.2f} | {cell(sh)} | {cell(lz)} | {br} | {tr} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scale", type=float, default=1.0)
    p.add_argument("--latency-ms", type=float, nargs="*", default=[0.0, 20.0])
    p.add_argument("--out", default="-", help="'-' prints; a path appends the section to that markdown file")
    args = p.parse_args(argv)
    parts = []
    for lat in args.latency_ms:
        parts.append(table(run(args.scale, lat), args.scale, lat))
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
