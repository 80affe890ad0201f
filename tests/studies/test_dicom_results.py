"""What goes to the PACS: the Structured Report's content tree and the heat-map secondary captures.

Built by the real path (plan in the result's transaction, build in the send task's service) from
small DICOM radiographs; the files read back with pydicom are what a PACS would receive.
"""

import io
import tomllib

import numpy as np
import pydicom
import pytest
from django.core.files.storage import default_storage
from pydicom.uid import ComprehensiveSRStorage, SecondaryCaptureImageStorage

from studies.dicom_results.secondary_capture import (
    DEMO_BAND,
    CaptureText,
    annotated_pixels,
    fitted,
    rgb_from_png,
)
from studies.dicom_results.sources import read_source_header
from studies.dicom_results.sr import (
    SOFTWARE_VERSION,
    Placement,
    ResultFacts,
    build_result_sr,
)
from studies.models import DicomExport, DicomExportTrigger, Review
from studies.services.pacs_exports import dicom_export_build
from studies.services.pacs_sends import pacs_exports_plan
from tests.conftest import REPO_ROOT
from tests.factories import UserFactory
from tests.studies.dicom_samples import HEIGHT, WIDTH, dicom_study, overlay_png

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def one_destination(settings):
    settings.MSKDETECT_DICOM_DESTINATIONS = ["PACS@127.0.0.1:11999"]
    settings.MSKDETECT_STOWRS_DESTINATION = ""
    settings.MSKDETECT_SEND_DEMO_RESULTS = True


def built(export: DicomExport) -> dict[str, list[pydicom.Dataset]]:
    export = dicom_export_build(export_id=export.id)
    found: dict[str, list[pydicom.Dataset]] = {"sr": [], "sc": []}
    for item in export.instances:
        with default_storage.open(item["file"], "rb") as stored:
            found[item["kind"]].append(pydicom.dcmread(io.BytesIO(stored.read())))
    return found


def content_items(dataset) -> list:
    """Every content item of an SR, depth first."""
    items = []
    for item in dataset.get("ContentSequence", []):
        items.append(item)
        items.extend(content_items(item))
    return items


def named(dataset, meaning: str) -> list:
    return [i for i in content_items(dataset) if i.ConceptNameCodeSequence[0].CodeMeaning == meaning]


def code_value(dataset, meaning: str) -> str:
    (item,) = named(dataset, meaning)
    return item.ConceptCodeSequence[0].CodeMeaning


def number(dataset, meaning: str) -> float:
    (item,) = named(dataset, meaning)
    return float(item.MeasuredValueSequence[0].NumericValue)


def test_result_sr_says_finding_probability_threshold_model_and_references_every_source_in_the_study():
    study, source_uids = dicom_study(images=2, probability=0.8)
    export = pacs_exports_plan(study=study, trigger=DicomExportTrigger.RESULT)
    files = built(export)
    (sr,) = files["sr"]
    with default_storage.open(study.images.first().file.name, "rb") as stored:
        source = pydicom.dcmread(stored)

    assert sr.SOPClassUID == ComprehensiveSRStorage and sr.Modality == "SR"
    assert sr.StudyInstanceUID == source.StudyInstanceUID  # the source study, in the PACS
    assert sr.SeriesInstanceUID != source.SeriesInstanceUID and sr.SOPInstanceUID not in source_uids
    assert (sr.PatientID, str(sr.PatientName), sr.PatientBirthDate) == (
        source.PatientID,
        "Doe^Jane",
        "19800101",
    )
    assert sr.AccessionNumber == "ACC-PACS-1"
    assert (sr.Manufacturer, sr.SoftwareVersions) == ("MSK-Detect", SOFTWARE_VERSION)
    assert sr.CompletionFlag == "COMPLETE" and sr.PreliminaryFlag == "PRELIMINARY"
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0]
    assert evidence.StudyInstanceUID == source.StudyInstanceUID
    referenced = {
        (item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID)
        for series in evidence.ReferencedSeriesSequence
        for item in series.ReferencedSOPSequence
    }
    assert referenced == {(source.SOPClassUID, uid) for uid in source_uids}
    in_content = {
        i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for i in named(sr, "Source of Measurement")
    }
    assert in_content == set(source_uids)
    assert len(named(sr, "Image Library Group")) == 1

    assert code_value(sr, "Finding") == "Abnormal"
    assert number(sr, "Probability of abnormality") == pytest.approx(0.8)
    assert number(sr, "Threshold Value") == pytest.approx(0.5)
    assert not named(sr, "Indeterminate band lower bound")
    assert code_value(sr, "Demonstration model, not for clinical use") == "No"
    assert named(sr, "Algorithm Name")[0].TextValue == "HAND"
    assert named(sr, "Algorithm Version")[0].TextValue == "a" * 64
    assert not named(sr, "Radiologist decision")
    assert "DEMO" not in sr.SeriesDescription


def test_review_sr_supersedes_the_result_sr_and_carries_the_decision_and_final_label():
    study, _ = dicom_study(images=1, probability=0.8)
    (first,) = built(pacs_exports_plan(study=study, trigger=DicomExportTrigger.RESULT))["sr"]
    radiologist = UserFactory(username="anna", role="radiologist", first_name="Anna", last_name="Smith")
    review = Review.objects.create(
        study=study,
        radiologist=radiologist,
        decision="override",
        final_label="normal",
        model_label="abnormal",
        model_version="a" * 64,
        comment="Normal variant.",
    )
    files = built(pacs_exports_plan(study=study, trigger=DicomExportTrigger.REVIEW, review=review))

    (second,) = files["sr"]
    assert files["sc"] == []  # heat maps went with the result, once
    assert second.SOPInstanceUID != first.SOPInstanceUID
    assert (second.SeriesInstanceUID, second.InstanceNumber) == (first.SeriesInstanceUID, 2)
    predecessor = second.PredecessorDocumentsSequence[0]
    assert predecessor.StudyInstanceUID == first.StudyInstanceUID
    assert predecessor.ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == (
        first.SOPInstanceUID
    )
    assert code_value(second, "Finding") == "Abnormal"  # what the model said
    assert code_value(second, "Radiologist decision") == "Overrode the model's result"
    assert code_value(second, "Final label") == "Normal"
    assert str(named(second, "Person Observer Name")[0].PersonName) == "Smith^Anna"
    assert second.PreliminaryFlag == "FINAL"


def test_indeterminate_demo_result_reports_its_band_and_the_demo_flag():
    study, _ = dicom_study(images=1, probability=0.55, indeterminate=(0.4, 0.6), demo=True)
    (sr,) = built(pacs_exports_plan(study=study, trigger=DicomExportTrigger.RESULT))["sr"]
    assert code_value(sr, "Finding") == "Indeterminate"
    assert number(sr, "Indeterminate band lower bound") == pytest.approx(0.4)
    assert number(sr, "Indeterminate band upper bound") == pytest.approx(0.6)
    assert code_value(sr, "Demonstration model, not for clinical use") == "Yes"
    assert "DEMO" in sr.SeriesDescription


def test_heat_map_capture_shows_the_stored_overlay_below_the_burned_in_text_and_references_its_source():
    study, source_uids = dicom_study(images=2)
    files = built(pacs_exports_plan(study=study, trigger=DicomExportTrigger.RESULT))
    captures = sorted(files["sc"], key=lambda capture: capture.InstanceNumber)
    assert len(captures) == 2
    for index, capture in enumerate(captures):
        assert capture.SOPClassUID == SecondaryCaptureImageStorage
        assert capture.StudyInstanceUID == files["sr"][0].StudyInstanceUID
        assert capture.BurnedInAnnotation == "YES"
        assert capture.SourceImageSequence[0].ReferencedSOPInstanceUID == source_uids[index]
        assert capture.PhotometricInterpretation == "RGB" and capture.Columns == WIDTH
        assert capture.PatientOrientation == ["P", "F"] and capture.ImageLaterality == "R"
        pixels = capture.pixel_array
        band = pixels.shape[0] - HEIGHT  # the text band above the radiograph
        assert band > 0
        # Below the band: the overlay exactly as the worker stored it, hot area included.
        np.testing.assert_array_equal(pixels[band:], rgb_from_png(overlay_png(seed=index)))
        assert tuple(pixels[band + 30, 45]) == (230, 40, 20)
        # The band holds white text on dark: the result is burned in.
        assert (pixels[:band] == 255).all(axis=2).sum() > 20
    assert captures[0].SeriesInstanceUID != files["sr"][0].SeriesInstanceUID


def test_demo_notice_is_burned_into_the_pixels_top_and_bottom():
    picture = rgb_from_png(overlay_png())
    facts = dict(
        model_name="HAND",
        model_version="b" * 64,
        image_probability=0.91,
        study_label="abnormal",
        study_probability=0.9,
        threshold=0.5,
        indeterminate_low=None,
        indeterminate_high=None,
    )
    clinical = annotated_pixels(picture, CaptureText(**facts, demo=False))
    demo = annotated_pixels(picture, CaptureText(**facts, demo=True))
    red = (demo == DEMO_BAND).all(axis=2)
    assert not (clinical == DEMO_BAND).all(axis=2).any()
    rows_with_red = np.flatnonzero(red.any(axis=1))
    assert rows_with_red.min() == 0 and rows_with_red.max() == demo.shape[0] - 1  # a band at each end
    # Inside the red bands the notice is written in white.
    assert ((demo[rows_with_red] == 255).all(axis=2)).sum() > 50
    assert demo.shape[0] > clinical.shape[0]


def test_a_large_radiograph_is_scaled_down_with_its_aspect_kept():
    tall = np.zeros((2500, 2048, 3), dtype=np.uint8)
    assert fitted(tall).shape == (1280, 1049, 3)
    small = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
    assert fitted(small) is small


def test_image_without_heat_map_gets_the_radiograph_and_the_reason_in_text():
    study, _ = dicom_study(images=1, heatmaps=False)
    (capture,) = built(pacs_exports_plan(study=study, trigger=DicomExportTrigger.RESULT))["sc"]
    pixels = capture.pixel_array
    radiograph = pixels[pixels.shape[0] - HEIGHT :]
    assert (radiograph[:, :, 0] == radiograph[:, :, 1]).all()  # gray: no heat map drawn


def test_source_without_orientation_or_type2_patient_attributes_still_gives_a_valid_report():
    study, uids = dicom_study(images=1, orientation=False, type2_patient_attributes=False)
    files = built(pacs_exports_plan(study=study, trigger=DicomExportTrigger.RESULT))
    (sr,) = files["sr"]
    assert sr.PatientName == "" and sr.PatientBirthDate == ""
    assert named(sr, "Source of Measurement")[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == uids[0]
    assert files["sc"][0].PatientOrientation == ""


def test_report_from_a_real_computed_radiography_header(shared_data):
    with open(shared_data / "dicom" / "NM_Kakadu44_SOTmarkerincons.dcm", "rb") as stream:
        header = read_source_header(stream, name="hand")
    facts = ResultFacts(
        label="normal",
        abnormal_probability=0.12,
        threshold=0.5,
        indeterminate_low=None,
        indeterminate_high=None,
        model_name="HAND",
        model_version="c" * 64,
        demo=False,
    )
    sr = build_result_sr(
        sources=[header],
        result=facts,
        review=None,
        placement=Placement("1.2.3.4", "1.2.3.5", 1),
        device_uid="1.2.3.6",
    )
    assert sr.StudyInstanceUID == header.StudyInstanceUID
    assert code_value(sr, "Finding") == "Normal"
    assert number(named(sr, "Source")[0], "Pixel Data Rows") == 2500


def test_software_version_is_the_projects():
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert project["project"]["version"] == SOFTWARE_VERSION
