"""Synthetic CT archive generator: phantoms with TotalSegmentator-style masks, reports and ground truth.

Example:
    >>> import ctglip_sdk as cg
    >>> summary = cg.synth.generate_archive("/tmp/demo-archive", n_patients=4, seed=0, preset="small",
    ...                                     progress=False, overwrite=True)
    >>> patient = cg.synth.generate_patient(0, "small", findings=["renal_stone"])
"""

from __future__ import annotations

from ctglip_sdk.synth.archive import (MANIFEST_COLUMNS, ArchiveSummary, SyntheticPatient, assign_splits,
                                      generate_archive, generate_patient)
from ctglip_sdk.synth.findings import DEFAULT_PREVALENCE, FINDINGS, FindingSpec
from ctglip_sdk.synth.presets import PRESETS, Preset, get_preset

__all__ = ["generate_archive", "generate_patient", "ArchiveSummary", "SyntheticPatient", "assign_splits",
           "MANIFEST_COLUMNS", "FINDINGS", "FindingSpec", "DEFAULT_PREVALENCE", "PRESETS", "Preset", "get_preset"]
