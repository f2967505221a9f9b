"""Crash safety of write(): a writer killed with SIGKILL at any moment leaves a file anndata still reads, with every
earlier element intact and each element being written either absent or complete; a later writer then works.

Kill points are of two kinds: *in the data* (once a given fraction of the bytes that the same write puts down
uninterrupted has reached the disk: the HDF5 file's size, the zarr staging directory's) and *at a step* (the child
is paused right after a named step of ``shadows.write_h5`` / ``shadows.writeback.zarr`` and killed there).  Children are
started ahead of time, so that their imports overlap with the checks of earlier kill points.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from oracle import assert_element_equal, read_oracle, store_path, write_adata

import shadows.writeback.hdf5 as wh
from shadows import AnnDataShadow

N_OBS = 2000

# The child: imports, then waits for its orders on stdin, so that it can be started before it is needed.
_CHILD = textwrap.dedent(
    """
    import json, signal, sys, time
    import numpy as np
    import shadows.writeback.hdf5 as wh
    import shadows.writeback.zarr as wz
    from shadows import AnnDataShadow
    from shadows.io import commit_guard

    # Ctrl-C live, as in a user's session: a child started while a test runner's worker had SIGINT ignored inherits
    # SIG_IGN, which the commit guard rightly respects (a held SIGINT is then dropped, and the SIGINT tests flake)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    print("ready", flush=True)
    cfg = json.loads(sys.stdin.readline())

    def pause(tag):
        print(tag, flush=True)
        time.sleep(600)  # the parent kills us here

    def after(module, name, nth=1):
        # pause right after the nth call of module.name returns
        orig, calls = getattr(module, name), [0]
        def wrapped(*a, **k):
            out = orig(*a, **k)
            calls[0] += 1
            if calls[0] == nth:
                pause(f"paused after {name}")
            return out
        setattr(module, name, wrapped)

    def before(module, name):
        orig = getattr(module, name)
        def wrapped(*a, **k):
            pause(f"paused before {name}")
            return orig(*a, **k)
        setattr(module, name, wrapped)

    def at_point(name, nth=1):
        # pause at the nth pass through the commit point `name` (shadows.io.commit_guard)
        calls = [0]
        def hook(point):
            if point == name:
                calls[0] += 1
                if calls[0] == nth:
                    pause(f"paused at {name}")
        commit_guard.set_hook(hook)

    step = cfg["step"]
    if step and step[0] == "point":
        at_point(*step[1:])
    elif step:
        kind, module, name, *nth = step
        (after if kind == "after" else before)(wh if module == "h5" else wz, name, *nth)
    exec(cfg.get("setup", ""))
    if cfg.get("point"):  # pause at the first commit point (shadows.io.commit_guard) whose name starts so
        import shadows.io.commit_guard as cg
        cg.set_hook(lambda name: name.startswith(cfg["point"]) and pause(f"paused at {name}"))
    exec(cfg["edits"])
    print("writing", flush=True)
    t0 = time.perf_counter()
    if not cfg.get("sigint"):
        s.write(overwrite=True)
        print(f"done {time.perf_counter() - t0:.4f}", flush=True)
        sys.exit()
    # SIGINT runs: report where the interrupt landed, close, and on the parent's word retry on the same shadow.
    # The parent sends one SIGINT: once it has been caught, nothing can interrupt what follows.
    try:
        try:
            s.write(overwrite=True)
            outcome = "done"
        except KeyboardInterrupt:
            outcome = "interrupted"
        elapsed = time.perf_counter() - t0
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    except KeyboardInterrupt:  # landed after write() returned
        outcome, elapsed = "late", time.perf_counter() - t0
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    s.close()
    print(f"{outcome} {elapsed:.4f}", flush=True)
    if sys.stdin.readline().strip() == "retry":
        s.reopen("r+")
        s.write(overwrite=True)
        s.close()
        print("retried", flush=True)
    """
)

# The write every child (and the timing run) makes: a large new element, a replaced one, a new and a changed obs
# column, a small uns entry.
_EDITS = """
s = AnnDataShadow(cfg["path"], mode="r+")
s.obsm["huge"] = np.random.default_rng(0).random((cfg["n_obs"], cfg["n_cols"]), dtype=np.float32)
s.obsm["X_pca"] = np.full((cfg["n_obs"], 4), 7.0, dtype=np.float32)
s.obs["newcol"] = np.arange(cfg["n_obs"], dtype=np.int64)
s.obs["score"] = np.ones(cfg["n_obs"])
s.uns["after"] = "x"
"""


def base_adata() -> ad.AnnData:
    rng = np.random.default_rng(0)
    a = ad.AnnData(
        X=sp.random(N_OBS, 50, density=0.05, format="csr", random_state=0, dtype=np.float32),
        obs=pd.DataFrame(
            {"group": pd.Categorical(rng.choice(["a", "b"], N_OBS)), "score": rng.normal(size=N_OBS)},
            index=[f"c{i}" for i in range(N_OBS)],
        ),
    )
    a.obsm["X_pca"] = rng.normal(size=(N_OBS, 4)).astype(np.float32)
    a.layers["dense"] = rng.random((N_OBS, 50)).astype(np.float32)
    a.obsp["graph"] = sp.random(N_OBS, N_OBS, density=0.001, format="csr", random_state=1)
    a.uns["params"] = {"k": 3}
    return a


class Children:
    """Child writers started ahead of time; each takes one set of orders."""

    def __init__(self, n: int, log_dir: Path, pipeline: int = 3, script: str = _CHILD):
        self.log_dir = log_dir
        self.script = script  # another child program (tests/test_outputs_safety.py) speaks the same "ready" protocol
        self.started = 0
        self.waiting = [self._start() for _ in range(min(n, pipeline))]
        self.left = n - len(self.waiting)

    def _start(self) -> subprocess.Popen:
        env = {**os.environ, "PYTHONWARNINGS": "ignore"}  # anndata/zarr format advice would flood the log
        self.started += 1
        err = open(self.log_dir / f"child{self.started}.err", "w")  # noqa: SIM115 - the child writes it
        p = subprocess.Popen(
            [sys.executable, "-c", self.script],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env=env,
        )
        p.err_path = Path(err.name)
        err.close()
        return p

    def take(self) -> subprocess.Popen:
        p = self.waiting.pop(0)
        if self.left > 0:  # keep the pipeline full without holding many idle interpreters
            self.waiting.append(self._start())
            self.left -= 1
        line = p.stdout.readline().strip()
        assert line == "ready", f"child writer failed to start: {p.err_path.read_text()[-2000:]}"
        return p

    def close(self) -> None:
        for p in self.waiting:
            p.kill()
            p.wait()


def written_bytes(path: Path) -> int:
    """Bytes the writer has put down so far: the HDF5 file's size, or the zarr staging directory's."""
    if path.is_file():
        return path.stat().st_size
    total = 0
    for stage in path.parent.glob(f".{path.name}.shadows-write-*"):
        for dirpath, _, files in os.walk(stage):  # os.walk skips what is moved away meanwhile; rglob raises
            for name in files:
                try:
                    total += os.stat(os.path.join(dirpath, name)).st_size
                except FileNotFoundError:  # moved or removed meanwhile
                    pass
    return total


def kill_at(
    children: Children, path: Path, n_cols: int, *, step=None, point: str | None = None, target: int | None = None
) -> str:
    """Run one child writer on ``path`` and SIGKILL it right after ``step``, at the commit point ``point`` (a
    prefix of its name), or once ``target`` bytes are written.

    Returns what the child had reached: ``"killed at <n> MB"``, ``"killed after <step>"``, ``"killed at <point>"``
    or ``"finished"``.
    """
    p = children.take()
    cfg = {"path": str(path), "n_obs": N_OBS, "n_cols": n_cols, "step": step, "point": point, "edits": _EDITS}
    p.stdin.write(json.dumps(cfg) + "\n")
    p.stdin.flush()
    line = p.stdout.readline().strip()
    assert line == "writing", f"child stopped before writing: {line!r} {p.err_path.read_text()[-2000:]}"
    if step is not None or point is not None:
        line = p.stdout.readline().strip()
        assert line.startswith("paused"), f"child never reached {step or point}: {line!r}"
        outcome = f"killed {line[len('paused ') :]}"
    else:
        deadline = time.monotonic() + 300
        while (n := written_bytes(path)) < target and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        outcome = f"killed at {n / 1e6:.0f} MB written"
    p.send_signal(signal.SIGKILL)
    p.wait()
    rest = p.stdout.read()
    p.stdout.close()
    p.stdin.close()
    if "done" in rest:
        outcome = "finished"
    return outcome


def expected_values(n_cols: int) -> dict:
    return {
        "huge": np.random.default_rng(0).random((N_OBS, n_cols), dtype=np.float32),
        "X_pca": np.full((N_OBS, 4), 7.0, dtype=np.float32),
        "newcol": np.arange(N_OBS, dtype=np.int64),
        "score": np.ones(N_OBS),
    }


def check_file(path: Path, before: ad.AnnData, new: dict) -> dict:
    """anndata reads the file; untouched elements are intact; each element being written is absent or whole."""
    after = read_oracle(path)
    assert_element_equal(after.X, before.X, "X")
    assert_element_equal(after.layers["dense"], before.layers["dense"], "layers/dense")
    assert_element_equal(after.obsp["graph"], before.obsp["graph"], "obsp/graph")
    assert_element_equal(after.obs["group"], before.obs["group"], "obs/group")
    assert after.uns["params"]["k"] == 3
    seen = {}
    seen["huge"] = "huge" in after.obsm
    if seen["huge"]:
        np.testing.assert_array_equal(after.obsm["huge"], new["huge"], err_msg="obsm/huge is incomplete")
    if "X_pca" in after.obsm:  # replaced: the old one or the new one, never a mixture
        old = np.array_equal(after.obsm["X_pca"], before.obsm["X_pca"])
        assert old or np.array_equal(after.obsm["X_pca"], new["X_pca"]), "obsm/X_pca is neither old nor new"
    if "newcol" in after.obs.columns:
        np.testing.assert_array_equal(after.obs["newcol"].to_numpy(), new["newcol"])
    if "score" in after.obs.columns:
        sc = after.obs["score"].to_numpy()
        assert np.array_equal(sc, before.obs["score"].to_numpy()) or np.array_equal(sc, new["score"])
    if "after" in after.uns:
        assert after.uns["after"] == "x"
    return seen


def later_writer(path: Path, i: int, before: ad.AnnData, new: dict) -> None:
    """After a crash, a new writer works, and what the killed one left stays consistent."""
    s = AnnDataShadow(path, mode="r+")
    s.obsm[f"later{i}"] = np.full((N_OBS, 2), float(i))
    s.write()
    s.close()
    assert f"later{i}" in read_oracle(path).obsm
    check_file(path, before, new)  # zarr: consolidating again surfaces what was moved in; it must be whole


def reference_run(path: Path, n_cols: int) -> tuple[float, int, int]:
    """The same write uninterrupted, on a copy: its duration, the bytes before it and the bytes it puts down."""
    copy = _copy(path, path.with_name("reference" + path.suffix))
    cfg = {"path": str(copy), "n_obs": N_OBS, "n_cols": n_cols}
    exec(_EDITS, {"AnnDataShadow": AnnDataShadow, "np": np, "cfg": cfg}, scope := {})
    base = copy.stat().st_size if copy.is_file() else 0
    t0 = time.perf_counter()
    scope["s"].write(overwrite=True)
    elapsed = time.perf_counter() - t0
    scope["s"].close()
    if copy.is_file():
        grown = copy.stat().st_size - base
    else:
        grown = sum(f.stat().st_size for f in (copy / "obsm" / "huge").rglob("*") if f.is_file())
    shutil.rmtree(copy) if copy.is_dir() else copy.unlink()
    return elapsed, base, grown


H5_STEPS = [
    ("point", wh.STAGED, 1),  # everything staged and flushed, nothing linked
    ("point", wh.COMMITTED, 1),  # the large element linked and flushed, the rest not
    ("point", wh.UNLINKED, 1),  # obsm/X_pca unlinked (held), its successor not yet linked
    ("point", wh.COLUMNS_LINKED, 1),  # obs: the new column linked, column-order not yet updated
    ("point", wh.ORDER_SET, 1),  # obs: column-order updated, not yet reported done
]
ZARR_POINTS = [  # commit points of shadows.writeback.zarr / shadows.io.zarr_journal (a prefix of the point's name)
    "zarr:2 ",  # journal written, consolidated metadata removed, nothing moved
    "zarr:3.0 ",  # the large element moved in, not yet consolidated
    "zarr:3.3 ",  # obs: the new column placed, column-order not yet updated
    "zarr:4 ",  # everything moved and consolidated again, the journal not yet marked done
]


def _copy(src: Path, dst: Path) -> Path:
    if dst.exists():
        shutil.rmtree(dst) if dst.is_dir() else dst.unlink()
    shutil.copytree(src, dst) if src.is_dir() else shutil.copyfile(src, dst)
    return dst


def run_kills(tmp_path: Path, fmt: str, zarr_format: int | None, n_cols: int, fractions, steps) -> list[tuple]:
    pristine = Path(write_adata(base_adata(), store_path(tmp_path, fmt, zarr_format), zarr_format=zarr_format))
    path = pristine.with_name("work" + pristine.suffix)
    before = read_oracle(pristine)
    new = expected_values(n_cols)
    children = Children(len(fractions) + len(steps), tmp_path)
    report = []
    try:
        duration, base, grown = reference_run(pristine, n_cols)
        plan = [("data", f) for f in fractions] + [("step", s) for s in steps]
        for i, (kind, arg) in enumerate(plan):
            _copy(pristine, path)  # each kill point starts from the same file
            if kind == "data":
                outcome = kill_at(children, path, n_cols, target=base + int(arg * grown))
            elif isinstance(arg, str):
                outcome = kill_at(children, path, n_cols, point=arg)
            else:
                outcome = kill_at(children, path, n_cols, step=list(arg))
            seen = check_file(path, before, new)
            report.append((kind, arg, outcome, "huge present" if seen["huge"] else "huge absent"))
            later_writer(path, i, before, new)
    finally:
        children.close()
    print(f"\n{fmt}{zarr_format or ''}: uninterrupted write {duration:.2f}s, {grown / 1e6:.0f} MB")
    for row in report:
        print("  ", *row)
    return report


def _assert_killed_mid_write(report: list[tuple]) -> None:
    assert all(r[2] != "finished" for r in report), f"a writer finished before it was killed: {report}"


@pytest.mark.parametrize(("fmt", "zarr_format"), [("h5ad", None), ("zarr", 3)], ids=["h5ad", "zarr3"])
def test_killed_writer_leaves_file_readable(tmp_path, fmt, zarr_format):
    # ~100 MB written per attempt; a few kill points (the slow variant below has more, and larger)
    steps = H5_STEPS[:2] if fmt == "h5ad" else ZARR_POINTS[::2]
    fractions = (0.2, 0.7) if fmt == "h5ad" else (0.5,)
    report = run_kills(tmp_path, fmt, zarr_format, 12_500, fractions, steps)
    _assert_killed_mid_write(report)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("fmt", "zarr_format"), [("h5ad", None), ("zarr", 2), ("zarr", 3)], ids=["h5ad", "zarr2", "zarr3"]
)
def test_killed_writer_leaves_file_readable_large(tmp_path, fmt, zarr_format):
    # 480 MB per attempt, ten or eleven kill points
    steps = H5_STEPS if fmt == "h5ad" else ZARR_POINTS
    fractions = (0.02, 0.1, 0.25, 0.4, 0.55, 0.7, 0.8, 0.9)[: 11 - len(steps)]
    report = run_kills(tmp_path, fmt, zarr_format, 60_000, fractions, steps)
    _assert_killed_mid_write(report)


def test_h5_file_reopens_for_writing_after_a_crash(tmp_path):
    """A killed HDF5 writer leaves no lock and no 'file is open for writing' mark behind."""
    import h5py

    path = Path(write_adata(base_adata(), tmp_path / "k.h5ad"))
    children = Children(1, tmp_path)
    try:
        kill_at(children, path, 2_000, step=["point", wh.COMMITTED, 1])
    finally:
        children.close()
    with h5py.File(path, "r+") as f:
        assert "obsm" in f
    assert "huge" in read_oracle(path).obsm
