"""Sphinx configuration of the shadows documentation (MyST Markdown pages, notebooks through myst-nb).

The notebooks live in ``notebooks/`` at the repository root; ``docs/notebooks`` is a symbolic link to them.  They
are committed without outputs.  ``SHADOWS_DOCS_EXECUTE`` sets myst-nb's execution mode: ``auto`` (default) runs
them during the build so that the pages show their outputs and plots; the test suite, which has just executed them
with nbclient, builds with ``off``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # autodoc imports the package from the checkout when it is not installed

import shadows  # noqa: E402

project = "shadows"
author = "the shadows developers"
copyright = "the shadows developers"
release = version = shadows.__version__

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
]
source_suffix = {".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "compat_table.md", "**.ipynb_checkpoints", "notebooks/data"]
root_doc = "index"

# --- MyST and notebooks ---------------------------------------------------------------------------------------------
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3
nb_execution_mode = os.environ.get("SHADOWS_DOCS_EXECUTE", "auto")
nb_execution_in_temp = True  # the notebooks write their data into the working directory
nb_execution_timeout = 600
nb_execution_raise_on_error = True
nb_merge_streams = True

# --- API reference --------------------------------------------------------------------------------------------------
autodoc_member_order = "bysource"
autodoc_typehints = "description"
# the shadows' own docstrings only: anndata's and mudata's, inherited, refer to their own sites' glossaries and pages
autodoc_inherit_docstrings = False
autodoc_default_options = {"members": True, "show-inheritance": False}
napoleon_numpy_docstring = True
napoleon_google_docstring = False
napoleon_use_rtype = False

# --- HTML -----------------------------------------------------------------------------------------------------------
html_theme = "sphinx_book_theme"
html_title = f"shadows {version}"
html_theme_options = {"show_toc_level": 2, "navigation_with_keys": False}
