"""Receiving for real (issue 13): DCMTK's storescu, a real Orthanc and STOW-RS through the web server
send to a real `manage.py dicom_receiver` process; a real worker predicts (a tiny demo model
serving XR_HAND). Each instance ends filed once and predicted exactly once, re-sends included; the
three shared radiographs of other body parts (tibia, hip, cervical spine) wait for a human; 200
instances sent at once are all kept; SIGTERM stops the receiver cleanly.
"""

import io
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pydicom
import pytest
import requests
from pydicom.uid import JPEG2000Lossless, JPEGLosslessSV1, generate_uid

from studies.models import (
    AuditEvent,
    DicomReceiverRun,
    ImageStatus,
    Prediction,
    Radiograph,
    Study,
    StudyStatus,
)
from tests.conftest import REPO_ROOT
from tests.factories import PASSWORD, UserFactory
from tests.inference import hostile
from tests.pacs.fixtures_receiver import *  # noqa: F403 (fixtures)
from tests.pacs.fixtures_receiver import (
    CSPINE_CR,
    HAND_CR,
    HIP_CR,
    RECEIVER_AE,
    TIBIA_CR,
    Receiver,
    new_hand_study,
    storescu,
    wait_for,
)

pytestmark = pytest.mark.integration

SUCCESS = "Received Store Response (Success)"
J2K = ("-xv", "-R")  # propose JPEG 2000 lossless (the file's own syntax) and nothing else
JPEG_LOSSLESS = ("-xs", "-R")


def uid_of(path, keyword: str = "SOPInstanceUID") -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True)[keyword].value)


def predicted(study_uid: str, images: int):
    """The study once it is predicted with `images` images done, else None."""
    study = Study.objects.filter(study_instance_uid=study_uid, status=StudyStatus.PREDICTED).first()
    if study and study.images.filter(status=ImageStatus.DONE).count() == images:
        return study
    return None


def predictions_per_image(study: Study) -> list[int]:
    return [Prediction.objects.filter(radiograph=image).count() for image in study.images.order_by("id")]


def settled() -> bool:
    """No image waits for the worker any more."""
    return not Radiograph.objects.filter(status__in=[ImageStatus.QUEUED, ImageStatus.PROCESSING]).exists()


def test_storescu_sends_the_shared_radiographs_and_each_is_filed_and_predicted_once(receiving):
    receiver, worker = receiving
    sent = (
        storescu(receiver, HAND_CR, TIBIA_CR, options=J2K)
        + storescu(receiver, HIP_CR, options=JPEG_LOSSLESS)
        + storescu(receiver, CSPINE_CR)
    )
    assert sent.count(SUCCESS) == 4, sent

    hand = wait_for(
        lambda: predicted(uid_of(HAND_CR, "StudyInstanceUID"), 1), "the hand predicted", worker, receiver
    )
    assert hand.body_part == "XR_HAND" and hand.accession_number.startswith("UID-")  # it had none
    image = hand.images.get()
    stored = pydicom.dcmread(io.BytesIO(image.file.read()), stop_before_pixels=True)
    assert stored.file_meta.TransferSyntaxUID == JPEG2000Lossless  # as received, not converted
    hip = Radiograph.objects.get(sop_instance_uid=uid_of(HIP_CR))
    hip_file = pydicom.dcmread(io.BytesIO(hip.file.read()), stop_before_pixels=True)
    assert hip_file.file_meta.TransferSyntaxUID == JPEGLosslessSV1
    # Tibia, hip and cervical spine are not MURA types: filed, waiting for a human, never predicted.
    waiting = Study.objects.filter(status=StudyStatus.NEEDS_BODY_PART)
    assert sorted(study.patient.mrn for study in waiting) == ["10RG2", "11RG3", "77654033"]
    assert all(study.body_part == "" for study in waiting)

    resent = (
        storescu(receiver, HAND_CR, TIBIA_CR, options=J2K)
        + storescu(receiver, HIP_CR, options=JPEG_LOSSLESS)
        + storescu(receiver, CSPINE_CR)
    )
    assert resent.count(SUCCESS) == 4, resent
    time.sleep(2)  # a wrong second job would have been queued and claimed by now
    assert settled()
    assert Radiograph.objects.count() == 4 and predictions_per_image(hand) == [1]
    assert Prediction.objects.count() == 1
    assert AuditEvent.objects.filter(action="image.received").count() == 4
    duplicates = AuditEvent.objects.filter(action="image.duplicate_received")
    assert sum(event.details["instances"] for event in duplicates) == 4
    assert duplicates.count() == 4  # one per study per association: hand and tibia shared one
    assert AuditEvent.objects.filter(action="inference.completed", study=hand).count() == 1
    received = AuditEvent.objects.filter(action="image.received").first()
    assert received.details["source"]["calling_ae"] == "STORESCU" and received.ip_address == "127.0.0.1"


def test_a_study_keeps_receiving_while_its_first_image_is_predicted(receiving, tmp_path):
    receiver, worker = receiving
    first, second = new_hand_study(tmp_path, patient_id="LATE-1", instances=2)
    study_uid = uid_of(first, "StudyInstanceUID")
    assert SUCCESS in storescu(receiver, first, options=J2K)
    study = wait_for(
        lambda: Study.objects.filter(
            study_instance_uid=study_uid, status__in=[StudyStatus.PROCESSING, StudyStatus.PREDICTED]
        ).first(),
        "the first image claimed",
        worker,
        receiver,
    )
    assert SUCCESS in storescu(receiver, second, options=J2K)

    study = wait_for(lambda: predicted(study_uid, 2), "both images predicted", worker, receiver)
    assert predictions_per_image(study) == [1, 1]
    probabilities = list(
        Prediction.objects.filter(radiograph__study=study).values_list("abnormal_probability", flat=True)
    )
    assert study.result.abnormal_probability == pytest.approx(sum(probabilities) / 2)


def test_orthanc_forwards_a_study_to_the_receiver(receiving, orthanc, tmp_path):
    receiver, worker = receiving
    paths = new_hand_study(tmp_path, patient_id="PACS-7", instances=2)
    for path in paths:
        orthanc.upload(path)
    orthanc.add_modality("MSKDETECT", RECEIVER_AE, "127.0.0.1", receiver.port)
    (orthanc_study,) = orthanc.get("/studies")
    orthanc.post("/modalities/MSKDETECT/store", {"Resources": [orthanc_study], "Synchronous": True})

    study_uid = uid_of(paths[0], "StudyInstanceUID")
    study = wait_for(lambda: predicted(study_uid, 2), "the forwarded study predicted", worker, receiver)
    assert study.patient.mrn == "PACS-7" and predictions_per_image(study) == [1, 1]
    received = AuditEvent.objects.filter(action="image.received", study=study)
    assert {event.details["source"]["calling_ae"] for event in received} == {orthanc.aet}

    # Orthanc sends the study again: success, nothing new.
    orthanc.post("/modalities/MSKDETECT/store", {"Resources": [orthanc_study], "Synchronous": True})
    wait_for(
        lambda: AuditEvent.objects.filter(action="image.duplicate_received", study=study).exists(),
        "the re-send audited",
        receiver,
    )
    assert study.images.count() == 2 and predictions_per_image(study) == [1, 1]


def test_stow_rs_through_the_web_server_files_and_predicts_once(receiving, receive_web, tmp_path):
    receiver, worker = receiving
    UserFactory(username="pacs-gateway", role="staff")
    answer = requests.post(
        f"{receive_web.url}/api/v1/auth/token/",
        json={"username": "pacs-gateway", "password": PASSWORD},
        timeout=30,
    )
    headers = {"Authorization": f"Token {answer.json()['token']}"}
    hands = new_hand_study(tmp_path, patient_id="STOW-3", instances=2)
    files = [*hands, HIP_CR]
    boundary = "stow-" + generate_uid()[-12:]
    body = (
        b"".join(
            f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + path.read_bytes() + b"\r\n"
            for path in files
        )
        + f"--{boundary}--\r\n".encode()
    )
    headers["Content-Type"] = f'multipart/related; type="application/dicom"; boundary={boundary}'

    stored = requests.post(f"{receive_web.url}/dicomweb/studies", data=body, headers=headers, timeout=120)
    assert stored.status_code == 200, stored.text
    assert stored.headers["Content-Type"] == "application/dicom+json"
    referenced = [item["00081155"]["Value"][0] for item in stored.json()["00081199"]["Value"]]
    assert referenced == [uid_of(path) for path in files]
    again = requests.post(f"{receive_web.url}/dicomweb/studies", data=body, headers=headers, timeout=120)
    assert again.status_code == 200 and "00081198" not in again.json()

    study = wait_for(
        lambda: predicted(uid_of(hands[0], "StudyInstanceUID"), 2),
        "the STOW-RS study predicted",
        worker,
        receiver,
    )
    assert predictions_per_image(study) == [1, 1]
    assert Radiograph.objects.count() == 3
    assert (
        Study.objects.get(study_instance_uid=uid_of(HIP_CR, "StudyInstanceUID")).status == "needs_body_part"
    )
    assert AuditEvent.objects.filter(action="image.duplicate_received").count() == 2  # one per study
    bad_token = {**headers, "Authorization": "Token not-a-token"}
    refused = requests.post(f"{receive_web.url}/dicomweb/studies", data=body, headers=bad_token, timeout=30)
    assert refused.status_code == 401

    # /healthz sees the receiver's heartbeat and its counters (no patient data).
    def receiver_alive():
        part = requests.get(f"{receive_web.url}/healthz", timeout=30).json()["dicom_receiver"]
        return part if part.get("state") == "alive" else None

    health = wait_for(receiver_alive, "the receiver alive in /healthz", receiver, timeout=30)
    assert health["status"] == "ok" and health["runs"][0]["port"] == receiver.port


def test_a_caller_not_allowed_is_rejected_and_a_refused_instance_is_answered_with_why(receiving, tmp_path):
    receiver, _worker = receiving
    intruder = storescu(receiver, CSPINE_CR, aet="INTRUDER")
    assert "Association Rejected" in intruder and "Calling AE Title Not Recognized" in intruder
    ct = tmp_path / "ct.dcm"
    ct.write_bytes(hostile.dicom_ct())
    refused = storescu(receiver, ct, options=("-d",))
    assert "0xc001" in refused.lower() and "not a project" in refused  # status and error comment
    assert not Radiograph.objects.exists()
    event = AuditEvent.objects.get(action="dicom.instance_refused")
    assert event.details["status"] == "0xC001" and event.details["source"]["calling_ae"] == "STORESCU"


def test_200_instances_sent_at_once_are_all_kept_exactly_once(receiving, tmp_path):
    receiver, _worker = receiving
    source = pydicom.dcmread(CSPINE_CR)
    study_uid, series_uid = generate_uid(), generate_uid()
    paths = []
    for number in range(200):
        source.StudyInstanceUID, source.SeriesInstanceUID = study_uid, series_uid
        source.SOPInstanceUID = source.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        source.InstanceNumber = number + 1
        paths.append(tmp_path / f"{number:03d}.dcm")
        source.save_as(paths[-1], enforce_file_format=True)

    started = time.perf_counter()
    sent = storescu(receiver, *paths)
    seconds = time.perf_counter() - started

    assert sent.count(SUCCESS) == 200, sent[-3000:]
    images = Radiograph.objects.filter(study__study_instance_uid=study_uid)
    assert images.count() == 200 and images.values("sop_instance_uid").distinct().count() == 200
    assert Study.objects.filter(study_instance_uid=study_uid).count() == 1
    rate = 200 / seconds
    print(
        f"\nDICOM receiver (PostgreSQL, one storescu call): 200 instances in {seconds:.1f} s = {rate:.1f}/s"
    )


def test_two_senders_of_one_new_study_at_once_make_one_study(receiving, tmp_path):
    receiver, _worker = receiving
    source = pydicom.dcmread(CSPINE_CR)
    source.StudyInstanceUID, study_uid = (generate_uid(),) * 2
    batches = []
    for sender in range(2):
        paths = []
        for number in range(15):
            source.SOPInstanceUID = source.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            paths.append(tmp_path / f"{sender}-{number:02d}.dcm")
            source.save_as(paths[-1], enforce_file_format=True)
        batches.append(paths)
    # Two associations at once, both starting with an instance of a study nobody has yet.
    with ThreadPoolExecutor(2) as pool:
        outputs = list(pool.map(lambda paths: storescu(receiver, *paths), batches))
    assert [output.count(SUCCESS) for output in outputs] == [15, 15], outputs
    assert Study.objects.filter(study_instance_uid=study_uid).count() == 1
    assert Radiograph.objects.filter(study__study_instance_uid=study_uid).count() == 30


def test_benchmark_receiver_reports_every_instance_stored_once():
    done = subprocess.run(
        [sys.executable, "manage.py", "benchmark_receiver", "--instances", "20"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["every_instance_stored_once"] and figures["stored"] == 20
    assert figures["first"]["answered_success"] == figures["again"]["answered_success"] == 20
    assert figures["duplicates_counted"] == 20 and figures["first"]["instances_per_second"] > 0


def test_sigterm_stops_the_receiver_cleanly(transactional_db, receive_env, e2e_dir):
    receiver = Receiver(env=receive_env, log_path=e2e_dir / "receiver-sigterm.log")
    wait_for(
        lambda: DicomReceiverRun.objects.filter(port=receiver.port).exists(),
        "the receiver's heartbeat",
        receiver,
    )
    assert receiver.stop() == 0, receiver.tail()
    run = DicomReceiverRun.objects.get(port=receiver.port)
    assert run.stopped_at is not None
    assert "DICOM receiver stopped" in receiver.log_path.read_text()
