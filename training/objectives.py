"""Training objectives as nn.Modules: CT-GLIP (organ-text + dictionary + organ identity) and the CLIP baseline.

forward(batch, step) -> (loss, {name: float}); embeddings are gathered across ranks before the losses, and the
text banks (dictionary phrasings, organ-name prompts) are drawn from a (seed, step) generator so every rank
uses the same bank.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ctglip_sdk import organs as vocab
from ctglip_sdk.training.data import UNSPECIFIED
from ctglip_sdk.training.distributed import gather, gather_with_grad
from ctglip_sdk.training.losses import (abnormality_text_loss, clip_loss, finding_decision_loss, info_nce,
                                        organ_identity_loss)

__all__ = ["TextBank", "CTGlipObjective", "ClipObjective", "build_objective", "organ_name_prompts", "split_sentences",
           "stable_id", "finding_phrasings"]

log = logging.getLogger(__name__)


def organ_name_prompts(dictionary: Any, organ: str) -> List[str]:
    """Prompts naming an organ, exactly as ZeroShotClassifier builds them (dictionary first, else templates)."""
    from ctglip_sdk.model.zeroshot import ORGAN_TEMPLATES

    if dictionary is not None and hasattr(dictionary, "organ_prompts"):
        prompts = list(dictionary.organ_prompts(organ))
        if prompts:
            return prompts
    return [t.format(vocab.display_name(organ)) for t in ORGAN_TEMPLATES]


def finding_phrasings(dictionary: Any, key: str) -> Tuple[List[str], List[str]]:
    """(positive, negated) phrasings of a finding: zero-shot prompts plus the entry's own descriptions.

    The negated list keeps only statements about this finding (the entry's negatives and negative prompts
    naming it); generic normal phrases of the organ are left out because they are false for an organ with
    another finding.
    """
    entry = dictionary[key]
    pos: List[str] = []
    neg: List[str] = []
    if hasattr(dictionary, "prompts"):
        p, n = dictionary.prompts(key)
        pos, neg = list(p), list(n)
    own_neg = list(entry.negatives)
    neg = [t for t in neg if t in own_neg or entry.name.lower() in t.lower()]
    pos = list(dict.fromkeys(pos + list(entry.positives))) or [entry.name]
    neg = list(dict.fromkeys(neg + own_neg)) or [f"no {entry.name}"]
    return pos, neg


@dataclass
class TextBank:
    """One step's dictionary texts and what each says: ("pos"|"neg", finding key) or ("normal", organ group).

    `pos_cols[k]` / `neg_cols[k]` are the columns averaged into finding k's positive / negative prompt
    ensembles (the negative one also holds the group's normal phrase, as the zero-shot prompts do).
    """

    texts: List[str]
    kinds: List[str]
    keys: List[str]
    pos_cols: Dict[str, List[int]]
    neg_cols: Dict[str, List[int]]

    @classmethod
    def draw(cls, dictionary: Any, rng: np.random.Generator, phrasings: int) -> "TextBank":
        """Sample `phrasings` positive and negated phrasings per finding and one normal phrase per group."""
        texts: List[str] = []
        kinds: List[str] = []
        keys: List[str] = []

        def add(text: str, kind: str, key: str) -> int:
            texts.append(text), kinds.append(kind), keys.append(key)
            return len(texts) - 1

        entries = sorted(dictionary.findings(), key=lambda e: e.key)
        normal_col: Dict[str, int] = {}
        for group in sorted({e.organ for e in entries}):
            normal = list(dictionary.normal_phrases(group)) if hasattr(dictionary, "normal_phrases") else []
            if normal:
                normal_col[group] = add(normal[int(rng.integers(len(normal)))], "normal", group)
        pos_cols: Dict[str, List[int]] = {}
        neg_cols: Dict[str, List[int]] = {}
        for e in entries:
            pos, neg = finding_phrasings(dictionary, e.key)
            pick_p = rng.choice(len(pos), size=min(phrasings, len(pos)), replace=False)
            pick_n = rng.choice(len(neg), size=min(phrasings, len(neg)), replace=False)
            pos_cols[e.key] = [add(pos[int(i)], "pos", e.key) for i in pick_p]
            neg_cols[e.key] = [add(neg[int(i)], "neg", e.key) for i in pick_n]
            if e.organ in normal_col:
                neg_cols[e.key].append(normal_col[e.organ])
        return cls(texts, kinds, keys, pos_cols, neg_cols)

    def ensembles(self, emb: Tensor, keys: Sequence[str]) -> Tuple[Tensor, Tensor]:
        """Renormalised mean embeddings of each finding's positive and negative columns -> ([F, D], [F, D])."""
        pos = torch.stack([emb[self.pos_cols[k]].mean(0) for k in keys])
        neg = torch.stack([emb[self.neg_cols[k]].mean(0) for k in keys])
        return F.normalize(pos, dim=-1), F.normalize(neg, dim=-1)

    def targets(self, organ_keys: Sequence[str], groups: Sequence[str], present: Sequence[str],
                uncertain: Sequence[str]) -> List[int]:
        """1/0/-1 per bank text for one organ: true / false / not about this organ (or uncertain)."""
        applicable, pres, unc = set(organ_keys), set(present), set(uncertain)
        normal = not (pres & applicable)
        unsure = bool(unc & applicable) or UNSPECIFIED in unc
        out = []
        for kind, key in zip(self.kinds, self.keys):
            if kind == "normal":
                out.append(-1 if key not in groups else 0 if not normal else -1 if unsure else 1)
            elif key not in applicable or key in unc:
                out.append(-1)
            elif kind == "pos":
                out.append(1 if key in pres else 0)
            else:
                out.append(0 if key in pres else 1)
        return out


def organ_uncertain(uncertain: Sequence[str], applicable: Sequence[str], present: Sequence[str],
                    unspecified: str = "absent") -> Sequence[str]:
    """An organ's uncertain findings for its labels. With ``unspecified="uncertain"``, an organ the report calls
    abnormal without naming a finding (``UNSPECIFIED``) has every finding it does not state uncertain, as evaluation
    and calibration read it; with "absent" (the default, the bundled model's recipe) they stay negatives.

    Example:
        >>> organ_uncertain(["_unspecified_abnormality"], ["liver_cyst", "liver_mass"], [], "uncertain")
        ('liver_cyst', 'liver_mass')
    """
    if unspecified != "uncertain" or UNSPECIFIED not in uncertain:
        return uncertain
    return tuple(sorted(set(uncertain) | (set(applicable) - set(present))))


def decision_labels(finding_keys: Sequence[str], applicable: Sequence[str], present: Sequence[str],
                    uncertain: Sequence[str]) -> List[int]:
    """One organ's zero-shot decision labels: 1 present, 0 absent, -1 not applicable or hedged (ignored)."""
    return [-1 if (k not in applicable or k in uncertain) else int(k in present) for k in finding_keys]


def stable_id(value: Any) -> int:
    """A 62-bit id of a value's repr that is the same in every process (python's hash() is salted per process)."""
    return int.from_bytes(hashlib.blake2b(repr(value).encode(), digest_size=8).digest(), "little") >> 2


def split_sentences(text: str) -> List[str]:
    """Sentences of a report body (split on '.', ';' and line breaks; headers like 'LIVER:' dropped)."""
    parts = re.split(r"(?<=[.;])\s+|\n+", text)
    out = []
    for p in parts:
        p = re.sub(r"^[A-Za-z ,/&-]{2,40}:\s*", "", p.strip())
        if len(p) > 2:
            out.append(p)
    return out


class _Base(nn.Module):
    def __init__(self, model: nn.Module, cfg: Any, dictionary: Any) -> None:
        super().__init__()
        self.model = model
        self.cfg = cfg
        self.dictionary = dictionary

    def _rng(self, step: int) -> np.random.Generator:
        return np.random.default_rng([int(self.cfg.seed), 7919, int(step)])

    def _encode(self, texts: Sequence[str], chunk: int = 96) -> Tensor:
        # Long organ texts and short prompts share a step: sort by length and pad per chunk, so a 10-token
        # prompt is not padded to the 64 tokens of a report paragraph (about half the text tower's cost).
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        parts = []
        for c0 in range(0, len(order), chunk):
            tok = self.model.tokenize([texts[i] for i in order[c0:c0 + chunk]])
            parts.append(self.model.encode_text_tokens(tok["input_ids"], tok["attention_mask"]))
        emb = torch.cat(parts)
        inverse = torch.empty(len(order), dtype=torch.long, device=emb.device)
        inverse[torch.tensor(order, device=emb.device)] = torch.arange(len(order), device=emb.device)
        return emb[inverse]

    def _features(self, batch: Dict[str, Any]) -> Tensor:
        images = batch["image"].to(self.model.device, non_blocking=True)
        return self.model.forward_features(images)


class CTGlipObjective(_Base):
    """CT-GLIP: organ<->organ-text InfoNCE (false-negative aware) + dictionary alignment + organ identity."""

    def __init__(self, model: nn.Module, cfg: Any, dictionary: Any) -> None:
        super().__init__(model, cfg, dictionary)
        self.finding_keys = sorted(e.key for e in dictionary.findings())
        self._organ_info: Dict[str, Tuple[Tuple[str, ...], Tuple[str, ...]]] = {}
        self._name_prompts = {o: organ_name_prompts(dictionary, o) for o in vocab.ORGANS}
        self._organ_index = {o: i for i, o in enumerate(vocab.ORGANS)}

    def organ_info(self, organ: str) -> Tuple[Tuple[str, ...], Tuple[str, ...]]:
        """(finding keys, dictionary groups) that apply to an organ class; empty for organs without findings."""
        if organ not in self._organ_info:
            try:
                entries = list(self.dictionary.for_organ(organ))
            except Exception:  # noqa: BLE001 - an organ the dictionary does not know has no findings
                entries = []
            self._organ_info[organ] = (tuple(e.key for e in entries), tuple(sorted({e.organ for e in entries})))
        return self._organ_info[organ]

    def forward(self, batch: Dict[str, Any], step: int) -> Tuple[Tensor, Dict[str, float]]:
        cfg, model = self.cfg, self.model
        feats = self._features(batch)
        pooled = []
        for b, st in enumerate(batch["studies"]):
            gx, gy, gz = st["grid"]
            pooled.append(model.pool_sparse(feats[b, :, :gx, :gy, :gz], st["rows"], st["cols"], st["vals"],
                                            len(st["organs"]), st.get("stats")))
        organ = model.project_vision(torch.cat(pooled))  # [n_local, D]
        organs = [o for st in batch["studies"] for o in st["organs"]]
        texts = [t for st in batch["studies"] for t in st["texts"]]
        present = [p for st in batch["studies"] for p in st["present"]]
        uncertain = [u for st in batch["studies"] for u in st["uncertain"]]
        dev = organ.device

        rng = self._rng(step)
        bank = TextBank.draw(self.dictionary, rng, cfg.phrasings_per_finding)
        name_texts = [self._name_prompts[o][int(rng.integers(len(self._name_prompts[o])))] for o in vocab.ORGANS]
        all_text = self._encode(list(texts) + bank.texts + name_texts)
        n, m = len(texts), len(bank.texts)
        text_emb, bank_emb, name_emb = all_text[:n], all_text[n:n + m], all_text[n + m:]

        # Same label signature (organ + present findings) = equivalent texts: not negatives of each other.
        sig = torch.tensor([stable_id((o, tuple(sorted(p)))) for o, p in zip(organs, present)],
                           dtype=torch.int64, device=dev)
        targets, finding_labels = [], []
        for o, p, u in zip(organs, present, uncertain):
            keys, groups = self.organ_info(o)
            u = organ_uncertain(u, keys, p, cfg.unspecified_abnormality)
            targets.append(bank.targets(keys, groups, p, u))
            finding_labels.append(decision_labels(self.finding_keys, keys, p, u))
        targets_t = torch.tensor(targets, dtype=torch.int64, device=dev).reshape(n, m)
        labels_t = torch.tensor(finding_labels, dtype=torch.int64, device=dev).reshape(n, len(self.finding_keys))
        name_t = torch.tensor([self._organ_index.get(o, -1) for o in organs], dtype=torch.int64, device=dev)

        organ_g, text_g = gather_with_grad(organ), gather_with_grad(text_emb)
        sig_g, targets_g, labels_g, name_g = gather(sig), gather(targets_t), gather(labels_t), gather(name_t)
        scale = model.temperature_scale()

        logs: Dict[str, float] = {"scale": float(scale.detach()), "organs": float(organ_g.shape[0])}
        loss = organ.new_zeros(())
        if cfg.w_organ_text > 0:
            l_ot = info_nce(organ_g, text_g, scale, sig_g, cfg.false_negatives)
            loss = loss + cfg.w_organ_text * l_ot
            logs["organ_text"] = float(l_ot.detach())
        if cfg.w_abnormality > 0:
            l_ab = abnormality_text_loss(organ_g, bank_emb, targets_g, scale)
            pos_ens, neg_ens = bank.ensembles(bank_emb, self.finding_keys)
            l_dec = finding_decision_loss(organ_g, pos_ens, neg_ens, labels_g, scale, cfg.decision_balance)
            loss = loss + cfg.w_abnormality * (l_ab + l_dec)
            logs["abnormality"] = float(l_ab.detach())
            logs["decision"] = float(l_dec.detach())
        if cfg.w_identity > 0:
            known = name_g >= 0
            l_id = organ_identity_loss(organ_g[known], name_emb, name_g[known], scale)
            loss = loss + cfg.w_identity * l_id
            logs["identity"] = float(l_id.detach())
        return loss, logs


class ClipObjective(_Base):
    """CLIP baseline: mean feature of the scan box <-> whole report (mean of its sentence embeddings)."""

    def forward(self, batch: Dict[str, Any], step: int) -> Tuple[Tensor, Dict[str, float]]:
        model = self.model
        feats = self._features(batch)
        boxes = [feats[b, :, :st["grid"][0], :st["grid"][1], :st["grid"][2]].flatten(1)
                 for b, st in enumerate(batch["studies"])]
        if model.config.organ_pooling == "mean_max":  # the projection takes [mean, max] as organ pooling gives it
            pooled = [torch.cat([f.mean(1), f.amax(1)]) for f in boxes]
        else:
            pooled = [f.mean(1) for f in boxes]
        if model.config.preprocess.n_stats:
            # The scan-level stats: the mean of the study's organ histograms (what the cache holds).
            pooled = [model._with_stats(p[None], st["stats"].to(p.device).mean(0, keepdim=True))[0]
                      for p, st in zip(pooled, batch["studies"])]
        image = model.project_vision(torch.stack(pooled))
        # The text tower reads max_length tokens; a report is longer, so encode its sentences and average them
        # (renormalised): every finding of the report reaches the report embedding.
        sentences, owner = [], []
        for b, st in enumerate(batch["studies"]):
            sents = split_sentences(st["report"]) or [st["report"] or "no findings"]
            sentences += sents
            owner += [b] * len(sents)
        sent_emb = self._encode(sentences)
        idx = torch.tensor(owner, device=sent_emb.device)
        summed = torch.zeros(len(batch["studies"]), sent_emb.shape[1], device=sent_emb.device).index_add_(0, idx, sent_emb)
        report = torch.nn.functional.normalize(summed, dim=-1)
        ids = torch.tensor([stable_id(st["report"]) for st in batch["studies"]], device=image.device)
        scale = model.temperature_scale()
        loss = clip_loss(gather_with_grad(image), gather_with_grad(report), scale, ids=gather(ids), mode="mask")
        return loss, {"clip": float(loss.detach()), "scale": float(scale.detach())}


def build_objective(model: nn.Module, cfg: Any, dictionary: Any) -> nn.Module:
    """The objective module named by `cfg.objective`."""
    if cfg.objective == "clip":
        return ClipObjective(model, cfg, dictionary)
    return CTGlipObjective(model, cfg, dictionary)
