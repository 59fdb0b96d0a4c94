"""Malformed header values (which may be identifiers) never reach pydicom's warnings or log output."""

from __future__ import annotations

import logging
import warnings

import numpy as np

from ctglip_sdk.io.dicom import load_dicom
from ctglip_sdk.io.dicom_redact import redact_quoted
from dicom_factory import DEFAULT_PATIENT, write_series

# A birth date and an age that pydicom's validation rejects, each carrying a name-like string.
BAD = dict(DEFAULT_PATIENT, PatientBirthDate="1960Smithson", PatientAge="DOEJANE")


def test_invalid_values_are_not_echoed(tmp_path, caplog):
    hu = np.arange(4 * 6 * 5, dtype=np.float32).reshape(4, 6, 5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom's own writer warns (with the value) while the factory writes
        write_series(tmp_path / "s", hu, patient=BAD)
    caplog.clear()
    caplog.set_level(logging.DEBUG)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # the strictest user setting: every warning shown
        vol = load_dicom(tmp_path / "s")
    assert vol.array.shape[0] > 0
    shown = " ".join(str(w.message) for w in caught) + " " + caplog.text
    for secret in ("Smithson", "DOEJANE", "1960Smithson"):
        assert secret not in shown
    assert "Smithson" not in repr(vol.meta) and "DOEJANE" not in repr(vol.meta)


def test_pydicom_log_records_are_redacted_but_kept(caplog):
    from ctglip_sdk.io.dicom_redact import redact_pydicom_values

    redact_pydicom_values()
    caplog.set_level(logging.WARNING, logger="pydicom")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pydicom import config
        from pydicom.valuerep import validate_value

        validate_value("DA", "19xxMaryPoppins", config.WARN)
    assert "MaryPoppins" not in caplog.text
    assert "Invalid value for VR DA" in caplog.text and "<withheld>" in caplog.text


def test_redact_quoted_keeps_the_message_shape():
    assert redact_quoted("Invalid value for VR PN: 'Doe^John'.") == "Invalid value for VR PN: '<withheld>'."
    assert redact_quoted('Value "12.3.4" is not valid') == "Value '<withheld>' is not valid"
    assert redact_quoted("no values here") == "no values here"
