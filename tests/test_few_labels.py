"""The few-labels regime (train.label_fraction < 1): which clips keep a label, and what each label-needing
term does with a clip that has none."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from xmkd.distill import few_labels
from xmkd.methods.base import UNLABELLED, labelled_cross_entropy, positive_mask
from xmkd.methods.ccl import nce_loss
from xmkd.methods.mnf_csc import csc_loss
from xmkd.train import TrainConfig


def test_few_labels_keeps_a_seeded_per_class_share_of_the_training_clips() -> None:
    labels = np.repeat(np.arange(4), 25)  # 100 rows, 25 per class
    train = np.arange(80)  # classes 0-2 fully, class 3 rows 75-79 only (5 clips)
    seen = few_labels(labels, train, 0.1, seed=0)
    assert (seen[80:] == labels[80:]).all()  # validation / test rows keep their labels
    kept = seen[train] != UNLABELLED
    for c, n_c in ((0, 25), (1, 25), (2, 25), (3, 5)):
        rows = train[labels[train] == c]
        assert kept[rows].sum() == max(1, int(np.floor(0.1 * n_c + 0.5)))  # 3, 3, 3, 1 (half up: 2.5 -> 3)
        assert (seen[rows][kept[rows]] == c).all()
    np.testing.assert_array_equal(few_labels(labels, train, 0.1, seed=0), seen)  # seeded
    assert not np.array_equal(few_labels(labels, train, 0.1, seed=1), seen)
    np.testing.assert_array_equal(few_labels(labels, train, 1.0, seed=0), labels)
    with pytest.raises(ValueError, match="label_fraction"):
        TrainConfig(label_fraction=0.0)


def test_labelled_cross_entropy_ignores_unlabelled_clips() -> None:
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [5.0, -5.0]], requires_grad=True)
    y = torch.tensor([0, UNLABELLED, 1])
    got = labelled_cross_entropy(logits, y)
    want = F.cross_entropy(logits[[0, 2]], y[[0, 2]])
    assert got.item() == pytest.approx(want.item())
    none = labelled_cross_entropy(logits, torch.full((3,), UNLABELLED))
    assert none.item() == 0.0 and none.requires_grad  # no labelled clip: 0, still part of the graph


def test_an_unlabelled_clip_is_only_its_own_positive() -> None:
    y = torch.tensor([0, 0, UNLABELLED, UNLABELLED, 1])
    m = positive_mask(y)
    assert m.tolist() == [
        [True, True, False, False, False],
        [True, True, False, False, False],
        [False, False, True, False, False],  # not a positive of the other unlabelled clip
        [False, False, False, True, False],
        [False, False, False, False, True],
    ]
    # CSC and CCL use that mask: with an unlabelled clip, CSC is InfoNCE on its own pair
    torch.manual_seed(0)
    v, v2 = torch.randn(5, 8), torch.randn(5, 8)
    logits = F.normalize(v, dim=1) @ F.normalize(v2, dim=1).T / 0.1
    row2 = -torch.log(torch.softmax(logits, dim=1)[2, 2] + 1e-10)
    per_row = []
    for i in range(5):
        p = torch.softmax(logits[i], 0)
        per_row.append(-(torch.log(p + 1e-10) * m[i].float()).sum() / m[i].sum())
    assert csc_loss(v, v2, y, 0.1).item() == pytest.approx(torch.stack(per_row).mean().item(), rel=1e-6)
    assert per_row[2].item() == pytest.approx(row2.item(), rel=1e-6)
    assert torch.isfinite(nce_loss(v, v2, y, 0.5))
