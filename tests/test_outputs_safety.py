"""Outputs never delete what the library did not create, and leave nothing behind when they fail or are killed.

* an existing directory given as a destination survives every output function (``write_h5ad``/``write_zarr``/
  ``write(path)`` of shadows and views, :func:`shadows.convert`, :mod:`shadows.pp`), with or without
  ``overwrite=True``; an existing file or zarr store is replaced only with ``overwrite=True``;
* :func:`shadows.repack` keeps the file's permission bits;
* temporary files (``.tmp`` staging of outputs, ``.repack`` copies, column-index staging) are removed when the
  operation fails, and those of a process killed with SIGKILL are removed by the next run on the same destination.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import stat
import threading
import time
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from oracle import assert_adata_equal, read_oracle, store_path, write_adata
from test_write_crash import Children

import shadows
from shadows import AnnDataShadow
from shadows.io import commit_guard
from shadows.stream import sink

FORMATS = [("h5ad", None), ("zarr", 2), ("zarr", 3)]
FORMAT_IDS = ["h5ad", "zarr2", "zarr3"]


def small_adata(n_obs: int = 40, n_vars: int = 12) -> ad.AnnData:
    rng = np.random.default_rng(0)
    a = ad.AnnData(
        X=sp.random(n_obs, n_vars, density=0.3, format="csr", random_state=0, dtype=np.float32),
        obs=pd.DataFrame({"g": pd.Categorical(rng.choice(["a", "b"], n_obs))}, index=[f"c{i}" for i in range(n_obs)]),
        var=pd.DataFrame(index=[f"g{j}" for j in range(n_vars)]),
    )
    a.layers["counts"] = a.X.copy()
    a.obsm["X_pca"] = rng.normal(size=(n_obs, 3)).astype(np.float32)
    a.uns["params"] = {"k": 3}
    return a


@pytest.fixture
def source(tmp_path) -> Path:
    return Path(write_adata(small_adata(), tmp_path / "src.h5ad"))


def tree_digest(path: Path) -> dict[str, str]:
    """Every file below ``path`` with the hash of its bytes (what must survive untouched)."""
    if path.is_file():
        return {".": hashlib.sha256(path.read_bytes()).hexdigest()}
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(path.rglob("*"))
    }


def user_directory(tmp_path: Path, name: str = "results") -> Path:
    d = tmp_path / name
    (d / "sub").mkdir(parents=True)
    (d / "notes.txt").write_text("a week of work")
    (d / "sub" / "figure.png").write_bytes(b"\x89PNG" + bytes(range(256)))
    return d


def leftovers(directory: Path) -> list[str]:
    """Temporary entries of the library in ``directory`` (after the background removals have finished)."""
    for t in threading.enumerate():
        if t.name == "shadows-remove-old":
            t.join()
    return sorted(p.name for p in directory.iterdir() if ".shadows-" in p.name)


def output_calls(src: Path):
    """Every output function, as ``(name, call(dst, **kw), format)``."""

    def shadow_call(method, view=False):
        def call(dst, **kw):
            with AnnDataShadow(src) as s:
                target = s[:10, :5] if view else s
                getattr(target, method)(dst, **kw)

        return call

    return [
        ("view.write_h5ad", shadow_call("write_h5ad", view=True), "h5ad"),
        ("write_h5ad", shadow_call("write_h5ad"), "h5ad"),
        ("write(path)", shadow_call("write"), "h5ad"),
        ("view.write_zarr", shadow_call("write_zarr", view=True), "zarr"),
        ("write_zarr", shadow_call("write_zarr"), "zarr"),
        ("convert", lambda dst, **kw: shadows.convert(src, dst, "csc", file_format="h5ad", **kw), "h5ad"),
        ("convert zarr", lambda dst, **kw: shadows.convert(src, dst, "csc", file_format="zarr", **kw), "zarr"),
        ("normalize_total", lambda dst, **kw: shadows.pp.normalize_total(src, dst, file_format="h5ad", **kw), "h5ad"),
        ("log1p zarr", lambda dst, **kw: shadows.pp.log1p(src, dst, file_format="zarr", **kw), "zarr"),
    ]


# --- destinations -----------------------------------------------------------------------------------------------------
def test_user_directory_survives_every_output(tmp_path, source):
    d = user_directory(tmp_path)
    before = tree_digest(d)
    for name, call, fmt in output_calls(source):
        for kw in ({}, {"overwrite": True}):
            # anndata raises IsADirectoryError for an h5ad file over a directory; a zarr store never replaces a
            # directory that is not one
            want = IsADirectoryError if fmt == "h5ad" else FileExistsError
            with pytest.raises(want, match="results"):
                call(d, **kw)
            assert tree_digest(d) == before, f"{name}({kw}) changed the user's directory"
    assert leftovers(tmp_path) == []


def test_directory_with_zarr_metadata_and_other_files_is_not_replaced(tmp_path, source):
    d = user_directory(tmp_path, "looks_like.zarr")
    (d / ".zgroup").write_text('{"zarr_format": 2}')  # a zarr group, but holding the user's files
    before = tree_digest(d)
    with AnnDataShadow(source) as s, pytest.raises(FileExistsError, match="notes.txt"):
        s.write_zarr(d, overwrite=True)
    assert tree_digest(d) == before


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
@pytest.mark.parametrize(("fmt", "zarr_format"), FORMATS, ids=FORMAT_IDS)
def test_existing_output_replaced_only_with_overwrite(tmp_path, source, monkeypatch, fmt, zarr_format, exchange):
    if not exchange:  # the portable path (no renameat2): a second name for the old output, then a rename
        monkeypatch.setattr(sink, "_renameat2", lambda: None)
    dst = Path(store_path(tmp_path, fmt, zarr_format, stem="out"))
    kw = {"zarr_format": zarr_format} if zarr_format else {}
    write = "write_zarr" if fmt == "zarr" else "write_h5ad"
    with AnnDataShadow(source) as s:
        getattr(s[:5], write)(dst, **kw)
        first = tree_digest(dst)
        with pytest.raises(FileExistsError, match="overwrite=True"):
            getattr(s, write)(dst, **kw)
        assert tree_digest(dst) == first
        getattr(s, write)(dst, overwrite=True, **kw)
        assert_adata_equal(read_oracle(dst), read_oracle(source), "replaced output", vectors=False)
    assert leftovers(tmp_path) == []


def test_file_in_place_of_a_zarr_store_is_never_replaced(tmp_path, source):
    f = tmp_path / "data.zarr"
    f.write_text("not a store")
    with AnnDataShadow(source) as s:
        for kw in ({}, {"overwrite": True}):
            with pytest.raises(FileExistsError, match="not a zarr store"):
                s.write_zarr(f, **kw)
    assert f.read_text() == "not a store"


def test_convert_and_pp_refuse_an_existing_file_before_any_work(tmp_path, source):
    out = tmp_path / "out.h5ad"
    out.write_bytes(b"the user's own file")
    for call in (
        lambda **kw: shadows.convert(source, out, "csc", **kw),
        lambda **kw: shadows.pp.normalize_total(source, out, **kw),
        lambda **kw: shadows.pp.log1p(source, out, **kw),
    ):
        with pytest.raises(FileExistsError, match="overwrite=True"):
            call()
        assert out.read_bytes() == b"the user's own file"
    shadows.pp.log1p(source, out, overwrite=True)
    assert "log1p" in read_oracle(out).uns


def test_failed_output_leaves_no_staging(tmp_path, source):
    dst = tmp_path / "out.zarr"
    for exc in (RuntimeError("boom"), KeyboardInterrupt()):

        def hook(name, exc=exc):
            if name == "output.staged":
                raise exc

        previous = commit_guard.set_hook(hook)
        try:
            with AnnDataShadow(source) as s, pytest.raises(type(exc)):
                s.write_zarr(dst)
        finally:
            commit_guard.set_hook(previous)
        assert not dst.exists()
        assert leftovers(tmp_path) == []


def test_stale_names_of_live_or_foreign_processes_are_left_alone(tmp_path, source):
    dst = tmp_path / "out.h5ad"
    host = sink._host()
    alive = tmp_path / f".out.h5ad.shadows-{host}-{os.getppid()}-0123abcd.tmp"  # pytest's parent: alive
    other_host = tmp_path / f".out.h5ad.shadows-{'0' * 8 if host != '0' * 8 else '1' * 8}-999999-0123abcd.tmp"
    user_file = tmp_path / ".out.h5ad.shadows-backup.tmp"  # the user's name: not ours
    for p in (alive, other_host, user_file):
        p.write_text("keep")
    with AnnDataShadow(source) as s:
        s.write_h5ad(dst)
    assert all(p.read_text() == "keep" for p in (alive, other_host, user_file))


# --- repack -----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", [0o640, 0o444, 0o664])
def test_repack_keeps_permission_bits(tmp_path, source, mode):
    os.chmod(source, mode)
    shadows.repack(source)
    assert stat.S_IMODE(os.stat(source).st_mode) == mode
    assert_adata_equal(read_oracle(source), small_adata(), "repacked", vectors=False)


def test_failed_repack_leaves_no_copy(tmp_path, source):
    digest = tree_digest(source)
    for exc in (RuntimeError("boom"), KeyboardInterrupt()):

        def hook(name, exc=exc):
            if name == "repack.element":
                raise exc

        previous = commit_guard.set_hook(hook)
        try:
            with pytest.raises(type(exc)):
                shadows.repack(source)
        finally:
            commit_guard.set_hook(previous)
        assert tree_digest(source) == digest
        assert leftovers(tmp_path) == []


# --- killed processes -------------------------------------------------------------------------------------------------
# The child: imports, then takes its orders (code to run, and a commit point to pause at) on stdin.
_CHILD = """
import json, sys, time
from shadows.io import commit_guard
from shadows.stream import sink
import shadows
from shadows import AnnDataShadow

print("ready", flush=True)
cfg = json.loads(sys.stdin.readline())
if cfg.get("no_renameat2"):
    sink._renameat2 = lambda: None

def hook(name):
    if name == cfg.get("point"):
        print(f"paused at {name}", flush=True)
        time.sleep(600)  # the parent kills us here

commit_guard.set_hook(hook)
print("running", flush=True)
exec(cfg["code"])
print("done", flush=True)
"""


def run_and_kill(children: Children, code: str, *, point=None, grow=None, no_renameat2=False) -> str:
    """Run ``code`` in a child and SIGKILL it at commit ``point``, or once ``grow()`` (bytes written) says so."""
    p = children.take()
    p.stdin.write(json.dumps({"code": code, "point": point, "no_renameat2": no_renameat2}) + "\n")
    p.stdin.flush()
    assert p.stdout.readline().strip() == "running", p.err_path.read_text()[-2000:]
    if point is not None:
        line = p.stdout.readline().strip()
        assert line == f"paused at {point}", f"{line!r}: {p.err_path.read_text()[-2000:]}"
        outcome = f"killed at {point}"
    else:
        deadline = time.monotonic() + 120
        while not grow() and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        outcome = "killed while writing"
    p.send_signal(signal.SIGKILL)
    p.wait()
    if "done" in p.stdout.read():
        outcome = "finished"
    p.stdout.close()
    p.stdin.close()
    return outcome


def staged_bytes(directory: Path, suffix: str) -> int:
    """Bytes under the library's temporary entries ending in ``suffix`` (entries may vanish while counted)."""
    total = 0
    for p in directory.iterdir():
        if ".shadows-" in p.name and p.name.endswith(suffix):
            total += tree_bytes(p)
    return total


def tree_bytes(p: Path) -> int:
    files = [str(p)] if not p.is_dir() else [os.path.join(d, f) for d, _, fs in os.walk(p) for f in fs]
    total = 0
    for f in files:
        try:
            total += os.stat(f).st_size
        except FileNotFoundError:  # moved or removed meanwhile
            pass
    return total


def large_source(tmp_path: Path, n_obs: int = 3000, n_vars: int = 1000) -> Path:
    """About 12 MB of dense layer: long enough to kill a writer in the middle of it."""
    a = small_adata(n_obs, n_vars)
    a.layers["dense"] = np.random.default_rng(1).random((n_obs, n_vars), dtype=np.float32)
    return Path(write_adata(a, tmp_path / "big.h5ad"))


@pytest.mark.parametrize(("fmt", "zarr_format"), FORMATS, ids=FORMAT_IDS)
def test_killed_streamed_write_is_cleaned_by_the_next_one(tmp_path, fmt, zarr_format):
    src = large_source(tmp_path)
    dst = Path(store_path(tmp_path, fmt, zarr_format, stem="out"))
    method = "write_zarr" if fmt == "zarr" else "write_h5ad"
    kw = f", zarr_format={zarr_format}" if zarr_format else ""
    code = f"AnnDataShadow({str(src)!r}).{method}({str(dst)!r}, overwrite=True{kw})"
    children = Children(4, tmp_path, script=_CHILD)
    report = []
    try:
        # killed in the data, then at the last point before the output moves into place
        outcome = run_and_kill(children, code, grow=lambda: staged_bytes(tmp_path, ".tmp") > 3e6)
        report.append(outcome)
        assert not dst.exists(), "a killed write left a destination"
        assert leftovers(tmp_path), "the kill came too late to leave a staging output (test is void)"
        report.append(run_and_kill(children, code, point="output.staged"))
        assert not dst.exists()
        # the next write of the same destination removes both staging outputs and completes
        with AnnDataShadow(src) as s:
            getattr(s, method)(dst, **({"zarr_format": zarr_format} if zarr_format else {}))
        assert leftovers(tmp_path) == []
        assert_adata_equal(read_oracle(dst), read_oracle(src), "output", vectors=False)
        # replacing it: killed between moving the old output aside and moving the new one in (no renameat2)
        report.append(run_and_kill(children, code, point="output.old_aside", no_renameat2=True))
        assert leftovers(tmp_path)
        if dst.exists():  # h5ad: the old file had a second name, the destination never went missing
            assert_adata_equal(read_oracle(dst), read_oracle(src), "output", vectors=False)
        else:  # zarr: the next write first puts the old store back (and refuses it here: no overwrite=True)
            with AnnDataShadow(src) as s, pytest.raises(FileExistsError):
                getattr(s, method)(dst)
            assert_adata_equal(read_oracle(dst), read_oracle(src), "restored output", vectors=False)
        report.append(run_and_kill(children, code, point="output.staged"))
        with AnnDataShadow(src) as s:
            getattr(s, method)(dst, overwrite=True)
        assert leftovers(tmp_path) == []
        assert_adata_equal(read_oracle(dst), read_oracle(src), "output", vectors=False)
    finally:
        children.close()
    print(f"\n{fmt}{zarr_format or ''}: {report}")
    assert "finished" not in report


def test_killed_repack_is_cleaned_by_the_next_one(tmp_path):
    src = large_source(tmp_path)
    os.chmod(src, 0o640)
    want = read_oracle(src)
    code = f"shadows.repack({str(src)!r})"
    children = Children(2, tmp_path, script=_CHILD)
    report = []
    try:
        report.append(run_and_kill(children, code, grow=lambda: staged_bytes(tmp_path, ".repack") > 3e6))
        first = leftovers(tmp_path)
        assert first, "the kill came too late to leave a .repack copy (test is void)"
        report.append(run_and_kill(children, code, point="repack.copied"))
        second = leftovers(tmp_path)
        assert len(second) == 1 and second != first, "the second repack removes the first one's copy"
        assert_adata_equal(read_oracle(src), want, "file after killed repacks", vectors=False)
        with h5py.File(src, "r+"):  # no lock left behind
            pass
    finally:
        children.close()
    shadows.repack(src)
    assert leftovers(tmp_path) == []
    assert stat.S_IMODE(os.stat(src).st_mode) == 0o640
    assert_adata_equal(read_oracle(src), want, "repacked", vectors=False)
    print(f"\nrepack: {report}")
    assert "finished" not in report


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_killed_column_index_staging_is_cleaned(tmp_path, zarr_format):
    a = small_adata(300, 40)
    path = Path(write_adata(a, tmp_path / f"ci.v{zarr_format}.zarr", zarr_format=zarr_format))
    code = f"AnnDataShadow({str(path)!r}, mode='r+').add_column_index()"
    xdir = path / "X"

    def staging() -> list[Path]:
        return sorted(p for p in xdir.iterdir() if p.name.startswith("shadows_column_index.staging"))

    children = Children(1, tmp_path, script=_CHILD)
    try:
        outcome = run_and_kill(children, code, point="column_index.staged")  # built, not yet moved in
    finally:
        children.close()
    assert outcome != "finished"
    assert len(staging()) == 1, "a killed build leaves its staging directory"
    live = xdir / sink.temp_name("shadows_column_index.staging-", "")  # this process's: alive, left alone
    live.mkdir()
    with AnnDataShadow(path, mode="r+") as s:
        s.add_column_index()
    assert staging() == [live]
    live.rmdir()
    assert (xdir / "shadows_column_index").is_dir()
    assert_adata_equal(read_oracle(path), a, "indexed store", vectors=False)


def output_bytes(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


@pytest.mark.slow
@pytest.mark.parametrize(("fmt", "zarr_format"), FORMATS, ids=FORMAT_IDS)
def test_killed_streamed_write_at_many_points_large(tmp_path, fmt, zarr_format):
    # ~100 MB of output per attempt, killed at nine points of its data and at each commit point
    src = large_source(tmp_path, 6000, 4000)
    dst = Path(store_path(tmp_path, fmt, zarr_format, stem="out"))
    method = "write_zarr" if fmt == "zarr" else "write_h5ad"
    kw = {"zarr_format": zarr_format} if zarr_format else {}
    with AnnDataShadow(src) as s:
        getattr(s, method)(dst, **kw)
    total = output_bytes(dst)
    code = f"AnnDataShadow({str(src)!r}).{method}({str(dst)!r}, overwrite=True, **{kw!r})"
    fractions = (0.05, 0.15, 0.3, 0.45, 0.6, 0.7, 0.8, 0.9, 0.97)
    points = ("output.staged", "output.old_aside")
    children = Children(len(fractions) + len(points), tmp_path, script=_CHILD)
    report = []
    try:
        for f in fractions:
            grow = lambda f=f: staged_bytes(tmp_path, ".tmp") > f * total  # noqa: E731
            report.append((f, run_and_kill(children, code, grow=grow)))
            assert_adata_equal(read_oracle(dst), read_oracle(src), f"output after a kill at {f}", vectors=False)
            assert len(leftovers(tmp_path)) <= 1, "each run removes what the killed one before it left"
        for point in points:
            report.append((point, run_and_kill(children, code, point=point, no_renameat2=True)))
    finally:
        children.close()
    with AnnDataShadow(src) as s:
        getattr(s, method)(dst, overwrite=True, **kw)
    assert leftovers(tmp_path) == []
    assert_adata_equal(read_oracle(dst), read_oracle(src), "final output", vectors=False)
    print(f"\n{fmt}{zarr_format or ''}: {total / 1e6:.0f} MB output, kills: {report}")
    # an HDF5 output grows in jumps (space is reserved ahead of raw writes): one kill may come after the commit
    assert sum(r[1] != "finished" for r in report) >= len(report) - 1


def test_mudata_outputs_refuse_existing_destinations(tmp_path):
    """MuData streams through the same outputs: an existing file needs overwrite=True, a user's folder survives,
    and a modality's name that zarr cannot take is refused before anything is written."""
    md = pytest.importorskip("mudata")
    from shadows import MuDataShadow

    rng = np.random.default_rng(0)
    mods = {name: ad.AnnData(rng.normal(size=(6, n)).astype(np.float32)) for name, n in (("rna", 4), ("prot", 3))}
    md.MuData(mods).write(tmp_path / "a.h5mu")
    m = MuDataShadow(tmp_path / "a.h5mu")
    m.write_h5mu(tmp_path / "b.h5mu")
    before = hashlib.sha256((tmp_path / "b.h5mu").read_bytes()).hexdigest()
    with pytest.raises(FileExistsError):
        m.write_h5mu(tmp_path / "b.h5mu")
    assert hashlib.sha256((tmp_path / "b.h5mu").read_bytes()).hexdigest() == before
    m.write(tmp_path / "b.h5mu", overwrite=True)
    assert md.read_h5mu(tmp_path / "b.h5mu").shape == (6, 7)
    user = tmp_path / "user"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    for dst, fmt in ((user, "h5mu"), (user, "zarr")):
        with pytest.raises((IsADirectoryError, FileExistsError)):
            getattr(m, f"write_{fmt}")(dst, overwrite=True)
    assert (user / "notes.txt").read_text() == "mine"
