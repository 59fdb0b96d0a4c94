"""Negation and uncertainty cues of the report parser (NegEx/pyConText-style phrase lists, by kind)."""

from __future__ import annotations

from typing import Dict, Tuple

__all__ = ["NEG_PRE", "NEG_POST", "NEG_BOTH", "NEG_SELF", "UNC_PRE", "UNC_POST", "UNC_BOTH", "WEAK_PRE", "PSEUDO",
           "TERMINATE", "NEUTRAL", "HIST_PRE", "TRIGGERS"]

# Trigger kinds. PRE triggers act on what follows, POST on what precedes, BOTH on whichever side has findings,
# SELF on the phrase itself: a finding word and its denial in one ("stone-free"; the vocabulary gives it the
# finding of its first word).
NEG_PRE, NEG_POST, NEG_BOTH, NEG_SELF = "neg_pre", "neg_post", "neg_both", "neg_self"
UNC_PRE, UNC_POST, UNC_BOTH, WEAK_PRE = "unc_pre", "unc_post", "unc_both", "weak_pre"
PSEUDO, TERMINATE, NEUTRAL = "pseudo", "terminate", "neutral"
# HIST_PRE: the finding after it is the patient's history ("history of cholelithiasis"): uncertain on this scan, as a
# hedge, but an operation after it was done all the same ("history of cholecystectomy" removes the gallbladder).
HIST_PRE = "hist_pre"

# Partial or awaited resolution: the finding is still there ("partially resolved effusion" is an effusion).
_PARTIAL_RESOLUTION = (
    "partially resolved", "partially resolving", "partial resolution", "partial resolution of", "resolving",
    "incompletely resolved", "not completely resolved", "not fully resolved", "not entirely resolved",
    "not yet resolved", "not resolved", "has not resolved", "have not resolved", "nearly resolved",
    "almost resolved", "almost completely resolved", "nearly completely resolved", "largely resolved",
    "mostly resolved", "near complete resolution", "near complete resolution of", "nearly complete resolution of",
    "almost complete resolution of", "incomplete resolution of", "interval partial resolution of",
    "ensure resolution", "ensure resolution of", "confirm resolution", "confirm resolution of",
    "document resolution", "document resolution of", "assess resolution of", "assess for resolution of",
    "evaluate for resolution of", "evaluate resolution of", "until resolution of", "to resolution",
    "partial clearing of", "partial interval clearing of", "incomplete clearing of", "partially cleared",
    "not cleared", "has not cleared", "have not cleared", "not yet cleared", "not completely cleared",
    "not fully cleared", "partially disappeared",
)
# Follow-up of a stated finding ("to evaluate for stability of the nodule") is not a search for it.
_FOLLOW_UP = tuple(f"{to}{verb} {what}" for to in ("", "to ") for verb in ("evaluate for", "assess for")
                   for what in ("stability", "interval change", "change", "growth", "progression", "resolution",
                                "resolution of"))

_NO_CHANGE = ("no change", "no significant change", "no interval change", "no significant interval change",
              "no substantial change", "no definite change", "no appreciable change", "no increase",
              "no significant increase", "no interval increase")
# A lesion that has not grown is still there ("No interval growth of the hepatic metastases"): stable, not absent.
# The phrase takes "enlargement" with it, which would otherwise deny the organ's enlargement (hepatomegaly).
_NO_GROWTH = tuple(f"{lead} {what}" for lead in ("no", "no significant", "no definite", "no appreciable",
                                                  "no substantial", "no measurable", "without", "without significant",
                                                  "without any", "nil")
                   for what in ("interval growth", "interval enlargement", "interval progression", "growth",
                                "progression", "interval increase in size", "significant interval growth",
                                "significant interval enlargement"))

# NegEx/pyConText-style cue lists (Chapman et al. 2001; radiology additions). Language rules, not vocabulary,
# so they live in code; organ and finding vocabulary lives in the dictionary file.
TRIGGERS: Dict[str, Tuple[str, ...]] = {
    NEG_PRE: (
        "no", "not", "without", "no evidence of", "no evidence for", "no sign of", "no signs of",
        "no definite", "no definitive", "no suspicious", "no significant", "no new", "no other", "no residual",
        "no obvious", "no visible", "no demonstrable", "no discrete", "no focal", "no ct evidence of",
        "no radiographic evidence of", "no findings of", "no findings to suggest", "negative for", "free of",
        "absence of", "there is no", "there are no", "nor", "neither", "never", "no longer", "resolution of",
        "without evidence of", "without signs of", "without any", "no appreciable", "no measurable",
        "interval resolution of", "rules out", "ruling out", "w/o", "lack of", "lack of evidence of",
        "nothing to suggest", "nothing to indicate", "nothing suspicious for", "no features of",
        "no features to suggest", "no imaging evidence of", "no convincing", "no convincing evidence of",
        # British and Australian dictation ("Nil pleural effusion.", "Nil evidence of hydronephrosis.")
        "nil", "nil evidence of", "nil significant", "nil focal", "nil other",
        # "clear of" is longer than the normal term "clear", so it wins: "The pleural spaces are clear of effusion"
        "clear of", "devoid of", "none of", "none of the", "clearing of", "interval clearing of",
    ),
    NEG_POST: (
        "not seen", "not identified", "not demonstrated", "not visualized", "not visualised", "not present",
        "not detected", "not appreciated", "not evident", "not noted", "not found", "not observed",
        "is absent", "are absent", "has resolved", "have resolved", "ruled out", "excluded", "is excluded",
        "are excluded", "unlikely", "is unlikely", "no longer seen", "no longer visualized",
        "no longer visualised", "no longer present", "no longer identified", "not apparent",
        # visibility said in other words, and "no longer <seen>" after the finding ("... is no longer visible")
        "not visible", "not clearly visible", "no longer visible", "no longer demonstrated", "no longer appreciated",
        "no longer evident", "no longer apparent", "no longer noted", "no longer detected", "not clearly identified",
        "not clearly demonstrated", "not clearly visualized", "not clearly visualised", "not definitely seen",
        "not definitely identified", "not convincingly seen", "not convincingly identified",
        "not convincingly demonstrated",
        # a stone that has passed is gone; "less likely" leans the other way from "likely"
        "has passed", "have passed", "has since passed", "has been passed", "is less likely", "are less likely",
        # gone since the prior study ("The right pleural effusion has cleared", "the lesion has disappeared")
        "has cleared", "have cleared", "has since cleared", "have since cleared", "has now cleared",
        "has disappeared", "have disappeared", "has since disappeared", "have since disappeared",
    ),
    NEG_SELF: ("stone free", "stones free", "calculus free", "calculi free"),
    NEG_BOTH: ("resolved", "absent"),
    UNC_PRE: (
        "possible", "possibly", "questionable", "question of", "suspicious for", "suspicious of",
        "concerning for", "worrisome for", "worrying for", "suggestive of", "suggesting", "suggests",
        "may represent", "may be", "might be", "might represent", "could represent", "could be",
        "can not exclude", "cannot exclude", "can't exclude", "cannot rule out", "can not rule out",
        "can't rule out", "difficult to exclude", "rule out", "to rule out", "r/o", "ddx",
        "differential includes", "differential diagnosis includes", "differential diagnosis",
        "differential considerations include", "equivocal", "borderline", "suspected",
        "suspect", "consider", "raises the possibility of", "possibility of", "suggestion of",
        # "suggest" after what suggests it ("Findings suggest hepatic steatosis"); a bare "Suggest biopsy of the
        # left renal mass" recommends a work-up of a stated finding, it does not hedge it
        *(f"{who} suggest" for who in ("findings", "appearances", "features", "may", "might", "could", "would",
                                       "which", "that", "these", "this may", "images", "ct findings")),
        "uncertain", "query", "may reflect", "could reflect",
        "may relate to", "not excluding", "limiting assessment for", "limiting evaluation for",
        "limited assessment for", "limited evaluation for", "limited assessment of", "limited evaluation of",
        "difficult to assess for", "cannot be assessed for", "concern for", "raise concern for",
        "raises concern for", "suspicion of", "suspicion for", "suspicious of", "worrisome of",
        # recommendations name what is to be looked for, not what was found ("MRI to evaluate for HCC")
        "evaluate for", "to evaluate for", "assess for", "to assess for", "evaluation for", "to exclude",
        # "could not / unable to / cannot entirely exclude": the verb says what is not settled (a "not" before it
        # gives way to it, negation/cue_scopes); "excluded" after a denied "be" is hedged there too
        "exclude",
    ),
    UNC_POST: (
        "cannot be excluded", "can not be excluded", "can't be excluded", "cannot be ruled out",
        "can not be ruled out", "not excluded", "is not excluded", "not entirely excluded",
        "not completely excluded", "not ruled out", "too small to characterize", "too small to characterise",
        "too small to accurately characterize", "too small to accurately characterise",
        "too small to further characterize", "too small to further characterise", "of uncertain significance",
        "not well characterized", "not well characterised",
        "is suspected", "are suspected", "is possible", "are possible", "is questionable", "questioned",
        # "Hepatic steatosis is likely.": the pre-cue "likely" had nothing after it to reach
        "is likely", "are likely", "is probable", "are probable", "is favored", "is favoured",
        # the hedge after the finding ("Mild splenomegaly may be present"): "may be" alone looks forward only
        "may be present", "might be present", "could be present", "may also be present", "may be seen",
        "would be a consideration", "is a consideration", "are a consideration", "is a possibility",
        "would be a possibility", "is a possible consideration",
    ),
    UNC_BOTH: ("versus", "vs", "vs."),
    HIST_PRE: ("history of", "hx of", "h/o", "remote history of", "prior history of", "past history of",
               "previous history of", "known history of", "personal history of"),
    WEAK_PRE: (
        "likely", "probable", "probably", "most likely", "more likely", "presumably", "presumed",
        "favored", "favoured", "favor", "favour", "most probably", "in all likelihood", "likely representing",
        "likely represents", "probably representing", "probably represents",
    ),
    PSEUDO: (
        "no change", "no changes", "no significant change", "no interval change", "no significant interval change",
        "no substantial change", "no definite change", "no appreciable change", "nil change", "nil significant change",
        "nil interval change", "not only", "no increase",
        "no significant increase", "no interval increase", "without change", "without significant change",
        "without interval change", "not changed", "not significantly changed",
        "unchanged", "stable", "not necessarily", "no further", "gram negative", "not well seen",
        "not clearly seen", "no longer than", *_NO_GROWTH,
        # a recommendation about a stated finding, not a hedge on it ("Suggest follow-up of the left renal cyst")
        *(f"{s} {what}" for s in ("suggest", "we suggest", "i suggest")
          for what in ("follow up", "followup", "clinical correlation", "correlation", "comparison", "surveillance")),
        *_PARTIAL_RESOLUTION, *_FOLLOW_UP,
        # a missing normal property is an abnormality, not a negated one ("lack of enhancement of the kidney")
        "lack of enhancement", "no enhancement", "absent enhancement", "lack of opacification", "no opacification",
        "lack of perfusion", "absent perfusion",
        # "Splenomegaly is likely due to portal hypertension": the cause is hedged, the finding stated
        *(f"{v} {h} {c}" for v in ("is", "are") for h in ("likely", "probably", "most likely", "possibly")
          for c in ("due to", "related to", "secondary to", "from", "caused by", "reactive", "postoperative",
                    "post-operative", "physiologic", "physiological", "chronic", "benign")),
        # "There is no significant change in the known renal cysts": the longer "there is no" would otherwise
        # win the match and negate what is only said to be unchanged
        *(f"{lead} {c}" for lead in ("there is", "there are", "there has been", "there have been", "there was",
                                     "there were") for c in _NO_CHANGE + _NO_GROWTH),
    ),
    TERMINATE: (
        "but", "however", "although", "though", "which", "whereas", "while", "except", "except for",
        "apart from", "aside from", "other than", "with the exception of", "yet", "there is", "there are",
        "there is a", "there is an", "there are several", "with", "which is", "which are", "that is",
        "secondary to", "due to", ", the", ", a", ", an", ", there", ", this", ", it", "otherwise",
        "additionally", "also", "in addition", "incidentally", "incidental",
    ),
    # Consume phrases whose words would otherwise read as cues ("with" inside "consistent with").
    NEUTRAL: ("consistent with", "compatible with", "in keeping with", "associated with", "with or without",
              "correlate with", "correlation with", "filled with", "not to be confused with",
              # how the study was done, not a denial ("Without contrast, evaluation of the liver is limited")
              *(f"without {c}contrast" for c in ("", "iv ", "intravenous ", "oral ", "oral or iv ",
                                                  "oral or intravenous ", "the use of ", "the use of iv ",
                                                  "the use of intravenous "))),
}
