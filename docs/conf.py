"""Sphinx configuration of kpfast's documentation site.

The pages are Markdown (MyST); the API reference comes from the docstrings (autodoc, with
napoleon for the Args / Returns / Shape sections). Build it, failing on any warning (a broken
docstring, a reference to a name that does not exist, a page left out of the navigation):

    sphinx-build -W --keep-going -n -b html docs build/docs

autodoc imports kpfast, so build in an environment where kpfast is installed (the ``docs`` extra
brings the tools: ``pip install --no-build-isolation -e ".[docs]"``).
"""
import importlib

from sphinx.util.nodes import make_refnode

import kpfast

project = "kpfast"
author = "the kpfast authors"
copyright = "2026, the kpfast authors"
release = version = kpfast.__version__

extensions = ["myst_parser", "sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.mathjax",
              "sphinx.ext.viewcode"]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build"]
myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 3  # links to a section of a page: semantics.md#5-...

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_custom_sections = ["Shape"]  # kornia-style "Shape:" sections, rendered as written

# -n: every reference to a public kpfast name must resolve. The others (torch, numpy, the
# standard library) have no inventory here (the build is offline), and private names
# (_Context, a TypeVar T) are not documented, so those are let through.
nitpicky = True
nitpick_ignore_regex = [(r"py:.*", r"(?!kpfast(\.|$)).*"), (r"py:.*", r"kpfast(\.\w+)*\.(_\w+|T)\b.*")]

html_theme = "furo"
html_title = f"kpfast {release}"


# A kpfast function or class is documented once, under the name users import it by (often a
# package that re-exports it), but docstrings also name it by the module that defines it. A
# reference by any such path resolves to where the object is documented; one to an object that
# is documented nowhere still fails the build.
def _lookup(path):
    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        try:
            for attr in parts[i:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return None
        return obj
    return None


def _documented(env):
    if not hasattr(env, "_kpfast_documented"):
        env._kpfast_documented = {}
        for name, entry in env.get_domain("py").objects.items():
            obj = _lookup(name) if name.startswith("kpfast") else None
            if callable(obj) or isinstance(obj, type(kpfast)):  # identity means something for these
                env._kpfast_documented.setdefault(id(obj), (name, entry))
    return env._kpfast_documented


def _resolve_other_path(app, env, node, contnode):
    target = node.get("reftarget", "")
    if node.get("refdomain") != "py" or not target.startswith("kpfast"):
        return None
    obj = _lookup(target)
    found = _documented(env).get(id(obj)) if obj is not None else None
    if found is None:
        return None
    name, entry = found
    return make_refnode(app.builder, node["refdoc"], entry.docname, entry.node_id, contnode, name)


def setup(app):
    app.connect("env-updated", lambda app, env: env.__dict__.pop("_kpfast_documented", None))
    app.connect("missing-reference", _resolve_other_path)
