"""The user's own code, named as package.module:name (--init, --model): imported, with a one-line message for
anything that goes wrong, since the user's module may fail in any way (ImportError, SyntaxError, its own errors).

The current directory is searched after sys.path, as `python -m` would search it first: a user's nets.py beside
their experiments is found, and a file there that shares an installed package's name does not shadow it."""

import importlib
import os
import sys
from typing import Callable

from . import usercode
from .names import did_you_mean


def import_callable(spec: str, what: str) -> Callable:
    """The callable `spec` = package.module:name names; ValueError (one line, naming it as `what`) if it cannot be
    imported (whatever the import raises, SystemExit included: usercode.call), is missing or is not callable."""
    module_name, _, attr = spec.partition(":")
    here = os.getcwd()
    if here not in sys.path and "" not in sys.path:
        sys.path.append(here)
    module = usercode.call(f"cannot import {what} '{spec}'", importlib.import_module, module_name)
    if not hasattr(module, attr):
        public = [n for n in dir(module) if not n.startswith("_")]
        raise ValueError(f"cannot import {what} '{spec}': {module_name} has no '{attr}'{did_you_mean(attr, public)}")
    fn = getattr(module, attr)
    if not callable(fn):
        raise ValueError(f"{what} '{spec}' is not callable")
    return fn
