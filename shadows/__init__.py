"""shadows: lazy, low-memory stand-ins for AnnData and MuData files.

>>> from shadows import AnnDataShadow
>>> s = AnnDataShadow("atlas.h5ad")  # doctest: +SKIP
"""

from shadows import pp, remote
from shadows.backends import array_backends, register_array_backend, register_table_backend, table_backends
from shadows.collection.shadow import concat
from shadows.core.anndata import AnnDataShadow
from shadows.ops.convert import convert
from shadows.ops.repack import repack
from shadows.ops.stats import stats
from shadows.settings import settings
from shadows.spec.lazy_array import ElementSource, LazyArray

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
    "remote",
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
            from shadows.mudata.shadow import MuDataShadow
        except ImportError as e:
            if e.name == "mudata":  # mudata itself is missing (not something it needs)
                raise ImportError("MuDataShadow needs the mudata package: pip install shadows[mudata]") from e
            raise
        return MuDataShadow
    raise AttributeError(f"module 'shadows' has no attribute {name!r}")
