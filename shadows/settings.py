"""Package-wide settings: the memory budget that bounded reads obey and when progress bars show."""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass, fields


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
    """

    memory_budget: int = int(os.environ.get("SHADOWS_MEMORY_BUDGET", 64 * 2**20))
    progress: bool | None = None
    progress_threshold: int = 256 * 2**20

    def __setattr__(self, name: str, value: object) -> None:
        if name == "memory_budget" and (not isinstance(value, int) or value < 2**16):
            raise ValueError(f"memory_budget must be an int of at least 65536 bytes, got {value!r}")
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
