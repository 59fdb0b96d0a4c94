"""parse_report: organ-level findings with present/absent/uncertain status from free-text CT reports."""

from __future__ import annotations

import re
from bisect import bisect_left
from functools import lru_cache
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ctglip_sdk import organs as _organs
from ctglip_sdk.errors import InputError
from ctglip_sdk.reports.dictionary import AbnormalityDictionary
from ctglip_sdk.reports.negation import cue_scopes, status_of
from ctglip_sdk.reports.segment import Sentence, segment
from ctglip_sdk.reports.types import _RANK, OrganFinding, SentenceResult, Status
from ctglip_sdk.reports.vocab import OTHER, TERMINATE, Info, Vocab, vocab_for

__all__ = ["Status", "OrganFinding", "SentenceResult", "parse_report", "analyse"]


_GAP_BOUNDARY = re.compile(r",|\b(?:and|with|but|which|whereas|while|however|or)\b")
_COORD = re.compile(r"\s*(?:,\s*(?:and\s+|or\s+)?|(?:and|or|nor|&|/|as well as)\s*)(?:the\s+|both\s+)?$")
_WORD = re.compile(r"[a-z0-9]+")
_AND = re.compile(r"\band\b")
# Text between a finding and an organ that makes the organ the finding's location ("nodule in the lingula").
_LOCATION = re.compile(r"\s*(?:in|at|within|of|involving|from|near|along|arising from)\s+(?:the\s+)?(?:[a-z]+\s+)?")
_CLASSES = frozenset(_organs.ORGANS)
_expand = lru_cache(maxsize=4096)(_organs.expand)
_side_of = lru_cache(maxsize=4096)(_organs.side_of)


def _sided(organ: str, side: str) -> str:
    """kidney + left -> kidney_left; lung + left -> lung_left; a class stays as it is."""
    cand = f"{organ}_{side}"
    return cand if cand in _organs.GROUPS or cand in _CLASSES else organ


class _Parser:
    """Turns sentences into OrganFindings with one vocabulary (built once per dictionary)."""

    def __init__(self, vocab: Vocab) -> None:
        self.v = vocab
        self.entries = vocab.entries
        self.cache: Dict[Tuple[str, Tuple[str, ...], Tuple[str, ...]], Tuple[Any, ...]] = {}
        self._fits: Dict[Tuple[int, str], Tuple[str, ...]] = {}  # (phrase Info id, organ) -> keys that fit

    # ------------------------------------------------------------------ organ resolution
    @staticmethod
    def _distance(low: str, fa: int, fb: int, ma: int, mb: int) -> int:
        if mb <= fa:
            gap, after = low[mb:fa], 0
        elif ma >= fb:
            gap, after = low[fb:ma], 5
        else:
            return 0
        return len(gap) + 25 * len(_GAP_BOUNDARY.findall(gap)) + after

    def _run(self, low: str, mentions: List[Tuple[int, int, str]], j: int) -> List[int]:
        """Indices of the coordinated organ list around mention j ("hepatic and renal", "liver, spleen and ...")."""
        lo = hi = j
        while lo > 0 and _COORD.fullmatch(low, mentions[lo - 1][1], mentions[lo][0]):
            lo -= 1
        while hi + 1 < len(mentions) and _COORD.fullmatch(low, mentions[hi][1], mentions[hi + 1][0]):
            hi += 1
        return list(range(lo, hi + 1))

    def _resolve(self, low: str, tok: Tuple[int, int, Info], mentions: List[Tuple[int, int, str]],
                 heading: Tuple[str, ...], implied: Sequence[Tuple[int, int, str]] = (),
                 context: Sequence[str] = (), claimed: Optional[Dict[int, int]] = None
                 ) -> Tuple[List[Tuple[str, Tuple[str, ...]]], List[int], Optional[Tuple[int, int]]]:
        """(organ, keys) pairs a finding phrase refers to, the mentions it used, and the finding it borrowed from.

        Order: the nearest compatible organ in the sentence (with its coordinated list), a finding named with
        its organ in the sentence, the heading, the previous sentence, and the organ a synonym names itself.
        """
        a, b, info = tok
        korg = dict(info.key_organs)
        compat = self.v.compatible
        claimed = claimed or {}
        memo = self._fits

        def fits(organ: str) -> Tuple[str, ...]:
            hit = memo.get((id(info), organ))
            if hit is None:
                hit = memo[(id(info), organ)] = tuple(k for k, o in info.key_organs if compat(organ, o))
            return hit

        best, best_d, adj, adj_d = -1, 1 << 30, -1, 1 << 30
        for j, (ma, mb, organ) in enumerate(mentions):
            owner = claimed.get(j)
            if owner is not None and owner != a and mb <= a and _AND.search(low, mb, a):
                continue  # the location of an earlier finding ("nodule in the lingula and ... atelectasis")
            d = self._distance(low, a, b, ma, mb)
            if fits(organ):
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
            run = [j for j in self._run(low, mentions, adj) if fits(mentions[j][2])]
            if not run:
                return [], [], None
            best = run[-1]
        if best >= 0 and info.implied and mentions[best][0] >= b and _GAP_BOUNDARY.search(low, b, mentions[best][0]):
            best = -1  # a synonym names its organ; an organ in a following clause does not refine it
        if best >= 0:
            out, used = [], []
            for j in self._run(low, mentions, best):
                keys = fits(mentions[j][2])
                if keys:
                    out.append((mentions[j][2], keys))
                    used.append(j)
            return out, used, None
        if implied and not info.syn:
            # "Hepatic hemangioma vs. cyst": a finding named with its organ gives the organ to a bare descriptor.
            near = min(((self._distance(low, a, b, ma, mb), ma, mb, organ) for ma, mb, organ in implied
                        if ma != a and fits(organ)), default=None)
            if near is not None:
                return [(near[3], fits(near[3]))], [], (near[1], near[2])
        out = [(organ, fits(organ)) for organ in heading if fits(organ)]
        if out:
            return out, [], None
        if not info.syn:
            for organ in context:  # "There is a lesion in the liver. It is likely a hemangioma."
                if fits(organ):
                    return [(organ, fits(organ))], [], None
            return [], [], None
        by_organ: Dict[str, Tuple[str, ...]] = {}
        for k in info.syn:
            by_organ[korg[k]] = by_organ.get(korg[k], ()) + (k,)
        out, used = list(by_organ.items()), []
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

    @staticmethod
    def _side(low: str, toks: Sequence[Tuple[int, int, Info]], lo_i: int, hi_i: int) -> Optional[str]:
        """A side word right before the phrase/organ ("left renal cyst") or shortly after ("... on the right")."""
        for i in range(hi_i, lo_i - 1, -1):  # "nodule at the right lung base", "bibasilar atelectasis"
            if toks[i][2].side:
                return toks[i][2].side
        anchor = toks[lo_i][0]
        for i in range(lo_i - 1, -1, -1):
            a, b, info = toks[i]
            if "," in low[b:anchor] or anchor - b > 30:
                break
            if info.side:
                return info.side
            if info.keys or info.organ or info.trigger == TERMINATE:
                break
        anchor = toks[hi_i][1]
        for i in range(hi_i + 1, len(toks)):
            a, b, info = toks[i]
            if info.keys and not info.side and _COORD.fullmatch(low, anchor, a):
                anchor = b  # "no hydronephrosis or nephrolithiasis bilaterally": the side ends the list
                continue
            if "," in low[anchor:a] or a - anchor > 25:
                break
            if info.side:
                return info.side
            if info.keys or info.organ or info.trigger == TERMINATE:
                break
        return None

    def _place(self, organ: str, key: str, side: Optional[str]) -> List[str]:
        """Final organ names for a finding on ``organ`` given a side (``both`` gives two)."""
        entry = self.entries[key]
        own = _side_of(organ)
        sides = [own] if own else (["left", "right"] if side == "both" else [side] if side else [])
        if not sides:
            return [organ]
        out = []
        for s in sides:
            if organ in _CLASSES:
                out.append(organ)  # a lobe or a sided class is already as precise as it gets
            elif s in entry.sites:
                out.append(entry.sites[s])
            else:
                out.append(_sided(organ, s))
        return list(dict.fromkeys(out))

    # ------------------------------------------------------------------ sentences
    def sentence(self, text: str, low: str, sent: Sentence, toks: Sequence[Tuple[int, int, Info]],
                 context: Sequence[str] = ()) -> SentenceResult:
        """Findings of one sentence; ``context`` holds the organs of the previous sentence under the same heading."""
        s_text = " ".join(text[sent.start:sent.end].split())
        if not toks:  # nothing matched ("Recommend follow-up."): no statement, though it sits under its heading
            return SentenceResult(s_text, (sent.start, sent.end), sent.heading, bool(sent.heading_organs), (),
                                  sent.heading_organs)
        question = "?" in s_text
        scopes = cue_scopes(toks, low, sent.start)
        mentions: List[Tuple[int, int, str]] = []
        mention_tok: List[int] = []
        implied: List[Tuple[int, int, str]] = []
        finding_toks: List[int] = []
        generic: List[Tuple[Status, Tuple[int, int]]] = []
        normal_span: Optional[Tuple[int, int]] = None
        for i, (a, b, info) in enumerate(toks):
            if info.mention:
                mentions.append((a, b, info.mention))
                mention_tok.append(i)
            elif info.implied:
                implied.append((a, b, info.implied))
            if info.keys:
                finding_toks.append(i)
            elif info.generic:
                generic.append((status_of(scopes[i], question)[0], (a, b)))
            if info.normal and normal_span is None and "neg" not in scopes[i]:
                normal_span = (a, b)
        claimed: Dict[int, int] = {}
        if mentions and finding_toks:
            for j, ti in enumerate(mention_tok):
                if ti > 0 and toks[ti - 1][2].keys and _LOCATION.fullmatch(low, toks[ti - 1][1], toks[ti][0]):
                    claimed[j] = toks[ti - 1][0]
        specific: Dict[Tuple[str, str], List[Any]] = {}
        umbrellas: List[Tuple[str, Tuple[str, ...], Status, Tuple[int, int]]] = []
        placed_at: Dict[Tuple[int, int], List[str]] = {}
        for i in finding_toks:
            a, b, info = toks[i]
            resolved, used, via = self._resolve(low, toks[i], mentions, sent.heading_organs, implied, context,
                                                claimed)
            if not resolved and info.head is not None:
                resolved, used, via = self._resolve(low, (a, b, info.head), mentions, sent.heading_organs, implied,
                                                    context, claimed)
                if resolved:
                    info = info.head
            if not resolved:
                if info.generic:
                    generic.append((status_of(scopes[i], question)[0], (a, b)))
                continue
            status, weak = status_of(scopes[i], question)
            lo_i = hi_i = i
            for j in used:
                lo_i, hi_i = min(lo_i, mention_tok[j]), max(hi_i, mention_tok[j])
            side = self._side(low, toks, lo_i, hi_i)
            for organ, keys in resolved:
                # A descriptor that borrowed its organ from a named finding lands where that finding landed.
                where = placed_at.get(via) if via else None
                if len(keys) == 1:
                    k = keys[0]
                    st = status
                    if st is Status.PRESENT and k in info.hedged and k not in info.syn and k not in info.desc:
                        st = Status.UNCERTAIN
                    for o in where or self._place(organ, k, side):
                        self._merge(specific, (o, k), st, weak, (a, b))
                        placed_at.setdefault((a, b), []).append(o)
                    continue
                placed: Dict[str, List[str]] = {}
                for k in keys:
                    for o in where or self._place(organ, k, side):
                        placed.setdefault(o, []).append(k)
                        placed_at.setdefault((a, b), []).append(o)
                for o, ks in placed.items():
                    umbrellas.append((o, tuple(ks), status, (a, b)))
        if len(specific) > 1:
            self._fold_groups(specific)
        any_finding = bool(specific) or bool(umbrellas)
        free: List[Tuple[str, Status, Tuple[int, int]]] = []
        for organ, keys, status, span in umbrellas:
            hits = [ok for ok in specific if ok[1] in keys]
            if hits:
                for ok in hits:  # "lesion ..., likely a cyst": the lesion is stated, so the cyst is present
                    if status is Status.PRESENT and specific[ok][1]:
                        specific[ok][0], specific[ok][1] = Status.PRESENT, False
            elif status is Status.ABSENT:
                for k in keys:
                    self._merge(specific, (organ, k), Status.ABSENT, False, span)
            else:
                free.append((organ, status, span))
        findings = [OrganFinding(organ, key, st, s_text, span) for (organ, key), (st, _w, span) in specific.items()]
        # Statements about whole organs: normal ones, and free text when no dictionary finding was found.
        if mentions:
            targets = [(mentions[j][2], mentions[j][:2], mention_tok[j]) for j in range(len(mentions))
                       if mentions[j][2] != OTHER]
        else:
            targets = [(o, None, -1) for o in sent.heading_organs]
        from_heading = not mentions and not implied and bool(targets)  # "Normal." needs its heading to be read
        if targets and (normal_span is not None or not any_finding or free):
            abnormal: set = set()
            for f in findings:
                if f.status is not Status.ABSENT:
                    abnormal.update(_expand(f.organ))
            for organ, status, span in free:
                abnormal.update(_expand(organ))
                findings.append(OrganFinding(organ, None, status, s_text, span))
            seen_organs: set = set()
            for organ, span, ti in targets:
                if organ in seen_organs:
                    continue
                seen_organs.add(organ)
                if normal_span is not None:
                    every = _expand(organ)
                    members = [m for m in every if m not in abnormal]
                    ev = span or normal_span
                    if len(members) == len(every):
                        findings.append(OrganFinding(organ, None, Status.ABSENT, s_text, ev))
                    else:
                        findings.extend(OrganFinding(m, None, Status.ABSENT, s_text, ev) for m in members)
                elif not any_finding:
                    if generic:
                        status = max((g[0] for g in generic), key=_RANK.__getitem__)
                        ev = span or generic[0][1]
                    elif ti >= 0:
                        status, ev = status_of(scopes[ti], question)[0], span
                    else:
                        status, ev = (Status.UNCERTAIN if question else Status.PRESENT), (sent.start, sent.end)
                    findings.append(OrganFinding(organ, None, status, s_text, ev))
        else:
            findings.extend(OrganFinding(organ, None, status, s_text, span) for organ, status, span in free)
        if len(findings) > 1:
            findings.sort(key=lambda f: f.span[0])
        # what the sentence is about: its findings' organs, else the organs it names or sits under
        about = tuple(f.organ for f in findings) or tuple(t[0] for t in targets)
        return SentenceResult(s_text, (sent.start, sent.end), sent.heading, from_heading, tuple(findings),
                              tuple(dict.fromkeys(about)))

    def _fold_groups(self, specific: Dict[Tuple[str, str], List[Any]]) -> None:
        """Fold "kidney: renal_cyst" into "kidney_right: renal_cyst" said in the same sentence ("cyst in the right
        kidney, Bosniak II")."""
        for organ, key in list(specific):
            members = _expand(organ)
            if len(members) < 2:
                continue
            finer = [(o, k) for (o, k) in specific if k == key and o != organ and set(_expand(o)) <= set(members)]
            if finer:
                status, weak, span = specific.pop((organ, key))
                for ok in finer:
                    self._merge(specific, ok, status, weak, span)

    @staticmethod
    def _merge(table: Dict[Tuple[str, str], List[Any]], key: Tuple[str, str], status: Status, weak: bool,
               span: Tuple[int, int]) -> None:
        cur = table.get(key)
        if cur is None:
            table[key] = [status, weak, span]
        elif _RANK[status] > _RANK[cur[0]]:
            table[key] = [status, weak, span]
        elif status is cur[0] and cur[1] and not weak:
            cur[1] = False


_CACHE_SIZE = 50_000


def clear_caches(dictionary: Optional[AbnormalityDictionary] = None) -> None:
    """Forget cached sentence results (for benchmarks of unseen text; results never depend on the cache)."""
    from ctglip_sdk.reports import segment as _segment

    vocab = vocab_for(dictionary or AbnormalityDictionary.default())
    if vocab.parser is not None:
        vocab.parser.cache.clear()
    _segment._SPLIT_CACHE.clear()


def _shifted(result: SentenceResult, start: int, raw: str, text: str, sent: Sentence) -> SentenceResult:
    """A cached sentence result moved to another place (and spelling case) in another report."""
    same = text.startswith(raw, sent.start)
    if same and start == sent.start and result.heading == sent.heading:
        return result
    s_text = result.text if same else " ".join(text[sent.start:sent.end].split())
    delta = sent.start - start
    found = tuple(OrganFinding(f.organ, f.finding, f.status, s_text, (f.span[0] + delta, f.span[1] + delta))
                  for f in result.findings)
    return SentenceResult(s_text, (sent.start, sent.end), sent.heading, result.organ_from_heading, found,
                         result.organs)


def analyse(text: str, dictionary: Optional[AbnormalityDictionary] = None) -> List[SentenceResult]:
    """Sentence-level results of :func:`parse_report` (sentences with no organ statement included)."""
    if not isinstance(text, str):
        raise InputError(f"report text must be a string, got {type(text).__name__}")
    vocab = vocab_for(dictionary or AbnormalityDictionary.default())
    parser = vocab.parser
    if parser is None:
        parser = vocab.parser = _Parser(vocab)
    low = text.lower()
    if len(low) != len(text):  # a few Unicode letters change length when lowered; keep offsets aligned
        low = "".join(c if len(c.lower()) != 1 else c.lower() for c in text)
    out = []
    heading: Optional[str] = None
    context: Tuple[str, ...] = ()
    cache = parser.cache
    all_toks: Optional[List[Tuple[int, int, Info]]] = None
    starts: List[int] = []
    for sent in segment(text, vocab.heading_organs):
        if sent.heading != heading:
            heading, context = sent.heading, ()
        # Reports repeat their sentences ("No hydronephrosis.") across an archive: a sentence's result depends
        # only on its text, heading organs and the previous sentence's organs, so it is computed once.
        key = (low[sent.start:sent.end], sent.heading_organs, context)
        hit = cache.get(key)
        if hit is None:
            if all_toks is None:  # the first unseen sentence scans the whole report once
                all_toks = vocab.tokens(low)
                starts = [t[0] for t in all_toks]
            i = bisect_left(starts, sent.start)
            j = bisect_left(starts, sent.end, i)
            toks = [t for t in all_toks[i:j] if t[1] <= sent.end]
            result = parser.sentence(text, low, sent, toks, context)
            # the next sentence may continue about these organs; sides are its own to say ("... right calculus")
            following = tuple(dict.fromkeys(vocab.entries[f.finding].organ if f.finding else f.organ
                                            for f in result.findings)) if result.findings else context
            if len(cache) >= _CACHE_SIZE:
                cache.clear()
            cache[key] = (result, sent.start, text[sent.start:sent.end], following)
        else:
            result = _shifted(hit[0], hit[1], hit[2], text, sent)
            following = hit[3]
        out.append(result)
        context = following
    return out


def parse_report(text: str, dictionary: Optional[AbnormalityDictionary] = None) -> List[OrganFinding]:
    """Organ-level findings of a free-text CT report.

    Args:
        text: the report (any layout: headings, lists, wrapped lines, FINDINGS/IMPRESSION sections).
        dictionary: vocabulary to match; the default dictionary when None.

    Returns:
        OrganFindings in report order. See docs/reports.md for the status rules.

    Example:
        >>> [(f.organ, f.finding, str(f.status)) for f in parse_report("KIDNEYS: Left renal cyst. No hydronephrosis.")]
        [('kidney_left', 'renal_cyst', 'present'), ('kidney', 'hydronephrosis', 'absent')]
    """
    return [f for s in analyse(text, dictionary) for f in s.findings]
