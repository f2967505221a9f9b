"""Writing the values of new, uncompressed 1-D HDF5 datasets with the operating system's ``pwrite``.

Why this exists: h5py holds the GIL for the whole of a write, so while a large array is written nothing else in the
process runs.  A conversion writes its output while another thread prepares the next piece (reading scratch
space, stacking blocks): with h5py's writes the two take turns instead of overlapping.  ``os.pwrite`` releases the
GIL.

Only datasets made for it take this path (:func:`create`): contiguous, uncompressed, in the machine's byte order,
their space allocated in the file when they are created (so HDF5 knows where they lie and never writes there
itself), in a file opened for writing with the default (``sec2``) driver.  h5py never writes their values, so no
HDF5 buffer can hold a stale copy; everything else about the file (metadata, attributes, other datasets) is
HDF5's as usual.  Datasets that cannot be made so are created normally and written through h5py.
"""

from __future__ import annotations

import os
import weakref
from typing import Any

import h5py
import numpy as np

from .rawread import plain_numeric


def create(parent: h5py.Group, name: str, n: int, dtype: Any) -> tuple[h5py.Dataset, RawWriter | None]:
    """A new 1-D dataset of ``n`` values, and a :class:`RawWriter` for it (``None``: write it through h5py)."""
    dtype = np.dtype(dtype)
    if n <= 0 or not plain_numeric(dtype) or parent.file.driver != "sec2":
        return parent.create_dataset(name, shape=(n,), dtype=dtype), None
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)  # the space is reserved now: its address is known
    ds = parent.create_dataset(name, shape=(n,), dtype=dtype, dcpl=dcpl, fill_time="never")
    offset = ds.id.get_offset()
    if offset is None or ds.chunks is not None:
        return ds, None
    return ds, RawWriter(os.fspath(ds.file.filename), int(offset), n, dtype)


class RawWriter:
    """Writes ranges of one contiguous dataset at its address in the file, through a descriptor of its own."""

    def __init__(self, path: str, offset: int, n: int, dtype: np.dtype):
        self.offset, self.n, self.dtype = offset, n, dtype
        self.fd = os.open(path, os.O_WRONLY)
        self._closer = weakref.finalize(self, os.close, self.fd)

    def write(self, start: int, values: np.ndarray) -> None:
        """Store ``values`` as elements ``start:start + len(values)``."""
        values = np.ascontiguousarray(values, dtype=self.dtype)
        stop = start + len(values)
        if not 0 <= start <= stop <= self.n:
            raise IndexError(f"elements {start}:{stop} out of range for a dataset of {self.n}")
        buf = memoryview(values).cast("B")
        at = self.offset + start * self.dtype.itemsize
        done = 0
        while done < len(buf):
            done += os.pwrite(self.fd, buf[done:], at + done)

    def close(self) -> None:
        self._closer()
