"""Sending results to the PACS: planning with the result and the review, the send task's state machine
(destination down → pending and retried → sent), demo results withheld, "Send again", the study page,
the API and /healthz.

The destinations are real, on the loopback interface: a pynetdicom storage SCP and a small HTTP
server answering STOW-RS; the task runs in-process (`apply`) and publishes its retries to the real
broker of the test settings, watched through Celery's `after_task_publish` signal.
"""

import io
import json
import socket
import threading
from datetime import timedelta
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pydicom
import pytest
from celery.signals import after_task_publish
from django.utils import timezone
from pydicom.uid import ComprehensiveSRStorage, SecondaryCaptureImageStorage
from pynetdicom import AE, evt

from studies import services
from studies.models import AuditEvent, DicomExport, DicomExportTrigger, DicomSend, ImageFormat, ImageStatus
from studies.services.pacs_exports import dicom_export_build
from studies.services.pacs_sends import pacs_exports_plan, pacs_sends_redispatch_overdue
from studies.services.predictions import ImageOutcome, ModelRun, predictions_record
from studies.tasks import dispatch_due_pacs_sends, send_dicom_results
from tests.factories import RadiographFactory, StudyResultFactory, UserFactory
from tests.studies.dicom_samples import dicom_study

pytestmark = pytest.mark.django_db


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class StorageSCP:
    """A real C-STORE SCP on the loopback; `statuses` answers per SOP class (default success)."""

    def __init__(self, ae_title: str = "PACS") -> None:
        self.ae_title = ae_title
        self.port = free_port()
        self.received: list[pydicom.Dataset] = []
        self.calling: list[str] = []
        self.statuses: dict[str, int] = {}
        self.server = None

    def start(self) -> "StorageSCP":
        ae = AE(ae_title=self.ae_title)
        for sop_class in (ComprehensiveSRStorage, SecondaryCaptureImageStorage):
            ae.add_supported_context(sop_class)
        self.server = ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)]
        )
        return self

    def _store(self, event) -> int:
        dataset = event.dataset
        status = self.statuses.get(dataset.SOPClassUID, 0x0000)
        if status == 0x0000:
            self.received.append(dataset)
            self.calling.append(event.assoc.requestor.ae_title)
        return status

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None


class StowServer:
    """A DICOMweb STOW-RS endpoint on the loopback that records each request and answers as told."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.answer_status = 200
        self.failed_uids: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                failed = [
                    {"00081155": {"vr": "UI", "Value": [uid]}, "00081197": {"vr": "US", "Value": [0xC122]}}
                    for uid in outer.failed_uids
                ]
                document = json.dumps({"00081198": {"vr": "SQ", "Value": failed}} if failed else {}).encode()
                self.send_response(outer.answer_status)
                self.send_header("Content-Type", "application/dicom+json")
                self.send_header("Content-Length", str(len(document)))
                self.end_headers()
                self.wfile.write(document)

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/dicom-web"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def parts(self, index: int = -1) -> list[pydicom.Dataset]:
        request = self.requests[index]
        raw = f"Content-Type: {request['headers']['Content-Type']}\r\n\r\n".encode() + request["body"]
        message = BytesParser(policy=HTTP).parsebytes(raw)
        return [pydicom.dcmread(io.BytesIO(part.get_payload(decode=True))) for part in message.iter_parts()]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def scp():
    server = StorageSCP()
    yield server
    server.stop()


@pytest.fixture
def stow():
    server = StowServer()
    yield server
    server.close()


@pytest.fixture
def cstore_to(settings):
    """Configure one C-STORE destination (our AE title MSKDETECT) and a short retry period."""

    def configure(scp: StorageSCP) -> str:
        settings.MSKDETECT_DICOM_DESTINATIONS = [f"{scp.ae_title}@127.0.0.1:{scp.port}"]
        settings.MSKDETECT_STOWRS_DESTINATION = ""
        settings.MSKDETECT_DICOM_AE_TITLE = "MSKDETECT"
        settings.MSKDETECT_PACS_TIMEOUT_SECONDS = 5
        settings.MSKDETECT_PACS_RETRY_SECONDS = 30
        return f"C-STORE {scp.ae_title}@127.0.0.1:{scp.port}"

    return configure


def planned(study, django_capture_on_commit_callbacks, **kwargs) -> DicomExport:
    with django_capture_on_commit_callbacks(execute=True):
        export = pacs_exports_plan(
            study=study, trigger=kwargs.pop("trigger", DicomExportTrigger.RESULT), **kwargs
        )
    return export


@pytest.fixture
def published() -> list[dict]:
    """Every send-task message published while the test runs: its send ids, queue and ETA."""
    sent: list[dict] = []

    def record(sender=None, body=None, headers=None, routing_key=None, **kwargs) -> None:
        if sender == send_dicom_results.name:
            sent.append({"send_ids": list(body[0][0]), "queue": routing_key, "eta": headers.get("eta")})

    after_task_publish.connect(record, weak=False)
    yield sent
    after_task_publish.disconnect(record)


def actions(study) -> list[str]:
    return list(AuditEvent.objects.filter(study=study).order_by("id").values_list("action", flat=True))


# --- planning ---------------------------------------------------------------------------------------
def test_nothing_is_planned_without_a_destination_and_it_costs_no_query(settings, django_assert_num_queries):
    settings.MSKDETECT_DICOM_DESTINATIONS, settings.MSKDETECT_STOWRS_DESTINATION = [], ""
    study, _ = dicom_study(images=1)
    with django_assert_num_queries(0):
        assert pacs_exports_plan(study=study, trigger=DicomExportTrigger.RESULT) is None


def test_a_png_study_has_no_pacs_study_and_the_page_says_so(client, settings):
    settings.MSKDETECT_DICOM_DESTINATIONS = ["PACS@127.0.0.1:104"]
    result = StudyResultFactory()
    RadiographFactory(study=result.study, status=ImageStatus.DONE)
    assert pacs_exports_plan(study=result.study, trigger=DicomExportTrigger.RESULT) is None
    client.force_login(UserFactory(role="staff"))
    page = client.get(f"/studies/{result.study.pk}/").content.decode()
    assert "This study has no DICOM image, so it has no study in the PACS" in page


def test_demo_result_is_recorded_as_not_sent_and_nothing_is_published(
    client, settings, published, django_capture_on_commit_callbacks
):
    settings.MSKDETECT_DICOM_DESTINATIONS = ["PACS@127.0.0.1:104"]
    settings.MSKDETECT_SEND_DEMO_RESULTS = False  # the default
    study, _ = dicom_study(images=1, demo=True)
    planned(study, django_capture_on_commit_callbacks)
    (send,) = DicomSend.objects.filter(study=study)
    assert send.status == DicomSend.Status.NOT_SENT_DEMO
    assert len(published) == 0
    event = AuditEvent.objects.get(study=study, action="result.not_sent")
    assert "demo model" in event.details["reason"] and event.details["destinations"] == [send.destination]
    client.force_login(UserFactory(role="staff"))
    page = client.get(f"/studies/{study.pk}/").content.decode()
    assert "Not sent: demo model" in page and "stays out of the PACS" in page


def test_a_result_recorded_by_the_worker_is_planned_once_and_published_after_commit(
    settings, published, django_capture_on_commit_callbacks
):
    settings.MSKDETECT_DICOM_DESTINATIONS = ["PACS@127.0.0.1:104"]
    settings.MSKDETECT_STOWRS_DESTINATION = "http://pacs.example:8042/dicom-web"
    study, _ = dicom_study(images=1)
    study.result.delete()
    image = study.images.get()
    image.predictions.all().delete()
    run = ModelRun(
        model_name="HAND",
        body_part="XR_HAND",
        model_version="d" * 64,
        threshold=0.5,
        demo=False,
        preprocessing="seed",
        preprocess_ms=1,
        inference_ms=1,
    )
    outcome = ImageOutcome(radiograph_id=image.id, abnormal_probability=0.7, label="abnormal")
    with django_capture_on_commit_callbacks(execute=True):
        predictions_record(study_id=study.id, run=run, outcomes=[outcome])
    export = DicomExport.objects.get(study=study)
    assert export.trigger == "result" and export.result["model_version"] == "d" * 64
    assert sorted(DicomSend.objects.values_list("destination", flat=True)) == [
        "C-STORE PACS@127.0.0.1:104",
        "STOW-RS http://pacs.example:8042/dicom-web",
    ]
    (message,) = published  # one task for both sends, on the default queue, not behind predictions
    assert sorted(message["send_ids"]) == sorted(DicomSend.objects.values_list("id", flat=True))
    assert message["queue"] == "celery" and message["eta"] is None
    # The same job delivered again stores nothing new, so sends nothing new.
    with django_capture_on_commit_callbacks(execute=True):
        predictions_record(study_id=study.id, run=run, outcomes=[outcome])
    assert DicomExport.objects.filter(study=study).count() == 1


def test_a_review_plans_a_new_report(settings, published, django_capture_on_commit_callbacks):
    settings.MSKDETECT_DICOM_DESTINATIONS = ["PACS@127.0.0.1:104"]
    study, _ = dicom_study(images=1)
    planned(study, django_capture_on_commit_callbacks)
    with django_capture_on_commit_callbacks(execute=True):
        review = services.review_create(
            study=study, radiologist=UserFactory(role="radiologist"), decision="confirm", final_label=None
        )
    export = DicomExport.objects.filter(study=study).last()
    assert (export.trigger, export.review_id, export.predictions) == ("review", review.id, [])
    assert len(published) == 2


# --- the send task ----------------------------------------------------------------------------------
def test_destination_down_stays_pending_and_is_retried_then_sent_once(
    scp, cstore_to, published, django_capture_on_commit_callbacks
):
    destination = cstore_to(scp)  # configured, but nothing listens yet
    study, _ = dicom_study(images=2)
    export = planned(study, django_capture_on_commit_callbacks)
    send = DicomSend.objects.get(study=study)
    before = len(published)

    send_dicom_results.apply(args=[[send.id]])
    send.refresh_from_db()
    assert send.status == "pending" and send.attempts == 1
    assert destination in send.last_error and "did not answer" in send.last_error
    assert timedelta(seconds=25) < send.next_attempt_at - timezone.now() <= timedelta(seconds=30)
    assert len(published) == before + 1 and published[-1]["send_ids"] == [send.id]
    assert published[-1]["eta"] is not None  # the retry waits its backoff
    failed = AuditEvent.objects.get(study=study, action="result.send_failed")
    assert failed.details["will_retry"] is True and failed.details["objects"] == "SR + 2 heat-map images"

    send_dicom_results.apply(args=[[send.id]])  # a duplicate message before the retry is due
    send.refresh_from_db()
    assert send.attempts == 1

    scp.start()
    DicomSend.objects.filter(id=send.id).update(next_attempt_at=timezone.now())  # the backoff has passed
    send_dicom_results.apply(args=[[send.id]])
    send.refresh_from_db()
    export.refresh_from_db()
    assert send.status == "sent" and send.attempts == 2 and send.last_error == "" and send.sent_at
    sent_uids = sorted(item["sop_instance_uid"] for item in export.instances)
    assert sorted(ds.SOPInstanceUID for ds in scp.received) == sent_uids
    assert sorted(ds.SOPClassUID for ds in scp.received) == sorted(
        [ComprehensiveSRStorage, SecondaryCaptureImageStorage, SecondaryCaptureImageStorage]
    )
    assert set(scp.calling) == {"MSKDETECT"}
    sent = AuditEvent.objects.get(study=study, action="result.sent")
    assert (
        sent.details["destination"] == destination and sorted(sent.details["sop_instance_uids"]) == sent_uids
    )

    send_dicom_results.apply(args=[[send.id]])  # delivered again: nothing is sent twice
    assert len(scp.received) == 3


def test_a_redelivered_send_skips_the_instances_the_destination_acknowledged(
    scp, cstore_to, django_capture_on_commit_callbacks
):
    cstore_to(scp.start())
    scp.statuses[SecondaryCaptureImageStorage] = 0xA700  # out of resources: the SR goes, the SCs wait
    study, _ = dicom_study(images=2)
    planned(study, django_capture_on_commit_callbacks)
    send = DicomSend.objects.get(study=study)
    send_dicom_results.apply(args=[[send.id]])
    send.refresh_from_db()
    assert send.status == "pending" and "out of resources" in send.last_error
    assert [ds.SOPClassUID for ds in scp.received] == [ComprehensiveSRStorage]
    assert send.acknowledged == [scp.received[0].SOPInstanceUID]

    scp.statuses.clear()
    DicomSend.objects.filter(id=send.id).update(next_attempt_at=timezone.now())
    send_dicom_results.apply(args=[[send.id]])
    send.refresh_from_db()
    assert send.status == "sent"
    assert [ds.SOPClassUID for ds in scp.received].count(ComprehensiveSRStorage) == 1  # not sent twice
    assert len(scp.received) == 3


def test_a_refused_instance_fails_the_send_and_staff_send_it_again(
    client, scp, cstore_to, django_capture_on_commit_callbacks
):
    cstore_to(scp.start())
    scp.statuses[ComprehensiveSRStorage] = 0xC000
    study, _ = dicom_study(images=1)
    planned(study, django_capture_on_commit_callbacks)
    send = DicomSend.objects.get(study=study)
    send_dicom_results.apply(args=[[send.id]])
    send.refresh_from_db()
    assert send.status == "failed" and "0xC000" in send.last_error and "refused" in send.last_error
    event = AuditEvent.objects.filter(study=study, action="result.send_failed").last()
    assert event.details["will_retry"] is False and event.details["gave_up"] == "the destination refused it"

    staff = UserFactory(role="staff")
    client.force_login(staff)
    page = client.get(f"/studies/{study.pk}/").content.decode()
    assert "Send again" in page and "0xC000" in page
    scp.statuses.clear()
    with django_capture_on_commit_callbacks(execute=True):
        answer = client.post(f"/studies/{study.pk}/pacs-sends/{send.pk}/send-again/")
    assert answer.status_code == 302 and answer["Location"].endswith("#pacs-sends")
    send.refresh_from_db()
    assert send.status == "pending" and send.next_attempt_at is None
    requeued = AuditEvent.objects.get(study=study, action="result.send_requeued")
    assert requeued.actor_username == staff.username and "0xC000" in requeued.details["previous_error"]
    send_dicom_results.apply(args=[[send.id]])
    send.refresh_from_db()
    assert send.status == "sent" and send.attempts == 2


def test_send_again_needs_a_clinical_role_and_a_failed_send(
    client, scp, cstore_to, django_capture_on_commit_callbacks
):
    cstore_to(scp)
    study, _ = dicom_study(images=1)
    planned(study, django_capture_on_commit_callbacks)
    send = DicomSend.objects.get(study=study)
    client.force_login(UserFactory(role=None))
    assert client.post(f"/studies/{study.pk}/pacs-sends/{send.pk}/send-again/").status_code == 403
    client.force_login(UserFactory(role="staff"))
    answer = client.post(f"/studies/{study.pk}/pacs-sends/{send.pk}/send-again/", follow=True)
    assert "Only a failed send can be sent again; this one is pending." in answer.content.decode()
    assert not AuditEvent.objects.filter(action="result.send_requeued").exists()


def test_retries_stop_once_the_give_up_period_has_passed(
    scp, cstore_to, settings, django_capture_on_commit_callbacks
):
    cstore_to(scp)  # down
    settings.MSKDETECT_PACS_GIVE_UP_AFTER_SECONDS = 10  # shorter than the first backoff (30 s)
    study, _ = dicom_study(images=1)
    planned(study, django_capture_on_commit_callbacks)
    send = DicomSend.objects.get(study=study)
    send_dicom_results.apply(args=[[send.id]])
    send.refresh_from_db()
    assert send.status == "failed" and send.next_attempt_at is None
    assert (
        AuditEvent.objects.get(study=study, action="result.send_failed").details["gave_up"]
        == "retries ran out"
    )


def test_stowrs_posts_one_multipart_request_with_the_credentials(
    stow, settings, published, django_capture_on_commit_callbacks
):
    settings.MSKDETECT_DICOM_DESTINATIONS = []
    settings.MSKDETECT_STOWRS_DESTINATION = stow.url
    settings.MSKDETECT_STOWRS_TOKEN = "s3cret-token"
    study, _ = dicom_study(images=2)
    export = planned(study, django_capture_on_commit_callbacks)
    send = DicomSend.objects.get(study=study)
    assert send.protocol == "stowrs" and send.destination == f"STOW-RS {stow.url}"

    stow.answer_status = 503
    send_dicom_results.apply(args=[[send.id]])
    send.refresh_from_db()
    assert send.status == "pending" and "HTTP 503" in send.last_error

    stow.answer_status = 200
    DicomSend.objects.filter(id=send.id).update(next_attempt_at=timezone.now())
    send_dicom_results.apply(args=[[send.id]])
    send.refresh_from_db()
    export.refresh_from_db()
    assert send.status == "sent"
    request = stow.requests[-1]
    study_uid = export.instances[0]["study_instance_uid"]
    assert request["path"] == f"/dicom-web/studies/{study_uid}"
    assert request["headers"]["Content-Type"].startswith('multipart/related; type="application/dicom"')
    assert request["headers"]["Authorization"] == "Bearer s3cret-token"
    parts = stow.parts()
    assert sorted(ds.SOPInstanceUID for ds in parts) == sorted(
        i["sop_instance_uid"] for i in export.instances
    )
    assert {ds.StudyInstanceUID for ds in parts} == {study_uid}


def test_stowrs_partial_failure_keeps_what_was_stored_and_names_the_refused_one(
    stow, settings, published, django_capture_on_commit_callbacks
):
    settings.MSKDETECT_DICOM_DESTINATIONS = []
    settings.MSKDETECT_STOWRS_DESTINATION = stow.url
    study, _ = dicom_study(images=1)
    planned(study, django_capture_on_commit_callbacks)
    send = DicomSend.objects.get(study=study)
    export = DicomExport.objects.get(study=study)
    capture_uid = next(i for i in dicom_export_build(export_id=export.id).instances if i["kind"] == "sc")[
        "sop_instance_uid"
    ]
    stow.answer_status, stow.failed_uids = 202, [capture_uid]
    send_dicom_results.apply(args=[[send.id]])
    send.refresh_from_db()
    assert send.status == "failed" and "failure reason 0xC122" in send.last_error
    assert capture_uid not in send.acknowledged and len(send.acknowledged) == 1


def test_the_sweep_publishes_a_lost_send_again_at_most_once_per_grace_period(
    settings, published, django_capture_on_commit_callbacks
):
    settings.MSKDETECT_DICOM_DESTINATIONS = ["PACS@127.0.0.1:104"]
    study, _ = dicom_study(images=1)
    pacs_exports_plan(study=study, trigger=DicomExportTrigger.RESULT)  # its publish never ran (no commit)
    send = DicomSend.objects.get(study=study)
    DicomSend.objects.filter(id=send.id).update(created_at=timezone.now() - timedelta(minutes=5))
    assert dispatch_due_pacs_sends.apply().get() == 1
    assert len(published) == 1
    assert pacs_sends_redispatch_overdue(now=timezone.now(), grace=timedelta(seconds=120)) == []
    later = timezone.now() + timedelta(seconds=121)
    assert pacs_sends_redispatch_overdue(now=later, grace=timedelta(seconds=120)) == [send.id]


# --- the page, the API, /healthz --------------------------------------------------------------------
def test_page_and_api_show_what_was_sent_where_and_when(
    client, api_client_for, scp, cstore_to, django_capture_on_commit_callbacks
):
    destination = cstore_to(scp.start())
    study, _ = dicom_study(images=1)
    export = planned(study, django_capture_on_commit_callbacks)
    send = DicomSend.objects.get(study=study)
    staff = UserFactory(role="staff")
    client.force_login(staff)
    pending_page = client.get(f"/studies/{study.pk}/").content.decode()
    assert (
        "Waiting to be sent" in pending_page and f'hx-get="/studies/{study.pk}/pacs-sends/"' in pending_page
    )

    send_dicom_results.apply(args=[[send.id]])
    panel = client.get(f"/studies/{study.pk}/pacs-sends/", HTTP_X_LIVE_POLL="1").content.decode()
    assert (
        "Model result: SR + 1 heat-map image" in panel
        and destination in panel
        and 'Sent <time datetime="' in panel
    )
    assert "hx-get" not in panel  # nothing pending: the panel stops polling

    body = api_client_for(staff).get(f"/api/v1/studies/{study.pk}/").json()
    (sent,) = body["pacs_sends"]
    export.refresh_from_db()
    assert sent["status"] == "sent" and sent["destination"] == destination and sent["protocol"] == "cstore"
    assert sent["trigger"] == "result" and sent["objects"] == "SR + 1 heat-map image"
    assert sorted(sent["sop_instance_uids"]) == sorted(i["sop_instance_uid"] for i in export.instances)


def test_healthz_reports_each_destination_and_is_degraded_while_one_is_failing(
    client, scp, cstore_to, settings, published, django_capture_on_commit_callbacks
):
    destination = cstore_to(scp)
    study, _ = dicom_study(images=1)
    planned(study, django_capture_on_commit_callbacks)
    send = DicomSend.objects.get(study=study)
    send_dicom_results.apply(args=[[send.id]])

    body = client.get("/healthz").json()
    figures = body["pacs"]["destinations"][destination]
    assert body["pacs"]["status"] == "degraded" and body["status"] in ("degraded", "error")
    assert figures["pending"] == 1 and figures["retrying"] == 1 and "did not answer" in figures["last_error"]
    assert figures["last_sent_at"] is None
    assert study.patient.mrn not in json.dumps(body)

    scp.start()
    DicomSend.objects.filter(id=send.id).update(next_attempt_at=timezone.now())
    send_dicom_results.apply(args=[[send.id]])
    figures = client.get("/healthz").json()["pacs"]
    assert figures["status"] == "ok"
    assert figures["destinations"][destination]["last_sent_at"] is not None
    assert figures["destinations"][destination]["pending"] == 0


def test_a_study_image_that_is_png_is_left_out_and_the_dicom_ones_referenced(
    settings, django_capture_on_commit_callbacks
):
    settings.MSKDETECT_DICOM_DESTINATIONS = ["PACS@127.0.0.1:104"]
    study, uids = dicom_study(images=1)
    RadiographFactory(study=study, status=ImageStatus.DONE, format=ImageFormat.PNG)
    export = planned(study, django_capture_on_commit_callbacks)
    assert export.images == [study.images.get(format=ImageFormat.DICOM).id]
    (sr,) = [i for i in dicom_export_build(export_id=export.id).instances if i["kind"] == "sr"]
    assert sr["study_instance_uid"] and len(uids) == 1
