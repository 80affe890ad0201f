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
from studies.models import (
    DicomExportTrigger,
    ImageStatus,
    InferenceWorker,
    Prediction,
    Radiograph,
    ResultLabel,
    Study,
    StudyResult,
    StudyStatus,
)
from studies.services.pacs_sends import pacs_exports_plan
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
    heatmap_note: str = ""  # why there is no heat map, when there is none
    # Out-of-distribution score and its reference's threshold (None: not computed, ood_note says why).
    ood_score: float | None = None
    ood_threshold: float | None = None
    ood_note: str = ""
    # Set when the image is out of distribution: why it waits for a human read. It then gets the
    # status `needs_human_read` and is left out of the study's result (it can never flag a study).
    needs_human_read: str = ""


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
    # The model's indeterminate band (low, high), or None: results are abnormal or normal only.
    indeterminate: tuple[float, float] | None = None


def radiographs_mark_dispatched(*, image_ids: Sequence[int], at: datetime | None = None) -> int:
    """Record that the jobs for these images were handed to the broker; returns rows changed.

    Bookkeeping only (no clinical state changes), so it writes no audit event.
    """
    return Radiograph.objects.filter(id__in=image_ids, status=ImageStatus.QUEUED).update(
        dispatched_at=at or timezone.now()
    )


def radiographs_requeue_stale(
    *, queued_before: datetime, claimed_before: datetime, alive_since: datetime | None = None
) -> list[tuple[int, int]]:
    """Find images nobody is working on; returns (image id, study id) pairs to send again.

    Stale = queued and not handed to the broker since `queued_before` (the broker was down,
    or the message was lost), or claimed by a worker that is gone: one that has not beaten
    since `alive_since` (or stopped), or, as the last resort, any claim made before
    `claimed_before`. The dead claims go back to `queued` so the next delivery can take them.
    """
    never_sent = Q(dispatched_at__isnull=True, created_at__lt=queued_before)
    dead_claim = _dead_claim(claimed_before=claimed_before, alive_since=alive_since)
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
            Radiograph.objects.filter(id__in=dead).update(
                status=ImageStatus.QUEUED, claimed_by="", claimed_worker=""
            )
    return [(image_id, study_id) for image_id, study_id, _ in stale]


def radiographs_claim(
    *,
    image_ids: Sequence[int],
    claimed_before: datetime,
    max_attempts: int,
    task_id: str,
    worker_id: str = "",
    alive_since: datetime | None = None,
) -> dict[int, list[Radiograph]]:
    """Claim every pending image of the studies these images belong to; returns them by study.

    Pending = queued, processing under a claim older than `claimed_before` (its worker died),
    or processing under a claim of this same `task_id`: the broker re-delivers a message only
    once its earlier run is gone (pool child killed, `reject_on_worker_lost`), so that claim is
    dead too; so is a claim of a worker that has not beaten since `alive_since`. The claim records
    `task_id` in `claimed_by` and this worker's id in `claimed_worker`. Rows another worker is claiming
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
        dead_claim = _dead_claim(claimed_before=claimed_before, alive_since=alive_since)
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
                claimed_worker=worker_id,
            )
        for image in fresh:
            image.status = ImageStatus.PROCESSING
            image.dispatched_at = now
            image.attempts += 1
            image.claimed_by = task_id
            image.claimed_worker = worker_id
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
            status=ImageStatus.QUEUED,
            attempts=Greatest(F("attempts") - 1, 0),
            claimed_by="",
            claimed_worker="",
        )
    return released


def radiographs_hand_back(*, task_id: str = "", worker_id: str = "") -> list[tuple[int, int]]:
    """A worker that is stopping gives back its claims (of one task, or all of the worker's).

    The images go back to `queued`, not yet sent (the caller sends them again), the claim does not
    count as an attempt, and each study records `inference.handed_back`. Returns (image id,
    study id) pairs.
    """
    if not task_id and not worker_id:
        return []
    mine = Q(claimed_by=task_id) if task_id else Q(claimed_worker=worker_id)
    with transaction.atomic():
        images = list(
            Radiograph.objects.select_for_update(of=("self",))
            .select_related("study")
            .filter(mine, status=ImageStatus.PROCESSING)
            .order_by("id")
        )
        if not images:
            return []
        Radiograph.objects.filter(id__in=[image.id for image in images]).update(
            status=ImageStatus.QUEUED,
            attempts=Greatest(F("attempts") - 1, 0),
            claimed_by="",
            claimed_worker="",
            dispatched_at=None,
        )
        for study in {image.study for image in images}:
            audit_record(
                actor=None,
                action="inference.handed_back",
                obj=study,
                study=study,
                details={"images": [image.id for image in images if image.study_id == study.id]},
            )
            _refresh_study(study=study)
    return [(image.id, image.study_id) for image in images]


def _dead_claim(*, claimed_before: datetime, alive_since: datetime | None) -> Q:
    # The time rule is the last resort; a claim whose worker stopped beating is dead at once.
    expired = Q(dispatched_at__lt=claimed_before)
    if alive_since is not None:
        live_workers = InferenceWorker.objects.filter(beat_at__gte=alive_since, stopped_at__isnull=True)
        expired |= ~Q(claimed_worker="") & ~Q(claimed_worker__in=live_workers.values("worker_id"))
    return Q(status=ImageStatus.PROCESSING) & expired


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
                    **_band_fields(run),
                    "demo": run.demo,
                    "preprocessing": run.preprocessing,
                    "preprocess_ms": run.preprocess_ms,
                    "inference_ms": run.inference_ms,
                    "heatmap_note": "" if outcome.heatmap_png else outcome.heatmap_note,
                    "ood_score": outcome.ood_score,
                    "ood_threshold": outcome.ood_threshold,
                    "ood_note": outcome.ood_note[:200],
                },
            )
            if is_new and outcome.heatmap_png:
                # The storage write happens inside the transaction: if it fails, no
                # prediction row points at a missing file.
                prediction.heatmap.save("gradcam.png", ContentFile(outcome.heatmap_png), save=True)
            if is_new:
                created.append(prediction)
        out_of_distribution = {o.radiograph_id: o.needs_human_read for o in outcomes if o.needs_human_read}
        Radiograph.objects.filter(id__in=[i for i in images if i not in out_of_distribution]).update(
            status=ImageStatus.DONE, error="", attempts=0, claimed_by="", claimed_worker=""
        )
        for image_id, reason in out_of_distribution.items():
            if image_id in images:
                Radiograph.objects.filter(id=image_id).update(
                    status=ImageStatus.NEEDS_HUMAN_READ,
                    error=reason,
                    attempts=0,
                    claimed_by="",
                    claimed_worker="",
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
                        "ood_score": p.ood_score,
                        "ood_threshold": p.ood_threshold,
                    }
                    for p in created
                ],
                "needs_human_read": [
                    {"image": image_id, "reason": reason}
                    for image_id, reason in out_of_distribution.items()
                    if image_id in images
                ],
                "study_abnormal_probability": result.abnormal_probability if result else None,
                "study_label": result.label if result else None,
            },
        )
        if result is not None and any(p.radiograph_id not in out_of_distribution for p in created):
            # A new result goes back to the PACS (where configured), sent after this commit.
            pacs_exports_plan(study=study, trigger=DicomExportTrigger.RESULT)
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
        status=status, error=message, attempts=0, claimed_by="", claimed_worker=""
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
    result, _ = StudyResult.objects.update_or_create(
        study=study,
        defaults={
            "abnormal_probability": mean,
            "label": result_label(mean, threshold=run.threshold, indeterminate=run.indeterminate),
            "threshold": run.threshold,
            **_band_fields(run),
            "model_name": run.model_name,
            "model_version": run.model_version,
            "demo": run.demo,
        },
    )
    study_worklist_key_refresh(study=study)
    return result


def result_label(probability: float, *, threshold: float, indeterminate: tuple[float, float] | None) -> str:
    """The result tier: abnormal at or above the band's top (the threshold without a band), normal
    below its bottom, indeterminate in between (low <= P < high).

    The same rule as ``inference.registry.result_label``, which labels each image in the worker;
    it is repeated here because the web side does not import inference (DESIGN.md), and
    tests/studies/test_result_tiers.py checks that the two agree at every edge.
    """
    if indeterminate is None:
        return ResultLabel.ABNORMAL if probability >= threshold else ResultLabel.NORMAL
    low, high = indeterminate
    if probability >= high:
        return ResultLabel.ABNORMAL
    return ResultLabel.NORMAL if probability < low else ResultLabel.INDETERMINATE


def _band_fields(run: ModelRun) -> dict[str, float | None]:
    low, high = run.indeterminate if run.indeterminate is not None else (None, None)
    return {"indeterminate_low": low, "indeterminate_high": high}


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
    elif counts[ImageStatus.NEEDS_HUMAN_READ]:
        # Every predicted image is out of distribution: no automatic result, a radiologist reads it.
        status = StudyStatus.NEEDS_HUMAN_READ
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
    "radiographs_hand_back",
    "radiographs_mark_dispatched",
    "radiographs_mark_unsupported",
    "radiographs_release",
    "radiographs_requeue_stale",
    "result_label",
]
