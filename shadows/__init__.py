"""shadows: lazy, low-memory stand-ins for AnnData and MuData files.

>>> from shadows import AnnDataShadow
>>> s = AnnDataShadow("atlas.h5ad")  # doctest: +SKIP
"""

from .anndata import AnnDataShadow
from .backends import array_backends, register_array_backend, register_table_backend, table_backends
from .lazy import ElementSource, LazyArray
from .settings import settings

__version__ = "0.2.0"

__all__ = [
    "AnnDataShadow",
    "ElementSource",
    "LazyArray",
    "array_backends",
    "register_array_backend",
    "register_table_backend",
    "settings",
    "table_backends",
]
