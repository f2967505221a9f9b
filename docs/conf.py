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
exclude_patterns = ["_build", "jupyter_execute", "compat_table.md", "**.ipynb_checkpoints", "notebooks/data"]
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
# parameter types only for documented parameters: the private ones (``_view``, ``_storage``...) stay out of the page
autodoc_typehints_description_target = "documented_params"
napoleon_numpy_docstring = True
napoleon_google_docstring = False
napoleon_use_rtype = False

# --- HTML -----------------------------------------------------------------------------------------------------------
html_theme = "sphinx_book_theme"
html_title = f"shadows {version}"
html_theme_options = {"show_toc_level": 2, "navigation_with_keys": False}


# --- private constructor arguments ------------------------------------------------------------------------------------
def _split_top_level(params: str) -> list[str]:
    """Split a signature's parameter list at the commas that are not inside brackets or quotes."""
    out, depth, quote, start = [], 0, "", 0
    for i, c in enumerate(params):
        if quote:
            quote = "" if c == quote else quote
        elif c in "'\"":
            quote = c
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif c == "," and depth == 0:
            out.append(params[start:i])
            start = i + 1
    return [*out, params[start:]] if params.strip() else out


def drop_private_parameters(app, what, name, obj, options, signature, return_annotation):
    """``AnnDataShadow(path, *, ..., _view=None, _storage=None)``: the ``_``-parameters are internal; hide them."""
    if not signature or not signature.startswith("(") or "_" not in signature:
        return None
    params = [p for p in _split_top_level(signature[1:-1]) if not p.strip().startswith("_")]
    if params and params[-1].strip() in ("*", "/"):  # nothing left after the marker
        params = params[:-1]
    return "(" + ",".join(params).strip() + ")", return_annotation


def setup(app):
    app.connect("autodoc-process-signature", drop_private_parameters)
