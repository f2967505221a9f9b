"""``uns`` read lazily: :class:`LazyDict`, a dict whose values are read from the file when first asked for."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from shadows.core.mapping import TrackedDict
from shadows.io.storage import is_group
from shadows.spec import ReadContext, encoding_of, read_element


class _Unread:
    """Stands in a :class:`LazyDict` for a value not read yet; never handed out."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<unread>"


_UNREAD = _Unread()


class LazyDict(TrackedDict):
    """A dict of ``uns`` (at any depth) whose values are read from the file on first access, one key at a time.

    ``s.uns["a"]["b"]`` reads only ``uns/a/b`` however large the rest of ``uns/a`` is.  It is a real ``dict`` (as
    anndata hands out): keys, ``in`` and ``len`` come from the file's keys; whatever hands out values (``[]``,
    ``get``, ``items``, ``values``, ``==``, ``copy``, ``dict(d)``, ``{**d}``, pickling) reads them first, so no
    caller ever sees a value that is not read.  Changes notify the shadow (``on_change``) as a
    :class:`~shadows.core.mapping.TrackedDict` does.

    Parameters
    ----------
    open_element
        ``open_element(path)``: a context manager giving the group or array at ``path`` of the shadow's file.
    path
        The group this dict stands for (``"uns/neighbors"``).
    on_change
        Called after every change.
    convert
        Applied to every value read (the array backends), or ``None``.
    hidden
        Keys of the group that are not part of the dict (anndata moves them elsewhere when reading).
    """

    def __init__(
        self,
        open_element: Callable[[str], Any],
        path: str,
        on_change: Callable[[], None],
        convert: Callable[[Any], Any] | None = None,
        hidden: frozenset[str] = frozenset(),
    ):
        dict.__init__(self)
        self._on_change = on_change
        self._open_element, self._path, self._convert = open_element, path, convert
        with open_element(path) as group:
            for k in group.keys():
                if str(k) not in hidden:
                    dict.__setitem__(self, str(k), _UNREAD)

    def _load(self, key: Any) -> Any:
        value = dict.__getitem__(self, key)
        if value is not _UNREAD:
            return value
        path = f"{self._path}/{key}"
        with self._open_element(path) as elem:
            if is_group(elem) and encoding_of(elem)[0] == "dict":
                value = LazyDict(self._open_element, path, self._on_change, self._convert)
            else:
                value = read_element(elem, (), ReadContext())
                value = self._convert(value) if self._convert is not None else value
        # a concurrent change (or a concurrent load) wins; only a key still unread takes what was read
        if dict.get(self, key) is _UNREAD:
            dict.__setitem__(self, key, value)
        return dict.get(self, key, value)

    def _load_all(self) -> None:
        for key in list(dict.keys(self)):
            if dict.get(self, key) is _UNREAD:
                self._load(key)

    # --- reading: every way a value comes out loads it first ------------------------------------------------------
    def __getitem__(self, key: Any) -> Any:
        dict.__getitem__(self, key)  # KeyError for an unknown key, as a dict
        return self._load(key)

    def get(self, key: Any, default: Any = None) -> Any:
        """As ``dict.get``; reads the value first."""
        return self[key] if key in self else default

    def __iter__(self):
        # defined here (not inherited) so that dict(d), {**d} and f(**d) take values through __getitem__, not
        # straight from the dict's storage
        return dict.__iter__(self)

    def items(self):
        """As ``dict.items``; reads every value not read yet."""
        self._load_all()
        return dict.items(self)

    def values(self):
        """As ``dict.values``; reads every value not read yet."""
        self._load_all()
        return dict.values(self)

    def copy(self) -> dict:
        """A plain dict of every value (read first), as ``dict.copy``."""
        return {k: self[k] for k in self}

    def __eq__(self, other: object) -> bool:
        self._load_all()
        if isinstance(other, LazyDict):
            other._load_all()
        return dict.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        eq = self.__eq__(other)
        return eq if eq is NotImplemented else not eq

    __hash__ = None  # a dict

    def __repr__(self) -> str:
        self._load_all()
        return dict.__repr__(self)

    def __or__(self, other: Any) -> dict:
        if not isinstance(other, dict):
            return NotImplemented
        return {**self, **other}

    def __ror__(self, other: Any) -> dict:
        if not isinstance(other, dict):
            return NotImplemented
        return {**other, **self}

    def __ior__(self, other: Any) -> LazyDict:
        self.update(other)
        return self

    # --- changes: values handed back are read values --------------------------------------------------------------
    def pop(self, key: Any, *default: Any) -> Any:
        """As ``dict.pop``; reads the value first, so that it is handed out."""
        if key in self:
            self._load(key)
        return super().pop(key, *default)

    def popitem(self) -> tuple:
        """As ``dict.popitem`` (the last key); reads its value first."""
        if not self:
            raise KeyError("popitem(): dictionary is empty")
        key = next(reversed(dict.keys(self)))
        return key, self.pop(key)

    def setdefault(self, key: Any, default: Any = None) -> Any:
        """As ``dict.setdefault``; reads an existing value first."""
        if key not in self:
            self[key] = default
        return self[key]
