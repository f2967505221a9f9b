"""Write-back: push a shadow's pending changes into the file it is open on, so that no fault loses data.

:mod:`~shadows.writeback.plan` decides what to write (a plan of element operations);
:mod:`~shadows.writeback.hdf5` and :mod:`~shadows.writeback.zarr` carry a plan out crash-safely in an HDF5 file
or a zarr store (staging, then commit points); :mod:`~shadows.writeback.values` turns values into what
``anndata.io.write_elem`` takes.

May import: :mod:`shadows.core` and the layers below it.
"""
