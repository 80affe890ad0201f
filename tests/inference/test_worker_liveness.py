"""Worker liveness: claims name their worker; a worker that stops beating loses them at once,
a worker that stops gracefully hands them back, and the time limits remain the last resort."""

from datetime import timedelta

import pytest
from django.utils import timezone

from inference import tasks, worker
from studies.models import AuditEvent, ImageStatus, InferenceWorker, Prediction, Radiograph
from studies.selectors_workers import live_workers
from studies.services.workers import (
    inference_worker_beat,
    inference_worker_register,
    inference_workers_forget,
    inference_workers_stop,
)
from tests.inference.test_tasks import WRISTS, add_image, make_study, model_dir, published, tiny_model_dir

__all__ = ["model_dir", "published", "tiny_model_dir"]  # fixtures shared with test_tasks

pytestmark = pytest.mark.django_db


def register(worker_id: str, *, beat_ago: float = 0) -> InferenceWorker:
    row = inference_worker_register(worker_id=worker_id, nodename=f"celery@{worker_id}", host="h", pid=1)
    InferenceWorker.objects.filter(pk=row.pk).update(beat_at=timezone.now() - timedelta(seconds=beat_ago))
    return row


def claim(image: Radiograph, *, worker_id: str, task_id: str = "job-1") -> None:
    Radiograph.objects.filter(id=image.id).update(
        status=ImageStatus.PROCESSING,
        dispatched_at=timezone.now(),
        claimed_by=task_id,
        claimed_worker=worker_id,
    )


def test_a_beating_worker_is_live_until_it_misses_several_beats_or_stops(settings):
    settings.MSKDETECT_WORKER_DEAD_AFTER_SECONDS = 20
    register("fresh", beat_ago=3)
    register("silent", beat_ago=25)
    register("stopped")
    inference_workers_stop(worker_ids=["stopped"])
    assert sorted(live_workers().values_list("worker_id", flat=True)) == ["fresh"]
    assert inference_worker_beat(worker_id="silent") is True  # it beats again: live again
    assert live_workers().count() == 2
    assert inference_worker_beat(worker_id="never-registered") is False
    InferenceWorker.objects.filter(worker_id="fresh").update(beat_at=timezone.now() - timedelta(days=2))
    assert inference_workers_forget(silent_before=timezone.now() - timedelta(days=1)) == 1


def test_redispatch_takes_back_a_silent_workers_claim_at_once_and_leaves_a_live_ones(settings, published):
    # Fresh claims, far inside the time limits: only liveness tells them apart.
    settings.MSKDETECT_WORKER_DEAD_AFTER_SECONDS = 20
    study = make_study()
    dead_image, live_image = add_image(study, b"a"), add_image(study, b"b")
    register("dead", beat_ago=21)
    register("live", beat_ago=1)
    claim(dead_image, worker_id="dead", task_id="job-dead")
    claim(live_image, worker_id="live", task_id="job-live")

    assert tasks.redispatch_stale_images() == 1

    assert published == [[dead_image.id]]
    statuses = dict(Radiograph.objects.values_list("id", "status"))
    assert statuses == {dead_image.id: ImageStatus.QUEUED, live_image.id: ImageStatus.PROCESSING}
    assert Radiograph.objects.get(id=dead_image.id).claimed_worker == ""


def test_a_delivery_claims_images_held_by_a_stopped_worker_and_predicts_once(model_dir, monkeypatch):
    study = make_study()
    image = add_image(study, WRISTS[0].read_bytes())
    register("old")
    claim(image, worker_id="old", task_id="job-old")
    inference_workers_stop(worker_ids=["old"])
    register("new")
    monkeypatch.setenv(worker.WORKER_ID_VARIABLE, "new")

    tasks.predict_images.apply(args=[[image.id]], task_id="job-new")

    assert Prediction.objects.filter(radiograph=image).count() == 1
    image.refresh_from_db()
    assert (image.status, image.claimed_worker) == (ImageStatus.DONE, "")


def test_the_claim_records_the_worker_that_holds_it(model_dir, monkeypatch):
    from studies.services.predictions import radiographs_claim

    study = make_study()
    image = add_image(study, WRISTS[0].read_bytes())
    claimed = radiographs_claim(
        image_ids=[image.id],
        claimed_before=timezone.now() - timedelta(hours=1),
        max_attempts=3,
        task_id="job-1",
        worker_id="w-1",
        alive_since=timezone.now() - timedelta(seconds=20),
    )
    assert [i.claimed_worker for i in claimed[study.id]] == ["w-1"]
    image.refresh_from_db()
    assert (image.status, image.claimed_by, image.claimed_worker) == (ImageStatus.PROCESSING, "job-1", "w-1")


def test_a_stopping_worker_hands_back_its_claims_and_sends_them_again(published):
    study = make_study()
    mine, other = add_image(study, b"a"), add_image(study, b"b")
    register("stopping")
    register("other")
    claim(mine, worker_id="stopping", task_id="job-1")
    claim(other, worker_id="other", task_id="job-2")
    Radiograph.objects.filter(id=mine.id).update(attempts=1)

    assert tasks.hand_back_claims(worker_id="stopping") == 1

    mine.refresh_from_db()
    assert (mine.status, mine.claimed_by, mine.claimed_worker, mine.attempts) == (
        ImageStatus.QUEUED,
        "",
        "",
        0,
    )
    assert published == [[mine.id]]
    assert Radiograph.objects.get(id=other.id).status == ImageStatus.PROCESSING
    event = AuditEvent.objects.get(study=study, action="inference.handed_back")
    assert event.actor is None and event.details["images"] == [mine.id]
    assert tasks.hand_back_claims(worker_id="stopping") == 0  # nothing left: no second event


def test_sigterm_during_a_job_hands_back_its_claims_instead_of_predicting(model_dir, monkeypatch, published):
    # What the pool child's SIGTERM handler does mid-job: WorkerStopping is raised inside the task.
    study = make_study()
    image = add_image(study, WRISTS[0].read_bytes())
    register("w")
    monkeypatch.setenv(worker.WORKER_ID_VARIABLE, "w")

    def stopped(*, images):
        raise worker.WorkerStopping()

    monkeypatch.setattr(tasks, "_predict_study", stopped)
    tasks.predict_images.apply(args=[[image.id]], task_id="job-1")

    image.refresh_from_db()
    assert (image.status, image.claimed_by, image.attempts) == (ImageStatus.QUEUED, "", 0)
    assert published == [[image.id]]
    assert not Prediction.objects.exists()
    actions = sorted(AuditEvent.objects.filter(study=study).values_list("action", flat=True))
    assert actions == ["inference.handed_back", "inference.started"]


def test_a_new_worker_marks_its_dead_predecessors_of_the_same_name_stopped(monkeypatch):
    import socket

    host = socket.gethostname()
    dead = inference_worker_register(worker_id="dead", nodename="celery@x", host=host, pid=2**22 + 7)
    alive = inference_worker_register(worker_id="alive", nodename="celery@x", host=host, pid=1)
    elsewhere = inference_worker_register(worker_id="far", nodename="celery@x", host="other", pid=2**22 + 7)
    monkeypatch.setattr(worker._State, "worker_id", "me")

    worker._retire_predecessors(nodename="celery@x")

    stopped = dict(InferenceWorker.objects.values_list("worker_id", "stopped_at"))
    assert stopped[dead.worker_id] is not None
    assert stopped[alive.worker_id] is None  # pid 1 runs: not ours to judge
    assert stopped[elsewhere.worker_id] is None  # another host: its heartbeat decides
