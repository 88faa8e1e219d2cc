"""Distillation methods, one file each, registered by name (see :mod:`xmkd.methods.base`).

Every module of this package is imported here, so its ``@register`` runs: a new method is one file in
``src/xmkd/methods/`` (plus its params section), found by discovery, with no list to edit.
"""

import importlib
import pkgutil

from xmkd.methods.base import (
    Dims,
    DistillMethod,
    LossTerms,
    TeacherBatch,
    build_method,
    known_methods,
    method_class,
    method_config,
    register,
)

__all__ = [
    "Dims",
    "DistillMethod",
    "LossTerms",
    "TeacherBatch",
    "build_method",
    "known_methods",
    "method_class",
    "method_config",
    "register",
]

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if _module != "base":
        importlib.import_module(f"{__name__}.{_module}")  # importing a module registers its method
