"""REST API v1: each endpoint and its bad-input cases, as an integrator sees them."""

import io
import os

import pydicom
import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from PIL import Image

from studies.models import AuditEvent, Patient, Radiograph, Review, Study, StudyStatus
from studies.previews import preview_name
from tests.conftest import SHARED_DATA
from tests.factories import (
    PASSWORD,
    PatientFactory,
    PredictionFactory,
    RadiographFactory,
    StudyFactory,
    StudyResultFactory,
    UserFactory,
)

pytestmark = pytest.mark.django_db

WRIST_PNG = SHARED_DATA / "png16" / "2024_0939605258_01_WRI-L1_M013.png"
HAND_JPEG = SHARED_DATA / "jpeg" / "IMG0003310.jpg"
SMALL_DICOM = SHARED_DATA / "dicom" / "CR1_6154_noext"
DEMO = "demo model — not for clinical use"


@pytest.fixture
def staff(api_client_for, staff_user):
    return api_client_for(staff_user)


@pytest.fixture
def radiologist(api_client_for, radiologist_user):
    return api_client_for(radiologist_user)


def stored_files(settings) -> list:
    return [p for p in settings.MEDIA_ROOT.rglob("*") if p.is_file()]


def named(data: bytes, name: str) -> io.BytesIO:
    buffer = io.BytesIO(data)
    buffer.name = name
    return buffer


# --- token -------------------------------------------------------------------------------
def test_token_for_good_credentials_and_400_for_bad(api_client_for, staff_user):
    client = api_client_for(None)
    response = client.post("/api/v1/auth/token/", {"username": "staff", "password": PASSWORD})
    assert response.status_code == 200 and len(response.json()["token"]) == 40
    token = response.json()["token"]
    assert (
        api_client_for(None).get("/api/v1/studies/", HTTP_AUTHORIZATION=f"Token {token}").status_code == 200
    )
    bad = client.post("/api/v1/auth/token/", {"username": "staff", "password": "wrong"})
    assert bad.status_code == 400 and "token" not in bad.json()


def test_lockout_after_repeated_failures_even_with_the_right_password(api_client_for, staff_user, settings):
    client = api_client_for(None)
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        assert (
            client.post("/api/v1/auth/token/", {"username": "staff", "password": "nope"}).status_code == 400
        )
    locked = client.post("/api/v1/auth/token/", {"username": "staff", "password": "nope"})
    assert locked.status_code == 429 and "try again later" in locked.json()["detail"]
    right = client.post("/api/v1/auth/token/", {"username": "staff", "password": PASSWORD})
    assert right.status_code == 429 and "token" not in right.json()


# --- patients ----------------------------------------------------------------------------
def test_create_list_search_and_get_patients(staff):
    created = staff.post(
        "/api/v1/patients/", {"mrn": "M1", "name": "Ada Lovelace", "birth_date": "1990-12-10", "sex": "F"}
    )
    assert created.status_code == 201
    body = created.json()
    assert body["mrn"] == "M1" and body["birth_date"] == "1990-12-10" and "id" in body
    PatientFactory(name="Charles Babbage")
    listing = staff.get("/api/v1/patients/", {"search": "lovelace"}).json()
    assert listing["count"] == 1 and set(listing) == {"count", "next", "previous", "results"}
    assert listing["results"][0]["id"] == body["id"]
    assert staff.get(f"/api/v1/patients/{body['id']}/").json()["name"] == "Ada Lovelace"
    assert staff.get("/api/v1/patients/999999/").status_code == 404


def test_duplicate_mrn_and_missing_fields_are_400(staff):
    PatientFactory(mrn="M1")
    duplicate = staff.post("/api/v1/patients/", {"mrn": "M1", "name": "X", "sex": "F"})
    assert duplicate.status_code == 400 and "mrn" in duplicate.json()
    missing = staff.post("/api/v1/patients/", {"name": "X"})
    assert missing.status_code == 400 and "mrn" in missing.json()
    assert Patient.objects.count() == 1


# --- studies -----------------------------------------------------------------------------
def test_create_study_and_unknown_body_part(staff):
    patient = PatientFactory()
    created = staff.post(
        "/api/v1/studies/",
        {
            "patient": patient.pk,
            "accession_number": "ACC-1",
            "body_part": "XR_WRIST",
            "study_date": "2025-01-02",
        },
    )
    assert created.status_code == 201
    assert created.json()["status"] == "new" and created.json()["images"] == []
    unknown = staff.post(
        "/api/v1/studies/", {"patient": patient.pk, "accession_number": "A2", "body_part": "KNEE"}
    )
    assert unknown.status_code == 400
    message = unknown.json()["body_part"][0]
    assert "KNEE" in message and all(part in message for part in ["XR_ELBOW", "XR_HUMERUS", "XR_WRIST"])
    no_patient = staff.post(
        "/api/v1/studies/", {"patient": 999999, "accession_number": "A3", "body_part": "XR_HAND"}
    )
    assert no_patient.status_code == 400 and "patient" in no_patient.json()
    duplicate = staff.post(
        "/api/v1/studies/", {"patient": patient.pk, "accession_number": "ACC-1", "body_part": "XR_HAND"}
    )
    assert duplicate.status_code == 400 and "accession_number" in duplicate.json()
    assert Study.objects.count() == 1


def test_study_list_is_in_worklist_order_with_filters(staff):
    pending = StudyFactory()
    flagged = StudyResultFactory(abnormal_probability=0.9).study
    normal = StudyResultFactory(abnormal_probability=0.1).study
    listing = staff.get("/api/v1/studies/").json()
    assert [row["id"] for row in listing["results"]] == [flagged.pk, normal.pk, pending.pk]
    first = listing["results"][0]
    assert first["flagged"] is True and first["result"]["label"] == "abnormal"
    assert first["result"]["model_version"] == "a" * 64
    assert [r["id"] for r in staff.get("/api/v1/studies/?flagged=true").json()["results"]] == [flagged.pk]
    assert len(staff.get("/api/v1/studies/?flagged=false").json()["results"]) == 2
    assert staff.get("/api/v1/studies/?reviewed=true").json()["count"] == 0
    assert staff.get("/api/v1/studies/?status=new").json()["count"] == 1
    assert staff.get(f"/api/v1/studies/?patient={normal.patient_id}").json()["count"] == 1
    bad_part = staff.get("/api/v1/studies/?body_part=XR_KNEE")
    assert bad_part.status_code == 400 and "XR_WRIST" in bad_part.json()["body_part"][0]
    assert staff.get("/api/v1/studies/?flagged=maybe").status_code == 400
    assert staff.get("/api/v1/studies/?status=lost").status_code == 400


@pytest.mark.parametrize("count", [3, 30])
def test_study_list_query_count_is_constant(staff, staff_user, count, django_assert_num_queries):
    for index in range(count):
        StudyResultFactory(abnormal_probability=index / count)
    # token, role, count, page
    with django_assert_num_queries(4):
        response = staff.get("/api/v1/studies/")
    assert response.json()["count"] == count


def test_study_detail_shape_demo_notice_and_audit(staff, staff_user):
    result = StudyResultFactory(abnormal_probability=0.7, demo=True)
    image = RadiographFactory(study=result.study)
    PredictionFactory(radiograph=image, demo=True, abnormal_probability=0.7)
    response = staff.get(f"/api/v1/studies/{result.study.pk}/")
    assert response.status_code == 200
    body = response.json()
    assert {
        "id",
        "patient",
        "accession_number",
        "body_part",
        "status",
        "created_at",
        "images",
        "result",
        "reviews",
        "final_label",
    } <= set(body)
    assert body["result"]["demo"] is True and body["result"]["notice"] == DEMO
    assert body["images"][0]["prediction"]["notice"] == DEMO
    assert body["images"][0]["prediction"]["model_version"] == "a" * 64
    assert body["final_label"] is None and body["reviews"] == []
    assert AuditEvent.objects.filter(action="study.viewed", study=result.study, actor=staff_user).count() == 1
    assert staff.get("/api/v1/studies/999999/").status_code == 404


def test_real_model_result_has_no_demo_notice(staff):
    result = StudyResultFactory(demo=False)
    assert staff.get(f"/api/v1/studies/{result.study.pk}/").json()["result"]["notice"] is None


# --- uploads -----------------------------------------------------------------------------
def test_upload_png_jpeg_and_dicom(staff, settings, django_capture_on_commit_callbacks):
    study = StudyFactory()
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = staff.post(
            f"/api/v1/studies/{study.pk}/images/",
            {
                "file": [WRIST_PNG.open("rb"), HAND_JPEG.open("rb"), SMALL_DICOM.open("rb")],
                # The DICOM test file is another patient's cervical spine (tests/studies/test_intake.py).
                "confirm_mismatch": "true",
                "mismatch_reason": "test file",
            },
            format="multipart",
        )
    assert response.status_code == 201, response.content
    images = response.json()["images"]
    assert [image["status"] for image in images] == ["queued"] * 3
    assert [image["confirmed_mismatch"] is not None for image in images] == [False, False, True]
    assert len(callbacks) == 1
    formats = list(Radiograph.objects.order_by("id").values_list("format", flat=True))
    assert formats == ["png", "jpeg", "dcm"]
    study.refresh_from_db()
    assert study.status == StudyStatus.QUEUED
    assert len(stored_files(settings)) == 3


def _dicom_without_pixels() -> bytes:
    dataset = pydicom.dcmread(SMALL_DICOM)
    del dataset.PixelData
    buffer = io.BytesIO()
    dataset.save_as(buffer)
    return buffer.getvalue()


BAD_FILES = {
    "not an image": lambda: (SHARED_DATA / "README.md").read_bytes(),
    "truncated png": lambda: WRIST_PNG.read_bytes()[: WRIST_PNG.stat().st_size // 2],
    "zero bytes": lambda: b"",
    "dicom without pixels": _dicom_without_pixels,
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_one_bad_file_among_good_ones_is_400_and_nothing_is_stored(staff, settings, case):
    study = StudyFactory()
    response = staff.post(
        f"/api/v1/studies/{study.pk}/images/",
        {"file": [WRIST_PNG.open("rb"), named(BAD_FILES[case](), "bad-upload.bin")]},
        format="multipart",
    )
    assert response.status_code == 400, response.content
    reasons = response.json()["file"]
    assert len(reasons) == 1 and reasons[0].startswith("bad-upload.bin: ")
    assert len(reasons[0]) > len("bad-upload.bin: ") + 5  # a reason a person can act on
    assert not Radiograph.objects.exists()
    assert not AuditEvent.objects.filter(action="image.uploaded").exists()
    assert stored_files(settings) == []
    study.refresh_from_db()
    assert study.status == StudyStatus.NEW


def test_too_many_pixels_is_refused(staff, settings):
    settings.MSKDETECT_MAX_PIXELS = 100_000  # the PNG has 444 x 614 = 272,616
    study = StudyFactory()
    response = staff.post(
        f"/api/v1/studies/{study.pk}/images/", {"file": [WRIST_PNG.open("rb")]}, format="multipart"
    )
    assert response.status_code == 400
    assert "pixels" in response.json()["file"][0].lower()
    assert not Radiograph.objects.exists() and stored_files(settings) == []


def test_upload_without_files_is_400(staff):
    study = StudyFactory()
    response = staff.post(f"/api/v1/studies/{study.pk}/images/", {}, format="multipart")
    assert response.status_code == 400 and "file" in response.json()


# --- images and their files --------------------------------------------------------------
def test_image_detail_and_file_views(staff, staff_user, settings):
    study = StudyFactory()
    staff.post(
        f"/api/v1/studies/{study.pk}/images/",
        {"file": [SMALL_DICOM.open("rb")], "confirm_mismatch": "true", "mismatch_reason": "test file"},
        format="multipart",
    )
    image = Radiograph.objects.get()
    body = staff.get(f"/api/v1/images/{image.pk}/").json()
    assert {
        "id",
        "study",
        "status",
        "error",
        "width",
        "height",
        "prediction",
        "heatmap_url",
        "file_url",
    } <= set(body)
    assert body["prediction"] is None and body["heatmap_url"] is None
    original = staff.get(body["file_url"])
    assert original.status_code == 200 and original["Content-Type"] == "application/dicom"
    assert b"".join(original.streaming_content) == SMALL_DICOM.read_bytes()
    assert "no-store" in original["Cache-Control"]
    preview = staff.get(body["preview_url"])
    assert preview.status_code == 200 and preview["Content-Type"] == "image/png"
    rendered = Image.open(io.BytesIO(b"".join(preview.streaming_content)))
    assert rendered.mode == "L" and rendered.size == (image.width, image.height)
    # Rendered once and kept: the next request reads the stored preview.
    stored = Radiograph.objects.get(pk=image.pk).file.name
    assert default_storage.exists(preview_name(stored))
    again = staff.get(body["preview_url"])
    assert b"".join(again.streaming_content) == default_storage.open(preview_name(stored)).read()
    parts = list(AuditEvent.objects.filter(action="image.viewed").values_list("details__part", flat=True))
    assert sorted(parts) == ["file", "preview", "preview"]


def test_heatmap_is_served_when_there_is_one(staff):
    prediction = PredictionFactory()
    assert staff.get(f"/api/v1/images/{prediction.radiograph_id}/heatmap").status_code == 404
    png = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(png, format="PNG")
    prediction.heatmap.save("heatmap.png", ContentFile(png.getvalue()))
    body = staff.get(f"/api/v1/images/{prediction.radiograph_id}/").json()
    assert body["heatmap_url"].endswith(f"/api/v1/images/{prediction.radiograph_id}/heatmap")
    assert body["prediction"]["label"] == "abnormal"
    response = staff.get(body["heatmap_url"])
    assert response.status_code == 200 and b"".join(response.streaming_content) == png.getvalue()


def test_x_accel_redirect_when_nginx_serves_the_bytes(staff, settings):
    settings.MSKDETECT_PROTECTED_MEDIA_PREFIX = "/protected/"
    image = RadiographFactory()
    response = staff.get(f"/api/v1/images/{image.pk}/file")
    assert response.status_code == 200
    assert response["X-Accel-Redirect"] == f"/protected/{image.file.name}"
    assert response.content == b""


# --- reviews -----------------------------------------------------------------------------
def test_review_confirm_override_and_errors(radiologist, staff):
    result = StudyResultFactory(abnormal_probability=0.8)
    url = f"/api/v1/studies/{result.study.pk}/reviews/"
    assert staff.post(url, {"decision": "confirm"}).status_code == 403
    no_comment = radiologist.post(url, {"decision": "override", "final_label": "normal", "comment": ""})
    assert no_comment.status_code == 400 and "comment" in no_comment.json()
    confirmed = radiologist.post(url, {"decision": "confirm"})
    assert confirmed.status_code == 201 and confirmed.json()["final_label"] == "abnormal"
    overridden = radiologist.post(
        url, {"decision": "override", "final_label": "normal", "comment": "Artefact."}
    )
    assert overridden.status_code == 201
    detail = staff.get(f"/api/v1/studies/{result.study.pk}/").json()
    assert detail["final_label"] == "normal" and detail["status"] == "reviewed"
    assert [r["decision"] for r in detail["reviews"]] == ["override", "confirm"]
    assert detail["result"]["flagged"] is False
    assert radiologist.post(url, {"decision": "maybe"}).status_code == 400
    assert Review.objects.count() == 2


def test_review_before_a_result_is_409(radiologist):
    study = StudyFactory()
    response = radiologist.post(f"/api/v1/studies/{study.pk}/reviews/", {"decision": "confirm"})
    assert response.status_code == 409 and "no model result" in response.json()["detail"]


# --- audit and schema --------------------------------------------------------------------
def test_audit_events_for_admin_with_filters(api_client_for, admin_user, staff):
    study = StudyFactory()
    staff.get(f"/api/v1/studies/{study.pk}/")
    admin = api_client_for(admin_user)
    body = admin.get(
        "/api/v1/audit-events/", {"study": study.pk, "action": "study.viewed", "actor": "staff"}
    ).json()
    assert body["count"] == 1
    event = body["results"][0]
    assert (event["actor"], event["action"], event["study"]) == ("staff", "study.viewed", study.pk)
    assert admin.get("/api/v1/audit-events/", {"actor": "nobody"}).json()["count"] == 0


def test_schema_is_openapi_3_and_lists_the_endpoints(staff):
    response = staff.get("/api/v1/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    schema = response.json()
    assert schema["openapi"].startswith("3.")
    assert {"/api/v1/studies/", "/api/v1/studies/{id}/images/", "/api/v1/audit-events/"} <= set(
        schema["paths"]
    )


def test_inactive_user_token_is_refused(api_client_for):
    user = UserFactory(username="gone", role="staff")
    client = api_client_for(user)
    user.is_active = False
    user.save()
    assert client.get("/api/v1/studies/").status_code == 401


def test_the_openapi_schema_generates_without_warnings():
    # A warning (two names for one choice set, an unresolvable field) means a client generated from
    # the schema gets something other than what the API sends.
    from django.core.management import call_command

    call_command("spectacular", "--validate", "--fail-on-warn", "--file", os.devnull)
