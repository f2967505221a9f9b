"""The on-disk encodings of AnnData: the one registry of element readers, selections, legacy layouts.

A reader is ``reader(element, selection, ctx) -> value`` registered for one ``(encoding-type, encoding-version)``
(:mod:`~shadows.spec.registry`, as in anndata's IO registry); :mod:`~shadows.spec.dense`,
:mod:`~shadows.spec.sparse`, :mod:`~shadows.spec.frames` and :mod:`~shadows.spec.legacy` register theirs on
import.  :mod:`~shadows.spec.selection` turns every indexer anndata accepts into positions and composes views;
:mod:`~shadows.spec.lazy_array` names (part of) an element picklably and reads it when sliced.

May import: :mod:`shadows.io` (and :mod:`shadows.io.fast`), :mod:`shadows.settings`, :mod:`shadows.progress`.
"""

from shadows.spec import dense, frames, legacy, sparse  # noqa: F401  (importing registers the readers)
from shadows.spec.frames import FrameParts, read_frame_parts
from shadows.spec.registry import (
    CorruptElementError,
    ReadContext,
    encoding_of,
    read_element,
    register_reader,
    registered,
)
from shadows.spec.sparse import SparseReader, matrix_info

__all__ = [
    "CorruptElementError",
    "FrameParts",
    "ReadContext",
    "SparseReader",
    "encoding_of",
    "matrix_info",
    "read_element",
    "read_frame_parts",
    "register_reader",
    "registered",
]
