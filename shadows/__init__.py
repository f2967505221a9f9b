"""shadows: lazy, low-memory stand-ins for AnnData and MuData files.

>>> from shadows import AnnDataShadow
>>> s = AnnDataShadow("atlas.h5ad")  # doctest: +SKIP
"""

from . import pp
from .anndata import AnnDataShadow
from .backends import array_backends, register_array_backend, register_table_backend, table_backends
from .collection import concat
from .convert import convert
from .lazy import ElementSource, LazyArray
from .repack import repack
from .settings import settings
from .stats import stats

__version__ = "0.2.0"

__all__ = [
    "AnnDataShadow",
    "ElementSource",
    "LazyArray",
    "MuDataShadow",
    "array_backends",
    "concat",
    "convert",
    "pp",
    "register_array_backend",
    "register_table_backend",
    "repack",
    "settings",
    "stats",
    "table_backends",
]


def __getattr__(name: str):
    # MuDataShadow needs the optional mudata package: imported on first use, so that `import shadows` works without it
    if name == "MuDataShadow":
        try:
            from .mudata import MuDataShadow
        except ImportError as e:
            if e.name == "mudata":  # mudata itself is missing (not something it needs)
                raise ImportError("MuDataShadow needs the mudata package: pip install shadows[mudata]") from e
            raise
        return MuDataShadow
    raise AttributeError(f"module 'shadows' has no attribute {name!r}")
