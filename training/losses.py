"""Contrastive objectives of CT-GLIP and the CLIP baseline; each takes tensors and returns a scalar loss.

Embeddings are L2-normalised inside every loss, so callers may pass raw projections. `scale` is the logit
multiplier (exp of a learnable log-temperature, as in CLIP), a float or a 0-d tensor.
"""

from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["info_nce", "abnormality_text_loss", "finding_decision_loss", "organ_identity_loss", "clip_loss",
           "OrganTextLoss",
           "AbnormalityTextLoss", "OrganIdentityLoss", "ClipLoss", "FN_MODES", "DECISION_BALANCE"]

Scale = Union[float, Tensor]
FN_MODES = ("mask", "multi", "none")
#: How :func:`finding_decision_loss` balances rare positives against common negatives.
DECISION_BALANCE = ("finding", "pooled", "none")


def _cos_logits(a: Tensor, b: Tensor, scale: Scale) -> Tensor:
    # Losses run in float32 even under autocast: softmax over bf16 logits loses the small margins we learn.
    a = F.normalize(a.float(), dim=-1)
    b = F.normalize(b.float(), dim=-1)
    return scale * (a @ b.t())


def _multi_positive_ce(logits: Tensor, positive: Tensor, valid: Optional[Tensor] = None) -> Tensor:
    """Mean over rows of -mean_{j in positives} log softmax(logits_i)_j, softmax over `valid` columns."""
    if valid is not None:
        # A large finite value, not -inf: a row with nothing valid must not turn gradients into NaN.
        logits = logits.masked_fill(~valid, torch.finfo(logits.dtype).min / 2)
    logp = torch.log_softmax(logits, dim=1)
    pos = positive & (valid if valid is not None else torch.ones_like(positive))
    counts = pos.sum(1)
    rows = counts > 0
    if not bool(rows.any()):
        return logits.new_zeros(())
    per_row = -logp.masked_fill(~pos, 0.0).sum(1)[rows] / counts[rows]
    return per_row.mean()


def info_nce(query: Tensor, key: Tensor, scale: Scale, ids: Optional[Tensor] = None,
             mode: str = "mask") -> Tensor:
    """Symmetric InfoNCE between paired rows of `query` and `key`, aware of false negatives.

    Args:
        query: [N, D] embeddings (e.g. organs); row i is paired with key row i.
        key: [N, D] embeddings (e.g. the organ-level texts).
        scale: logit multiplier (1 / temperature).
        ids: [N] integer ids of each pair's meaning (same text or same label signature -> same id). Pairs
            that share an id are equivalent, so they are not pushed apart.
        mode: "mask" removes equivalent off-diagonal pairs from the negatives; "multi" makes them extra
            positives (uniform target over equivalents); "none" is plain InfoNCE (ids ignored).

    Returns:
        0-d tensor, mean of the query->key and key->query cross-entropies.

    Example:
        >>> x = torch.eye(3)
        >>> float(info_nce(x, x, 100.0)) < 1e-3
        True
    """
    if query.shape != key.shape or query.dim() != 2:
        raise ValueError(f"info_nce: query {tuple(query.shape)} and key {tuple(key.shape)} must be equal [N, D]")
    if mode not in FN_MODES:
        raise ValueError(f"info_nce: mode={mode!r}, expected one of {FN_MODES}")
    logits = _cos_logits(query, key, scale)
    n = logits.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=logits.device)
    if ids is None or mode == "none":
        target = torch.arange(n, device=logits.device)
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))
    same = ids.view(-1, 1) == ids.view(1, -1)
    if mode == "mask":
        valid = ~(same & ~eye)  # drop equivalent pairs from the negatives, keep the true pair
        return 0.5 * (_multi_positive_ce(logits, eye, valid) + _multi_positive_ce(logits.t(), eye, valid.t()))
    return 0.5 * (_multi_positive_ce(logits, same) + _multi_positive_ce(logits.t(), same.t()))


def abnormality_text_loss(organ: Tensor, bank: Tensor, targets: Tensor, scale: Scale) -> Tensor:
    """Multi-label contrastive alignment of organs with a bank of dictionary descriptions.

    For organ row i, `targets[i, j]` is 1 when bank text j is a true description of it (a phrasing of a
    present finding, a negated phrasing of an absent one, a normal phrase of a normal organ), 0 when false
    (a present finding's negation, an absent finding's phrasing, a normal phrase of an abnormal organ) and -1
    when it does not concern this organ (another organ's findings): ignored. The loss is a softmax over each
    row's concerned texts with a uniform target over its true ones; rows with no true text are skipped.

    Example:
        >>> o = torch.tensor([[1.0, 0.0]]); b = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> float(abnormality_text_loss(o, b, torch.tensor([[1, 0]]), 50.0)) < 1e-3
        True
    """
    if targets.shape != (organ.shape[0], bank.shape[0]):
        raise ValueError(f"abnormality_text_loss: targets {tuple(targets.shape)} must be "
                         f"[{organ.shape[0]}, {bank.shape[0]}]")
    logits = _cos_logits(organ, bank, scale)
    return _multi_positive_ce(logits, targets > 0, targets >= 0)


def finding_decision_loss(organ: Tensor, positive: Tensor, negative: Tensor, labels: Tensor, scale: Scale,
                          balanced: Union[bool, str] = True) -> Tensor:
    """Binary cross-entropy of the zero-shot decision: is finding f present in organ i?

    The logit is `scale * (cos(o_i, p_f) - cos(o_i, n_f))` with `p_f`/`n_f` the (ensembled) positive and
    negative prompt embeddings of finding f — exactly what `ZeroShotClassifier.detect` turns into a
    probability. `labels[i, f]` is 1 (present), 0 (absent) or -1 (not applicable / uncertain: ignored).
    `balanced`: ``True`` / ``"pooled"`` averages the positive and the negative pairs separately, then takes
    the mean of the two; ``"finding"`` does the same per finding first (each finding's positives weigh as
    much as any other finding's, whatever its prevalence: the metrics average over findings too);
    ``False`` / ``"none"`` is the plain mean over pairs.

    Example:
        >>> o = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> p, n = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
        >>> float(finding_decision_loss(o, p, n, torch.tensor([[1], [0]]), 20.0)) < 1e-6
        True
    """
    if labels.shape != (organ.shape[0], positive.shape[0]) or positive.shape != negative.shape:
        raise ValueError(f"finding_decision_loss: labels {tuple(labels.shape)} must be "
                         f"[{organ.shape[0]}, {positive.shape[0]}] and positive/negative equal shapes")
    margin = _cos_logits(organ, positive, scale) - _cos_logits(organ, negative, scale)
    known = labels >= 0
    if not bool(known.any()):
        return margin.new_zeros(()) * margin.sum()
    mode = ("pooled" if balanced else "none") if isinstance(balanced, bool) else balanced
    if mode not in DECISION_BALANCE:
        raise ValueError(f"finding_decision_loss: balanced={balanced!r}: expected a bool or one of "
                         f"{', '.join(DECISION_BALANCE)}")
    if mode == "finding":
        return _per_finding_balanced(margin, labels)
    bce = F.binary_cross_entropy_with_logits(margin[known], labels[known].float(), reduction="none")
    pos = labels[known] == 1
    if mode == "none" or bool(pos.all()) or not bool(pos.any()):
        return bce.mean()
    # Findings are rare (a few percent of organ-finding pairs): average each class separately so the
    # positives are not drowned by the negatives.
    return 0.5 * (bce[pos].mean() + bce[~pos].mean())


def _per_finding_balanced(margin: Tensor, labels: Tensor) -> Tensor:
    """Mean over findings of each finding's mean positive BCE, and likewise for negatives, then their mean.

    A focal finding with 20 positives in 200 studies would otherwise weigh ~1/40 of the positive side against
    emphysema's 5 lobes per patient; averaging per finding first gives every finding the same say.
    """
    target = labels.clamp_min(0).float()
    bce = F.binary_cross_entropy_with_logits(margin, target, reduction="none")
    parts = []
    for cls in (1, 0):
        m = (labels == cls).float()
        n = m.sum(0)
        has = n > 0
        if bool(has.any()):
            parts.append(((bce * m).sum(0)[has] / n[has]).mean())
    return torch.stack(parts).mean()


def organ_identity_loss(organ: Tensor, names: Tensor, target: Tensor, scale: Scale) -> Tensor:
    """Cross-entropy of organ embeddings over organ-name prompt embeddings.

    Args:
        organ: [N, D] organ embeddings.
        names: [K, D] embeddings of organ-name prompts ("a CT of the liver", ...).
        target: [N] index into `names` of each organ's class.
        scale: logit multiplier.

    Example:
        >>> float(organ_identity_loss(torch.eye(2), torch.eye(2), torch.tensor([0, 1]), 50.0)) < 1e-3
        True
    """
    return F.cross_entropy(_cos_logits(organ, names, scale), target.long())


def clip_loss(image: Tensor, text: Tensor, scale: Scale, ids: Optional[Tensor] = None,
              mode: str = "none") -> Tensor:
    """CLIP baseline: symmetric InfoNCE between global volume embeddings and whole-report embeddings.

    `ids`/`mode` optionally treat identical reports as equivalent (see `info_nce`); the paper's baseline is
    plain InfoNCE, the default.

    Example:
        >>> float(clip_loss(torch.eye(4), torch.eye(4), 100.0)) < 1e-3
        True
    """
    return info_nce(image, text, scale, ids=ids, mode=mode)


class OrganTextLoss(nn.Module):
    """nn.Module form of `info_nce` for organ <-> organ-level text (false-negative aware)."""

    def __init__(self, mode: str = "mask") -> None:
        super().__init__()
        if mode not in FN_MODES:
            raise ValueError(f"OrganTextLoss: mode={mode!r}, expected one of {FN_MODES}")
        self.mode = mode

    def forward(self, organ: Tensor, text: Tensor, scale: Scale, ids: Optional[Tensor] = None) -> Tensor:
        return info_nce(organ, text, scale, ids=ids, mode=self.mode)


class AbnormalityTextLoss(nn.Module):
    """Dictionary alignment: `abnormality_text_loss` plus `decision_weight` x `finding_decision_loss`."""

    def __init__(self, decision_weight: float = 1.0) -> None:
        super().__init__()
        self.decision_weight = decision_weight

    def forward(self, organ: Tensor, bank: Tensor, targets: Tensor, scale: Scale, positive: Optional[Tensor] = None,
                negative: Optional[Tensor] = None, labels: Optional[Tensor] = None) -> Tensor:
        loss = abnormality_text_loss(organ, bank, targets, scale)
        if positive is not None and negative is not None and labels is not None and self.decision_weight > 0:
            loss = loss + self.decision_weight * finding_decision_loss(organ, positive, negative, labels, scale)
        return loss


class OrganIdentityLoss(nn.Module):
    """nn.Module form of `organ_identity_loss`."""

    def forward(self, organ: Tensor, names: Tensor, target: Tensor, scale: Scale) -> Tensor:
        return organ_identity_loss(organ, names, target, scale)


class ClipLoss(nn.Module):
    """nn.Module form of `clip_loss`."""

    def __init__(self, mode: str = "none") -> None:
        super().__init__()
        self.mode = mode

    def forward(self, image: Tensor, text: Tensor, scale: Scale, ids: Optional[Tensor] = None) -> Tensor:
        return clip_loss(image, text, scale, ids=ids, mode=self.mode)
