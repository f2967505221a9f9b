"""Oracle helpers for the differential tests: strict element comparison and anndata I/O.

The oracle for every shadow element is what the *installed* anndata returns for the same
file (``anndata.read_h5ad`` / ``anndata.read_zarr``), or for the same view of that object.

``assert_element_equal`` is deliberately strict:

* pandas objects: dtype, index (class, dtype, name), column order, categories *in order*
  and ``ordered`` are compared, values exactly.
* numpy arrays: shape, dtype and values; string-like arrays (object, ``<U``, numpy 2
  ``StringDType``) are compared element-wise as ``str`` because anndata itself returns
  object arrays from HDF5 and ``StringDType`` arrays from zarr for the same data.
* scipy sparse: sparse-ness, format (csr/csc), matrix-vs-array API, shape, dtype, values.
* mappings: same key set, values recursively (nested ``uns``).
* scalars: equal values; a numpy scalar on the anndata side must be matched by a value of
  the same dtype, a python scalar by a python or numpy scalar of the same kind.
* a ``NumpyExtensionArray`` (anndata 0.13's ``obs_vector`` of a numpy column) is matched by
  an ndarray or a NumpyExtensionArray of the same dtype and values.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Mapping
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pandas.testing as pdt
from scipy import sparse

__all__ = [
    "anndata_key",
    "assert_element_equal",
    "assert_adata_equal",
    "assert_raw_equal",
    "layer_keys",
    "read_oracle",
    "write_adata",
    "quiet",
    "STORE_FORMATS",
    "store_path",
]

#: (suffix, zarr_format) of every store format the differential tests cover.
STORE_FORMATS = (("h5ad", None), ("zarr", 2), ("zarr", 3))


def store_path(directory, fmt: str, zarr_format: int | None, stem: str = "adata") -> str:
    """Path of a store of kind ``fmt`` (``h5ad``/``zarr``) inside ``directory``."""
    if fmt == "h5ad":
        return str(Path(directory) / f"{stem}.h5ad")
    return str(Path(directory) / f"{stem}.v{zarr_format}.zarr")


def write_specs(specs: list[dict], directory, make) -> list[str]:
    """Write ``make(spec)`` for every spec (with ``"i"`` and ``"store"``: ``(fmt, zarr_format)``) into
    ``directory`` as ``part{i}``; the paths, in order."""
    Path(directory).mkdir(parents=True, exist_ok=True)
    paths = []
    for spec in specs:
        fmt, zf = spec["store"]
        paths.append(write_adata(make(spec), store_path(directory, fmt, zf, stem=f"part{spec['i']}"), zf))
    return paths


@contextlib.contextmanager
def quiet():
    """Silence anndata's warnings (duplicate names, old formats, implicit modification...)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# --------------------------------------------------------------------------------------
# I/O
# --------------------------------------------------------------------------------------


def _is_zarr(path) -> bool:
    return str(path).rstrip("/").endswith(".zarr")


def read_oracle(path) -> ad.AnnData:
    """Read ``path`` fully into memory with the installed anndata."""
    with quiet():
        if _is_zarr(path):
            return ad.read_zarr(str(path))
        return ad.read_h5ad(str(path))


def write_adata(adata: ad.AnnData, path, zarr_format: int | None = None) -> str:
    """Write ``adata`` to ``path`` (``.h5ad`` or ``.zarr``) with anndata.

    For zarr, ``zarr_format`` (2 or 3) selects the on-disk zarr format through
    ``anndata.settings.zarr_write_format``; the setting is restored afterwards.
    Nullable pandas string arrays are allowed (``allow_write_nullable_strings``) so that
    anndata writes them where it can. A copy is written: anndata's writers convert string
    columns to categoricals in place.
    """
    path = str(path)
    settings = ad.settings
    saved = {}
    with quiet():
        adata = adata.copy()
        try:
            if hasattr(settings, "allow_write_nullable_strings"):
                saved["allow_write_nullable_strings"] = settings.allow_write_nullable_strings
                settings.allow_write_nullable_strings = True
            if _is_zarr(path):
                if zarr_format is not None:
                    saved["zarr_write_format"] = settings.zarr_write_format
                    settings.zarr_write_format = zarr_format
                adata.write_zarr(path)
            else:
                if zarr_format is not None:
                    raise ValueError("zarr_format only applies to .zarr stores")
                adata.write_h5ad(path)
        finally:
            for key, value in saved.items():
                setattr(settings, key, value)
    return path


def anndata_key(key, shape):
    """``key`` for building anndata's view (the oracle), with slices given as int arrays.

    scipy >= 1.15 cannot index a CSR/CSC matrix with an int array on one axis and some slices
    on the other (negative steps, or a start past the end such as ``slice(7, -8, 2)`` on 6
    columns): ``ValueError: cannot reshape array of size 3 into shape (3,3)`` from
    ``scipy/sparse/_index.py``, which breaks ``anndata_view.X`` for sparse X. The int array
    ``np.arange(n)[slice]`` selects the same positions in the same order, so the oracle's
    meaning is unchanged; the shadow always receives the original key.
    """
    single = not isinstance(key, tuple)
    keys = (key,) if single else key
    out = tuple(np.arange(n)[k] if isinstance(k, slice) else k for k, n in zip(keys, shape, strict=False))
    return out[0] if single else out


# --------------------------------------------------------------------------------------
# element comparison
# --------------------------------------------------------------------------------------

_STRINGY = "OUT"  # object, unicode, numpy>=2 StringDType


def _fail(what, msg):
    raise AssertionError(f"{what}: {msg}")


def _is_scalar(x) -> bool:
    return isinstance(x, str | bytes | bool | int | float | complex | np.generic)


def _is_nan(x) -> bool:
    try:
        return isinstance(x, float | np.floating) and math.isnan(x)
    except TypeError:
        return False


def _assert_index(got, want, what):
    if not isinstance(got, pd.Index):
        _fail(what, f"expected a pandas Index, got {type(got).__name__}")
    pdt.assert_index_equal(got, want, exact=True, check_names=True, check_exact=True, check_categorical=True)


def _assert_categorical(got, want, what):
    if not isinstance(got, pd.Categorical):
        _fail(what, f"expected pandas.Categorical, got {type(got).__name__}")
    _assert_index(got.categories, want.categories, f"{what}.categories")
    if bool(got.ordered) != bool(want.ordered):
        _fail(what, f"ordered {got.ordered} != {want.ordered}")
    np.testing.assert_array_equal(np.asarray(got.codes), np.asarray(want.codes), err_msg=f"{what}.codes", strict=True)


def _assert_series(got, want, what):
    if not isinstance(got, pd.Series):
        _fail(what, f"expected a pandas Series, got {type(got).__name__}")
    pdt.assert_series_equal(
        got,
        want,
        check_dtype=True,
        check_index_type=True,
        check_series_type=False,
        check_names=True,
        check_exact=True,
        check_categorical=True,
        check_category_order=True,
        obj=what,
    )
    if isinstance(want.dtype, pd.CategoricalDtype):
        _assert_categorical(got.array, want.array, what)


def _assert_frame(got, want, what):
    if not isinstance(got, pd.DataFrame):
        _fail(what, f"expected a pandas DataFrame, got {type(got).__name__}")
    if list(got.columns) != list(want.columns):
        _fail(what, f"columns {list(got.columns)!r} != {list(want.columns)!r}")
    _assert_index(got.index, want.index, f"{what}.index")
    pdt.assert_frame_equal(
        got,
        want,
        check_dtype=True,
        check_index_type=True,
        check_column_type=True,
        check_frame_type=False,
        check_names=True,
        check_exact=True,
        check_categorical=True,
        obj=what,
    )
    for col in want.columns:
        _assert_series(got[col], want[col], f"{what}[{col!r}]")


def _assert_extension_array(got, want, what):
    if isinstance(want, pd.Categorical):
        _assert_categorical(got, want, what)
        return
    if isinstance(want, pd.arrays.NumpyExtensionArray):
        # anndata 0.13's obs_vector returns ``Series.array`` (a NumpyExtensionArray, a bare
        # wrapper of an ndarray) where anndata 0.12 returns the ndarray: accept either, with
        # the same dtype and values.
        if isinstance(got, pd.arrays.NumpyExtensionArray):
            got = got.to_numpy()
        _assert_ndarray(got, want.to_numpy(), what)
        return
    if not isinstance(got, pd.api.extensions.ExtensionArray):
        _fail(what, f"expected a pandas ExtensionArray ({want.dtype}), got {type(got).__name__}")
    if got.dtype != want.dtype:
        _fail(what, f"dtype {got.dtype!r} != {want.dtype!r}")
    pdt.assert_extension_array_equal(got, want, check_dtype=True, check_exact=True)


def _assert_ndarray(got, want, what):
    want = np.asarray(want)  # drop anndata's ArrayView subclass
    if not isinstance(got, np.ndarray) or isinstance(got, np.matrix):
        _fail(what, f"expected a numpy ndarray, got {type(got).__name__}")
    if got.shape != want.shape:
        _fail(what, f"shape {got.shape} != {want.shape}")
    if want.dtype.names is not None:
        if got.dtype != want.dtype:
            _fail(what, f"dtype {got.dtype!r} != {want.dtype!r}")
        for name in want.dtype.names:
            _assert_ndarray(got[name], want[name], f"{what}[{name!r}]")
        return
    if want.dtype.kind in _STRINGY:
        if got.dtype.kind not in _STRINGY:
            _fail(what, f"expected a string-like array, got dtype {got.dtype!r}")
        g = [str(x) for x in got.ravel().tolist()]
        w = [str(x) for x in want.ravel().tolist()]
        if g != w:
            _fail(what, f"string values differ:\n got  {g}\n want {w}")
        return
    if got.dtype != want.dtype:
        _fail(what, f"dtype {got.dtype!r} != {want.dtype!r}")
    np.testing.assert_array_equal(np.asarray(got), want, err_msg=what, strict=True)


def _assert_sparse(got, want, what):
    if not sparse.issparse(got):
        _fail(what, f"expected a scipy sparse {want.format} matrix, got {type(got).__name__}")
    if got.format != want.format:
        _fail(what, f"sparse format {got.format!r} != {want.format!r}")
    if isinstance(got, sparse.spmatrix) != isinstance(want, sparse.spmatrix):
        _fail(what, f"sparse matrix/array API differs: {type(got).__name__} vs {type(want).__name__}")
    if tuple(got.shape) != tuple(want.shape):
        _fail(what, f"shape {got.shape} != {want.shape}")
    if got.dtype != want.dtype:
        _fail(what, f"dtype {got.dtype!r} != {want.dtype!r}")
    np.testing.assert_array_equal(got.toarray(), want.toarray(), err_msg=what, strict=True)


def _assert_scalar(got, want, what):
    if isinstance(want, str | np.str_):
        if not isinstance(got, str):
            _fail(what, f"expected str {want!r}, got {type(got).__name__} {got!r}")
        if str(got) != str(want):
            _fail(what, f"{got!r} != {want!r}")
        return
    if isinstance(want, bytes | np.bytes_):
        if not isinstance(got, bytes) or bytes(got) != bytes(want):
            _fail(what, f"{got!r} != {want!r}")
        return
    if not _is_scalar(got) or isinstance(got, str | bytes):
        _fail(what, f"expected a scalar {want!r} ({type(want).__name__}), got {type(got).__name__} {got!r}")
    if isinstance(want, np.generic):
        if np.asarray(got).dtype != want.dtype:
            _fail(what, f"scalar dtype {np.asarray(got).dtype} != {want.dtype} ({got!r} vs {want!r})")
    else:
        gk, wk = np.asarray(got).dtype.kind, np.asarray(want).dtype.kind
        if gk != wk:
            _fail(what, f"scalar kind {type(got).__name__} != {type(want).__name__} ({got!r} vs {want!r})")
    if _is_nan(want):
        if not _is_nan(got):
            _fail(what, f"{got!r} != nan")
    elif got != want:
        _fail(what, f"{got!r} != {want!r}")


def _mapping_keys(m, what, *, drop_none=False):
    if not hasattr(m, "keys") or not hasattr(m, "__getitem__"):
        _fail(what, f"expected a mapping, got {type(m).__name__}")
    keys = list(m.keys())
    if drop_none:
        keys = [k for k in keys if k is not None]
    return keys


def assert_mapping_equal(got, want, what="mapping", *, drop_none=False):
    """Mapping protocol (keys, in, len, []) and values of ``got`` against ``want``.

    ``drop_none`` ignores a ``None`` key (anndata 0.13's ``layers[None]`` is ``X``).
    """
    gkeys = _mapping_keys(got, what, drop_none=drop_none)
    wkeys = _mapping_keys(want, what, drop_none=drop_none)
    if len(set(gkeys)) != len(gkeys):
        _fail(what, f"duplicate keys {gkeys!r}")
    if set(gkeys) != set(wkeys):
        _fail(what, f"keys {sorted(map(str, gkeys))} != {sorted(map(str, wkeys))}")
    if not drop_none:
        if len(got) != len(wkeys):
            _fail(what, f"len {len(got)} != {len(wkeys)}")
    for k in wkeys:
        if k not in got:
            _fail(what, f"{k!r} in keys() but `in` is False")
        assert_element_equal(got[k], want[k], f"{what}[{k!r}]")
    if "__no_such_key__" in got:
        _fail(what, "`in` is True for a missing key")


def assert_element_equal(got, want, what: str = ""):
    """Strict equality of one element (see module docstring)."""
    what = what or "element"
    if want is None:
        if got is not None:
            _fail(what, f"expected None, got {type(got).__name__}")
        return
    if got is None:
        _fail(what, f"got None, expected {type(want).__name__}")
    if isinstance(want, pd.DataFrame):
        _assert_frame(got, want, what)
    elif isinstance(want, pd.Series):
        _assert_series(got, want, what)
    elif isinstance(want, pd.Index):
        _assert_index(got, want, what)
    elif isinstance(want, pd.api.extensions.ExtensionArray):
        _assert_extension_array(got, want, what)
    elif sparse.issparse(want):
        _assert_sparse(got, want, what)
    elif isinstance(want, np.ndarray):
        _assert_ndarray(got, want, what)
    elif isinstance(want, Mapping):
        assert_mapping_equal(got, want, what)
    elif _is_scalar(want):
        _assert_scalar(got, want, what)
    elif isinstance(want, list | tuple):
        if not isinstance(got, list | tuple) or len(got) != len(want):
            _fail(what, f"{got!r} != {want!r}")
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_element_equal(g, w, f"{what}[{i}]")
    else:
        if type(got) is not type(want) or got != want:
            _fail(what, f"{got!r} != {want!r}")


# --------------------------------------------------------------------------------------
# whole objects
# --------------------------------------------------------------------------------------


def layer_keys(layers) -> list:
    """Layer keys without anndata 0.13's ``None`` (meaning X)."""
    return [k for k in layers.keys() if k is not None]


def _unique(index: pd.Index) -> bool:
    return bool(index.is_unique)


def _vector_keys(columns, names, limit=3):
    """Keys usable with obs_vector/var_vector: columns and names, unambiguous."""
    names_set = set(names) if _unique(names) else set()
    cols = [c for c in columns if c not in set(names)]
    idx = [n for n in list(names)[:limit] if n in names_set and n not in set(columns)]
    return cols, idx


def _assert_vectors(got, want, what):
    if want.X is not None:
        cols, names = _vector_keys(want.obs.columns, want.var_names)
        keys_obs = cols + names
    else:
        keys_obs = list(want.obs.columns.difference(want.var_names, sort=False))
    for k in keys_obs:
        assert_element_equal(got.obs_vector(k), want.obs_vector(k), f"{what}.obs_vector({k!r})")
    if want.X is not None:
        cols, names = _vector_keys(want.var.columns, want.obs_names)
        keys_var = cols + names
    else:
        keys_var = list(want.var.columns.difference(want.obs_names, sort=False))
    for k in keys_var:
        assert_element_equal(got.var_vector(k), want.var_vector(k), f"{what}.var_vector({k!r})")


def assert_raw_equal(got, want, what="raw"):
    if want is None:
        if got is not None:
            _fail(what, f"expected no raw, got {type(got).__name__}")
        return
    if got is None:
        _fail(what, "raw is None but anndata has a raw")
    assert_element_equal(got.X, want.X, f"{what}.X")
    assert_element_equal(got.var, want.var, f"{what}.var")
    assert_element_equal(got.var_names, want.var_names, f"{what}.var_names")
    assert_mapping_equal(got.varm, want.varm, f"{what}.varm")
    if tuple(got.shape) != tuple(want.shape):
        _fail(what, f"shape {tuple(got.shape)} != {tuple(want.shape)}")
    if want.X is not None and _unique(want.var_names):
        for k in list(want.var_names[:2]):
            assert_element_equal(got.obs_vector(k), want.obs_vector(k), f"{what}.obs_vector({k!r})")


def assert_adata_equal(got, want, what="adata", *, vectors=True, to_memory=True, uns=True):
    """Every element of ``got`` (a shadow or a view of one) equals ``want``'s (AnnData).

    ``vectors``: also obs_vector/var_vector; ``to_memory``: also ``got.to_memory()``;
    ``uns``: also uns (callers focused on something else may leave it to other tests).
    """
    if tuple(got.shape) != tuple(want.shape):
        _fail(what, f"shape {tuple(got.shape)} != {tuple(want.shape)}")
    if (got.n_obs, got.n_vars) != (want.n_obs, want.n_vars):
        _fail(what, f"(n_obs, n_vars) {(got.n_obs, got.n_vars)} != {(want.n_obs, want.n_vars)}")
    assert_element_equal(got.obs_names, want.obs_names, f"{what}.obs_names")
    assert_element_equal(got.var_names, want.var_names, f"{what}.var_names")
    assert_element_equal(got.obs, want.obs, f"{what}.obs")
    assert_element_equal(got.var, want.var, f"{what}.var")
    assert_element_equal(got.X, want.X, f"{what}.X")
    assert_mapping_equal(got.layers, want.layers, f"{what}.layers", drop_none=True)
    for name in ("obsm", "varm", "obsp", "varp"):
        assert_mapping_equal(getattr(got, name), getattr(want, name), f"{what}.{name}")
    if uns:
        assert_mapping_equal(got.uns, want.uns, f"{what}.uns")
    assert_raw_equal(got.raw, want.raw, f"{what}.raw")
    if vectors:
        _assert_vectors(got, want, what)
    if to_memory:
        mem = got.to_memory()
        if not isinstance(mem, ad.AnnData):
            _fail(what, f"to_memory() returned {type(mem).__name__}, not anndata.AnnData")
        assert_adata_equal(mem, want, f"{what}.to_memory()", vectors=False, to_memory=False, uns=uns)
