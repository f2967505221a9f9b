"""What both shadow classes share about their connection: context manager and closing when collected."""

from __future__ import annotations

from typing import Any


class ConnectionMixin:
    """``with shadow: ...`` closes the file at the end; a collected shadow closes the handle it owns.

    The class using it has ``_storage`` (a :class:`~shadows.io.storage.Storage`), ``close()``, and ``_owns_storage``
    (false for a modality sharing its MuData's handle, which must not close it).
    """

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            if self.__dict__.get("_owns_storage"):
                self._storage.close()
        except Exception:  # interpreter shutdown: h5py may already be gone
            pass
