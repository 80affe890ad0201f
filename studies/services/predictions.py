"""Writes made on behalf of the inference worker: claims, predictions, study results, failures.

Every function is atomic and records its audit event (actor None = the system) in the same
transaction. The worker calls them only through `inference/tasks.py`.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from django.core.files.base import ContentFile
from django.db import transaction
from django.db.models import F, Q
from django.db.models.functions import Greatest
from django.utils import timezone

from studies.audit import audit_record
from studies.models import ImageStatus, Label, Prediction, Radiograph, Study, StudyResult, StudyStatus
from studies.services.worklist import study_worklist_key_refresh

# A study that a human has already read keeps its status when late images are predicted:
# the review stands, and the new result is there for the radiologist to see.
_HUMAN_STATUSES = {StudyStatus.REVIEWED}


@dataclass(frozen=True)
class ImageOutcome:
    """One image's prediction as the worker hands it over (plain values, no Keras)."""

    radiograph_id: int
    abnormal_probability: float
    label: str
    heatmap_png: bytes | None = None


@dataclass(frozen=True)
class ModelRun:
    """What made the predictions of one batch."""

    model_name: str
    body_part: str
    model_version: str
    threshold: float
    demo: bool
    preprocessing: str
    preprocess_ms: float
    inference_ms: float


def radiographs_mark_dispatched(*, image_ids: Sequence[int], at: datetime | None = None) -> int:
    """Record that the jobs for these images were handed to the broker; returns rows changed.

    Bookkeeping only (no clinical state changes), so it writes no audit event.
    """
    return Radiograph.objects.filter(id__in=image_ids, status=ImageStatus.QUEUED).update(
        dispatched_at=at or timezone.now()
    )


def radiographs_requeue_stale(*, queued_before: datetime, claimed_before: datetime) -> list[tuple[int, int]]:
    """Find images nobody is working on; returns (image id, study id) pairs to send again.

    Stale = queued and not handed to the broker since `queued_before` (the broker was down,
    or the message was lost), or claimed before `claimed_before` by a worker that died. The
    dead claims go back to `queued` so the next delivery can take them.
    """
    never_sent = Q(dispatched_at__isnull=True, created_at__lt=queued_before)
    dead_claim = Q(status=ImageStatus.PROCESSING, dispatched_at__lt=claimed_before)
    lost_job = Q(status=ImageStatus.QUEUED) & (never_sent | Q(dispatched_at__lt=queued_before))
    with transaction.atomic():
        stale = list(
            Radiograph.objects.select_for_update(skip_locked=True)
            .filter(lost_job | dead_claim)
            .order_by("id")
            .values_list("id", "study_id", "status")
        )
        dead = [image_id for image_id, _, status in stale if status == ImageStatus.PROCESSING]
        if dead:
            Radiograph.objects.filter(id__in=dead).update(status=ImageStatus.QUEUED, claimed_by="")
    return [(image_id, study_id) for image_id, study_id, _ in stale]


def radiographs_claim(
    *, image_ids: Sequence[int], claimed_before: datetime, max_attempts: int, task_id: str
) -> dict[int, list[Radiograph]]:
    """Claim every pending image of the studies these images belong to; returns them by study.

    Pending = queued, processing under a claim older than `claimed_before` (its worker died),
    or processing under a claim of this same `task_id`: the broker re-delivers a message only
    once its earlier run is gone (pool child killed, `reject_on_worker_lost`), so that claim is
    dead too. The claim records `task_id` in `claimed_by`. Rows another worker is claiming
    right now are skipped (`skip_locked`), so two deliveries of one job never predict the same
    image twice. An image that has been claimed `max_attempts` times already is failed instead
    of being tried again: something in it kills workers.
    """
    now = timezone.now()
    claimed: dict[int, list[Radiograph]] = {}
    with transaction.atomic():
        study_ids = set(Radiograph.objects.filter(id__in=image_ids).values_list("study_id", flat=True))
        if not study_ids:
            return claimed
        dead_claim = Q(status=ImageStatus.PROCESSING, dispatched_at__lt=claimed_before)
        if task_id:
            # Never for an empty id: that would match every claim made without one.
            dead_claim |= Q(status=ImageStatus.PROCESSING, claimed_by=task_id)
        pending = (
            Radiograph.objects.select_for_update(skip_locked=True, of=("self",))
            .select_related("study")
            .filter(study_id__in=study_ids)
            .filter(Q(status=ImageStatus.QUEUED) | dead_claim)
            .order_by("study_id", "id")
        )
        pending = list(pending)
        exhausted = [image for image in pending if image.attempts >= max_attempts]
        fresh = [image for image in pending if image.attempts < max_attempts]
        if exhausted:
            _fail_images(
                images=exhausted,
                message=f"Gave up after {max_attempts} attempts: the worker stopped on this image each time.",
            )
        if fresh:
            Radiograph.objects.filter(id__in=[image.id for image in fresh]).update(
                status=ImageStatus.PROCESSING,
                dispatched_at=now,
                attempts=F("attempts") + 1,
                error="",
                claimed_by=task_id,
            )
        for image in fresh:
            image.status = ImageStatus.PROCESSING
            image.dispatched_at = now
            image.attempts += 1
            image.claimed_by = task_id
            claimed.setdefault(image.study_id, []).append(image)
        for study_id, images in claimed.items():
            study = images[0].study
            if study.status not in _HUMAN_STATUSES:
                Study.objects.filter(id=study_id).update(status=StudyStatus.PROCESSING, updated_at=now)
            audit_record(
                actor=None,
                action="inference.started",
                obj=study,
                study=study,
                details={"images": [image.id for image in images]},
            )
        for study in {image.study for image in exhausted}:
            _refresh_study(study=study)
    return claimed


def radiographs_release(*, image_ids: Sequence[int]) -> int:
    """Put claimed images back in the queue after a transient error, so a retry can claim them."""
    with transaction.atomic():
        # A transient error is not the image's fault: the claim does not count as an attempt.
        released = Radiograph.objects.filter(id__in=image_ids, status=ImageStatus.PROCESSING).update(
            status=ImageStatus.QUEUED, attempts=Greatest(F("attempts") - 1, 0), claimed_by=""
        )
    return released


def predictions_record(
    *, study_id: int, run: ModelRun, outcomes: Sequence[ImageOutcome]
) -> StudyResult | None:
    """Store one batch's predictions and heat maps, then the study's result and status.

    Safe to call twice for the same images and model version: the existing prediction is kept
    (unique on radiograph + model version) and nothing is duplicated.
    """
    with transaction.atomic():
        study = Study.objects.select_for_update().get(id=study_id)
        images = {
            image.id: image
            for image in Radiograph.objects.filter(
                study=study, id__in=[outcome.radiograph_id for outcome in outcomes]
            )
        }
        created = []
        for outcome in outcomes:
            image = images.get(outcome.radiograph_id)
            if image is None:
                continue
            prediction, is_new = Prediction.objects.get_or_create(
                radiograph=image,
                model_version=run.model_version,
                defaults={
                    "model_name": run.model_name,
                    "body_part": run.body_part,
                    "abnormal_probability": outcome.abnormal_probability,
                    "label": outcome.label,
                    "threshold": run.threshold,
                    "demo": run.demo,
                    "preprocessing": run.preprocessing,
                    "preprocess_ms": run.preprocess_ms,
                    "inference_ms": run.inference_ms,
                },
            )
            if is_new and outcome.heatmap_png:
                # The storage write happens inside the transaction: if it fails, no
                # prediction row points at a missing file.
                prediction.heatmap.save("gradcam.png", ContentFile(outcome.heatmap_png), save=True)
            if is_new:
                created.append(prediction)
        Radiograph.objects.filter(id__in=list(images)).update(
            status=ImageStatus.DONE, error="", attempts=0, claimed_by=""
        )
        result = _store_result(study=study, run=run)
        _refresh_study(study=study)
        audit_record(
            actor=None,
            action="inference.completed",
            obj=study,
            study=study,
            details={
                "model_name": run.model_name,
                "model_version": run.model_version,
                "demo": run.demo,
                "predictions": [
                    {
                        "image": p.radiograph_id,
                        "abnormal_probability": p.abnormal_probability,
                        "label": p.label,
                    }
                    for p in created
                ],
                "study_abnormal_probability": result.abnormal_probability if result else None,
                "study_label": result.label if result else None,
            },
        )
    return result


def radiographs_fail(*, image_ids: Sequence[int], message: str) -> None:
    """Mark images failed with a message a person can act on; the study shows it too."""
    with transaction.atomic():
        images = list(Radiograph.objects.select_for_update().select_related("study").filter(id__in=image_ids))
        _fail_images(images=images, message=message)
        for study in {image.study for image in images}:
            _refresh_study(study=study)


def radiographs_mark_unsupported(*, image_ids: Sequence[int], message: str) -> None:
    """No model is installed for the body part: the images wait for a human read."""
    with transaction.atomic():
        images = list(Radiograph.objects.select_for_update().select_related("study").filter(id__in=image_ids))
        _close_images(
            images=images,
            status=ImageStatus.UNSUPPORTED,
            action="inference.unsupported",
            details={"reason": message},
            message=message,
        )
        for study in {image.study for image in images}:
            _refresh_study(study=study)


def _fail_images(*, images: Sequence[Radiograph], message: str) -> None:
    _close_images(
        images=images,
        status=ImageStatus.FAILED,
        action="inference.failed",
        details={"error": message},
        message=message,
    )


def _close_images(
    *, images: Sequence[Radiograph], status: str, action: str, details: dict, message: str
) -> None:
    # `attempts` counts claims that never reached an outcome (dead workers); an outcome resets it.
    Radiograph.objects.filter(id__in=[image.id for image in images]).update(
        status=status, error=message, attempts=0, claimed_by=""
    )
    for study in {image.study for image in images}:
        audit_record(
            actor=None,
            action=action,
            obj=study,
            study=study,
            details={"images": [i.id for i in images if i.study_id == study.id], **details},
        )


def _store_result(*, study: Study, run: ModelRun) -> StudyResult | None:
    # MURA's rule: the study's P(abnormal) is the mean over its images. Each done image
    # counts once, with its latest prediction.
    probabilities = []
    for image in study.images.filter(status=ImageStatus.DONE).prefetch_related("predictions"):
        latest = max(image.predictions.all(), key=lambda p: (p.finished_at, p.id), default=None)
        if latest is not None:
            probabilities.append(latest.abnormal_probability)
    if not probabilities:
        return None
    mean = sum(probabilities) / len(probabilities)
    label = Label.ABNORMAL if mean >= run.threshold else Label.NORMAL
    result, _ = StudyResult.objects.update_or_create(
        study=study,
        defaults={
            "abnormal_probability": mean,
            "label": label,
            "threshold": run.threshold,
            "model_name": run.model_name,
            "model_version": run.model_version,
            "demo": run.demo,
        },
    )
    study_worklist_key_refresh(study=study)
    return result


def _refresh_study(*, study: Study) -> None:
    """Derive the study's status and error from its images' statuses."""
    statuses = list(study.images.values_list("status", "error"))
    failed = [error for status, error in statuses if status == ImageStatus.FAILED]
    counts = {status: 0 for status in ImageStatus.values}
    for status, _ in statuses:
        counts[status] += 1
    if counts[ImageStatus.PROCESSING]:
        status = StudyStatus.PROCESSING
    elif counts[ImageStatus.QUEUED]:
        status = StudyStatus.QUEUED
    elif counts[ImageStatus.DONE]:
        status = StudyStatus.PREDICTED
    elif failed:
        status = StudyStatus.FAILED
    elif counts[ImageStatus.UNSUPPORTED]:
        status = StudyStatus.UNSUPPORTED
    else:
        status = study.status
    if failed:
        first = failed[0]
        error = first if len(statuses) == 1 else f"{len(failed)} of {len(statuses)} images failed: {first}"
    elif counts[ImageStatus.UNSUPPORTED] and not counts[ImageStatus.DONE]:
        error = next(error for status, error in statuses if status == ImageStatus.UNSUPPORTED)
    else:
        error = ""
    if study.status in _HUMAN_STATUSES:
        status = study.status
    Study.objects.filter(id=study.id).update(status=status, error=error, updated_at=timezone.now())
    study.status, study.error = status, error


__all__ = [
    "ImageOutcome",
    "ModelRun",
    "predictions_record",
    "radiographs_claim",
    "radiographs_fail",
    "radiographs_mark_dispatched",
    "radiographs_mark_unsupported",
    "radiographs_release",
    "radiographs_requeue_stale",
]
