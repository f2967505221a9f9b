"""Values as :func:`anndata.io.write_elem` takes them, and a strict equality used to skip unchanged ``uns`` leaves."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from shadows.core.lazy_x import is_dask_array
from shadows.core.mapping import untrack
from shadows.spec.lazy_array import LazyArray


def writable(value: Any) -> Any:
    """``value`` as something :func:`anndata.io.write_elem` writes: plain dicts, numpy/scipy/pandas objects."""
    if isinstance(value, dict):
        return {k: writable(v) for k, v in untrack(value).items()}
    if isinstance(value, LazyArray):
        return value.to_memory()
    if value is None or isinstance(value, np.ndarray | np.generic | str | bytes | int | float | bool):
        return value
    if sp.issparse(value) or isinstance(value, pd.DataFrame | pd.Categorical | pd.api.extensions.ExtensionArray):
        return value
    mod = type(value).__module__.split(".")[0]
    if mod in ("polars", "pyarrow") and hasattr(value, "to_pandas"):
        return value.to_pandas()
    if mod == "dask" or is_dask_array(value):  # anndata writes these itself, choosing its writer by exact types
        from shadows.backends.dask import with_scipy_meta

        return with_scipy_meta(value)
    if mod == "awkward":
        return value  # anndata writes these itself
    if mod in ("torch", "jax", "jaxlib", "cupy"):
        if hasattr(value, "detach"):
            value = value.detach().cpu()
        return np.asarray(value)
    return value


def values_equal(a: Any, b: Any) -> bool:
    """Strict equality of two element values (same kind, dtype, shape and values) used to skip unchanged leaves."""
    if isinstance(a, dict) or isinstance(b, dict):
        return (
            isinstance(a, dict)
            and isinstance(b, dict)
            and set(a) == set(b)
            and all(values_equal(a[k], b[k]) for k in a)
        )
    if sp.issparse(a) or sp.issparse(b):
        return (
            sp.issparse(a)
            and sp.issparse(b)
            and a.format == b.format
            and a.shape == b.shape
            and a.dtype == b.dtype
            and (a != b).nnz == 0
        )
    if isinstance(a, pd.DataFrame | pd.Series) or isinstance(b, pd.DataFrame | pd.Series):
        return (
            type(a) is type(b)
            and a.equals(b)
            and list(getattr(a, "dtypes", [a.dtype])) == list(getattr(b, "dtypes", [b.dtype]))
        )
    if isinstance(a, pd.Categorical | pd.api.extensions.ExtensionArray) or isinstance(
        b, pd.Categorical | pd.api.extensions.ExtensionArray
    ):
        return type(a) is type(b) and a.dtype == b.dtype and pd.Series(a).equals(pd.Series(b))
    if isinstance(a, str | bytes) or isinstance(b, str | bytes):
        return type(a) is type(b) and a == b
    x, y = np.asarray(a), np.asarray(b)
    if x.shape != y.shape:
        return False
    if x.dtype.kind in "OUST" or y.dtype.kind in "OUST":
        return x.dtype.kind in "OUST" and y.dtype.kind in "OUST" and strings(x) == strings(y)
    if x.dtype != y.dtype:
        return False
    return bool(np.array_equal(x, y, equal_nan=x.dtype.kind in "fc"))


def strings(a: np.ndarray) -> list[str]:
    """The values of a string array (object, bytes, unicode or numpy's StringDType) as a flat list of ``str``."""
    # object, bytes, unicode and numpy's StringDType arrays alike (StringDType does not cast to "<U")
    return [v.decode() if isinstance(v, bytes) else str(v) for v in a.astype(object).ravel()]
