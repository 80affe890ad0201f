"""The only bridge between Django/Celery and the inference engine.

The web process uses `inspect_upload` (no TensorFlow: decoding only) and `enqueue_images`.
The worker runs `predict_images`; beat runs `redispatch_stale_images`. TensorFlow and the
model registry are imported inside the task, so the web process and the worker's parent
process never load them.
"""

import logging
import time
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

import numpy as np
from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.core.files.storage import default_storage
from django.db import InterfaceError, OperationalError, transaction
from django.utils import timezone
from kombu.exceptions import OperationalError as BrokerError

from inference.decoding import DecodedImage, DecodeError, decode_image
from inference.model_card import ModelCardError, read_card
from inference.original_pixels import OriginalPixels, read_original_pixels
from inference.worker import WorkerStopping, current_worker_id, job_running, wait_for_warm_up
from studies.models import BodyPart, Radiograph
from studies.selectors_workers import alive_since
from studies.services.model_versions import model_version_record
from studies.services.predictions import (
    ImageOutcome,
    ModelRun,
    predictions_record,
    radiographs_claim,
    radiographs_fail,
    radiographs_hand_back,
    radiographs_mark_dispatched,
    radiographs_mark_unsupported,
    radiographs_release,
    radiographs_requeue_stale,
)
from studies.services.workers import inference_workers_forget

logger = logging.getLogger(__name__)

# An image claimed this many times without finishing keeps killing its worker: fail it.
MAX_ATTEMPTS = 3
MAX_RETRIES = 5
# Rows of workers that stopped beating are kept this long (for /healthz and the admin), then deleted.
WORKER_ROWS_KEPT = timedelta(days=1)
# Errors that go away by themselves: the database restarting, a network volume hiccup.
TRANSIENT_ERRORS = (OperationalError, InterfaceError, OSError)
# Publishing must not hold an upload request hostage when the broker is down: one quick
# retry, then the image stays queued and the periodic re-dispatch sends it later.
PUBLISH_RETRY_POLICY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.5, "interval_max": 0.5}


def inspect_upload(data: bytes) -> DecodedImage:
    """Decode an upload to check it is a readable radiograph; raises DecodeError if not."""
    return decode_image(data, max_pixels=settings.MSKDETECT_MAX_PIXELS)


def screen_upload(data: bytes) -> DecodedImage:
    """Decode an upload and check that its pixels look like a radiograph; raises DecodeError if not.

    `inspect_upload` plus inference.image_content: a colour photograph, a screenshot or text is
    refused (NotARadiograph) before anything is stored.
    """
    from inference.image_content import check_radiograph_content

    decoded = inspect_upload(data)
    check_radiograph_content(decoded.pixels)
    return decoded


def original_pixels(data: bytes) -> OriginalPixels:
    """An upload's pixel values at their original depth, for the viewer's window/level; raises
    DecodeError like `inspect_upload`."""
    return read_original_pixels(data, max_pixels=settings.MSKDETECT_MAX_PIXELS)


def display_pixels(data: bytes) -> np.ndarray:
    """An upload as 8-bit display pixels, by the same rules the heat-map overlay uses."""
    from inference.preprocessing import to_display_uint8

    return to_display_uint8(inspect_upload(data))


def enqueue_images(image_ids: Sequence[int]) -> None:
    """Send the prediction job for these images once the current transaction commits.

    Never raises when the broker is down: the images stay `queued` and
    `redispatch_stale_images` sends them later.
    """
    ids = [int(image_id) for image_id in image_ids]
    if ids:
        transaction.on_commit(lambda: publish_images(image_ids=ids))


def publish_images(*, image_ids: Sequence[int]) -> bool:
    """Hand one job to the broker now and stamp the images as dispatched; False if it is down."""
    ids = list(image_ids)
    try:
        predict_images.apply_async(args=[ids], retry=True, retry_policy=PUBLISH_RETRY_POLICY)
    except (BrokerError, OSError) as exc:
        logger.warning("Broker unavailable, %d image(s) stay queued for re-dispatch: %s", len(ids), exc)
        return False
    radiographs_mark_dispatched(image_ids=ids)
    return True


def _claim_expiry() -> timedelta:
    # A claim older than the hard time limit belongs to a worker that is gone. The grace covers
    # clock skew between the hosts that claim and judge, and the pool's delay in killing a job.
    return timedelta(seconds=settings.CELERY_TASK_TIME_LIMIT + settings.MSKDETECT_CLAIM_GRACE_SECONDS)


def _backoff(retries: int) -> int:
    return min(5 * 2**retries, 300)


@shared_task(
    bind=True,
    name="inference.tasks.predict_images",
    acks_late=True,
    reject_on_worker_lost=True,
    soft_time_limit=settings.CELERY_TASK_SOFT_TIME_LIMIT,
    time_limit=settings.CELERY_TASK_TIME_LIMIT,
    max_retries=MAX_RETRIES,
    ignore_result=True,
)
def predict_images(self, image_ids: list[int]) -> None:
    """Predict every pending image of the studies these images belong to, one batch per study.

    Safe to deliver twice: images are claimed under a row lock, and an image that is no
    longer pending is skipped. A re-delivery of this same message (its pool child was killed)
    takes back the images its earlier run had claimed, without waiting for the claim to expire.
    When the worker is being stopped (SIGTERM), the job hands its claims back and sends them again.
    """
    try:
        with job_running():
            _claim_and_predict(task=self, image_ids=image_ids)
    except WorkerStopping:
        handed = hand_back_claims(task_id=self.request.id or "")
        logger.info("Worker stopping: handed back %d image(s) for the next worker", handed)


def _claim_and_predict(*, task, image_ids: list[int]) -> None:
    now = timezone.now()
    try:
        claimed = radiographs_claim(
            image_ids=image_ids,
            claimed_before=now - _claim_expiry(),
            max_attempts=MAX_ATTEMPTS,
            # None when the task is called directly (not through a broker): no re-delivery then.
            task_id=task.request.id or "",
            worker_id=current_worker_id(),
            alive_since=alive_since(now),
        )
    except (OperationalError, InterfaceError) as exc:
        raise task.retry(exc=exc, countdown=_backoff(task.request.retries)) from exc
    batches = list(claimed.values())
    for position, images in enumerate(batches):
        try:
            _predict_study(images=images)
        except SoftTimeLimitExceeded:
            remaining = [image.id for batch in batches[position:] for image in batch]
            radiographs_fail(
                image_ids=remaining,
                message=f"Prediction took longer than {settings.CELERY_TASK_SOFT_TIME_LIMIT} s; stopped.",
            )
            return
        except TRANSIENT_ERRORS as exc:
            remaining = [image.id for batch in batches[position:] for image in batch]
            _retry_or_fail(task=task, image_ids=remaining, exc=exc)
            return  # the retry (or the failure just recorded) covers every remaining study
        except Exception as exc:
            # A bug or an input the model cannot take must not leave images `processing`
            # forever: fail this study's images with the reason and go on with the next.
            logger.exception("Prediction failed for images %s", [image.id for image in images])
            radiographs_fail(image_ids=[image.id for image in images], message=f"Prediction failed: {exc}")


def _retry_or_fail(*, task, image_ids: list[int], exc: Exception) -> None:
    if task.request.retries >= task.max_retries:
        radiographs_fail(
            image_ids=image_ids,
            message=f"Gave up after {task.max_retries} retries: {type(exc).__name__}: {exc}",
        )
        return
    logger.warning("Transient error, retrying images %s: %s", image_ids, exc)
    try:
        radiographs_release(image_ids=image_ids)
    except (OperationalError, InterfaceError):
        # The database is the thing that is down: the stale-claim re-dispatch covers it.
        logger.warning("Could not release images %s; re-dispatch will pick them up", image_ids)
    raise task.retry(args=[image_ids], exc=exc, countdown=_backoff(task.request.retries))


def _predict_study(*, images: list[Radiograph]) -> None:
    # TensorFlow loads here, in the worker's child process, on the first job only (or in the
    # background warm-up that the child started: wait for it rather than race its imports).
    wait_for_warm_up()
    from inference.ood import ood_reason
    from inference.predictor import Predictor
    from inference.registry import ModelLoadError, UnsupportedBodyPart, get_registry

    study = images[0].study
    ids = [image.id for image in images]
    try:
        registry = get_registry(settings.MSKDETECT_MODEL_DIR)
        loaded = registry.get(study.body_part)
    except UnsupportedBodyPart:
        name = BodyPart(study.body_part).label if study.body_part in BodyPart.values else study.body_part
        radiographs_mark_unsupported(
            image_ids=ids,
            message=f"No model is installed for {name} radiographs: this study needs a radiologist's read.",
        )
        return
    except ModelLoadError as exc:
        radiographs_fail(image_ids=ids, message=str(exc))
        return

    decoded: list[DecodedImage] = []
    readable: list[Radiograph] = []
    for image in images:
        with default_storage.open(image.file.name, "rb") as stored:
            data = stored.read()
        try:
            decoded.append(decode_image(data, max_pixels=settings.MSKDETECT_MAX_PIXELS))
        except DecodeError as exc:
            radiographs_fail(image_ids=[image.id], message=exc.message)
            continue
        readable.append(image)
    if not readable:
        return

    spec = loaded.spec
    predictor = Predictor(
        loaded,
        batch_size=settings.MSKDETECT_BATCH_SIZE,
        runtime=settings.MSKDETECT_RUNTIME,
        onnx_dir=settings.MSKDETECT_ONNX_DIR,
    )
    started = time.perf_counter()
    batch = predictor.preprocess(decoded)
    preprocessed = time.perf_counter()
    # One forward pass gives the probabilities and, through the head only, the Grad-CAM maps.
    result = predictor.run(batch, heatmaps=True)
    finished = time.perf_counter()
    overlays = _heatmap_overlays(spec=spec, heatmaps=result.heatmaps, decoded=decoded)
    # From the same forward pass: the pooled feature maps, compared with the version's OOD reference.
    ood = _ood_results(model_dir=registry.model_dir, version=loaded.version, result=result, decoded=decoded)
    body_part_name = BodyPart(spec.body_part).label if spec.body_part in BodyPart.values else spec.body_part
    # Recorded before the predictions, so every stored version has its record (idempotent upsert).
    model_version_record(
        version=loaded.version,
        name=spec.name,
        body_part=spec.body_part,
        demo=spec.demo,
        threshold=spec.threshold,
        card=_validation_card(model_dir=registry.model_dir, version=loaded.version),
    )
    predictions_record(
        study_id=study.id,
        run=ModelRun(
            model_name=spec.name,
            body_part=spec.body_part,
            model_version=loaded.version,
            threshold=spec.threshold,
            indeterminate=spec.indeterminate,
            demo=spec.demo,
            preprocessing=spec.preprocessing,
            preprocess_ms=(preprocessed - started) * 1000 / len(decoded),
            inference_ms=(finished - preprocessed) * 1000 / len(decoded),
        ),
        outcomes=[
            ImageOutcome(
                radiograph_id=image.id,
                abnormal_probability=float(probability),
                label=spec.label_for(float(probability)),
                heatmap_png=overlay,
                heatmap_note=_no_heatmap_note(predictor=predictor, name=spec.name) if overlay is None else "",
                ood_score=assessment.score,
                ood_threshold=assessment.threshold,
                ood_note=assessment.note,
                needs_human_read=(
                    ood_reason(
                        score=assessment.score, threshold=assessment.threshold, body_part=body_part_name
                    )
                    if assessment.out_of_distribution
                    else ""
                ),
            )
            for image, probability, overlay, assessment in zip(
                readable, result.probabilities, overlays, ood, strict=True
            )
        ],
    )


def _ood_results(*, model_dir: Path, version: str, result, decoded: list[DecodedImage]) -> list:
    from inference.ood import OodReferenceError, assess_images, read_reference

    try:
        reference = read_reference(model_dir=model_dir, version=version)
        return assess_images(reference=reference, features=result.features, images=decoded)
    except OodReferenceError as exc:
        # A broken or mismatched reference must not stop predictions: they are stored unscored.
        logger.warning("OOD score not computed: %s", exc)
        note = f"OOD score not computed: {exc}"
    except Exception:  # the score is a safeguard on the result, never a reason to lose it
        logger.exception("OOD score failed for model version %s", version)
        note = "OOD score not computed: it failed on this worker (see the worker's log)"
    return assess_images(reference=None, features=None, images=decoded, note=note[:200])


def _no_heatmap_note(*, predictor, name: str) -> str:
    if not predictor.heatmaps_available:
        return f"No heat map: {name} is an opaque graph (ONNX or SavedModel) that Grad-CAM cannot look into."
    return "No heat map: Grad-CAM failed for this image; the probability stands."


def _validation_card(*, model_dir: Path, version: str) -> dict | None:
    try:
        return read_card(model_dir=model_dir, version=version)
    except ModelCardError as exc:
        # A broken card must not stop predictions: the version keeps the card it had, if any.
        logger.warning("Validation card ignored: %s", exc)
        return None


def _heatmap_overlays(*, spec, heatmaps, decoded: list[DecodedImage]) -> list[bytes | None]:
    from inference.gradcam import heatmap_overlay_png

    if heatmaps is None:  # Grad-CAM failed (the predictor logged why): the predictions still stand
        return [None] * len(decoded)
    try:
        return [
            heatmap_overlay_png(image, heatmap, preprocessing=spec.preprocessing)
            for image, heatmap in zip(decoded, heatmaps, strict=True)
        ]
    except Exception:
        # A heat map is an aid, not the result: when drawing it fails the predictions still stand.
        logger.exception("Heat-map overlays failed; the predictions are stored without heat maps")
        return [None] * len(decoded)


@shared_task(name="inference.tasks.redispatch_stale_images", ignore_result=True)
def redispatch_stale_images() -> int:
    """Send again every image left queued (broker was down) or held by a dead worker's claim."""
    now = timezone.now()
    stale = radiographs_requeue_stale(
        queued_before=now - timedelta(seconds=settings.MSKDETECT_REDISPATCH_AFTER_SECONDS),
        claimed_before=now - _claim_expiry(),
        alive_since=alive_since(now),
    )
    sent = _publish_by_study(stale)
    if stale:
        logger.info("Re-dispatched %d of %d stale image(s)", sent, len(stale))
    inference_workers_forget(silent_before=now - WORKER_ROWS_KEPT)
    return sent


def hand_back_claims(*, task_id: str = "", worker_id: str = "") -> int:
    """Give back the claims of a task (or of a whole worker) that is stopping, and send them again.

    What cannot be sent now (broker down) stays queued for the re-dispatch. Returns the count.
    """
    handed = radiographs_hand_back(task_id=task_id, worker_id=worker_id)
    _publish_by_study(handed)
    return len(handed)


def _publish_by_study(images: list[tuple[int, int]]) -> int:
    by_study: dict[int, list[int]] = {}
    for image_id, study_id in images:
        by_study.setdefault(study_id, []).append(image_id)
    sent = 0
    for ids in by_study.values():
        if publish_images(image_ids=ids):
            sent += len(ids)
    return sent
