"""What a shadow with a dask array backend installs into scanpy once scanpy is imported.

* :mod:`shadows.core.scanpy_dask`: scanpy's dask route accumulating as its in-memory route does, in bounded memory;
* :mod:`shadows.core.scanpy_guards`: the functions its dask route cannot run, streamed or refused clearly
  (and ``calculate_qc_metrics`` in one pass, :mod:`shadows.core.scanpy_qc`).
"""

from __future__ import annotations

from shadows.core import scanpy_dask, scanpy_guards


def install() -> None:
    """Install both (idempotent; nothing happens before scanpy is imported)."""
    scanpy_dask.install()
    scanpy_guards.install()
