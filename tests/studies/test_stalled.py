"""A job that stopped moving: the study page says "Stalled: waiting for a worker" with when it was
last worked on, staff can run it again (audited), and /healthz gives the worker figures."""

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from studies.models import AuditEvent, ImageStatus, Radiograph, Study, StudyStatus
from studies.selectors_workers import study_stall
from studies.services.workers import inference_worker_register
from tests.factories import PatientFactory, RadiographFactory, StudyFactory, UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff(client):
    user = UserFactory(role="staff")
    client.force_login(user)
    return user


def waiting_study(*, idle_seconds: float, status=StudyStatus.PROCESSING, claimed_worker: str = "") -> Study:
    study = StudyFactory(status=status)
    image_status = ImageStatus.PROCESSING if status == StudyStatus.PROCESSING else ImageStatus.QUEUED
    RadiographFactory(study=study, status=image_status, claimed_by="job-1", claimed_worker=claimed_worker)
    Study.objects.filter(pk=study.pk).update(updated_at=timezone.now() - timedelta(seconds=idle_seconds))
    study.refresh_from_db()
    return study


def test_a_study_is_stalled_only_when_idle_too_long_and_no_live_worker_holds_it(settings):
    settings.MSKDETECT_STALLED_AFTER_SECONDS = 60
    assert study_stall(study=waiting_study(idle_seconds=10)) is None  # still within expectations
    stalled = waiting_study(idle_seconds=90, claimed_worker="gone")
    stall = study_stall(study=stalled)
    assert stall is not None and stall.live_workers == 0 and stall.last_worked_at == stalled.updated_at
    inference_worker_register(worker_id="busy", nodename="celery@h", host="h", pid=1)
    held = waiting_study(idle_seconds=90, claimed_worker="busy")
    assert study_stall(study=held) is None  # a live worker is on it (a long study)
    queued = waiting_study(idle_seconds=90, status=StudyStatus.QUEUED)
    assert study_stall(study=queued).live_workers == 1  # waiting in line behind a live worker
    assert study_stall(study=StudyFactory(status=StudyStatus.PREDICTED)) is None


def test_the_study_page_says_stalled_with_when_it_was_last_worked_on_and_offers_run_again(client, staff):
    study = waiting_study(idle_seconds=600, claimed_worker="gone")
    html = client.get(reverse("study_detail", args=[study.pk])).content.decode()
    assert "Stalled: waiting for a worker" in html
    assert "updates by itself" not in html
    assert f'datetime="{study.updated_at.isoformat()}"' in html
    assert "no inference worker is running" in html
    assert "Run again" in html and "Sends the images of this study to the worker again." in html
    # The live partial (polled) says the same, and keeps polling so the result appears by itself.
    live = client.get(reverse("study_live", args=[study.pk])).content.decode()
    assert "Stalled: waiting for a worker" in live and 'hx-trigger="every 2s"' in live


def test_a_moving_job_says_it_updates_by_itself_without_run_again(client, staff):
    study = waiting_study(idle_seconds=5)
    html = client.get(reverse("study_detail", args=[study.pk])).content.decode()
    assert "updates by itself" in html and "Stalled" not in html and "Run again" not in html


def test_run_again_on_a_stalled_study_drops_the_dead_claim_and_sends_it(
    client, staff, monkeypatch, django_capture_on_commit_callbacks
):
    sent: list[list[int]] = []
    monkeypatch.setattr("inference.tasks.enqueue_images", lambda ids: sent.append(list(ids)))
    study = waiting_study(idle_seconds=600, claimed_worker="gone")
    image = study.images.get()

    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse("study_requeue", args=[study.pk]), follow=True)

    assert "1 image(s) sent for analysis again." in response.content.decode()
    image.refresh_from_db()
    assert (image.status, image.claimed_by, image.claimed_worker) == (ImageStatus.QUEUED, "", "")
    assert sent == [[image.pk]]
    event = AuditEvent.objects.get(action="study.requeued", study=study)
    assert event.actor == staff and event.details == {"images": [image.pk], "stalled": True}


def test_run_again_refuses_a_job_that_is_moving(client, staff):
    study = waiting_study(idle_seconds=5)
    response = client.post(reverse("study_requeue", args=[study.pk]), follow=True)
    assert "no failed or stalled images" in response.content.decode()
    assert Radiograph.objects.get(study=study).status == ImageStatus.PROCESSING


def test_healthz_counts_live_workers_and_the_oldest_waiting_image(client, queue_dir):
    PatientFactory(name="Ada Lovelace", mrn="SECRET-MRN")
    body = client.get("/healthz").json()
    assert body["workers"] == {"status": "ok", "alive": 0, "waiting_images": 0, "oldest_queued_seconds": None}

    image = RadiographFactory(status=ImageStatus.QUEUED)
    Radiograph.objects.filter(pk=image.pk).update(created_at=timezone.now() - timedelta(seconds=300))
    response = client.get("/healthz")
    body = response.json()
    assert response.status_code == 200  # the web process serves: degraded, not down
    assert body["status"] == "degraded" and body["workers"]["status"] == "degraded"
    assert body["workers"]["alive"] == 0 and body["workers"]["waiting_images"] == 1
    assert 300 <= body["workers"]["oldest_queued_seconds"] < 330
    assert b"Lovelace" not in response.content and b"SECRET-MRN" not in response.content

    inference_worker_register(worker_id="w", nodename="celery@h", host="h", pid=1)
    body = client.get("/healthz").json()
    assert body["status"] == "ok" and body["workers"]["alive"] == 1


def test_healthz_stays_cheap(client, queue_dir, django_assert_max_num_queries):
    RadiographFactory.create_batch(3, status=ImageStatus.QUEUED)
    # SELECT 1, the queue aggregate, the live-worker count, the DICOM receiver's latest runs
    with django_assert_max_num_queries(4):
        client.get("/healthz")
