"""Streaming: read matrices block by block and write new files in bounded memory.

:mod:`~shadows.stream.blocks` reads a stored matrix (or a view's part of it) in budget-sized blocks;
:mod:`~shadows.stream.sink` writes new files through a staging name (:class:`~shadows.stream.sink.Output`);
:mod:`~shadows.stream.matrix` streams one matrix element (same format, another, or transformed);
:mod:`~shadows.stream.transpose` changes CSR <-> CSC out of core; :mod:`~shadows.stream.anndata_writer` writes a
whole shadow element by element; :mod:`~shadows.stream.shadow` is the entry point (``chunked``, ``write_subset``).

May import: :mod:`shadows.writeback`, :mod:`shadows.core` and the layers below them.
"""
