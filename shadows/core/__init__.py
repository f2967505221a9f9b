"""The AnnData shadow: its state, the façade scanpy talks to, its mappings, ``raw``, repr and anndata hooks.

:mod:`~shadows.core.state` holds what one shadow knows (its connection, what is cached, pending, deleted, what a
view inherits, the file fingerprints, the selection) behind a small package-internal API
(:func:`~shadows.core.state.state_of`); the layers above take that state instead of the shadow's private
attributes.  :mod:`~shadows.core.anndata` is the façade (``AnnDataShadow``); :mod:`~shadows.core.mapping` the lazy
``obsm``/``layers``/``uns`` mappings; :mod:`~shadows.core.raw` ``.raw``; :mod:`~shadows.core.compat` what anndata
and scanpy do to an AnnData that a shadow answers its own way; :mod:`~shadows.core.keys` the keys and values a
shadow can take.

May import: :mod:`shadows.backends`, :mod:`shadows.spec`, :mod:`shadows.io` and the settings.  The façade's methods
that hand a whole operation to a layer above (``write`` to :mod:`shadows.writeback`, ``write_h5ad``/``chunked_X``
to :mod:`shadows.stream.shadow`, ``add_column_index``/``write_csvs`` to :mod:`shadows.ops`) import it inside the method:
the one declared exception to the layers (``[tool.importlinter]`` in ``pyproject.toml``).
"""
