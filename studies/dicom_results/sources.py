"""What the stored original DICOM files say: the headers the results are built from.

Only headers are read (`stop_before_pixels`): the results reference the source images and copy
their patient and study modules, and never need their pixels (the heat map is a stored PNG).
"""

from typing import BinaryIO

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

# Patient and study attributes that highdicom copies and that DICOM allows to be empty (type 2):
# a source file without them still gives a valid result, with them empty.
_TYPE2_EMPTY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)
_REQUIRED_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")


class SourceError(Exception):
    """A stored original cannot serve as a source: `message` says which file and why."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def read_source_header(stream: BinaryIO, *, name: str) -> Dataset:
    """The header of one stored original DICOM file, with empty type-2 patient/study attributes
    filled in; SourceError when it is not a DICOM file or lacks the UIDs a reference needs."""
    try:
        header = pydicom.dcmread(stream, stop_before_pixels=True)
    except (InvalidDicomError, EOFError, ValueError, OSError) as exc:
        raise SourceError(f"{name}: the stored original is not a readable DICOM file ({exc})") from exc
    missing = [keyword for keyword in _REQUIRED_UIDS if not str(header.get(keyword, "")).strip()]
    if missing:
        raise SourceError(f"{name}: the stored original has no {', '.join(missing)}")
    for keyword in _TYPE2_EMPTY:
        if keyword not in header:
            setattr(header, keyword, "")
    return header
