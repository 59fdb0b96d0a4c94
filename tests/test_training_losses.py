"""The training losses on hand-made tensors: values, false-negative handling and gradient flow."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ctglip_sdk.training.losses import (AbnormalityTextLoss, ClipLoss, OrganIdentityLoss, OrganTextLoss,
                                        abnormality_text_loss, clip_loss, finding_decision_loss, info_nce,
                                        organ_identity_loss)


def _ce(logits_row, target):
    return -torch.log_softmax(logits_row, 0)[target]


def test_info_nce_matches_hand_computation():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    k = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    s = 2.0
    logits = s * q @ k.t()  # rows already unit norm
    expected = 0.5 * ((_ce(logits[0], 0) + _ce(logits[1], 1)) / 2 + (_ce(logits.t()[0], 0) + _ce(logits.t()[1], 1)) / 2)
    assert torch.allclose(info_nce(q, k, s, mode="none"), expected, atol=1e-6)


def test_perfect_alignment_is_low_and_shuffled_is_high():
    x = torch.eye(8)
    good = info_nce(x, x, 50.0)
    bad = info_nce(x, x.roll(1, 0), 50.0)
    assert good < 1e-3 and bad > 10


def test_false_negative_masking_removes_equivalent_pairs():
    # Rows 0 and 1 are two normal livers: equivalent texts with identical embeddings.
    organ = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    text = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    ids = torch.tensor([7, 7, 3])
    s = 10.0
    plain = info_nce(organ, text, s, ids, mode="none")
    masked = info_nce(organ, text, s, ids, mode="mask")
    multi = info_nce(organ, text, s, ids, mode="multi")
    # Plain InfoNCE punishes the twin: row 0 has two columns at logit 10 -> at least log 2 each way.
    assert plain > math.log(2) * 0.5
    assert masked < plain
    # "multi" makes the twin a second positive: same value at this point (identical embeddings).
    assert torch.allclose(multi, plain, atol=1e-4)

    def twins(angle):  # two normal livers at +-angle, paired with equal texts, and one unrelated pair
        a = torch.tensor(angle)
        x = torch.stack([torch.stack([a.cos(), a.sin(), a * 0]), torch.stack([a.cos(), -a.sin(), a * 0]),
                         torch.tensor([0.0, 0.0, 1.0])])
        return x

    near, far = twins(0.1), twins(0.4)
    # Plain InfoNCE rewards pushing equivalent organs apart; masking is indifferent; multi-positive resists.
    assert info_nce(far, far, s, ids, mode="none") < info_nce(near, near, s, ids, mode="none") - 0.05
    assert torch.allclose(info_nce(far, far, s, ids, mode="mask"), info_nce(near, near, s, ids, mode="mask"),
                          atol=1e-5)
    assert info_nce(far, far, s, ids, mode="multi") > info_nce(near, near, s, ids, mode="multi") + 0.05
    # Masked, rows 0/1 see only themselves and the unrelated text: hand-computed value.
    row01 = -torch.log_softmax(torch.tensor([10.0, 0.0]), 0)[0]
    row2 = -torch.log_softmax(torch.tensor([0.0, 0.0, 0.0]), 0)[2]
    # Columns mirror rows here (column 2's entries are all 0).
    expected = 0.5 * ((2 * row01 + row2) / 3 + (2 * row01 + row2) / 3)
    assert torch.allclose(masked, expected, atol=1e-5)
    # Without equivalent ids, the masked loss equals the plain one.
    assert torch.allclose(info_nce(organ, text, s, torch.tensor([0, 1, 2]), mode="mask"), plain, atol=1e-6)


def test_info_nce_gradients_flow_to_both_sides():
    torch.manual_seed(0)
    q = torch.randn(5, 4, requires_grad=True)
    k = torch.randn(5, 4, requires_grad=True)
    scale = torch.tensor(3.0, requires_grad=True)
    OrganTextLoss("mask")(q, k, scale, torch.tensor([0, 0, 1, 2, 2])).backward()
    for t in (q, k, scale):
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0


def test_abnormality_loss_targets_and_ignore():
    organ = torch.tensor([[1.0, 0.0, 0.0]])
    bank = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    s = 5.0
    # Text 0 true, text 1 false, text 2 another organ's (ignored): softmax over columns 0 and 1 only.
    loss = abnormality_text_loss(organ, bank, torch.tensor([[1, 0, -1]]), s)
    assert torch.allclose(loss, -torch.log_softmax(torch.tensor([5.0, 0.0]), 0)[0], atol=1e-6)
    # Counting the ignored column as a negative would raise the loss.
    assert abnormality_text_loss(organ, bank, torch.tensor([[1, 0, 0]]), s) > loss
    # Two true texts: the target is uniform over them.
    two = abnormality_text_loss(organ, bank, torch.tensor([[1, 1, 0]]), s)
    lp = torch.log_softmax(torch.tensor([5.0, 0.0, 0.0]), 0)
    assert torch.allclose(two, -(lp[0] + lp[1]) / 2, atol=1e-6)


def test_finding_decision_loss_is_the_zero_shot_decision():
    organ = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    pos = torch.tensor([[1.0, 0.0], [0.6, 0.8]])   # finding 0: "liver cyst", finding 1: another
    neg = torch.tensor([[0.0, 1.0], [0.8, 0.6]])   # their negations
    labels = torch.tensor([[1, -1], [0, 1]])       # row 0 has finding 0 (finding 1 not applicable)
    s = 4.0
    loss = finding_decision_loss(organ, pos, neg, labels, s, balanced=False)
    # Hand computation: margins s*(cos p - cos n): row0/f0 = 4, row1/f0 = -4, row1/f1 = 4*(0.8-0.6) = 0.8.
    bce = F.binary_cross_entropy_with_logits(torch.tensor([4.0, -4.0, 0.8]), torch.tensor([1.0, 0.0, 1.0]),
                                             reduction="none")
    assert torch.allclose(loss, bce.mean(), atol=1e-6)
    # Balanced: positives (pairs 0 and 2) and the negative (pair 1) weigh one half each.
    balanced = finding_decision_loss(organ, pos, neg, labels, s)
    assert torch.allclose(balanced, 0.5 * ((bce[0] + bce[2]) / 2 + bce[1]), atol=1e-6)
    flipped = finding_decision_loss(organ, pos, neg, torch.tensor([[0, -1], [1, 0]]), s)
    assert flipped > loss + 1
    # The probability ZeroShotClassifier reports is sigmoid of the same margin.
    assert abs(torch.sigmoid(torch.tensor(4.0)) - 0.982) < 1e-3
    assert float(finding_decision_loss(organ, pos, neg, torch.full((2, 2), -1), s)) == 0.0
    with pytest.raises(ValueError, match="labels"):
        finding_decision_loss(organ, pos, neg, labels[:, :1], s)


def test_organ_identity_loss():
    names = torch.eye(3)
    organ = torch.tensor([[1.0, 0.1, 0.0], [0.0, 0.0, 1.0]])
    target = torch.tensor([0, 2])
    loss = organ_identity_loss(organ, names, target, 1.0)
    o = F.normalize(organ, dim=-1)
    expected = (_ce(o[0], 0) + _ce(o[1], 2)) / 2
    assert torch.allclose(loss, expected, atol=1e-6)
    assert OrganIdentityLoss()(organ, names, torch.tensor([1, 0]), 1.0) > loss
    organ.requires_grad_(True)
    organ_identity_loss(organ, names, target, 10.0).backward()
    assert organ.grad.abs().sum() > 0


def test_clip_loss_is_symmetric_infonce():
    torch.manual_seed(2)
    img, txt = torch.randn(6, 8), torch.randn(6, 8)
    assert torch.allclose(clip_loss(img, txt, 7.0), info_nce(img, txt, 7.0, mode="none"))
    assert torch.allclose(clip_loss(img, txt, 7.0), clip_loss(txt, img, 7.0), atol=1e-6)
    assert ClipLoss()(torch.eye(4), torch.eye(4), 100.0) < 1e-3


def test_finding_decision_loss_per_finding_balance_weighs_rare_findings_equally():
    # Finding 0 is common (3 positives), finding 1 rare (1 positive); every pair gets a known BCE.
    organ = torch.eye(4)
    pos = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
    neg = torch.tensor([[0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    labels = torch.tensor([[1, 0], [1, 1], [1, 0], [0, -1]])
    s = 3.0
    margin = s * (organ @ pos.t() - organ @ neg.t())
    bce = F.binary_cross_entropy_with_logits(margin, labels.clamp_min(0).float(), reduction="none")
    got = finding_decision_loss(organ, pos, neg, labels, s, balanced="finding")
    pos_part = (bce[[0, 1, 2], 0].mean() + bce[1, 1]) / 2          # each finding's positives: one vote each
    neg_part = (bce[3, 0] + bce[[0, 2], 1].mean()) / 2
    assert torch.allclose(got, (pos_part + neg_part) / 2, atol=1e-6)
    # Pooled balance lets the common finding's three positives outvote the rare one: a different number.
    pooled = finding_decision_loss(organ, pos, neg, labels, s, balanced="pooled")
    assert not torch.allclose(got, pooled)
    assert torch.allclose(pooled, finding_decision_loss(organ, pos, neg, labels, s, balanced=True))
    # Pooled, by hand: the four positive pairs share one half, the three negative pairs the other, so the
    # rare finding's positive weighs 1/8 there against 1/4 above.
    known_pos = torch.stack([bce[0, 0], bce[1, 0], bce[2, 0], bce[1, 1]])
    known_neg = torch.stack([bce[3, 0], bce[0, 1], bce[2, 1]])
    assert torch.allclose(pooled, (known_pos.mean() + known_neg.mean()) / 2, atol=1e-6)
    # Only negatives in the batch: still a finite loss over them.
    only_neg = finding_decision_loss(organ, pos, neg, torch.tensor([[0, -1], [0, 0], [-1, 0], [0, -1]]), s,
                                     balanced="finding")
    assert torch.isfinite(only_neg) and float(only_neg) > 0
    with pytest.raises(ValueError, match="balanced"):
        finding_decision_loss(organ, pos, neg, labels, s, balanced="per-organ")


def test_decision_balance_names_agree_between_config_and_losses():
    from ctglip_sdk.training import config as tc
    from ctglip_sdk.training.losses import DECISION_BALANCE

    assert tc._DECISION_BALANCE == DECISION_BALANCE
    assert tc.TrainConfig().decision_balance in DECISION_BALANCE
    with pytest.raises(Exception, match="decision_balance"):
        tc.TrainConfig(decision_balance="organ")
