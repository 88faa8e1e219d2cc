"""Distillation methods, one file each, registered by name (see :mod:`xmkd.methods.base`)."""

from xmkd.methods import kd, mnf_csc, none  # noqa: F401  (import registers the methods)
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
