"""API output and input shapes (DESIGN.md's REST table). Output serializers only read."""

from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import PolymorphicProxySerializer, extend_schema_field
from rest_framework import serializers

from studies.model_cards import NOT_VALIDATED, model_card_data
from studies.models import (
    AuditEvent,
    BodyPart,
    DicomExportTrigger,
    DicomSend,
    Label,
    Patient,
    Prediction,
    Radiograph,
    ResultLabel,
    Review,
    ReviewDecision,
    Sex,
    Study,
    StudyResult,
    StudyStatus,
)
from studies.selectors import files_received, latest_prediction, prediction_card, result_card
from studies.selectors_pacs import study_pacs_sends
from studies.services.studies import unknown_body_part_message

DEMO_NOTICE = "demo model — not for clinical use"


def _absolute(request, name: str, pk: int) -> str:
    url = reverse(f"api:{name}", kwargs={"pk": pk})
    return request.build_absolute_uri(url) if request is not None else url


# --- patients ---------------------------------------------------------------------------
class PatientInputSerializer(serializers.Serializer):
    mrn = serializers.CharField(max_length=64)
    mrn_issuer = serializers.CharField(
        max_length=64,
        required=False,
        allow_blank=True,
        default="",
        help_text="who assigned the MRN (DICOM IssuerOfPatientID); blank: this hospital. One MRN per issuer.",
    )
    name = serializers.CharField(max_length=200)
    birth_date = serializers.DateField(required=False, allow_null=True, default=None)
    sex = serializers.ChoiceField(choices=Sex.choices, required=False, default=Sex.UNKNOWN)


class PatientOutputSerializer(serializers.ModelSerializer):
    class Meta:
        model = Patient
        fields = ["id", "mrn", "mrn_issuer", "name", "birth_date", "sex", "created_at"]
        read_only_fields = fields


class PatientFilterSerializer(serializers.Serializer):
    search = serializers.CharField(required=False, allow_blank=True)


# --- validation cards -------------------------------------------------------------------
class CardFigureSerializer(serializers.Serializer):
    """One figure of a validation card with its 95 % confidence interval; null when undefined."""

    value = serializers.FloatField(allow_null=True)
    low = serializers.FloatField(allow_null=True)
    high = serializers.FloatField(allow_null=True)


class ValidatedModelCardSerializer(serializers.Serializer):
    """Schema only: the card of a validated model version (study-level figures at `threshold`)."""

    validated = serializers.BooleanField(help_text="true")
    set = serializers.CharField(help_text="the validation set, e.g. MURA-v1.1 valid")
    date = serializers.DateField()
    studies = serializers.IntegerField()
    threshold = serializers.FloatField(help_text="the threshold the figures were measured at")
    kappa = CardFigureSerializer(help_text="Cohen's kappa")
    auroc = CardFigureSerializer()
    sensitivity = CardFigureSerializer()
    specificity = CardFigureSerializer()
    ci = serializers.CharField(help_text="how the 95 % confidence intervals were computed")


class UnvalidatedModelCardSerializer(serializers.Serializer):
    """Schema only: the model version has no validation card."""

    validated = serializers.BooleanField(help_text="false")
    notice = serializers.ChoiceField(choices=[NOT_VALIDATED])


def model_card_schema() -> PolymorphicProxySerializer:
    """`model_card` in the OpenAPI schema: one of the two card shapes (a new field each use)."""
    return PolymorphicProxySerializer(
        component_name="ModelCard",
        serializers=[ValidatedModelCardSerializer, UnvalidatedModelCardSerializer],
        resource_type_field_name=None,
    )


# --- predictions, results, reviews ------------------------------------------------------
class IndeterminateBandSerializer(serializers.Serializer):
    """The model's indeterminate band: `label` is "indeterminate" for low <= P(abnormal) < high."""

    low = serializers.FloatField()
    high = serializers.FloatField()


def band_data(row: Prediction | StudyResult) -> dict | None:
    """`{"low", "high"}` of the band a prediction or result was made with; None: the model had none."""
    if row.indeterminate_low is None or row.indeterminate_high is None:
        return None
    return {"low": row.indeterminate_low, "high": row.indeterminate_high}


class PredictionOutputSerializer(serializers.ModelSerializer):
    label = serializers.ChoiceField(choices=ResultLabel.choices, read_only=True)
    indeterminate = serializers.SerializerMethodField()
    notice = serializers.SerializerMethodField()
    model_card = serializers.SerializerMethodField()
    out_of_distribution = serializers.SerializerMethodField(
        help_text="true: the OOD score is above the threshold, the image waits for a human read and is "
        "left out of the study's result; null: no score (see ood_note)"
    )

    class Meta:
        model = Prediction
        fields = [
            "abnormal_probability",
            "label",
            "model_name",
            "model_version",
            "demo",
            "finished_at",
            "threshold",
            "indeterminate",
            "notice",
            "model_card",
            "heatmap_note",
            "ood_score",
            "ood_threshold",
            "out_of_distribution",
            "ood_note",
        ]
        read_only_fields = fields

    def get_out_of_distribution(self, prediction: Prediction) -> bool | None:
        if prediction.ood_score is None or prediction.ood_threshold is None:
            return None
        return prediction.ood_score > prediction.ood_threshold

    @extend_schema_field(IndeterminateBandSerializer(allow_null=True))
    def get_indeterminate(self, prediction: Prediction) -> dict | None:
        return band_data(prediction)

    def get_notice(self, prediction: Prediction) -> str | None:
        return DEMO_NOTICE if prediction.demo else None

    @extend_schema_field(model_card_schema())
    def get_model_card(self, prediction: Prediction) -> dict:
        return model_card_data(prediction_card(prediction))


class StudyResultOutputSerializer(serializers.Serializer):
    abnormal_probability = serializers.FloatField()
    label = serializers.ChoiceField(
        choices=ResultLabel.choices,
        help_text="abnormal at or above the band's high end (the threshold when the model has no band), "
        "normal below its low end, indeterminate in between: no call, a radiologist must read the study",
    )
    flagged = serializers.BooleanField(help_text="abnormal and not yet reviewed; never for indeterminate")
    threshold = serializers.FloatField()
    indeterminate = IndeterminateBandSerializer(
        allow_null=True, help_text="the model's indeterminate band; null when the model has none"
    )
    model_name = serializers.CharField()
    model_version = serializers.CharField()
    demo = serializers.BooleanField()
    notice = serializers.CharField(allow_null=True)
    model_card = model_card_schema()


def study_result_data(study: Study) -> dict | None:
    """The `result` object of a study, or None while there is none."""
    try:
        result = study.result
    except Study.result.RelatedObjectDoesNotExist:
        return None
    return {
        "abnormal_probability": result.abnormal_probability,
        "label": result.label,
        "flagged": bool(study.is_flagged),
        "threshold": result.threshold,
        "indeterminate": band_data(result),
        "model_name": result.model_name,
        "model_version": result.model_version,
        "demo": result.demo,
        "notice": DEMO_NOTICE if result.demo else None,
        "model_card": model_card_data(result_card(study)),
    }


class ReviewInputSerializer(serializers.Serializer):
    decision = serializers.ChoiceField(choices=ReviewDecision.choices)
    final_label = serializers.ChoiceField(
        choices=Label.choices, required=False, allow_null=True, default=None
    )
    comment = serializers.CharField(required=False, allow_blank=True, default="", max_length=5000)


class ReviewOutputSerializer(serializers.ModelSerializer):
    radiologist = serializers.CharField(source="radiologist.get_username", read_only=True)

    class Meta:
        model = Review
        fields = [
            "id",
            "study",
            "radiologist",
            "decision",
            "final_label",
            "model_label",
            "model_version",
            "comment",
            "created_at",
        ]
        read_only_fields = fields


# --- intake checks ----------------------------------------------------------------------
class MismatchSerializer(serializers.Serializer):
    """One DICOM header value that disagreed with the study (studies.intake.Mismatch)."""

    check = serializers.ChoiceField(
        choices=["patient_id", "patient_name", "body_part", "study_date", "study_instance_uid"]
    )
    label = serializers.CharField(help_text="the DICOM attribute, e.g. PatientID")
    file_value = serializers.CharField()
    study_value = serializers.CharField()
    message = serializers.CharField()


class ConfirmedMismatchSerializer(serializers.Serializer):
    """A header mismatch the uploader confirmed: shown as a warning wherever the image is."""

    image = serializers.IntegerField()
    mismatches = MismatchSerializer(many=True)
    reason = serializers.CharField()
    confirmed_by = serializers.CharField(allow_null=True)


def confirmed_mismatch_data(image: Radiograph) -> dict | None:
    """The image's confirmed header mismatch, or None when its header agreed with the study."""
    if not image.mismatches:
        return None
    confirmer = image.mismatch_confirmed_by
    return {
        "image": image.pk,
        "mismatches": image.mismatches,
        "reason": image.mismatch_reason,
        "confirmed_by": confirmer.get_username() if confirmer else None,
    }


class FilesReceivedSerializer(serializers.Serializer):
    """How many of the files chosen at registration arrived; `missing` until all did or staff said so."""

    received = serializers.IntegerField()
    expected = serializers.IntegerField(allow_null=True, help_text="null: the count was not given")
    missing = serializers.BooleanField()
    text = serializers.CharField(help_text='e.g. "2 of 4 files received"')
    marked_complete_at = serializers.DateTimeField(allow_null=True)


def files_received_data(study: Study) -> dict:
    """The `files_received` object of a study."""
    state = files_received(study)
    return {
        "received": state.received,
        "expected": state.expected,
        "missing": state.missing,
        "text": state.text,
        "marked_complete_at": study.marked_complete_at,
    }


# --- images -----------------------------------------------------------------------------
class ImageOutputSerializer(serializers.ModelSerializer):
    prediction = serializers.SerializerMethodField()
    confirmed_mismatch = serializers.SerializerMethodField()
    file_url = serializers.SerializerMethodField()
    preview_url = serializers.SerializerMethodField()
    heatmap_url = serializers.SerializerMethodField()

    class Meta:
        model = Radiograph
        fields = [
            "id",
            "study",
            "status",
            "error",
            "format",
            "width",
            "height",
            "created_at",
            "prediction",
            "file_url",
            "preview_url",
            "heatmap_url",
            "confirmed_mismatch",
        ]
        read_only_fields = fields

    @extend_schema_field(ConfirmedMismatchSerializer(allow_null=True))
    def get_confirmed_mismatch(self, image: Radiograph) -> dict | None:
        return confirmed_mismatch_data(image)

    @extend_schema_field(PredictionOutputSerializer(allow_null=True))
    def get_prediction(self, image: Radiograph) -> dict | None:
        prediction = latest_prediction(image)
        return PredictionOutputSerializer(prediction).data if prediction else None

    def get_file_url(self, image: Radiograph) -> str:
        return _absolute(self.context.get("request"), "image-file", image.pk)

    def get_preview_url(self, image: Radiograph) -> str:
        return _absolute(self.context.get("request"), "image-preview", image.pk)

    @extend_schema_field(OpenApiTypes.URI)
    def get_heatmap_url(self, image: Radiograph) -> str | None:
        prediction = latest_prediction(image)
        if prediction is None or not prediction.heatmap:
            return None
        return _absolute(self.context.get("request"), "image-heatmap", image.pk)


class UploadedImageSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    status = serializers.CharField()
    confirmed_mismatch = ConfirmedMismatchSerializer(allow_null=True)


class UploadOutputSerializer(serializers.Serializer):
    images = UploadedImageSerializer(many=True)


class UploadInputSerializer(serializers.Serializer):
    """Schema only: the view reads every `file` part from request.FILES."""

    file = serializers.ListField(child=serializers.FileField())
    confirm_mismatch = serializers.BooleanField(
        required=False,
        help_text="store DICOM files whose header disagrees with the study (patient, body part, "
        "examination) anyway; needs mismatch_reason",
    )
    mismatch_reason = serializers.CharField(required=False, max_length=2000)


class UploadConfirmInputSerializer(serializers.Serializer):
    """The non-file fields of an upload: the mismatch confirmation."""

    confirm_mismatch = serializers.BooleanField(required=False, default=False)
    mismatch_reason = serializers.CharField(required=False, allow_blank=True, default="", max_length=2000)


# --- studies ----------------------------------------------------------------------------
class StudyInputSerializer(serializers.Serializer):
    patient = serializers.IntegerField()
    accession_number = serializers.CharField(max_length=64)
    body_part = serializers.CharField(max_length=32)
    study_date = serializers.DateField(required=False, allow_null=True, default=None)
    expected_images = serializers.IntegerField(
        required=False,
        allow_null=True,
        default=None,
        min_value=1,
        max_value=10_000,
        help_text="how many files will be uploaded; the study shows which are missing until they arrive",
    )

    def validate_body_part(self, value: str) -> str:
        if value not in BodyPart.values:
            raise serializers.ValidationError(unknown_body_part_message(value))
        return value


class StudyFilterSerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=StudyStatus.choices, required=False)
    body_part = serializers.CharField(required=False)
    flagged = serializers.BooleanField(required=False, allow_null=True, default=None)
    reviewed = serializers.BooleanField(required=False, allow_null=True, default=None)
    patient = serializers.IntegerField(required=False, allow_null=True, default=None)

    def validate_body_part(self, value: str) -> str:
        if value not in BodyPart.values:
            raise serializers.ValidationError(unknown_body_part_message(value))
        return value


class StudyListOutputSerializer(serializers.ModelSerializer):
    body_part = serializers.ChoiceField(
        choices=BodyPart.choices,
        allow_blank=True,
        read_only=True,
        help_text="blank: received by DICOM with no recognised body part; the study waits "
        "(status needs_body_part) until staff set one (POST …/body-part/)",
    )
    study_instance_uid = serializers.CharField(
        read_only=True, help_text="DICOM StudyInstanceUID; blank when the study has no DICOM file"
    )
    patient_mrn = serializers.CharField(source="patient.mrn", read_only=True)
    patient_name = serializers.CharField(source="patient.name", read_only=True)
    result = serializers.SerializerMethodField()
    flagged = serializers.BooleanField(source="is_flagged", read_only=True)
    reviewed = serializers.BooleanField(source="is_reviewed", read_only=True)
    final_label = serializers.CharField(allow_null=True, read_only=True)
    files_received = serializers.SerializerMethodField()
    mismatch_images = serializers.IntegerField(
        read_only=True, help_text="how many images were stored with a confirmed header mismatch"
    )

    class Meta:
        model = Study
        fields = [
            "id",
            "patient",
            "patient_mrn",
            "patient_name",
            "accession_number",
            "body_part",
            "study_instance_uid",
            "study_date",
            "status",
            "error",
            "created_at",
            "result",
            "flagged",
            "reviewed",
            "final_label",
            "expected_images",
            "files_received",
            "mismatch_images",
        ]
        read_only_fields = fields

    @extend_schema_field(StudyResultOutputSerializer(allow_null=True))
    def get_result(self, study: Study) -> dict | None:
        return study_result_data(study)

    @extend_schema_field(FilesReceivedSerializer)
    def get_files_received(self, study: Study) -> dict:
        return files_received_data(study)


class PacsSendOutputSerializer(serializers.ModelSerializer):
    """One send of the study's results to one PACS destination."""

    trigger = serializers.ChoiceField(
        source="export.trigger",
        choices=DicomExportTrigger.choices,
        read_only=True,
        help_text="what was sent: the model's result, or a radiologist's review",
    )
    objects = serializers.CharField(
        source="export.summary", read_only=True, help_text='e.g. "SR + 2 heat-map images"'
    )
    sop_instance_uids = serializers.SerializerMethodField(
        help_text="the SOP Instance UIDs sent (empty until the DICOM files are built)"
    )

    class Meta:
        model = DicomSend
        fields = [
            "id",
            "trigger",
            "objects",
            "destination",
            "protocol",
            "status",
            "attempts",
            "last_error",
            "created_at",
            "last_attempt_at",
            "next_attempt_at",
            "sent_at",
            "sop_instance_uids",
        ]
        read_only_fields = fields

    def get_sop_instance_uids(self, send: DicomSend) -> list[str]:
        return [item["sop_instance_uid"] for item in send.export.instances]


class StudyDetailOutputSerializer(StudyListOutputSerializer):
    images = ImageOutputSerializer(many=True, read_only=True)
    reviews = ReviewOutputSerializer(many=True, read_only=True)
    confirmed_mismatches = serializers.SerializerMethodField()
    pacs_sends = serializers.SerializerMethodField(
        help_text="the results sent to the PACS, newest first (empty: nothing sent or no PACS configured)"
    )

    class Meta(StudyListOutputSerializer.Meta):
        fields = [
            *StudyListOutputSerializer.Meta.fields,
            "images",
            "reviews",
            "confirmed_mismatches",
            "pacs_sends",
        ]
        read_only_fields = fields

    @extend_schema_field(PacsSendOutputSerializer(many=True))
    def get_pacs_sends(self, study: Study) -> list[dict]:
        return PacsSendOutputSerializer(study_pacs_sends(study=study), many=True).data

    @extend_schema_field(ConfirmedMismatchSerializer(many=True))
    def get_confirmed_mismatches(self, study: Study) -> list[dict]:
        found = (confirmed_mismatch_data(image) for image in study.images.all())
        return [data for data in found if data is not None]


# --- audit ------------------------------------------------------------------------------
class AuditEventFilterSerializer(serializers.Serializer):
    study = serializers.IntegerField(required=False, allow_null=True, default=None)
    actor = serializers.CharField(required=False, allow_blank=True)
    action = serializers.CharField(required=False, allow_blank=True)


class AuditEventOutputSerializer(serializers.ModelSerializer):
    actor = serializers.CharField(source="actor_username", read_only=True)
    actor_id = serializers.IntegerField(read_only=True, allow_null=True)

    class Meta:
        model = AuditEvent
        fields = [
            "id",
            "created_at",
            "actor",
            "actor_id",
            "action",
            "object_type",
            "object_id",
            "study",
            "ip_address",
            "details",
        ]
        read_only_fields = fields


# --- auth -------------------------------------------------------------------------------
class TokenInputSerializer(serializers.Serializer):
    username = serializers.CharField()
    password = serializers.CharField(trim_whitespace=False, style={"input_type": "password"})


class TokenOutputSerializer(serializers.Serializer):
    token = serializers.CharField()
