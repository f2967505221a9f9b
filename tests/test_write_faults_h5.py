"""Fault injection for write() into HDF5 files (``.h5ad``, ``.h5mu``): whatever stops a write, and wherever, the file
opens in anndata/mudata, every element is its old value or its new value complete, the shadow still matches the file,
and the next write() succeeds.

One write touches every write path at once: a large new obsm entry (so that staging takes long enough for random
signals to land in it), a replaced obsm entry, a deleted layer, obs columns added, replaced and removed, a new obs
index, a var column, a nested uns dict (a changed leaf, a new key, a removed key), X and raw.  It is interrupted:

- in-process, by an exception (``KeyboardInterrupt`` or a ``RuntimeError``) raised at every pass through every commit
  point of :mod:`shadows.writeback.hdf5` (``shadows.io.commit_guard``);
- in a child process, by ``SIGKILL`` at every commit point and at random moments;
- in a child process, by a real ``SIGINT`` (``os.kill``) at random moments.

The child writers are those of ``test_write_crash``.  A hypothesis test then checks random sequences of edits and
writes against anndata in memory.  The figures quoted in the report come from the ``slow`` variants.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import anndata as ad
import h5py
import mudata
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st
from oracle import assert_adata_equal, assert_element_equal, assert_raw_equal, quiet
from test_operation_sequences import apply_op
from test_write_crash import Children

import shadows.writeback.hdf5 as wh
from shadows import AnnDataShadow, MuDataShadow
from shadows.io import commit_guard

N_OBS, N_VARS = 400, 30
MISSING = "<absent>"

# The write under test.  Written so that it can be applied again over a half-written file (the retry of a fresh
# writer): deletions are guarded.  `s` is an AnnData, an AnnDataShadow, or a MuData's modality.
EDITS = """
r = np.random.default_rng(1)
s.obsm["added"] = r.random((s.n_obs, big), dtype=np.float32)
s.obsm["X_pca"] = np.full((s.n_obs, 4), 7.0, dtype=np.float32)
if "gone" in s.layers:
    del s.layers["gone"]
s.obs["newcol"] = np.arange(s.n_obs)
s.obs["score"] = np.ones(s.n_obs)
if "dropme" in s.obs.columns:
    del s.obs["dropme"]
if reindex:
    s.obs_names = [f"cell{i}" for i in range(s.n_obs)]
s.var["vnew"] = np.arange(s.n_vars) * 2.0
s.uns["params"] = {"k": 4, "nested": {"a": np.arange(3), "b": "new"}}
s.X = sp.random(s.n_obs, s.n_vars, density=0.2, format="csr", random_state=5, dtype=np.float32)
s.raw = ad.AnnData(
    X=np.ones((s.n_obs, 5), dtype=np.float32),
    obs=pd.DataFrame(index=s.obs_names),
    var=pd.DataFrame(index=[f"r{i}" for i in range(5)]),
)
"""
# A MuData: the edits above on modality "rna" (its obs names stay: the global obs is aligned on them), plus global
# obsm and uns.
EDITS_MU = """
whole = s
s = whole.mod["rna"]
exec(EDITS, globals())
whole.obsm["g_added"] = np.full((whole.n_obs, 3), 2.0)
whole.uns["g_params"] = {"x": 2, "y": {"z": "new"}}
s = whole
"""


# --- files and the expected result --------------------------------------------------------------------------------
def base_adata(n_obs: int = N_OBS) -> ad.AnnData:
    rng = np.random.default_rng(0)
    a = ad.AnnData(
        X=sp.random(n_obs, N_VARS, density=0.1, format="csr", random_state=0, dtype=np.float32),
        obs=pd.DataFrame(
            {
                "score": rng.normal(size=n_obs),
                "dropme": np.arange(n_obs),
                "grp": pd.Categorical(rng.choice(["a", "b"], n_obs)),
            },
            index=[f"c{i}" for i in range(n_obs)],
        ),
        var=pd.DataFrame({"gene_score": rng.normal(size=N_VARS)}, index=[f"g{i}" for i in range(N_VARS)]),
    )
    a.obsm["X_pca"] = rng.normal(size=(n_obs, 4)).astype(np.float32)
    a.layers["gone"] = rng.random((n_obs, N_VARS)).astype(np.float32)
    a.layers["kept"] = rng.random((n_obs, N_VARS)).astype(np.float32)
    a.obsp["graph"] = sp.random(n_obs, n_obs, density=0.01, format="csr", random_state=1)
    a.uns["params"] = {"k": 3, "nested": {"a": np.arange(3), "old": "o"}}
    a.raw = a.copy()
    return a


def write_base(directory: Path, fmt: str, n_obs: int = N_OBS) -> Path:
    """The file every run starts from (a copy of it, each time)."""
    a = base_adata(n_obs)
    with quiet():
        if fmt == "h5ad":
            path = directory / "pristine.h5ad"
            a.write_h5ad(path)
        else:
            prot = ad.AnnData(np.ones((n_obs, 3), dtype=np.float32), obs=pd.DataFrame(index=a.obs_names))
            prot.var_names = ["p0", "p1", "p2"]
            m = mudata.MuData({"rna": a, "prot": prot})
            m.uns["g_params"] = {"x": 1, "y": {"z": "old"}}
            path = directory / "pristine.h5mu"
            m.write_h5mu(path)
    return path


def edit_env(fmt: str, big: int) -> dict[str, Any]:
    return {"np": np, "pd": pd, "ad": ad, "sp": sp, "big": big, "reindex": fmt == "h5ad", "EDITS": EDITS}


def edits_of(fmt: str) -> str:
    return EDITS if fmt == "h5ad" else EDITS_MU


def read_file(path: Path) -> Any:
    with quiet():
        return ad.read_h5ad(path) if path.suffix == ".h5ad" else mudata.read_h5mu(path)


def expected(pristine: Path, big: int) -> Any:
    """anndata's (mudata's) in-memory result of the edits: what a complete write must leave."""
    fmt = pristine.suffix[1:]
    obj = read_file(pristine)
    scope = {**edit_env(fmt, big), "s": obj}
    exec(edits_of(fmt), scope)
    return scope["s"]


def open_shadow(path: Path, mode: str = "r+") -> Any:
    return AnnDataShadow(path, mode=mode) if path.suffix == ".h5ad" else MuDataShadow(path, mode=mode)


def edited_shadow(path: Path, big: int) -> Any:
    s = open_shadow(path)
    scope = {**edit_env(path.suffix[1:], big), "s": s}
    exec(edits_of(path.suffix[1:]), scope)
    return scope["s"]


# --- every element old or new -------------------------------------------------------------------------------------
def _flatten(d: Any, prefix: str, out: dict[str, Any]) -> None:
    for k, v in d.items():
        if isinstance(v, dict):
            _flatten(v, f"{prefix}/{k}", out)
        else:
            out[f"{prefix}/{k}"] = v


def elements(a: ad.AnnData, prefix: str = "") -> dict[str, Any]:
    """Every element of ``a`` that a write replaces as one unit, by a path-like name."""
    out: dict[str, Any] = {f"{prefix}X": a.X, f"{prefix}obs index": a.obs_names, f"{prefix}var index": a.var_names}
    for name in ("obs", "var"):
        for c in getattr(a, name).columns:
            out[f"{prefix}{name}/{c}"] = getattr(a, name)[c].values
    for name in ("layers", "obsm", "varm", "obsp", "varp"):
        for k, v in getattr(a, name).items():
            out[f"{prefix}{name}/{k}"] = v
    _flatten(a.uns, f"{prefix}uns", out)
    out[f"{prefix}raw"] = a.raw
    return out


def all_elements(obj: Any) -> dict[str, Any]:
    if isinstance(obj, ad.AnnData):
        return elements(obj)
    out: dict[str, Any] = {}
    for name, mod in obj.mod.items():
        out.update(elements(mod, f"mod/{name}/"))
    for k, v in obj.obsm.items():
        out[f"obsm/{k}"] = np.asarray(v)
    _flatten(obj.uns, "uns", out)
    return out


def _same(got: Any, want: Any, what: str) -> bool:
    if isinstance(got, str) and got == MISSING or isinstance(want, str) and want == MISSING:
        return isinstance(got, str) and isinstance(want, str) and got == want
    try:
        if what.endswith("raw"):
            assert_raw_equal(got, want, what)
        else:
            assert_element_equal(got, want, what)
    except AssertionError:
        return False
    return True


def violations(path: Path, before: Any, after: Any) -> list[str]:
    """What breaks the guarantee in ``path``: it does not open, or an element is neither its old nor its new value."""
    try:
        now = all_elements(read_file(path))
    except Exception as e:  # noqa: BLE001 - any failure to read is the violation reported
        return [f"{path.name} does not open: {type(e).__name__}: {e}"]
    old, new = all_elements(before), all_elements(after)
    bad = []
    for key in sorted(set(old) | set(new) | set(now)):
        got = now.get(key, MISSING)
        if not (_same(got, old.get(key, MISSING), key) or _same(got, new.get(key, MISSING), key)):
            bad.append(f"{key} is neither its old nor its new value")
    return bad


def assert_complete(path: Path, after: Any) -> None:
    """``path`` holds exactly the result of the edits (a retry finished the write)."""
    assert violations(path, after, after) == [], f"{path.name} differs from the complete write"
    if path.suffix == ".h5ad":
        with quiet():
            assert_adata_equal(read_file(path), after, "file after the retry", to_memory=False)


def copy_pristine(pristine: Path, name: str = "work") -> Path:
    path = pristine.with_name(name + pristine.suffix)
    shutil.copyfile(pristine, path)
    return path


# --- in-process: an exception at every commit point ----------------------------------------------------------------
def record_points(pristine: Path, big: int) -> list[tuple[str, int]]:
    """Every (point, nth pass) an uninterrupted write goes through."""
    path = copy_pristine(pristine, "record")
    seen: list[tuple[str, int]] = []
    counts: dict[str, int] = {}

    def hook(name: str) -> None:
        counts[name] = counts.get(name, 0) + 1
        seen.append((name, counts[name]))

    s = edited_shadow(path, big)
    previous = commit_guard.set_hook(hook)
    try:
        s.write(overwrite=True)
    finally:
        commit_guard.set_hook(previous)
        s.close()
    return seen


class Injected(RuntimeError):
    pass


def raise_at(name: str, nth: int, exc: type[BaseException]):
    calls = [0]

    def hook(point: str) -> None:
        if point == name:
            calls[0] += 1
            if calls[0] == nth:
                raise exc(f"injected at {point} #{nth}")

    return hook


def interrupted_in_process(pristine: Path, before: Any, after: Any, at: tuple[str, int], exc, big: int) -> list[str]:
    """One write interrupted by ``exc`` at ``at``; then the file, the shadow, and a retry on the same shadow."""
    path = copy_pristine(pristine)
    s = edited_shadow(path, big)
    previous = commit_guard.set_hook(raise_at(*at, exc))
    try:
        with pytest.raises(exc):
            s.write(overwrite=True)
    finally:
        commit_guard.set_hook(previous)
    s.close()
    bad = violations(path, before, after)
    # the shadow still shows the whole edit: what reached the file is settled, the rest still pending
    s.reopen("r")
    shown = all_elements(s.to_memory())
    want = all_elements(after)
    bad += [
        f"shadow shows a wrong {k}"
        for k in sorted(set(shown) | set(want))
        if not _same(shown.get(k, MISSING), want.get(k, MISSING), k)
    ]
    s.reopen("r+")
    s.write(overwrite=True)
    s.close()
    bad += [f"after the retry: {v}" for v in violations(path, after, after)]
    return bad


def first_passes(points: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """The first pass through each distinct commit point."""
    return [p for p in points if p[1] == 1]


def run_injections(tmp_path: Path, fmt: str, excs, *, every_pass=(), big: int = 20) -> tuple[int, list[str]]:
    """Raise each of ``excs`` at the first pass of every commit point, and those of ``every_pass`` at every pass."""
    pristine = write_base(tmp_path, fmt)
    before, after = read_file(pristine), expected(pristine, big)
    points = record_points(pristine, big)
    assert {p for p, _ in points} >= {wh.STAGED, wh.HELD, wh.UNLINKED, wh.LINKED, wh.COMMITTED, wh.ORDER_SET}
    bad = []
    runs = 0
    for at in points:
        for exc in excs if at[1] == 1 else every_pass:
            runs += 1
            bad += [
                f"{exc.__name__} at {at}: {v}" for v in interrupted_in_process(pristine, before, after, at, exc, big)
            ]
    print(f"\n{fmt}: {runs} injected exceptions at {len(points)} commit-point passes, {len(bad)} violations")
    return runs, bad


@pytest.mark.parametrize("fmt", ["h5ad", "h5mu"])
def test_exception_at_every_commit_point_rolls_back(tmp_path, fmt):
    every_pass = (KeyboardInterrupt,) if fmt == "h5ad" else ()
    _, bad = run_injections(tmp_path, fmt, (KeyboardInterrupt, Injected), every_pass=every_pass)
    assert bad == []


def test_exception_while_staging_leaves_file_unchanged(tmp_path):
    """An encoding error while staging (a value anndata cannot write): nothing linked, nothing settled."""
    pristine = write_base(tmp_path, "h5ad")
    path = copy_pristine(pristine)
    before = read_file(pristine)
    s = open_shadow(path)
    s.obsm["X_pca"] = np.full((N_OBS, 4), 7.0)
    s.uns["bad"] = object()  # not writable
    with pytest.raises(Exception, match="bad"):
        s.write(overwrite=True)
    s.close()
    assert violations(path, before, before) == []
    with h5py.File(path, "r") as f:
        assert "bad" not in f["uns"]


# --- a leftover column (a writer killed between linking a column and naming it) -----------------------------------
def _leave_orphan(path: Path, group: str, name: str, n: int = N_OBS) -> None:
    with h5py.File(path, "r+") as f:
        f[f"{group}/{name}"] = np.full(n, -1.0)
        f[f"{group}/{name}"].attrs.update({"encoding-type": "array", "encoding-version": "0.2.0"})


@pytest.mark.parametrize("overwrite", [False, True])
def test_leftover_column_is_replaced_silently(tmp_path, overwrite):
    path = copy_pristine(write_base(tmp_path, "h5ad"))
    _leave_orphan(path, "obs", "newcol")
    _leave_orphan(path, "obs", "stale")
    s = open_shadow(path)
    assert "newcol" not in s.obs.columns  # invisible, as anndata sees it
    s.obs["newcol"] = np.arange(N_OBS)
    s.write(overwrite=overwrite)  # an addition as far as anyone can see: no overwrite asked for
    s.close()
    obs = read_file(path).obs
    np.testing.assert_array_equal(obs["newcol"].to_numpy(), np.arange(N_OBS))
    with h5py.File(path, "r") as f:
        assert "stale" not in f["obs"], "the other leftover is removed with the edit"


def test_leftover_column_in_h5mu_modality(tmp_path):
    path = copy_pristine(write_base(tmp_path, "h5mu"))
    _leave_orphan(path, "mod/rna/obs", "newcol")
    s = open_shadow(path)
    s.mod["rna"].obs["newcol"] = np.arange(N_OBS)
    s.write()
    s.close()
    with quiet():
        got = mudata.read_h5mu(path)["rna"].obs["newcol"].to_numpy()
    np.testing.assert_array_equal(got, np.arange(N_OBS))


def test_leftover_column_in_zarr(tmp_path):
    """The plan is shared: a zarr store with a leftover column directory is written over as well."""
    import zarr

    a = base_adata(50)
    path = tmp_path / "a.zarr"
    with quiet():
        a.write_zarr(path)
    g = zarr.open_group(path / "obs", mode="r+", use_consolidated=False)
    ad.io.write_elem(g, "newcol", np.full(50, -1.0))  # on disk, not consolidated, not in column-order
    s = AnnDataShadow(path, mode="r+")
    s.obs["newcol"] = np.arange(50)
    s.write()
    s.close()
    with quiet():
        np.testing.assert_array_equal(ad.read_zarr(path).obs["newcol"].to_numpy(), np.arange(50))


# --- child processes: SIGKILL and SIGINT ----------------------------------------------------------------------------
def _start(children: Children, path: Path, big: int, *, step=None, sigint: bool = False):
    p = children.take()
    fmt = path.suffix[1:]
    setup = (
        f"from shadows import MuDataShadow\nimport anndata as ad, pandas as pd, scipy.sparse as sp\n"
        f"env = {{'big': {big}, 'reindex': {fmt == 'h5ad'}, 'EDITS': {EDITS!r}}}\n"
        f"globals().update(env)\n"
        f"s = {'AnnDataShadow' if fmt == 'h5ad' else 'MuDataShadow'}({str(path)!r}, mode='r+')\n"
    )
    cfg = {"path": str(path), "step": step, "setup": setup, "edits": edits_of(fmt), "sigint": sigint}
    p.stdin.write(json.dumps(cfg) + "\n")
    p.stdin.flush()
    line = p.stdout.readline().strip()
    assert line == "writing", f"child stopped before writing: {line!r} {p.err_path.read_text()[-2000:]}"
    return p


def _finish(p) -> str:
    if p.poll() is None:
        p.send_signal(signal.SIGKILL)
    p.wait()
    rest = p.stdout.read()
    p.stdout.close()
    p.stdin.close()
    return rest


def _write_time(rest: str) -> float | None:
    """The duration of a write the child reports (``done 0.1234``), if it finished one."""
    for line in rest.splitlines():
        word, _, seconds = line.partition(" ")
        if word in ("done", "late") and seconds:
            return float(seconds)
    return None


def kill_child(children: Children, path: Path, big: int, *, step=None, delay: float = 0.0) -> tuple[str, float | None]:
    """SIGKILL a child writer at commit point ``step`` or ``delay`` seconds into its write.

    Returns what the child had reached, and how long its write took when it finished before the kill."""
    p = _start(children, path, big, step=step)
    if step is not None:
        line = p.stdout.readline().strip()
        assert line.startswith("paused"), f"child never reached {step}: {line!r} {p.err_path.read_text()[-2000:]}"
        outcome = f"killed at {step[1]} #{step[2]}"
    else:
        time.sleep(delay)
        outcome = f"killed after {delay * 1000:.0f} ms"
    took = _write_time(_finish(p))
    return ("finished" if took is not None else outcome), took


def sigint_child(children, path: Path, before: Any, after: Any, big: int, delay: float) -> tuple[str, list, Any]:
    """A real SIGINT ``delay`` seconds into a child's write; the file is checked, then the child retries.

    Returns where the interrupt landed (``interrupted``: during the write; ``done``/``late``: after it), the
    violations, and how long the write took when the interrupt came after it."""
    p = _start(children, path, big, sigint=True)
    time.sleep(delay)
    os.kill(p.pid, signal.SIGINT)
    line = p.stdout.readline().strip()
    outcome = line.partition(" ")[0]
    if outcome not in ("done", "interrupted", "late"):
        _finish(p)
        return f"child failed: {line!r}", [f"child died: {p.err_path.read_text()[-1500:]}"], None
    bad = violations(path, before, after)
    p.stdin.write("retry\n")
    p.stdin.flush()
    retried = p.stdout.readline().strip()
    if retried != "retried":
        bad.append(f"the retry on the same shadow failed: {p.err_path.read_text()[-1500:]}")
    _finish(p)
    bad += [f"after the retry: {v}" for v in violations(path, after, after)]
    return outcome, bad, _write_time(line)


def retry_fresh(path: Path, after: Any, big: int) -> list[str]:
    """After a killed writer, a new one (the same edits, overwrite=True) completes the write."""
    try:
        s = edited_shadow(path, big)
        s.write(overwrite=True)
        s.close()
    except Exception as e:  # noqa: BLE001 - reported as the violation
        return [f"the next write fails: {type(e).__name__}: {e}"]
    return [f"after the next write: {v}" for v in violations(path, after, after)]


def write_duration(pristine: Path, big: int) -> float:
    path = copy_pristine(pristine, "timing")
    s = edited_shadow(path, big)
    t0 = time.perf_counter()
    s.write(overwrite=True)
    s.close()
    return time.perf_counter() - t0


def run_signals(tmp_path: Path, fmt: str, *, n_random_kills: int, n_sigints: int, at_points, big: int, seed=0):
    """SIGKILL child writers at commit points and at random moments, and SIGINT others at random moments; returns
    (tally, violations).  ``at_points``: ``"all"`` (every pass of every point) or the names of points (their first
    pass)."""
    pristine = write_base(tmp_path, fmt)
    before, after = read_file(pristine), expected(pristine, big)
    points = record_points(pristine, 20)  # the commit is the same whatever `big`
    if at_points != "all":
        points = [p for p in first_passes(points) if p[0] in at_points]
    duration = write_duration(pristine, big)
    rng = np.random.default_rng(seed)
    jobs = [("point", p) for p in points] + [("kill", None)] * n_random_kills + [("sigint", None)] * n_sigints
    children = Children(len(jobs), tmp_path)
    tally: dict[str, int] = {}
    bad: list[str] = []
    estimate = duration  # of the children's write time (not this process's): signals are timed to land in it
    try:
        for kind, at in jobs:
            path = copy_pristine(pristine)
            delay = float(rng.uniform(0, 1.1 * estimate))
            if kind == "sigint":
                outcome, found, took = sigint_child(children, path, before, after, big, delay)
            else:
                step = ["point", *at] if at else None
                outcome, took = kill_child(children, path, big, step=step, delay=delay)
                found = violations(path, before, after)
                found += retry_fresh(path, after, big)
            if took is not None and at is None:
                estimate = 0.7 * estimate + 0.3 * took
            key = f"{kind}: {outcome.split(' after ')[0]}"
            tally[key] = tally.get(key, 0) + 1
            bad += [f"{kind} ({outcome}): {v}" for v in found]
    finally:
        children.close()
    print(
        f"\n{fmt}: write {duration * 1000:.0f} ms here, {estimate * 1000:.0f} ms in the children; {len(jobs)} runs: {tally}; {len(bad)} violations"
    )
    for v in bad[:20]:
        print("  ", v)
    return tally, bad


BIG = 25_000  # columns of the large new obsm entry: ~40 MB, so that signals land in the staging too


@pytest.mark.parametrize(
    ("fmt", "points", "kills", "sigints"),
    [
        ("h5ad", [wh.STAGED, wh.UNLINKED, wh.COLUMNS_LINKED, wh.ORDER_SET], 1, 2),
        ("h5mu", [wh.UNLINKED, wh.COLUMNS_LINKED], 0, 1),
    ],
)
def test_sigkill_and_sigint(tmp_path, fmt, points, kills, sigints):
    # a few of each (children take seconds to start); the slow variant below runs hundreds
    tally, bad = run_signals(tmp_path, fmt, n_random_kills=kills, n_sigints=sigints, at_points=points, big=BIG)
    assert bad == []


@pytest.mark.slow
@pytest.mark.parametrize(("fmt", "n"), [("h5ad", 100), ("h5mu", 40)])
def test_sigkill_and_sigint_large(tmp_path, fmt, n):
    tally, bad = run_signals(tmp_path, fmt, n_random_kills=n, n_sigints=n, at_points="all", big=BIG, seed=1)
    assert bad == []


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["h5ad", "h5mu"])
def test_exceptions_at_every_commit_point_large(tmp_path, fmt):
    excs = (KeyboardInterrupt, Injected, OSError, MemoryError)
    _, bad = run_injections(tmp_path, fmt, excs, every_pass=excs)
    assert bad == []


# --- random sequences of edits and writes, against anndata in memory ----------------------------------------------
_EDIT = st.tuples(
    st.sampled_from(
        ["set_obs", "del_obs", "set_obsm", "del_obsm", "set_layer", "del_layer", "set_uns", "del_uns", "set_X"]
    ),
    st.sampled_from(["a", "b", "score", "X_pca", "kept", "params"]),
    st.integers(0, 99),
)
_STEP = st.one_of(_EDIT, st.just(("write",)))


def _check_sequence(tmp_path: Path, steps: list[tuple]) -> None:
    n_obs = 40
    pristine = write_base(tmp_path, "h5ad", n_obs)
    path = copy_pristine(pristine, "seq")
    mem = read_file(pristine)
    s = open_shadow(path)
    for step in steps:
        if step[0] == "write":
            s.write(overwrite=True)
            continue
        apply_op(mem, step)  # the edits of the operation-sequence test, on both sides
        apply_op(s, step)
    s.write(overwrite=True)
    with quiet():
        assert_adata_equal(s, mem, "shadow after the writes", to_memory=False)
    s.close()
    with quiet():
        assert_adata_equal(read_file(path), mem, "file after the writes", to_memory=False)


@given(steps=st.lists(_STEP, max_size=12))
def test_random_edits_and_writes_match_anndata(tmp_path_factory, steps):
    _check_sequence(tmp_path_factory.mktemp("seq"), steps)


@pytest.mark.slow
@settings(max_examples=200)
@given(steps=st.lists(_STEP, max_size=25))
def test_random_edits_and_writes_match_anndata_large(tmp_path_factory, steps):
    _check_sequence(tmp_path_factory.mktemp("seq"), steps)
