"""Django admin: every clinical model is browsable, searchable and filterable, and read-only.

Clinical writes go through studies/services so that each one is validated and audited; an
admin form saving rows directly would bypass both. The audit log is read-only for everyone,
superusers included. Users and groups (roles) are managed in Django's own auth admin.
"""

from django.contrib import admin
from django.contrib.admin.views.main import ChangeList
from django.http import HttpRequest
from django.utils.safestring import SafeString

from studies.audit_sentences import describe as describe_events
from studies.models import (
    AuditEvent,
    DicomExport,
    DicomReceiverRun,
    DicomSend,
    InferenceWorker,
    ModelVersion,
    Patient,
    Prediction,
    Radiograph,
    Review,
    Study,
    StudyResult,
)


class ReadOnlyAdmin(admin.ModelAdmin):
    """View, search and filter only: no add, change or delete, even for a superuser."""

    def has_add_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False


@admin.register(Patient)
class PatientAdmin(ReadOnlyAdmin):
    list_display = ["mrn", "mrn_issuer", "name", "birth_date", "sex", "created_at", "created_by"]
    list_filter = ["sex", "created_at"]
    search_fields = ["mrn", "mrn_issuer", "name"]
    date_hierarchy = "created_at"


class RadiographInline(admin.TabularInline):
    model = Radiograph
    fields = ["id", "format", "width", "height", "status", "error", "created_at"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request: HttpRequest, obj=None) -> bool:
        return False


@admin.register(Study)
class StudyAdmin(ReadOnlyAdmin):
    list_display = ["accession_number", "patient", "body_part", "status", "study_date", "created_at"]
    list_filter = ["status", "body_part", "created_at"]
    search_fields = ["accession_number", "study_instance_uid", "patient__mrn", "patient__name"]
    list_select_related = ["patient"]
    date_hierarchy = "created_at"
    inlines = [RadiographInline]


@admin.register(Radiograph)
class RadiographAdmin(ReadOnlyAdmin):
    list_display = ["id", "study", "format", "width", "height", "status", "attempts", "created_at"]
    list_filter = ["status", "format", "study__body_part"]
    search_fields = ["study__accession_number", "sha256", "sop_instance_uid", "study__patient__mrn"]
    list_select_related = ["study"]
    exclude = ["file"]  # the file is served by the authenticated API view, never by a media URL


@admin.register(Prediction)
class PredictionAdmin(ReadOnlyAdmin):
    list_display = [
        "radiograph",
        "body_part",
        "label",
        "abnormal_probability",
        "model_name",
        "model_version",
        "demo",
    ]
    list_filter = ["label", "body_part", "demo", "model_name"]
    search_fields = ["model_version", "model_name", "radiograph__study__accession_number"]
    list_select_related = ["radiograph__study"]
    exclude = ["heatmap"]


@admin.register(StudyResult)
class StudyResultAdmin(ReadOnlyAdmin):
    list_display = [
        "study",
        "label",
        "abnormal_probability",
        "threshold",
        "model_name",
        "model_version",
        "demo",
    ]
    list_filter = ["label", "demo", "model_name"]
    search_fields = ["study__accession_number", "model_version"]
    list_select_related = ["study"]


@admin.register(ModelVersion)
class ModelVersionAdmin(ReadOnlyAdmin):
    """Recorded by the worker and install_model; the card is evidence, so it is not edited here."""

    list_display = [
        "model_name",
        "body_part",
        "version",
        "demo",
        "threshold",
        "validated",
        "first_seen",
        "card_updated",
    ]
    list_filter = ["body_part", "demo", "first_seen"]
    search_fields = ["version", "model_name"]
    date_hierarchy = "first_seen"

    @admin.display(boolean=True, description="validated")
    def validated(self, obj: ModelVersion) -> bool:
        return obj.card is not None


@admin.register(Review)
class ReviewAdmin(ReadOnlyAdmin):
    list_display = ["study", "radiologist", "decision", "final_label", "model_label", "created_at"]
    list_filter = ["decision", "final_label", "model_label", "created_at"]
    search_fields = ["study__accession_number", "radiologist__username", "comment"]
    list_select_related = ["study", "radiologist"]


class AuditEventChangeList(ChangeList):
    """The audit log's page: each event's sentence built for the whole page at once (four queries)."""

    def get_results(self, request: HttpRequest) -> None:
        super().get_results(request)
        self.result_list = describe_events(self.result_list)


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    list_display = [
        "created_at",
        "what_happened",
        "actor_username",
        "action",
        "study",
        "ip_address",
    ]
    list_filter = ["action", "object_type", "created_at"]
    search_fields = ["actor_username", "action", "object_id", "study__accession_number"]
    list_select_related = ["study"]
    date_hierarchy = "created_at"
    readonly_fields = ["what_happened"]

    class Media:
        css = {"all": ["css/admin_audit.css"]}

    def get_changelist(self, request: HttpRequest, **kwargs) -> type[ChangeList]:
        return AuditEventChangeList

    @admin.display(description="what happened")
    def what_happened(self, obj: AuditEvent) -> SafeString:
        """The event as a sentence, with links to its study and images (studies/audit_sentences.py)."""
        sentence = getattr(obj, "sentence", None) or describe_events([obj])[0].sentence
        return sentence.__html__()


# --- Operations: inference workers, DICOM receiver runs, results sent to the PACS -------------
@admin.register(InferenceWorker)
class InferenceWorkerAdmin(ReadOnlyAdmin):
    list_display = ["nodename", "pid", "started_at", "beat_at", "stopped_at"]
    list_filter = ["stopped_at"]
    search_fields = ["nodename", "worker_id"]


@admin.register(DicomReceiverRun)
class DicomReceiverRunAdmin(ReadOnlyAdmin):
    list_display = [
        "ae_title",
        "host",
        "port",
        "pid",
        "started_at",
        "beat_at",
        "stopped_at",
        "instances_stored",
        "instances_duplicate",
        "instances_refused",
        "associations_refused",
    ]
    search_fields = ["ae_title", "host", "run_id"]


class DicomSendInline(admin.TabularInline):
    model = DicomSend
    fields = ["destination", "protocol", "status", "attempts", "last_error", "sent_at", "next_attempt_at"]
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj=None) -> bool:
        return False


@admin.register(DicomExport)
class DicomExportAdmin(ReadOnlyAdmin):
    list_display = ["study", "trigger", "summary", "demo", "built_at", "build_error", "created_at"]
    list_filter = ["trigger", "demo", "created_at"]
    search_fields = ["study__accession_number", "study__patient__mrn"]
    list_select_related = ["study"]
    inlines = [DicomSendInline]


@admin.register(DicomSend)
class DicomSendAdmin(ReadOnlyAdmin):
    list_display = ["study", "destination", "protocol", "status", "attempts", "sent_at", "next_attempt_at"]
    list_filter = ["status", "protocol", "destination"]
    search_fields = ["study__accession_number", "destination", "last_error"]
    list_select_related = ["study"]
