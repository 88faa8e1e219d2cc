"""The interface every distillation method implements, and the registry that names them.

A method is an ``nn.Module`` holding its own learnable heads. Given the student's outputs, the frozen
teacher's outputs and the labels, :meth:`DistillMethod.loss` returns named, already-weighted loss
terms in two groups (see :class:`LossTerms`). One generic loop (:mod:`xmkd.train`) serves every
method, so all methods share the student, optimiser, schedule, data and seeds.

To add a method: write ``src/xmkd/methods/<name>.py`` with a subclass decorated by
``@register("<name>")`` (``xmkd/methods/__init__.py`` imports every module of the package, so it is found);
give its hyper-parameters a params.yaml section, list that section in ``sections``, and name the method in
``methods``. Nothing else: dvc.yaml's ``resolve_configs`` tracks every param, and ``distill@<name>`` its own file
(tests/test_add_method.py adds a throwaway method this way and runs it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple

import torch
import torch.distributed as torch_dist
import torch.nn.functional as F
from torch import nn

from xmkd.collectives import average_floating_buffers_
from xmkd.config import parse_section
from xmkd.errors import ConfigError
from xmkd.models.student import StudentOutput


class TeacherBatch(NamedTuple):
    """Frozen teacher outputs for a batch, and where the clips sit in the training set.

    Attributes:
        embedding: (B, D) teacher embedding ``a``.
        logits: (B, C) teacher logits.
        index: (B,) int64 position of each clip in the training set (0..num_train-1), for methods
            that keep a per-sample memory bank (CRD); ``None`` outside training.
    """

    embedding: torch.Tensor
    logits: torch.Tensor
    index: torch.Tensor | None = None


@dataclass(frozen=True)
class Dims:
    """Sizes a method needs to build its heads: student dim d, teacher dim D, classes C, and the
    number of training clips (memory banks are sized by it; 0 when unknown)."""

    student_dim: int
    teacher_dim: int
    num_classes: int
    num_train: int = 0


@dataclass
class LossTerms:
    """Named, weighted loss terms of one batch.

    Attributes:
        student: terms that update the student *and* the method's heads (summed, then backpropagated).
        heads_only: terms that update only the method's own heads, never the student (backpropagated
            with ``inputs=method.parameters()``); e.g. MNF's own classification and triplet terms.
        logs: scalar diagnostics to log (no gradient).
    """

    student: dict[str, torch.Tensor] = field(default_factory=dict)
    heads_only: dict[str, torch.Tensor] = field(default_factory=dict)
    logs: dict[str, float] = field(default_factory=dict)


class DistillMethod(nn.Module):
    """Base class of distillation methods.

    Class attributes:
        name: registry name (set by :func:`register`).
        sections: params.yaml sections the method reads, mapped to their config dataclasses.
        ce_weight: weight of the student's cross-entropy ``CE(p_v, y)``, which the training loop adds.
        uses_teacher: False for a method that never reads the teacher's outputs (``none``): its student
            does not depend on the teacher or on which sound a clip carries, so the robustness runs take its
            row from the main run instead of training it again at every irrelevant-sound rate.
        distills: what of the teacher reaches the student: ``"logits"`` (kd and other logit distillers),
            ``"features"`` (embedding / relation distillers) or ``"none"``; the report's premise check compares
            kd and the best feature-level distiller with ``none``.
    """

    name: ClassVar[str] = ""
    sections: ClassVar[dict[str, type]] = {}
    uses_teacher: ClassVar[bool] = True
    distills: ClassVar[str] = "features"

    def __init__(self, dims: Dims, cfg: dict[str, Any]) -> None:
        super().__init__()
        self.dims = dims
        self.cfg = cfg

    @property
    def ce_weight(self) -> float:
        """Weight of the student's cross-entropy term (1 unless the method mixes it, e.g. KD)."""
        return 1.0

    @property
    def head_lr_scale(self) -> float:
        """Learning rate of this method's own parameters (heads) as a multiple of ``train.lr`` (1 by default).

        The training loop gives them their own Adam parameter group at ``train.lr * head_lr_scale``, with the
        student's schedule; e.g. MNF+CSC's reference trains its filter at 0.2x the video network's rate.
        """
        return 1.0

    def loss(self, student: StudentOutput, teacher: TeacherBatch, labels: torch.Tensor) -> LossTerms:
        """Distillation terms for a batch (the loop adds ``ce_weight * CE(p_v, y)`` itself).

        Args:
            student: outputs of the student on the batch.
            teacher: frozen teacher outputs for the same clips (detached).
            labels: (B,) int64 class indices.
        """
        return LossTerms()

    def diagnostics(self, student: StudentOutput, teacher: TeacherBatch) -> dict[str, torch.Tensor]:
        """Per-sample quantities for evaluation (e.g. MNF's gate mean), each (B,). None by default."""
        return {}

    def sync_buffers(self) -> None:
        """Make this method's buffers equal on every rank of a DDP job; called by the training loop after each
        optimiser step, on every rank, only in distributed training (:class:`xmkd.parallel.DataParallel`).

        Default: every floating-point buffer is averaged over the ranks (one collective). Right for running
        statistics and exponential moving averages of a batch mean (BatchNorm, XKD's centre): the update is
        linear in the batch mean, so the average of the ranks' updates is the update with the global batch.
        Override it for state that averaging would corrupt, e.g. a memory bank whose rows each rank updates
        for its own clips (CRD gathers every rank's updates in its loss instead; see :mod:`xmkd.methods.crd`).
        """
        average_floating_buffers_(self)


UNLABELLED = -1  #: the label of a training clip without one (``train.label_fraction`` < 1, the few-labels regime)


def labelled_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy averaged over the labelled rows of a batch (``labels >= 0``).

    Args:
        logits: (B, C); labels: (B,) int64, :data:`UNLABELLED` for a clip without a label.

    Returns:
        Scalar; 0 (still part of the graph) when no row of the batch is labelled.
    """
    m = labels >= 0
    if bool(m.all()):
        return F.cross_entropy(logits, labels)
    if not bool(m.any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits[m], labels[m])


def positive_mask(labels: torch.Tensor) -> torch.Tensor:
    """(B, B) bool: pairs (i, j) with the same label, both labelled, or i = j.

    An unlabelled clip (:data:`UNLABELLED`) is a positive of its own pair only (instance discrimination),
    and a negative of every other clip; with every clip labelled this is the usual equal-label mask.
    """
    same = (labels[:, None] == labels[None, :]) & (labels[:, None] >= 0)
    return same | torch.eye(len(labels), dtype=torch.bool, device=labels.device)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton et al.'s soft-target loss (arXiv 1503.02531) ``T² · KL(softmax(z_t/T) ‖ softmax(z_s/T))``, batch mean.

    Args:
        student_logits: (B, C) z_s.
        teacher_logits: (B, C) z_t (treated as constants).
        temperature: T > 0.

    Returns:
        Scalar tensor. Shared by ``kd`` and the methods that distil logits by KD (``mfh``).
    """
    t = temperature
    log_p_s = F.log_softmax(student_logits / t, dim=1)
    log_p_t = F.log_softmax(teacher_logits.detach() / t, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * t * t


def teacher_target(labels: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Target class of each clip for a method's class-split terms (DKD's TCKD / NCKD, C2KD's non-target KL):
    the label, or for an unlabelled clip (label < 0, :data:`UNLABELLED`) the frozen teacher's prediction.

    Args:
        labels: (B,) int64 class indices, -1 for an unlabelled clip.
        teacher_logits: (B, C) z_t.

    Returns:
        (B,) int64 class indices in [0, C).
    """
    return torch.where(labels >= 0, labels, teacher_logits.argmax(dim=1))


def world_size() -> int:
    """Processes of the DDP job (1 outside distributed training)."""
    if torch_dist.is_available() and torch_dist.is_initialized():
        return torch_dist.get_world_size()
    return 1


class EpochCounter(nn.Module):
    """Counts the training clips a method has been trained on, to know the current epoch (1-based) from inside
    :meth:`DistillMethod.loss` (the training loop has no epoch hook).

    Buffers:
        clips_seen: () int64, training clips seen over all ranks of a DDP job (advanced by :meth:`advance`).

    ``epoch = floor(clips_seen / num_train) + 1``: with a loader that yields every training clip once per epoch
    this is the loop's 1-based epoch; under DDP the ``DistributedSampler`` padding (fewer than ``world_size`` clips
    an epoch) can move an epoch boundary forward by a step. Used by DKD's warm-up and MFH's two phases.
    """

    def __init__(self, method: str, num_train: int, fix: str) -> None:
        super().__init__()
        self.method, self.num_train, self.fix = method, num_train, fix
        self.register_buffer("clips_seen", torch.zeros((), dtype=torch.int64))

    @property
    def epoch(self) -> int:
        """Current training epoch, counted from 1.

        Raises:
            ConfigError: ``num_train`` is 0 (unknown).
        """
        if self.num_train < 1:
            raise ConfigError(
                f"method '{self.method}' counts its epochs from the clips it has seen and needs Dims.num_train >= 1, "
                f"got 0; build it with the training-set size (xmkd.distill.build_models(..., num_train=...)) or {self.fix}."
            )
        return int(self.clips_seen.item()) // self.num_train + 1

    def advance(self, batch_size: int) -> None:
        """Count a training batch of ``batch_size`` clips on this rank (times the DDP world size)."""
        self.clips_seen += batch_size * world_size()


_REGISTRY: dict[str, type[DistillMethod]] = {}


def register(name: str):  # noqa: ANN201 - decorator
    """Class decorator registering a :class:`DistillMethod` under ``name``."""

    def deco(cls: type[DistillMethod]) -> type[DistillMethod]:
        if name in _REGISTRY:
            raise ValueError(f"distillation method '{name}' registered twice")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def known_methods() -> list[str]:
    """Names of all registered methods, sorted."""
    return sorted(_REGISTRY)


def method_class(name: str) -> type[DistillMethod]:
    """Look a method up by name.

    Raises:
        ConfigError: for an unknown name; the message lists the known ones.
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(
            f"unknown distillation method '{name}'; known methods: {', '.join(known_methods())}. "
            "Fix the name in params.yaml ('methods' list)."
        ) from None


def method_config(name: str, params: dict[str, Any]) -> dict[str, Any]:
    """Parse (strictly) the params sections method ``name`` reads; returns {section: dataclass}.

    Raises:
        ConfigError: unknown method, missing section, unknown or mistyped key.
    """
    cls = method_class(name)
    out = {}
    for section, cfg_cls in cls.sections.items():
        if section not in params:
            raise ConfigError(f"method '{name}' needs the params section '{section}', which is missing from params.yaml.")
        out[section] = parse_section(cfg_cls, params[section], section)
    return out


def build_method(name: str, dims: Dims, cfg: dict[str, Any]) -> DistillMethod:
    """Instantiate method ``name`` with its parsed sections ``cfg`` (see :func:`method_config`)."""
    return method_class(name)(dims, cfg)
