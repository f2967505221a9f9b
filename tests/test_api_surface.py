"""anndata's whole-object API on a shadow, its error messages, its repr, and how its reference renders.

The oracle is anndata on the same file: ``chunked_X`` yields what ``AnnData.chunked_X`` yields, ``.T`` equals
``AnnData.T``, ``write_csvs`` writes the same bytes, and missing things raise the exception type anndata raises.
"""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
from oracle import assert_adata_equal, assert_element_equal, read_oracle
from stream_data import rich, write_source

from shadows import AnnDataShadow

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", params=[("h5ad", None, "csr"), ("zarr", 3, "dense"), ("h5ad", None, "csc")])
def source(request, tmp_path_factory):
    fmt, zf, kind = request.param
    path = write_source(rich(kind=kind, seed=4), tmp_path_factory.mktemp(f"{fmt}{kind}"), fmt, zf)
    return path, read_oracle(path)


# --- chunked_X --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("chunk_size", [None, 7, 40, 100])
def test_chunked_x_yields_what_anndata_yields(source, chunk_size):
    path, ref = source
    want = list(ref.chunked_X(chunk_size) if chunk_size is not None else ref.chunked_X())
    with AnnDataShadow(path) as s:
        got = list(s.chunked_X(chunk_size) if chunk_size is not None else s.chunked_X())
    assert [(a, b) for _, a, b in got] == [(a, b) for _, a, b in want]
    for (g, a, b), (w, _, _) in zip(got, want, strict=True):
        assert isinstance(a, int) and isinstance(b, int)
        assert_element_equal(g, w, f"chunked_X block {a}:{b}")


def test_chunked_x_signature_matches_anndata():
    ours = inspect.signature(AnnDataShadow.chunked_X).parameters
    theirs = inspect.signature(ad.AnnData.chunked_X).parameters
    for name, p in theirs.items():
        assert name in ours and ours[name].default == p.default and ours[name].kind == p.kind, name


def test_code_written_for_anndata_runs_on_a_shadow(source):
    # the loop anndata's documentation suggests: the first item is the block
    path, ref = source
    with AnnDataShadow(path) as s:
        got = [np.asarray(block.sum(axis=1)).ravel() for block, _, _ in s.chunked_X(9)]
    np.testing.assert_allclose(np.concatenate(got), np.asarray(ref.X.sum(axis=1)).ravel())


# --- .T, transpose, write_csvs, __sizeof__ ----------------------------------------------------------------------------
def test_transpose_equals_anndata(source):
    path, ref = source
    with AnnDataShadow(path) as s:
        t = s.T
        assert type(t) is ad.AnnData and t.raw is None
        assert ("raw", "X") not in s._state.cache and not any(k[0] == "raw" for k in s._state.cache), "raw was read"
        assert_adata_equal(t, ref.T, "shadow.T", vectors=False, to_memory=False)
        assert_adata_equal(s.transpose(), ref.transpose(), "transpose()", vectors=False, to_memory=False)
        s.obsm["new"] = np.ones((s.n_obs, 2))  # pending changes come along
        np.testing.assert_array_equal(s.T.varm["new"], np.ones((s.n_obs, 2)))
        with pytest.raises(ValueError, match="view") as ours:
            s[:5].T  # noqa: B018
    with pytest.raises(ValueError) as theirs:
        ref[:5].T  # noqa: B018
    assert str(ours.value) == str(theirs.value)


@pytest.fixture(scope="module", params=[("h5ad", None, "csr"), ("zarr", 2, "dense")])
def csv_source(request, tmp_path_factory):
    fmt, zf, kind = request.param
    a = rich(kind=kind, seed=4)
    del a.obsm["sparse"]  # anndata's write_csvs fails on sparse obsm (AlignedMapping.to_df), and so does the shadow
    path = write_source(a, tmp_path_factory.mktemp(f"csv{fmt}{kind}"), fmt, zf)
    return path, read_oracle(path)


@pytest.mark.parametrize("skip_data", [True, False])
def test_write_csvs_writes_what_anndata_writes(csv_source, tmp_path, skip_data):
    path, ref = csv_source
    with AnnDataShadow(path) as s:
        s.write_csvs(tmp_path / "ours.csv", skip_data=skip_data, sep="\t")  # a .csv suffix is dropped, as in anndata
    ref.copy().write_csvs(tmp_path / "theirs", skip_data=skip_data, sep="\t")
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    files = sorted(p.relative_to(theirs) for p in theirs.rglob("*.csv"))
    assert files == sorted(p.relative_to(ours) for p in ours.rglob("*.csv"))
    assert (Path("X.csv") in files) != skip_data
    for f in files:
        assert (ours / f).read_bytes() == (theirs / f).read_bytes(), f


def test_write_csvs_streams_x_in_blocks(tmp_path):
    import shadows

    a = rich(300, 20, "csr", seed=1, light=True)
    path = write_source(a, tmp_path, "h5ad", None)
    with shadows.settings.override(memory_budget=2**16), AnnDataShadow(path) as s:
        s.write_csvs(tmp_path / "ours", skip_data=False)
        assert ("X", "") not in s._state.cache, "X was read whole"
    ad.read_h5ad(path).write_csvs(tmp_path / "theirs", skip_data=False)
    assert (tmp_path / "ours/X.csv").read_bytes() == (tmp_path / "theirs/X.csv").read_bytes()


def test_sizeof_counts_memory_without_reading(source, capsys):
    path, ref = source
    with AnnDataShadow(path) as s:
        empty = s.__sizeof__()
        assert isinstance(sys.getsizeof(s), int) and not s._state.cache, "asking the size read something"
        disk = s.__sizeof__(with_disk=True)
        assert not s._state.cache
        x = s.X
        x_bytes = sum(m.nbytes for m in (x.data, x.indices, x.indptr)) if sp.issparse(x) else x.nbytes
        assert s.__sizeof__() >= empty + x_bytes
        # with_disk: what is in memory plus the uncompressed rest; X counted once either way
        assert s.__sizeof__(with_disk=True) == disk
        s.__sizeof__(show_stratified=True)
        assert "Size of X" in capsys.readouterr().out
        view = s[:10]
        assert view.__sizeof__(with_disk=True) < disk


# --- errors -----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["missing.h5ad", "missing.zarr", "nested/dir/missing.h5mu/mod/rna"])
def test_missing_file_is_file_not_found(tmp_path, name):
    p = tmp_path / name
    with pytest.raises(FileNotFoundError) as e:
        AnnDataShadow(p)
    assert str(p) in str(e.value) and "directory" not in str(e.value)
    assert e.value.filename == str(p)


def test_missing_layer_is_a_key_error_naming_the_layers(source):
    path, ref = source
    gene = ref.var_names[2]
    with pytest.raises(KeyError):  # what anndata raises
        ref.obs_vector(gene, layer="missing")
    with AnnDataShadow(path) as s:
        for call in (lambda: s.obs_vector(gene, layer="missing"), lambda: s.var_vector("cell3", layer="missing")):
            with pytest.raises(KeyError) as e:
                call()
            message = e.value.args[0]
            assert "'missing'" in message and all(repr(k) in message for k in ref.layers.keys() if k is not None), (
                message
            )
            assert "synchronously" not in message  # no h5py internals


# --- repr -------------------------------------------------------------------------------------------------------------
def test_repr_tells_x_encoding_dtype_and_shape(tmp_path):
    path = write_source(rich(kind="csr", seed=2), tmp_path, "h5ad", None)
    with AnnDataShadow(path) as s:
        lines = repr(s).splitlines()
        dtype = str(s.file["X/data"].dtype)
        assert f"  X: csr_matrix {dtype} (40, 15)" in lines
        assert f"  X: csr_matrix {dtype} (5, 3)" in repr(s[:5, :3]).splitlines()
        s.X  # noqa: B018
        assert f"  X ᐁ: csr_matrix {dtype} (40, 15)" in repr(s).splitlines()
        s.X = np.zeros((40, 15), dtype=np.float64)
        assert "  X ▲: array float64 (40, 15)" in repr(s).splitlines()
        assert "array float64 (40, 15)" in s._repr_html_()


def test_repr_marks_pending_raw(tmp_path):
    path = write_source(rich(kind="csr", seed=2), tmp_path, "h5ad", None)
    with AnnDataShadow(path) as s:
        assert "  raw:\tX, var" in repr(s)
        s.raw = ad.AnnData(np.ones((40, 3)))
        assert "  raw ▲:\tX, var" in repr(s), repr(s)
        del s.raw
        assert "  raw:\t(deleted)" in repr(s), repr(s)


# --- API reference ----------------------------------------------------------------------------------------------------
def _properties(cls) -> dict[str, str]:
    return {
        name: inspect.getdoc(value)
        for name, value in vars(cls).items()
        if isinstance(value, property) and not name.startswith("_") and value.__doc__
    }


def _mudata_shadow():
    pytest.importorskip("mudata")
    from shadows.mudata.shadow import MuDataShadow

    return MuDataShadow


@pytest.mark.parametrize("cls", ["AnnDataShadow", "MuDataShadow"])
def test_property_docstrings_render_without_a_type_split(cls):
    # napoleon reads "xxx: yyy" on a property's first line as "type: description"
    pytest.importorskip("sphinx")
    from sphinx.ext.napoleon import Config
    from sphinx.ext.napoleon.docstring import NumpyDocstring

    klass = AnnDataShadow if cls == "AnnDataShadow" else _mudata_shadow()
    docs = _properties(klass)
    for must in (
        ("X", "filename", "mode", "isbacked")
        if cls == "AnnDataShadow"
        else ("filename", "mode", "isbacked", "axis", "mod")
    ):
        assert must in docs, f"{cls}.{must} has no docstring"
    config = Config(napoleon_use_rtype=False)
    for name, doc in docs.items():
        out = str(NumpyDocstring(doc, config, what="attribute", name=name))
        assert ":type:" not in out, f"{cls}.{name} renders with a type split off:\n{out}"


def test_isbacked_and_filename_say_what_the_shadow_does():
    assert "Always ``False``" in AnnDataShadow.isbacked.__doc__
    assert AnnDataShadow.isbacked.__doc__ != ad.AnnData.isbacked.__doc__
    assert AnnDataShadow.filename.__doc__ != ad.AnnData.filename.__doc__
    assert AnnDataShadow.layers_keys.__doc__


@pytest.fixture(scope="module")
def api_page(tmp_path_factory) -> str:
    pytest.importorskip("sphinx")
    pytest.importorskip("myst_nb")
    pytest.importorskip("sphinx_book_theme")
    out = tmp_path_factory.mktemp("html")
    env = {**os.environ, "SHADOWS_DOCS_EXECUTE": "off", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "sphinx", "-q", "-b", "html", str(ROOT / "docs"), str(out)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-3000:]
    import html
    import re

    page = (out / "api.html").read_text()
    return html.unescape(re.sub(r"<[^>]+>", "", page))


def test_api_reference_hides_internals_and_documents_the_surface(api_page):
    for private in ("_view", "_storage", "_axes"):  # as names of their own, not inside is_view or from_storage
        assert not re.search(rf"(?<![\w.]){private}\b", api_page), private
    for helper in ("detach(", "subset_in_place", "check_attached", "matrix_is_only_sliced", "accessor_get"):
        assert helper not in api_page, helper
    for documented in ("make_dataset", "layers_keys", "Always False", "Mode the file is open with", "SlicedMatrix"):
        assert documented in api_page, documented


def _public_members(cls) -> list[str]:
    """The public methods and properties a class defines itself (not those it inherits from anndata or mudata)."""
    return [
        name
        for name, value in vars(cls).items()
        if not name.startswith("_") and (isinstance(value, property | classmethod | staticmethod) or callable(value))
    ]


def test_api_reference_lists_every_public_name(api_page):
    import shadows

    for name in set(shadows.__all__) - {"pp", "settings"}:
        assert name in api_page, f"shadows.{name} is not in docs/api.md"
    for name in shadows.pp.__all__:
        assert f"shadows.pp.{name}" in api_page, f"shadows.pp.{name} is not in docs/api.md"
    for field in shadows.settings.__dataclass_fields__:
        assert field in api_page, f"shadows.settings.{field} is not in docs/api.md"
    for cls in (AnnDataShadow, _mudata_shadow()):
        for name in _public_members(cls):
            assert f"{cls.__name__}.{name}" in api_page, f"{cls.__name__}.{name} is not in docs/api.md"
    # the renamed arguments, with their new names
    assert "Deprecated names" in api_page
    for old, new in (("src", "source"), ("data", "source"), ("path", "source"), ("layers=True", 'layer="X"')):
        assert old in api_page and new in api_page, old


def _shadows_classes() -> list[type]:
    import importlib
    import pkgutil

    import shadows

    classes = []
    for info in pkgutil.walk_packages(shadows.__path__, "shadows."):
        if info.name.endswith("__main__"):
            continue
        try:
            module = importlib.import_module(info.name)
        except ImportError:  # an optional dependency (mudata...) is missing
            continue
        classes += [c for c in vars(module).values() if inspect.isclass(c) and c.__module__ == info.name]
    return classes


def test_no_property_docstring_renders_with_a_type_split():
    # every class of the package, rendered or not: a page may list it tomorrow
    pytest.importorskip("sphinx")
    from sphinx.ext.napoleon import Config
    from sphinx.ext.napoleon.docstring import NumpyDocstring

    config = Config(napoleon_use_rtype=False)
    split = []
    for cls in _shadows_classes():
        for name, doc in _properties(cls).items():
            if ":type:" in str(NumpyDocstring(doc, config, what="attribute", name=name)):
                split.append(f"{cls.__module__}.{cls.__qualname__}.{name}: {doc.splitlines()[0]}")
    assert not split, "property docstrings whose first line napoleon splits at ': ' into a type:\n" + "\n".join(split)
