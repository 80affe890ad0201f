"""Upload → worker → result → review → audit, all over HTTP, on PostgreSQL, Redis and a real worker."""

import hashlib
from pathlib import Path

import pytest

from inference import tasks
from studies.models import Prediction, Radiograph
from tests.conftest import SHARED_DATA
from tests.e2e.conftest import WebServer
from tests.inference.tiny_models import WRIST_FILE

pytestmark = pytest.mark.integration

WRISTS = sorted((SHARED_DATA / "png16").glob("*.png"))[:2]
FOREARM_JPEG = SHARED_DATA / "jpeg" / "IMG0003301.jpg"


def register_study(e2e, session, *, mrn: str, accession: str, body_part: str) -> int:
    patient = session.post(e2e.url("/api/v1/patients/"), json={"mrn": mrn, "name": "E2E Patient", "sex": "F"})
    assert patient.status_code == 201, patient.text
    study = session.post(
        e2e.url("/api/v1/studies/"),
        json={"patient": patient.json()["id"], "accession_number": accession, "body_part": body_part},
    )
    assert study.status_code == 201, study.text
    return study.json()["id"]


def upload(e2e, session, study_id: int, paths) -> list[dict]:
    files = [("file", (path.name, path.read_bytes(), "application/octet-stream")) for path in paths]
    answer = session.post(e2e.url(f"/api/v1/studies/{study_id}/images/"), files=files)
    assert answer.status_code == 201, answer.text
    return answer.json()["images"]


def test_upload_is_predicted_by_the_worker_then_reviewed_and_audited(e2e):
    staff = e2e.user("e2e-staff", "staff")
    radiologist = e2e.user("e2e-radiologist", "radiologist")
    admin = e2e.user("e2e-admin", "admin")
    study_id = register_study(e2e, staff, mrn="E2E-1", accession="E2E-ACC-1", body_part="XR_WRIST")

    uploaded = upload(e2e, staff, study_id, WRISTS)
    assert [image["status"] for image in uploaded] == ["queued", "queued"]

    study = e2e.wait_for_study(staff, study_id, {"predicted", "failed"})
    assert study["status"] == "predicted", study
    weights = e2e_weights_version(e2e)
    probabilities = []
    for image in study["images"]:
        assert image["status"] == "done"
        assert image["prediction"]["model_version"] == weights
        assert image["prediction"]["demo"] is True
        probabilities.append(image["prediction"]["abnormal_probability"])
        heatmap = staff.get(image["heatmap_url"])
        assert heatmap.status_code == 200
        assert heatmap.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert study["result"]["model_version"] == weights
    assert study["result"]["abnormal_probability"] == pytest.approx(sum(probabilities) / len(probabilities))
    model_label = study["result"]["label"]

    other = "normal" if model_label == "abnormal" else "abnormal"
    refused = staff.post(
        e2e.url(f"/api/v1/studies/{study_id}/reviews/"),
        json={"decision": "override", "final_label": other, "comment": "fracture line seen"},
    )
    assert refused.status_code == 403
    review = radiologist.post(
        e2e.url(f"/api/v1/studies/{study_id}/reviews/"),
        json={"decision": "override", "final_label": other, "comment": "Callus at the distal radius."},
    )
    assert review.status_code == 201, review.text
    reviewed = staff.get(e2e.url(f"/api/v1/studies/{study_id}/")).json()
    assert reviewed["status"] == "reviewed"
    assert reviewed["final_label"] == other

    events = admin.get(e2e.url(f"/api/v1/audit-events/?study={study_id}"))
    assert events.status_code == 200, events.text
    trail = [(event["action"], event["actor"]) for event in reversed(events.json()["results"])]
    actions = [action for action, _ in trail]
    assert ("study.created", "e2e-staff") in trail
    assert actions.count("image.uploaded") == 2
    assert ("inference.started", "") in trail
    assert ("inference.completed", "") in trail
    assert ("study.reviewed", "e2e-radiologist") in trail
    assert actions.index("inference.completed") < actions.index("study.reviewed")
    assert staff.get(e2e.url(f"/api/v1/audit-events/?study={study_id}")).status_code == 403


def test_a_job_delivered_twice_makes_one_prediction_per_image(e2e):
    staff = e2e.user("e2e-staff-2", "staff")
    study_id = register_study(e2e, staff, mrn="E2E-2", accession="E2E-ACC-2", body_part="XR_WRIST")
    ids = [image["id"] for image in upload(e2e, staff, study_id, WRISTS[:1])]
    # Two more deliveries of the same job through the real broker, racing the first one.
    assert tasks.publish_images(image_ids=ids)
    assert tasks.publish_images(image_ids=ids)

    e2e.wait_for_study(staff, study_id, {"predicted", "failed"})
    assert tasks.publish_images(image_ids=ids)  # and once more after it is done
    e2e.wait_for_study(staff, study_id, {"predicted"})

    assert Prediction.objects.filter(radiograph_id__in=ids).count() == 1


def test_an_upload_while_the_broker_is_down_is_kept_and_predicted_later(e2e):
    staff = e2e.user("e2e-staff-3", "staff")
    study_id = register_study(e2e, staff, mrn="E2E-3", accession="E2E-ACC-3", body_part="XR_FOREARM")
    # A second web server whose broker is a closed port: the upload must still succeed.
    web = WebServer(
        env={**e2e.env, "CELERY_BROKER_URL": "redis://127.0.0.1:9/0"}, log_path=e2e.log_dir / "web-down.log"
    )
    try:
        uploaded = upload(e2e.on(web.url), staff, study_id, [FOREARM_JPEG])
    finally:
        web.stop()
    assert uploaded[0]["status"] == "queued"
    assert "Broker unavailable" in (e2e.log_dir / "web-down.log").read_text()

    # The worker's beat finds the image left queued and sends it again; the forearm has no
    # model in the test manifest, so the study ends `unsupported`, waiting for a human read.
    study = e2e.wait_for_study(staff, study_id, {"unsupported", "failed", "predicted"})
    assert study["status"] == "unsupported", study
    assert study["images"][0]["status"] == "unsupported"
    assert "Re-dispatched" in e2e.worker.tail(lines=400)
    assert Radiograph.objects.get(id=uploaded[0]["id"]).dispatched_at is not None


def test_a_corrupt_weight_file_fails_the_study_and_the_worker_goes_on(e2e):
    staff = e2e.user("e2e-staff-4", "staff")
    hand = register_study(e2e, staff, mrn="E2E-4", accession="E2E-ACC-4", body_part="XR_HAND")
    upload(e2e, staff, hand, WRISTS[:1])
    failed = e2e.wait_for_study(staff, hand, {"failed", "predicted"})
    assert failed["status"] == "failed"
    assert "broken_hand.keras" in failed["images"][0]["error"]

    wrist = register_study(e2e, staff, mrn="E2E-5", accession="E2E-ACC-5", body_part="XR_WRIST")
    upload(e2e, staff, wrist, WRISTS[1:2])
    assert e2e.wait_for_study(staff, wrist, {"predicted", "failed"})["status"] == "predicted"


def e2e_weights_version(e2e) -> str:
    return hashlib.sha256((Path(e2e.env["MSKDETECT_MODEL_DIR"]) / WRIST_FILE).read_bytes()).hexdigest()
