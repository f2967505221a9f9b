"""Fault injection for writes into zarr stores (v2 and v3, with and without consolidated metadata).

One write exercises every write path at once: X replaced, an obsm entry added and one replaced, a layer deleted,
obs columns added, replaced and removed, a var column added, a nested uns entry replaced and one added, raw
replaced.  The writer is a real subprocess (the harness of ``test_write_crash``) killed with SIGKILL at every commit
point (:mod:`shadows.io.commit_guard`) and at random times, or sent a real SIGINT; ``KeyboardInterrupt`` and another
exception are raised in-process at every commit point.  After each fault:

* anndata reads the store; every element is its old value or its new value, complete (an added one may be absent,
  a deleted one still present);
* consolidated metadata, when present, list exactly what is on disk;
* the next write (``overwrite=True``) succeeds, the store then reads as the new values, no staging directory and
  no orphan (a column directory that ``column-order`` does not name) is left, and the store is consolidated iff it
  was before.

Concurrent readers (another process looping over ``anndata.read_zarr``, ``zarr.open_group`` and a fresh
``AnnDataShadow`` while a writer replaces elements) must never find a replaced element missing.

The default run has a few points per store kind; the ``slow`` tests run every point and 100+ random kills.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import zarr
from oracle import quiet, read_oracle, store_path, write_adata
from test_write_crash import Children

import shadows.io.commit_guard as commit_guard
from shadows import AnnDataShadow
from shadows.writeback.zarr import consolidated_kind

N_OBS, N_VARS = 200, 20
KINDS = [(2, True), (2, False), (3, True), (3, False)]
KIND_IDS = ["v2-consolidated", "v2-plain", "v3-consolidated", "v3-plain"]

# The write (exec'd in a child writer of test_write_crash, or here): new values are all derived from cfg["v"].
EDITS = """
import numpy as np, pandas as pd, scipy.sparse as sp, anndata as ad
from shadows import AnnDataShadow
v, n, nv = cfg["v"], cfg["n_obs"], cfg["n_vars"]
s = AnnDataShadow(cfg["path"], mode="r+")
s.X = sp.csr_matrix(np.full((n, nv), float(v), dtype=np.float32))
s.obsm["X_pca"] = np.full((n, 4), float(v), dtype=np.float32)
s.obsm["added"] = np.full((n, 3), float(v))
if "dense" in s.layers:
    del s.layers["dense"]
s.obs["score"] = np.full(n, float(v))
s.obs["newcol"] = np.arange(n) * v
if "group" in s.obs.columns:
    del s.obs["group"]
s.var["vnew"] = np.full(nv, v)
s.uns["params"] = {"k": v}
s.uns["after"] = f"x{v}"
obs = pd.DataFrame(index=s.obs_names)
s.raw = ad.AnnData(X=np.full((n, 7), float(v)), obs=obs, var=pd.DataFrame(index=[f"r{i}" for i in range(7)]))
"""

# In the child: report every commit point on stdout; pause (to be killed, or to receive SIGINT) at one of them.
HOOK = """
import shadows.io.commit_guard as cg
if not cfg.get("exchange", True):
    import shadows.io.zarr_journal as zj
    zj.use_exchange = False
def _hook(name):
    print("point " + name, flush=True)
    time.sleep(cfg.get("point_delay", 0))  # a longer commit: more random kills fall inside it
    if cfg.get("pause") and name.startswith(cfg["pause"]):
        if cfg.get("sigint_at_pause"):
            print("paused at " + name, flush=True)
            sys.stdin.readline()  # the parent sends SIGINT, then a line
        else:
            pause("paused at " + name)
cg.set_hook(_hook)
"""


def base_adata() -> ad.AnnData:
    rng = np.random.default_rng(0)
    a = ad.AnnData(
        X=sp.random(N_OBS, N_VARS, density=0.1, format="csr", random_state=0, dtype=np.float32),
        obs=pd.DataFrame(
            {"group": pd.Categorical(rng.choice(["a", "b"], N_OBS)), "score": rng.normal(size=N_OBS)},
            index=[f"c{i}" for i in range(N_OBS)],
        ),
        var=pd.DataFrame({"gene": np.arange(N_VARS)}, index=[f"g{i}" for i in range(N_VARS)]),
    )
    a.obsm["X_pca"] = rng.normal(size=(N_OBS, 4)).astype(np.float32)
    a.obsm["keep"] = rng.normal(size=(N_OBS, 2))
    a.layers["dense"] = rng.random((N_OBS, N_VARS)).astype(np.float32)
    a.uns["params"] = {"k": 3}
    a.raw = a.copy()
    return a


def unconsolidate(path: Path) -> None:
    if (path / ".zmetadata").exists():
        (path / ".zmetadata").unlink()
    else:
        meta = json.loads((path / "zarr.json").read_text())
        meta.pop("consolidated_metadata", None)
        (path / "zarr.json").write_text(json.dumps(meta))


@pytest.fixture(scope="module")
def templates(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("zarr_faults")
    out = {}
    for fmt, consolidated in KINDS:
        p = Path(write_adata(base_adata(), store_path(d, "zarr", fmt, stem=f"c{int(consolidated)}"), zarr_format=fmt))
        if not consolidated:
            unconsolidate(p)
        out[(fmt, consolidated)] = p
    return out


def fresh(templates: dict, kind: tuple, directory: Path, name: str = "work") -> Path:
    dst = directory / f"{name}.zarr"
    for stale in directory.glob(f".{dst.name}.shadows-write-*"):
        shutil.rmtree(stale)
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(templates[kind], dst)
    return dst


def edit(path: Path, v: int) -> AnnDataShadow:
    """The shadow of ``path`` with the edits of version ``v`` pending (not written)."""
    scope = {"cfg": {"path": str(path), "v": v, "n_obs": N_OBS, "n_vars": N_VARS}}
    with quiet():
        exec(EDITS, scope)
    return scope["s"]


def write_version(path: Path, v: int) -> None:
    s = edit(path, v)
    with quiet():
        s.write(overwrite=True)
    s.close()


# --- checks -------------------------------------------------------------------------------------------------------
def _dense(x) -> np.ndarray:
    return np.asarray(x.toarray() if sp.issparse(x) else x)


def _same(got, want) -> bool:
    if isinstance(want, str | int):
        return got == want
    if isinstance(want, list):  # names
        return list(got) == want
    if isinstance(want, tuple):  # raw: (X, var_names)
        return _same(got[0], want[0]) and list(got[1]) == list(want[1])
    got, want = _dense(got), _dense(want)
    return got.shape == want.shape and np.array_equal(got.astype(float), want.astype(float))


REPLACED, ADDED, DELETED, KEPT = {"old", "new"}, {"absent", "new"}, {"old", "absent"}, {"old"}


def _elements(a: ad.AnnData, before: ad.AnnData, v: int) -> list[tuple]:
    """(name, value read, old value, new value, states allowed while a write is half-done)."""
    n, nv = N_OBS, N_VARS
    obs, var, uns = a.obs, a.var, a.uns
    raw = (a.raw.X, a.raw.var_names) if a.raw is not None else None
    return [
        ("X", a.X, before.X, np.full((n, nv), float(v)), REPLACED),
        ("obsm/X_pca", a.obsm.get("X_pca"), before.obsm["X_pca"], np.full((n, 4), float(v)), REPLACED),
        ("obsm/added", a.obsm.get("added"), None, np.full((n, 3), float(v)), ADDED),
        ("obsm/keep", a.obsm.get("keep"), before.obsm["keep"], None, KEPT),
        ("layers/dense", a.layers.get("dense"), before.layers["dense"], None, DELETED),
        ("obs/score", obs.get("score"), before.obs["score"], np.full(n, float(v)), REPLACED),
        ("obs/newcol", obs.get("newcol"), None, np.arange(n) * v, ADDED),
        ("obs/group", obs["group"].cat.codes if "group" in obs else None, before.obs["group"].cat.codes, None, DELETED),
        ("obs_names", list(a.obs_names), list(before.obs_names), None, KEPT),
        ("var/gene", var.get("gene"), before.var["gene"], None, KEPT),
        ("var/vnew", var.get("vnew"), None, np.full(nv, v), ADDED),
        ("uns/params/k", uns["params"].get("k") if "params" in uns else None, 3, v, REPLACED),
        ("uns/after", uns.get("after"), None, f"x{v}", ADDED),
        ("raw", raw, (before.raw.X, before.raw.var_names), (np.full((n, 7), float(v)), [f"r{i}" for i in range(7)]),
         REPLACED),
    ]  # fmt: skip


def check_store(path: Path, before: ad.AnnData, v: int, *, final: bool = False, gap: bool = False) -> dict[str, str]:
    """anndata reads ``path``; each element is old or new (``final``: every change of version ``v`` is there;
    ``gap``: a replaced element may be absent, between the two renames of the fallback without renameat2)."""
    a = read_oracle(path)
    states = {}
    for name, got, old, new, allowed in _elements(a, before, v):
        if got is None:
            state = "absent"
        elif old is not None and _same(got, old):
            state = "old"
        else:
            assert new is not None and _same(got, new), f"'{path}': {name} is neither its old value nor the new one"
            state = "new"
        if final:
            allowed = {"old"} if allowed == KEPT else {"absent"} if allowed == DELETED else {"new"}
        elif gap and allowed == REPLACED:
            allowed = REPLACED | {"absent"}
        assert state in allowed, f"'{path}': {name} is {state}; expected one of {sorted(allowed)}"
        states[name] = state
    _check_consolidated_matches(path)
    return states


def _members(path: Path, consolidated: bool) -> list[str]:
    g = zarr.open_group(str(path), mode="r", use_consolidated=consolidated)
    return sorted(k for k, _ in g.members(max_depth=None))


def _check_consolidated_matches(path: Path) -> None:
    """Consolidated metadata, when there are any, name exactly the nodes on disk (and their attributes agree)."""
    if consolidated_kind(path) is None:
        return
    assert _members(path, True) == _members(path, False), f"'{path}': consolidated metadata differ from the disk"
    for group in ("obs", "var"):
        on_disk = zarr.open_group(str(path), path=group, mode="r", use_consolidated=False).attrs["column-order"]
        meta = zarr.open_group(str(path), mode="r", use_consolidated=True)[group].attrs["column-order"]
        assert list(meta) == list(on_disk), f"'{path}': consolidated column-order of {group} differs from the disk"


def check_clean(path: Path, consolidated: bool) -> None:
    """No staging directory or orphan left, and the store consolidated iff it was."""
    left = list(path.parent.glob(f".{path.name}.shadows-write-*"))
    assert not left, f"staging directories left beside '{path}': {left}"
    meta_files = {".zattrs", ".zgroup", ".zarray", "zarr.json"}
    for group in ("obs", "var"):
        g = zarr.open_group(str(path), path=group, mode="r", use_consolidated=False)
        expected = set(g.attrs["column-order"]) | {g.attrs["_index"]}
        on_disk = {p.name for p in (path / group).iterdir()} - meta_files
        assert on_disk == expected, f"'{path}/{group}': orphans {sorted(on_disk - expected)}"
    assert (consolidated_kind(path) is not None) == consolidated, f"'{path}': consolidated changed"
    assert not [p for p in path.iterdir() if p.name.endswith(".partial")], f"temporary files left in '{path}'"


def next_write(path: Path, before: ad.AnnData, v: int, consolidated: bool) -> None:
    """A later writer succeeds, and then the store reads as its values."""
    write_version(path, v)
    check_store(path, before, v, final=True)
    check_clean(path, consolidated)


@pytest.fixture(scope="module")
def befores(templates) -> dict:
    return {k: read_oracle(p) for k, p in templates.items()}


@pytest.fixture(scope="module")
def points(templates, tmp_path_factory) -> dict:
    """The commit points of the write, per store kind (and with the two-rename fallback)."""
    import shadows.io.zarr_journal as zj

    d = tmp_path_factory.mktemp("points")
    out = {}
    for kind in KINDS:
        for exchange in (True, False):
            path = fresh(templates, kind, d)
            seen: list[str] = []
            previous = commit_guard.set_hook(seen.append)
            saved, zj.use_exchange = zj.use_exchange, zj.use_exchange and exchange
            try:
                write_version(path, 5)
            finally:
                commit_guard.set_hook(previous)
                zj.use_exchange = saved
            out[(*kind, exchange)] = seen
    assert any("moved away" in p for p in out[(3, True, False)]), "the fallback was not exercised"
    return out


# --- the child writer ---------------------------------------------------------------------------------------------
def run_child(
    children: Children,
    path: Path,
    v: int,
    *,
    pause: str | None = None,
    kill_after: float | None = None,
    sigint: bool = False,
    exchange: bool = True,
    point_delay: float = 0.0,
) -> tuple[str, list[str]]:
    """Run one child writer of version ``v``; SIGKILL it at the commit point ``pause`` or ``kill_after`` seconds
    into its write, or (``sigint``) send it SIGINT at ``pause`` and let it go on; with neither, let it finish.

    Returns what happened (``"killed"``, ``"finished"``, ``"interrupted"``) and the commit points it passed.
    """
    p = children.take()
    cfg = {"path": str(path), "v": v, "n_obs": N_OBS, "n_vars": N_VARS, "step": None, "edits": HOOK + EDITS}
    # "sigint_at_pause", not "sigint": the shared child (test_write_crash) catches the interrupt itself under "sigint"
    cfg |= {"pause": pause and pause + " ", "sigint_at_pause": sigint, "exchange": exchange, "point_delay": point_delay}
    p.stdin.write(json.dumps(cfg) + "\n")
    p.stdin.flush()
    line = p.stdout.readline().strip()
    assert line == "writing", f"child stopped before writing: {line!r} {p.err_path.read_text()[-2000:]}"
    t0 = time.perf_counter()
    passed: list[str] = []

    def read_until(stop: Callable[[str], bool], what: str) -> None:
        while not stop(line := p.stdout.readline().strip()):
            assert line, f"child writer never {what} (passed {passed}): {p.err_path.read_text()[-2000:]}"
            passed.append(line.removeprefix("point "))

    if kill_after is None and pause is None:  # the uninterrupted write, timed
        read_until(lambda line: line.startswith("done"), "finished")  # the child prints "done <seconds>"
        run_child.seconds = time.perf_counter() - t0
        p.wait(timeout=120)
        p.stdout.close(), p.stdin.close()
        return "finished", passed
    if pause is not None:
        read_until(lambda line: line.startswith("paused"), f"reached {pause!r}")
    else:
        time.sleep(kill_after)
    if sigint:
        p.send_signal(signal.SIGINT)
        time.sleep(0.05)  # let the signal arrive while the child waits inside the commit
        p.stdin.write("go\n")
        p.stdin.flush()
        p.wait(timeout=120)
    else:
        p.send_signal(signal.SIGKILL)
        p.wait()
    rest = p.stdout.read().splitlines()
    p.stdout.close(), p.stdin.close()
    passed += [r.removeprefix("point ") for r in rest if r.startswith("point ")]
    if sigint:
        err = p.err_path.read_text()
        assert p.returncode != 0 and "KeyboardInterrupt" in err, f"SIGINT was lost: rc={p.returncode} {err[-2000:]}"
        assert not any(r.startswith("done") for r in rest)
        return "interrupted", passed
    return ("finished" if any(r.startswith("done") for r in rest) else "killed"), passed


def kill_at_points(tmp_path, templates, befores, kind, names, *, exchange=True) -> list[tuple[str, str]]:
    before = befores[kind]
    children = Children(len(names), tmp_path)
    report = []
    try:
        for name in names:
            path = fresh(templates, kind, tmp_path)
            outcome, _ = run_child(children, path, 5, pause=name, exchange=exchange)
            assert outcome == "killed", f"the writer finished before {name}"
            # between the two renames of the fallback a replaced element is missing (anndata cannot read a frame
            # whose column-order names it) until the commit is finished, as the next "r+" open or write does
            gap = not exchange and name[-1] == "a"
            states = {} if gap else check_store(path, before, 5, gap=not exchange)
            if not exchange and name != "zarr:0":  # until the commit is finished (an "r+" open does it) a reader
                AnnDataShadow(path, mode="r+").close()  # may miss an element
                check_store(path, before, 5, final=True)
            report.append((name, ",".join(f"{k}={s}" for k, s in states.items() if s != "old")))
            next_write(path, before, 6, kind[1])
    finally:
        children.close()
    return report


def _prefix(point: str) -> str:
    """The number of a commit point (``zarr:3.4``), which is what a child pauses at."""
    return point.split(" ")[0]


def _pick(names: list[str], k: int) -> list[str]:
    """``k`` points spread over the commit (the journal, a step in the middle, the last step...)."""
    idx = sorted({round(i * (len(names) - 1) / (k - 1)) for i in range(k)}) if k > 1 else [len(names) // 2]
    return [names[i] for i in idx]


# --- kills at commit points ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", [(2, True), (3, False)], ids=["v2-consolidated", "v3-plain"])
def test_kill_at_commit_points(tmp_path, templates, befores, points, kind):
    names = [_prefix(p) for p in points[(*kind, True)]]
    chosen = _pick(names[1:-1], 2)  # between the journal and its end: the store is half-committed
    report = kill_at_points(tmp_path, templates, befores, kind, chosen)
    print(f"\n{KIND_IDS[KINDS.index(kind)]}:", *report, sep="\n  ")


def test_kill_between_the_two_renames_of_the_fallback(tmp_path, templates, befores, points):
    """Without renameat2 an element is renamed away, then the new one in: a kill in between is finished later."""
    name = next(_prefix(p) for p in points[(3, True, False)] if "moved away" in p)
    kill_at_points(tmp_path, templates, befores, (3, True), [name], exchange=False)


@pytest.mark.slow
@pytest.mark.parametrize("exchange", [True, False], ids=["exchange", "fallback"])
@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
def test_kill_at_every_commit_point(tmp_path, templates, befores, points, kind, exchange):
    names = [_prefix(p) for p in points[(*kind, exchange)]]
    report = kill_at_points(tmp_path, templates, befores, kind, names, exchange=exchange)
    print(f"\n{KIND_IDS[KINDS.index(kind)]} {'exchange' if exchange else 'fallback'}: {len(report)} kills, 0 bad")
    assert len(report) == len(names)


# --- kills at random times ----------------------------------------------------------------------------------------
def random_kills(tmp_path, templates, befores, kind, n: int, seed: int) -> dict:
    """``n`` writers killed at random moments of their write; returns where the kills fell.

    Every other writer sleeps 100 ms at each commit point, so that more kills fall inside the commit (which is
    short beside the staging of the new elements); the kills still land anywhere, between the points too.
    """
    before = befores[kind]
    children = Children(n + 2, tmp_path)
    rng = random.Random(seed)
    reached: dict[str, int] = {}
    try:
        durations = []
        for delay in (0.0, 0.1):  # uninterrupted, timed
            run_child(children, fresh(templates, kind, tmp_path), 5, point_delay=delay)
            durations.append(run_child.seconds)
        for i in range(n):
            path = fresh(templates, kind, tmp_path)
            after = rng.uniform(0, durations[i % 2])
            outcome, passed = run_child(children, path, 5, kill_after=after, point_delay=0.1 * (i % 2))
            check_store(path, before, 5, final=outcome == "finished")
            where = "finished" if outcome == "finished" else (_prefix(passed[-1]) if passed else "staging")
            reached[where] = reached.get(where, 0) + 1
            next_write(path, before, 6, kind[1])
    finally:
        children.close()
    return reached


def test_kill_at_random_times(tmp_path, templates, befores):
    print(random_kills(tmp_path, templates, befores, (3, True), 2, seed=3))


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
def test_kill_at_random_times_many(tmp_path, templates, befores, kind):
    reached = random_kills(tmp_path, templates, befores, kind, 26, seed=kind[0] * 10 + kind[1])
    print(f"\n{KIND_IDS[KINDS.index(kind)]}: 26 random kills, 0 bad; last commit point passed: {reached}")


# --- exceptions and Ctrl-C at commit points -----------------------------------------------------------------------
def raise_at_points(tmp_path, templates, befores, kind, names, exc: type[BaseException]) -> None:
    before = befores[kind]
    for name in names:
        path = fresh(templates, kind, tmp_path)
        untouched = _digest(path)
        s = edit(path, 5)

        def hook(point: str, name: str = name) -> None:
            if point.startswith(name + " "):
                raise exc(f"injected at {point}")

        previous = commit_guard.set_hook(hook)
        try:
            with pytest.raises(exc, match="injected"), quiet():
                s.write(overwrite=True)
        finally:
            commit_guard.set_hook(previous)
        if name.startswith("zarr:0"):  # before the journal: rolled back, not a byte changed
            assert _digest(path) == untouched, f"{name}: the store changed"
            assert ("obsm", "X_pca") in s._state.pending
        else:  # rolled forward before the exception propagated; the shadow knows its changes are on disk
            check_store(path, before, 5, final=True)
            assert not s._state.pending and not s._state.deleted, (
                f"{name}: pending entries left {list(s._state.pending)}"
            )
            np.testing.assert_array_equal(s.obsm["X_pca"], np.full((N_OBS, 4), 5.0, dtype=np.float32))
        check_clean(path, kind[1])
        s.close()
        next_write(path, before, 6, kind[1])


def _digest(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    ("kind", "exc"), [((2, True), KeyboardInterrupt), ((3, False), RuntimeError)], ids=["v2-ctrl-c", "v3-error"]
)
def test_exception_at_commit_points(tmp_path, templates, befores, points, kind, exc):
    names = [_prefix(p) for p in points[(*kind, True)]]
    raise_at_points(tmp_path, templates, befores, kind, [names[0], names[len(names) // 2]], exc)


@pytest.mark.slow
@pytest.mark.parametrize("exc", [KeyboardInterrupt, RuntimeError])
@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
def test_exception_at_every_commit_point(tmp_path, templates, befores, points, kind, exc):
    names = [_prefix(p) for p in points[(*kind, True)]]
    raise_at_points(tmp_path, templates, befores, kind, names, exc)
    print(f"\n{KIND_IDS[KINDS.index(kind)]} {exc.__name__}: {len(names)} points, 0 bad")


@pytest.mark.parametrize("kind", [(3, True)], ids=["v3-consolidated"])
def test_sigint_during_commit_is_held_until_it_is_done(tmp_path, templates, befores, points, kind):
    """A real Ctrl-C (SIGINT from another process) in the middle of the commit: the commit completes, then the
    writer stops with KeyboardInterrupt."""
    names = [_prefix(p) for p in points[(*kind, True)]]
    chosen = [names[len(names) // 2]]
    children = Children(len(chosen), tmp_path)
    try:
        for name in chosen:
            path = fresh(templates, kind, tmp_path)
            _, passed = run_child(children, path, 5, pause=name, sigint=True)
            assert _prefix(passed[-1]) == names[-1], f"the commit stopped at {passed[-1]} after SIGINT at {name}"
            check_store(path, befores[kind], 5, final=True)
            check_clean(path, kind[1])
    finally:
        children.close()


# --- recovery -----------------------------------------------------------------------------------------------------
def test_read_only_open_never_recovers_and_r_plus_does(tmp_path, templates, befores, points):
    kind = (2, True)
    names = [_prefix(p) for p in points[(*kind, True)]]
    path = fresh(templates, kind, tmp_path)
    children = Children(1, tmp_path)
    try:
        run_child(children, path, 5, pause=names[len(names) // 2])
    finally:
        children.close()
    (stage,) = path.parent.glob(f".{path.name}.shadows-write-*")
    frozen = _digest(path), _digest(stage)
    s = AnnDataShadow(path)  # "r": reads the half-committed store as it is
    assert s.obsm["X_pca"].shape == (N_OBS, 4) and "score" in s.obs.columns
    s.close()
    assert (_digest(path), _digest(stage)) == frozen, "opening read-only changed the store"
    AnnDataShadow(path, mode="r+").close()  # "r+": finishes the commit
    check_store(path, befores[kind], 5, final=True)
    check_clean(path, True)


def test_leftover_column_directory_does_not_block_writes(tmp_path, templates, befores):
    """An orphan column directory (left by an older writer killed between placing a column and naming it in
    column-order) is replaced by the next write of that column, with or without overwrite."""
    for kind in [(2, True), (3, True)]:
        path = fresh(templates, kind, tmp_path)
        shutil.copytree(path / "obs" / "score", path / "obs" / "extra")  # a complete array nobody names
        s = AnnDataShadow(path, mode="r+")
        assert "extra" not in s.obs.columns
        s.obs["extra"] = np.arange(N_OBS)
        s.write()
        s.close()
        np.testing.assert_array_equal(read_oracle(path).obs["extra"].to_numpy(), np.arange(N_OBS))
        check_clean(path, True)


def test_unreadable_journal_stops_writers_and_keeps_the_staging(tmp_path, templates):
    from shadows.io.zarr_journal import JournalError

    path = fresh(templates, (3, True), tmp_path)
    stage = tmp_path / f".{path.name}.shadows-write-dead"
    (stage / "new" / "e0").mkdir(parents=True)
    (stage / "journal.json").write_text('{"format": 1, "steps": [')  # not what write_journal writes, ever
    s = AnnDataShadow(path)
    s.obsm["new"] = np.ones((N_OBS, 1))
    with pytest.raises(JournalError, match="journal.json"):
        s.reopen("r+")
    with pytest.raises(JournalError, match="journal.json"):
        AnnDataShadow(path, mode="r+")
    assert (stage / "new" / "e0").is_dir()


def test_staging_of_an_older_version_with_moved_elements_is_kept(tmp_path, templates):
    """A staging directory without journal whose trash holds elements (an older shadows, killed mid-commit) may
    hold the only copy of an element: it is kept, with a warning; empty ones are deleted."""
    path = fresh(templates, (3, True), tmp_path)
    old = tmp_path / f".{path.name}.shadows-write-old"
    shutil.copytree(path / "obsm" / "X_pca", old / "trash" / "t0")
    empty = tmp_path / f".{path.name}.shadows-write-empty"
    (empty / "new").mkdir(parents=True)
    s = AnnDataShadow(path, mode="r+")
    s.obsm["new"] = np.ones((N_OBS, 1))
    with pytest.warns(UserWarning, match="older shadows"):
        s.write()
    assert (old / "trash" / "t0").is_dir() and not empty.exists()


# --- concurrent readers -------------------------------------------------------------------------------------------
_WRITER = textwrap.dedent(
    """
    import sys, warnings
    warnings.simplefilter("ignore")
    import numpy as np, scipy.sparse as sp
    from shadows import AnnDataShadow
    path, n_iter = sys.argv[1], int(sys.argv[2])
    print("ready", flush=True)
    sys.stdin.readline()
    for i in range(n_iter):
        s = AnnDataShadow(path, mode="r+")
        n, nv = s.shape
        # same structure as before (see concurrent_reads): a reader may mix old and new arrays, never break on them
        x = sp.random(n, nv, density=0.1, format="csr", random_state=0, dtype=np.float32)
        x.data[:] = i
        s.X = x
        s.obsm["X_pca"] = np.full((n, 4), float(i), dtype=np.float32)
        s.layers["dense"] = np.full((n, nv), float(i), dtype=np.float32)
        s.obs["score"] = np.full(n, float(i))
        s.var["gene"] = np.arange(nv) + i
        s.uns["params"] = {"k": i}
        s.write(overwrite=True)
        s.close()
    print("done", flush=True)
    """
)

_READER = textwrap.dedent(
    """
    import json, os, sys, warnings
    warnings.simplefilter("ignore")
    import anndata as ad, zarr
    from shadows import AnnDataShadow
    path, stop = sys.argv[1], sys.argv[2]
    counts = {"reads": 0, "missing": 0, "errors": 0}
    samples = []

    def anndata_read():
        a = ad.read_zarr(path)
        got = {"obsm/X_pca": "X_pca" in a.obsm, "layers/dense": "dense" in a.layers, "X": a.X is not None,
               "obs/score": "score" in a.obs, "var/gene": "gene" in a.var, "uns/params": "k" in a.uns.get("params", {}),
               "raw": a.raw is not None}
        return [k for k, ok in got.items() if not ok]

    def zarr_read():
        g = zarr.open_group(path, mode="r")
        g["obsm"]["X_pca"][:], g["layers"]["dense"][:1], g["obs"]["score"][:], g["X"]["data"][:1]
        g["uns"]["params"]["k"][()], g["var"]["gene"][:]
        return []

    def shadow_read():
        s = AnnDataShadow(path)
        s.obsm["X_pca"], s.layers["dense"][:1], s.obs["score"], s.var["gene"], s.uns["params"]["k"], s.X[:1]
        s.close()
        return []

    print("ready", flush=True)
    while not os.path.exists(stop):
        for read in (anndata_read, zarr_read, shadow_read):
            counts["reads"] += 1
            try:
                missing = read()
            except KeyError as e:
                missing = [repr(e)]
            except Exception as e:
                counts["errors"] += 1
                samples.append(f"{read.__name__}: {type(e).__name__}: {e}"[:300])
                continue
            if missing:
                counts["missing"] += 1
                samples.append(f"{read.__name__}: missing {missing}"[:300])
    print(json.dumps({**counts, "samples": samples[:10]}), flush=True)
    """
)


def concurrent_reads(path: Path, n_iter: int, n_readers: int = 1) -> list[dict]:
    """Readers loop while a writer replaces elements ``n_iter`` times; their counts of reads, missing elements and
    other errors.

    A reader is not isolated from a writer: one reading an element's arrays one after the other while the element
    is replaced may get some arrays of the old element and some of the new one.  The writer therefore keeps every
    element's structure (shapes, dtypes, the sparsity pattern of X) and changes only values, so that such a mixture
    reads without error; any error is then a real one (a missing node, metadata read half-written...).
    """
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    stop = path.parent / "stop"
    writer = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path), str(n_iter)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    readers = [
        subprocess.Popen(
            [sys.executable, "-c", _READER, str(path), str(stop)], stdout=subprocess.PIPE, text=True, env=env
        )
        for _ in range(n_readers)
    ]
    try:
        for p in (writer, *readers):
            assert p.stdout.readline().strip() == "ready"
        writer.stdin.write("go\n")
        writer.stdin.flush()
        assert writer.stdout.readline().strip() == "done", "the writer failed"
    finally:
        stop.touch()
        results = [json.loads(r.stdout.readline()) for r in readers]
        for p in (writer, *readers):
            p.wait(timeout=120)
    return results


@pytest.mark.parametrize("kind", [(2, True)], ids=["v2-consolidated"])
def test_concurrent_readers_never_miss_a_replaced_element(tmp_path, templates, kind):
    (result,) = concurrent_reads(fresh(templates, kind, tmp_path), 8)
    print(result)
    assert result["reads"] >= 6, result
    assert result["missing"] == 0 and result["errors"] == 0, result


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
def test_concurrent_readers_never_miss_a_replaced_element_long(tmp_path, templates, kind):
    results = concurrent_reads(fresh(templates, kind, tmp_path), 60, n_readers=2)
    print(f"\n{KIND_IDS[KINDS.index(kind)]}: {results}")
    for r in results:
        assert r["missing"] == 0 and r["errors"] == 0, r
