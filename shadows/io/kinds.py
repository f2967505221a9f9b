"""The kinds of store (HDF5, zarr), the names users give them, the modes, and the error a store that cannot be
opened raises: what :mod:`~shadows.io.storage`, :mod:`~shadows.io.remote` and :mod:`~shadows.io.zarr_journal`
share without importing each other."""

# format= names -> the kind of store
FORMATS = {"h5ad": "h5", "h5mu": "h5", "hdf5": "h5", "h5": "h5", "zarr": "zarr"}
MODES = ("r", "r+")


class StorageError(OSError):
    """The file or store cannot be opened as requested."""
