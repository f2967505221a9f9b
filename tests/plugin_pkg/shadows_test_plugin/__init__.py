"""Backends for shadows, as a third-party package would ship them (see ``pyproject.toml``'s entry points)."""

from __future__ import annotations

from typing import Any

import scipy.sparse as sp

from shadows.backends import ArrayBackend


def to_lists(value: Any) -> Any:
    """Array backend ``plugin_lists``: nested Python lists (sparse matrices densified)."""
    if sp.issparse(value):
        value = value.toarray()
    return value.tolist() if hasattr(value, "tolist") else value


class Tagged:
    """What ``plugin_tagged`` hands out: the value read, with the name of the backend that converted it."""

    def __init__(self, value: Any):
        self.value = value
        self.backend = "plugin_tagged"


RELEASED: list = []

# an ArrayBackend instance (with a release hook) rather than a bare convert function
TAGGED = ArrayBackend("plugin_tagged", Tagged, release=RELEASED.append)


def to_records(df: Any) -> list[dict]:
    """Table backend ``plugin_records``: a list of row dicts, the index under ``"_index"``."""
    return [{"_index": i, **row} for i, row in zip(df.index, df.to_dict(orient="records"), strict=True)]
