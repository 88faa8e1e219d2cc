"""``crd``: Tian, Krishnan & Isola, "Contrastive Representation Distillation", ICLR 2020, arXiv 1910.10699.

Implemented as the official code computes it (HobbitLong/RepDistiller ``crd/criterion.py``,
``crd/memory.py``; formulas re-derived from the paper, Sec. 3.1, and written anew), with its memory
bank of negatives and its NCE objective (the paper's default; no InfoNCE/softmax variant here).

Embeddings (paper Sec. 3.1, ``g^S``/``g^T``; official ``Embed``): learnable linear heads followed by
L2 normalisation, ``z_s = W_s v / ‖W_s v‖`` (d -> F) and ``z_t = W_t a / ‖W_t a‖`` (D -> F).
The official code applies them to the penultimate pooled features of student and teacher; here to
the student's pooled feature ``v`` (B, d) and the frozen, precomputed teacher embedding ``a`` (B, D).

Memory bank (paper Sec. 3.1 "memory buffer"; official ``ContrastMemory``): two buffers of shape
(N, F), N = number of training clips, ``M_s`` holding student embeddings and ``M_t`` teacher
embeddings of every clip, initialised U(-σ, σ) with σ = 1/sqrt(F/3) (official init; rows then have
unit norm in expectation). For a batch of clips with training-set rows ``i_b``:

1. contrast rows ``[i_b, j_b1, ..., j_bK]``: the clip's own row (positive) and K negatives.
2. scores ``e^s_bk = exp(z_s,b · M_t[row_bk] / τ)`` (student anchor, teacher memory) and
   ``e^t_bk = exp(z_t,b · M_s[row_bk] / τ)`` (teacher anchor, student memory); memory rows are
   constants (no gradient).
3. normalised scores ``P = e / Z``, with Z estimated ONCE, on the first training batch, as in the
   official code: ``Z = N · mean_{b,k} e_bk`` (a Monte-Carlo estimate of the partition function
   Σ_{j<N} exp(z·M[j]/τ)), one Z per side, then kept fixed (stored in the ``z`` buffer).
4. NCE loss (paper Sec. 3.1, critic ``h = P / (P + K/N)``; official ``ContrastLoss``), per side:

       L = -(1/B) Σ_b [ log( P_b0 / (P_b0 + K/N + ε) ) + Σ_{k=1..K} log( (K/N) / (P_bk + K/N + ε) ) ]

   with ε = 1e-7 (official ``eps``), noise distribution P_n = 1/N (uniform), so K·P_n = K/N.
5. memory update after scoring (official): ``M[i_b] <- normalise(m · M[i_b] + (1 - m) · z_b)``
   for both sides, m = ``nce_m``.

Distributed training (DDP, :mod:`xmkd.parallel`): every rank holds the whole memory bank and must hold the same
one. In training, each rank's (rows, z_s, z_t) of the batch are gathered from all ranks (all_gather) and every
rank applies the same update of step 5 for the global batch, as the single-process run does for its batch; Z
is estimated from the global first batch (the ranks' estimates, on equal batch sizes, averaged). So
:meth:`CRD.sync_buffers` has nothing left to do. Negatives are drawn per rank (ranks > 0 have their own RNG
stream).

Total: ``β · (L_s + L_t)`` with β = ``crd.weight`` (official ``-b 0.8``, ``-a 0``, CE weight 1).

Negatives. K = ``min(nce_k, N - 1)``: the official default K = 16384 exceeds the 4,000 training clips
of the default benchmark, so K is clamped to N - 1 (all other clips). Negatives are drawn uniformly,
WITHOUT replacement, from the N - 1 rows other than the clip's own, with torch's global RNG (seeded by
the training loop; runs are deterministic). The official CIFAR loader (``CIFAR100InstanceSample``,
``mode='exact'``) instead draws negatives only from clips of *other classes*; that needs the labels
of all N training clips, which a method here does not see (only the batch's labels), so uniform
sampling over all other clips is used (the official ``ContrastMemory``, when the loader supplies no
negatives, also samples uniformly, with replacement, through ``AliasMethod``). With
K = N - 1 every other clip is a negative; the loss does not depend on their order, so no random
numbers are drawn then.

Gradient flow: ``L_s`` (student anchor vs the teacher memory) reaches the student and ``W_s``;
``L_t`` (teacher anchor vs the student memory, a detached buffer) reaches only ``W_t`` — the teacher
is frozen. Hence ``L_s`` is a ``student`` term and ``L_t`` a ``heads_only`` term; the gradients are
exactly those of the official ``loss = s_loss + t_loss`` backpropagated through both.

Precision: scores are computed in float32 with autocast disabled (exp(1/0.07) ≈ 1.6e6).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from xmkd.collectives import all_gather_rows, average_, is_distributed
from xmkd.errors import ConfigError
from xmkd.methods.base import Dims, DistillMethod, LossTerms, TeacherBatch, register
from xmkd.models.student import StudentOutput

NCE_EPS = 1e-7  # official ``eps`` in crd/criterion.py


@dataclass(frozen=True)
class CRDConfig:
    """``crd`` section (defaults: RepDistiller ``train_student.py`` flags and README CRD command).

    Attributes:
        feat_dim: F, dimension of the embedding heads' output (``--feat_dim 128``).
        nce_k: K, negatives per clip (``--nce_k 16384``); clamped to ``num_train - 1``.
        nce_t: τ, temperature (``--nce_t 0.07``).
        nce_m: m, momentum of the memory update (``--nce_m 0.5``).
        weight: β, weight of ``L_s + L_t`` (README: ``--distill crd -a 0 -b 0.8``).
    """

    feat_dim: int = 128
    nce_k: int = 16384
    nce_t: float = 0.07
    nce_m: float = 0.5
    weight: float = 0.8

    def __post_init__(self) -> None:
        if self.feat_dim < 1:
            raise ValueError(f"crd.feat_dim must be >= 1, got {self.feat_dim}")
        if self.nce_k < 1:
            raise ValueError(f"crd.nce_k must be >= 1, got {self.nce_k}")
        if self.nce_t <= 0:
            raise ValueError(f"crd.nce_t must be > 0, got {self.nce_t}")
        if not 0.0 <= self.nce_m < 1.0:
            raise ValueError(f"crd.nce_m must be in [0, 1), got {self.nce_m}")
        if self.weight < 0:
            raise ValueError(f"crd.weight must be >= 0, got {self.weight}")


def sample_contrast_rows(index: torch.Tensor, num_data: int, k: int) -> torch.Tensor:
    """Own row plus K distinct negative rows per clip, drawn uniformly with torch's global RNG.

    Args:
        index: (B,) int64 training-set rows of the batch's clips.
        num_data: N, rows in the memory bank.
        k: K negatives, 1 <= K <= N - 1.

    Returns:
        (B, K + 1) int64; column 0 is ``index``, columns 1..K are distinct rows != ``index[b]``
        (for K = N - 1 all of them, in row order, without drawing random numbers).

    Raises:
        ValueError: K outside [1, N - 1].
    """
    if not 1 <= k <= num_data - 1:
        raise ValueError(f"need 1 <= K <= N - 1 negatives, got K={k}, N={num_data}")
    b = index.shape[0]
    if k == num_data - 1:  # every other row: no draw needed (the loss does not depend on the order)
        neg = torch.arange(num_data - 1, device=index.device).expand(b, -1)
    else:  # a uniformly random K-subset of {0..N-2} per clip: the K largest of N-1 uniform draws
        neg = torch.rand(b, num_data - 1, device=index.device).topk(k, dim=1, sorted=False).indices
    neg = neg + (neg >= index[:, None]).long()  # skip the clip's own row
    return torch.cat([index[:, None], neg], dim=1)


def contrast_scores(anchor: torch.Tensor, memory: torch.Tensor, rows: torch.Tensor, temperature: float) -> torch.Tensor:
    """``exp(anchor_b · memory[rows_bk] / τ)``.

    Args:
        anchor: (B, F) L2-normalised embeddings (carry gradient).
        memory: (N, F) memory bank (treated as constant).
        rows: (B, K + 1) rows of ``memory`` to contrast each anchor with.
        temperature: τ > 0.

    Returns:
        (B, K + 1) unnormalised scores.
    """
    sims = anchor @ memory.detach().T  # (B, N): cheaper than gathering (B, K+1, F) rows
    return torch.exp(torch.gather(sims, 1, rows) / temperature)


def estimate_partition(scores: torch.Tensor, num_data: int) -> float:
    """Official estimate of the normalisation constant, ``Z = N · mean(scores)``; scores (B, K + 1)."""
    return float(scores.detach().mean()) * num_data


def nce_loss(probs: torch.Tensor, num_data: int) -> torch.Tensor:
    """CRD's NCE loss (arXiv 1910.10699 Sec. 3.1; official ``ContrastLoss``).

    Args:
        probs: (B, K + 1) normalised scores P = exp(s/τ)/Z; column 0 is the positive pair.
        num_data: N, size of the memory bank (noise distribution P_n = 1/N).

    Returns:
        Scalar ``-(1/B) Σ_b [log(P_b0/(P_b0 + K/N + ε)) + Σ_k log((K/N)/(P_bk + K/N + ε))]``.
    """
    k = probs.shape[1] - 1
    kpn = k / num_data
    pos, neg = probs[:, 0], probs[:, 1:]
    log_d1 = torch.log(pos / (pos + kpn + NCE_EPS))
    log_d0 = torch.log(kpn / (neg + kpn + NCE_EPS))
    return -(log_d1.sum() + log_d0.sum()) / probs.shape[0]


def momentum_update(memory: torch.Tensor, index: torch.Tensor, new: torch.Tensor, momentum: float) -> torch.Tensor:
    """Memory with rows ``index`` replaced by ``normalise(m · memory[index] + (1 - m) · new)``.

    Out of place (the old memory may be saved for backward). Args: memory (N, F), index (B,) int64,
    new (B, F) (detached here), momentum m in [0, 1). Returns (N, F).
    """
    rows = memory[index] * momentum + new.detach().to(memory.dtype) * (1.0 - momentum)
    return memory.index_copy(0, index, F.normalize(rows, dim=1))


@register("crd")
class CRD(DistillMethod):
    """Contrastive Representation Distillation with a memory bank (arXiv 1910.10699).

    Heads: ``embed_s`` (Linear d -> F), ``embed_t`` (Linear D -> F). Buffers (saved in the
    state_dict, not learnable): ``memory_s``, ``memory_t`` (N, F) and ``z`` (2,) = [Z_s, Z_t]
    (-1 until estimated on the first training batch).

    Raises:
        ConfigError: ``dims.num_train < 2`` (the memory bank needs the training-set size).
    """

    sections = {"crd": CRDConfig}

    def __init__(self, dims: Dims, cfg: dict) -> None:
        super().__init__(dims, cfg)
        c: CRDConfig = cfg["crd"]
        n = dims.num_train
        if n < 2:
            raise ConfigError(
                f"method 'crd' keeps a memory bank of one row per training clip and needs Dims.num_train >= 2, "
                f"got {n}; build it with the training-set size (xmkd.distill.build_models(..., num_train=...))."
            )
        self.num_data = n
        self.nce_k = min(c.nce_k, n - 1)  # K < N: clamped (see module docstring)
        self.embed_s = nn.Linear(dims.student_dim, c.feat_dim)
        self.embed_t = nn.Linear(dims.teacher_dim, c.feat_dim)
        stdv = 1.0 / math.sqrt(c.feat_dim / 3)
        self.register_buffer("memory_s", torch.rand(n, c.feat_dim).mul_(2 * stdv).add_(-stdv))
        self.register_buffer("memory_t", torch.rand(n, c.feat_dim).mul_(2 * stdv).add_(-stdv))
        self.register_buffer("z", torch.full((2,), -1.0, dtype=torch.float64))  # float64: Z kept exactly

    def embed(self, v: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, d), (B, D) -> L2-normalised (B, F) student and teacher embeddings, in float32."""
        return F.normalize(self.embed_s(v.float()), dim=1), F.normalize(self.embed_t(a.float()), dim=1)

    def loss(self, student: StudentOutput, teacher: TeacherBatch, labels: torch.Tensor) -> LossTerms:
        """``crd_s`` = β·L_s (student group) and ``crd_t`` = β·L_t (heads only); see module docstring.

        In training mode this also sets Z (first call) and updates the memory rows of the batch.
        Outside training, with ``teacher.index`` None, returns no terms.

        Raises:
            ValueError: ``teacher.index`` is None in training mode, or holds a row outside [0, N).
        """
        c: CRDConfig = self.cfg["crd"]
        index = teacher.index
        if index is None:
            if self.training:
                raise ValueError("method 'crd' needs TeacherBatch.index (each clip's training-set row) in training")
            return LossTerms()
        index = index.long()
        n = self.num_data
        if bool(((index < 0) | (index >= n)).any()):
            raise ValueError(f"TeacherBatch.index holds rows outside [0, {n}): the memory bank has {n} rows")
        with torch.autocast(device_type=student.feature.device.type, enabled=False):
            z_s, z_t = self.embed(student.feature, teacher.embedding)
            rows = sample_contrast_rows(index, n, self.nce_k)
            e_s = contrast_scores(z_s, self.memory_t, rows, c.nce_t)  # student anchor, teacher memory
            e_t = contrast_scores(z_t, self.memory_s, rows, c.nce_t)  # teacher anchor, student memory
            zs_val, zt_val = self.z.tolist()
            z_unset = zs_val < 0 or zt_val < 0
            if zs_val < 0:
                zs_val = estimate_partition(e_s, n)
            if zt_val < 0:
                zt_val = estimate_partition(e_t, n)
            if z_unset and self.training and is_distributed():  # Z of the global first batch (equal batch sizes)
                z_est = torch.tensor([zs_val, zt_val], dtype=torch.float64, device=self.z.device)
                average_([z_est])
                zs_val, zt_val = z_est.tolist()
            p_s, p_t = e_s / zs_val, e_t / zt_val
            loss_s, loss_t = nce_loss(p_s, n), nce_loss(p_t, n)
            if self.training:
                with torch.no_grad():
                    if z_unset:  # first training batch: Z is estimated once, then kept (official)
                        self.z = torch.tensor([zs_val, zt_val], dtype=self.z.dtype, device=self.z.device)
                    rows_all, zs_all, zt_all = index, z_s, z_t
                    if is_distributed():  # every rank applies every rank's updates: memories stay identical
                        rows_all, zs_all, zt_all = all_gather_rows(index), all_gather_rows(z_s), all_gather_rows(z_t)
                    self.memory_s = momentum_update(self.memory_s, rows_all, zs_all, c.nce_m)
                    self.memory_t = momentum_update(self.memory_t, rows_all, zt_all, c.nce_m)
        terms = LossTerms(student={"crd_s": c.weight * loss_s}, heads_only={"crd_t": c.weight * loss_t})
        kpn = self.nce_k / n
        terms.logs = {
            "crd_h_pos_s": (p_s[:, 0] / (p_s[:, 0] + kpn)).mean().item(),  # critic on positives, in (0, 1)
            "crd_h_pos_t": (p_t[:, 0] / (p_t[:, 0] + kpn)).mean().item(),
        }
        return terms

    def sync_buffers(self) -> None:
        """Nothing to do: the loss already applies every rank's memory updates on every rank, and Z is set from
        the global first batch (see the module docstring); averaging the (N, F) memories would only cost time."""
