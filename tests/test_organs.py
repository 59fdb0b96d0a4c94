"""The organ vocabulary: 104 v1 classes, v2 map, groups, synonyms and lookup."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import ctglip_sdk as cg
from ctglip_sdk import organs

SHARED = Path(__file__).resolve().parents[2] / "shared" / "domain" / "totalsegmentator_classes.json"


def test_v1_and_v2_maps_match_totalsegmentator():
    assert len(organs.ORGANS) == 104 and len(organs.V2) == 117
    assert organs.V1[5] == "liver" and organs.V1[104] == "urinary_bladder"
    if SHARED.exists():  # the packaged copy must equal the project's domain file
        raw = json.loads(SHARED.read_text())
        assert {int(k): v for k, v in raw["total_v1"].items()} == organs.V1


@pytest.mark.parametrize("text,expected", [
    ("liver", ["liver"]),
    ("hepatic", ["liver"]),
    ("The Liver", ["liver"]),
    ("right kidney", ["kidney_right"]),
    ("Left Renal", ["kidney_left"]),
    ("kidney, left", ["kidney_left"]),
    ("renal", ["kidney_left", "kidney_right"]),
    ("kidneys", ["kidney_left", "kidney_right"]),
    ("right adrenal", ["adrenal_gland_right"]),
    ("gall bladder", ["gallbladder"]),
    ("IVC", ["inferior_vena_cava"]),
    ("oesophagus", ["esophagus"]),
    ("right lower lobe", ["lung_lower_lobe_right"]),
    ("left kidney", ["kidney_left"]),
    ("kidney_left", ["kidney_left"]),
    ("L1", ["vertebrae_L1"]),
])
def test_lookup(text, expected):
    assert organs.lookup(text) == expected


def test_groups_expand_to_members():
    assert len(organs.lookup("lung")) == 5
    assert set(organs.lookup("left lung")) == {"lung_upper_lobe_left", "lung_lower_lobe_left"}
    assert len(organs.lookup("heart")) == 5
    assert len(organs.lookup("ribs")) == 24 and len(organs.lookup("vertebrae")) == 24
    for members in organs.GROUPS.values():
        assert members and all(m in organs.ORGANS for m in members)


def test_unknown_organ_suggests():
    with pytest.raises(cg.QueryError, match="did you mean 'liver'"):
        organs.lookup("livr")
    with pytest.raises(cg.QueryError):
        organs.lookup("  ")


def test_display_names_and_sides():
    assert organs.display_name("kidney_left") == "left kidney"
    assert organs.display_name("lung_middle_lobe_right") == "right middle lobe of the lung"
    assert organs.side_of("rib_left_3") == "left" and organs.side_of("liver") is None
    # every class has a display name that looks up back to itself
    for organ in organs.ORGANS:
        assert organs.lookup(organs.display_name(organ)) == [organ], organ


def test_v2_names_map_to_v1():
    assert organs.V2_TO_V1["kidney_cyst_left"] == "kidney_left"
    assert organs.V2_TO_V1["liver"] == "liver"
    assert organs.label_map("totalseg_v2")[51] == "heart"
    with pytest.raises(cg.ConfigError):
        organs.label_map("totalseg_v9")
