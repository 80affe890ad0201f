"""Faults a deployment meets, injected into a real stack: nothing uploaded may be lost or doubled.

Each test runs gunicorn and a real `celery worker` (with beat) on the shared PostgreSQL test
database and Redis, breaks one thing (a worker killed with SIGKILL, Redis stopped, the worker's
database connection terminated, a corrupt weight file, many concurrent clients) and checks, from
the database and over HTTP, that every image ends with exactly one prediction.
"""

import logging
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connection

from studies.models import AuditEvent, ImageStatus, Prediction, Radiograph, StudyStatus
from tests.faults.conftest import (
    JPEGS,
    SLOW_BODY_PART,
    WORKER_APPLICATION_NAME,
    WRIST_PNGS,
    FaultStack,
    children,
    maps_tensorflow,
    pid_alive,
    process_tree,
)
from tests.inference.tiny_models import BROKEN_FILE

pytestmark = pytest.mark.integration

logger = logging.getLogger(__name__)

# The first job of a fresh worker imports TensorFlow (tens of seconds on a busy 2-core box).
FIRST_JOB_SECONDS = 150


def statuses(image_ids: list[int]) -> list[str]:
    return list(Radiograph.objects.filter(id__in=image_ids).order_by("id").values_list("status", flat=True))


def all_in(image_ids: list[int], status: str):
    return lambda: statuses(image_ids) == [status] * len(image_ids)


def assert_predicted_once(image_ids: list[int]) -> None:
    """Every image is done with exactly one prediction row."""
    assert statuses(image_ids) == [ImageStatus.DONE] * len(image_ids)
    per_image = list(
        Prediction.objects.filter(radiograph_id__in=image_ids).values_list("radiograph_id", flat=True)
    )
    assert sorted(per_image) == sorted(image_ids), "each image must have exactly one prediction"


def test_a_worker_killed_mid_job_is_replaced_and_each_image_is_predicted_once(fault_stack: FaultStack):
    # The whole worker is gone, so Redis returns the unacknowledged message only after its
    # visibility timeout (an hour): the claim expiry (hard time limit + MSKDETECT_CLAIM_GRACE_SECONDS)
    # is what brings the images back. Small values keep the wait short; the soft limit still
    # covers the new worker importing TensorFlow in its first job.
    limits = {
        "MSKDETECT_TASK_SOFT_TIME_LIMIT": "25",
        "MSKDETECT_TASK_TIME_LIMIT": "27",
        "MSKDETECT_CLAIM_GRACE_SECONDS": "3",
    }
    claim_expiry = 27 + 3
    stack = fault_stack
    stack.start_web()
    first = stack.start_worker(**limits)
    staff = stack.client("fault-kill")
    patient = stack.patient(staff, mrn="FAULT-KILL")
    study_id = stack.study(staff, patient=patient, accession="FAULT-KILL-1", body_part=SLOW_BODY_PART)
    image_ids = stack.upload(staff, study_id, WRIST_PNGS[:2])

    stack.wait_until(
        all_in(image_ids, ImageStatus.PROCESSING), timeout=FIRST_JOB_SECONDS, what="processing", every=0.05
    )
    first_pids = process_tree(first.process.pid)
    stack.kill_worker()
    killed = time.monotonic()
    # The kill landed mid-job: the claim is held by a dead process and nothing was recorded.
    assert statuses(image_ids) == [ImageStatus.PROCESSING] * 2
    assert not Prediction.objects.filter(radiograph_id__in=image_ids).exists()
    # SIGKILL is delivered asynchronously: the pool child and beat may take a moment to go.
    stack.wait_until(
        lambda: not any(pid_alive(pid) for pid in first_pids),
        timeout=10,
        what="every process of the worker gone",
    )

    second = stack.start_worker(**limits)
    stack.wait_until(
        all_in(image_ids, ImageStatus.DONE), timeout=claim_expiry + FIRST_JOB_SECONDS, what="predicted again"
    )
    recovered = time.monotonic() - killed
    logger.info("kill -9: images predicted by the new worker %.1f s after the kill", recovered)

    assert_predicted_once(image_ids)
    body = staff.get(stack.url(f"/api/v1/studies/{study_id}/"), timeout=30).json()
    assert body["status"] == StudyStatus.PREDICTED, body
    assert body["result"] is not None
    actions = list(AuditEvent.objects.filter(study_id=study_id).values_list("action", flat=True))
    assert actions.count("inference.started") == 2  # the killed claim, then the new worker's
    assert actions.count("inference.completed") == 1
    assert second.process.poll() is None


def test_a_killed_pool_child_is_replaced_and_its_job_resumes_without_waiting_for_the_claim(fault_stack):
    # What the OOM killer does: only the process running the job (and holding TensorFlow) dies.
    # `reject_on_worker_lost` puts the message back at once and the same worker's new child takes
    # it; the claim carries the task id, so that re-delivery resumes the claimed images. A claim
    # expiry of over an hour, and no re-dispatch, rule out any other rescue.
    stack = fault_stack
    stack.start_web()
    worker = stack.start_worker(MSKDETECT_CLAIM_GRACE_SECONDS="3600")
    staff = stack.client("fault-oom")
    patient = stack.patient(staff, mrn="FAULT-OOM")
    study_id = stack.study(staff, patient=patient, accession="FAULT-OOM-1", body_part=SLOW_BODY_PART)
    image_ids = stack.upload(staff, study_id, WRIST_PNGS[:2])

    stack.wait_until(
        all_in(image_ids, ImageStatus.PROCESSING), timeout=FIRST_JOB_SECONDS, what="processing", every=0.05
    )
    # The child in the job is the one that loads TensorFlow (the main process and beat never do).
    pool = stack.wait_until(
        lambda: [pid for pid in children(worker.process.pid) if maps_tensorflow(pid)],
        timeout=FIRST_JOB_SECONDS,
        what="TensorFlow loaded in a pool child",
        every=0.05,
    )
    assert len(pool) == 1, pool
    os.kill(pool[0], signal.SIGKILL)
    killed = time.monotonic()
    assert statuses(image_ids) == [ImageStatus.PROCESSING] * 2
    assert not Prediction.objects.filter(radiograph_id__in=image_ids).exists()
    stack.wait_until(lambda: not pid_alive(pool[0]), timeout=10, what="the pool child gone")

    stack.wait_until(all_in(image_ids, ImageStatus.DONE), timeout=FIRST_JOB_SECONDS, what="predicted again")
    logger.info(
        "Pool child killed: images predicted %.1f s later by its replacement", time.monotonic() - killed
    )

    assert_predicted_once(image_ids)
    actions = list(AuditEvent.objects.filter(study_id=study_id).values_list("action", flat=True))
    assert actions.count("inference.started") == 2  # the killed child's claim, then the new child's
    assert actions.count("inference.completed") == 1
    # The same worker, through a new child, did it: no re-dispatch, no expired claim.
    assert worker.process.poll() is None
    replacement = [pid for pid in children(worker.process.pid) if maps_tensorflow(pid)]
    assert replacement and pool[0] not in replacement
    log = worker.log_path.read_text(errors="replace")
    assert "Re-dispatched" not in log
    assert Radiograph.objects.filter(id__in=image_ids, claimed_by="").count() == 2


def test_uploads_while_redis_is_down_succeed_and_are_predicted_when_it_returns(fault_stack, private_redis):
    stack = fault_stack
    stack.env["CELERY_BROKER_URL"] = private_redis.url
    stack.start_web()
    stack.start_worker()
    staff = stack.client("fault-redis")
    patient = stack.patient(staff, mrn="FAULT-REDIS")
    # The stack works before the outage.
    before = stack.study(staff, patient=patient, accession="FAULT-REDIS-0", body_part="XR_WRIST")
    warm = stack.upload(staff, before, JPEGS[:1])
    stack.wait_until(
        all_in(warm, ImageStatus.DONE), timeout=FIRST_JOB_SECONDS, what="predicted before the outage"
    )

    private_redis.stop()
    outage = time.monotonic()
    during: list[int] = []
    upload_seconds = []
    for index, paths in enumerate([WRIST_PNGS[:2], JPEGS[1:3], WRIST_PNGS[2:3]], start=1):
        study_id = stack.study(staff, patient=patient, accession=f"FAULT-REDIS-{index}", body_part="XR_WRIST")
        started = time.monotonic()
        during += stack.upload(staff, study_id, paths)  # asserts HTTP 201
        upload_seconds.append(time.monotonic() - started)
    # Kept, not sent: nothing could reach the broker.
    assert statuses(during) == [ImageStatus.QUEUED] * len(during)
    assert not Radiograph.objects.filter(id__in=during, dispatched_at__isnull=False).exists()

    # The worker notices the lost broker and keeps running, trying to reconnect.
    stack.wait_until(
        lambda: "Connection to broker lost" in stack.worker.log_path.read_text(errors="replace"),
        timeout=60,
        what="noticed by the worker",
    )
    assert stack.worker.process.poll() is None
    private_redis.start()
    restarted = time.monotonic()
    stack.wait_until(all_in(during, ImageStatus.DONE), timeout=120, what="predicted after Redis returned")
    logger.info(
        "Redis down %.1f s: %d uploads took %s s each; predicted %.1f s after Redis returned",
        restarted - outage,
        len(upload_seconds),
        ", ".join(f"{seconds:.1f}" for seconds in upload_seconds),
        time.monotonic() - restarted,
    )
    assert_predicted_once(warm + during)
    assert stack.worker.process.poll() is None


def test_a_dropped_database_connection_under_the_worker_is_retried_and_the_job_completes(fault_stack):
    stack = fault_stack
    stack.start_web()
    worker = stack.start_worker()
    staff = stack.client("fault-db")
    patient = stack.patient(staff, mrn="FAULT-DB")
    study_id = stack.study(staff, patient=patient, accession="FAULT-DB-1", body_part=SLOW_BODY_PART)
    image_ids = stack.upload(staff, study_id, WRIST_PNGS[:2])
    stack.wait_until(
        all_in(image_ids, ImageStatus.PROCESSING), timeout=FIRST_JOB_SECONDS, what="processing", every=0.05
    )
    # The worker holds its connection for the whole job; cut it like a database restart would.
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name = %s AND pid <> pg_backend_pid()",
            [WORKER_APPLICATION_NAME],
        )
        terminated = [row[0] for row in cursor.fetchall()]
    cut = time.monotonic()
    assert terminated and all(terminated), "the worker had no database connection to terminate"

    stack.wait_until(all_in(image_ids, ImageStatus.DONE), timeout=120, what="predicted after the retry")
    logger.info("Database connection cut: job completed %.1f s later", time.monotonic() - cut)
    assert_predicted_once(image_ids)
    log = worker.log_path.read_text(errors="replace")
    assert "Transient error, retrying images" in log, "the job must have retried, not merely finished"
    assert worker.process.poll() is None
    body = staff.get(stack.url(f"/api/v1/studies/{study_id}/"), timeout=30).json()
    assert body["status"] == StudyStatus.PREDICTED, body


def test_a_corrupt_weight_file_fails_its_body_part_and_the_same_worker_serves_the_others(fault_stack):
    stack = fault_stack
    stack.start_web()
    worker = stack.start_worker()
    staff = stack.client("fault-weights")
    patient = stack.patient(staff, mrn="FAULT-WEIGHTS")
    hand = stack.study(staff, patient=patient, accession="FAULT-WEIGHTS-1", body_part="XR_HAND")
    hand_images = stack.upload(staff, hand, WRIST_PNGS[:1])
    stack.wait_until(all_in(hand_images, ImageStatus.FAILED), timeout=FIRST_JOB_SECONDS, what="failed")
    pids = process_tree(worker.process.pid)

    body = staff.get(stack.url(f"/api/v1/studies/{hand}/"), timeout=30).json()
    assert body["status"] == StudyStatus.FAILED
    error = body["images"][0]["error"]
    assert BROKEN_FILE in error and "XR_HAND" in error, error
    assert BROKEN_FILE in body["error"]

    wrist = stack.study(staff, patient=patient, accession="FAULT-WEIGHTS-2", body_part="XR_WRIST")
    wrist_images = stack.upload(staff, wrist, WRIST_PNGS[1:3])
    stack.wait_until(all_in(wrist_images, ImageStatus.DONE), timeout=60, what="wrist predicted")
    # A second hand study fails the same way: the broken file is not half-cached.
    again = stack.study(staff, patient=patient, accession="FAULT-WEIGHTS-3", body_part="XR_HAND")
    again_images = stack.upload(staff, again, JPEGS[:1])
    stack.wait_until(all_in(again_images, ImageStatus.FAILED), timeout=60, what="failed again")

    assert_predicted_once(wrist_images)
    assert not Prediction.objects.filter(radiograph_id__in=hand_images + again_images).exists()
    # The same processes (worker, pool child, beat) served all three studies: nothing crashed.
    assert process_tree(worker.process.pid) == pids
    assert len(pids) >= 2


def test_fifty_uploads_from_five_concurrent_clients_make_fifty_predictions(fault_stack):
    stack = fault_stack
    stack.start_web()
    stack.start_worker()
    files = WRIST_PNGS[:4] + JPEGS
    clients = [stack.client(f"fault-client-{number}") for number in range(5)]
    patients = [stack.patient(client, mrn=f"FAULT-LOAD-{n}") for n, client in enumerate(clients)]

    def upload_ten(number: int) -> list[int]:
        client, patient = clients[number], patients[number]
        ids = []
        for index in range(10):
            study_id = stack.study(
                client, patient=patient, accession=f"FAULT-LOAD-{number}-{index}", body_part="XR_WRIST"
            )
            ids += stack.upload(client, study_id, [files[(number * 10 + index) % len(files)]])
        return ids

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=5) as pool:
        per_client = list(pool.map(upload_ten, range(5)))
    uploaded = time.monotonic()
    image_ids = [image_id for ids in per_client for image_id in ids]
    assert len(image_ids) == len(set(image_ids)) == 50

    stack.wait_until(all_in(image_ids, ImageStatus.DONE), timeout=240, what="all 50 predicted", every=0.5)
    logger.info(
        "50 uploads from 5 clients in %.1f s; all predicted %.1f s after the first upload",
        uploaded - started,
        time.monotonic() - started,
    )
    assert_predicted_once(image_ids)
    assert Prediction.objects.filter(radiograph__study__patient_id__in=patients).count() == 50
    studies = Radiograph.objects.filter(id__in=image_ids).values_list("study__status", flat=True)
    assert set(studies) == {StudyStatus.PREDICTED}
