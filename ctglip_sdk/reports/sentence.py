"""Findings of one sentence: sides, negation/uncertainty status and whole-organ statements (organs: resolve.py)."""

from __future__ import annotations

import re
from bisect import bisect_right
from typing import Any, Dict, FrozenSet, List, Optional, Sequence, Tuple

from ctglip_sdk.reports.framing import (bilateral_before, frame_scopes, opening_side, sided_answers, sided_site,
                                        word_scopes)
from ctglip_sdk.reports.negation import (_NO_SCOPE, STATUS, STATUS_Q, clause_starts, cue_scopes,
                                         said_normal)
from ctglip_sdk.reports.resection import gone_organs
from ctglip_sdk.reports.resolve import _LOCATION, _WORD, OrganResolver
from ctglip_sdk.reports.segment import Sentence, normalise_space  # noqa: F401 - normalise_space re-exported
from ctglip_sdk.reports.sides import (_expand, _side_of,  # noqa: F401 - _side_of for the parser
                                     both_sides_group, pair_sides, place, side_after_comma, side_near)
from ctglip_sdk.reports.statements import bare, denies_other, examined, fold_groups, merge_status, span_start
from ctglip_sdk.reports.types import (_RANK, ABSENT, PRESENT, UNCERTAIN, OrganFinding, Status, _f_finding,
                                      _f_organ, _f_sentence, _f_span, _f_status, _new, new_finding)
from ctglip_sdk.reports.vocab import OTHER, VESSEL_WORDS, Info, Vocab

__all__ = ["SentenceParser", "normalise_space"]


_ADJACENT = frozenset((" ", "-"))  # what may lie between an organ adjective and its noun ("splenic cyst")
# Descriptors of a change in size: after a named lesion they describe it ("liver metastases have increased in
# size"), not the organ (hepatomegaly).
_SIZE_CHANGE = frozenset(("increased in size",))
_NEGATING = frozenset(("neg_pre", "neg_post", "neg_both"))
# What lies between an operation and the finding it was done for ("nephrectomy for RCC", "... due to a renal mass").
_FOR_REASON = re.compile(r"\s+(?:for|due\s+to|because\s+of|secondary\s+to)\s+(?:(?:a|an|the|presumed|known|"
                         r"suspected|large|small|left|right|symptomatic)\s+)*")
# A sentence that ends in a bare denial ("GALLSTONES" + "No." joined by the segmenter): framing's checklist answer.
_ENDS_DENIED = re.compile(r"\s(?:no|nil|negative)\s*[.;!]*\s*$")


_NOTHING: FrozenSet[str] = frozenset()
# What the parser keeps of a sentence: (text, findings, organ_from_heading, organs) of its SentenceResult, and the
# organs it says were removed (for the whole report: resection.drop_resected).
_Record = Tuple[str, Tuple[OrganFinding, ...], bool, Tuple[str, ...], Tuple[str, ...]]


class SentenceParser(OrganResolver):
    """Turns sentences into OrganFindings with one vocabulary (built once per dictionary).

    ``cache`` holds the results of sentences already seen (ctglip_sdk.reports.parser fills it).
    """

    def __init__(self, vocab: Vocab) -> None:
        self.v = vocab
        self.entries = vocab.entries
        self.cache: Dict[Tuple[str, Tuple[str, ...], Tuple[str, ...]], Tuple[Any, ...]] = {}
        self._places: Dict[Tuple[str, str, Optional[str]], Tuple[str, ...]] = {}  # memo of _place
        self._start = self._end = 0  # the sentence being parsed (clause tests look no further)

    def _place(self, organ: str, key: str, side: Optional[str]) -> Tuple[str, ...]:
        """Final organ names for a finding on ``organ`` given a side (``both`` gives two)."""
        k = (organ, key, side)
        hit = self._places.get(k)
        if hit is None:
            hit = self._places[k] = tuple(place(self.entries[key].sites, organ, side))
        return hit

    # ------------------------------------------------------------------ sentences
    def sentence(self, text: str, low: str, sent: Sentence, toks: List[Tuple[int, int, Info]],
                 context: Sequence[str] = (), denied: bool = False) -> _Record:
        """Findings of one sentence; ``context`` holds the organs of the previous sentence under the same heading.

        Returns ``(text, findings, organ_from_heading, organs)`` of its SentenceResult (built only by ``analyse``)
        and the organs the sentence says were removed. ``toks`` is the caller's own list: two sides said at once
        are rewritten in it (sides.pair_sides).
        """
        start, end, s_heading, heading_organs, _section = sent
        self._start, self._end = start, end
        raw = text[start:end]  # normalise_space(raw), inline
        if raw.isprintable() and "  " not in raw and raw[:1] != " " and raw[-1:] != " ":
            s_text = raw
        else:
            s_text = " ".join(raw.split())
        if not toks:  # nothing matched ("Recommend follow-up."): no statement, though it sits under its heading
            return s_text, (), bool(heading_organs), heading_organs, ()
        question = "?" in s_text
        for t in toks:
            if t[2].trigger is not None:
                scopes = cue_scopes(toks, low, start, end)
                break
        else:  # no cue in the sentence (about half of them): nothing is in scope
            scopes = [_NO_SCOPE] * len(toks)
        answer = None  # a "?" before a word, a checklist answer, a title that denies (framing.py)
        if question or ":" in raw or denied:
            question, scopes, answer = frame_scopes(toks, low, start, end, denied, ":" in raw, question, scopes)
        status_of = STATUS_Q if question else STATUS  # scope -> (status, weak)
        mentions: List[Tuple[int, int, str]] = []
        mention_tok: List[int] = []
        implied: List[Tuple[int, int, str]] = []
        finding_toks: List[int] = []
        generic: List[Tuple[Status, Tuple[int, int]]] = []
        normal_span: Optional[Tuple[int, int]] = None
        normal_at: List[int] = []  # where the normal terms that are not negated start
        sided = False  # without a side word in the sentence every finding is unsided
        weak: Optional[List[Tuple[int, int, int, str]]] = None  # organs named only if nothing else names one
        gone_cue = False  # an operation or a word that says an organ is not there
        for i, (a, b, info) in enumerate(toks):
            if info.flags:  # a side, a numbered segment, an operation or a missing organ (rare: one test for all)
                if info.side:
                    sided = True
                    pair_sides(low, toks, i)  # "right and left renal cysts": both sides
                if info.weak:
                    weak = (weak or []) + [(i, a, b, info.organ)]  # type: ignore[list-item]
                if info.resects or info.missing:
                    gone_cue = True
            if info.mention:
                mentions.append((a, b, info.mention))
                mention_tok.append(i)
            elif info.implied:
                implied.append((a, b, info.implied))
            if info.keys:
                finding_toks.append(i)
            elif info.generic:
                generic.append((status_of[scopes[i]][0], (a, b)))
            if info.normal and "neg" not in scopes[i]:
                if normal_span is None:
                    normal_span = (a, b)
                normal_at.append(a)
        if finding_toks and (low.find("none", start, end) >= 0 or low.find("prior ", start, end) >= 0 or
                             low.find("previous ", start, end) >= 0 or  # "Hydronephrosis none.", "Prior pneumonia."
                             _ENDS_DENIED.search(low, end - 12 if end - 12 > start else start, end) is not None):
            scopes, answer = word_scopes(toks, low, start, end, ":" in raw, scopes, answer)
        if weak and not mentions and (not heading_organs or any(w[3] in heading_organs for w in weak)):
            for i, a, b, organ in weak:  # "lesion in segment 7": the liver, as nothing else names an organ
                mentions.append((a, b, organ))
                mention_tok.append(i)
        gone: FrozenSet[str] = _NOTHING  # classes the sentence says are not there: no statement about them
        removed: Tuple[str, ...] = ()  # organs removed by an operation, for the whole report
        if gone_cue:
            gone, removed = gone_organs(low, toks, scopes, mentions, mention_tok, heading_organs, start, end,
                                        lambda j: self._run(low, mentions, j))
            if removed:  # "post right nephrectomy for RCC": the reason for the operation is the past, as after
                scopes = list(scopes)  # "history of" (it read as present on an organ that is gone)
                for i, (a, b, info) in enumerate(toks):
                    if info.resects and i + 1 < len(toks) and toks[i + 1][2].keys and not toks[i + 1][2].resects \
                            and _FOR_REASON.fullmatch(low, b, toks[i + 1][0]) and scopes[i + 1][0] is None:
                        scopes[i + 1] = ("hist", scopes[i + 1][1])
            if all(bare(t[2]) for t in toks):  # "Status post cholecystectomy." says nothing more
                return s_text, (), bool(heading_organs), heading_organs or removed, removed
        opening: Optional[str] = None
        by_side: Optional[List[Tuple[str, Status, bool]]] = None
        if sided:
            opening = opening_side(low, start, toks)  # "On the right there is moderate hydronephrosis."
            answers = sided_answers(low, start, end) if answer is None and ":" in raw else None
            if answers:  # "Hydronephrosis: none on the right, mild on the left.": a statement per side of the answer
                by_side = [(sd, status_of[(None, kind)][0], False) for sd, kind in answers]
        colon = low.find(":", start, end) if by_side else -1
        claimed: Dict[int, int] = {}
        if mentions and finding_toks:
            for j, ti in enumerate(mention_tok):
                if ti > 0 and toks[ti - 1][2].keys and _LOCATION.fullmatch(low, toks[ti - 1][1], toks[ti][0]):
                    claimed[j] = toks[ti - 1][0]
        specific: Dict[Tuple[str, str], List[Any]] = {}
        umbrellas: List[Tuple[str, Tuple[str, ...], Status, Tuple[int, int]]] = []
        # where each finding landed, for descriptors that borrow the organ of another finding named with its organ
        placed_at: Optional[Dict[Tuple[int, int], List[str]]] = {} if implied and len(finding_toks) > 1 else None
        places = self._places
        vessel = False
        for i in finding_toks:
            a, b, info = tok = toks[i]
            if i and not info.syn and toks[i - 1][2].keys and low[a:b] in _SIZE_CHANGE:
                continue  # "liver metastases have increased in size": the lesions grew, not the liver
            resolved = []
            if not mentions and (info.syn or not implied):
                # _resolve's answer when the sentence names no organ: the heading's organs that fit, if any
                for organ in heading_organs:
                    keys = info.fits.get(organ)
                    if keys is None:
                        keys = self._fit(info, organ)
                    if keys:
                        resolved.append((organ, keys))
            if resolved:
                used, via = (), None
            else:
                resolved, used, via = self._resolve(low, tok, mentions, heading_organs, implied, context, claimed)
            if not resolved and info.head is not None:
                resolved, used, via = self._resolve(low, (a, b, info.head), mentions, heading_organs, implied,
                                                    context, claimed)
                if resolved:
                    info = info.head
            if not resolved and sided:
                key = sided_site(low, info, a, start, self.entries)
                if key is not None:  # "Small left effusion.": only a pleural effusion has a side
                    resolved = [(self.entries[key].organ, (key,))]
            if not resolved:
                if info.generic:
                    generic.append((status_of[scopes[i]][0], (a, b)))
                elif _WORD.match(low, a).group() in VESSEL_WORDS:  # type: ignore[union-attr]
                    vessel = True  # "Kidneys: Vascular calcifications.": a vessel's, says nothing of the kidney
                continue
            status, weak = status_of[scopes[i]]
            if sided and used and low.startswith(",", b) and bilateral_before(low, toks, i, used, mention_tok):
                # "Bilateral calculi, the largest in the left kidney": the kidney names the largest one only
                resolved = [(both_sides_group(o) or o, ks) for o, ks in resolved]
                used = ()
            lo_i = hi_i = i
            for j in used:
                ti = mention_tok[j]
                if ti < lo_i:
                    lo_i = ti
                elif ti > hi_i:
                    hi_i = ti
            side = side_near(low, toks, lo_i, hi_i) if sided else None
            if side is None and sided:  # "Pleural effusion, left.": the side after a comma is all that follows
                side = side_after_comma(low, toks, hi_i, end) or opening
            span = (a, b)
            for side, status, weak in (by_side if by_side and a < colon else ((side, status, weak),)):
                for organ, keys in resolved:
                    # A descriptor that borrowed its organ from a named finding lands where that finding landed.
                    where = placed_at.get(via) if via else None  # type: ignore[union-attr]
                    if len(keys) == 1:
                        k = keys[0]
                        st = status
                        if st is PRESENT and k in info.hedged and k not in info.syn and k not in info.desc:
                            st = UNCERTAIN
                        for o in where or places.get((organ, k, side)) or self._place(organ, k, side):
                            ok = (o, k)
                            cur = specific.get(ok)  # merge_status, inline: most findings take this path
                            if cur is None or _RANK[st] > _RANK[cur[0]]:
                                specific[ok] = [st, weak, span]
                            elif st is cur[0] and cur[1] and not weak:
                                cur[1] = False
                            if placed_at is not None:
                                placed_at.setdefault(span, []).append(o)
                        continue
                    placed: Dict[str, List[str]] = {}
                    for k in keys:
                        for o in where or places.get((organ, k, side)) or self._place(organ, k, side):
                            placed.setdefault(o, []).append(k)
                            if placed_at is not None:
                                placed_at.setdefault(span, []).append(o)
                    for o, ks in placed.items():
                        umbrellas.append((o, tuple(ks), status, span))
        if len(specific) > 1:
            fold_groups(specific)
        any_finding = bool(specific) or bool(umbrellas)
        free: List[Tuple[str, Status, Tuple[int, int]]] = []
        for organ, keys, status, span in umbrellas:  # findings said of an organ without saying which one
            hits = [ok for ok in specific if ok[1] in keys]
            if hits:
                for ok in hits:  # "lesion ..., likely a cyst": the lesion is stated, so the cyst is present
                    if status is PRESENT and specific[ok][1]:
                        specific[ok][0], specific[ok][1] = PRESENT, False
            elif status is ABSENT:
                for k in keys:
                    merge_status(specific, (organ, k), ABSENT, False, span)
            else:
                free.append((organ, status, span))
        if generic and mentions and (normal_span is not None or any_finding):
            # "splenic cyst", "thickening of the adrenal": a word the organ's findings do not cover, said of it
            carried = {ok[0] for ok in specific}
            for status, (ga, gb) in generic:
                if status is not ABSENT:
                    for ma, mb, organ in mentions:
                        if organ == OTHER or organ in carried:
                            continue
                        if (mb <= ga and ga - mb <= 1 and low[mb:ga] in _ADJACENT) or (
                                ma >= gb and _LOCATION.fullmatch(low, gb, ma)):
                            free.append((organ, status, (ga, gb)))
                            break
        findings: List[OrganFinding] = []
        for (organ, key), (st, _w, span) in specific.items():
            f = _new(OrganFinding)  # new_finding, inline
            _f_organ(f, organ)
            _f_finding(f, key)
            _f_status(f, st)
            _f_sentence(f, s_text)
            _f_span(f, span)
            findings.append(f)
        # Statements about whole organs: normal ones, and free text when no dictionary finding was found.
        targets: List[Tuple[str, Optional[Tuple[int, int]], int]] = []
        if mentions:
            for j, m in enumerate(mentions):
                if m[2] != OTHER:
                    targets.append((m[2], (m[0], m[1]), mention_tok[j]))
        else:
            for o in heading_organs:
                targets.append((o, None, -1))
        from_heading = not mentions and not implied and bool(targets)  # "Normal." needs its heading to be read
        if targets and (normal_span is not None or not any_finding or free):
            abnormal: set = set()
            for f in findings:
                if f.status is not ABSENT:
                    abnormal.update(_expand(f.organ))
            for organ, status, span in free:
                abnormal.update(_expand(organ))
                findings.append(new_finding(organ, None, status, s_text, span))
            seen_organs: set = set()
            cuts: Optional[List[int]] = None
            # "normal" is said of the organs of its own clause: "The spleen is unremarkable, but the liver is
            # cirrhotic" says nothing normal of the liver.
            said = said_normal(toks, low, start, end, targets, normal_at) if (
                normal_span is not None and mentions) else None
            for organ, span, ti in targets:
                if len(targets) > 1:  # one statement per organ named twice ("liver ... the liver")
                    if organ in seen_organs:
                        continue
                    seen_organs.add(organ)
                if said is not None and organ not in said:
                    if abnormal.isdisjoint(_expand(organ)) and not any(f.organ == organ for f in findings):
                        # nothing the dictionary knows is said of it: free text, as without the normal clause
                        findings.append(new_finding(organ, None, status_of[scopes[ti]][0], s_text, span))
                    continue
                if normal_span is not None:
                    every = _expand(organ)
                    ev = span or normal_span
                    if not abnormal or abnormal.isdisjoint(every):
                        findings.append(new_finding(organ, None, ABSENT, s_text, ev))
                    else:
                        for m in every:
                            if m not in abnormal:
                                findings.append(new_finding(m, None, ABSENT, s_text, ev))
                elif not any_finding and not vessel:
                    mine = generic
                    if generic and span is not None and len(targets) > 1:
                        # "No splenic abnormality and the liver is cirrhotic": the words of the organ's own clause
                        if cuts is None:
                            cuts = clause_starts(toks, low, start, end)
                        if cuts:
                            here = bisect_right(cuts, span[0])
                            mine = [g for g in generic if bisect_right(cuts, g[1][0]) == here]
                    if mine:
                        status = max([g[0] for g in mine], key=_RANK.__getitem__)
                        ev = span or mine[0][1]
                    elif ti >= 0:
                        status, ev = status_of[scopes[ti]][0], span
                        if status is ABSENT and denies_other(low, toks, ti, end):
                            continue  # "No acute pulmonary embolus": says nothing of the lung's other findings
                        if examined(low, start, span[0]):  # type: ignore[index]
                            continue  # "evaluation of the liver is limited": about the study, not the liver
                        if status is PRESENT and any(t[2].trigger in _NEGATING for t in toks[ti + 1:]):
                            continue  # "The kidneys are not obstructed": a denied word the dictionary lacks
                    elif any(t[2].trigger in _NEGATING for t in toks):
                        continue  # "Bowel: No obstruction.": something the dictionary lacks is denied
                    else:
                        status, ev = (UNCERTAIN if question else PRESENT), (start, end)
                    findings.append(new_finding(organ, None, status, s_text, ev))
        else:
            for organ, status, span in free:
                findings.append(new_finding(organ, None, status, s_text, span))
        if gone:  # "The right kidney is not visualized": not a normal kidney
            findings = [f for f in findings if f.finding is not None or not gone.issuperset(_expand(f.organ))]
        # what the sentence is about: its findings' organs, else the organs it names or sits under
        if len(findings) > 1:
            findings.sort(key=span_start)
            about = tuple(dict.fromkeys([f.organ for f in findings]))
        elif findings:
            about = (findings[0].organ,)
        elif len(targets) == 1:
            about = (targets[0][0],)
        else:
            about = tuple(dict.fromkeys([t[0] for t in targets]))
        return s_text, tuple(findings), from_heading, about, removed
