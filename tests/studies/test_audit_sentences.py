"""Audit events read as sentences with links: the study page's trail and the admin's audit log."""

import re
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from django.utils.html import conditional_escape

from studies.audit import audit_record
from studies.audit_sentences import BUILDERS, describe
from studies.models import AuditEvent, ImageStatus, Study
from studies.services import radiographs_add, review_create, study_view_record
from studies.services.predictions import ImageOutcome, ModelRun, predictions_record
from tests.conftest import REPO_ROOT, SHARED_DATA
from tests.factories import PatientFactory, RadiographFactory, StudyFactory, StudyResultFactory, UserFactory

pytestmark = pytest.mark.django_db

WRIST_PNG = SHARED_DATA / "png16" / "1068_1253423501_03_WRI-L2_F010.png"
HAND_JPEG = SHARED_DATA / "jpeg" / "IMG0003301.jpg"
VERSION = "1a2b3c4d" + "0" * 56


def _sentence(event: AuditEvent, *, on_study_page: bool = False) -> str:
    return str(describe([event], on_study_page=on_study_page)[0].sentence)


def _html(event: AuditEvent, *, on_study_page: bool = False) -> str:
    return str(conditional_escape(describe([event], on_study_page=on_study_page)[0].sentence))


def _latest(action: str) -> AuditEvent:
    return AuditEvent.objects.filter(action=action).latest("id")


@pytest.fixture
def ada():
    return UserFactory(username="ada", first_name="Ada", last_name="Lovelace", role="radiologist")


@pytest.fixture
def sam():
    return UserFactory(username="sam", first_name="Sam", last_name="Staff", role="staff")


def test_a_confirmation_names_the_radiologist_and_the_models_label(ada):
    study = StudyResultFactory(abnormal_probability=0.91, study__accession_number="ACC-7").study
    review_create(study=study, radiologist=ada, decision="confirm", final_label=None, comment="")
    event = _latest("study.reviewed")
    assert _sentence(event, on_study_page=True) == "Ada Lovelace confirmed the model's result Abnormal"
    # Off the study page (the admin's log) the study is named, with a link to its page.
    assert _sentence(event) == "Ada Lovelace confirmed the model's result Abnormal on study ACC-7"
    assert f'<a href="{reverse("study_detail", args=[study.pk])}">ACC-7</a>' in _html(event)


def test_an_override_and_a_ruling_say_what_the_final_label_is(ada):
    study = StudyResultFactory(abnormal_probability=0.91).study
    review_create(study=study, radiologist=ada, decision="override", final_label="normal", comment="Foramen")
    assert _sentence(_latest("study.reviewed"), on_study_page=True) == (
        "Ada Lovelace overrode the model's result Abnormal: final label Normal"
    )
    unsure = StudyResultFactory(abnormal_probability=0.5, indeterminate=(0.35, 0.65)).study
    review_create(study=unsure, radiologist=ada, decision="rule", final_label="abnormal", comment="")
    assert _sentence(_latest("study.reviewed"), on_study_page=True) == (
        "Ada Lovelace ruled on the indeterminate result: final label Abnormal"
    )


def test_uploads_name_the_image_as_the_study_page_numbers_it_with_a_link_to_its_viewer(sam):
    study = StudyFactory(accession_number="ACC-9")
    _, second = radiographs_add(
        study=study,
        files=[
            SimpleUploadedFile("wrist.png", WRIST_PNG.read_bytes()),
            SimpleUploadedFile("hand.jpg", HAND_JPEG.read_bytes()),
        ],
        actor=sam,
    )
    events = describe(AuditEvent.objects.filter(action="image.uploaded").order_by("id"), on_study_page=True)
    first_text = str(events[0].sentence)
    assert re.fullmatch(
        r"Sam Staff uploaded image 1 \(wrist\.png\): PNG, 444 \u00d7 614 px, \d+ kB", first_text
    )
    assert str(events[1].sentence).startswith("Sam Staff uploaded image 2 (hand.jpg): JPEG, ")
    link = f'<a href="{reverse("study_detail", args=[study.pk])}#viewer-{second.pk}">image 2 (hand.jpg)</a>'
    assert link in str(conditional_escape(events[1].sentence))
    assert _sentence(events[0]).endswith(" to study ACC-9")


def test_the_workers_prediction_names_each_image_its_label_and_probability():
    study = StudyFactory(status=Study.Status.PROCESSING)
    images = [RadiographFactory(study=study, status=ImageStatus.PROCESSING) for _ in range(2)]
    run = ModelRun(
        model_name="wrist-demo",
        body_part=study.body_part,
        model_version=VERSION,
        threshold=0.5,
        demo=True,
        preprocessing="seed",
        preprocess_ms=1.0,
        inference_ms=2.0,
    )
    predictions_record(
        study_id=study.pk,
        run=run,
        outcomes=[
            ImageOutcome(radiograph_id=images[0].pk, abnormal_probability=0.87, label="abnormal"),
            ImageOutcome(radiograph_id=images[1].pk, abnormal_probability=0.12, label="normal"),
        ],
    )
    assert _sentence(_latest("inference.completed"), on_study_page=True) == (
        "The worker predicted image 1: Abnormal, P 0.87; image 2: Normal, P 0.12; study result Normal,"
        " P 0.49 (model wrist-demo, version 1a2b3c4d; demo model — not for clinical use)"
    )
    # Off the study page, which study comes first.
    assert _sentence(_latest("inference.completed")).startswith(
        f"The worker predicted study {study.accession_number}: image 1: Abnormal, P 0.87; "
    )


def test_a_confirmed_header_mismatch_says_what_differed_and_why_and_escapes_the_reason(sam):
    image = RadiographFactory(study=StudyFactory(), original_name="hip.dcm")
    audit_record(
        actor=sam,
        action="image.mismatch_confirmed",
        obj=image,
        study=image.study,
        details={
            "mismatches": [
                {
                    "check": "patient_id",
                    "label": "PatientID",
                    "file_value": "10RG2",
                    "study_value": "MRN-0042",
                    "message": 'PatientID "10RG2" is not the study\'s MRN "MRN-0042"',
                }
            ],
            "reason": "Outside film <script>alert(1)</script>",
        },
    )
    event = _latest("image.mismatch_confirmed")
    assert _sentence(event, on_study_page=True) == (
        "Sam Staff confirmed a header mismatch on image 1 (hip.dcm): "
        'PatientID "10RG2" is not the study\'s MRN "MRN-0042"'
        " — reason: “Outside film <script>alert(1)</script>”"
    )
    html = _html(event, on_study_page=True)
    assert "<script>" not in html and "&lt;script&gt;" in html


@pytest.mark.parametrize(
    ("action", "details", "expected"),
    [
        ("study.marked_complete", {"expected_images": 4, "images_received": 2},
         "Sam Staff marked study ACC-1 complete with 2 of 4 expected images"),
        ("study.requeued", {"images": [], "stalled": True},
         "Sam Staff sent no image for analysis again (the job had stalled)"),
        ("inference.failed", {"images": [], "error": "The model file is corrupt."},
         "The worker could not analyse no image: The model file is corrupt."),
        ("result.send_failed", {"destination": "C-STORE PACS@10.0.0.5:104", "attempt": 2, "error": "refused",
                                "will_retry": False, "gave_up": "the destination refused it"},
         "Sending the result to C-STORE PACS@10.0.0.5:104 failed (attempt 2): refused; given up: "
         "the destination refused it"),
        ("study.created", {"accession_number": "ACC-1", "body_part": "XR_WRIST", "expected_images": 2},
         "Sam Staff registered study ACC-1 (Wrist, 2 images expected)"),
    ],
)  # fmt: skip
def test_study_events_read_as_sentences(sam, action, details, expected):
    study = StudyFactory(accession_number="ACC-1", body_part="XR_WRIST")
    audit_record(
        actor=sam if action.startswith("study.") else None, action=action, obj=study, details=details
    )
    assert _sentence(_latest(action), on_study_page=True) == expected


def test_a_study_opened_is_one_sentence_and_events_without_a_study_still_read(sam):
    study = StudyFactory(accession_number="ACC-3")
    study_view_record(study=study, actor=sam, ip=None)
    assert _sentence(_latest("study.viewed")) == "Sam Staff opened the study page of study ACC-3"
    patient = PatientFactory(mrn="MRN-5")
    audit_record(actor=sam, action="patient.created", obj=patient, details={"mrn": "MRN-5"})
    assert _sentence(_latest("patient.created")) == "Sam Staff registered patient MRN MRN-5"


def test_an_action_without_a_builder_reads_from_its_name_and_details(sam):
    image = RadiographFactory(study=StudyFactory(accession_number="ACC-4"), original_name="a.png")
    audit_record(
        actor=sam, action="image.window_saved", obj=image, details={"window_center": 1200, "preset": "bone"}
    )
    assert _sentence(_latest("image.window_saved"), on_study_page=True) == (
        "Sam Staff: image window saved (image 1 (a.png)) — preset bone; window center 1200"
    )


def test_details_in_an_unexpected_shape_still_give_a_sentence():
    study = StudyFactory()
    audit_record(actor=None, action="inference.completed", obj=study, details={"predictions": "not a list"})
    text = _sentence(_latest("inference.completed"), on_study_page=True)
    assert text.startswith("The worker predicted no new image") or text.startswith("The system:")


def test_describing_a_page_of_events_costs_four_queries_whatever_their_number(
    sam, ada, django_assert_num_queries
):
    for n in range(3):
        study = StudyResultFactory(abnormal_probability=0.9, study__accession_number=f"ACC-{n}").study
        RadiographFactory(study=study)
        review_create(study=study, radiologist=ada, decision="confirm", final_label=None, comment="")
        for image in study.images.all():
            audit_record(
                actor=sam, action="image.viewed", obj=image, study=study, details={"part": "preview"}
            )
    events = list(AuditEvent.objects.all())
    assert len(events) >= 6
    with django_assert_num_queries(4):
        described = describe(events)
    assert all(str(event.sentence) for event in described)


def test_every_action_the_code_records_has_its_own_sentence():
    """A new audit action needs a builder in studies/audit_sentences.py (the generic one is a fallback)."""
    recorded: set[str] = set()
    for folder in ("studies", "inference"):
        for path in Path(REPO_ROOT, folder).rglob("*.py"):
            if "migrations" not in path.parts:
                recorded |= set(re.findall(r'\baction\s*=\s*"([a-z_]+\.[a-z_]+)"', path.read_text()))
    assert recorded, "no audit action found: the pattern is stale"
    assert recorded - set(BUILDERS) == set()


def test_the_study_page_shows_the_trail_as_sentences_with_links_to_the_images(client, ada):
    study = StudyResultFactory(abnormal_probability=0.9, study__accession_number="ACC-8").study
    image = RadiographFactory(study=study, original_name="wrist.png")
    audit_record(actor=ada, action="image.viewed", obj=image, study=study, details={"part": "file"})
    review_create(study=study, radiologist=ada, decision="confirm", final_label=None, comment="")
    client.force_login(ada)
    html = client.get(reverse("study_detail", args=[study.pk]), {"audit": "all"}).content.decode()
    trail = html.split('data-testid="audit-trail"')[1]
    assert "Ada Lovelace confirmed the model&#x27;s result Abnormal" in trail
    link = f'<a href="{reverse("study_detail", args=[study.pk])}#viewer-{image.pk}">image 1 (wrist.png)</a>'
    assert f"Ada Lovelace viewed {link} (original file)" in trail
    assert "{&#x27;" not in trail and "decision:" not in trail  # no raw dicts


def test_the_admin_audit_log_has_a_what_happened_column_with_links(client, ada):
    study = StudyResultFactory(abnormal_probability=0.9, study__accession_number="ACC-6").study
    review_create(study=study, radiologist=ada, decision="confirm", final_label=None, comment="")
    client.force_login(UserFactory(username="root", role="admin"))
    html = client.get(reverse("admin:studies_auditevent_changelist")).content.decode()
    assert "What happened" in html
    study_link = f'<a href="{reverse("study_detail", args=[study.pk])}">ACC-6</a>'
    assert f"Ada Lovelace confirmed the model&#x27;s result Abnormal on study {study_link}" in html
    event = _latest("study.reviewed")
    detail = client.get(reverse("admin:studies_auditevent_change", args=[event.pk])).content.decode()
    assert "Ada Lovelace confirmed the model&#x27;s result Abnormal" in detail
