"""Cohort questions split into search text, organ and filters."""

from __future__ import annotations

import pytest

import ctglip_sdk as cg
from ctglip_sdk.index.nlq import parse_query


@pytest.mark.parametrize("question,text,organ,where", [
    ("fatty liver in women over 60", "fatty liver", ["liver"], {"sex": "F", "age": (60, None)}),
    ("kidney stone", "kidney stone", ["kidney_left", "kidney_right"], {}),
    ("Enlarged spleen in male patients aged 40-65", "enlarged spleen", ["spleen"], {"sex": "M", "age": (40, 65)}),
    ("right renal cyst under 50", "right renal cyst", ["kidney_right"], {"age": (None, 50)}),
    # no organ word: the organ of the finding the text asks for
    ("emphysema in men 70+ non-contrast", "emphysema", list(cg.organs.lookup("lung")),
     {"sex": "M", "age": (70, None), "contrast": False}),
    ("hepatomegaly", "hepatomegaly", ["liver"], {}),
    ("AAA in women", "aaa", ["aorta"], {"sex": "F"}),
    # sizes are not ages: a number followed by a unit stays in the text
    ("kidney stone under 5 mm", "kidney stone under 5 mm", ["kidney_left", "kidney_right"], {}),
    ("renal cyst 2-3 cm in men over 50", "renal cyst 2-3 cm", ["kidney_left", "kidney_right"],
     {"sex": "M", "age": (50, None)}),
    ("lung nodule 4 to 8 mm", "lung nodule 4 to 8 mm", list(cg.organs.lookup("lung")), {}),
    ("liver lesion 2.5-3cm aged 40-60", "liver lesion 2.5-3cm", ["liver"], {"age": (40, 60)}),
    ("hypodense liver lesion", "hypodense liver lesion", ["liver"], {}),
    ("left lower lobe nodule among females", "left lower lobe nodule", ["lung_lower_lobe_left"], {"sex": "F"}),
])
def test_parse_query(question, text, organ, where):
    q = parse_query(question)
    assert (q.text, q.organ, q.where) == (text, organ, where)
    assert q.original == question


def test_unknown_words_leave_the_organ_open():
    assert parse_query("appendicitis").organ is None  # no organ word and no dictionary finding


def test_words_inside_other_words_are_not_filters():
    q = parse_query("mandible and humerus")  # "man" inside "mandible" is not a sex filter
    assert q.where == {} and q.organ == ["humerus_left", "humerus_right"]


def test_empty_or_filter_only_query_is_refused():
    with pytest.raises(cg.QueryError):
        parse_query("   ")
    with pytest.raises(cg.QueryError, match="no finding or organ words"):
        parse_query("women over 60")


def test_montage_window_follows_the_organ():
    from ctglip_sdk.index.montage import organ_window

    assert organ_window("lung_upper_lobe_left")[0] < -1000        # lung window shows parenchyma
    assert organ_window("vertebrae_L1")[1] > 900                   # bone window
    assert organ_window("liver") == (-160.0, 240.0)                # soft tissue
