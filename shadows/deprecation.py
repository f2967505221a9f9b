"""Renamed public arguments keep their old name for one release, with a ``FutureWarning`` that names the new one."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any


def renamed_arguments(**renames: str | tuple[str, Callable[[Any], Any]]) -> Callable:
    """Accept each old keyword for the new one, with a warning; passing both is a ``TypeError``.

    ``old="new"`` passes the value on; ``old=("new", translate)`` passes ``translate(value)`` (an argument whose
    meaning changed with its name, such as ``convert(layers=False)`` becoming ``layer="X"``).  The warning is a
    ``FutureWarning`` (shown to users by default, unlike ``DeprecationWarning``): the old names go in the next
    release.
    """

    def wrap(func: Callable) -> Callable:
        @functools.wraps(func)
        def call(*args: Any, **kwargs: Any) -> Any:
            for old, rename in renames.items():
                new, translate = (rename, None) if isinstance(rename, str) else rename
                if old in kwargs:
                    if new in kwargs:
                        raise TypeError(f"{func.__name__}() got both {old!r} and {new!r}; pass only {new!r}")
                    warnings.warn(
                        f"{func.__name__}({old}=...) is deprecated and will be removed in the next release; "
                        f"use {new}=...",
                        FutureWarning,
                        stacklevel=2,
                    )
                    value = kwargs.pop(old)
                    kwargs[new] = translate(value) if translate is not None else value
            return func(*args, **kwargs)

        return call

    return wrap
