"""The DICOM receiver's parts that need no network: who may send, what it can read, its heartbeat in
/healthz, and the study page and API for a received study that waits for its body part."""

from datetime import timedelta

import pytest
from django.utils import timezone
from pydicom.uid import MPEG2MPML, JPEG2000Lossless, JPEGLosslessSV1

from studies.dicom_receiver import AllowList, _status, readable_transfer_syntaxes
from studies.models import AuditEvent, DicomReceiverRun, ImageStatus, Radiograph, Study, StudyStatus
from studies.services.dicom_ingest import C_STORE, DicomSource, dicom_instance_ingest
from studies.services.dicom_receivers import ReceiverFigures, dicom_receiver_beat, dicom_receiver_register
from tests.studies.test_dicom_ingest import instance

pytestmark = pytest.mark.django_db

SENDER = DicomSource(kind=C_STORE, calling_ae="PACS1", called_ae="MSKDETECT", peer="192.168.10.7")


# --- who may send ----------------------------------------------------------------------------
def test_an_empty_allow_list_lets_everyone_in():
    assert AllowList([]).open and AllowList([" ", ""]).allows(calling_ae="ANY", peer="203.0.113.9")


def test_entries_are_ae_titles_addresses_networks_hosts_or_pairs():
    allowed = AllowList(["ORTHANC", "10.0.0.5", "192.168.10.0/24", "localhost", "CT1@172.16.0.9"])
    assert allowed.allows(calling_ae="ORTHANC", peer="203.0.113.9")  # the AE title, from anywhere
    assert allowed.allows(calling_ae="X", peer="10.0.0.5")  # the address, any AE title
    assert allowed.allows(calling_ae="X", peer="192.168.10.77")  # in the network
    assert allowed.allows(calling_ae="X", peer="127.0.0.1")  # a host name, resolved
    assert allowed.allows(calling_ae="CT1", peer="172.16.0.9")  # both halves of a pair
    assert not allowed.allows(calling_ae="CT1", peer="172.16.0.10")
    assert not allowed.allows(calling_ae="STORESCU", peer="203.0.113.9")
    assert "192.168.10.0/24" in allowed.describe() and "CT1 from 172.16.0.9" in allowed.describe()


def test_the_receiver_accepts_the_transfer_syntaxes_it_can_decode():
    syntaxes = readable_transfer_syntaxes()
    assert JPEG2000Lossless in syntaxes and JPEGLosslessSV1 in syntaxes and "1.2.840.10008.1.2.1" in syntaxes
    assert MPEG2MPML not in syntaxes  # a video: no decoder, so the sender must offer something else


def test_error_comments_fit_the_dimse_field():
    answer = _status(
        0xC002, 'PatientName "DOE^JANE" in the file differs from the patient\'s name "X Y Z" — é'
    )
    assert answer.Status == 0xC002 and len(answer.ErrorComment) == 64 and answer.ErrorComment.isascii()


# --- heartbeat and /healthz --------------------------------------------------------------------
def _run(run_id: str = "run-1") -> None:
    dicom_receiver_register(run_id=run_id, ae_title="MSKDETECT", port=11112, host="rx", pid=42)


def test_healthz_says_when_no_receiver_ever_ran(client, queue_dir):
    body = client.get("/healthz").json()
    assert body["dicom_receiver"] == {"status": "ok", "state": "never_started", "alive": 0, "runs": []}


def test_healthz_reports_a_beating_receiver_and_its_counters(client, queue_dir):
    _run()
    dicom_receiver_beat(run_id="run-1", figures=ReceiverFigures(associations=3, instances_stored=7))
    part = client.get("/healthz").json()["dicom_receiver"]
    assert part["status"] == "ok" and part["state"] == "alive" and part["alive"] == 1
    assert part["runs"][0]["instances_stored"] == 7 and part["runs"][0]["port"] == 11112


def test_a_silent_receiver_degrades_health_and_a_stopped_one_does_not(client, queue_dir, settings):
    _run()
    DicomReceiverRun.objects.update(beat_at=timezone.now() - timedelta(minutes=5))
    body = client.get("/healthz").json()
    assert body["dicom_receiver"]["state"] == "silent" and body["dicom_receiver"]["status"] == "degraded"
    assert body["status"] == "degraded"
    _run("run-2")
    dicom_receiver_beat(run_id="run-2", figures=ReceiverFigures(), stopped=True)
    body = client.get("/healthz").json()
    assert body["dicom_receiver"]["state"] == "stopped" and body["dicom_receiver"]["status"] == "ok"


# --- the study page and the API for a study waiting for its body part ---------------------------
@pytest.fixture
def waiting_study(monkeypatch) -> Study:
    monkeypatch.setattr("studies.services.radiographs._enqueue_on_commit", lambda ids: None)
    received = dicom_instance_ingest(
        data=instance(BodyPartExamined="HIP", StudyDescription="HIP JOINT", AccessionNumber=None),
        source=SENDER,
    )
    return Study.objects.get(pk=received.study_id)


def test_the_study_page_shows_the_sender_the_header_and_the_body_part_form(client, staff_user, waiting_study):
    client.force_login(staff_user)
    page = client.get(f"/studies/{waiting_study.pk}/").content.decode()
    assert "Received by DICOM" in page and "PACS1" in page and "192.168.10.7" in page
    assert "Body part not recognised" in page and "HIP JOINT" in page and "BodyPartExamined" in page
    assert "is derived from the StudyInstanceUID" in page
    assert f"Study {waiting_study.accession_number} · Body part not set" in page
    assert f'action="/studies/{waiting_study.pk}/body-part/"' in page


def test_staff_set_the_body_part_on_the_page(client, staff_user, waiting_study, monkeypatch):
    queued = []
    monkeypatch.setattr("studies.services.dicom_ingest._enqueue_on_commit", queued.append)
    client.force_login(staff_user)
    answer = client.post(f"/studies/{waiting_study.pk}/body-part/", {"body_part": "XR_HAND"})
    assert answer.status_code == 302
    waiting_study.refresh_from_db()
    assert waiting_study.body_part == "XR_HAND" and waiting_study.status == StudyStatus.QUEUED
    assert Radiograph.objects.get().status == ImageStatus.QUEUED and len(queued) == 1
    page = client.get(f"/studies/{waiting_study.pk}/").content.decode()
    assert "Body part not recognised" not in page and "Received by DICOM" in page


def test_the_body_part_form_needs_a_clinical_role(client, norole_user, waiting_study):
    client.force_login(norole_user)
    assert client.post(f"/studies/{waiting_study.pk}/body-part/", {"body_part": "XR_HAND"}).status_code == 403
    assert Study.objects.get().body_part == ""


def test_the_api_sets_the_body_part_once(api_client_for, staff_user, waiting_study, monkeypatch):
    monkeypatch.setattr("studies.services.dicom_ingest._enqueue_on_commit", lambda ids: None)
    api = api_client_for(staff_user)
    listed = api.get("/api/v1/studies/").json()["results"][0]
    assert listed["body_part"] == "" and listed["status"] == "needs_body_part"
    assert listed["study_instance_uid"] == waiting_study.study_instance_uid
    assert (
        api.post(f"/api/v1/studies/{waiting_study.pk}/body-part/", {"body_part": "XR_KNEE"}).status_code
        == 400
    )
    answer = api.post(f"/api/v1/studies/{waiting_study.pk}/body-part/", {"body_part": "XR_HAND"})
    assert answer.status_code == 200 and answer.json()["body_part"] == "XR_HAND"
    assert answer.json()["status"] == "queued"
    again = api.post(f"/api/v1/studies/{waiting_study.pk}/body-part/", {"body_part": "XR_WRIST"})
    assert again.status_code == 409 and "already set" in again.json()["detail"]
    assert AuditEvent.objects.filter(action="study.body_part_set").count() == 1
