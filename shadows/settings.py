"""Package-wide settings: the memory budget that bounded reads obey, when progress bars show, and whether the
fast I/O paths (reads and writes past h5py and zarr) may be used."""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass, fields

_FALSE = ("0", "false", "no", "off")
_TRUE = ("", "1", "true", "yes", "on")


def _env_flag(name: str, default: bool) -> bool:
    """A yes/no setting from the environment variable ``name`` (``default`` when unset)."""
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _FALSE:
        return False
    if value in _TRUE:
        return True
    raise ValueError(f"environment variable {name}={raw!r}: expected one of {list(_TRUE[1:] + _FALSE)}")


@dataclass
class Settings:
    """Settings read by every bounded operation.

    Attributes
    ----------
    memory_budget
        Bytes a chunked scan may hold at once (minor-axis scans of sparse matrices, streaming, statistics).
        Default 64 MiB, or ``SHADOWS_MEMORY_BUDGET`` from the environment.
    progress
        ``None`` (default): show tqdm bars only in an interactive session (a notebook or a terminal);
        ``True``/``False`` force them on or off.
    progress_threshold
        Bytes below which an operation runs without a bar, so that small reads stay quiet.
    fast_io
        Whether the fast I/O paths may serve reads and writes that h5py or zarr would otherwise make: HDF5 values
        read with ``os.preadv`` (:mod:`shadows.io.fast.pread`) and written with ``pwrite`` into space reserved with
        ``fallocate`` (:mod:`shadows.io.fast.pwrite`), zarr elements copied file by file
        (:mod:`shadows.io.fast.h5copy`), zarr chunks decoded by hand
        (:mod:`shadows.io.fast.zarr_chunks`).  Each path also checks that the platform has what it needs and that it can
        serve the dataset at hand.  ``False`` sends everything through h5py and zarr (the results are the same;
        to rule the fast paths out when chasing a problem, or to measure what they gain).  Default ``True``, or
        ``SHADOWS_FAST_IO`` from the environment (``0``/``false``/``no``/``off`` to turn them off).  A change
        applies to reads and writes that begin after it.
    """

    memory_budget: int = int(os.environ.get("SHADOWS_MEMORY_BUDGET", 64 * 2**20))
    progress: bool | None = None
    progress_threshold: int = 256 * 2**20
    fast_io: bool = _env_flag("SHADOWS_FAST_IO", True)

    def __setattr__(self, name: str, value: object) -> None:
        if name == "memory_budget" and (not isinstance(value, int) or value < 2**16):
            raise ValueError(f"memory_budget must be an int of at least 65536 bytes, got {value!r}")
        if name == "fast_io" and not isinstance(value, bool):
            raise ValueError(f"fast_io must be True or False, got {value!r}")
        if name not in {f.name for f in fields(self)}:
            raise AttributeError(
                f"shadows.settings has no setting {name!r}; choose from {[f.name for f in fields(self)]}"
            )
        super().__setattr__(name, value)

    @contextmanager
    def override(self, **kwargs):
        """Temporarily change settings: ``with shadows.settings.override(memory_budget=2**20): ...``."""
        old = {k: getattr(self, k) for k in kwargs}
        for k, v in kwargs.items():
            setattr(self, k, v)
        try:
            yield self
        finally:
            for k, v in old.items():
                setattr(self, k, v)


settings = Settings()


def fast_io_enabled() -> bool:
    """Whether the fast I/O paths may be used (``settings.fast_io``).

    The one place that decides: every fast path asks here (in the function that says whether it can serve a
    dataset), so call sites never test the setting themselves.
    """
    return settings.fast_io
