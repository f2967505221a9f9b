"""Stores: open and sniff an h5ad/h5mu file or a zarr store, modes, file fingerprints, crash-safe commit primitives.

The bottom layer.  Nothing here knows AnnData: :mod:`~shadows.io.storage` hides the differences between h5py and
zarr behind one :class:`~shadows.io.storage.Storage`, :mod:`~shadows.io.commit_guard` numbers the commit points
of every write and shields them from Ctrl-C, and :mod:`~shadows.io.zarr_journal` commits staged zarr elements and
recovers an interrupted commit.  :mod:`shadows.io.fast` holds the optional accelerators for local files.

May import: :mod:`shadows.settings` and :mod:`shadows.progress` only.
"""
