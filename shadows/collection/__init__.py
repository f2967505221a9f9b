"""Many files as one shadow: ``shadows.concat`` and the collection shadow it returns.

:mod:`~shadows.collection.core` holds what a collection and its views share (the files, the join);
:mod:`~shadows.collection.source` maps the collection's rows to files; :mod:`~shadows.collection.side` reads the
matrices of a collection along var (files side by side); :mod:`~shadows.collection.shadow` is the façade and
``concat``; :mod:`~shadows.collection.write` streams a collection into one new file.

May import: :mod:`shadows.ops` and every layer below it.
"""
