"""Sphinx configuration of the sb3_npg documentation (MyST Markdown pages, API reference by autodoc)."""

import os
import sys

sys.path.insert(0, os.path.abspath(".."))

import sb3_npg

project = "sb3_npg"
author = "sb3_npg contributors"
copyright = f"2026, {author}"
version = sb3_npg.__version__
release = sb3_npg.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

# `page.md#a-heading` links are checked: a heading that is gone is a warning, and the build fails on warnings.
myst_heading_anchors = 4
myst_enable_extensions = ["colon_fence", "dollarmath"]

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented"
autodoc_default_options = {"show-inheritance": True}
autosummary_generate = False

html_theme = "sphinx_rtd_theme"
html_title = f"sb3_npg {release}"
html_theme_options = {"navigation_depth": 3}
