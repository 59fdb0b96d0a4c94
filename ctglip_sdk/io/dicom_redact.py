"""Keep header values out of pydicom's warnings and log records (they may hold a patient's name or birth date)."""

from __future__ import annotations

import logging
import re
import warnings

__all__ = ["redact_pydicom_values", "redact_quoted", "VALUE_WARNINGS"]

#: pydicom messages that quote the offending element value, e.g. "Invalid value for VR DA: '1961JohnDoe'." and
#: 'Value "x" is not valid for elements with a VR of DS'. A malformed PatientBirthDate or PatientName would be
#: echoed verbatim to the user's terminal and log files, against the project's no-identifier rule. pydicom 3.0
#: checks PN/DA/AS values when they are assigned rather than read, and DS/IS values on read; this guard covers
#: any version or ``reading_validation_mode`` setting that checks more on read.
VALUE_WARNINGS = r"(Invalid value for VR|Value .* is not valid for elements with a VR)"

# Anything pydicom quotes is a value read from the file; redacting every quoted span is simpler and safer than
# knowing which messages echo which values.
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")


def redact_quoted(message: str) -> str:
    """``message`` with every quoted span replaced by '<withheld>'."""
    return _QUOTED.sub("'<withheld>'", message)


class _RedactFilter(logging.Filter):
    """Rewrites pydicom's log records so that no quoted header value reaches a handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record: drop its arguments rather than the record
            message = str(record.msg)
        redacted = redact_quoted(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


_FILTER = _RedactFilter()


def redact_pydicom_values() -> None:
    """Install (idempotently) the log filter on pydicom's logger and a warnings filter for its value echoes.

    Called by every DICOM entry point rather than once at import: test runners and ``warnings.catch_warnings``
    blocks restore the warnings filters on exit, so a filter added once could silently disappear. The log
    record itself is kept (redacted), so the fact that a header value was invalid is not lost.
    """
    # A logger's filters do not see records that its children propagate to it ("pydicom.pixels.utils"), so the
    # filter goes on every pydicom logger that exists by now as well.
    names = ["pydicom"] + [n for n in list(logging.Logger.manager.loggerDict) if n.startswith("pydicom.")]
    for name in names:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
    for action, msg, category, module, _lineno in warnings.filters:
        if action == "ignore" and category is UserWarning and msg is not None and msg.pattern == VALUE_WARNINGS \
                and module is not None and module.pattern == "pydicom":
            return
    warnings.filterwarnings("ignore", message=VALUE_WARNINGS, category=UserWarning, module="pydicom")
