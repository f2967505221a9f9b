"""The ``"torch"`` and ``"jax"`` array backends.

Each element is converted from the numpy/scipy value read from the file, without a second full copy where the
library allows it:

* **torch** — dense arrays become tensors through ``torch.from_numpy`` (the tensor *shares* the buffer read: no
  copy).  A CSR matrix becomes a ``torch.sparse_csr_tensor`` and a CSC matrix a ``torch.sparse_csc_tensor`` built on
  ``from_numpy`` views of its ``data``/``indices``/``indptr``.  torch wants both index arrays of one dtype: when
  ``indices`` are int32 and fit, only the small ``indptr`` (one entry per row) is cast; otherwise ``indices`` are
  cast to int64 (that one copy cannot be avoided).  torch has no numpy-style ``toarray()``: the sparse tensors handed
  out carry one (``X.toarray()`` is ``X.to_dense().cpu().numpy()``), so code written for scipy matrices also works;
  tensors derived from them (``X * 2``) and saved copies (``torch.save``, pickle) are plain tensors.  Tensors stay
  on the CPU; :func:`torch_backend` with a ``device`` moves them (``Tensor.to``: one copy onto the device).
* **jax** — dense arrays go through ``jax.device_put`` (the one transfer into a jax buffer).  CSR becomes
  ``jax.experimental.sparse.BCSR`` (``data``/``indices``/``indptr`` put on the device as they are).  jax has no CSC
  format: CSC becomes ``BCOO`` (its ``(nnz, 2)`` coordinate array is built, a copy of the indices).  Use
  ``.to_bcoo()`` on a ``BCSR`` for operations that only ``BCOO`` supports.  jax keeps 32-bit types unless
  ``jax.config.update("jax_enable_x64", True)``: with x64 off, float64/int64 elements arrive as float32/int32 (a
  ``UserWarning`` says so).

Arrays that the library cannot hold (strings, objects, structured records) are handed out as numpy, unchanged.

On an accelerator, :meth:`~shadows.AnnDataShadow.clear_cache` frees the device memory of the cached values (jax:
``Array.delete()``; torch: the storage is released and ``torch.cuda.empty_cache()`` is called): arrays obtained
before ``clear_cache()`` are then no longer usable.  On the CPU, ``clear_cache()`` only drops the cache's references,
as with numpy.

``TORCH`` and ``JAX`` are created on first access, so importing this module needs neither library.
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Mapping
from functools import partial
from typing import Any

import numpy as np
import scipy.sparse as sp

from shadows.backends import ArrayBackend

_NUMERIC = "biufc"


def _holdable(a: np.ndarray) -> bool:
    return a.dtype.kind in _NUMERIC and a.dtype.names is None


def _native(a: np.ndarray, writable: bool = True) -> np.ndarray:
    """``a`` as the libraries accept it: native byte order, non-negative strides, writable if asked (copies only
    when it is not so already)."""
    if not a.dtype.isnative:
        a = a.astype(a.dtype.newbyteorder("="))  # big-endian data from old files: a copy is unavoidable
    if any(s < 0 for s in a.strides):
        a = np.ascontiguousarray(a)
    if writable and not a.flags.writeable:
        # torch tensors are writable: a read-only buffer (memory-mapped, or shared by the reader) must not alias
        a = a.copy()
    return a


def _components(m: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``data``, ``indices``, ``indptr`` of a compressed matrix, with one index dtype (cast the smaller array)."""
    data, indices, indptr = _native(np.asarray(m.data)), np.asarray(m.indices), np.asarray(m.indptr)
    if indices.dtype != indptr.dtype:
        if indices.dtype == np.int32 and (indptr.size == 0 or indptr[-1] <= np.iinfo(np.int32).max):
            indptr = indptr.astype(np.int32)  # one entry per row: cheap
        else:
            indices, indptr = indices.astype(np.int64), indptr.astype(np.int64)
    return data, _native(indices), _native(indptr)


def _compressed(value: Any) -> Any | None:
    """``value`` as CSR or CSC (other scipy formats are converted to CSR), or ``None`` if it is not sparse."""
    if not sp.issparse(value):
        return None
    return value if value.format in ("csr", "csc") else value.tocsr()


# --- torch ------------------------------------------------------------------------------------------------------


class _SparseToArray:
    """The ``toarray()`` attached to sparse tensors handed out (torch has only ``to_dense()``).

    It holds its tensor weakly, so that the tensor is freed as usual (no reference cycle).
    """

    def __init__(self, tensor: Any):
        self._ref = weakref.ref(tensor)

    def __call__(self) -> np.ndarray:
        tensor = self._ref()
        if tensor is None:
            raise RuntimeError("the sparse tensor of this toarray() is gone")
        return tensor.to_dense().cpu().numpy()


def _no_state() -> None:
    # a tensor's __getstate__: what torch.save and pickle keep of its Python attributes (toarray is not kept, so
    # the saved tensor is a plain one, which torch.load(weights_only=True) reads, with or without shadows)
    return None


def _torch_convert(value: Any, device: Any = None) -> Any:
    import torch

    m = _compressed(value)
    if m is not None:
        data, indices, indptr = (torch.from_numpy(a) for a in _components(m))
        make = torch.sparse_csr_tensor if m.format == "csr" else torch.sparse_csc_tensor
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*sparse.*beta state", category=UserWarning)
            t = make(indptr, indices, data, size=m.shape, check_invariants=False)
        if device is not None:
            t = t.to(device)
        t.toarray = _SparseToArray(t)
        t.__getstate__ = _no_state
        return t
    if isinstance(value, np.ndarray) and _holdable(value):
        t = torch.from_numpy(_native(value))
        return t.to(device) if device is not None else t
    return value


def _torch_release(value: Any) -> None:
    import torch

    freed = False
    for t in _leaves(value):
        if not isinstance(t, torch.Tensor) or t.device.type == "cpu":
            continue  # CPU memory is freed when the last reference goes; the user may still hold this one
        parts = (t.values(), t.crow_indices(), t.col_indices()) if t.layout == torch.sparse_csr else (t,)
        if t.layout == torch.sparse_csc:
            parts = (t.values(), t.ccol_indices(), t.row_indices())
        for p in parts:
            p.untyped_storage().resize_(0)
        freed = True
    if freed and torch.cuda.is_available():
        torch.cuda.empty_cache()


def torch_backend(device: Any = None, name: str = "torch") -> ArrayBackend:
    """An array backend handing out torch tensors, on ``device`` (``None``: the CPU, sharing the buffers read).

    Examples
    --------
    >>> import shadows
    >>> shadows.register_array_backend("torch-cuda", torch_backend("cuda"))  # doctest: +SKIP
    >>> AnnDataShadow("a.h5ad", array_backend="torch-cuda").X  # doctest: +SKIP
    """
    import torch  # noqa: F401  (fail now, with the extra to install, rather than at the first read)

    return ArrayBackend(name, partial(_torch_convert, device=device), release=_torch_release)


# --- jax --------------------------------------------------------------------------------------------------------


def _jax_put(a: np.ndarray, device: Any, warn: bool = True) -> Any:
    import jax

    a = _native(a, writable=False)  # device_put copies into jax's buffer anyway
    target = jax.dtypes.canonicalize_dtype(a.dtype)
    if warn and target != a.dtype:
        warnings.warn(
            f"jax_enable_x64 is off: {a.dtype} values are handed out as {target} "
            '(jax.config.update("jax_enable_x64", True) keeps 64-bit types)',
            UserWarning,
            stacklevel=2,
        )
    return jax.device_put(a, device)


def _jax_convert(value: Any, device: Any = None) -> Any:
    m = _compressed(value)
    if m is not None:
        from jax.experimental import sparse as jsparse

        if m.format == "csr":
            data, indices, indptr = _components(m)
            # index dtypes follow jax's x64 setting silently: only the values' precision is worth a warning
            idx, ptr = _jax_put(indices, device, warn=False), _jax_put(indptr, device, warn=False)
            return jsparse.BCSR((_jax_put(data, device), idx, ptr), shape=m.shape)
        coo = m.tocoo()  # jax has no CSC: coordinates are built
        coords = np.stack([coo.row, coo.col], axis=1)
        return jsparse.BCOO((_jax_put(coo.data, device), _jax_put(coords, device, warn=False)), shape=m.shape)
    if isinstance(value, np.ndarray) and _holdable(value):
        return _jax_put(value, device)
    return value


def _jax_buffers(value: Any) -> list:
    from jax.experimental import sparse as jsparse

    if isinstance(value, jsparse.BCSR):
        return [value.data, value.indices, value.indptr]
    if isinstance(value, jsparse.BCOO):
        return [value.data, value.indices]
    return [value]


def _on_accelerator(array: Any) -> bool:
    return any(d.platform != "cpu" for d in array.devices())


def _jax_release(value: Any) -> None:
    import jax

    for leaf in _leaves(value):
        for buf in _jax_buffers(leaf):
            if isinstance(buf, jax.Array) and not buf.is_deleted() and _on_accelerator(buf):
                buf.delete()


def jax_backend(device: Any = None, name: str = "jax") -> ArrayBackend:
    """An array backend handing out jax arrays, put on ``device`` (``None``: jax's default device).

    Examples
    --------
    >>> import jax, shadows
    >>> shadows.register_array_backend("jax-gpu1", jax_backend(jax.devices("gpu")[1]))  # doctest: +SKIP
    """
    import jax  # noqa: F401

    return ArrayBackend(name, partial(_jax_convert, device=device), release=_jax_release)


# --- shared -----------------------------------------------------------------------------------------------------


def _leaves(value: Any, depth: int = 0) -> list:
    """The values inside a cached value: itself, or those of a dict (``uns``, ``raw.varm``), recursively."""
    if isinstance(value, Mapping) and depth < 16:
        return [leaf for v in value.values() for leaf in _leaves(v, depth + 1)]
    if isinstance(value, list | tuple) and depth < 16:
        return [leaf for v in value for leaf in _leaves(v, depth + 1)]
    return [value]


def __getattr__(name: str) -> ArrayBackend:
    # the built-ins are made on first access: importing this module imports neither library
    if name == "TORCH":
        return torch_backend()
    if name == "JAX":
        return jax_backend()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["jax_backend", "torch_backend"]
