"""What both shadow classes share about their connection: context manager and closing when collected."""

from __future__ import annotations

from typing import Any


class ConnectionMixin:
    """``with shadow: ...`` closes the file at the end; a collected shadow closes the handle it owns.

    The class using it has ``close()`` and ``_owned_connection()``: the :class:`~shadows.io.storage.Storage` it owns,
    or ``None`` (a modality shares its MuData's handle and must not close it).
    """

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            if (storage := self._owned_connection()) is not None:
                storage.close()
        except Exception:  # interpreter shutdown: h5py may already be gone
            pass
