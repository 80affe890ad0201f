"""The DICOM body-part vocabulary: header terms → MURA study types, other body parts, or nothing."""

import pydicom
import pytest

from inference.dicom_body_parts import MURA_TYPES, body_part_conflicts, mura_type_of, regions_in
from tests.conftest import SHARED_DATA


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("WRIST", "XR_WRIST"),
        ("HAND", "XR_HAND"),
        ("THUMB", "XR_FINGER"),
        ("UPPER ARM", "XR_HUMERUS"),
        ("R_HAND", "XR_HAND"),
        ("shoulder", "XR_SHOULDER"),
        ("ARM", None),  # generic: upper arm, forearm or the whole limb
        ("EXTREMITY", None),
        ("HIP", None),  # another body part: no MURA type
        ("", None),
        (None, None),
    ],
)
def test_body_part_examined_maps_onto_a_mura_type_only_when_it_names_one(value, expected):
    assert mura_type_of(value) == expected


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("XR C Spine Comp Min 4 Views", ["CSPINE"]),
        ("Cervical LAT", ["CSPINE"]),
        ("L-SPINE", ["LSPINE"]),
        ("HIP JOINT", ["HIP"]),
        ("Non-ossifying fibroma of distal tibia", ["TIBIA"]),
        ("tib/fib AP", ["TIBIA"]),
        ("XRAY RIGHT HAND", ["XR_HAND"]),
        ("Hand and wrist", ["XR_HAND", "XR_WRIST"]),
        ("Radial head fracture", ["XR_ELBOW"]),  # "head" alone is not the skull
        ("humeral head", ["XR_SHOULDER"]),
        ("PA", []),
        ("left arm", []),
        ("Upper limb", []),
        ("chipped", []),  # whole words only: "hip" inside a word is nothing
        ("Handley", []),
    ],
)
def test_free_text_matches_whole_words_and_known_abbreviations(text, names):
    assert [region.name for region in regions_in(text)] == names


def test_neighbouring_regions_and_unknown_terms_never_conflict():
    for study_type in MURA_TYPES:
        assert body_part_conflicts(study_type, {"body_part_examined": "EXTREMITY"}) == []
        assert body_part_conflicts(study_type, {"study_description": "Follow-up 6 weeks"}) == []
    assert body_part_conflicts("XR_WRIST", {"body_part_examined": "HAND"}) == []
    assert body_part_conflicts("XR_FOREARM", {"study_description": "Elbow and forearm"}) == []
    assert body_part_conflicts("XR_FINGER", {"body_part_examined": "HAND"}) == []


def test_a_field_that_names_only_other_regions_conflicts_and_says_where():
    (conflict,) = body_part_conflicts("XR_WRIST", {"body_part_examined": "KNEE", "series_description": "PA"})
    assert conflict.field == "body_part_examined"
    assert conflict.describe() == 'BodyPartExamined "KNEE" (KNEE)'
    (finger,) = body_part_conflicts("XR_WRIST", {"study_description": "Finger 2 views"})
    assert finger.regions[0].mura_type == "XR_FINGER"  # another MURA type is a mismatch too


def _header(path):
    ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    return {
        "body_part_examined": str(ds.get("BodyPartExamined") or ""),
        "study_description": str(ds.get("StudyDescription") or ""),
        "series_description": str(ds.get("SeriesDescription") or ""),
    }


def test_the_shared_dicom_files_read_as_the_body_parts_they_show():
    dicom = SHARED_DATA / "dicom"
    hand = _header(dicom / "NM_Kakadu44_SOTmarkerincons.dcm")  # HAND / "XRAY RIGHT HAND" / "PA"
    assert body_part_conflicts("XR_HAND", hand) == []
    assert body_part_conflicts("XR_WRIST", hand) == []
    assert [c.tag for c in body_part_conflicts("XR_ELBOW", hand)] == ["BodyPartExamined", "StudyDescription"]
    hip = body_part_conflicts("XR_WRIST", _header(dicom / "RG2_JPLL.dcm"))  # HIP / "HIP JOINT"
    assert [(c.tag, c.regions[0].name) for c in hip] == [
        ("BodyPartExamined", "HIP"),
        ("StudyDescription", "HIP"),
    ]
    # EXTREMITY is generic; the description names the tibia.
    tibia = body_part_conflicts("XR_WRIST", _header(dicom / "RG3_J2KR.dcm"))
    assert [(c.tag, c.regions[0].name) for c in tibia] == [("StudyDescription", "TIBIA")]
    spine = body_part_conflicts("XR_WRIST", _header(dicom / "CR1_6154_noext"))  # CSPINE, both descriptions
    assert {c.regions[0].name for c in spine} == {"CSPINE"} and len(spine) == 3


def test_the_module_imports_no_django():
    import subprocess
    import sys

    code = "import sys, inference.dicom_body_parts; print('django' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
