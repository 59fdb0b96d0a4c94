"""The parser's speed-ups give the results of the plain rules: caches, per-sentence scans, the heading test."""

from __future__ import annotations

import random

from ctglip_sdk.reports import AbnormalityDictionary, analyse, parse_report
from ctglip_sdk.reports.parser import cache_stats, clear_caches
from ctglip_sdk.reports.segment import _HEADING, _heading_at, segment
from ctglip_sdk.reports.vocab import vocab_for

REPORTS = [
    "FINDINGS:\nKIDNEYS: Left renal cyst. No hydronephrosis.\nSpleen: Normal.\n\nIMPRESSION:\n1. Left renal cyst.\n",
    "Kidneys: left renal cyst. no hydronephrosis.\nLIVER: Normal. No focal lesion.",  # same sentences, other case
    "Liver: No focal lesion.\nKidneys: No hydronephrosis. Left renal cyst.",  # same sentences, other places
    "Lungs: Bibasilar atelectasis. Small left pleural effusion, likely reactive? No pneumothorax.\n"
    "- Hepatic and renal cysts.\n- Stone at the left UVJ; no hydronephrosis bilaterally.",
    "Adrenal glands:\nRight: 1.2 cm nodule, likely adenoma.\nLeft: normal.\n"
    "Bladder: wall thickening vs. underdistension.",
    "Indication: ? left\nkidney stone\nPancreas: Approx. 2 cm cyst (e.g. IPMN). Cannot exclude malignancy.",
]


def test_cached_results_equal_uncached_results():
    fresh = []
    for text in REPORTS:
        clear_caches()
        fresh.append((analyse(text), parse_report(text)))
    clear_caches()
    for _ in range(2):  # warm: every sentence after the first pass comes from the cache, at other offsets
        for text, (sentences, findings) in zip(REPORTS[::-1], fresh[::-1]):
            assert parse_report(text) == findings
            assert analyse(text) == sentences
    assert cache_stats()["sentences"] > 0


def test_sentence_scans_match_the_whole_text_scan():
    """Tokens of a span scanned from a barrier before it equal the whole-report tokens inside the span."""
    vocab = vocab_for(AbnormalityDictionary.default())
    rng = random.Random(0)
    texts = [t.lower() for t in REPORTS] + ["no left\nkidney stone. vs.cyst: bibasilar\natelectasis; non-enhancing"]
    for low in texts:
        every = vocab.tokens(low)
        spans = [(s.start, s.end) for s in segment(low, vocab.heading_organs)]
        spans += [tuple(sorted(rng.sample(range(len(low) + 1), 2))) for _ in range(200)]
        for a, b in spans:
            got = vocab.sentence_tokens(low, a, b)
            if got is not None:  # None: no barrier close before the span (the caller scans the whole text)
                assert got == [t for t in every if a <= t[0] and t[1] <= b], (low[a:b], a, b)


def test_heading_test_matches_the_heading_regex():
    rng = random.Random(1)
    pieces = ["Liver", "KIDNEYS", " and ", "/", "&", "(", ")", "'", "+", "-", " ", "\t", ":", ": ", ":x", "9", "x" * 40]
    for _ in range(5000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 12))).lstrip(" \t")
        if not text:
            continue
        end = rng.randint(1, len(text))
        m = _HEADING.match(text, 0, end)
        title = m.group(1).strip() if m else ""
        expected = (title, m.end()) if m and len(title.split()) <= 6 else None  # longer: a sentence with a colon
        assert _heading_at(text, 0, end) == expected, text[:end]


def test_clear_caches_with_memos_starts_from_scratch():
    text = REPORTS[0]
    expected = parse_report(text)
    clear_caches(memos=True)
    assert cache_stats()["sentences"] == 0 and cache_stats()["lines"] == 0
    assert parse_report(text) == expected
