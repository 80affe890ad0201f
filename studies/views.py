"""HTML pages for clinicians: thin views that read through selectors and write through services."""

import functools
import time
from collections.abc import Callable

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse, JsonResponse, QueryDict
from django.shortcuts import redirect, render
from django.urls import reverse, reverse_lazy
from django.utils import timezone
from django.utils.cache import patch_vary_headers
from django.utils.functional import cached_property
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from studies import (
    selectors,
    selectors_models,
    selectors_pacs,
    selectors_reading,
    selectors_ui,
    selectors_workers,
    selectors_worklist,
    services,
)
from studies.audit import request_ip
from studies.audit_sentences import describe as describe_events
from studies.dashboard import (
    DRIFT_MIN_STUDIES,
    DRIFT_WINDOW_DAYS,
    DRIFT_Z,
    MIN_TO_JUDGE,
    chart_data,
    summarize,
    tier_totals,
)
from studies.errors import ApplicationError, UploadRejected
from studies.forms import (
    LoginForm,
    MismatchConfirmForm,
    ReviewForm,
    StaffPasswordChangeForm,
    StudyNewForm,
    WorklistFilterForm,
)
from studies.model_cards import model_card_data
from studies.models import BodyPart, ImageStatus, Study, StudyStatus
from studies.permissions import is_admin, is_radiologist, is_staff_member
from studies.services.ui import study_register
from studies.views_reading import next_study_redirect, reading_context, reading_query, with_query

WORKLIST_PAGE_SIZE = 25
WORKLIST_FINGERPRINT_HEADER = "X-Worklist-Fingerprint"
ACTIVE_STUDY_STATUSES = {StudyStatus.QUEUED, StudyStatus.PROCESSING}
ACTIVE_IMAGE_STATUSES = {ImageStatus.QUEUED, ImageStatus.PROCESSING}
RERUNNABLE_IMAGE_STATUSES = {ImageStatus.FAILED, ImageStatus.UNSUPPORTED}

View = Callable[..., HttpResponse]


def staff_required(view: View) -> View:
    """Logged in (else to the login page) and in a clinical role (else 403)."""

    @functools.wraps(view)
    def wrapper(request: HttpRequest, *args, **kwargs) -> HttpResponse:
        if not is_staff_member(request.user):
            raise PermissionDenied("Your account has no clinical role.")
        return view(request, *args, **kwargs)

    return login_required(wrapper)


def admin_required(view: View) -> View:
    """Logged in (else to the login page) and an administrator (else 403)."""

    @functools.wraps(view)
    def wrapper(request: HttpRequest, *args, **kwargs) -> HttpResponse:
        if not is_admin(request.user):
            raise PermissionDenied("Only administrators may see the model registry.")
        return view(request, *args, **kwargs)

    return login_required(wrapper)


def _wants_json(request: HttpRequest) -> bool:
    return "application/json" in request.headers.get("Accept", "")


def _is_htmx(request: HttpRequest) -> bool:
    return request.headers.get("HX-Request") == "true"


# --- authentication ----------------------------------------------------------------------------
class LoginView(auth_views.LoginView):
    form_class = LoginForm
    redirect_authenticated_user = True
    extra_context = {"session_idle_minutes": settings.SESSION_COOKIE_AGE // 60}


class LogoutView(auth_views.LogoutView):
    """POST only (Django's default); says so after the redirect to the login page."""

    def post(self, request: HttpRequest, *args, **kwargs) -> HttpResponse:
        response = super().post(request, *args, **kwargs)
        messages.info(request, "You have been logged out.")
        return response


class PasswordChangeView(auth_views.PasswordChangeView):
    form_class = StaffPasswordChangeForm
    success_url = reverse_lazy("password_change_done")


# --- worklist ----------------------------------------------------------------------------------
class _CountedPaginator(Paginator):
    """A paginator told the total, which the worklist's change check has already counted."""

    def __init__(self, object_list, per_page: int, *, count: int) -> None:
        super().__init__(object_list, per_page)
        self._known_count = count

    @cached_property
    def count(self) -> int:
        return self._known_count


def _current_minute() -> int:
    # Part of the worklist's fingerprint: the "Received … ago" column is rewritten once a minute.
    return int(time.time() // 60)


@require_GET
@staff_required
def worklist(request: HttpRequest) -> HttpResponse:
    """The home page: studies in priority order, filtered, paginated, and live.

    The table polls every few seconds with the fingerprint of what it shows; while nothing changed
    the answer is an empty 204 (htmx swaps nothing) after one aggregate query.
    """
    form = WorklistFilterForm(request.GET or None)
    studies = selectors_ui.worklist_page(user=request.user, **form.selector_filters())
    state = selectors_worklist.worklist_state(studies=studies)
    fingerprint = state.fingerprint(request.GET.get("page", ""), _current_minute())
    is_poll = _is_htmx(request) and request.headers.get("HX-Target") == "worklist-table"
    if is_poll and request.headers.get(WORKLIST_FINGERPRINT_HEADER) == fingerprint:
        response = HttpResponse(status=204)
    else:
        page = _CountedPaginator(studies, WORKLIST_PAGE_SIZE, count=state.count).get_page(
            request.GET.get("page")
        )
        query = request.GET.copy()
        query.pop("page", None)
        context = {
            "form": form,
            "page": page,
            "rows": list(page.object_list),
            "query": query.urlencode(),
            "reading_next_url": with_query(reverse("reading_next"), reading_query(request.GET)),
            "poll_url": request.get_full_path(),
            "fingerprint": fingerprint,
            "can_read": is_radiologist(request.user),
        }
        template = "studies/partials/worklist_table.html" if is_poll else "studies/worklist.html"
        response = render(request, template, context)
    response[WORKLIST_FINGERPRINT_HEADER] = fingerprint
    # The same URL answers the page and the table: caches must tell them apart.
    patch_vary_headers(response, ["HX-Request", "HX-Target"])
    return response


# --- new study ---------------------------------------------------------------------------------
@require_http_methods(["GET", "POST"])
@staff_required
def study_new(request: HttpRequest) -> HttpResponse:
    """Register a study (and its patient when new); the page's script then uploads each file."""
    form = StudyNewForm(request.POST if request.method == "POST" else None)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            study = study_register(
                patient_id=data["patient"],
                new_patient={key: data[key] for key in ("mrn", "name", "birth_date", "sex")},
                accession_number=data["accession_number"],
                body_part=data["body_part"],
                study_date=data["study_date"],
                expected_images=data.get("expected_images"),
                actor=request.user,
                ip=request_ip(request),
            )
        except ApplicationError as error:
            form.add_application_error(error)
        else:
            if _wants_json(request):
                return JsonResponse(
                    {
                        "study_id": study.pk,
                        "detail_url": reverse("study_detail", args=[study.pk]),
                        "upload_url": reverse("study_upload", args=[study.pk]),
                    },
                    status=201,
                )
            messages.success(request, f"Study {study.accession_number} registered.")
            files = request.FILES.getlist("file")
            if files:
                _add_images(request, study=study, files=files)
            return redirect("study_detail", pk=study.pk)
    if request.method == "POST" and _wants_json(request):
        return JsonResponse({"errors": form.errors.get_json_data()}, status=400)
    return render(request, "studies/study_new.html", {"form": form}, status=400 if form.errors else 200)


@require_GET
@staff_required
def patient_search(request: HttpRequest) -> HttpResponse:
    """The patient picker's results (an htmx partial)."""
    term = request.GET.get("q", "").strip()
    patients = list(selectors.patient_list(user=request.user, search=term)[:10]) if term else []
    return render(request, "studies/partials/patient_results.html", {"patients": patients, "term": term})


@require_POST
@staff_required
def study_inspect(request: HttpRequest) -> JsonResponse:
    """Decode one file without storing it and return what it tells about the study (DICOM tags).

    Nothing is stored and nothing is audited: the file is read in memory and forgotten. A file
    the upload would refuse (not a radiograph, a CT, a colour photograph) is refused here already.
    """
    from inference.decoding import DecodeError
    from inference.dicom_body_parts import mura_type_of
    from inference.tasks import screen_upload

    upload = request.FILES.get("file")
    if upload is None:
        return JsonResponse({"error": "No file was submitted."}, status=400)
    if upload.size > settings.MSKDETECT_MAX_UPLOAD_BYTES:
        limit = settings.MSKDETECT_MAX_UPLOAD_BYTES // (1024 * 1024)
        return JsonResponse({"error": f"The file is larger than the {limit} MB limit."}, status=400)
    try:
        decoded = screen_upload(upload.read())
    except DecodeError as error:
        return JsonResponse({"error": getattr(error, "message", "") or str(error)}, status=400)
    metadata = dict(decoded.metadata)
    prefill = {
        "mrn": metadata.get("patient_id", ""),
        "accession_number": metadata.get("accession_number", ""),
        "body_part": mura_type_of(metadata.get("body_part_examined")) or "",
        "study_date": metadata.get("study_date", ""),
    }
    patient = selectors_ui.patient_by_mrn(user=request.user, mrn=prefill["mrn"])
    return JsonResponse(
        {
            "format": decoded.format,
            "width": decoded.width,
            "height": decoded.height,
            "metadata": metadata,
            "prefill": {key: value for key, value in prefill.items() if value},
            "patient": {"id": patient.pk, "mrn": patient.mrn, "name": patient.name} if patient else None,
        }
    )


def _confirmation(request: HttpRequest) -> dict:
    """The upload's mismatch confirmation (`confirm_mismatch`, `mismatch_reason`) from the POST."""
    form = MismatchConfirmForm(request.POST)
    data = form.cleaned_data if form.is_valid() else {}
    return {
        "confirm_mismatch": bool(data.get("confirm_mismatch")),
        "mismatch_reason": data.get("mismatch_reason") or "",
    }


def _add_images(request: HttpRequest, *, study: Study, files: list) -> list | None:
    """Store the files through the upload service; each bad file becomes its own error message."""
    try:
        images = services.radiographs_add(
            study=study, files=files, actor=request.user, ip=request_ip(request), **_confirmation(request)
        )
    except UploadRejected as error:
        for name, reason in error.reasons.items():
            messages.error(request, f"{name}: {reason}")
        messages.error(request, "No image of that upload was stored; add the good files again.")
        return None
    except ApplicationError as error:
        messages.error(request, error.message)
        return None
    messages.success(request, f"{len(images)} image(s) queued for analysis.")
    confirmed = sum(1 for image in images if image.mismatches)
    if confirmed:
        messages.warning(request, f"{confirmed} image(s) stored with a confirmed header mismatch.")
    return images


@require_POST
@staff_required
def study_upload(request: HttpRequest, pk: int) -> HttpResponse:
    """Add images to a study: JSON for the page's per-file uploader, a redirect for a plain form."""
    study = selectors.study_detail(user=request.user, study_id=pk)
    files = request.FILES.getlist("file")
    if not _wants_json(request):
        _add_images(request, study=study, files=files)
        return redirect("study_detail", pk=study.pk)
    try:
        images = services.radiographs_add(
            study=study, files=files, actor=request.user, ip=request_ip(request), **_confirmation(request)
        )
    except UploadRejected as error:
        return JsonResponse(
            {"file": list(error.reasons.values()), "reasons": error.reasons, "mismatches": error.mismatches},
            status=400,
        )
    except ApplicationError as error:
        return JsonResponse({"file": [error.message], **error.extra}, status=error.status_code)
    return JsonResponse(
        {
            "images": [
                {
                    "id": image.pk,
                    "status": image.status,
                    "name": image.original_name,
                    "mismatches": image.mismatches,
                }
                for image in images
            ]
        },
        status=201,
    )


@require_POST
@staff_required
def study_mark_complete(request: HttpRequest, pk: int) -> HttpResponse:
    """Staff say no more files will come: the study stops showing which are missing."""
    study = selectors.study_get(user=request.user, study_id=pk)
    try:
        services.study_mark_complete(study=study, actor=request.user, ip=request_ip(request))
    except ApplicationError as error:
        messages.error(request, error.message)
    else:
        messages.success(request, "The study is marked complete with the images received.")
    return redirect("study_detail", pk=study.pk)


# --- study page --------------------------------------------------------------------------------
def _study_context(request: HttpRequest, study: Study, *, review_form: ReviewForm | None = None) -> dict:
    images = [(image, selectors.latest_prediction(image)) for image in study.images.all()]
    # A missing one-to-one result raises an AttributeError subclass, which getattr turns into None.
    result = getattr(study, "result", None)
    include_views = request.GET.get("audit") == "all"
    can_review = is_radiologist(request.user) and result is not None
    # A job that has not moved for longer than expected says so, with a "Run again".
    stall = selectors_workers.study_stall(study=study)
    return {
        "study": study,
        "patient": study.patient,
        "images": images,
        "result": result,
        "result_card": model_card_data(selectors.result_card(study)) if result is not None else None,
        "reviews": list(study.reviews.all()),
        "is_active": study.status in ACTIVE_STUDY_STATUSES
        or any(image.status in ACTIVE_IMAGE_STATUSES for image, _ in images),
        "can_requeue": stall is not None
        or any(image.status in RERUNNABLE_IMAGE_STATUSES for image, _ in images),
        "stall": stall,
        "failed_images": [image for image, _ in images if image.status == ImageStatus.FAILED],
        "files_received": selectors.files_received(study),
        "mismatch_images": [image for image, _ in images if image.mismatches],
        "mismatch_form": MismatchConfirmForm(),
        "is_radiologist": is_radiologist(request.user),
        "can_review": can_review,
        "review_form": review_form or (ReviewForm() if can_review else None),
        "audit_events": describe_events(
            selectors_ui.study_audit_trail(user=request.user, study_id=study.pk, include_views=include_views)[
                :200
            ],
            on_study_page=True,
        ),
        "audit_include_views": include_views,
        "audit_view_count": selectors_ui.study_view_count(user=request.user, study_id=study.pk),
        "pacs": selectors_pacs.study_pacs_panel(study=study),
        **reading_context(request, study),
    }


@require_GET
@staff_required
def study_detail(request: HttpRequest, pk: int) -> HttpResponse:
    """Images, result, review panel and audit trail; opening it is audited."""
    study = selectors.study_detail(user=request.user, study_id=pk)
    services.study_view_record(study=study, actor=request.user, ip=request_ip(request))
    return render(request, "studies/study_detail.html", _study_context(request, study))


@require_GET
@staff_required
def study_live(request: HttpRequest, pk: int) -> HttpResponse:
    """The live part of the study page, polled while jobs run (the page open was already audited)."""
    study = selectors.study_detail(user=request.user, study_id=pk)
    context = _study_context(request, study)
    # The review panel and the audit trail change when the result arrives: swapped out of band.
    context["oob"] = True
    return render(request, "studies/partials/study_live.html", context)


@require_POST
@login_required
def study_review(request: HttpRequest, pk: int) -> HttpResponse:
    """A radiologist confirms, overrides or rules on the result, then stays or opens the next study."""
    if not is_radiologist(request.user):
        raise PermissionDenied("Only radiologists may review studies.")
    study = selectors.study_detail(user=request.user, study_id=pk)
    # Where the study stood before the review moves it down: the next study is the one below it.
    position = selectors_reading.worklist_position(study)
    form = ReviewForm(request.POST)
    if form.is_valid():
        try:
            services.review_create(
                study=study,
                radiologist=request.user,
                decision=form.cleaned_data["decision"],
                final_label=form.cleaned_data["final_label"] or None,
                comment=form.cleaned_data["comment"],
                ip=request_ip(request),
            )
        except ApplicationError as error:
            form.add_application_error(error)
        else:
            if request.POST.get("then") == "next":
                # "Record and open next" (and the reading keys): straight on to the next unreviewed study.
                messages.success(request, f"Your review of {study.accession_number} has been recorded.")
                query = reading_query(QueryDict(request.POST.get("reading", "")))
                return next_study_redirect(request, query=query, after=position)
            messages.success(request, "Your review has been recorded.")
            return redirect(reverse("study_detail", args=[study.pk]) + "#review")
    context = _study_context(request, study, review_form=form)
    return render(request, "studies/study_detail.html", context, status=400)


@require_POST
@staff_required
def study_requeue(request: HttpRequest, pk: int) -> HttpResponse:
    """ "Run again": send the study's failed or unsupported images back to the worker."""
    study = selectors.study_detail(user=request.user, study_id=pk)
    try:
        images = services.radiographs_requeue(study=study, actor=request.user, ip=request_ip(request))
    except ApplicationError as error:
        messages.error(request, error.message)
    else:
        messages.success(request, f"{len(images)} image(s) sent for analysis again.")
    return redirect("study_detail", pk=study.pk)


# --- dashboard ---------------------------------------------------------------------------------
@require_GET
@staff_required
def dashboard(request: HttpRequest) -> HttpResponse:
    """Per body part and model version: volume, flagged rate, result tiers, agreement, drift."""
    results, reviews = selectors_ui.dashboard_records(user=request.user)
    summaries = summarize(results=results, reviews=reviews, now=timezone.now())
    body_part_names = dict(BodyPart.choices)
    context = {
        "summaries": summaries,
        "tier_totals": tier_totals(results=results, reviews=reviews),
        "chart": chart_data(summaries=summaries, body_part_names=body_part_names),
        "any_demo": any(s.demo for s in summaries),
        "min_to_judge": MIN_TO_JUDGE,
        "body_part_names": body_part_names,
        "warnings": [s for s in summaries if s.drift and s.drift.warning],
        "drift_window_days": DRIFT_WINDOW_DAYS,
        "drift_z": DRIFT_Z,
        "drift_min_studies": DRIFT_MIN_STUDIES,
    }
    return render(request, "studies/dashboard.html", context)


# --- model registry ----------------------------------------------------------------------------
@require_GET
@admin_required
def model_registry(request: HttpRequest) -> HttpResponse:
    """Every installed model with its version, demo flag and validation card; retired versions below."""
    page = selectors_models.model_registry(user=request.user)
    return render(request, "studies/model_registry.html", {"registry": page})
