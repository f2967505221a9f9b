"""Whole-array reads that show a progress bar when they are large (``shadows.settings.progress_threshold``).

Reading all of ``X`` of an atlas takes a while; when a bar is to be shown (see :mod:`shadows.progress`), the
array is read in blocks of rows into one preallocated result, and the bar advances per block.  Otherwise it is
read in one call, as before.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from shadows.progress import progress_bar, show_progress

# bytes per read while a bar is shown: large enough to run at full storage speed, small enough for a smooth bar
_BLOCK_BYTES = 16 * 2**20


def nbytes_of(*arrays: Any) -> int:
    """Stored (uncompressed) bytes of h5py/zarr arrays, from their metadata."""
    return int(sum(int(np.prod(a.shape, dtype=np.int64)) * a.dtype.itemsize for a in arrays))


def wants_bar(*arrays: Any) -> bool:
    """Whether reading all of ``arrays`` should show a progress bar (numeric arrays above the threshold)."""
    if not all(a.dtype.kind in "biufc" and len(a.shape) >= 1 for a in arrays):
        return False
    return show_progress(None, nbytes_of(*arrays))


def read_all(arrays: list[Any], desc: str) -> list[np.ndarray]:
    """Read every array of ``arrays`` completely, in blocks along the first axis, advancing one bar."""
    bar = progress_bar(nbytes_of(*arrays), desc)
    out = []
    try:
        for a in arrays:
            buf = np.empty(a.shape, dtype=a.dtype)
            row_bytes = max(1, nbytes_of(a) // max(1, a.shape[0]))
            step = max(1, _BLOCK_BYTES // row_bytes)
            for s in range(0, a.shape[0], step):
                e = min(a.shape[0], s + step)
                buf[s:e] = a[s:e]
                bar.update((e - s) * row_bytes)
            out.append(buf)
    finally:
        bar.close()
    return out
