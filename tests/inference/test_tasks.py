"""The Celery bridge: claim, predict, record, fail readably, re-deliver without duplicates."""

import hashlib
import logging
import os
import shutil
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from celery.signals import after_task_publish
from django.core.files.base import ContentFile
from django.utils import timezone
from PIL import Image

from inference import tasks
from inference.decoding import DecodeError
from inference.model_card import card_path, read_card, write_card
from mskdetect.celery import app as celery_app
from studies.models import (
    AuditEvent,
    ImageStatus,
    ModelVersion,
    Patient,
    Prediction,
    Radiograph,
    Study,
    StudyResult,
    StudyStatus,
)
from studies.services.predictions import radiographs_claim
from tests.conftest import SHARED_DATA
from tests.factories import validation_card
from tests.inference.tiny_models import WRIST_FILE, write_tiny_model_dir

WRISTS = sorted((SHARED_DATA / "png16").glob("*.png"))[:2]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return write_tiny_model_dir(tmp_path_factory.mktemp("tiny-models"))


@pytest.fixture
def model_dir(settings, tiny_model_dir) -> Path:
    settings.MSKDETECT_MODEL_DIR = tiny_model_dir
    return tiny_model_dir


def make_study(*, body_part: str = "XR_WRIST", accession: str = "ACC-1") -> Study:
    patient, _ = Patient.objects.get_or_create(mrn="MRN-1", defaults={"name": "Test Patient"})
    return Study.objects.create(
        patient=patient, accession_number=accession, body_part=body_part, status=StudyStatus.QUEUED
    )


def add_image(study: Study, data: bytes, *, fmt: str = "png") -> Radiograph:
    image = Radiograph(study=study, sha256=hashlib.sha256(data).hexdigest(), format=fmt, width=1, height=1)
    image.file.save("upload", ContentFile(data), save=False)
    image.save()
    return image


@pytest.mark.django_db
def test_prediction_is_stored_with_heat_maps_and_the_study_result(model_dir):
    study = make_study()
    images = [add_image(study, path.read_bytes()) for path in WRISTS]

    tasks.predict_images([image.id for image in images])

    study.refresh_from_db()
    assert study.status == StudyStatus.PREDICTED
    assert study.error == ""
    version = hashlib.sha256((model_dir / WRIST_FILE).read_bytes()).hexdigest()
    predictions = list(Prediction.objects.filter(radiograph__study=study).order_by("radiograph_id"))
    assert [p.radiograph_id for p in predictions] == [image.id for image in images]
    for prediction in predictions:
        assert prediction.model_version == version
        assert prediction.demo is True
        assert 0.0 <= prediction.abnormal_probability <= 1.0
        assert prediction.label == ("abnormal" if prediction.abnormal_probability >= 0.5 else "normal")
        with prediction.heatmap.open("rb") as heatmap:
            assert heatmap.read(8) == b"\x89PNG\r\n\x1a\n"
    assert set(Radiograph.objects.filter(study=study).values_list("status", flat=True)) == {ImageStatus.DONE}
    result = StudyResult.objects.get(study=study)
    mean = sum(p.abnormal_probability for p in predictions) / len(predictions)
    assert result.abnormal_probability == pytest.approx(mean)
    assert result.label == ("abnormal" if mean >= 0.5 else "normal")
    assert result.model_version == version
    actions = list(AuditEvent.objects.filter(study=study).order_by("id").values_list("action", "actor"))
    assert actions == [("inference.started", None), ("inference.completed", None)]


@pytest.fixture
def carded_model_dir(settings, tiny_model_dir, tmp_path) -> Path:
    """A copy of the tiny model dir whose wrist model has a validation card (the session's stays bare)."""
    directory = tmp_path / "models"
    shutil.copytree(tiny_model_dir, directory)
    version = hashlib.sha256((directory / WRIST_FILE).read_bytes()).hexdigest()
    write_card(model_dir=directory, card=validation_card(version=version, model_name="tiny_wrist"))
    settings.MSKDETECT_MODEL_DIR = directory
    return directory


@pytest.mark.django_db
def test_the_worker_records_the_model_version_with_its_card(carded_model_dir):
    version = hashlib.sha256((carded_model_dir / WRIST_FILE).read_bytes()).hexdigest()
    first, second = make_study(accession="ACC-1"), make_study(accession="ACC-2")
    images = [add_image(study, WRISTS[0].read_bytes()) for study in (first, second)]

    tasks.predict_images([images[0].id])

    record = ModelVersion.objects.get(version=version)
    assert record.card == read_card(model_dir=carded_model_dir, version=version)
    assert record.card["validated_on"]["set"] == "MURA-v1.1 valid"
    assert (record.model_name, record.body_part, record.demo, record.threshold) == (
        "tiny_wrist",
        "XR_WRIST",
        True,
        0.5,
    )
    assert AuditEvent.objects.filter(action="model_version.recorded", object_id=str(record.pk)).count() == 1
    # Every later batch of the same version (and a second delivery) changes nothing.
    tasks.predict_images([images[1].id])
    tasks.predict_images([images[1].id])
    assert ModelVersion.objects.count() == 1
    assert not AuditEvent.objects.filter(action="model_version.updated").exists()
    assert Prediction.objects.filter(model_version=version).count() == 2


@pytest.mark.django_db
def test_without_a_card_the_version_is_recorded_as_not_validated(model_dir):
    image = add_image(make_study(), WRISTS[0].read_bytes())
    tasks.predict_images([image.id])
    record = ModelVersion.objects.get()
    assert record.card is None and record.card_updated is None
    assert record.version == Prediction.objects.get(radiograph=image).model_version


@pytest.mark.django_db
def test_a_corrupt_card_does_not_stop_the_prediction(carded_model_dir, caplog):
    version = hashlib.sha256((carded_model_dir / WRIST_FILE).read_bytes()).hexdigest()
    card_path(model_dir=carded_model_dir, version=version).write_text("{not json")
    image = add_image(make_study(), WRISTS[0].read_bytes())

    with caplog.at_level(logging.WARNING, logger="inference.tasks"):
        tasks.predict_images([image.id])

    assert Radiograph.objects.get(pk=image.pk).status == ImageStatus.DONE
    assert ModelVersion.objects.get(version=version).card is None
    assert "Validation card ignored" in caplog.text and "not valid JSON" in caplog.text


@pytest.mark.django_db
def test_an_onnx_worker_stores_the_same_predictions_and_heat_maps(model_dir, settings, tmp_path):
    keras_study = make_study(accession="ACC-KERAS")
    keras_images = [add_image(keras_study, path.read_bytes()) for path in WRISTS]
    tasks.predict_images([image.id for image in keras_images])
    settings.MSKDETECT_RUNTIME = "onnx"
    settings.MSKDETECT_ONNX_DIR = tmp_path / "onnx"
    onnx_study = make_study(accession="ACC-ONNX")
    onnx_images = [add_image(onnx_study, path.read_bytes()) for path in WRISTS]

    tasks.predict_images([image.id for image in onnx_images])

    assert list((tmp_path / "onnx").glob("*.onnx"))  # converted by the worker on its first job
    by_study = {
        study: list(Prediction.objects.filter(radiograph__study=study).order_by("radiograph_id"))
        for study in (keras_study, onnx_study)
    }
    for expected, actual in zip(by_study[keras_study], by_study[onnx_study], strict=True):
        assert actual.abnormal_probability == pytest.approx(expected.abnormal_probability, abs=1e-5)
        assert actual.model_version == expected.model_version
        with expected.heatmap.open("rb") as want, actual.heatmap.open("rb") as got:
            want_pixels = np.asarray(Image.open(want), dtype=np.int16)
            got_pixels = np.asarray(Image.open(got), dtype=np.int16)
        assert np.abs(want_pixels - got_pixels).max() <= 1  # the same overlay, to rounding


@pytest.mark.django_db
def test_a_second_delivery_of_the_same_job_changes_nothing(model_dir):
    study = make_study()
    image = add_image(study, WRISTS[0].read_bytes())

    tasks.predict_images([image.id])
    events = AuditEvent.objects.count()
    tasks.predict_images([image.id])

    assert Prediction.objects.filter(radiograph=image).count() == 1
    assert AuditEvent.objects.count() == events


@pytest.mark.django_db
def test_redelivery_after_a_crash_between_write_and_ack_keeps_one_prediction(model_dir):
    # The worker stored the prediction, then died before acknowledging; the claim went stale.
    study = make_study()
    image = add_image(study, WRISTS[0].read_bytes())
    tasks.predict_images([image.id])
    first = Prediction.objects.get(radiograph=image)
    Radiograph.objects.filter(id=image.id).update(
        status=ImageStatus.PROCESSING, dispatched_at=timezone.now() - timedelta(hours=2)
    )

    tasks.predict_images([image.id])

    assert list(Prediction.objects.filter(radiograph=image)) == [first]
    image.refresh_from_db()
    assert image.status == ImageStatus.DONE


@pytest.mark.django_db
def test_a_claim_held_by_a_live_worker_is_left_alone(model_dir):
    study = make_study()
    image = add_image(study, WRISTS[0].read_bytes())
    Radiograph.objects.filter(id=image.id).update(status=ImageStatus.PROCESSING, dispatched_at=timezone.now())

    tasks.predict_images([image.id])

    assert not Prediction.objects.exists()


@pytest.mark.django_db
def test_a_redelivery_of_the_same_message_takes_back_its_killed_runs_claim_at_once(model_dir):
    # The pool child running task "job-1" was killed (OOM killer) right after claiming; the
    # broker hands the same message (same task id) to a new child while the claim is fresh.
    study = make_study()
    image = add_image(study, WRISTS[0].read_bytes())
    an_hour_ago = timezone.now() - timedelta(hours=1)
    claimed = radiographs_claim(
        image_ids=[image.id], claimed_before=an_hour_ago, max_attempts=3, task_id="job-1"
    )
    assert [i.id for i in claimed[study.id]] == [image.id]
    image.refresh_from_db()
    assert (image.status, image.claimed_by, image.attempts) == (ImageStatus.PROCESSING, "job-1", 1)

    tasks.predict_images.apply(args=[[image.id]], task_id="job-2")  # another job: a live claim
    assert not Prediction.objects.exists()

    tasks.predict_images.apply(args=[[image.id]], task_id="job-1")

    assert Prediction.objects.filter(radiograph=image).count() == 1
    image.refresh_from_db()
    assert (image.status, image.claimed_by, image.attempts) == (ImageStatus.DONE, "", 0)
    actions = list(AuditEvent.objects.filter(study=study).values_list("action", flat=True))
    assert sorted(actions) == ["inference.completed", "inference.started", "inference.started"]


@pytest.mark.django_db
def test_a_claim_expires_after_the_hard_time_limit_plus_the_configured_grace(model_dir, settings):
    settings.CELERY_TASK_TIME_LIMIT = 30
    settings.MSKDETECT_CLAIM_GRACE_SECONDS = 10
    study = make_study()
    image = add_image(study, WRISTS[0].read_bytes())
    Radiograph.objects.filter(id=image.id).update(
        status=ImageStatus.PROCESSING, dispatched_at=timezone.now() - timedelta(seconds=35), claimed_by="gone"
    )
    tasks.predict_images([image.id])
    assert not Prediction.objects.exists()  # 35 s < 30 + 10 s: its worker may still be running

    Radiograph.objects.filter(id=image.id).update(dispatched_at=timezone.now() - timedelta(seconds=45))
    tasks.predict_images([image.id])

    assert Prediction.objects.filter(radiograph=image).count() == 1


@pytest.mark.django_db
def test_one_corrupt_file_fails_that_image_only_with_a_readable_error(model_dir):
    study = make_study()
    good = add_image(study, WRISTS[0].read_bytes())
    truncated = add_image(study, WRISTS[1].read_bytes()[:300])

    tasks.predict_images([good.id, truncated.id])

    truncated.refresh_from_db()
    with pytest.raises(DecodeError) as decode_error:
        tasks.inspect_upload(WRISTS[1].read_bytes()[:300])
    assert truncated.status == ImageStatus.FAILED
    assert truncated.error == decode_error.value.message
    study.refresh_from_db()
    assert study.status == StudyStatus.PREDICTED
    assert study.error.startswith("1 of 2 images failed")
    assert StudyResult.objects.get(study=study).abnormal_probability == pytest.approx(
        Prediction.objects.get(radiograph=good).abnormal_probability
    )


@pytest.mark.django_db
def test_a_study_whose_only_image_is_unreadable_fails(model_dir):
    study = make_study()
    image = add_image(study, b"definitely not a radiograph")

    tasks.predict_images([image.id])

    study.refresh_from_db()
    assert study.status == StudyStatus.FAILED
    assert study.error
    assert not StudyResult.objects.filter(study=study).exists()


@pytest.mark.django_db
def test_a_body_part_without_a_model_waits_for_a_human_read(model_dir):
    study = make_study(body_part="XR_SHOULDER")
    image = add_image(study, WRISTS[0].read_bytes())

    tasks.predict_images([image.id])

    image.refresh_from_db()
    study.refresh_from_db()
    assert image.status == ImageStatus.UNSUPPORTED
    assert study.status == StudyStatus.UNSUPPORTED
    assert "Shoulder" in study.error
    assert AuditEvent.objects.filter(study=study, action="inference.unsupported").exists()


@pytest.mark.django_db
def test_a_corrupt_weight_file_fails_the_images_and_names_the_file(model_dir):
    study = make_study(body_part="XR_HAND")
    image = add_image(study, WRISTS[0].read_bytes())

    tasks.predict_images([image.id])  # returns: the worker stays up

    image.refresh_from_db()
    assert image.status == ImageStatus.FAILED
    assert "broken_hand.keras" in image.error
    study.refresh_from_db()
    assert study.status == StudyStatus.FAILED
    assert "broken_hand.keras" in study.error


@pytest.mark.django_db
def test_a_missing_stored_file_is_retried_then_failed_with_the_reason(model_dir):
    study = make_study()
    image = add_image(study, WRISTS[0].read_bytes())
    image.file.storage.delete(image.file.name)

    # apply() runs the task here with Celery's retry machinery (retries run immediately).
    tasks.predict_images.apply(args=[[image.id]])

    image.refresh_from_db()
    assert image.status == ImageStatus.FAILED
    assert image.error.startswith(f"Gave up after {tasks.MAX_RETRIES} retries: FileNotFoundError")
    assert image.attempts == 0


@pytest.mark.django_db
def test_an_image_that_keeps_killing_workers_is_failed_not_retried_forever(model_dir):
    study = make_study()
    image = add_image(study, WRISTS[0].read_bytes())
    stale = timezone.now() - timedelta(hours=2)
    Radiograph.objects.filter(id=image.id).update(
        status=ImageStatus.PROCESSING, dispatched_at=stale, attempts=tasks.MAX_ATTEMPTS
    )

    tasks.predict_images([image.id])

    image.refresh_from_db()
    assert image.status == ImageStatus.FAILED
    assert "Gave up after 3 attempts" in image.error
    assert not Prediction.objects.exists()


def _use_broker(url: str) -> None:
    # Celery reads CELERY_BROKER_URL from the environment before its own setting, and pools
    # connections and producers per app: set both, drop the pools, and the next publish uses `url`.
    os.environ["CELERY_BROKER_URL"] = url
    celery_app.conf.broker_url = url
    celery_app._pool = None
    celery_app.amqp._producer_pool = None


@pytest.fixture
def broker_down():
    # A closed port: the publisher's one quick retry fails, as when Redis is stopped.
    saved_env = os.environ.get("CELERY_BROKER_URL")
    saved = celery_app.conf.broker_url
    _use_broker("redis://127.0.0.1:9/0")
    assert celery_app.connection_for_write().port == 9
    yield
    _use_broker(saved)
    if saved_env is None:
        del os.environ["CELERY_BROKER_URL"]
    else:
        os.environ["CELERY_BROKER_URL"] = saved_env


@pytest.mark.django_db
def test_publishing_with_the_broker_down_keeps_the_image_queued(broker_down, caplog):
    study = make_study()
    image = add_image(study, WRISTS[0].read_bytes())

    with caplog.at_level(logging.WARNING, logger="inference.tasks"):
        published = tasks.publish_images(image_ids=[image.id])

    assert published is False
    image.refresh_from_db()
    assert image.status == ImageStatus.QUEUED
    assert image.dispatched_at is None
    assert "stay queued" in caplog.text


@pytest.mark.django_db
def test_redispatch_finds_lost_jobs_and_dead_claims_only(broker_down):
    study = make_study()
    old = timezone.now() - timedelta(hours=2)
    never_sent = add_image(study, b"a")
    Radiograph.objects.filter(id=never_sent.id).update(created_at=old)
    sent_long_ago = add_image(study, b"b")
    Radiograph.objects.filter(id=sent_long_ago.id).update(dispatched_at=old)
    dead_claim = add_image(study, b"c")
    Radiograph.objects.filter(id=dead_claim.id).update(status=ImageStatus.PROCESSING, dispatched_at=old)
    just_sent = add_image(study, b"d")
    Radiograph.objects.filter(id=just_sent.id).update(dispatched_at=timezone.now())
    live_claim = add_image(study, b"e")
    Radiograph.objects.filter(id=live_claim.id).update(
        status=ImageStatus.PROCESSING, dispatched_at=timezone.now()
    )
    done = add_image(study, b"f")
    Radiograph.objects.filter(id=done.id).update(status=ImageStatus.DONE, dispatched_at=old)

    sent = tasks.redispatch_stale_images()

    assert sent == 0  # the broker is down: nothing sent, nothing lost
    statuses = dict(Radiograph.objects.values_list("id", "status"))
    assert statuses[dead_claim.id] == ImageStatus.QUEUED  # its worker is gone: back in line
    assert statuses[live_claim.id] == ImageStatus.PROCESSING
    assert statuses[done.id] == ImageStatus.DONE
    from studies.services.predictions import radiographs_requeue_stale

    now = timezone.now()
    stale = radiographs_requeue_stale(
        queued_before=now - timedelta(minutes=1), claimed_before=now - timedelta(minutes=30)
    )
    assert sorted(image_id for image_id, _ in stale) == sorted(
        [never_sent.id, sent_long_ago.id, dead_claim.id]
    )


@pytest.fixture
def published() -> list[list[int]]:
    """The image ids of every `predict_images` message published while the test runs."""
    sent: list[list[int]] = []

    def record(sender=None, body=None, **kwargs) -> None:
        if sender == tasks.predict_images.name:
            sent.append(list(body[0][0]))

    after_task_publish.connect(record, weak=False)
    yield sent
    after_task_publish.disconnect(record)


@pytest.mark.django_db
def test_a_backlog_waiting_in_the_queue_is_sent_again_at_most_once_per_period(settings, published):
    # The broker is up but the worker is busy: messages wait in the queue longer than the threshold.
    settings.MSKDETECT_REDISPATCH_AFTER_SECONDS = 120
    study = make_study()
    waiting = add_image(study, b"a")
    Radiograph.objects.filter(id=waiting.id).update(dispatched_at=timezone.now() - timedelta(minutes=5))
    just_sent = add_image(study, b"b")
    Radiograph.objects.filter(id=just_sent.id).update(dispatched_at=timezone.now())

    rounds = [tasks.redispatch_stale_images() for _ in range(3)]

    assert rounds == [1, 0, 0]
    assert published == [[waiting.id]]
    waiting.refresh_from_db()
    assert timezone.now() - waiting.dispatched_at < timedelta(minutes=1)  # stamped by the re-send
    # One period later the image, still waiting, is sent once more.
    Radiograph.objects.filter(id=waiting.id).update(dispatched_at=timezone.now() - timedelta(seconds=121))
    assert [tasks.redispatch_stale_images() for _ in range(2)] == [1, 0]
    assert published == [[waiting.id], [waiting.id]]


def test_inspect_upload_reads_a_real_radiograph():
    decoded = tasks.inspect_upload(WRISTS[0].read_bytes())
    assert decoded.format == "png"
    assert decoded.width > 100 and decoded.height > 100


def test_inspect_upload_refuses_an_enormous_image(settings):
    settings.MSKDETECT_MAX_PIXELS = 1000
    with pytest.raises(DecodeError) as refused:
        tasks.inspect_upload(WRISTS[0].read_bytes())
    assert refused.value.code == "too_many_pixels"
