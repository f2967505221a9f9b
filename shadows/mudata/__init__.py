"""The MuData shadow: ``MuDataShadow``, its on-disk layout, its parts, repr, and streaming it to a new file.

:mod:`~shadows.mudata.layout` reads what a MuData group says about itself (modalities, axis, maps);
:mod:`~shadows.mudata.parts` builds the global shadow and the ``mod`` mapping of ``AnnDataShadow`` modalities;
:mod:`~shadows.mudata.shadow` is the façade; :mod:`~shadows.mudata.writer` streams it into a new ``.h5mu``/zarr.

Imported lazily by :mod:`shadows` (the ``mudata`` package is optional).
May import: :mod:`shadows.stream.shadow`, :mod:`shadows.writeback`, :mod:`shadows.core` and below.
"""
