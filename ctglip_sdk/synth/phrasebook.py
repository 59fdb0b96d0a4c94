"""Report phrasing for synthetic studies: templates per finding, normal statements, headings, impression.

These templates belong to the generator only. The report parser (ctglip_sdk.reports) is written
independently and must never import them, so that parsing is tested against text it was not built from.
"""

from __future__ import annotations

from typing import Dict, List

import numpy as np

__all__ = ["write_report", "format_size"]

_R = np.random.Generator


def format_size(mm: float, rng: _R, prefer_cm: bool = False) -> str:
    """A measurement as radiologists write it: "7 mm" or "1.8 cm" (always one of these two exact forms)."""
    mm = float(round(mm))
    if mm >= 10 and (prefer_cm or rng.random() < 0.7):
        return f"{mm / 10:.1f} cm"
    return f"{mm:.0f} mm"


def _dims(mm: float, rng: _R) -> str:
    mm = float(round(mm))
    other = max(round(mm * rng.uniform(0.7, 0.95)), 1)
    if mm >= 10 and rng.random() < 0.7:
        return f"{mm / 10:.1f} x {other / 10:.1f} cm"
    return f"{mm:.0f} x {other:.0f} mm"


#: Contrast agents a technique line may name; the DICOM header's ContrastBolusAgent names the same one.
CONTRAST_AGENTS = ("iohexol 350", "iopamidol 370", "Omnipaque 350")


def _pick(rng: _R, options: List[str]) -> str:
    return options[int(rng.integers(len(options)))]


_HEDGE = ["likely", "probably", "possibly", "most likely", "favored to represent"]
_SIDE = {"left": "left", "right": "right"}
_COUNT = {2: "Two", 3: "Three", 4: "Four", 5: "Five"}


def _lobe(organ: str) -> str:
    parts = organ.split("_")  # lung_lower_lobe_left
    return f"{parts[-1]} {parts[1]} lobe"


def _sentence(e: dict, rng: _R, contrast: bool) -> str:
    """One finding in one randomly chosen phrasing (sizes and sides taken from the truth entry)."""
    k = e["finding"]
    size = format_size(e["size_mm"], rng) if e.get("size_mm") else ""
    dims = _dims(e["size_mm"], rng) if e.get("size_mm") else ""
    side = e.get("side") or ""
    Side = side.capitalize()
    loc = e.get("location") or ""
    seg = loc.replace("segment ", "")
    sev = (e.get("severity") or "").lower()
    n = e.get("count") or 1
    hedge = _pick(rng, _HEDGE)
    if k == "liver_cyst":
        if n > 1:
            return _pick(rng, [f"Multiple hepatic cysts, the largest measuring {size} in segment {seg}.",
                               f"Several simple-appearing hepatic cysts, the largest {dims} in segment {seg}."])
        if e["size_mm"] < 10:
            return f"Subcentimeter hypodensity in segment {seg} ({size}), too small to characterize, {hedge} a cyst."
        return _pick(rng, [f"{size} simple cyst in hepatic segment {seg}.",
                           f"Hypodense non-enhancing lesion in segment {seg} measuring {dims}, consistent with a cyst.",
                           f"Well-circumscribed fluid-attenuation lesion in segment {seg} ({size}), consistent with a "
                           "simple hepatic cyst."])
    if k == "hepatic_steatosis":
        return _pick(rng, [f"{sev.capitalize()} diffuse hepatic steatosis.",
                           "Decreased hepatic attenuation relative to the spleen, consistent with "
                           f"{sev} fatty infiltration.",
                           f"The liver is diffusely hypoattenuating, compatible with {sev} hepatic steatosis.",
                           f"{sev.capitalize()} fatty infiltration of the liver."])
    if k == "hepatomegaly":
        size = format_size(e["size_mm"], rng, prefer_cm=True)
        return _pick(rng, [f"Hepatomegaly, the liver measuring {size} in craniocaudal dimension.",
                           f"The liver is enlarged, measuring {size} craniocaudally.",
                           f"Enlarged liver ({size})."])
    if k == "liver_calcification":
        if n > 1:
            return f"A few punctate hepatic calcifications, the largest {size} in segment {seg}, {hedge} granulomas."
        return _pick(rng, [f"Punctate {size} calcification in segment {seg}, likely a calcified granuloma.",
                           f"Tiny calcified granuloma in hepatic segment {seg} ({size})."])
    if k == "liver_mass":
        return _pick(rng, [f"Hypoattenuating {dims} mass in segment {seg}.",
                           f"Lobulated hypoenhancing lesion in segment {seg} measuring {size}, concerning for "
                           "neoplasm; MRI is recommended for further characterization.",
                           f"Ill-defined {size} hypodense mass in hepatic segment {seg}, indeterminate."])
    if k == "gallstones":
        kind = "calcified " if sev in ("calcified", "rim") else ""
        if n > 1:
            return _pick(rng, [f"Multiple {kind}gallstones, the largest measuring {size}.",
                               f"Cholelithiasis with {n} {kind}stones, the largest {size}, without evidence of "
                               "acute cholecystitis."])
        return _pick(rng, [f"Cholelithiasis, a single {kind}stone measuring {size}.",
                           f"A {size} {kind}gallstone layering dependently in the gallbladder.",
                           f"Cholelithiasis without gallbladder distension; dominant stone {size}."])
    if k == "gallbladder_wall_thickening":
        fluid = " with a small amount of pericholecystic fluid" if e.get("fluid") else ""
        return _pick(rng, [f"Gallbladder wall thickening ({size}){fluid}.",
                           f"Diffuse gallbladder wall thickening measuring up to {size}{fluid}.",
                           f"The gallbladder wall is thickened to {size}, nonspecific{fluid}."])
    if k == "renal_cyst":
        if e["size_mm"] < 10:
            return f"Subcentimeter hypodensity in the {loc} of the {side} kidney ({size}), too small to characterize."
        return _pick(rng, [f"{size} simple cyst in the {loc} of the {side} kidney (Bosniak I).",
                           f"{Side} renal cortical cyst in the {loc} measuring {dims}, Bosniak I.",
                           f"Exophytic fluid-attenuation lesion arising from the {loc} of the {side} kidney, "
                           f"{size}, consistent with a simple cyst."])
    if k == "renal_stone":
        pole = loc.replace(" region", "")
        return _pick(rng, [f"Nonobstructing {size} {side} {pole} calculus.",
                           f"{size} calculus in the {loc} of the {side} kidney.",
                           f"{Side} nephrolithiasis, the stone measuring {size} in the {loc}."])
    if k == "hydronephrosis":
        return _pick(rng, [f"{sev.capitalize()} {side} hydronephrosis, the renal pelvis measuring {size} in AP "
                           "dimension.",
                           f"Dilatation of the {side} renal collecting system ({sev}), renal pelvis {size}.",
                           f"{sev.capitalize()} {side} pelvicaliectasis with an AP pelvic diameter of {size}."])
    if k == "renal_atrophy":
        size = format_size(e["size_mm"], rng, prefer_cm=True)
        return _pick(rng, [f"Atrophic {side} kidney ({size}) with cortical thinning.",
                           f"The {side} kidney is small, measuring {size} in length, with diffuse cortical thinning.",
                           f"{Side} renal atrophy (length {size})."])
    if k == "pancreatic_atrophy":
        return _pick(rng, [f"Diffuse pancreatic atrophy with fatty infiltration; the body measures {size} in "
                           "thickness.",
                           f"The pancreas is atrophic (body {size}) with fatty replacement.",
                           f"{sev.capitalize()} fatty atrophy of the pancreas, the gland measuring up to {size}."])
    if k == "pancreatic_cyst":
        return _pick(rng, [f"{size} cystic lesion in the pancreatic {loc}.",
                           f"Simple-appearing {dims} cyst in the {loc} of the pancreas, {hedge} a side-branch IPMN; "
                           "follow-up is recommended.",
                           f"Hypodense cystic lesion of the pancreatic {loc} measuring {size}."])
    if k == "pancreatic_duct_dilation":
        return _pick(rng, [f"Main pancreatic duct dilated to {size}.",
                           f"Dilatation of the main pancreatic duct, measuring {size}, without an obstructing mass.",
                           f"The pancreatic duct is dilated at {size}."])
    if k == "splenomegaly":
        size = format_size(e["size_mm"], rng, prefer_cm=True)
        return _pick(rng, [f"Splenomegaly ({size}).", f"The spleen is enlarged, measuring {size} in length.",
                           f"Enlarged spleen measuring {size}."])
    if k == "splenic_calcification":
        return _pick(rng, [f"Scattered punctate splenic calcifications, up to {size}, likely sequelae of prior "
                           "granulomatous disease.",
                           f"{_COUNT.get(n, 'Several')} punctate calcifications in the spleen (largest {size})."])
    if k == "lung_nodule":
        lobe = _lobe(e["organ"])
        if sev == "calcified":
            return _pick(rng, [f"Calcified {size} granuloma in the {lobe}.",
                               f"{size} densely calcified nodule in the {lobe}, benign."])
        return _pick(rng, [f"{size} solid nodule in the {lobe}.",
                           f"There is a {size} solid pulmonary nodule in the {lobe}.",
                           f"Noncalcified nodule measuring {dims} in the {lobe}; follow-up per Fleischner "
                           "guidelines."])
    if k == "pleural_effusion":
        return _pick(rng, [f"{sev.capitalize()} {side} pleural effusion with compressive atelectasis, measuring "
                           f"{size} in depth.",
                           f"{sev.capitalize()} layering {side} pleural effusion, up to {size} thick.",
                           f"{Side} pleural effusion ({sev}), maximal depth {size}."])
    if k == "adrenal_nodule":
        if not contrast and e.get("hu") is not None and e["hu"] < 10:
            return f"{size} {side} adrenal nodule measuring {e['hu']:.0f} HU, consistent with a lipid-rich adenoma."
        return _pick(rng, [f"{size} {side} adrenal nodule, likely adenoma.",
                           f"{Side} adrenal nodule measuring {dims}, {hedge} an adenoma.",
                           f"Indeterminate {size} {side} adrenal nodule; adrenal protocol CT could be considered."])
    if k == "aortic_calcification":
        where = loc or "abdominal aorta"
        return _pick(rng, [f"{sev.capitalize()} atherosclerotic calcification of the {where}.",
                           f"{sev.capitalize()} calcified atherosclerotic plaque of the {where}.",
                           "Scattered atherosclerotic calcifications of the aorta."])
    if k == "aortic_aneurysm":
        size = format_size(e["size_mm"], rng, prefer_cm=True)
        th = " with eccentric mural thrombus" if "thrombus" in sev else ""
        return _pick(rng, [f"{size} infrarenal abdominal aortic aneurysm{th}.",
                           f"Fusiform infrarenal aortic aneurysm measuring {size} in maximal diameter{th}.",
                           f"Aneurysmal dilatation of the infrarenal abdominal aorta to {size}{th}."])
    if k == "bladder_wall_thickening":
        return _pick(rng, [f"Diffuse bladder wall thickening ({size}).",
                           f"The urinary bladder wall is diffusely thickened, measuring {size}.",
                           f"Circumferential bladder wall thickening up to {size}, which may reflect cystitis or "
                           "chronic outlet obstruction."])
    return ""


def _emphysema_sentence(entries: List[dict], rng: _R) -> str:
    sev = entries[0].get("severity") or "mild"
    return _pick(rng, ["Centrilobular emphysema, upper lobe predominant.",
                       f"{sev.capitalize()} centrilobular emphysema with upper lobe predominance.",
                       f"{sev.capitalize()} emphysematous changes, most pronounced in the upper lobes."])


# Section -> (headings, finding keys, normal statements keyed by the finding they deny, generic normals).
_SECTIONS: Dict[str, tuple] = {
    "lungs": (["LUNGS AND PLEURA:", "Lungs:", "Lungs and pleura:", "Lower chest:"],
              ["lung_nodule", "emphysema", "pleural_effusion"],
              {"lung_nodule": ["No suspicious pulmonary nodules.", "No pulmonary nodule or mass."],
               "emphysema": ["No emphysema."], "pleural_effusion": ["No pleural effusion.",
                                                                     "No pleural effusion or pneumothorax."]},
              ["The lungs are clear.", "Clear lungs."]),
    "heart": (["HEART AND MEDIASTINUM:", "Mediastinum:", "Heart:"], [], {},
              ["Heart size is normal. No pericardial effusion.", "Normal heart size.",
               "No mediastinal or hilar lymphadenopathy."]),
    "liver": (["LIVER:", "Liver:", "Hepatobiliary:", "Liver and biliary tree:"],
              ["liver_cyst", "hepatic_steatosis", "hepatomegaly", "liver_calcification", "liver_mass"],
              {"liver_cyst": ["No focal hepatic lesion."], "liver_mass": ["No hepatic mass."],
               "hepatic_steatosis": ["Normal hepatic attenuation."], "hepatomegaly": ["Normal liver size."]},
              ["The liver is normal in size and attenuation.", "Normal liver size. No focal liver lesion."]),
    "gallbladder": (["GALLBLADDER:", "Gallbladder and bile ducts:", "Biliary:"],
                    ["gallstones", "gallbladder_wall_thickening"],
                    {"gallstones": ["No radiopaque gallstones."],
                     "gallbladder_wall_thickening": ["No gallbladder wall thickening or pericholecystic fluid."]},
                    ["The gallbladder is unremarkable.", "No biliary ductal dilatation."]),
    "spleen": (["SPLEEN:", "Spleen:"], ["splenomegaly", "splenic_calcification"],
               {"splenomegaly": ["Spleen is normal in size.", "No splenomegaly."]}, ["Normal spleen."]),
    "pancreas": (["PANCREAS:", "Pancreas:"], ["pancreatic_atrophy", "pancreatic_cyst", "pancreatic_duct_dilation"],
                 {"pancreatic_duct_dilation": ["No pancreatic ductal dilatation."],
                  "pancreatic_cyst": ["No pancreatic mass or cyst."]},
                 ["The pancreas is normal without ductal dilatation or mass.", "Unremarkable pancreas."]),
    "adrenals": (["ADRENAL GLANDS:", "Adrenals:", "Adrenal glands:"], ["adrenal_nodule"],
                 {"adrenal_nodule": ["No adrenal nodule."]},
                 ["The adrenal glands are unremarkable.", "Normal adrenal glands."]),
    "kidneys": (["KIDNEYS:", "Kidneys and ureters:", "KIDNEYS AND URETERS:", "Genitourinary:"],
                ["renal_cyst", "renal_stone", "hydronephrosis", "renal_atrophy"],
                {"renal_stone": ["No renal or ureteral calculi."], "hydronephrosis": ["No hydronephrosis."],
                 "renal_cyst": ["No suspicious renal mass."], "renal_atrophy": ["Kidneys are normal in size."]},
                ["The kidneys are unremarkable.", "Normal kidneys."]),
    "bladder": (["URINARY BLADDER:", "Bladder:", "Pelvis:"], ["bladder_wall_thickening"],
                {"bladder_wall_thickening": ["No bladder wall thickening."]},
                ["The urinary bladder is unremarkable.", "Normal bladder."]),
    "vessels": (["VASCULATURE:", "Vessels:", "Aorta and vessels:"], ["aortic_calcification", "aortic_aneurysm"],
                {"aortic_aneurysm": ["No abdominal aortic aneurysm.", "Normal caliber abdominal aorta."],
                 "aortic_calcification": ["No significant atherosclerosis."]}, []),
    "bowel": (["BOWEL:", "GI tract:", "Bowel:"], [], {},
              ["No bowel obstruction or wall thickening.", "Normal caliber bowel loops."]),
    "bones": (["BONES:", "Osseous structures:", "Musculoskeletal:"], [], {}, ["No aggressive osseous lesion."]),
}
# Denials whose wording covers other findings too: "No focal hepatic lesion." also denies masses and
# calcifications, so it is not written when one of them is present.
_DENIES_ALSO: Dict[str, set] = {"liver_cyst": {"liver_mass", "liver_calcification"}}
_MINOR = {"heart", "adrenals", "bladder", "vessels", "bowel", "bones"}
_INDICATIONS = ["Abdominal pain.", "Weight loss.", "Staging.", "Follow-up.", "Fever of unknown origin.",
                "Shortness of breath and abdominal pain.", "Elevated liver enzymes.", "Hematuria.",
                "Screening.", "Nausea and vomiting."]


def write_report(truth: List[dict], meta: dict, rng: _R) -> str:
    """A full report (header, organ-by-organ findings, impression) consistent with the truth entries.

    Args:
        truth: findings rendered in the pixels (truth.jsonl entries).
        meta: contrast (bool), agent (the contrast agent's name, else one is drawn), slice_mm, gallbladder (bool, False after cholecystectomy), osteopenia (bool),
            stool (str or None).
        rng: the report's own generator: phrasing differs between patients, never the facts.
    """
    contrast = bool(meta.get("contrast"))
    by_key: Dict[str, List[dict]] = {}
    for e in truth:
        by_key.setdefault(e["finding"], []).append(e)
    upper = rng.random() < 0.5
    lines = [("EXAMINATION: " if upper else "Exam: ") + _pick(rng, [
        f"CT CHEST, ABDOMEN AND PELVIS {'WITH IV CONTRAST' if contrast else 'WITHOUT CONTRAST'}",
        f"CT chest/abdomen/pelvis {'with intravenous contrast' if contrast else 'without contrast'}"])]
    lines.append(("CLINICAL HISTORY: " if upper else "Indication: ") + _pick(rng, _INDICATIONS))
    drawn = _pick(rng, list(CONTRAST_AGENTS))  # drawn even when given, so the rest of the phrasing stays put
    agent = meta.get("agent") or drawn
    phase = (f"following intravenous administration of {int(rng.choice([80, 90, 100, 120]))} mL of {agent}, "
             "in the portal venous phase" if contrast else "without intravenous contrast")
    lines.append(("TECHNIQUE: " if upper else "Technique: ") + f"Helical CT from the lung apices to the pubic "
                 f"symphysis {phase}. {meta.get('slice_mm', 5):g} mm axial reconstructions with coronal and "
                 "sagittal reformats.")
    lines.append(("COMPARISON: " if upper else "Comparison: ") + _pick(rng, ["None.", "None available."]))
    lines.append("")
    lines.append("FINDINGS:" if upper else "Findings:")
    merge_gb = False
    said: Dict[int, str] = {}  # the impression restates each finding as the body said it (same certainty)
    for name, (heads, keys, denials, normals) in _SECTIONS.items():
        if name == "gallbladder" and merge_gb:
            continue
        head = _pick(rng, heads)
        sec_keys = list(keys)
        if name == "liver" and head in ("Hepatobiliary:", "Liver and biliary tree:"):
            sec_keys += _SECTIONS["gallbladder"][1]
            merge_gb = True
        present = [e for k in sec_keys for e in by_key.get(k, [])]
        sentences: List[str] = []
        if name == "lungs" and "emphysema" in by_key:
            sentences.append(_emphysema_sentence(by_key["emphysema"], rng))
        for e in present:
            if e["finding"] != "emphysema":
                said[id(e)] = _sentence(e, rng, contrast)
                sentences.append(said[id(e)])
        if name in ("liver",) and merge_gb and not meta.get("gallbladder", True):
            sentences.append("Status post cholecystectomy.")
        if name == "gallbladder" and not meta.get("gallbladder", True):
            sentences.append("Status post cholecystectomy.")
        absent = [k for k in denials if k not in by_key]
        if present:
            # Alongside abnormal findings, radiologists often still deny the other findings of the organ, but
            # never with a sentence that also denies what was just described ("No focal hepatic lesion."
            # beside a mass). The draw is made either way so that other reports keep their phrasing.
            for k in absent:
                if rng.random() < 0.4 and not _DENIES_ALSO.get(k, set()) & set(by_key):
                    sentences.append(_pick(rng, denials[k]))
        elif not sentences:
            if name in _MINOR and rng.random() < 0.12:
                continue  # normal organs are sometimes not mentioned at all
            r = rng.random()
            if r < 0.2:
                sentences.append(_pick(rng, ["Normal.", "Unremarkable."]))
            else:
                pool = [_pick(rng, denials[k]) for k in absent if rng.random() < 0.6] or [_pick(rng, normals or ["Normal."])]
                if normals and rng.random() < 0.4:
                    pool.insert(0, _pick(rng, normals))
                sentences.extend(pool)
        if name == "bones" and meta.get("osteopenia"):
            sentences.insert(0, "Diffuse osteopenia.")
        if name == "bowel" and meta.get("stool"):
            sentences.append(meta["stool"])
        lines.append(f"{head} " + " ".join(dict.fromkeys(sentences)))
    lines.append("")
    lines.append("IMPRESSION:" if upper or rng.random() < 0.5 else "Impression:")
    items: List[str] = []
    if "emphysema" in by_key:
        items.append(_emphysema_sentence(by_key["emphysema"], rng))
    for e in truth:
        if e["finding"] != "emphysema":
            items.append(said.get(id(e), _sentence(e, rng, contrast)).split(";")[0].rstrip(".") + ".")
    if not items:
        items = [_pick(rng, ["No acute abnormality in the chest, abdomen or pelvis.", "No acute findings.",
                             "Unremarkable CT of the chest, abdomen and pelvis."])]
    for i, it in enumerate(items, 1):
        lines.append(f"{i}. {it}")
    return "\n".join(lines) + "\n"
