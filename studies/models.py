"""Clinical records: patients, studies, radiographs, predictions, results, reviews, audit."""

from django.conf import settings
from django.db import models
from django.db.models import F, Q


class BodyPart(models.TextChoices):
    """The seven MURA study types."""

    ELBOW = "XR_ELBOW", "Elbow"
    FINGER = "XR_FINGER", "Finger"
    FOREARM = "XR_FOREARM", "Forearm"
    HAND = "XR_HAND", "Hand"
    HUMERUS = "XR_HUMERUS", "Humerus"
    SHOULDER = "XR_SHOULDER", "Shoulder"
    WRIST = "XR_WRIST", "Wrist"


class Label(models.TextChoices):
    """A call on a study: what a radiologist's review decides (always one of the two)."""

    ABNORMAL = "abnormal", "Abnormal"
    NORMAL = "normal", "Normal"


class ResultLabel(models.TextChoices):
    """What the model says: a call, or "indeterminate" (P(abnormal) inside the model's band: no call)."""

    ABNORMAL = "abnormal", "Abnormal"
    NORMAL = "normal", "Normal"
    INDETERMINATE = "indeterminate", "Indeterminate"


class WorklistRank(models.IntegerChoices):
    """The worklist's first sort key: flagged, then indeterminate awaiting a read, then the rest."""

    OTHER = 0, "Other"
    INDETERMINATE = 1, "Indeterminate, awaiting a radiologist's read"
    FLAGGED = 2, "Flagged"


def result_band_constraints(prefix: str) -> list[models.CheckConstraint]:
    """A stored label is one of the three; a band is both bounds or neither, and holds the threshold."""
    no_band = Q(indeterminate_low__isnull=True, indeterminate_high__isnull=True)
    band = (
        Q(indeterminate_low__gte=0)
        & Q(indeterminate_low__lt=F("indeterminate_high"))
        & Q(indeterminate_low__lte=F("threshold"))
        & Q(indeterminate_high__gte=F("threshold"))
        & Q(indeterminate_high__lte=1)
    )
    return [
        models.CheckConstraint(condition=Q(label__in=ResultLabel.values), name=f"{prefix}_label_valid"),
        models.CheckConstraint(condition=no_band | band, name=f"{prefix}_band_valid"),
        models.CheckConstraint(
            condition=~Q(label=ResultLabel.INDETERMINATE) | Q(indeterminate_low__isnull=False),
            name=f"{prefix}_indeterminate_needs_band",
        ),
    ]


class Sex(models.TextChoices):
    FEMALE = "F", "Female"
    MALE = "M", "Male"
    OTHER = "O", "Other"
    UNKNOWN = "U", "Unknown"


class StudyStatus(models.TextChoices):
    NEW = "new", "New"
    QUEUED = "queued", "Queued"
    PROCESSING = "processing", "Processing"
    PREDICTED = "predicted", "Predicted"
    FAILED = "failed", "Failed"
    UNSUPPORTED = "unsupported", "Unsupported"
    # Every image was out of distribution for the model: no automatic result, a radiologist reads it.
    NEEDS_HUMAN_READ = "needs_human_read", "Needs a human read"
    REVIEWED = "reviewed", "Reviewed"
    # Received by DICOM with no body part the header names unambiguously: its images wait, unpredicted,
    # until staff set the body part (studies.services.dicom_ingest.study_body_part_set).
    NEEDS_BODY_PART = "needs_body_part", "Waiting for the body part"


class ImageStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    PROCESSING = "processing", "Processing"
    DONE = "done", "Done"
    FAILED = "failed", "Failed"
    UNSUPPORTED = "unsupported", "Unsupported"
    # Predicted, but the image does not look like the radiographs the model knows (OOD score above
    # the threshold of its reference): left out of the study's result, the reason is in `error`.
    NEEDS_HUMAN_READ = "needs_human_read", "Needs a human read"
    # Stored, not sent to the worker: its study has no body part yet (StudyStatus.NEEDS_BODY_PART).
    NEEDS_BODY_PART = "needs_body_part", "Waiting for the body part"


class ImageFormat(models.TextChoices):
    PNG = "png", "PNG"
    JPEG = "jpeg", "JPEG"
    DICOM = "dcm", "DICOM"


class ReviewDecision(models.TextChoices):
    CONFIRM = "confirm", "Confirm"
    OVERRIDE = "override", "Override"
    # For an indeterminate result: the model made no call, so the radiologist's label is a ruling.
    RULE = "rule", "Ruling"


class Patient(models.Model):
    mrn = models.CharField("MRN", max_length=64)
    # Who assigned the MRN (DICOM IssuerOfPatientID); blank: this hospital. One MRN per issuer.
    mrn_issuer = models.CharField("MRN issuer", max_length=64, blank=True, default="")
    name = models.CharField(max_length=200)
    birth_date = models.DateField(null=True, blank=True)
    sex = models.CharField(max_length=1, choices=Sex.choices, default=Sex.UNKNOWN)
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+", null=True
    )

    class Meta:
        ordering = ["name", "mrn"]
        constraints = [
            models.CheckConstraint(condition=~Q(mrn=""), name="patient_mrn_not_blank"),
            models.CheckConstraint(condition=Q(sex__in=Sex.values), name="patient_sex_valid"),
            models.UniqueConstraint(fields=["mrn", "mrn_issuer"], name="patient_mrn_unique_per_issuer"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.mrn})"


BODY_PART_NOT_SET = "Body part not set"


class Study(models.Model):
    Status = StudyStatus

    patient = models.ForeignKey(Patient, on_delete=models.PROTECT, related_name="studies")
    accession_number = models.CharField(max_length=64, unique=True)
    # Blank only for a study received by DICOM whose header names no MURA body part: it waits for staff.
    body_part = models.CharField(max_length=16, choices=BodyPart.choices, blank=True)
    study_date = models.DateField(null=True, blank=True)
    # DICOM StudyInstanceUID (blank: not known, e.g. registered by hand with PNG uploads).
    study_instance_uid = models.CharField("StudyInstanceUID", max_length=64, blank=True, default="")
    status = models.CharField(max_length=16, choices=StudyStatus.choices, default=StudyStatus.NEW)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+", null=True
    )
    # The worklist's sort key, kept by studies.services.worklist in the same transactions that
    # change a result or add a review. Stored (not computed in the query) so that an index
    # serves the worklist page at any table size; -1 = no result yet.
    worklist_rank = models.PositiveSmallIntegerField(
        choices=WorklistRank.choices, default=WorklistRank.OTHER, editable=False
    )
    worklist_probability = models.FloatField(default=-1.0, editable=False)
    # How many files the uploader chose on the new-study page (null: not said). Until that many
    # images arrive, or staff mark the study complete, the study shows "2 of 4 files received".
    expected_images = models.PositiveIntegerField(null=True, blank=True)
    marked_complete_at = models.DateTimeField(null=True, blank=True)
    marked_complete_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+", null=True, blank=True
    )

    class Meta:
        ordering = ["-created_at"]
        verbose_name_plural = "studies"
        constraints = [
            models.CheckConstraint(
                condition=Q(body_part__in=BodyPart.values) | Q(body_part=""), name="study_body_part_valid"
            ),
            models.CheckConstraint(condition=Q(status__in=StudyStatus.values), name="study_status_valid"),
            models.UniqueConstraint(
                fields=["study_instance_uid"],
                condition=~Q(study_instance_uid=""),
                name="study_instance_uid_unique",
            ),
            models.CheckConstraint(condition=~Q(accession_number=""), name="study_accession_not_blank"),
            models.CheckConstraint(
                condition=Q(expected_images__isnull=True) | Q(expected_images__gte=1),
                name="study_expected_images_positive",
            ),
        ]
        indexes = [
            models.Index(fields=["status", "created_at"]),
            models.Index(
                F("worklist_rank").desc(),
                F("worklist_probability").desc(),
                "created_at",
                "id",
                name="study_worklist_rank_order",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.accession_number} {self.get_body_part_display()}"

    def get_body_part_display(self) -> str:
        # Overrides Django's: a received study whose header named no MURA type says so wherever it shows.
        return BodyPart(self.body_part).label if self.body_part in BodyPart.values else BODY_PART_NOT_SET


def radiograph_upload_to(instance: "Radiograph", filename: str) -> str:
    # The stored name never carries the uploader's file name (it may hold patient data).
    return f"radiographs/{instance.study_id}/{instance.sha256}.{instance.format}"


def heatmap_upload_to(instance: "Prediction", filename: str) -> str:
    return f"heatmaps/{instance.radiograph.study_id}/{instance.radiograph_id}-{filename}"


class Radiograph(models.Model):
    Status = ImageStatus
    Format = ImageFormat

    study = models.ForeignKey(Study, on_delete=models.PROTECT, related_name="images")
    file = models.FileField(upload_to=radiograph_upload_to, max_length=255)
    sha256 = models.CharField(max_length=64)
    original_name = models.CharField(max_length=255, blank=True)
    format = models.CharField(max_length=8, choices=ImageFormat.choices)
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()
    status = models.CharField(max_length=16, choices=ImageStatus.choices, default=ImageStatus.QUEUED)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    # When the job was last handed to the broker; the re-dispatch looks at this.
    dispatched_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    # The Celery task id holding the `processing` claim: a re-delivery of that same message
    # (its earlier run is gone) takes the claim back at once instead of waiting for it to expire.
    claimed_by = models.CharField(max_length=64, blank=True)
    # The worker (InferenceWorker.worker_id) holding the `processing` claim: when that worker stops
    # beating, the re-dispatch takes the claim back without waiting for the time limits.
    claimed_worker = models.CharField(max_length=64, blank=True)
    # The DICOM header as read at upload (empty for PNG and JPEG): a later file of the study is
    # compared with it (studies.services.intake).
    dicom_header = models.JSONField(default=dict, blank=True, editable=False)
    # Header checks that failed and that the uploader confirmed anyway: a list of
    # {"check", "label", "file_value", "study_value", "message"}; empty when nothing differed.
    mismatches = models.JSONField(default=list, blank=True, editable=False)
    mismatch_reason = models.TextField(blank=True)
    mismatch_confirmed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+", null=True, blank=True
    )
    # DICOM SOPInstanceUID (blank for PNG/JPEG): an instance sent again is recognised and stored once.
    sop_instance_uid = models.CharField("SOPInstanceUID", max_length=64, blank=True, default="")

    class Meta:
        ordering = ["study_id", "id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(status__in=ImageStatus.values), name="radiograph_status_valid"
            ),
            models.CheckConstraint(
                condition=Q(format__in=ImageFormat.values), name="radiograph_format_valid"
            ),
            models.CheckConstraint(
                condition=Q(mismatch_confirmed_by__isnull=True) | ~Q(mismatch_reason=""),
                name="radiograph_confirmed_mismatch_has_reason",
            ),
            models.UniqueConstraint(
                fields=["sop_instance_uid"],
                condition=~Q(sop_instance_uid=""),
                name="radiograph_sop_instance_uid_unique",
            ),
        ]
        indexes = [models.Index(fields=["status", "dispatched_at"])]

    def __str__(self) -> str:
        return f"Image {self.pk} of {self.study}"


class Prediction(models.Model):
    radiograph = models.ForeignKey(Radiograph, on_delete=models.PROTECT, related_name="predictions")
    model_name = models.CharField(max_length=100)
    body_part = models.CharField(max_length=16, choices=BodyPart.choices)
    model_version = models.CharField(max_length=64)
    abnormal_probability = models.FloatField()
    label = models.CharField(max_length=16, choices=ResultLabel.choices)
    threshold = models.FloatField()
    # The model's indeterminate band when it made this prediction; both null: it had none.
    indeterminate_low = models.FloatField(null=True, blank=True)
    indeterminate_high = models.FloatField(null=True, blank=True)
    demo = models.BooleanField(default=False)
    preprocessing = models.CharField(max_length=50)
    preprocess_ms = models.FloatField(default=0)
    inference_ms = models.FloatField(default=0)
    heatmap = models.FileField(upload_to=heatmap_upload_to, max_length=255, blank=True)
    # Why there is no heat map, when there is none (an opaque ONNX/SavedModel graph, Grad-CAM failed).
    heatmap_note = models.CharField(max_length=200, blank=True)
    # Out-of-distribution score of the image for this model version (inference.ood) and the threshold
    # of the version's reference; both null when not computed, and ood_note says why.
    ood_score = models.FloatField(null=True, blank=True)
    ood_threshold = models.FloatField(null=True, blank=True)
    ood_note = models.CharField(max_length=200, blank=True)
    finished_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-finished_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["radiograph", "model_version"], name="prediction_unique_per_model_version"
            ),
            models.CheckConstraint(
                condition=Q(abnormal_probability__gte=0) & Q(abnormal_probability__lte=1),
                name="prediction_probability_range",
            ),
            models.CheckConstraint(condition=~Q(model_version=""), name="prediction_has_version"),
            *result_band_constraints("prediction"),
        ]

    def __str__(self) -> str:
        return f"{self.label} {self.abnormal_probability:.3f} ({self.model_name})"


class StudyResult(models.Model):
    """The study-level result: mean of the images' P(abnormal) (MURA's rule)."""

    study = models.OneToOneField(Study, on_delete=models.PROTECT, related_name="result")
    abnormal_probability = models.FloatField()
    label = models.CharField(max_length=16, choices=ResultLabel.choices)
    threshold = models.FloatField()
    # The model's indeterminate band: label is "indeterminate" for low <= P < high. Both null: no band.
    indeterminate_low = models.FloatField(null=True, blank=True)
    indeterminate_high = models.FloatField(null=True, blank=True)
    model_name = models.CharField(max_length=100)
    model_version = models.CharField(max_length=64)
    demo = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(abnormal_probability__gte=0) & Q(abnormal_probability__lte=1),
                name="study_result_probability_range",
            ),
            models.CheckConstraint(condition=~Q(model_version=""), name="study_result_has_version"),
            *result_band_constraints("study_result"),
        ]

    def __str__(self) -> str:
        return f"{self.study}: {self.label} {self.abnormal_probability:.3f}"


class Review(models.Model):
    Decision = ReviewDecision

    study = models.ForeignKey(Study, on_delete=models.PROTECT, related_name="reviews")
    radiologist = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="reviews"
    )
    decision = models.CharField(max_length=8, choices=ReviewDecision.choices)
    final_label = models.CharField(max_length=8, choices=Label.choices)
    # What the model said when the radiologist ruled, so agreement can be measured later.
    model_label = models.CharField(max_length=16, choices=ResultLabel.choices)
    model_version = models.CharField(max_length=64)
    comment = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(
                condition=~Q(decision="override") | ~Q(comment=""),
                name="review_override_needs_comment",
            ),
            models.CheckConstraint(
                condition=~Q(decision="confirm") | Q(final_label=models.F("model_label")),
                name="review_confirm_keeps_model_label",
            ),
            # A review always decides: abnormal or normal, whatever the model said.
            models.CheckConstraint(
                condition=Q(final_label__in=Label.values), name="review_final_label_binary"
            ),
            # An indeterminate result is ruled on, never confirmed or overridden; a call is never "ruled".
            models.CheckConstraint(
                condition=Q(decision="rule", model_label=ResultLabel.INDETERMINATE)
                | (~Q(decision="rule") & ~Q(model_label=ResultLabel.INDETERMINATE)),
                name="review_rule_iff_indeterminate",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.get_decision_display()} {self.final_label} on {self.study}"


class ModelVersion(models.Model):
    """One model version (the sha256 of a weight file) the app has run or installed, with its card.

    Predictions and results keep the version as text (they predate this table); this row adds what
    the version is and how it was validated. `card` is the validation card (inference.model_card,
    schema 1) or null: "not validated here".
    """

    version = models.CharField(max_length=64, unique=True)
    model_name = models.CharField(max_length=100)
    body_part = models.CharField(max_length=16, choices=BodyPart.choices)
    demo = models.BooleanField(default=False)
    threshold = models.FloatField()
    card = models.JSONField(null=True, blank=True)
    first_seen = models.DateTimeField(auto_now_add=True)
    card_updated = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["body_part", "-first_seen", "id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(version__regex=r"^[0-9a-f]{64}$"), name="model_version_is_sha256"
            ),
            models.CheckConstraint(condition=~Q(model_name=""), name="model_version_name_not_blank"),
            models.CheckConstraint(
                condition=Q(body_part__in=BodyPart.values), name="model_version_body_part_valid"
            ),
            models.CheckConstraint(
                condition=Q(threshold__gte=0) & Q(threshold__lte=1), name="model_version_threshold_range"
            ),
            models.CheckConstraint(
                condition=Q(card__isnull=True) | Q(card_updated__isnull=False),
                name="model_version_card_has_date",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.model_name} {self.version[:12]}"


class AuditEvent(models.Model):
    """Append-only: no code path updates or deletes rows; PostgreSQL enforces it by trigger."""

    actor = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, related_name="+")
    # Kept as text as well, so the trail reads the same if the account is renamed.
    actor_username = models.CharField(max_length=150, blank=True)
    action = models.CharField(max_length=64, db_index=True)
    object_type = models.CharField(max_length=64)
    object_id = models.CharField(max_length=64)
    study = models.ForeignKey(
        Study, on_delete=models.PROTECT, null=True, blank=True, related_name="audit_events"
    )
    ip_address = models.GenericIPAddressField(null=True, blank=True)
    details = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.actor_username or 'system'} {self.action}"


class InferenceWorker(models.Model):
    """One run of a Celery worker (its main process), alive while it keeps beating.

    The worker writes `beat_at` every MSKDETECT_WORKER_HEARTBEAT_SECONDS; one that has not beaten
    for MSKDETECT_WORKER_DEAD_AFTER_SECONDS, or that has `stopped_at`, is gone, and the images it
    claimed are sent again. Bookkeeping, not clinical data: no audit events.
    """

    worker_id = models.CharField(max_length=64, unique=True)
    nodename = models.CharField(max_length=255)  # celery@host
    host = models.CharField(max_length=255)
    pid = models.PositiveIntegerField()
    started_at = models.DateTimeField()
    beat_at = models.DateTimeField(db_index=True)
    stopped_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-beat_at"]

    def __str__(self) -> str:
        return f"{self.nodename} pid {self.pid}"


class DicomReceiverRun(models.Model):
    """One run of the DICOM receiver (`manage.py dicom_receiver`), alive while it keeps beating.

    The receiver writes `beat_at` and its counters every MSKDETECT_DICOM_HEARTBEAT_SECONDS;
    /healthz reports it alive, stopped or silent. Bookkeeping, not clinical data: what is received
    is audited by studies.services.dicom_ingest.
    """

    run_id = models.CharField(max_length=64, unique=True)
    ae_title = models.CharField(max_length=16)
    port = models.PositiveIntegerField()
    host = models.CharField(max_length=255)
    pid = models.PositiveIntegerField()
    started_at = models.DateTimeField()
    beat_at = models.DateTimeField(db_index=True)
    stopped_at = models.DateTimeField(null=True, blank=True)
    associations = models.PositiveIntegerField(default=0)
    associations_refused = models.PositiveIntegerField(default=0)
    instances_stored = models.PositiveIntegerField(default=0)
    instances_duplicate = models.PositiveIntegerField(default=0)
    instances_refused = models.PositiveIntegerField(default=0)
    last_received_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-beat_at"]

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port} pid {self.pid}"


# --- Results sent back to the PACS (issue 13, part 2) -------------------------------------------
class DicomExportTrigger(models.TextChoices):
    RESULT = "result", "Model result"
    REVIEW = "review", "Radiologist review"


class DicomExport(models.Model):
    """What one trigger sends to the PACS: a Structured Report and, for a model result, a heat-map
    secondary capture per source image whose prediction has none yet.

    Planned in the transaction that records the result or the review (the facts are kept here, as
    they were then); built once by the send task, which stores the DICOM files and records their
    UIDs in `instances`, so every destination and every retry receives the same instances.
    """

    Trigger = DicomExportTrigger

    study = models.ForeignKey(Study, on_delete=models.PROTECT, related_name="dicom_exports")
    trigger = models.CharField(max_length=8, choices=DicomExportTrigger.choices)
    review = models.ForeignKey(Review, on_delete=models.PROTECT, null=True, blank=True, related_name="+")
    # The study result when the trigger fired: label, probability, threshold, band, model, demo.
    result = models.JSONField()
    demo = models.BooleanField()
    # The DICOM radiographs the SR references, and the predictions that get a secondary capture.
    images = models.JSONField(default=list)
    predictions = models.JSONField(default=list, blank=True)
    # Once built: [{"kind": "sr"|"sc", "sop_class_uid", "sop_instance_uid", "series_instance_uid",
    # "study_instance_uid", "file", "image"}]; `build_error` says why it could not be built.
    instances = models.JSONField(default=list, blank=True)
    built_at = models.DateTimeField(null=True, blank=True)
    build_error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["study_id", "id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(trigger__in=DicomExportTrigger.values), name="dicom_export_trigger_valid"
            ),
            models.CheckConstraint(
                condition=Q(trigger=DicomExportTrigger.RESULT, review__isnull=True)
                | Q(trigger=DicomExportTrigger.REVIEW, review__isnull=False),
                name="dicom_export_review_iff_review_trigger",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.get_trigger_display()} of {self.study} for the PACS"

    @property
    def summary(self) -> str:
        """What it holds, in words: "SR + 2 heat-map images"."""
        captures = len(self.predictions)
        if not captures:
            return "SR"
        return f"SR + {captures} heat-map image" + ("s" if captures != 1 else "")


class DicomSendStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    SENT = "sent", "Sent"
    FAILED = "failed", "Failed"
    NOT_SENT_DEMO = "not_sent_demo", "Not sent: demo model"


class DicomSendProtocol(models.TextChoices):
    CSTORE = "cstore", "DICOM C-STORE"
    STOWRS = "stowrs", "DICOMweb STOW-RS"


class DicomSend(models.Model):
    """One export to one destination: its state, attempts and what the destination acknowledged.

    `pending` is retried with backoff (`next_attempt_at`; while an attempt runs it is that attempt's
    lease) until it is `sent`, or `failed` once the destination has refused it or the retries have
    run out; staff may send a failed one again. `acknowledged` lists the SOP Instance UIDs the
    destination confirmed: a re-delivered task never sends those again.
    """

    Status = DicomSendStatus
    Protocol = DicomSendProtocol

    export = models.ForeignKey(DicomExport, on_delete=models.PROTECT, related_name="sends")
    study = models.ForeignKey(Study, on_delete=models.PROTECT, related_name="dicom_sends")
    destination = models.CharField(max_length=300)  # "C-STORE PACS@10.0.0.5:104", "STOW-RS https://…"
    protocol = models.CharField(max_length=8, choices=DicomSendProtocol.choices)
    status = models.CharField(max_length=16, choices=DicomSendStatus.choices, default=DicomSendStatus.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    acknowledged = models.JSONField(default=list, blank=True)
    # The retries give up this long after it became pending (settings.MSKDETECT_PACS_GIVE_UP_AFTER_SECONDS).
    pending_since = models.DateTimeField()
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["study_id", "-created_at", "-id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(status__in=DicomSendStatus.values), name="dicom_send_status_valid"
            ),
            models.CheckConstraint(
                condition=Q(protocol__in=DicomSendProtocol.values), name="dicom_send_protocol_valid"
            ),
            models.CheckConstraint(
                condition=~Q(status=DicomSendStatus.SENT) | Q(sent_at__isnull=False),
                name="dicom_send_sent_has_time",
            ),
            models.UniqueConstraint(fields=["export", "destination"], name="dicom_send_once_per_destination"),
        ]
        indexes = [
            models.Index(fields=["status", "next_attempt_at"], name="dicom_send_due"),
            models.Index(fields=["destination", "status"], name="dicom_send_destination"),
        ]

    def __str__(self) -> str:
        return f"{self.export} to {self.destination}: {self.get_status_display()}"
