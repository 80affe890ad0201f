"""Building what a trigger sends to the PACS, once: the SR and the heat-map secondary captures.

The send task calls `dicom_export_build` before its first attempt; the files are stored through
Django's storage (pacs/<study>/<export>/<SOP Instance UID>.dcm) and their UIDs recorded on the
export, so every destination and every retry gets the very same instances.
"""

import io
import logging

import pydicom
from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import transaction
from django.utils import timezone
from pydicom.uid import generate_uid

from studies.dicom_results.secondary_capture import (
    CaptureText,
    build_secondary_capture,
    rgb_from_gray,
    rgb_from_png,
)
from studies.dicom_results.sources import SourceError, read_source_header
from studies.dicom_results.sr import (
    Placement,
    PreviousReport,
    ResultFacts,
    ReviewFacts,
    build_result_sr,
    person_name,
)
from studies.models import (
    DicomExport,
    DicomSendStatus,
    ImageFormat,
    Prediction,
    Radiograph,
    Review,
)

logger = logging.getLogger(__name__)

SR_KIND = "sr"
SC_KIND = "sc"


class ExportBuildError(Exception):
    """The export's DICOM files cannot be made (a source file missing or unreadable)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def dicom_export_build(*, export_id: int) -> DicomExport:
    """The export with its DICOM files built and stored (built here when not yet).

    Earlier exports of the study that still wait to be sent are built first, in order, so each SR
    names the one before it (PredecessorDocumentsSequence) and instance numbers follow the order.
    ExportBuildError (recorded on the export) when a source cannot be read.
    """
    export = DicomExport.objects.get(id=export_id)
    if export.built_at is not None:
        return export
    if export.build_error:
        raise ExportBuildError(export.build_error)
    with transaction.atomic():
        # Row locks in id order: concurrent sends of one study build each export once.
        waiting = list(
            DicomExport.objects.select_for_update()
            .filter(study_id=export.study_id, id__lte=export.id, built_at__isnull=True, build_error="")
            .order_by("id")
        )
        for candidate in waiting:
            if (
                candidate.id != export.id
                and not candidate.sends.filter(status=DicomSendStatus.PENDING).exists()
            ):
                continue  # withheld (demo) or given up: nothing will send it, no need to build it
            try:
                with transaction.atomic():  # a savepoint: a failed build leaves no half-built row
                    _build(candidate)
            except ExportBuildError as exc:
                DicomExport.objects.filter(id=candidate.id).update(build_error=exc.message[:2000])
    export.refresh_from_db()
    if export.build_error:
        raise ExportBuildError(export.build_error)
    return export


def _build(export: DicomExport) -> None:
    earlier = list(
        DicomExport.objects.filter(
            study_id=export.study_id, id__lt=export.id, built_at__isnull=False
        ).order_by("id")
    )
    built = [item for previous in earlier for item in previous.instances]
    sources = _source_headers(export)
    primary = sources[0][1]
    study_uid = str(primary.StudyInstanceUID)
    series = {
        kind: next((i["series_instance_uid"] for i in built if i["kind"] == kind), None) or generate_uid()
        for kind in (SR_KIND, SC_KIND)
    }
    numbers = {kind: sum(1 for i in built if i["kind"] == kind) for kind in (SR_KIND, SC_KIND)}
    previous_sr = [i for i in built if i["kind"] == SR_KIND][-1:]
    facts = ResultFacts(**export.result)
    review = _review_facts(export.review) if export.review_id else None
    instances: list[dict] = []

    sr = build_result_sr(
        sources=[header for _, header in sources],
        result=facts,
        review=review,
        placement=Placement(series[SR_KIND], generate_uid(), numbers[SR_KIND] + 1),
        device_uid=device_uid(),
        previous=[
            PreviousReport(
                study_instance_uid=i["study_instance_uid"],
                series_instance_uid=i["series_instance_uid"],
                sop_class_uid=i["sop_class_uid"],
                sop_instance_uid=i["sop_instance_uid"],
            )
            for i in previous_sr
        ],
    )
    instances.append(_store(export=export, dataset=sr, kind=SR_KIND, image_id=None))

    headers = dict(sources)
    predictions = Prediction.objects.filter(id__in=export.predictions).select_related("radiograph")
    for offset, prediction in enumerate(sorted(predictions, key=lambda p: p.radiograph_id), start=1):
        header = headers.get(prediction.radiograph_id)
        if header is None:
            continue  # not one of the study's DICOM images any more
        capture = build_secondary_capture(
            source=header,
            pixels=_capture_picture(prediction),
            text=CaptureText(
                model_name=prediction.model_name,
                model_version=prediction.model_version,
                image_probability=prediction.abnormal_probability,
                study_label=facts.label,
                study_probability=facts.abnormal_probability,
                threshold=facts.threshold,
                indeterminate_low=facts.indeterminate_low,
                indeterminate_high=facts.indeterminate_high,
                demo=facts.demo or prediction.demo,
                note="" if prediction.heatmap else (prediction.heatmap_note or "No heat map for this image."),
            ),
            placement=Placement(series[SC_KIND], generate_uid(), numbers[SC_KIND] + offset),
            study_source=primary,
        )
        instances.append(
            _store(export=export, dataset=capture, kind=SC_KIND, image_id=prediction.radiograph_id)
        )
    DicomExport.objects.filter(id=export.id).update(instances=instances, built_at=timezone.now())
    logger.info(
        "Built export %s of study %s: %d instance(s) in %s",
        export.id,
        export.study_id,
        len(instances),
        study_uid,
    )


def _source_headers(export: DicomExport) -> list[tuple[int, pydicom.Dataset]]:
    images = Radiograph.objects.filter(id__in=export.images, format=ImageFormat.DICOM).order_by("id")
    headers = []
    for image in images:
        # Never the uploaded file name: it may hold patient data, and errors reach /healthz.
        name = f"Image {image.id}"
        try:
            with default_storage.open(image.file.name, "rb") as stored:
                headers.append((image.id, read_source_header(stored, name=name)))
        except SourceError as exc:
            raise ExportBuildError(exc.message) from exc
        except OSError as exc:
            raise ExportBuildError(f"{name}: the stored original cannot be read ({exc})") from exc
    if not headers:
        raise ExportBuildError("none of the study's DICOM images is stored any more")
    return headers


def _capture_picture(prediction: Prediction):
    if prediction.heatmap:
        with default_storage.open(prediction.heatmap.name, "rb") as stored:
            return rgb_from_png(stored.read())
    # No heat map (an opaque ONNX graph, Grad-CAM failed): the radiograph alone, with the note.
    from inference.tasks import display_pixels

    with default_storage.open(prediction.radiograph.file.name, "rb") as stored:
        return rgb_from_gray(display_pixels(stored.read()))


def _review_facts(review: Review) -> ReviewFacts:
    user = review.radiologist
    return ReviewFacts(
        decision=review.decision,
        final_label=review.final_label,
        radiologist_name=person_name(
            first_name=getattr(user, "first_name", ""),
            last_name=getattr(user, "last_name", ""),
            username=user.get_username(),
        ),
        radiologist_login=user.get_username(),
    )


def _store(*, export: DicomExport, dataset: pydicom.Dataset, kind: str, image_id: int | None) -> dict:
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    uid = str(dataset.SOPInstanceUID)
    name = default_storage.save(
        f"pacs/{export.study_id}/{export.id}/{uid}.dcm", ContentFile(buffer.getvalue())
    )
    return {
        "kind": kind,
        "sop_class_uid": str(dataset.SOPClassUID),
        "sop_instance_uid": uid,
        "series_instance_uid": str(dataset.SeriesInstanceUID),
        "study_instance_uid": str(dataset.StudyInstanceUID),
        "file": name,
        "image": image_id,
    }


def device_uid() -> str:
    """This deployment's Device Observer UID: the same for every SR it writes (from its AE title)."""
    return generate_uid(prefix=None, entropy_srcs=["MSK-Detect device", settings.MSKDETECT_DICOM_AE_TITLE])
