"""New study (patient picker, DICOM prefill, uploads with each bad file named), the study page,
review and "run again": permissions and forms through Django's test client."""

import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from studies.models import AuditEvent, ImageStatus, Patient, Radiograph, Review, Study
from tests.conftest import SHARED_DATA
from tests.factories import (
    PatientFactory,
    PredictionFactory,
    RadiographFactory,
    ReviewFactory,
    StudyFactory,
    StudyResultFactory,
    UserFactory,
    small_png,
)
from tests.inference import hostile

pytestmark = pytest.mark.django_db
JSON = {"Accept": "application/json"}


@pytest.fixture
def staff(client):
    user = UserFactory(role="staff")
    client.force_login(user)
    return user


@pytest.fixture
def radiologist(client):
    user = UserFactory(role="radiologist")
    client.force_login(user)
    return user


def _upload(name: str, data: bytes) -> SimpleUploadedFile:
    return SimpleUploadedFile(name, data, content_type="application/octet-stream")


NEW_PATIENT_STUDY = {
    "mrn": "MRN-1",
    "name": "Grace Hopper",
    "birth_date": "1950-12-09",
    "sex": "F",
    "accession_number": "ACC-1",
    "body_part": "XR_WRIST",
    "study_date": "2025-01-02",
}


# --- new study --------------------------------------------------------------------------------
def test_new_study_page_has_a_label_for_every_control(client, staff):
    html = client.get(reverse("study_new")).content.decode()
    for control_id in [
        "id_mrn",
        "id_name",
        "id_birth_date",
        "id_sex",
        "id_accession_number",
        "id_body_part",
        "id_study_date",
        "id_file",
        "patient-search",
    ]:
        assert f'for="{control_id}"' in html, control_id


def test_new_study_with_new_patient_json(client, staff):
    response = client.post(reverse("study_new"), NEW_PATIENT_STUDY, headers=JSON)
    assert response.status_code == 201
    body = response.json()
    study = Study.objects.get(pk=body["study_id"])
    assert study.patient.name == "Grace Hopper" and study.body_part == "XR_WRIST"
    assert body["upload_url"] == reverse("study_upload", args=[study.pk])
    assert body["detail_url"] == reverse("study_detail", args=[study.pk])
    actions = set(AuditEvent.objects.values_list("action", flat=True))
    assert {"patient.created", "study.created"} <= actions


def test_new_study_for_existing_patient_redirects_to_study(client, staff):
    patient = PatientFactory()
    data = {"patient": patient.pk, "accession_number": "ACC-2", "body_part": "XR_HAND"}
    response = client.post(reverse("study_new"), data)
    study = Study.objects.get(accession_number="ACC-2")
    assert response.status_code == 302 and response.url == reverse("study_detail", args=[study.pk])
    assert study.patient == patient and Patient.objects.count() == 1


def test_new_study_needs_a_patient(client, staff):
    response = client.post(reverse("study_new"), {"accession_number": "ACC-3", "body_part": "XR_HAND"})
    assert response.status_code == 400
    html = response.content.decode()
    assert "Choose an existing patient above, or give the new patient&#x27;s MRN." in html
    assert "Give the new patient&#x27;s name." in html
    assert not Study.objects.exists()


def test_duplicate_accession_keeps_no_half_registered_patient(client, staff):
    StudyFactory(accession_number="ACC-1")
    patients_before = Patient.objects.count()
    response = client.post(reverse("study_new"), NEW_PATIENT_STUDY, headers=JSON)
    assert response.status_code == 400
    assert "already exists" in response.json()["errors"]["accession_number"][0]["message"]
    # The patient created in the same request was rolled back with the refused study.
    assert Patient.objects.count() == patients_before


def test_duplicate_mrn_is_shown_under_the_mrn_field(client, staff):
    PatientFactory(mrn="MRN-1")
    response = client.post(reverse("study_new"), NEW_PATIENT_STUDY)
    assert response.status_code == 400
    html = response.content.decode()
    assert 'id="id_mrn_error"' in html and "A patient with this MRN already exists." in html


def test_unknown_body_part_is_refused(client, staff):
    response = client.post(reverse("study_new"), {**NEW_PATIENT_STUDY, "body_part": "XR_KNEE"}, headers=JSON)
    assert response.status_code == 400 and "body_part" in response.json()["errors"]


def test_plain_form_post_with_a_bad_file_names_it_and_keeps_the_study(client, staff):
    data = {
        **NEW_PATIENT_STUDY,
        "file": [_upload("good.png", small_png(seed=1)), _upload("notes.txt", b"hello")],
    }
    response = client.post(reverse("study_new"), data, follow=True)
    html = response.content.decode()
    assert "notes.txt:" in html
    study = Study.objects.get(accession_number="ACC-1")
    assert not study.images.exists()


def test_patient_search_partial(client, staff):
    PatientFactory(mrn="MRN-555", name="Marie Curie")
    PatientFactory(mrn="MRN-556", name="Pierre Curie")
    PatientFactory(mrn="X-1", name="Someone Else")
    html = client.get(reverse("patient_search"), {"q": "curie"}).content.decode()
    assert "Marie Curie" in html and "Pierre Curie" in html and "Someone Else" not in html
    assert "No patient matches" in client.get(reverse("patient_search"), {"q": "nobody"}).content.decode()


# --- DICOM prefill ----------------------------------------------------------------------------
def test_inspect_prefills_from_real_dicom_without_storing_or_auditing(client, staff):
    data = (SHARED_DATA / "dicom" / "NM_Kakadu44_SOTmarkerincons.dcm").read_bytes()
    response = client.post(reverse("study_inspect"), {"file": _upload("hand.dcm", data)})
    assert response.status_code == 200
    body = response.json()
    assert body["format"] == "dcm"
    assert body["prefill"] == {"mrn": "XXXXXXXX", "body_part": "XR_HAND", "study_date": "2011-02-18"}
    assert body["patient"] is None
    assert not Radiograph.objects.exists() and not AuditEvent.objects.exists()


def test_inspect_finds_the_existing_patient_and_accession(client, staff):
    patient = PatientFactory(mrn="MRN-0042", name="Test Patient")
    data = hostile.dicom_bytes(hostile.dicom_dataset(hostile.gradient().astype("uint16")))
    body = client.post(reverse("study_inspect"), {"file": _upload("x.dcm", data)}).json()
    assert body["prefill"]["accession_number"] == "ACC-7" and body["prefill"]["body_part"] == "XR_WRIST"
    assert body["patient"] == {"id": patient.pk, "mrn": "MRN-0042", "name": "Test Patient"}


def test_inspect_reports_a_bad_file(client, staff):
    response = client.post(
        reverse("study_inspect"), {"file": _upload("r.dcm", hostile.dicom_without_pixel_data())}
    )
    assert response.status_code == 400 and "no pixel data" in response.json()["error"]


def test_inspect_needs_a_clinical_role(client):
    client.force_login(UserFactory(role=None))
    response = client.post(reverse("study_inspect"), {"file": _upload("a.png", small_png())})
    assert response.status_code == 403


# --- uploads ----------------------------------------------------------------------------------
def test_upload_one_good_file_json(client, staff):
    study = StudyFactory()
    response = client.post(
        reverse("study_upload", args=[study.pk]), {"file": _upload("a.png", small_png(seed=3))}, headers=JSON
    )
    assert response.status_code == 201
    (image,) = response.json()["images"]
    assert image["status"] == "queued" and image["name"] == "a.png"
    study.refresh_from_db()
    assert study.status == "queued" and study.images.count() == 1


BAD_FILES = {
    "empty.png": (hostile.zero_bytes, "empty"),
    "notes.txt": (hostile.text_file, "not"),
    "page.png": (hostile.html_renamed_png, "not"),
    "cut.png": (hostile.truncated_png, ""),
    "report.dcm": (hostile.dicom_without_pixel_data, "no pixel data"),
    "ct.dcm": (hostile.dicom_ct, "CT"),
    "bomb.png": (hostile.png_bomb, "pixels"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_each_bad_upload_gets_its_own_reason_and_stores_nothing(client, staff, name):
    make, words = BAD_FILES[name]
    study = StudyFactory()
    response = client.post(
        reverse("study_upload", args=[study.pk]), {"file": _upload(name, make())}, headers=JSON
    )
    assert response.status_code == 400
    body = response.json()
    reason = body["reasons"][name]
    assert reason and words.lower() in reason.lower()
    assert body["file"] == [reason]
    assert not Radiograph.objects.exists()
    assert not AuditEvent.objects.filter(action="image.uploaded").exists()


def test_upload_over_the_size_limit(client, staff, settings):
    settings.MSKDETECT_MAX_UPLOAD_BYTES = 1000
    study = StudyFactory()
    response = client.post(
        reverse("study_upload", args=[study.pk]), {"file": _upload("big.png", b"\0" * 2000)}, headers=JSON
    )
    assert response.status_code == 400 and "larger than" in response.json()["reasons"]["big.png"]


def test_upload_the_same_image_twice(client, staff):
    study = StudyFactory()
    data = small_png(seed=9)
    url = reverse("study_upload", args=[study.pk])
    assert client.post(url, {"file": _upload("a.png", data)}, headers=JSON).status_code == 201
    again = client.post(url, {"file": _upload("b.png", data)}, headers=JSON)
    assert again.status_code == 400 and "already part of the study" in again.json()["reasons"]["b.png"]


def test_plain_upload_form_redirects_with_messages(client, staff):
    study = StudyFactory()
    url = reverse("study_upload", args=[study.pk])
    response = client.post(url, {"file": [_upload("ok.png", small_png(seed=4))]}, follow=True)
    assert "1 image(s) queued for analysis." in response.content.decode()
    response = client.post(url, {"file": [_upload("bad.txt", b"not an image")]}, follow=True)
    html = response.content.decode()
    assert "bad.txt:" in html and "No image of that upload was stored" in html


def test_upload_needs_a_clinical_role(client):
    client.force_login(UserFactory(role=None))
    study = StudyFactory()
    response = client.post(reverse("study_upload", args=[study.pk]), {"file": _upload("a.png", small_png())})
    assert response.status_code == 403 and not Radiograph.objects.exists()


# --- study page -------------------------------------------------------------------------------
def test_study_page_is_audited_and_shows_result_with_model_version(client, staff):
    prediction = PredictionFactory(abnormal_probability=0.81, demo=True, model_version="b" * 64)
    study = prediction.radiograph.study
    StudyResultFactory(study=study, abnormal_probability=0.81, model_version="b" * 64, demo=True)
    html = client.get(reverse("study_detail", args=[study.pk])).content.decode()
    assert AuditEvent.objects.filter(action="study.viewed", study=study, actor=staff).count() == 1
    assert "81.0 %" in html and "bbbbbbbbbbbb" in html
    assert "demo model — not for clinical use" in html
    assert f'data-pixels-url="{reverse("api:image-pixels", args=[prediction.radiograph.pk])}"' in html


def test_staff_cannot_see_review_controls(client, staff):
    study = StudyResultFactory().study
    html = client.get(reverse("study_detail", args=[study.pk])).content.decode()
    assert 'id="review-form"' not in html
    assert "Only radiologists confirm or override results." in html


def test_radiologist_sees_review_controls_once_there_is_a_result(client, radiologist):
    pending = StudyFactory(status="queued")
    assert 'id="review-form"' not in client.get(reverse("study_detail", args=[pending.pk])).content.decode()
    study = StudyResultFactory().study
    assert 'id="review-form"' in client.get(reverse("study_detail", args=[study.pk])).content.decode()


def test_heatmap_toggle_shown_when_the_prediction_has_one(client, staff):
    prediction = PredictionFactory()
    prediction.heatmap.save("heat.png", SimpleUploadedFile("heat.png", small_png(seed=2)))
    study = prediction.radiograph.study
    html = client.get(reverse("study_detail", args=[study.pk])).content.decode()
    image_id = prediction.radiograph.pk
    # The viewer (static/js/viewer.js) loads the overlay from the address beside it.
    assert f'data-url="{reverse("api:image-heatmap", args=[image_id])}"' in html
    assert f'for="overlay-{image_id}"' in html and f'for="opacity-{image_id}"' in html
    assert 'data-testid="heatmap-note"' not in html


def test_live_partial_polls_while_processing_and_is_not_audited(client, staff):
    study = StudyFactory(status="processing")
    RadiographFactory(study=study, status=ImageStatus.PROCESSING)
    html = client.get(reverse("study_live", args=[study.pk])).content.decode()
    assert 'hx-trigger="every 2s"' in html and 'hx-swap-oob="true"' in html
    assert not AuditEvent.objects.filter(action="study.viewed").exists()
    done = StudyResultFactory().study
    assert "hx-trigger" not in client.get(reverse("study_live", args=[done.pk])).content.decode()


def test_failed_job_shows_its_error_and_run_again_requeues(client, staff):
    study = StudyFactory(status="failed", error="The model file could not be loaded.")
    image = RadiographFactory(study=study, status=ImageStatus.FAILED, error="model load failed")
    html = client.get(reverse("study_detail", args=[study.pk])).content.decode()
    assert "The model file could not be loaded." in html and "model load failed" in html
    assert "Run again" in html
    response = client.post(reverse("study_requeue", args=[study.pk]), follow=True)
    assert "1 image(s) sent for analysis again." in response.content.decode()
    image.refresh_from_db()
    assert image.status == ImageStatus.QUEUED
    assert AuditEvent.objects.filter(action="study.requeued", actor=staff).exists()


def test_run_again_without_failed_images_says_so(client, staff):
    study = StudyResultFactory().study
    response = client.post(reverse("study_requeue", args=[study.pk]), follow=True)
    assert "no failed or stalled images" in response.content.decode()


def test_unknown_study_is_404(client, staff):
    assert client.get(reverse("study_detail", args=[999999])).status_code == 404


def test_audit_trail_hides_views_unless_asked(client, staff):
    study = StudyResultFactory().study
    client.get(reverse("study_detail", args=[study.pk]))
    html = client.get(reverse("study_detail", args=[study.pk])).content.decode()
    trail = html.split('data-testid="audit-trail"')[1]
    assert 'data-action="study.viewed"' not in trail and "2 views not shown" in html
    html = client.get(reverse("study_detail", args=[study.pk]), {"audit": "all"}).content.decode()
    assert 'data-action="study.viewed"' in html.split('data-testid="audit-trail"')[1]


# --- reviews ----------------------------------------------------------------------------------
def test_radiologist_confirms(client, radiologist):
    study = StudyResultFactory(abnormal_probability=0.9).study
    response = client.post(reverse("study_review", args=[study.pk]), {"decision": "confirm"})
    assert response.status_code == 302
    review = Review.objects.get(study=study)
    assert review.final_label == "abnormal" and review.radiologist == radiologist


def test_override_needs_a_reason(client, radiologist):
    study = StudyResultFactory(abnormal_probability=0.9).study
    response = client.post(
        reverse("study_review", args=[study.pk]),
        {"decision": "override", "final_label": "normal", "comment": " "},
    )
    assert response.status_code == 400
    assert "An override needs a reason." in response.content.decode()
    assert not Review.objects.exists()


def test_override_with_reason_shows_in_history_and_audit_trail(client, radiologist):
    study = StudyResultFactory(abnormal_probability=0.9).study
    client.post(
        reverse("study_review", args=[study.pk]),
        {"decision": "override", "final_label": "normal", "comment": "Nutrient foramen, not a fracture"},
    )
    html = client.get(reverse("study_detail", args=[study.pk])).content.decode()
    assert "Nutrient foramen, not a fracture" in html
    assert 'data-action="study.reviewed"' in html
    assert 'data-testid="final-label">Normal' in html


def test_override_to_the_same_label_shows_the_service_error(client, radiologist):
    study = StudyResultFactory(abnormal_probability=0.9).study
    response = client.post(
        reverse("study_review", args=[study.pk]),
        {"decision": "override", "final_label": "abnormal", "comment": "x"},
    )
    assert response.status_code == 400 and "use confirm to agree" in response.content.decode()


def test_staff_cannot_post_a_review(client, staff):
    study = StudyResultFactory().study
    response = client.post(reverse("study_review", args=[study.pk]), {"decision": "confirm"})
    assert response.status_code == 403 and not Review.objects.exists()


def test_review_history_lists_every_ruling_newest_first(client, radiologist):
    study = StudyResultFactory().study
    ReviewFactory(study=study, comment="first look")
    ReviewFactory(study=study, decision="override", final_label="normal", comment="second opinion")
    html = client.get(reverse("study_detail", args=[study.pk])).content.decode()
    history = html.split('data-testid="review-history"')[1]
    assert history.index("second opinion") < history.index("first look")


def test_json_errors_are_json(client, staff):
    response = client.post(reverse("study_new"), {}, headers=JSON)
    assert response.status_code == 400
    assert set(json.loads(response.content)["errors"]) >= {"accession_number", "body_part"}
