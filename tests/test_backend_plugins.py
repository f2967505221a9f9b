"""Backends added by users: registration in code, and third-party packages found through entry points.

The entry-point tests use the tiny package in ``tests/plugin_pkg``.  Rather than pip-installing it into the running
environment (slow, needs a build backend, and leaves the venv changed if the test dies), the fixture writes the
``.dist-info`` that an installation would write — its ``entry_points.txt`` generated from the package's own
``pyproject.toml`` — into a temporary directory on ``sys.path``.  ``importlib.metadata`` finds installed packages
exactly that way, so the code path under test is the one a real installation takes.
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from oracle import write_adata

import shadows
from shadows import AnnDataShadow, backends
from shadows.spec import FrameParts
from shadows.spec.lazy_array import ElementSource

PLUGIN = Path(__file__).parent / "plugin_pkg"


@pytest.fixture(autouse=True)
def registry(monkeypatch):
    """Each test registers into a copy of the registry, and entry points are read afresh (once per process else)."""
    monkeypatch.setattr(backends, "_ARRAY", dict(backends._ARRAY))
    monkeypatch.setattr(backends, "_TABLE", dict(backends._TABLE))
    monkeypatch.setattr(backends, "_entry_points_loaded", False)


@pytest.fixture(scope="module")
def path(tmp_path_factory):
    rng = np.random.default_rng(3)
    a = ad.AnnData(
        X=sp.random(20, 6, density=0.4, format="csr", random_state=3, dtype=np.float32),
        obs=pd.DataFrame(
            {"v": rng.random(20), "c": pd.Categorical(rng.choice(["a", "b"], 20))}, index=[f"c{i}" for i in range(20)]
        ),
    )
    a.obsm["emb"] = rng.normal(size=(20, 3)).astype(np.float32)
    a.layers["dense"] = rng.random((20, 6)).astype(np.float32)
    return write_adata(a, tmp_path_factory.mktemp("plugins") / "p.h5ad")


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """The test plugin package, as if installed: its module and its dist-info (entry points) on ``sys.path``."""
    project = tomllib.loads((PLUGIN / "pyproject.toml").read_text())["project"]
    dist = tmp_path / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n", encoding="utf-8"
    )
    lines = []
    for group, points in project["entry-points"].items():
        lines += [f"[{group}]", *(f"{name} = {target}" for name, target in points.items()), ""]
    (dist / "entry_points.txt").write_text("\n".join(lines), encoding="utf-8")
    monkeypatch.syspath_prepend(str(PLUGIN))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "shadows_test_plugin", raising=False)
    yield project["entry-points"]
    sys.modules.pop("shadows_test_plugin", None)


# --- entry points ------------------------------------------------------------------------------------------------


def test_entry_point_backends_are_found_when_installed(plugin, path):
    assert "plugin_lists" not in backends._ARRAY  # nothing registered them in code
    with pytest.warns(UserWarning, match="plugin_broken"):  # a broken plugin warns and does not break shadows
        names = shadows.array_backends()
    assert {"plugin_lists", "plugin_tagged"} <= set(names) and "plugin_broken" not in names
    assert {"numpy", "jax", "torch", "dask"} <= set(names)
    assert "plugin_records" in shadows.table_backends()
    s = AnnDataShadow(path, array_backend="plugin_lists", table_backend="plugin_records")
    ref = AnnDataShadow(path)
    assert s.obsm["emb"] == ref.obsm["emb"].tolist()
    assert s.X == ref.X.toarray().tolist()
    assert isinstance(s.obs, list) and len(s.obs) == 20 and s.obs[3]["_index"] == "c3"
    assert s.obs[3]["v"] == ref.obs["v"].iloc[3]
    assert s[2:5].obsm["emb"] == ref.obsm["emb"][2:5].tolist()  # views convert with the plugin too


def test_entry_point_backend_found_at_open_without_listing(plugin, path):
    # the first use of a plugin name loads the entry points (no array_backends() call before)
    with pytest.warns(UserWarning, match="plugin_broken"):
        s = AnnDataShadow(path, array_backend="plugin_tagged")
    value = s.obsm["emb"]
    assert value.backend == "plugin_tagged"
    np.testing.assert_array_equal(value.value, AnnDataShadow(path).obsm["emb"])
    released = sys.modules["shadows_test_plugin"].RELEASED
    released.clear()
    s.clear_cache()  # the plugin's release hook sees what the cache drops
    assert any(r is value for r in released)


def test_plugin_pyproject_declares_the_groups_shadows_reads(plugin):
    assert set(plugin) == {backends.ARRAY_GROUP, backends.TABLE_GROUP}


# --- registration in code ----------------------------------------------------------------------------------------


def test_custom_array_backend_registered_in_code(path):
    seen = []

    def double(value):
        seen.append(type(value))
        return value * 2

    shadows.register_array_backend("double", double)
    assert "double" in shadows.array_backends()
    s, ref = AnnDataShadow(path, array_backend="double"), AnnDataShadow(path)
    np.testing.assert_array_equal(s.obsm["emb"], ref.obsm["emb"] * 2)
    assert sp.issparse(s.X) and (s.X != ref.X * 2).nnz == 0
    np.testing.assert_array_equal(s[[4, 0]].layers["dense"], ref.layers["dense"][[4, 0]] * 2)
    assert set(seen) <= {np.ndarray, sp.csr_matrix}  # convert gets the numpy/scipy value read


def test_custom_from_source_backend_gets_a_readable_source(path):
    shadows.register_array_backend("source", lambda src: src, from_source=True)
    v = AnnDataShadow(path, array_backend="source")[3:9, [0, 5]]
    src = v.X
    assert isinstance(src, ElementSource) and src.shape == (6, 2)
    want = AnnDataShadow(path)[3:9, [0, 5]].X
    assert (src.read() != want).nnz == 0
    assert (src.read((slice(1, 3), None)) != want[1:3]).nnz == 0


def test_custom_table_backends_pandas_and_parts(path):
    shadows.register_table_backend("as_dict", lambda df: df.to_dict(orient="list"))
    s = AnnDataShadow(path, table_backend="as_dict")
    assert isinstance(s.obs, dict) and s.obs["v"] == AnnDataShadow(path).obs["v"].tolist()
    shadows.register_table_backend("parts", lambda parts: parts, from_parts=True)
    parts = AnnDataShadow(path, table_backend="parts")[[1, 1, 7]].obs
    assert isinstance(parts, FrameParts) and parts.axis_name == "obs_names"
    assert list(parts.index) == ["c1", "c1", "c7"] and parts.column_order == ["v", "c"]


def test_release_hook_called_on_clear_cache(path):
    released = []
    shadows.register_array_backend("tracked", lambda v: v, release=released.append)
    s = AnnDataShadow(path, array_backend="tracked")
    emb, x = s.obsm["emb"], s.X
    s.clear_cache()
    assert any(r is emb for r in released) and any(r is x for r in released)
    assert s.obsm["emb"] is not emb  # read again


def test_registration_replaces_and_validates():
    shadows.register_array_backend("swap", lambda v: 1)
    shadows.register_array_backend("swap", lambda v: 2)
    assert backends.get_array_backend("swap").convert(None) == 2
    with pytest.raises(ValueError, match="non-empty string"):
        shadows.register_array_backend("", lambda v: v)
    with pytest.raises(TypeError, match="must be callable"):
        shadows.register_table_backend("bad", 42)


@pytest.mark.parametrize("kind", ["array", "table"])
def test_unknown_backend_names_list_the_available_ones(path, kind):
    shadows.register_array_backend("mine", lambda v: v)
    with pytest.raises(ValueError, match="Unknown") as err:
        AnnDataShadow(path, **{f"{kind}_backend": "nope"})
    message = str(err.value)
    wanted = ("numpy", "jax", "torch", "dask", "mine") if kind == "array" else ("pandas", "polars", "pyarrow")
    assert all(repr(name) in message for name in wanted), message
