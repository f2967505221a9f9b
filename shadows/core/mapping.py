"""Lazy mappings for ``obsm``, ``varm``, ``obsp``, ``varp``, ``layers`` and ``uns``.

Keys come from the file (``keys()``, ``in`` and ``len`` read no data); a value is read on first access through the
shadow, then cached.  Assignments and deletions are held in memory as pending changes of the shadow until
``write()``: an assigned value always wins over the file and the cache.
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from shadows.core.anndata import AnnDataShadow

# which axes of the shadow each group's values are aligned to (and so sliced by in a view)
ALIGNMENT: dict[str, tuple[int, ...]] = {
    "layers": (0, 1),
    "obsm": (0,),
    "varm": (1,),
    "obsp": (0, 0),
    "varp": (1, 1),
    "uns": (),
}


class TrackedDict(dict):
    """A dict inside ``uns`` that tells its shadow when it is changed, so that the change is written back."""

    def __init__(self, data: dict, on_change):
        super().__init__()
        self._on_change = on_change
        for k, v in data.items():
            dict.__setitem__(self, k, _track(v, on_change))

    def __setitem__(self, key, value):
        _check_entry(key, value)
        dict.__setitem__(self, key, _track(value, self._on_change))
        self._on_change()

    def __delitem__(self, key):
        dict.__delitem__(self, key)
        self._on_change()

    def pop(self, key, *default):
        """As ``dict.pop``; tells the shadow when a key was removed."""
        had = key in self
        out = dict.pop(self, key, *default)
        if had:
            self._on_change()
        return out

    def update(self, *args, **kwargs):
        """As ``dict.update``, all values checked before any is set; tells the shadow once."""
        items = dict(*args, **kwargs)
        for k, v in items.items():  # all checked before any is set
            _check_entry(k, v)
        for k, v in items.items():
            dict.__setitem__(self, k, _track(v, self._on_change))
        self._on_change()

    def setdefault(self, key, default=None):
        """As ``dict.setdefault``; setting the default tells the shadow."""
        if key not in self:
            self[key] = default
        return dict.__getitem__(self, key)

    def __reduce__(self):
        return dict, (untrack(self),)

    def __copy__(self):
        return {k: v for k, v in self.items()}

    def __deepcopy__(self, memo):
        import copy

        return copy.deepcopy(untrack(self), memo)


def _check_entry(key: Any, value: Any) -> None:
    """A key (and the keys inside a value) put into a dict of ``uns`` must be writable: refused now, not at write."""
    from shadows.core.keys import check_key, check_nested_keys

    check_key(key, f"uns dict key {key!r}", slash_ok=True)
    check_nested_keys(value, f"uns dict[{key!r}]", slash_ok=True)


def _track(value: Any, on_change) -> Any:
    if isinstance(value, dict) and not isinstance(value, TrackedDict):
        return TrackedDict(value, on_change)
    return value


def untrack(value: Any) -> Any:
    """Plain dicts all the way down (what is written, copied or compared)."""
    if isinstance(value, dict):
        return {k: untrack(v) for k, v in value.items()}
    return value


class ElementMapping(MutableMapping):
    """One group of a shadow (``obsm``, ``layers``, ``uns``...), read lazily, with pending changes."""

    def __init__(self, shadow: AnnDataShadow, group: str):
        self._shadow = shadow
        self._group = group

    # --- reading --------------------------------------------------------------------------------------------------
    def _disk_keys(self) -> list[str]:
        return self._shadow._disk_keys(self._group)

    def keys(self):  # a list keeps the order of the file, then additions
        """The keys, in the file's order, then those added in memory (deleted ones left out); nothing is read."""
        return _KeysView(self)

    def _key_list(self) -> list[str]:
        pend = self._shadow._state.pending
        deleted = self._shadow._state.deleted
        out = [k for k in self._disk_keys() if (self._group, k) not in deleted]
        out += [k for (g, k) in pend if g == self._group and k not in out]
        out += [k for (g, k) in self._shadow._state.inherited if g == self._group and k not in out]
        return out

    def __iter__(self) -> Iterator[str]:
        return iter(self._key_list())

    def __len__(self) -> int:
        return len(self._key_list())

    def __contains__(self, key: object) -> bool:
        return key in self._key_list()

    def __getitem__(self, key: str) -> Any:
        if key is None and self._group == "layers":  # anndata >= 0.13 keeps X as layers[None]
            return self._shadow.X
        return self._shadow._get(self._group, key)

    # --- changes --------------------------------------------------------------------------------------------------
    def __setitem__(self, key: str, value: Any) -> None:
        if key is None and self._group == "layers":
            self._shadow.X = value
            return
        if not isinstance(key, str):
            raise TypeError(f"{self._group} keys must be strings, got {type(key).__name__}")
        from shadows.core.keys import check_value

        # names that would break the file (zarr metadata names, '/'...) and values anndata refuses: refused now,
        # before anything is pending
        check_value(self._shadow, self._group, key, value, assigning=True)
        self._shadow._set(self._group, key, value)

    def __delitem__(self, key: str) -> None:
        self._shadow._delete(self._group, key)

    # --- anndata's AlignedMapping API that scanpy uses ---------------------------------------------------------------
    @property
    def parent(self) -> AnnDataShadow:
        """The shadow this mapping belongs to (as anndata's aligned mappings' ``parent``)."""
        return self._shadow

    @property
    def attrname(self) -> str:
        """The group's name (``obsm``, ``layers``...), as anndata's aligned mappings' ``attrname``."""
        return self._group

    def copy(self) -> dict:
        """A plain dict of copies of every value (all read into memory)."""
        return {k: (v.copy() if hasattr(v, "copy") else v) for k, v in self.items()}

    def to_dict(self) -> dict:
        """A plain dict of every value (all read into memory; nested dicts of ``uns`` as plain dicts)."""
        return {k: untrack(v) for k, v in self.items()}

    def __repr__(self) -> str:
        return f"{type(self).__name__} of {self._group} with keys: {', '.join(map(str, self._key_list()))}"

    def __eq__(self, other: object) -> bool:
        if not hasattr(other, "keys"):
            return NotImplemented
        if set(self.keys()) != set(other.keys()):
            return False
        return all(_values_equal(self[k], other[k]) for k in self.keys())

    __hash__ = None  # mutable


class _KeysView:
    """``keys()`` of a shadow mapping: list-like and set-like, computed without reading any value."""

    def __init__(self, mapping: ElementMapping):
        self._keys = mapping._key_list()

    def __iter__(self):
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, k: object) -> bool:
        return k in self._keys

    def __getitem__(self, i):
        return self._keys[i]

    def __eq__(self, other: object) -> bool:
        try:
            return set(self._keys) == set(other)
        except TypeError:
            return NotImplemented

    def __repr__(self) -> str:
        return f"KeysView({self._keys!r})"

    def __sub__(self, other):
        return set(self._keys) - set(other)

    def __and__(self, other):
        return set(self._keys) & set(other)

    def __or__(self, other):
        return set(self._keys) | set(other)


def _values_equal(a: Any, b: Any) -> bool:
    try:
        import scipy.sparse as sp

        if sp.issparse(a) or sp.issparse(b):
            return sp.issparse(a) and sp.issparse(b) and a.shape == b.shape and (a != b).nnz == 0
        return bool(np.array_equal(np.asarray(a), np.asarray(b)))
    except Exception:
        return a is b
