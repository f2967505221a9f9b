"""One HDF5 read for several ranges (``shadows.spec.h5_ranges``) against slicing the dataset range by range."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shadows.spec.h5_ranges import read_ranges, union_worth


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    path = tmp_path_factory.mktemp("ranges") / "r.h5"
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        f["contiguous"] = rng.random(5000).astype(np.float32)
        f.create_dataset("chunked", data=np.arange(5000, dtype=np.int64), chunks=(97,))
        f["big_endian"] = np.arange(5000, dtype=">i4")
    with h5py.File(path, "r") as f:
        yield {k: f[k] for k in f}


@settings(max_examples=40, deadline=None)
@given(
    cuts=st.lists(st.integers(0, 5000), min_size=0, max_size=40),
    name=st.sampled_from(["contiguous", "chunked", "big_endian"]),
)
def test_equals_range_by_range(datasets, cuts, name):
    ds = datasets[name]
    edges = np.sort(np.asarray(cuts, dtype=np.int64))
    los, his = edges[0::2], edges[1::2]
    los = los[: len(his)]
    got = read_ranges(ds, los, his)
    want = np.concatenate([ds[lo:hi] for lo, hi in zip(los, his, strict=True)] + [np.zeros(0, ds.dtype)])
    np.testing.assert_array_equal(got, want)
    assert got.dtype == ds.dtype


def test_union_worth_only_for_a_few_ranges_of_1d_h5py(datasets):
    assert union_worth(datasets["contiguous"], 6)
    assert not union_worth(datasets["contiguous"], 1)
    assert not union_worth(datasets["contiguous"], 10_000)
    assert not union_worth(np.arange(10), 6)
