"""Array and table backends: what type a shadow hands out, as a registry with entry points.

An array backend turns the numpy/scipy value read from the file into the user's array type; a table backend
turns a table into the user's table type.  Built-in backends may instead take the read's *source* (for arrays:
a :class:`shadows.spec.lazy_array.ElementSource`, so that dask can read lazily) or the table's columns
(:class:`shadows.spec.FrameParts`, so that polars/arrow tables are built without pandas).  Third-party
packages add backends by the entry-point groups ``shadows.array_backends`` and ``shadows.table_backends``, whose
objects are ``convert`` callables (or :class:`ArrayBackend`/:class:`TableBackend` instances).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module
from importlib.metadata import entry_points
from typing import Any

ARRAY_GROUP = "shadows.array_backends"
TABLE_GROUP = "shadows.table_backends"


@dataclass(frozen=True)
class ArrayBackend:
    """How arrays are handed out.

    Attributes
    ----------
    name
        The name users pass as ``array_backend=``.
    convert
        ``convert(value)`` with a numpy array or scipy sparse matrix, or (when ``from_source``) ``convert(source)``
        with an :class:`~shadows.spec.lazy_array.ElementSource` that can read any part of the element.
    from_source
        Whether ``convert`` takes the source instead of the value read.
    release
        Optional ``release(value)`` called when the cache drops a value (frees device memory).  It receives every
        cached value of a shadow using this backend (dicts and tables included) and must ignore what is not its own.
    convert_value
        For a ``from_source`` backend: how to convert a value that is already in memory (the arrays nested in
        ``uns`` dicts, read with their dict).  ``None`` leaves such values as numpy.
    """

    name: str
    convert: Callable[[Any], Any]
    from_source: bool = False
    release: Callable[[Any], None] | None = None
    convert_value: Callable[[Any], Any] | None = None


@dataclass(frozen=True)
class TableBackend:
    """How tables are handed out: ``convert(df)`` with a pandas DataFrame, or ``convert(parts)`` with
    :class:`~shadows.spec.FrameParts` when ``from_parts``."""

    name: str
    convert: Callable[[Any], Any]
    from_parts: bool = False


_ARRAY: dict[str, ArrayBackend] = {}
_TABLE: dict[str, TableBackend] = {}
# built-ins whose library is imported only when first asked for: name -> (module, attribute, what to pip install)
_LAZY_ARRAY = {
    "jax": ("shadows.backends.arrays", "JAX", "shadows[jax]"),
    "torch": ("shadows.backends.arrays", "TORCH", "shadows[torch]"),
    "dask": ("shadows.backends.dask", "DASK", "shadows[dask]"),
}
_LAZY_TABLE = {
    "polars": ("shadows.backends.tables", "POLARS", "polars"),  # a dependency of shadows, not an extra
    "pyarrow": ("shadows.backends.tables", "PYARROW", "shadows[arrow]"),
}
_entry_points_loaded = False


def _identity(x: Any) -> Any:
    return x


def register_array_backend(
    name: str,
    convert: Callable[[Any], Any] | ArrayBackend,
    *,
    from_source: bool = False,
    release: Callable[[Any], None] | None = None,
    convert_value: Callable[[Any], Any] | None = None,
) -> None:
    """Register an array backend: ``convert`` receives the numpy/scipy value read and returns anything.

    Parameters
    ----------
    name
        The name to pass as ``array_backend=``; registering an existing name replaces that backend.
    convert
        ``convert(value)`` with a numpy array or scipy sparse matrix (or an :class:`ArrayBackend`, then the other
        arguments are ignored).
    from_source, release, convert_value
        See :class:`ArrayBackend`.

    Examples
    --------
    >>> import shadows
    >>> shadows.register_array_backend("as_list", lambda a: a.tolist())  # doctest: +SKIP
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"A backend name must be a non-empty string, got {name!r}")
    if isinstance(convert, ArrayBackend):
        _ARRAY[name] = convert
        return
    if not callable(convert):
        raise TypeError(f"convert for array backend {name!r} must be callable, got {type(convert).__name__}")
    _ARRAY[name] = ArrayBackend(name, convert, from_source, release, convert_value)


def register_table_backend(
    name: str, convert: Callable[[Any], Any] | TableBackend, *, from_parts: bool = False
) -> None:
    """Register a table backend: ``convert`` receives a pandas DataFrame and returns anything.

    Parameters
    ----------
    name
        The name to pass as ``table_backend=``; registering an existing name replaces that backend.
    convert
        ``convert(df)`` with a pandas DataFrame (or, when ``from_parts``, with
        :class:`~shadows.spec.FrameParts`), or a :class:`TableBackend`.
    from_parts
        Whether ``convert`` takes the table's columns instead of a pandas DataFrame.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"A backend name must be a non-empty string, got {name!r}")
    if isinstance(convert, TableBackend):
        _TABLE[name] = convert
        return
    if not callable(convert):
        raise TypeError(f"convert for table backend {name!r} must be callable, got {type(convert).__name__}")
    _TABLE[name] = TableBackend(name, convert, from_parts)


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for group, register in ((ARRAY_GROUP, register_array_backend), (TABLE_GROUP, register_table_backend)):
        for ep in entry_points(group=group):
            if ep.name in (_ARRAY if group == ARRAY_GROUP else _TABLE):
                continue
            try:
                register(ep.name, ep.load())
            except Exception as e:  # a broken third-party backend must not break shadows
                import warnings

                warnings.warn(f"Could not load {group} entry point {ep.name!r}: {e}", stacklevel=2)


def array_backends() -> list[str]:
    """Names of the array backends available (registered, built in, or installed through entry points)."""
    _load_entry_points()
    return sorted(set(_ARRAY) | set(_LAZY_ARRAY))


def table_backends() -> list[str]:
    """Names of the table backends available."""
    _load_entry_points()
    return sorted(set(_TABLE) | set(_LAZY_TABLE))


def _get(name: str, table: dict, lazy: dict, kind: str, choices: Callable[[], list[str]]):
    if name in table:
        return table[name]
    if name in lazy:
        module, attr, extra = lazy[name]
        try:
            backend = getattr(import_module(module), attr)
        except ImportError as e:
            raise ImportError(
                f"The {kind} backend {name!r} needs a library that is not installed ({e}); "
                f"install it with `pip install {extra}`"
            ) from e
        table[name] = backend
        return backend
    _load_entry_points()
    if name in table:
        return table[name]
    raise ValueError(f"Unknown {kind} backend {name!r}; available: {choices()}")


def get_array_backend(name: str) -> ArrayBackend:
    """The array backend registered as ``name``; ``ValueError`` listing the choices if there is none."""
    return _get(name, _ARRAY, _LAZY_ARRAY, "array", array_backends)


def get_table_backend(name: str) -> TableBackend:
    """The table backend registered as ``name``; ``ValueError`` listing the choices if there is none."""
    return _get(name, _TABLE, _LAZY_TABLE, "table", table_backends)


def check_backend_name(name: str, kind: str) -> None:
    """Fail early, at open, for names that no backend could ever have."""
    known = (_ARRAY, _LAZY_ARRAY) if kind == "array" else (_TABLE, _LAZY_TABLE)
    if any(name in k for k in known):
        return  # no entry-point scan on the common path: it costs milliseconds at every open
    names = array_backends() if kind == "array" else table_backends()
    if name not in names:
        raise ValueError(f"Unknown {kind} backend {name!r}; available: {names}")


register_array_backend("numpy", _identity)
register_table_backend(
    "pandas", lambda parts: parts.to_pandas() if hasattr(parts, "to_pandas") else parts, from_parts=True
)

__all__ = [
    "ArrayBackend",
    "TableBackend",
    "array_backends",
    "check_backend_name",
    "get_array_backend",
    "get_table_backend",
    "register_array_backend",
    "register_table_backend",
    "table_backends",
]
