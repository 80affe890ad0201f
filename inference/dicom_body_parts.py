"""What body part a DICOM header names, in terms of the seven MURA study types.

Pure Python (no Django, no numpy): the upload checks use it, and so can a DICOM receiver.

Three header fields are read: BodyPartExamined (a coded string, PS3.16 CID 4031 defined terms,
though vendors write free variants such as "L-SPINE" or "RIGHT HAND"), StudyDescription and
SeriesDescription (free text). Each is matched against a vocabulary of whole words and known
phrases and abbreviations; anything not in the vocabulary says nothing. Each term gives one of:

- a MURA study type (``XR_WRIST`` …): the region a model exists for;
- another body part (``HIP``, ``CSPINE``, ``CHEST`` …): a region no MURA model covers;
- nothing (``EXTREMITY``, ``UPPER LIMB``, ``ARM``, an empty value, laterality, view names):
  generic or unknown, never a mismatch.

Matching is conservative, because a false refusal teaches people to confirm every warning:
a region is compatible with a study type when it is that type or a neighbour that routinely
appears on its views (a hand on a wrist film, the elbow on a forearm film), and a field
conflicts with the study only when it names regions and none of them is compatible.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

ELBOW = "XR_ELBOW"
FINGER = "XR_FINGER"
FOREARM = "XR_FOREARM"
HAND = "XR_HAND"
HUMERUS = "XR_HUMERUS"
SHOULDER = "XR_SHOULDER"
WRIST = "XR_WRIST"
MURA_TYPES = (ELBOW, FINGER, FOREARM, HAND, HUMERUS, SHOULDER, WRIST)

# Regions that share views with each MURA type: no mismatch between them.
NEIGHBOURS: dict[str, frozenset[str]] = {
    FINGER: frozenset({FINGER, HAND}),
    HAND: frozenset({HAND, FINGER, WRIST}),
    WRIST: frozenset({WRIST, HAND, FOREARM}),
    FOREARM: frozenset({FOREARM, WRIST, ELBOW}),
    ELBOW: frozenset({ELBOW, FOREARM, HUMERUS}),
    HUMERUS: frozenset({HUMERUS, ELBOW, SHOULDER}),
    SHOULDER: frozenset({SHOULDER, HUMERUS}),
}

# Words and phrases (upper case, words separated by one space) → a MURA type.
_MURA_TERMS: dict[str, str] = {
    "ELBOW": ELBOW,
    "ELBOWS": ELBOW,
    "OLECRANON": ELBOW,
    "RADIAL HEAD": ELBOW,
    "FINGER": FINGER,
    "FINGERS": FINGER,
    "THUMB": FINGER,
    "THUMBS": FINGER,
    "FOREARM": FOREARM,
    "FOREARMS": FOREARM,
    "RADIUS": FOREARM,
    "ULNA": FOREARM,
    "RADIUS ULNA": FOREARM,
    "HAND": HAND,
    "HANDS": HAND,
    "METACARPAL": HAND,
    "METACARPALS": HAND,
    "HUMERUS": HUMERUS,
    "HUMERAL HEAD": SHOULDER,
    "UPPER ARM": HUMERUS,
    "UPPERARM": HUMERUS,
    "SHOULDER": SHOULDER,
    "SHOULDERS": SHOULDER,
    "CLAVICLE": SHOULDER,
    "SCAPULA": SHOULDER,
    "ACJOINT": SHOULDER,
    "AC JOINT": SHOULDER,
    "ACROMIOCLAVICULAR": SHOULDER,
    "WRIST": WRIST,
    "WRISTS": WRIST,
    "SCAPHOID": WRIST,
    "CARPUS": WRIST,
}

# Words and phrases → another body part (the name shown to people). Not exhaustive: a term
# missing here reads as "unknown", which never refuses a file.
_OTHER_TERMS: dict[str, str] = {
    "HIP": "HIP",
    "HIPS": "HIP",
    "PELVIS": "PELVIS",
    "PELVIC": "PELVIS",
    "SACRUM": "SACRUM",
    "SSPINE": "SACRUM",
    "SACROILIAC": "SACRUM",
    "COCCYX": "COCCYX",
    "FEMUR": "FEMUR",
    "FEMORAL": "FEMUR",
    "THIGH": "THIGH",
    "KNEE": "KNEE",
    "KNEES": "KNEE",
    "PATELLA": "KNEE",
    "TIBIA": "TIBIA",
    "TIBIAL": "TIBIA",
    "FIBULA": "FIBULA",
    "TIB FIB": "TIBIA",
    "LEG": "LEG",
    "LOWER LEG": "LEG",
    "LOWER LIMB": "LOWER LIMB",
    "LOWER EXTREMITY": "LOWER LIMB",
    "LOWEREXTREMITY": "LOWER LIMB",
    "ANKLE": "ANKLE",
    "ANKLES": "ANKLE",
    "FOOT": "FOOT",
    "FEET": "FOOT",
    "TOE": "TOE",
    "TOES": "TOE",
    "CALCANEUS": "FOOT",
    "HEEL": "FOOT",
    "CSPINE": "CSPINE",
    "C SPINE": "CSPINE",
    "CERVICAL": "CSPINE",
    "TSPINE": "TSPINE",
    "T SPINE": "TSPINE",
    "THORACIC SPINE": "TSPINE",
    "LSPINE": "LSPINE",
    "L SPINE": "LSPINE",
    "LUMBAR": "LSPINE",
    "SPINE": "SPINE",
    "WHOLE SPINE": "SPINE",
    "CHEST": "CHEST",
    "THORAX": "CHEST",
    "LUNG": "CHEST",
    "LUNGS": "CHEST",
    "RIB": "RIBS",
    "RIBS": "RIBS",
    "STERNUM": "STERNUM",
    "ABDOMEN": "ABDOMEN",
    "ABDOMINAL": "ABDOMEN",
    "KUB": "ABDOMEN",
    "SKULL": "SKULL",
    # Not "HEAD" or "NECK": radial head, humeral head, surgical neck are upper-limb words.
    "FACIAL": "FACE",
    "MANDIBLE": "MANDIBLE",
    "SINUS": "SINUS",
    "SINUSES": "SINUS",
    "BREAST": "BREAST",
    "DENTAL": "TEETH",
    "TEETH": "TEETH",
}

# Generic or unknown: named so that the reading can say it saw them (never a mismatch).
_GENERIC_TERMS = frozenset(
    {"EXTREMITY", "EXTREMITIES", "UPPER LIMB", "UPPER EXTREMITY", "UPPEREXTREMITY", "ARM", "ARMS", "LIMB"}
)

# Longest phrases first, so that "UPPER ARM" wins over "ARM" and "TIB FIB" over nothing.
_ALL_TERMS = sorted({*_MURA_TERMS, *_OTHER_TERMS, *_GENERIC_TERMS}, key=lambda t: (-len(t.split()), -len(t)))
_TERM_PATTERN = re.compile(r"\b(?:" + "|".join(re.escape(t) for t in _ALL_TERMS) + r")\b")

FIELD_LABELS = {
    "body_part_examined": "BodyPartExamined",
    "study_description": "StudyDescription",
    "series_description": "SeriesDescription",
}


def _words(text: str) -> str:
    # Letters and digits only, one space between words: "C-Spine" → "C SPINE", "R_HAND" → "R HAND".
    return " ".join(re.sub(r"[^0-9A-Z]+", " ", (text or "").upper()).split())


@dataclass(frozen=True)
class Region:
    """One body part a header field names: a MURA type or another part; ``term`` is the word seen."""

    term: str
    mura_type: str | None = None
    other: str | None = None

    @property
    def name(self) -> str:
        """What to show: the MURA type, else the other part's name."""
        return self.mura_type or self.other or self.term


def regions_in(text: str | None) -> tuple[Region, ...]:
    """Every body part named in ``text`` (whole words and known phrases), in order, without repeats."""
    found: list[Region] = []
    seen: set[str] = set()
    for match in _TERM_PATTERN.finditer(_words(text or "")):
        term = match.group(0)
        if term in _GENERIC_TERMS:
            continue
        region = Region(term=term, mura_type=_MURA_TERMS.get(term), other=_OTHER_TERMS.get(term))
        if region.name not in seen:
            seen.add(region.name)
            found.append(region)
    return tuple(found)


def mura_type_of(body_part_examined: str | None) -> str | None:
    """The MURA type a BodyPartExamined value names, when it names exactly one (else None)."""
    regions = regions_in(body_part_examined)
    types = {region.mura_type for region in regions}
    if len(regions) == 1 and None not in types:
        return regions[0].mura_type
    return None


@dataclass(frozen=True)
class BodyPartConflict:
    """A header field that names only body parts incompatible with the study's type."""

    field: str  # body_part_examined, study_description or series_description
    value: str  # the field's text as written in the file
    regions: tuple[Region, ...]

    @property
    def tag(self) -> str:
        return FIELD_LABELS[self.field]

    def describe(self) -> str:
        """E.g. ``StudyDescription "HIP JOINT" (HIP)``."""
        names = ", ".join(region.name for region in self.regions)
        return f'{self.tag} "{self.value}" ({names})'


def body_part_conflicts(study_type: str, header: dict[str, str]) -> list[BodyPartConflict]:
    """The header fields (of ``FIELD_LABELS``) that name another body part than ``study_type``.

    ``header`` maps field names to their text; empty, generic or unknown fields never conflict,
    and a field that names any region compatible with the study (itself or a neighbour) does not.
    """
    compatible = NEIGHBOURS.get(study_type, frozenset({study_type}))
    conflicts = []
    for field in FIELD_LABELS:
        value = (header.get(field) or "").strip()
        regions = regions_in(value)
        if regions and not any(region.mura_type in compatible for region in regions):
            conflicts.append(BodyPartConflict(field=field, value=value, regions=regions))
    return conflicts
