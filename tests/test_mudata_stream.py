"""Streaming a MuDataShadow (or a view) into a new ``.h5mu`` file or zarr store (``write_h5mu``/``write_zarr``).

The oracle is mudata: the streamed file must read back (with mudata) equal to mudata's own writing of
``mudata.read_h5mu(src)[idx]``, element by element, and the global tables must be stored as mudata stores them.
A child process checks that the write holds no modality's matrix whole.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
from rss_child import RSS_HELPERS

md = pytest.importorskip("mudata")

from oracle import assert_element_equal, quiet  # noqa: E402
from test_mudata import (  # noqa: E402, F401 (the autouse fixture applies here too)
    POOL,
    SUBSETS,
    _no_pull_on_update,
    as_mudata_reads,
    assert_mudata_equal,
    build_mudata,
    read_mudata_oracle,
    stored_tables,
    write_mudata,
)

from shadows import MuDataShadow  # noqa: E402

SOURCES = [(0, "h5mu", None), (1, "h5mu", None), (0, "zarr", 3), (1, "zarr", 2)]


@pytest.fixture(scope="module", params=SOURCES, ids=lambda p: f"axis{p[0]}-{p[1]}{p[2] or ''}")
def source(request, tmp_path_factory):
    axis, fmt, zf = request.param
    m = build_mudata(11 + axis, axis, 3, POOL, SUBSETS, [6, 4, 5])
    return write_mudata(m, tmp_path_factory.mktemp("src"), fmt, zf)


def _index(ref, which: str):
    if which == "all":
        return None
    rng = np.random.default_rng(5)
    cells = rng.permutation(ref.n_obs)[: max(1, ref.n_obs - 3)]
    if which == "cells":
        return cells
    return cells, np.sort(rng.permutation(ref.n_vars)[: max(1, ref.n_vars // 2)])


@pytest.mark.parametrize("which", ["all", "cells", "cells+features"])
@pytest.mark.parametrize("out_fmt", [("h5mu", None), ("zarr", 3)], ids=["h5mu", "zarr3"])
def test_streamed_mudata_equals_mudatas_own_write(source, tmp_path, which, out_fmt):
    ref = read_mudata_oracle(source)
    idx = _index(ref, which)
    with quiet():
        expected_mem = ref if idx is None else ref[idx].copy()
    # mudata's own file, always .h5mu: mudata 0.3 cannot write to zarr an axis it read from a file (numpy int attr)
    expected = write_mudata(expected_mem, tmp_path, "h5mu", None, stem="expected")
    sh = MuDataShadow(source)
    target = sh if idx is None else sh[idx]
    out = tmp_path / ("got.h5mu" if out_fmt[0] == "h5mu" else "got.zarr")
    if out_fmt[0] == "h5mu":
        target.write_h5mu(out)
    else:
        old = ad.settings.zarr_write_format
        ad.settings.zarr_write_format = out_fmt[1]
        try:
            target.write_zarr(out)
        finally:
            ad.settings.zarr_write_format = old
    sh.close()
    got_tables, want_tables = stored_tables(str(out)), stored_tables(expected)
    for name in ("obs", "var"):
        assert_element_equal(got_tables[name], want_tables[name], f"stored {name}")
    got = MuDataShadow(out)
    assert not got.is_view
    assert_mudata_equal(got, read_mudata_oracle(expected), f"{which} -> {out.name}", stored=got_tables)
    # and mudata reads the streamed file as it reads its own
    back = read_mudata_oracle(str(out))
    assert list(back.mod) == list(ref.mod) and back.axis == ref.axis
    for name in ("obs", "var"):
        assert_element_equal(getattr(back, name), as_mudata_reads(want_tables[name]), f"mudata's {name}")
    got.close()


def test_h5mu_header_and_copy(source, tmp_path):
    if not source.endswith(".h5mu"):
        pytest.skip("the user block is an HDF5 thing")
    sh = MuDataShadow(source)
    copy = sh.copy(tmp_path / "copy.h5mu")
    assert isinstance(copy, MuDataShadow) and copy.shape == sh.shape
    with open(tmp_path / "copy.h5mu", "rb") as f:
        head = f.read(512)
    assert head.startswith(b"MuData (format-version=") and b"creator=shadows" in head
    with open(source, "rb") as f:
        assert f.read(512).startswith(b"MuData (")  # mudata's own files carry the same header
    copy.close()
    sh.close()


def test_streaming_refuses_its_own_file_and_keeps_destination_on_failure(source, tmp_path):
    sh = MuDataShadow(source)
    if source.endswith(".h5mu"):
        with pytest.raises(ValueError, match="into the file it is read from"):
            sh.write_h5mu(source)
    dst = tmp_path / "keep.h5mu"
    dst.write_bytes(b"previous content")
    with pytest.raises(ValueError, match="file_format"):
        from shadows.mudata.writer import write_mudata as stream

        stream(sh, dst, "loom")
    assert dst.read_bytes() == b"previous content"
    sh.close()


CHILD = RSS_HELPERS + textwrap.dedent(
    """
    import json, sys
    import numpy as np, h5py, anndata, mudata
    from shadows import MuDataShadow


    src, dst = sys.argv[1], sys.argv[2]
    m = MuDataShadow(src)
    m.obs_names, m.var_names, m["rna"].obs_names, m["rna"].var_names  # name indexes are not what is measured
    base = kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    m[np.arange(0, m.n_obs, 2)].write_h5mu(dst)
    print(json.dumps({"peak_bytes": (kib("VmHWM") - base) * 1024}))
    """
)


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc/self/clear_refs")
def test_streamed_view_holds_no_whole_matrix(tmp_path):
    rng = np.random.default_rng(0)
    n, g = 20_000, 5_000
    X = sp.random(n, g, density=0.1, format="csr", dtype=np.float32, random_state=rng)  # 80 MB of values+indices
    names = [f"c{i}" for i in range(n)]
    rna = ad.AnnData(X=X, obs={"_": np.zeros(n)}, var={"_": np.zeros(g)})
    rna.obs_names, rna.var_names = names, [f"g{i}" for i in range(g)]
    rna.layers["counts"] = X.copy()
    with quiet():
        m = md.MuData({"rna": rna})
        src = tmp_path / "big.h5mu"
        m.write_h5mu(src)
    matrix_bytes = X.data.nbytes + X.indices.nbytes
    env = {**os.environ, "SHADOWS_MEMORY_BUDGET": str(2**20)}
    dst = tmp_path / "half.h5mu"
    p = subprocess.run(
        [sys.executable, "-c", CHILD, str(src), str(dst)], capture_output=True, text=True, timeout=600, env=env
    )
    assert p.returncode == 0, p.stderr[-3000:]
    peak = json.loads(p.stdout.strip().splitlines()[-1])["peak_bytes"]
    # the half of X alone is 40 MB, with the layer 80 MB; what the write holds is the MuData's own tables (O(cells):
    # 5-15 MB for 20,000 cells, more with pandas 3's Arrow strings) and blocks of a 1 MiB budget
    assert peak < 0.3 * matrix_bytes, f"peak {peak / 2**20:.1f} MiB for a {matrix_bytes / 2**20:.1f} MiB matrix"
    with quiet():
        back, want = md.read_h5mu(dst), md.read_h5mu(src)[np.arange(0, n, 2)]
    assert (back["rna"].X != want["rna"].X).nnz == 0
    assert (back["rna"].layers["counts"] != want["rna"].layers["counts"]).nnz == 0
