"""``shadows.pp``: scanpy's ``normalize_total`` and ``log1p`` streamed from one file to a new one, out of core.

The public namespace of :mod:`shadows.ops.pp` (``shadows.pp.normalize_total(...)``, as ``sc.pp``).
"""

from shadows.ops.pp import log1p, normalize_total

__all__ = ["log1p", "normalize_total"]
