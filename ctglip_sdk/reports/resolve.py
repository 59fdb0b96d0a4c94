"""Which organ a finding phrase refers to in a sentence: nearest compatible mention, lists, headings, context."""

from __future__ import annotations

import re
from bisect import bisect_right
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ctglip_sdk.reports.negation import clause_break
from ctglip_sdk.reports.sides import _COORD
from ctglip_sdk.reports.vocab import Info, Vocab, phrase_key

__all__ = ["OrganResolver"]

# ",|\b(?:and|with|but|which|whereas|while|however|or)\b", each alternative spelt to start with its first letter:
# a pattern whose alternatives all start with a literal lets the regex engine skip to those letters fast.
_GAP_BOUNDARY = re.compile(
    r",|a(?<=\ba)nd\b|w(?<=\bw)(?:ith|hich|hereas|hile)\b|b(?<=\bb)ut\b|h(?<=\bh)owever\b|o(?<=\bo)r\b")
_WORD = re.compile(r"[a-z0-9][a-z0-9]*")  # "[a-z0-9]+", spelt to start with a character set (see above)
_AND = re.compile(r"a(?<=\ba)nd\b")  # "\band\b"
_NEAR_MENTIONS = 32  # organ mentions on each side of a finding that _resolve weighs, in very long sentences
# A location set off by a comma right after a finding ("Pulmonary nodule, right upper lobe."), and what may follow
# that organ for it to be the finding's place, not the subject of a new clause ("..., left kidney is atrophic").
_APPOSITION = re.compile(r"\s*,\s*(?:(?:in|at|within|of)\s+)?(?:the\s+)?")
_APPOSITION_END = re.compile(r"\s*(?:[,.;:)]|$)")
# Text between a finding and an organ that makes the organ the finding's location ("nodule in the lingula").
_LOCATION = re.compile(r"\s*(?:in|at|within|of|involving|from|near|along|arising from)\s+(?:the\s+)?(?:[a-z]+\s+)?")


class OrganResolver:
    """The organ-resolution half of :class:`~ctglip_sdk.reports.sentence.SentenceParser` (its base class).

    Kept apart because it is the parser's largest single concern; it reads ``v`` (the vocabulary), ``entries``
    and the sentence bounds ``_start``/``_end`` that the parser sets.
    """

    v: Vocab
    entries: Dict[str, Any]  # finding key -> its dictionary entry (Vocab.entries)
    _start: int
    _end: int

    def _fit(self, info: Info, organ: str) -> Tuple[str, ...]:
        """The keys of phrase ``info`` that ``organ`` can carry (memoised on the phrase)."""
        hit = info.fits.get(organ)
        if hit is None:
            compat = self.v.compatible
            hit = info.fits[organ] = tuple(k for k, o in info.key_organs if compat(organ, o))
        return hit

    @staticmethod
    def _distance(low: str, fa: int, fb: int, ma: int, mb: int) -> int:
        if mb <= fa:
            gap, after = low[mb:fa], 0
        elif ma >= fb:
            gap, after = low[fb:ma], 5
        else:
            return 0
        if len(gap) < 2:  # the boundary words have two letters at least: only a lone comma counts
            return len(gap) + after + (25 if gap == "," else 0)
        return len(gap) + 25 * len(_GAP_BOUNDARY.findall(gap)) + after

    def _run(self, low: str, mentions: List[Tuple[int, int, str]], j: int) -> List[int]:
        """Indices of the coordinated organ list around mention j ("hepatic and renal", "liver, spleen and ...")."""
        if len(mentions) == 1:
            return [0]
        lo = hi = j
        while lo > 0 and self._coordinated(low, mentions[lo - 1][1], mentions[lo][0]):
            lo -= 1
        while hi + 1 < len(mentions) and self._coordinated(low, mentions[hi][1], mentions[hi + 1][0]):
            hi += 1
        return list(range(lo, hi + 1))

    def _coordinated(self, low: str, a: int, b: int) -> bool:
        """Whether the gap ``low[a:b]`` between two organs lists them ("liver and both kidneys"), and not a clause
        break before the second ("no abnormality in the liver, and the kidneys contain cysts")."""
        if _COORD.fullmatch(low, a, b) is None:
            return False
        return b - a < 6 or not clause_break(low, self._start, a, self._end)  # a break needs ", the" at least

    def _resolve(self, low: str, tok: Tuple[int, int, Info], mentions: List[Tuple[int, int, str]],
                 heading: Tuple[str, ...], implied: Sequence[Tuple[int, int, str]] = (),
                 context: Sequence[str] = (), claimed: Optional[Dict[int, int]] = None
                 ) -> Tuple[List[Tuple[str, Tuple[str, ...]]], List[int], Optional[Tuple[int, int]]]:
        """(organ, keys) pairs a finding phrase refers to, the mentions it used, and the finding it borrowed from.

        Order: the nearest compatible organ in the sentence (with its coordinated list), a finding named with
        its organ in the sentence, the heading, the previous sentence, and the organ a synonym names itself.
        """
        a, b, info = tok
        fitted = info.fits
        fits = self._fit
        distance = self._distance
        best, best_d, adj, adj_d = -1, 1 << 30, -1, 1 << 30
        lo_j, hi_j = 0, len(mentions)
        if hi_j > 2 * _NEAR_MENTIONS:
            # A sentence with hundreds of organ mentions (text pasted into a query, a report without periods) made
            # this loop over every finding and mention, with a scan of the text between them, cubic in its length
            # (minutes for 30 kB). A finding's organ is among its nearest mentions; real sentences have a few.
            at = bisect_right([m[0] for m in mentions], a)
            lo_j, hi_j = max(0, at - _NEAR_MENTIONS), min(hi_j, at + _NEAR_MENTIONS)
        for j in range(lo_j, hi_j):
            ma, mb, organ = mentions[j]
            if claimed:
                owner = claimed.get(j)
                if owner is not None and owner != a and mb <= a and _AND.search(low, mb, a):
                    continue  # the location of an earlier finding ("nodule in the lingula and ... atelectasis")
            if mb <= a:  # _distance, inline: the loop runs for every finding and organ of a sentence
                gap = low[mb:a]
                d = len(gap) + (25 * len(_GAP_BOUNDARY.findall(gap)) if len(gap) > 1 else 25 if gap == "," else 0)
            elif ma >= b:
                gap = low[b:ma]
                d = len(gap) + 5 + (25 * len(_GAP_BOUNDARY.findall(gap)) if len(gap) > 1 else 25 if gap == "," else 0)
            else:
                d = 0
            keys = fitted.get(organ)
            if keys is None:
                keys = fits(info, organ)
            if keys:
                if d < best_d:
                    best, best_d = j, d
            elif mb <= a and d < adj_d:
                gap = low[mb:a]
                if "," not in gap and len(_WORD.findall(gap)) <= 1 and not _COORD.fullmatch(gap):
                    adj, adj_d = j, d
            elif ma >= b and d < adj_d and not info.syn and _LOCATION.fullmatch(low, b, ma):
                adj, adj_d = j, d  # "stone at the left UVJ": located in an organ the finding does not fit
        if adj >= 0 and adj_d < best_d:
            # "pericardial effusion", "ureteric stone": the phrase belongs to the organ right before it, unless
            # that organ is listed with a fitting one ("renal or ureteral calculi").
            run = [j for j in self._run(low, mentions, adj) if fits(info, mentions[j][2])]
            if run:
                best = run[-1]
            elif not info.syn:
                return [], [], None
            # else a synonym that names its own organ ("esophageal hiatal hernia"): the adjective does not take it
        if best >= 0 and info.implied and mentions[best][0] >= b and _GAP_BOUNDARY.search(low, b, mentions[best][0]) \
                and not (_APPOSITION.fullmatch(low, b, mentions[best][0])
                         and _APPOSITION_END.match(low, mentions[best][1]) is not None):
            # a synonym names its organ; an organ in a following clause does not refine it, but one set off by a
            # comma alone ends the sentence or a list: where it is ("Pulmonary nodule, right upper lobe, 6 mm")
            best = -1
        if best >= 0:
            out, used = [], []
            for j in self._run(low, mentions, best):
                keys = fits(info, mentions[j][2])
                if keys:
                    out.append((mentions[j][2], keys))
                    used.append(j)
            return out, used, None
        if implied and not info.syn:
            # "Hepatic hemangioma vs. cyst": a finding named with its organ gives the organ to a bare descriptor.
            near = min(((distance(low, a, b, ma, mb), ma, mb, organ) for ma, mb, organ in implied
                        if ma != a and fits(info, organ)), default=None)
            if near is not None:
                return [(near[3], fits(info, near[3]))], [], (near[1], near[2])
        out = []
        for organ in heading:
            keys = fitted.get(organ)
            if keys is None:
                keys = fits(info, organ)
            if keys:
                out.append((organ, keys))
        if out:
            return out, [], None
        if not info.syn:
            for organ in context:  # "There is a lesion in the liver. It is likely a hemangioma."
                keys = fits(info, organ)
                if keys:
                    return [(organ, keys)], [], None
            return [], [], None
        korg = dict(info.key_organs)
        compat = self.v.compatible
        by_organ: Dict[str, Tuple[str, ...]] = {}
        for k in info.syn:
            by_organ[korg[k]] = by_organ.get(korg[k], ()) + (k,)
        out, used = list(by_organ.items()), []
        nxt = next((j for j, m in enumerate(mentions) if m[0] >= b), None)
        if nxt is not None and " " in low[a:b] and _COORD.fullmatch(low, b, mentions[nxt][0]):
            # "enlarged liver and spleen": the synonym's leading words ("enlarged") also serve the listed organs
            lead = self.v.table.get(phrase_key(low[a:b].rsplit(" ", 1)[0]))
            if lead is not None and lead.keys:
                for j in self._run(low, mentions, nxt):
                    keys = fits(lead, mentions[j][2])
                    if keys:
                        out.append((mentions[j][2], keys))
                        used.append(j)
        head = info.head
        last = max((j for j, m in enumerate(mentions) if m[1] <= a), default=-1)
        if head is not None and last >= 0 and _COORD.fullmatch(low, mentions[last][1], a):
            # "hepatic and renal cysts": the head noun of the synonym also serves the listed organs
            for j in self._run(low, mentions, last):
                keys = tuple(k for k in head.desc if compat(mentions[j][2], self.entries[k].organ))
                if keys:
                    out.append((mentions[j][2], keys))
                    used.append(j)
        return out, used, None
