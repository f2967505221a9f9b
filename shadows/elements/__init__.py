"""Element readers, one per encoding of the anndata on-disk format, dispatched through a registry."""

from . import dense, frames, legacy, sparse  # noqa: F401  (importing registers the readers)
from .frames import FrameParts, read_frame_parts
from .registry import CorruptElementError, ReadContext, encoding_of, read_element, register_reader, registered
from .sparse import SparseReader, matrix_info

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
