"""Keep the repository's top-level folders from shadowing other packages of the same name.

The checkout's kernels/ folder is the package hopchain_jax.kernels (the symlink hopchain_jax/kernels). When
the checkout's root is on sys.path (`python -m pytest` or a REPL started there, a script that inserts it),
a bare `import kernels` -- transformers >= 5.25 imports Hugging Face's `kernels` package at import time --
would find the folder first; its __init__ then calls `import_past_checkout` to load the next module of
that name on sys.path instead.
"""
from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys


def import_past_checkout(name: str, init_file: str):
    """Load top-level module `name` from the sys.path entries other than the checkout holding `init_file`
    (<root>/<name>/__init__.py) and return it; ImportError (as for a missing module) when there is none."""
    root = os.path.realpath(os.path.dirname(os.path.dirname(init_file)))
    path = [p for p in sys.path if os.path.realpath(p or os.getcwd()) != root]
    spec = importlib.machinery.PathFinder.find_spec(name, path)
    if spec is None or spec.loader is None:
        raise ModuleNotFoundError(f"No module named {name!r} (the folder {root}/{name} of this checkout is "
                                  f"hopchain_jax.{name}: import it under that name)", name=name)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module
