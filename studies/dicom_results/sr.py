"""The result as a DICOM Comprehensive SR: a TID 1500 measurement report in the source study.

Content tree (dsrdump shows it this way):

    Imaging Measurement Report (TID 1500)
      Language, observer: the MSK-Detect device (and, for a review, the radiologist)
      Procedure reported: Plain radiography
      Image Library: every source image
      Imaging Measurements
        Measurement Group (TID 1501), tracking id "MSK-Detect result"
          Algorithm: model name, version (sha256 of the weight file), threshold, band, demo
          Probability of abnormality, Threshold Value, the indeterminate band's bounds
          Finding = Abnormal | Normal | Indeterminate
          Demonstration model, not for clinical use = Yes | No
          Radiologist decision = Confirmed | Overridden | Ruled, Final label  (review only)
          Source: every source image

Standard codes where DICOM and SNOMED CT have them; the product's own concepts use the private
coding scheme 99MSKD, declared in the Coding Scheme Identification Sequence.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

MANUFACTURER = "MSK-Detect"
# The product's version, in the header of everything it sends (SoftwareVersions). Kept equal to
# pyproject.toml's by tests/studies/test_dicom_results.py (the images do not ship pyproject.toml).
SOFTWARE_VERSION = "0.1.0"
SR_SERIES_NUMBER = 9901
SC_SERIES_NUMBER = 9902
DEMO_NOTICE = "DEMO MODEL — NOT FOR CLINICAL USE"

PRIVATE_SCHEME = "99MSKD"
_CODING_SCHEME = CodingSchemeIdentificationItem(
    designator=PRIVATE_SCHEME,
    name="MSK-Detect concepts",
    responsible_organization=MANUFACTURER,
)


def _private(value: str, meaning: str) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(value=value, scheme_designator=PRIVATE_SCHEME, meaning=meaning)


PROBABILITY_OF_ABNORMALITY = _private("PABN", "Probability of abnormality")
BAND_LOW = _private("BANDLO", "Indeterminate band lower bound")
BAND_HIGH = _private("BANDHI", "Indeterminate band upper bound")
DEMO_MODEL = _private("DEMO", "Demonstration model, not for clinical use")
RADIOLOGIST_DECISION = _private("RADDEC", "Radiologist decision")
FINAL_LABEL = _private("FINAL", "Final label")
DECISIONS = {
    "confirm": _private("CONFIRM", "Confirmed the model's result"),
    "override": _private("OVERRIDE", "Overrode the model's result"),
    "rule": _private("RULE", "Ruled on an indeterminate result"),
}
LABELS = {
    "abnormal": codes.SCT.Abnormal,
    "normal": codes.SCT.Normal,
    "indeterminate": hd.sr.CodedConcept(value="82334004", scheme_designator="SCT", meaning="Indeterminate"),
}
SOURCE = hd.sr.CodedConcept(value="260753009", scheme_designator="SCT", meaning="Source")
MODALITY_MEANINGS = {
    "CR": "Computed Radiography",
    "DX": "Digital Radiography",
    "RG": "Radiographic imaging",
    "PX": "Panoramic X-Ray",
    "IO": "Intra-oral Radiography",
    "OT": "Other",
}
CONTAINS = hd.sr.RelationshipTypeValues.CONTAINS
ACQUISITION_CONTEXT = hd.sr.RelationshipTypeValues.HAS_ACQ_CONTEXT
PLAIN_RADIOGRAPHY = hd.sr.CodedConcept(
    value="168537006", scheme_designator="SCT", meaning="Plain radiography"
)


@dataclass(frozen=True)
class ResultFacts:
    """The model's study result as the SR reports it (a snapshot, plain values)."""

    label: str  # abnormal, normal or indeterminate
    abnormal_probability: float
    threshold: float
    indeterminate_low: float | None
    indeterminate_high: float | None
    model_name: str
    model_version: str
    demo: bool


@dataclass(frozen=True)
class ReviewFacts:
    """A radiologist's ruling on the result."""

    decision: str  # confirm, override or rule
    final_label: str  # abnormal or normal
    radiologist_name: str  # DICOM PN, e.g. "Smith^Anna"
    radiologist_login: str


@dataclass(frozen=True)
class Placement:
    """Where a new instance goes: its series and its own UIDs and numbers."""

    series_instance_uid: str
    sop_instance_uid: str
    instance_number: int


@dataclass(frozen=True)
class PreviousReport:
    """An earlier SR of the same study that this one supersedes."""

    study_instance_uid: str
    series_instance_uid: str
    sop_class_uid: str
    sop_instance_uid: str


def build_result_sr(
    *,
    sources: Sequence[Dataset],
    result: ResultFacts,
    review: ReviewFacts | None,
    placement: Placement,
    device_uid: str,
    previous: Sequence[PreviousReport] = (),
) -> hd.sr.ComprehensiveSR:
    """The SR for one result (and its review, when given), in the first source's study.

    `sources` are the source images' headers (every one is referenced, in the evidence and in the
    content); `previous` are the SRs this one supersedes (PredecessorDocumentsSequence).
    """
    if not sources:
        raise ValueError("an SR needs at least one source image")
    report = hd.sr.MeasurementReport(
        observation_context=_observation_context(review=review, device_uid=device_uid, result=result),
        procedure_reported=PLAIN_RADIOGRAPHY,
        imaging_measurements=[_measurement_group(sources=sources, result=result, review=review)],
    )
    # TID 1600 right before "Imaging Measurements" (TID 1500's order). Built here, not by
    # highdicom's ImageLibrary, which needs PatientOrientation and ImagerPixelSpacing on every
    # radiograph: both are optional in CR and DX headers, and often absent.
    root_items = report[0].ContentSequence
    root_items.insert(len(root_items) - 1, _image_library(sources))
    sr = hd.sr.ComprehensiveSR(
        evidence=list(sources),
        content=report[0],
        series_instance_uid=placement.series_instance_uid,
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=placement.sop_instance_uid,
        instance_number=placement.instance_number,
        manufacturer=MANUFACTURER,
        is_complete=True,
        # The model's result is preliminary until a radiologist rules on it.
        is_final=review is not None,
        previous_versions=[_previous_dataset(item) for item in previous] or None,
        coding_schemes=[_CODING_SCHEME],
        series_description=series_description(kind="SR", demo=result.demo),
        manufacturer_model_name=MANUFACTURER,
        software_versions=SOFTWARE_VERSION,
    )
    return sr


def series_description(*, kind: str, demo: bool) -> str:
    """SeriesDescription (at most 64 characters): what the series holds, and DEMO when it is one."""
    what = "AI result (SR)" if kind == "SR" else "AI heat maps"
    return f"MSK-Detect {what}" + (" DEMO - NOT FOR CLINICAL USE" if demo else "")


def _observation_context(
    *, review: ReviewFacts | None, device_uid: str, result: ResultFacts
) -> hd.sr.ObservationContext:
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=device_uid,
            name=MANUFACTURER,
            manufacturer_name=MANUFACTURER,
            model_name=f"{result.model_name}"[:64],
        ),
    )
    person = None
    if review is not None:
        person = hd.sr.ObserverContext(
            observer_type=codes.DCM.Person,
            observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(
                name=review.radiologist_name, login_name=review.radiologist_login[:64] or None
            ),
        )
    return hd.sr.ObservationContext(observer_person_context=person, observer_device_context=device)


def _measurement_group(
    *, sources: Sequence[Dataset], result: ResultFacts, review: ReviewFacts | None
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    no_units = codes.UCUM.NoUnits
    algorithm = hd.sr.AlgorithmIdentification(
        name=result.model_name[:64],
        version=result.model_version[:64],
        parameters=_algorithm_parameters(result),
        manufacturer=MANUFACTURER,
    )
    measurements = [
        hd.sr.Measurement(
            name=PROBABILITY_OF_ABNORMALITY,
            value=round(result.abnormal_probability, 6),
            unit=no_units,
        ),
        hd.sr.Measurement(name=codes.DCM.ThresholdValue, value=result.threshold, unit=no_units),
    ]
    if result.indeterminate_low is not None and result.indeterminate_high is not None:
        measurements += [
            hd.sr.Measurement(name=BAND_LOW, value=result.indeterminate_low, unit=no_units),
            hd.sr.Measurement(name=BAND_HIGH, value=result.indeterminate_high, unit=no_units),
        ]
    evaluations = [
        hd.sr.QualitativeEvaluation(name=codes.DCM.Finding, value=LABELS[result.label]),
        hd.sr.QualitativeEvaluation(name=DEMO_MODEL, value=codes.SCT.Yes if result.demo else codes.SCT.No),
    ]
    if review is not None:
        evaluations += [
            hd.sr.QualitativeEvaluation(name=RADIOLOGIST_DECISION, value=DECISIONS[review.decision]),
            hd.sr.QualitativeEvaluation(name=FINAL_LABEL, value=LABELS[review.final_label]),
        ]
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="MSK-Detect result"),
        algorithm_id=algorithm,
        measurements=measurements,
        qualitative_evaluations=evaluations,
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source) for source in sources],
    )


def _image_library(sources: Sequence[Dataset]) -> hd.sr.ContainerContentItem:
    entries = []
    for source in sources:
        entry = hd.sr.ImageContentItem(
            name=SOURCE,
            referenced_sop_class_uid=source.SOPClassUID,
            referenced_sop_instance_uid=source.SOPInstanceUID,
            relationship_type=CONTAINS,
        )
        entry.ContentSequence = hd.sr.ContentSequence(_library_descriptors(source))
        entries.append(entry)
    group = hd.sr.ContainerContentItem(name=codes.DCM.ImageLibraryGroup, relationship_type=CONTAINS)
    group.ContentSequence = hd.sr.ContentSequence(entries)
    library = hd.sr.ContainerContentItem(name=codes.DCM.ImageLibrary, relationship_type=CONTAINS)
    library.ContentSequence = hd.sr.ContentSequence([group])
    return library


def _library_descriptors(source: Dataset) -> list[hd.sr.ContentItem]:
    """TID 1602/1603 descriptors: modality and size always; orientation and spacing when known."""
    modality = str(source.get("Modality", "") or "OT")
    pixels = hd.sr.CodedConcept(value="{pixels}", scheme_designator="UCUM", meaning="Pixels")
    descriptors: list[hd.sr.ContentItem] = [
        hd.sr.CodeContentItem(
            name=codes.DCM.Modality,
            value=hd.sr.CodedConcept(
                value=modality, scheme_designator="DCM", meaning=MODALITY_MEANINGS.get(modality, modality)
            ),
            relationship_type=ACQUISITION_CONTEXT,
        )
    ]
    for name, keyword in ((codes.DCM.PixelDataRows, "Rows"), (codes.DCM.PixelDataColumns, "Columns")):
        if source.get(keyword):
            descriptors.append(
                hd.sr.NumContentItem(
                    name=name,
                    value=int(source.get(keyword)),
                    unit=pixels,
                    relationship_type=ACQUISITION_CONTEXT,
                )
            )
    orientation = list(source.get("PatientOrientation") or [])
    if len(orientation) == 2 and all(orientation):
        for name, value in zip(
            (codes.DCM.PatientOrientationRow, codes.DCM.PatientOrientationColumn), orientation, strict=True
        ):
            descriptors.append(
                hd.sr.TextContentItem(name=name, value=str(value), relationship_type=ACQUISITION_CONTEXT)
            )
    spacing = list(source.get("ImagerPixelSpacing") or [])
    if len(spacing) == 2:
        for name, value in (
            (codes.DCM.HorizontalPixelSpacing, spacing[1]),
            (codes.DCM.VerticalPixelSpacing, spacing[0]),
        ):
            descriptors.append(
                hd.sr.NumContentItem(
                    name=name,
                    value=float(value),
                    unit=codes.UCUM.Millimeter,
                    relationship_type=ACQUISITION_CONTEXT,
                )
            )
    return descriptors


def _algorithm_parameters(result: ResultFacts) -> list[str]:
    parameters = [f"threshold={result.threshold:g}"]
    if result.indeterminate_low is not None and result.indeterminate_high is not None:
        parameters.append(f"indeterminate band={result.indeterminate_low:g} to {result.indeterminate_high:g}")
    parameters.append(f"demo={'yes' if result.demo else 'no'}")
    return parameters


def _previous_dataset(item: PreviousReport) -> Dataset:
    previous = Dataset()
    previous.StudyInstanceUID = item.study_instance_uid
    previous.SeriesInstanceUID = item.series_instance_uid
    previous.SOPClassUID = item.sop_class_uid
    previous.SOPInstanceUID = item.sop_instance_uid
    return previous


def person_name(*, first_name: str, last_name: str, username: str) -> str:
    """A DICOM PN (FAMILY^GIVEN) for a user; the login name alone when the account has no name."""
    family, given = last_name.strip(), first_name.strip()
    if family or given:
        return f"{family}^{given}".replace("\\", " ")[:64]
    return f"{username}^".replace("\\", " ")[:64]
