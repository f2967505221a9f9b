"""Paired-ratio benchmarks of shadows against its peers and the floor, warm or from a cold disk, at two shapes.

Usage::

    python benchmarks/harness.py --shape 100k --mode warm [--repeat 5] [--formats csr,csc,zarr] [--cases PAT]
    python benchmarks/harness.py --shape 1m --mode cold --json results.json

Method (also in ``docs/benchmarks.md``):

* Files: ``benchmarks/streamed.py`` (``write_streamed_h5ad``) writes 100k x 5k (10 % non-zero) and 1M x 20k (2.5 %)
  cartoon files, CSR and CSC ``.h5ad`` and CSR ``.zarr``, into ``$SHADOWS_BENCH_DATA/streamed`` if missing.
* Tools of one case: shadows; anndata backed (``read_h5ad(backed="r")``, h5ad only); anndata's ``read_lazy``
  (``anndata.experimental``, xarray/dask); the floor: plain h5py/zarr reading exactly the datasets the answer
  needs (for a gene of CSR: ``indptr``, ``indices`` and ``data`` whole; for cells of CSR: their ranges).
* Every measurement is a fresh Python process: imports, then the setup (for matrix cases the file is opened;
  for open/obs/obsm the open is timed), then (cold mode) every file of the store is evicted from the page cache
  with ``posix_fadvise(POSIX_FADV_DONTNEED)`` and the eviction is checked with ``mincore`` (the resident fraction
  is reported; a case whose eviction left more than 2 % resident is flagged), then the operation is timed and its
  result materialised (``compute()``/``to_memory()``).  Warm mode reads every file of the store once beforehand.
* Repeats: in each of ``--repeat`` (>= 5) rounds every tool runs once, in an order rotated from round to round
  (tool ``k`` first in round ``k``); the ratio shadows/peer is taken within each round and the table shows the
  median ratio over the rounds, its minimum and maximum, and the median time of each tool.  Ratios of paired
  runs survive a loaded machine far better than absolute times.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

MARK = "@@HARNESS@@ "
SHAPES = {"100k": (100_000, 5_000, 0.1), "1m": (1_000_000, 20_000, 0.025)}
GENE = "ENS0000042"
EVICT_LIMIT = 0.02


def data_dir() -> Path:
    return Path(os.environ.get("SHADOWS_BENCH_DATA", Path.home() / ".cache" / "shadows-bench")) / "streamed"


def store(shape: str, fmt: str) -> Path:
    n, m, _ = SHAPES[shape]
    kind, ext = ("csr", ".zarr") if fmt == "zarr" else (fmt, ".h5ad")
    return data_dir() / f"streamed_{n}x{m}_{kind}{ext}"


def ensure(shape: str, fmt: str) -> Path:
    p = store(shape, fmt)
    if not p.exists():
        from streamed import write_streamed_h5ad

        n, m, d = SHAPES[shape]
        p.parent.mkdir(parents=True, exist_ok=True)
        write_streamed_h5ad(p, n, m, density=d, fmt="csr" if fmt == "zarr" else fmt)
    return p


def files_of(path: Path) -> list[Path]:
    return [q for q in path.rglob("*") if q.is_file()] if path.is_dir() else [path]


# --- page cache ---------------------------------------------------------------------------------------------------------
def evict(path: Path) -> None:
    """Drop every file of the store from the page cache (clean pages; nothing here writes to them)."""
    for q in files_of(path):
        fd = os.open(q, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def resident(path: Path) -> float:
    """Fraction of the store's pages in the page cache (``mincore`` of a read-only map of each file)."""
    import ctypes
    import mmap

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    page = mmap.PAGESIZE
    total = inside = 0
    for q in files_of(path):
        size = q.stat().st_size
        if size == 0:
            continue
        fd = os.open(q, os.O_RDONLY)
        try:
            addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
            if addr in (None, ctypes.c_void_p(-1).value):
                continue
            n = (size + page - 1) // page
            vec = (ctypes.c_ubyte * n)()
            if libc.mincore(ctypes.c_void_p(addr), size, vec) == 0:
                total += n
                inside += sum(v & 1 for v in bytes(vec))
            libc.munmap(ctypes.c_void_p(addr), size)
        finally:
            os.close(fd)
    return inside / total if total else 0.0


def warm(path: Path) -> None:
    for q in files_of(path):
        with open(q, "rb", buffering=0) as f:
            while f.read(16 * 2**20):
                pass


# --- child side ---------------------------------------------------------------------------------------------------------
def _cells(n: int, kind: str):
    import numpy as np

    if kind == "cells6":
        k = int(0.9 * n)
        return np.array([0, 3, 5, k, k + 1, k + 2])
    return slice(n // 2, n // 2 + 1000)


def _genes200(n_vars: int) -> list[str]:
    import numpy as np

    pos = np.random.default_rng(42).choice(n_vars, 200, replace=False)
    return [f"ENS{i:07d}" for i in pos]


def _floor_op(spec: dict):
    """Plain h5py/zarr reads of exactly the datasets the answer needs."""
    import numpy as np

    path, case, fmt, n_obs, n_vars = spec["path"], spec["case"], spec["fmt"], spec["n_obs"], spec["n_vars"]
    if fmt == "zarr":
        import zarr

        def root():
            return zarr.open_group(path, mode="r")
    else:
        import h5py

        def root():
            return h5py.File(path, "r")

    if case == "open":
        # the shape of an AnnData is the lengths of obs and var (X may be absent): their index arrays' lengths

        def shape():
            r = root()
            return tuple(r[f"{ax}/{r[ax].attrs['_index']}"].shape[0] for ax in ("obs", "var"))

        return shape
    if case == "obs":

        def obs():  # the column's codes and categories, and the index it is labelled with
            r = root()
            g = r["obs/donor"]
            return g["codes"][:], g["categories"][:], r["obs/_index"][:]

        return obs
    if case == "obsm":
        return lambda: root()["obsm/X_umap"][:]
    f = root()
    X = f["X"]
    if case in ("stats",):
        return lambda: (X["data"][:], X["indices"][:])
    if case == "convert":

        def full():
            out = []
            import h5py

            f.visititems(lambda _n, o: out.append(o[()]) if isinstance(o, h5py.Dataset) else None)
            return len(out)

        return full
    major = (case in ("cells6", "cells1000")) == (fmt != "csc")  # the selection is along the stored major axis
    if not major:
        return lambda: (X["indptr"][:], X["indices"][:], X["data"][:])
    by_name = case not in ("cells6", "cells1000")  # genes are asked for by name: their positions are looked up
    if not by_name:
        sel = _cells(n_obs, case)
    else:
        sel = np.array([int(GENE[3:])]) if case == "gene1" else np.sort([int(g[3:]) for g in _genes200(n_vars)])

    def ranges():
        if by_name:  # the var index read and searched, as any reader asked for genes by name must
            names = f[f"var/{f['var'].attrs['_index']}"][:]
            want = [GENE] if case == "gene1" else _genes200(n_vars)
            look = {v.decode() if isinstance(v, bytes) else str(v): i for i, v in enumerate(names)}
            assert sorted(look[g] for g in want) == sorted(sel.tolist())
        if isinstance(sel, slice):
            ip = X["indptr"][sel.start : sel.stop + 1]
            return X["indices"][ip[0] : ip[-1]], X["data"][ip[0] : ip[-1]]
        ip = X["indptr"]
        out = []
        for i in sel:
            a, b = ip[i : i + 2]
            out.append((X["indices"][a:b], X["data"][a:b]))
        return out

    return ranges


def build(spec: dict):
    tool, case, path = spec["tool"], spec["case"], spec["path"]
    n_obs, n_vars = spec["n_obs"], spec["n_vars"]
    if tool == "floor":
        return _floor_op(spec)
    if case == "gene1":
        sel = (slice(None), GENE)
    elif case == "genes200":
        sel = (slice(None), _genes200(n_vars))
    elif case in ("cells6", "cells1000"):
        sel = (_cells(n_obs, case), slice(None))
    else:
        sel = None
    if tool == "shadows":
        import shadows
        from shadows import AnnDataShadow

        if case == "open":
            return lambda: AnnDataShadow(path).shape
        if case == "obs":
            return lambda: AnnDataShadow(path).obs["donor"]
        if case == "obsm":
            return lambda: AnnDataShadow(path).obsm["X_umap"]
        if case == "convert":
            from shadows import convert

            return lambda: convert(path, spec["out"], matrix_format="csc")
        s = AnnDataShadow(path)
        if case == "stats":
            from shadows import stats

            return lambda: stats(s, axis=0)
        del shadows
        return lambda: s[sel].X
    import anndata as ad

    if tool == "lazy":
        from anndata.experimental import read_lazy

        if case == "open":
            return lambda: read_lazy(path).shape
        if case == "obs":
            return lambda: read_lazy(path).obs["donor"].to_numpy()
        if case == "obsm":
            return lambda: read_lazy(path).obsm["X_umap"].compute()
        a = read_lazy(path)
        return lambda: a[sel].X.compute()
    if tool == "backed":
        if case == "open":
            return lambda: ad.read_h5ad(path, backed="r").shape
        if case == "obs":
            return lambda: ad.read_h5ad(path, backed="r").obs["donor"]
        if case == "obsm":
            return lambda: ad.read_h5ad(path, backed="r").obsm["X_umap"]
        a = ad.read_h5ad(path, backed="r")
        return lambda: a[sel].X
    raise ValueError(tool)


def _materialize(x):
    # asked of the type, not the object: ``hasattr(series, "to_memory")`` looks the name up among a pandas Series'
    # index labels, which builds the index's hash table (0.13 s for 1M obs names) inside the timed region
    for _ in range(3):
        if hasattr(type(x), "to_memory"):
            x = x.to_memory()
        elif hasattr(type(x), "compute"):
            x = x.compute()
    return x


def _fingerprint(x) -> dict:
    import numpy as np
    import scipy.sparse as sp

    if sp.issparse(x):
        return {"shape": list(x.shape), "nnz": int(x.nnz), "sum": round(float(x.sum(dtype=np.float64)), 1)}
    if isinstance(x, np.ndarray) and x.dtype.kind in "biuf":
        return {"shape": list(x.shape), "sum": round(float(x.sum(dtype=np.float64)), 1)}
    return {"shape": list(getattr(x, "shape", ()))}


def child() -> None:
    import gc

    spec = json.loads(sys.stdin.read())
    out: dict = {}
    try:
        import anndata  # noqa: F401
        import h5py  # noqa: F401
        import numpy  # noqa: F401
        import scipy.sparse  # noqa: F401
        import zarr  # noqa: F401

        if spec["tool"] == "shadows":
            import shadows  # noqa: F401
        if spec["tool"] == "lazy":
            import anndata.experimental  # noqa: F401
            import xarray  # noqa: F401
        op = build(spec)
        gc.collect()
        if spec["mode"] == "cold":
            evict(Path(spec["path"]))
            out["resident"] = resident(Path(spec["path"]))
        with open("/proc/self/status") as f:
            base = int(next(line for line in f if line.startswith("VmRSS")).split()[1])
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        t0 = time.perf_counter()
        res = _materialize(op())
        dt = time.perf_counter() - t0
        with open("/proc/self/status") as f:
            peak = int(next(line for line in f if line.startswith("VmHWM")).split()[1])
        out.update(time_s=dt, peak_mb=max(0, peak - base) / 1024, fingerprint=_fingerprint(res))
    except Exception as e:  # reported in the table
        out = {"error": f"{type(e).__name__}: {e}"[:300]}
    print("\n" + MARK + json.dumps(out), flush=True)


# --- parent side --------------------------------------------------------------------------------------------------------
CASES = {
    "open": "open + shape",
    "obs": "open + obs['donor']",
    "obsm": "open + obsm['X_umap']",
    "gene1": f"1 gene ({GENE})",
    "genes200": "200 random genes",
    "cells6": "6 scattered cells",
    "cells1000": "1000 contiguous cells",
    "stats": "stats(axis=0)",
    "convert": "convert to CSC .h5ad",
}


def tools_for(fmt: str, case: str) -> list[str]:
    if case in ("stats", "convert"):
        return ["shadows", "floor"]
    return ["shadows", "backed", "lazy", "floor"] if fmt != "zarr" else ["shadows", "lazy", "floor"]


def run_one(spec: dict, timeout: float) -> dict:
    env = {**os.environ, "PYTHONHASHSEED": "0", "SHADOWS_PROGRESS": "0", "PYTHONPATH": str(REPO)}
    try:
        p = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--child"],
            input=json.dumps(spec),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            cwd=str(REPO),
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout:.0f} s"}
    for line in reversed(p.stdout.splitlines()):
        if line.startswith(MARK):
            return json.loads(line[len(MARK) :])
    return {"error": f"no result (rc {p.returncode}): {p.stderr[-300:]}"}


def measure_case(shape: str, fmt: str, case: str, mode: str, repeat: int, timeout: float, work: Path) -> dict:
    n, m, _ = SHAPES[shape]
    path = ensure(shape, fmt)
    tools = tools_for(fmt, case)
    runs: dict[str, list[dict]] = {t: [] for t in tools}
    dead: set[str] = set()
    for r in range(repeat):
        order = tools[r % len(tools) :] + tools[: r % len(tools)]
        for tool in order:
            if tool in dead:
                continue
            spec = {"tool": tool, "case": case, "fmt": fmt, "path": str(path), "n_obs": n, "n_vars": m, "mode": mode}
            if case == "convert":
                spec["out"] = str(work / f"converted_{tool}.h5ad")
                Path(spec["out"]).unlink(missing_ok=True)  # (the measured write creates it)
            if mode == "warm" and resident(path) < 0.95:  # (re-read only what another process pushed out)
                warm(path)
            res = run_one(spec, timeout)
            runs[tool].append(res)
            if "error" in res:
                dead.add(tool)  # a tool that fails or times out once is not run again for this case
    return {"shape": shape, "fmt": fmt, "case": case, "mode": mode, "runs": runs, "repeat": repeat}


def summarize(row: dict) -> dict:
    runs = row["runs"]
    s = runs["shadows"]
    out = {"shadows_ms": None, "peers": {}, "flags": []}
    st = [x["time_s"] for x in s if "time_s" in x]
    if st:
        out["shadows_ms"] = statistics.median(st) * 1e3
        out["shadows_spread"] = max(st) / min(st)
        out["shadows_mb"] = statistics.median(x["peak_mb"] for x in s if "peak_mb" in x)
    errs = [x["error"] for x in s if "error" in x]
    if errs:
        out["flags"].append(f"shadows: {errs[0]}")
    res = [x.get("resident") for t in runs.values() for x in t if x.get("resident") is not None]
    if res:
        out["max_resident"] = max(res)
        if max(res) > EVICT_LIMIT:
            out["flags"].append(f"eviction left {max(res):.0%} resident")
    for peer, pr in runs.items():
        if peer == "shadows":
            continue
        pairs = [(a["time_s"], b["time_s"]) for a, b in zip(s, pr, strict=False) if "time_s" in a and "time_s" in b]
        perr = [x["error"] for x in pr if "error" in x]
        info = {"n": len(pairs)}
        if pairs:
            ratios = [a / b for a, b in pairs]
            info.update(
                ratio=statistics.median(ratios),
                lo=min(ratios),
                hi=max(ratios),
                ms=statistics.median(b for _, b in pairs) * 1e3,
                mb=statistics.median(x["peak_mb"] for x in pr if "peak_mb" in x),
            )
        if perr:
            info["error"] = perr[0]
        if peer != "floor":
            fa = next((x.get("fingerprint") for x in s if "fingerprint" in x), None)
            fb = next((x.get("fingerprint") for x in pr if "fingerprint" in x), None)
            if (
                fa
                and fb
                and "sum" in fa
                and "sum" in fb
                and (fa["shape"] != fb["shape"] or abs(fa["sum"] - fb["sum"]) > 1e-6 * max(1.0, abs(fb["sum"])))
            ):
                out["flags"].append(f"result differs from {peer}: {fa} vs {fb}")
        out["peers"][peer] = info
    return out


def _r(info: dict | None) -> str:
    if not info:
        return "—"
    if "ratio" not in info:
        return "fails" if "timeout" not in info.get("error", "") else "timeout"
    return f"{info['ratio']:.2f} ({info['lo']:.2f}–{info['hi']:.2f})"


def table(rows: list[dict]) -> str:
    head = (
        "| file | case | shadows ms (spread) | shadows MB | ÷ floor | ÷ backed | ÷ read_lazy | floor ms | backed ms | "
        "read_lazy ms | notes |\n|---|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for row in rows:
        sm = summarize(row)
        p = sm["peers"]

        def ms(k, p=p):
            v = p.get(k, {}).get("ms")
            return f"{v:,.1f}" if v is not None else "—"

        sms = f"{sm['shadows_ms']:,.1f} (×{sm['shadows_spread']:.1f})" if sm["shadows_ms"] is not None else "fails"
        mb = f"{sm.get('shadows_mb', 0):,.0f}" if sm["shadows_ms"] is not None else "—"
        lines.append(
            f"| {row['fmt']} | {CASES[row['case']]} | {sms} | {mb} | {_r(p.get('floor'))} | {_r(p.get('backed'))} | "
            f"{_r(p.get('lazy'))} | {ms('floor')} | {ms('backed')} | {ms('lazy')} | {'; '.join(sm['flags'])} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="100k")
    ap.add_argument("--mode", choices=["warm", "cold"], default="warm")
    ap.add_argument("--formats", default="csr,csc,zarr")
    ap.add_argument("--cases", default=".*", help="regular expression on case ids: " + ", ".join(CASES))
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per measurement (a peer past it is dropped)")
    ap.add_argument("--json", default=None, help="append the raw runs to this JSON-lines file")
    args = ap.parse_args(argv)
    if args.repeat < 5:
        print("note: fewer than 5 repeats; the method asks for at least 5", file=sys.stderr)
    work = data_dir() / "_harness_work"
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    load0 = os.getloadavg()
    t0 = time.time()
    for fmt in [f.strip() for f in args.formats.split(",") if f.strip()]:
        for case in CASES:
            if not re.search(args.cases, case) or (case in ("stats", "convert") and fmt != "csr"):
                continue
            row = measure_case(args.shape, fmt, case, args.mode, args.repeat, args.timeout, work)
            rows.append(row)
            print(table([row]).splitlines()[-1], flush=True)
            if args.json:
                with open(args.json, "a") as f:
                    f.write(json.dumps(row) + "\n")
    n, m, d = SHAPES[args.shape]
    print(
        f"\n{n:,} x {m:,} ({d:.1%}), {args.mode}, {args.repeat} rounds, {time.time() - t0:.0f} s, "
        f"load average {load0[0]:.1f} -> {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )
    print(table(rows))
    return 0


if __name__ == "__main__":
    if "--child" in sys.argv:
        child()
    else:
        sys.exit(main())
