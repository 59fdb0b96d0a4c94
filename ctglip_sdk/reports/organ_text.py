"""Per-organ texts and labels from a report, for CT-GLIP organ-text training and evaluation."""

from __future__ import annotations

import random
from typing import Dict, Iterable, List, Optional, Tuple

from ctglip_sdk import organs as _organs
from ctglip_sdk.errors import ConfigError
from ctglip_sdk.reports.dictionary import AbnormalityDictionary
from ctglip_sdk.reports.parser import _RANK, OrganFinding, Status, analyse, parse_report

__all__ = ["organ_texts", "labels"]

_POLICIES = ("normal", "skip")


def _members(organ: str) -> Tuple[str, ...]:
    return tuple(_organs.expand(organ))


def organ_texts(report: str, policy: str = "normal", dictionary: Optional[AbnormalityDictionary] = None, *,
                organs: Optional[Iterable[str]] = None, rng: Optional[random.Random] = None) -> Dict[str, str]:
    """The report's sentences about each organ, keyed by v1 class name.

    A sentence about a group ("kidneys", "lungs") goes to every member. Sentences whose organ comes from the
    section heading get the heading as prefix ("Spleen: Normal."). Organs the report does not mention get a
    normal phrase from the dictionary (``policy="normal"``; the first phrase, or a random one with ``rng``) or are
    left out (``policy="skip"``).

    Args:
        report: report text.
        policy: ``"normal"`` or ``"skip"`` for organs the report does not mention.
        dictionary: vocabulary and normal phrases; the default dictionary when None.
        organs: the classes to return (e.g. those present in the segmentation); all 104 v1 classes when None.
        rng: picks among normal phrases when given (augmentation); deterministic otherwise.

    Example:
        >>> texts = organ_texts("Spleen: Normal. Left renal cyst.", organs=["spleen", "kidney_left", "liver"])
        >>> texts["spleen"], texts["kidney_left"]
        ('Spleen: Normal.', 'Left renal cyst.')
        >>> texts["liver"]
        'The liver is normal in size and attenuation.'
    """
    if policy not in _POLICIES:
        raise ConfigError(f"unknown organ_texts policy {policy!r}; expected one of {', '.join(_POLICIES)}")
    d = dictionary or AbnormalityDictionary.default()
    wanted = list(_organs.ORGANS) if organs is None else [m for o in organs for m in _members(o)]
    wanted = list(dict.fromkeys(wanted))
    want = set(wanted)
    parts: Dict[str, List[str]] = {}
    for sent in analyse(report, d):
        if not sent.organs:
            continue
        text = f"{sent.heading}: {sent.text}" if sent.organ_from_heading and sent.heading else sent.text
        for organ in dict.fromkeys(m for o in sent.organs for m in _members(o)):
            if organ in want:
                bucket = parts.setdefault(organ, [])
                if not bucket or bucket[-1] != text:
                    bucket.append(text)
    out: Dict[str, str] = {}
    for organ in wanted:
        if organ in parts:
            out[organ] = " ".join(parts[organ])
        elif policy == "normal":
            phrases = d.normal_phrases(organ)
            out[organ] = rng.choice(phrases) if rng is not None else phrases[0]
    return out


def labels(report: str, dictionary: Optional[AbnormalityDictionary] = None
           ) -> Dict[Tuple[str, Optional[str]], Status]:
    """``{(v1 class, finding key or None): status}`` for training and evaluation.

    Rules: statements on a group go to its members; a ``focal`` finding on a group whose side the report does
    not give ("renal cyst") is ``uncertain`` on each member, a ``diffuse`` one (emphysema) keeps its status on
    every member. ``(organ, None): absent`` means "reported normal" and is dropped for classes with a present or
    uncertain finding. Repeated statements merge as present > uncertain > absent.

    Example:
        >>> labels("Left renal cyst. Normal spleen.")[("kidney_left", "renal_cyst")]
        <Status.PRESENT: 'present'>
    """
    d = dictionary or AbnormalityDictionary.default()
    out: Dict[Tuple[str, Optional[str]], Status] = {}
    for f in parse_report(report, d):
        members = _members(f.organ)
        status = f.status
        if len(members) > 1 and f.finding is not None and status is Status.PRESENT \
                and d[f.finding].extent == "focal":
            status = Status.UNCERTAIN
        for m in members:
            key = (m, f.finding)
            cur = out.get(key)
            if cur is None or _RANK[status] > _RANK[cur]:
                out[key] = status
    abnormal = {o for (o, k), s in out.items() if k is not None and s is not Status.ABSENT}
    for o in abnormal:
        if out.get((o, None)) is Status.ABSENT:
            del out[(o, None)]
    return out


def findings_by_organ(findings: Iterable[OrganFinding]) -> Dict[str, List[OrganFinding]]:
    """Group OrganFindings by organ name (helper for display)."""
    out: Dict[str, List[OrganFinding]] = {}
    for f in findings:
        out.setdefault(f.organ, []).append(f)
    return out
