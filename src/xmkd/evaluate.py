"""Evaluation metrics: classification, retrieval (reference protocol) and MNF gate analysis.

Retrieval follows the reference implementation of Xia et al. (arXiv 2304.07775; ``retrieval/
get_retrieval_result_ucf.py`` and ``mAP_result_ucf.py``) and CCL (Chen et al., CVPR 2021): each test
clip queries the *training* clips by cosine similarity of the student embedding ``v``.
R@k = fraction of queries with at least one same-class item among the top k. mAP: for each query,
over the top ``map_topk`` (500) items, AP = (1/R) Σ_{r=1..R} r / rank_r, where rank_r is the 1-based
rank of the r-th relevant item and R the number of relevant items in the top ``map_topk``; queries
with R = 0 are *left out* of the mean, as the reference does (their count is reported).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def classification_metrics(logits: np.ndarray, labels: np.ndarray, num_classes: int) -> dict[str, float]:
    """top-1, top-5 and mean per-class accuracy (fractions in [0, 1]).

    Args:
        logits: (N, C) scores. labels: (N,) int class indices. num_classes: C.
    """
    order = np.argsort(-logits, axis=1, kind="stable")
    top1 = order[:, 0] == labels
    k = min(5, logits.shape[1])
    top5 = (order[:, :k] == labels[:, None]).any(axis=1)
    per_class = [top1[labels == c].mean() for c in range(num_classes) if (labels == c).any()]
    return {"top1": float(top1.mean()), "top5": float(top5.mean()), "mean_class_acc": float(np.mean(per_class))}


def retrieval_metrics(
    query: np.ndarray,
    query_labels: np.ndarray,
    gallery: np.ndarray,
    gallery_labels: np.ndarray,
    ks: tuple[int, ...] = (1, 5, 10),
    map_topk: int = 500,
    chunk: int = 1024,
) -> dict[str, float]:
    """Recall@k and mAP@``map_topk`` of queries against a gallery by cosine similarity.

    Args:
        query: (Q, d) embeddings; query_labels: (Q,).
        gallery: (G, d) embeddings; gallery_labels: (G,).
        ks: the k of R@k.
        map_topk: ranking depth of the mAP (the reference uses 500); clipped to G.

    Returns:
        {"R@1": ..., "R@5": ..., "R@10": ..., "mAP": ..., "map_queries_without_hit": count}.
    """
    g = F.normalize(torch.as_tensor(gallery, dtype=torch.float32), dim=1)
    gl = torch.as_tensor(gallery_labels)
    depth = min(max(max(ks), map_topk), g.shape[0])
    hits_at = {k: 0 for k in ks}
    aps: list[float] = []
    no_hit = 0
    for start in range(0, len(query), chunk):
        q = F.normalize(torch.as_tensor(query[start : start + chunk], dtype=torch.float32), dim=1)
        ql = torch.as_tensor(query_labels[start : start + chunk])
        sim = q @ g.T  # (q, G)
        idx = torch.topk(sim, k=depth, dim=1).indices  # sorted, descending
        rel = (gl[idx] == ql[:, None]).numpy()  # (q, depth) bool
        for k in ks:
            hits_at[k] += int(rel[:, : min(k, depth)].any(axis=1).sum())
        rel_map = rel[:, : min(map_topk, depth)]
        ranks = np.arange(1, rel_map.shape[1] + 1)
        for row in rel_map:
            r = int(row.sum())
            if r == 0:
                no_hit += 1
                continue
            aps.append(float((np.arange(1, r + 1) / ranks[row]).sum() / r))
    n = len(query)
    out = {f"R@{k}": hits_at[k] / n for k in ks}
    out["mAP"] = float(np.mean(aps)) if aps else 0.0
    out["map_queries_without_hit"] = float(no_hit)
    return out


def gate_metrics(
    gate_mean: np.ndarray, conditions: np.ndarray, norm_ratio: np.ndarray | None = None, prefix: str = ""
) -> dict[str, float]:
    """MNF gate analysis: mean gate per audio condition, AUROC of the gate mean for clean vs irrelevant, and
    the share of the teacher embedding that passes the gate, ‖a′‖/‖a‖, per condition.

    No loss term trains the gate to separate irrelevant sound (Xia et al., arXiv 2304.07775: the gate is
    trained only through CSC, MNF's classifier, triplet and L1 terms), so these are read against the same
    statistics of the untrained gate (``prefix="init_"``, the MNF module at its initial weights on the same
    clips) as a control.

    Args:
        gate_mean: (N,) per-clip mean of the MNF gate g.
        conditions: (N,) strings: ``clean``, ``background`` or ``mismatched``.
        norm_ratio: (N,) per-clip ‖g ⊙ a‖ / ‖a‖, or None.
        prefix: prepended to every key (``init_`` for the untrained control).

    Returns:
        ``<prefix>gate_mean/<condition>`` for each condition present, ``<prefix>gate_auroc`` (clean =
        positive, background + mismatched = negative; 0.5 = no separation; NaN when one side is empty), and
        ``<prefix>gate_norm_ratio/<condition>`` when ``norm_ratio`` is given.
    """
    from sklearn.metrics import roc_auc_score  # here, not at the top: a 1.3 s import only this needs

    conds = sorted(set(conditions))
    out = {f"{prefix}gate_mean/{c}": float(gate_mean[conditions == c].mean()) for c in conds}
    y = conditions == "clean"
    out[f"{prefix}gate_auroc"] = float(roc_auc_score(y, gate_mean)) if 0 < y.sum() < len(y) else float("nan")
    if norm_ratio is not None:
        out |= {f"{prefix}gate_norm_ratio/{c}": float(norm_ratio[conditions == c].mean()) for c in conds}
    return out
