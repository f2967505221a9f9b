"""Chunked iteration and streaming writes (``chunked_X``, ``write_h5ad``/``write_zarr`` of shadows and views).

The oracle is anndata: blocks must tile ``anndata.read_h5ad(src)[idx].X``, and a streamed file must read back
(with anndata) equal to anndata's own view of the source, element by element.
"""

from __future__ import annotations

import os

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st
from oracle import assert_adata_equal, read_oracle
from stream_data import SOURCES, dense_of, rich, write_source

import shadows
from shadows import AnnDataShadow
from shadows.progress import progress_bar, show_progress
from shadows.stream.anndata_writer import write_anndata
from shadows.stream.shadow import chunked, write_subset

CELLS = np.array([0, 2, 3, 7, 8, 11, 20, 21, 22, 30, 38])
GENES = np.array([1, 3, 4, 9, 12, 14])


def _source(request, tmp_path_factory):
    fmt, zf, kind = request.param
    directory = tmp_path_factory.mktemp(f"{fmt}{zf or ''}{kind}")
    path = write_source(rich(kind=kind, seed=3), directory, fmt, zf)
    return path, read_oracle(path), kind


# every store format with every kind of X
source = pytest.fixture(scope="module", params=[(f, z, k) for f, z in SOURCES for k in ("csr", "csc", "dense")])(
    _source
)
# every store format, X of one kind each (for what does not depend on X)
store = pytest.fixture(
    scope="module", params=[(f, z, k) for (f, z), k in zip(SOURCES, ("csc", "dense", "csr"), strict=True)]
)(_source)


def _x_blocks(blocks):
    """``chunked_X`` yields ``(block, start, end)`` (anndata's order); ``chunked`` yields ``(start, stop, block)``."""
    for blk, a, b in blocks:
        assert isinstance(a, int) and isinstance(b, int), (type(a), type(b))
        yield a, b, blk


def _tiles(blocks, axis: int, n: int) -> np.ndarray:
    parts, at = [], 0
    for a, b, blk in blocks:
        assert a == at and b > a, (a, b, at)
        parts.append(dense_of(blk))
        at = b
    assert at == n
    return np.concatenate(parts, axis=axis)


# --- chunked iteration ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("chunk_size", [4, None])
def test_chunked_tiles_the_matrix_of_a_view(source, axis, chunk_size):
    path, ref, kind = source
    with AnnDataShadow(path) as s:
        view = s[CELLS, GENES]
        want = dense_of(ref[CELLS, GENES].X)
        # chunk_size None: chunked() sizes blocks by the memory budget (chunked_X's None is anndata's 6000 rows)
        blocks = (
            chunked(view, None, axis=axis) if chunk_size is None else _x_blocks(view.chunked_X(chunk_size, axis=axis))
        )
        got = _tiles(blocks, axis, want.shape[axis])
        np.testing.assert_array_equal(got, want)
        blk, _, _ = next(iter(s.chunked_X(9, axis=axis)))
        # blocks keep the stored format (what anndata's backed X[a:b] gives)
        assert (blk.format if sp.issparse(blk) else "dense") == kind


@pytest.mark.parametrize("element", ["layers/counts", "layers/csc", "layers/dense", "obsm/X_pca", "raw/X"])
def test_chunked_any_matrix_element(store, element):
    path, ref, _ = store
    want = {"obsm/X_pca": ref.obsm["X_pca"], "raw/X": ref.raw.X}.get(element)
    if want is None:
        want = ref.layers[element.split("/")[1]]
    with AnnDataShadow(path) as s:
        got = _tiles(chunked(s, 6, element=element), 0, ref.n_obs)
        np.testing.assert_array_equal(got, dense_of(want))
    with AnnDataShadow(path) as s:
        got = _tiles(_x_blocks(s.chunked_X(5, layer="counts", axis=1)), 1, ref.n_vars)
        np.testing.assert_array_equal(got, dense_of(ref.layers["counts"]))


def test_chunked_across_the_stored_order_goes_through_scratch_space(tmp_path):
    # a budget far below the matrix: blocks across the minor axis come from the regrouping pass, not from scans
    a = rich(300, 40, "csr", seed=5)
    path = write_source(a, tmp_path, "h5ad", None)
    with shadows.settings.override(memory_budget=2**16), AnnDataShadow(path) as s:
        got = _tiles(_x_blocks(s.chunked_X(16, axis=1)), 1, 40)
        got_view = _tiles(_x_blocks(s[::2, ::3].chunked_X(4, axis=1)), 1, len(range(0, 40, 3)))
    np.testing.assert_array_equal(got, dense_of(a.X))
    np.testing.assert_array_equal(got_view, dense_of(a.X)[::2, ::3])


def test_chunked_sees_pending_values_and_rejects_bad_arguments(tmp_path):
    path = write_source(rich(), tmp_path, "h5ad", None)
    with AnnDataShadow(path) as s:
        new = np.arange(40 * 15, dtype=np.float64).reshape(40, 15)
        s.layers["new"] = new
        np.testing.assert_array_equal(_tiles(_x_blocks(s.chunked_X(6, layer="new")), 0, 40), new)
        with pytest.raises(ValueError, match="axis"):
            next(s.chunked_X(5, axis=2))
        with pytest.raises(ValueError, match="chunk_size"):
            next(s.chunked_X(0))
        with pytest.raises(KeyError, match="nope"):
            next(s.chunked_X(5, layer="nope"))
        with pytest.raises(TypeError, match="not a matrix"):
            next(chunked(s, 5, element="obsm/frame"))


# --- streaming writes ---------------------------------------------------------------------------------------------------
_KEYS = {
    "view": (CELLS, GENES),
    "whole": (slice(None), slice(None)),
    "cells": (CELLS[::-1], slice(None)),
    "genes-unsorted": (slice(None), GENES[::-1]),
}


def _check_stream(path, ref, out, which):
    key = _KEYS[which]
    with AnnDataShadow(path) as s:
        view = s[key]
        (view.write_h5ad if out.suffix == ".h5ad" else view.write_zarr)(out)
    back = read_oracle(out)
    want = ref[key].to_memory()
    assert_adata_equal(back, want, f"{which}->{out.suffix}", vectors=False, to_memory=False)
    # unused categories are dropped, as anndata's views do (scanpy relies on it)
    assert list(back.obs["rare"].cat.categories) == list(want.obs["rare"].cat.categories)


def test_streamed_view_equals_anndatas_subset(source, tmp_path):
    path, ref, _ = source
    _check_stream(path, ref, tmp_path / "out.h5ad", "view")


@pytest.mark.parametrize(
    ("which", "suffix"), [("view", "zarr"), ("whole", "h5ad"), ("cells", "zarr"), ("genes-unsorted", "h5ad")]
)
def test_streamed_file_equals_anndatas_subset(store, tmp_path, which, suffix):
    path, ref, _ = store
    _check_stream(path, ref, tmp_path / f"out.{suffix}", which)


def test_streamed_file_carries_anndatas_encodings(tmp_path):
    path = write_source(rich(kind="csr"), tmp_path, "h5ad", None)
    out = tmp_path / "out.h5ad"
    with AnnDataShadow(path) as s:
        s[CELLS, GENES].write_h5ad(out)
    with h5py.File(out) as f:
        assert f.attrs["encoding-type"] == "anndata" and f.attrs["encoding-version"] == "0.1.0"
        x = f["X"]
        assert x.attrs["encoding-type"] == "csr_matrix" and x.attrs["encoding-version"] == "0.1.0"
        assert list(x.attrs["shape"]) == [len(CELLS), len(GENES)]
        assert f["obs"].attrs["_index"] == "_index" and "group" in list(f["obs"].attrs["column-order"])
        assert f["layers"].attrs["encoding-type"] == "dict"
        assert f["layers/dense"].attrs["encoding-type"] == "array"
        assert f["raw"].attrs["encoding-type"] == "raw"
    a = ad.read_h5ad(out, backed="r")  # anndata's backed mode opens it too
    np.testing.assert_array_equal(dense_of(a.X[:]), dense_of(read_oracle(path)[CELLS, GENES].X))


def test_stream_with_small_budget_and_compression(tmp_path):
    a = rich(200, 30, "csr", seed=2)
    path = write_source(a, tmp_path, "h5ad", None)
    out = tmp_path / "small.h5ad"
    cells = np.arange(0, 200, 3)
    with shadows.settings.override(memory_budget=2**16), AnnDataShadow(path) as s:
        write_subset(s[cells, 5:25], out, "h5ad", compression="gzip", chunk_size=None)
    back = read_oracle(out)
    assert_adata_equal(back, read_oracle(path)[cells, 5:25].to_memory(), "small budget", vectors=False, to_memory=False)
    with h5py.File(out) as f:
        assert f["X/data"].compression == "gzip" and f["obsm/X_pca"].compression == "gzip"


def test_stream_includes_pending_changes(tmp_path):
    path = write_source(rich(kind="csr", light=True), tmp_path, "h5ad", None)
    out = tmp_path / "pending.zarr"
    with AnnDataShadow(path) as s:
        s.obsm["new"] = np.ones((40, 2))
        s.obs["added"] = np.arange(40)
        del s.layers["dense"]
        s.uns["note"] = "changed"
        s[CELLS].write_zarr(out)
    back = read_oracle(out)
    np.testing.assert_array_equal(back.obsm["new"], np.ones((len(CELLS), 2)))
    np.testing.assert_array_equal(back.obs["added"].to_numpy(), CELLS)
    assert "dense" not in back.layers and back.uns["note"] == "changed"


def test_stream_refuses_its_own_file_and_leaves_destination_on_failure(tmp_path):
    path = write_source(rich(), tmp_path, "h5ad", None)
    with AnnDataShadow(path) as s:
        with pytest.raises(ValueError, match="into the file it is read from"):
            s.write_h5ad(path)
        with pytest.raises(ValueError, match="file_format"):
            write_subset(s, tmp_path / "x.loom", "loom")
        dst = tmp_path / "keep.h5ad"
        dst.write_bytes(b"previous")
        s.obsm["bad"] = np.array([object()] * 40, dtype=object)  # anndata cannot write this
        with pytest.raises(Exception):  # noqa: B017 - whatever anndata raises, the destination must survive
            s.write_h5ad(dst)
        assert dst.read_bytes() == b"previous"
        assert [p.name for p in tmp_path.iterdir() if ".shadows-" in p.name] == []


@pytest.mark.parametrize("kind", ["h5", "zarr"])
def test_write_anndata_into_a_group_of_an_open_file(tmp_path, kind):
    # what a MuData writer does for each modality
    a = rich(kind="csc", light=True)
    path = write_source(a, tmp_path, "h5ad", None)
    out = tmp_path / ("mu.h5" if kind == "h5" else "mu.zarr")
    with AnnDataShadow(path) as s:
        f = h5py.File(out, "w") if kind == "h5" else zarr.open_group(str(out), mode="w", zarr_format=2)
        write_anndata(s[CELLS], f.create_group("mod").create_group("rna"))
        if kind == "h5":
            f.close()
    if kind == "zarr":
        zarr.consolidate_metadata(str(out))
        g = zarr.open_group(str(out), mode="r")
    else:
        g = h5py.File(out)
    back = ad.io.read_elem(g["mod/rna"])
    assert_adata_equal(back, read_oracle(path)[CELLS].to_memory(), "modality", vectors=False, to_memory=False)


# --- progress -------------------------------------------------------------------------------------------------------------
def test_progress_follows_settings(capsys, tmp_path):
    with shadows.settings.override(progress=None):
        assert not show_progress(None, 10)  # small: silent
    with shadows.settings.override(progress=False):
        assert not show_progress(None, 10**12)
    with shadows.settings.override(progress=True):
        assert show_progress(None, 1)
    assert show_progress(True, 1) and not show_progress(False, 10**12)
    path = write_source(rich(), tmp_path, "h5ad", None)
    with AnnDataShadow(path) as s:
        list(s.chunked_X(10, progress=True))
    assert "chunks of X" in capsys.readouterr().err
    with AnnDataShadow(path) as s:
        list(s.chunked_X(10, progress=False))
    assert capsys.readouterr().err == ""
    bar = progress_bar(100, "x", progress=False)
    bar.update(5)
    bar.close()


def test_obs_names_and_frames_of_large_views_are_read_in_pieces(tmp_path):
    # a view of a table larger than one read span goes through the piecewise reader: same result as anndata's
    n = 20000
    obs = pd.DataFrame(
        {"g": pd.Categorical(np.where(np.arange(n) % 1000 == 0, "rare", "common"))},
        index=[f"c{i}" for i in range(n)],
    )
    a = ad.AnnData(X=sp.random(n, 3, density=0.1, format="csr", random_state=0, dtype=np.float32), obs=obs)
    path = write_source(a, tmp_path, "h5ad", None)
    cells = np.arange(1, n, 7)
    out = tmp_path / "big.h5ad"
    with AnnDataShadow(path) as s:
        s[cells].write_h5ad(out)
    back = read_oracle(out)
    want = read_oracle(path)[cells]
    pd.testing.assert_frame_equal(back.obs, pd.DataFrame(want.obs))
    assert os.path.getsize(out) > 0


@pytest.mark.parametrize("build", ["build_pre07_dense", "build_pre07_h5sparse", "build_v07", "build_pre07_neighbors"])
def test_stream_legacy_files_into_the_current_format(tmp_path, build):
    import legacy_files

    maker = getattr(legacy_files, build)
    path, _ = maker(tmp_path, "csr") if build == "build_pre07_h5sparse" else maker(tmp_path)
    ref = read_oracle(path)
    cells = np.arange(0, ref.n_obs, 2)
    out = tmp_path / "modern.h5ad"
    with AnnDataShadow(path) as s:
        s[cells].write_h5ad(out)
    with h5py.File(out) as f:  # written as current anndata writes: every element encoded
        assert f.attrs["encoding-type"] == "anndata" and f["obs"].attrs["encoding-type"] == "dataframe"
    # uns of anndata < 0.7 views: the shadow does not trim <col>_colors there yet (reported), so uns is left out
    legacy_uns = build == "build_pre07_dense"
    assert_adata_equal(
        read_oracle(out), ref[cells].to_memory(), build, vectors=False, to_memory=False, uns=not legacy_uns
    )


def test_anndata_write_options(tmp_path):
    path = write_source(rich(kind="csr"), tmp_path, "h5ad", None)
    with AnnDataShadow(path) as s:
        s.obs["label"] = np.array(["x", "y"] * 20, dtype=object)  # repeated strings: anndata writes a categorical
        s.write_h5ad(tmp_path / "d.h5ad", as_dense=["X"])
        assert not isinstance(s.obs["label"].dtype, pd.CategoricalDtype)  # the shadow's own table is left alone
        s.write_h5ad(tmp_path / "s.h5ad", convert_strings_to_categoricals=False)
    dense, strings = read_oracle(tmp_path / "d.h5ad"), read_oracle(tmp_path / "s.h5ad")
    assert isinstance(dense.X, np.ndarray) and sp.issparse(dense.layers["counts"])
    np.testing.assert_array_equal(dense.X, dense_of(read_oracle(path).X))
    assert isinstance(dense.obs["label"].dtype, pd.CategoricalDtype)
    assert not isinstance(strings.obs["label"].dtype, pd.CategoricalDtype)


@pytest.mark.parametrize("sel", [None, slice(13, 171)])
def test_blocks_read_deferred_equal_blocks_read_ahead(tmp_path, sel):
    """``iter_major(deferred=True)`` hands out reading functions; called from several threads, each reads into
    its own buffers, and the blocks equal those read ahead into shared buffers."""
    from concurrent.futures import ThreadPoolExecutor

    from shadows.stream.blocks import iter_major, part_of

    m = sp.random(200, 40, density=0.2, format="csr", random_state=5, dtype=np.float32)
    path = tmp_path / "m.h5ad"
    ad.AnnData(m).write_h5ad(path)
    with h5py.File(path, "r") as f:
        part = part_of(f["X"], (sel, None))
        ahead = [(a, b, blk.copy()) for a, b, blk in iter_major(part, 16, reuse=3)]
        jobs = list(iter_major(part, 16, deferred=True))
        assert all(callable(read) for _, _, read in jobs)
        with ThreadPoolExecutor(3) as pool:
            got = list(pool.map(lambda job: (job[0], job[1], job[2]().copy()), jobs))
    want = m[sel] if sel is not None else m
    assert [(a, b) for a, b, _ in got] == [(a, b) for a, b, _ in ahead]
    for (a, b, x), (_, _, y) in zip(got, ahead, strict=True):
        np.testing.assert_array_equal(x.toarray(), want[a:b].toarray())
        np.testing.assert_array_equal(y.toarray(), want[a:b].toarray())


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 40), min_size=1, max_size=200), st.integers(1, 120))
def test_span_cuts_of_ordered_spans_are_maximal(lengths, target):
    """Ranges of consecutive items (a matrix's rows): each range spans at most ``target`` or holds one item, and
    the next item would not have fitted."""
    from shadows.stream.blocks import span_cuts

    ip = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    lo, hi = ip[:-1], ip[1:]
    cuts = span_cuts(lo, hi, target)
    assert cuts[0][0] == 0 and cuts[-1][1] == len(lengths)
    assert all(b0 == a1 for (_, b0), (a1, _) in zip(cuts[:-1], cuts[1:], strict=True))
    for a, b in cuts:
        assert b - a == 1 or hi[b - 1] - lo[a] <= target
        if b < len(lengths):
            assert hi[b] - lo[a] > target
