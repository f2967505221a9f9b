"""Several ranges of a 1-D HDF5 dataset in one ``H5Dread``: the union of their hyperslabs.

Why: a few scattered cells of a CSR matrix are a few short ranges of ``indptr``, ``data`` and ``indices``; read one
``read_direct`` per range, h5py's selection objects and the read call cost about 0.15 ms each, which on the 1M x
20k file made 6 cells 4.2 ms against 1.5 ms for the same bytes read raw (18 calls). One union selection per array
makes it 3 calls.  HDF5 returns the elements of a union selection in file order, so sorted, disjoint ranges come
back concatenated in the order given.
"""

from __future__ import annotations

from typing import Any

import h5py
import numpy as np

# Above this many ranges HDF5's span-tree union costs more than it saves (and the callers' coalesced reads are
# long anyway): they are read one by one.
MAX_UNION = 256


def read_ranges(ds: h5py.Dataset, los: np.ndarray, his: np.ndarray) -> np.ndarray:
    """Elements ``los[k]:his[k]`` of the 1-D dataset ``ds``, for sorted disjoint ranges, concatenated.

    Parameters
    ----------
    ds
        A 1-D h5py dataset.
    los, his
        Starts and ends of the ranges, sorted, not overlapping (empty ranges are skipped).

    Returns
    -------
    numpy.ndarray
        ``np.concatenate([ds[lo:hi] for lo, hi in zip(los, his)])``, read in one call.
    """
    los = np.asarray(los, dtype=np.int64)
    his = np.asarray(his, dtype=np.int64)
    keep = his > los
    los, his = los[keep], his[keep]
    n = int((his - los).sum())
    out = np.empty(n, dtype=ds.dtype)
    if n == 0:
        return out
    space = ds.id.get_space()
    space.select_none()
    for lo, hi in zip(los.tolist(), his.tolist(), strict=True):
        space.select_hyperslab((lo,), (hi - lo,), op=h5py.h5s.SELECT_OR)
    ds.id.read(h5py.h5s.create_simple((n,)), space, out)
    return out


def union_worth(ds: Any, n_ranges: int) -> bool:
    """Whether ``n_ranges`` ranges of ``ds`` are best read as one union selection (an h5py dataset, 2 or more
    ranges, at most :data:`MAX_UNION`)."""
    return isinstance(ds, h5py.Dataset) and len(ds.shape) == 1 and 1 < n_ranges <= MAX_UNION
