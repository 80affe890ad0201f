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
    ABNORMAL = "abnormal", "Abnormal"
    NORMAL = "normal", "Normal"


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
    REVIEWED = "reviewed", "Reviewed"


class ImageStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    PROCESSING = "processing", "Processing"
    DONE = "done", "Done"
    FAILED = "failed", "Failed"
    UNSUPPORTED = "unsupported", "Unsupported"


class ImageFormat(models.TextChoices):
    PNG = "png", "PNG"
    JPEG = "jpeg", "JPEG"
    DICOM = "dcm", "DICOM"


class ReviewDecision(models.TextChoices):
    CONFIRM = "confirm", "Confirm"
    OVERRIDE = "override", "Override"


class Patient(models.Model):
    mrn = models.CharField("MRN", max_length=64, unique=True)
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
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.mrn})"


class Study(models.Model):
    Status = StudyStatus

    patient = models.ForeignKey(Patient, on_delete=models.PROTECT, related_name="studies")
    accession_number = models.CharField(max_length=64, unique=True)
    body_part = models.CharField(max_length=16, choices=BodyPart.choices)
    study_date = models.DateField(null=True, blank=True)
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
    worklist_flagged = models.BooleanField(default=False, editable=False)
    worklist_probability = models.FloatField(default=-1.0, editable=False)

    class Meta:
        ordering = ["-created_at"]
        verbose_name_plural = "studies"
        constraints = [
            models.CheckConstraint(condition=Q(body_part__in=BodyPart.values), name="study_body_part_valid"),
            models.CheckConstraint(condition=Q(status__in=StudyStatus.values), name="study_status_valid"),
            models.CheckConstraint(condition=~Q(accession_number=""), name="study_accession_not_blank"),
        ]
        indexes = [
            models.Index(fields=["status", "created_at"]),
            models.Index(
                F("worklist_flagged").desc(),
                F("worklist_probability").desc(),
                "created_at",
                "id",
                name="study_worklist_order",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.accession_number} {self.get_body_part_display()}"


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

    class Meta:
        ordering = ["study_id", "id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(status__in=ImageStatus.values), name="radiograph_status_valid"
            ),
            models.CheckConstraint(
                condition=Q(format__in=ImageFormat.values), name="radiograph_format_valid"
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
    label = models.CharField(max_length=8, choices=Label.choices)
    threshold = models.FloatField()
    demo = models.BooleanField(default=False)
    preprocessing = models.CharField(max_length=50)
    preprocess_ms = models.FloatField(default=0)
    inference_ms = models.FloatField(default=0)
    heatmap = models.FileField(upload_to=heatmap_upload_to, max_length=255, blank=True)
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
        ]

    def __str__(self) -> str:
        return f"{self.label} {self.abnormal_probability:.3f} ({self.model_name})"


class StudyResult(models.Model):
    """The study-level result: mean of the images' P(abnormal) (MURA's rule)."""

    study = models.OneToOneField(Study, on_delete=models.PROTECT, related_name="result")
    abnormal_probability = models.FloatField()
    label = models.CharField(max_length=8, choices=Label.choices)
    threshold = models.FloatField()
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
    model_label = models.CharField(max_length=8, choices=Label.choices)
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
