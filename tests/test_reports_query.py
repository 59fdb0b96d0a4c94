"""read_query: the one dictionary finding a search text asks for (case, hedges and typos tolerated)."""

from __future__ import annotations

import pytest

from ctglip_sdk.reports import AbnormalityDictionary, Status
from ctglip_sdk.reports.query import read_query


@pytest.mark.parametrize("text,finding,organ,read_as", [
    ("kidney stone", "renal_stone", "kidney", "kidney stone"),
    ("Left kidney stone", "renal_stone", "kidney_left", "left kidney stone"),
    ("HCC", "liver_mass", "liver", "hcc"),                                  # a short capitalised line is no heading
    ("FATTY   LIVER", "hepatic_steatosis", "liver", "fatty liver"),
    ("suspected gallstones", "gallstones", "gallbladder", "suspected gallstones"),
    ("cholelithasis", "gallstones", "gallbladder", "cholelithiasis"),       # one letter missing
    ("pleural effussion", "pleural_effusion", "lung", "pleural effusion"),  # one letter too many
    ("hepatic steatossis in women", "hepatic_steatosis", "liver", "hepatic steatosis in women"),
])
def test_a_query_names_one_finding(text, finding, organ, read_as):
    q = read_query(text)
    assert q is not None and (q.finding, q.organ, q.read_as) == (finding, organ, read_as)
    assert q.corrected == (read_as.split() != text.lower().split())


def test_hedged_queries_keep_their_status():
    assert read_query("possible liver mass").status is Status.UNCERTAIN
    assert read_query("liver mass").status is Status.PRESENT


@pytest.mark.parametrize("text", [
    "no gallstones",                  # negated: not the finding's positives
    "fatty liver and gallstones",     # two findings
    "appendicitis",                   # not in the dictionary, and not one typo from a dictionary word
    "pancreatitis",                   # a different word that shares a suffix with dictionary words
    "liver",                          # an organ alone
    "   ",
])
def test_texts_that_ask_for_no_single_finding(text):
    assert read_query(text) is None


def test_typos_are_only_corrected_when_asked_and_only_to_close_words():
    assert read_query("cholelithasis", fuzzy=False) is None
    assert read_query("transplant kidney") is None  # "transplant" is not corrected to a longer word


def test_a_custom_dictionary_is_read(tmp_path):
    d = AbnormalityDictionary.default()
    q = read_query("renal calculus", dictionary=d)
    assert q is not None and q.finding == "renal_stone"
