"""Distillation methods, one file each, registered by name (see :mod:`xmkd.methods.base`)."""

from xmkd.methods import (  # noqa: F401  (importing a module registers its method)
    cc,
    ccl,
    cmc,
    crd,
    fitnet,
    kd,
    mnf_csc,
    none,
    pkt,
    rkd,
    xkd,
)
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
