"""Recovery by worker liveness, on the DEFAULT settings (time limits 600/660 s, claim grace 60 s,
beat every 10 s): PostgreSQL, Redis, real worker processes with embedded beat.

The time-limit rule would bring a dead worker's images back only after 720 s, and Redis would
hand the unacknowledged message back only after its visibility timeout (3600 s): every figure
below comes from the heartbeat (and the hand-back of a graceful stop), not from them. The three
scenarios share one stack and run one after the other, to keep the suite short.
"""

import logging
import time

import pytest
import requests

from studies.models import AuditEvent, ImageStatus, InferenceWorker, Prediction, Radiograph
from tests.faults.conftest import (
    HTTP_TIMEOUT,
    SLOW_BODY_PART,
    WRIST_PNGS,
    FaultStack,
    pid_alive,
    process_tree,
)
from tests.faults.test_faults import FIRST_JOB_SECONDS, all_in, assert_predicted_once, statuses

pytestmark = pytest.mark.integration

logger = logging.getLogger(__name__)

# What the issue asks: after a kill, predicted within 60 s of the new worker being ready; after a
# graceful stop, the job resumed on the next worker within 30 s.
RECOVERY_AFTER_KILL_SECONDS = 60
RESUME_AFTER_STOP_SECONDS = 30
NO_WORKER_SECONDS = 120
# Test-stack settings that would shorten what the issue measures: back to the defaults.
SHORTENED = ("MSKDETECT_REDISPATCH_AFTER_SECONDS", "MSKDETECT_REDISPATCH_EVERY_SECONDS")


def started_count(study_id: int) -> int:
    return AuditEvent.objects.filter(study_id=study_id, action="inference.started").count()


def new_study(
    stack: FaultStack, staff: requests.Session, patient: int, accession: str
) -> tuple[int, list[int]]:
    study_id = stack.study(staff, patient=patient, accession=accession, body_part=SLOW_BODY_PART)
    return study_id, stack.upload(staff, study_id, WRIST_PNGS[:4])


def kill_mid_job(stack: FaultStack, image_ids: list[int]) -> None:
    stack.wait_until(
        all_in(image_ids, ImageStatus.PROCESSING), timeout=FIRST_JOB_SECONDS, what="processing", every=0.05
    )
    pids = process_tree(stack.worker.process.pid)
    stack.kill_worker()
    assert statuses(image_ids) == [ImageStatus.PROCESSING] * len(image_ids)
    assert not Prediction.objects.filter(radiograph_id__in=image_ids).exists()
    stack.wait_until(lambda: not any(pid_alive(pid) for pid in pids), timeout=10, what="the worker gone")


def recovered_within(stack: FaultStack, image_ids: list[int], *, limit: float, what: str) -> float:
    """Start a new worker; seconds from its being ready to every image predicted (asserted <= limit)."""
    stack.start_worker(purge=False)
    ready = time.monotonic()
    stack.wait_until(all_in(image_ids, ImageStatus.DONE), timeout=limit + 60, what=what, every=0.2)
    seconds = time.monotonic() - ready
    assert seconds <= limit, f"{what}: {seconds:.1f} s after the new worker was ready (limit {limit} s)"
    assert_predicted_once(image_ids)
    return seconds


def test_dead_and_stopped_workers_jobs_resume_on_the_next_worker_within_the_limits(fault_stack: FaultStack):
    stack = fault_stack
    for name in SHORTENED:
        stack.env.pop(name)
    stack.start_web()
    stack.start_worker()
    staff = stack.client("fault-liveness")
    patient = stack.patient(staff, mrn="FAULT-LIVENESS")
    figures: dict[str, float] = {}

    # 1. kill -9 of the whole worker mid-job, a new worker at once.
    study_id, image_ids = new_study(stack, staff, patient, "FAULT-LIVE-1")
    kill_mid_job(stack, image_ids)
    figures["kill -9, new worker at once"] = recovered_within(
        stack, image_ids, limit=RECOVERY_AFTER_KILL_SECONDS, what="predicted after kill -9"
    )

    # 2. kill -9, no worker for two minutes: /healthz says so; then a new worker.
    study_id, image_ids = new_study(stack, staff, patient, "FAULT-LIVE-2")
    kill_mid_job(stack, image_ids)
    time.sleep(NO_WORKER_SECONDS)
    health = requests.get(stack.url("/healthz"), timeout=HTTP_TIMEOUT)
    assert health.status_code == 200, health.text
    workers = health.json()["workers"]
    assert health.json()["status"] == "degraded" and workers["alive"] == 0, workers
    assert workers["waiting_images"] == 4 and workers["oldest_queued_seconds"] >= NO_WORKER_SECONDS
    figures["kill -9, no worker for 2 min, then one"] = recovered_within(
        stack, image_ids, limit=RECOVERY_AFTER_KILL_SECONDS, what="predicted after 2 min without a worker"
    )
    assert requests.get(stack.url("/healthz"), timeout=HTTP_TIMEOUT).json()["workers"]["alive"] == 1

    # 3. graceful stop (SIGTERM to the worker's process group, as Ctrl-C in `make run` or systemd
    # does) mid-job: the claims are handed back before it exits; the next worker resumes the job.
    study_id, image_ids = new_study(stack, staff, patient, "FAULT-LIVE-3")
    stack.wait_until(
        all_in(image_ids, ImageStatus.PROCESSING), timeout=FIRST_JOB_SECONDS, what="processing", every=0.05
    )
    claims_before = started_count(study_id)
    stopping = time.monotonic()
    stack.worker.stop()
    figures["graceful stop took"] = time.monotonic() - stopping
    assert statuses(image_ids) == [ImageStatus.QUEUED] * 4, "the stopping worker hands its claims back"
    assert AuditEvent.objects.filter(study_id=study_id, action="inference.handed_back").exists()
    assert InferenceWorker.objects.filter(stopped_at__isnull=True).count() == 0  # marked stopped at once
    log = stack.worker.log_path.read_text(errors="replace")
    assert "exited with" not in log and "WorkerLostError" not in log, log[-3000:]
    stack.start_worker(purge=False)  # the hand-back's message is in the queue: this worker takes it
    ready = time.monotonic()
    stack.wait_until(lambda: started_count(study_id) > claims_before, timeout=60, what="resumed", every=0.1)
    figures["graceful stop, resumed after"] = time.monotonic() - ready
    stack.wait_until(all_in(image_ids, ImageStatus.DONE), timeout=FIRST_JOB_SECONDS, what="predicted")
    figures["graceful stop, predicted after"] = time.monotonic() - ready
    assert_predicted_once(image_ids)
    assert not Radiograph.objects.filter(claimed_worker__gt="").exists()

    report = "; ".join(f"{name}: {seconds:.1f} s" for name, seconds in figures.items())
    logger.warning("Recovery figures (default settings): %s", report)
    print(f"\nRecovery figures (default settings): {report}")
    assert figures["graceful stop, resumed after"] <= RESUME_AFTER_STOP_SECONDS, report
