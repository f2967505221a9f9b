"""Accelerators for local files: reads and writes past h5py and zarr where they are measurably faster.

* :mod:`~shadows.io.fast.pread`: uncompressed HDF5 datasets read with ``os.preadv`` in threads;
* :mod:`~shadows.io.fast.pwrite`: new uncompressed 1-D HDF5 datasets written with ``os.pwrite``;
* :mod:`~shadows.io.fast.h5copy`: whole zarr elements copied as files (HDF5 ones with h5py's ``Group.copy``);
* :mod:`~shadows.io.fast.zarr_chunks`: the chunks of a local 1-D zarr array decoded straight into a buffer.

The contract every accelerator keeps: it says whether it can serve a dataset (else the caller runs the h5py/zarr
path, which the tests also run), it is guarded by platform (``os.preadv``, ``os.pwrite``, ``fcntl`` may be
missing), and ``shadows.settings.fast_io = False`` (or ``SHADOWS_FAST_IO=0``) turns all of them off.  Each one's
own gain against the h5py/zarr path is measured by the ``fastio/*`` cases of ``benchmarks/run.py``.

May import: :mod:`shadows.io`, :mod:`shadows.settings`.
"""
