"""REST API v1 (DESIGN.md): one thin view per operation — validate, call a service or selector, serialize.

Authentication: `Authorization: Token …` or the session. Token auth is listed first so an
anonymous request gets 401 with `WWW-Authenticate: Token` rather than a bare 403.
Login lockout (django-axes): after AXES_FAILURE_LIMIT failed attempts for a username from one
address, the token endpoint answers 429 `{"detail": …}` until the cool-off ends, even for the
right password.
"""

import gzip
import mimetypes
import re
from urllib.parse import quote

from django.conf import settings
from django.contrib.auth import authenticate
from django.core.files.storage import default_storage
from django.http import FileResponse, HttpResponse, HttpResponseNotModified
from django.urls import reverse
from django.utils.http import parse_etags
from drf_spectacular.utils import OpenApiParameter, extend_schema
from drf_spectacular.views import SpectacularAPIView
from rest_framework import serializers, status
from rest_framework.authentication import SessionAuthentication, TokenAuthentication
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.pagination import PageNumberPagination
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from studies import selectors, services
from studies.audit import request_ip
from studies.errors import ApplicationError, NotFoundError
from studies.models import ImageFormat, Radiograph
from studies.permissions import IsAdmin, IsRadiologist, IsStaffMember
from studies.pixels import ensure_pixels, pixels_etag
from studies.previews import ensure_preview
from studies.serializers import (
    AuditEventFilterSerializer,
    AuditEventOutputSerializer,
    ImageOutputSerializer,
    PatientFilterSerializer,
    PatientInputSerializer,
    PatientOutputSerializer,
    ReviewInputSerializer,
    ReviewOutputSerializer,
    StudyDetailOutputSerializer,
    StudyFilterSerializer,
    StudyInputSerializer,
    StudyListOutputSerializer,
    TokenInputSerializer,
    TokenOutputSerializer,
    UploadConfirmInputSerializer,
    UploadInputSerializer,
    UploadOutputSerializer,
    confirmed_mismatch_data,
)

LOCKED_OUT_MESSAGE = "Too many failed login attempts for this account; try again later."
BAD_CREDENTIALS_MESSAGE = "Unable to log in with the provided username and password."
CONTENT_TYPES = {
    ImageFormat.PNG: "image/png",
    ImageFormat.JPEG: "image/jpeg",
    ImageFormat.DICOM: "application/dicom",
}
# "gzip" in Accept-Encoding, unless refused with q=0.
ACCEPTS_GZIP = re.compile(r"\bgzip\b(?!\s*;\s*q\s*=\s*0(?:\.0*)?\s*(?:,|$))", re.IGNORECASE)


class ApiView(APIView):
    """Base: staff only, and application errors become their HTTP status with the error body."""

    authentication_classes = [TokenAuthentication, SessionAuthentication]
    permission_classes = [IsStaffMember]

    def handle_exception(self, exc: Exception) -> Response:
        if isinstance(exc, ApplicationError):
            return Response(exc.as_dict(), status=exc.status_code)
        return super().handle_exception(exc)


def _filters(serializer_class: type[serializers.Serializer], request: Request) -> dict:
    # A plain dict, not the QueryDict: DRF reads a missing boolean in form data as False.
    serializer = serializer_class(data=request.query_params.dict())
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data


def _paginated(*, queryset, serializer_class, request: Request, view: APIView) -> Response:
    paginator = PageNumberPagination()
    page = paginator.paginate_queryset(queryset, request, view=view)
    data = serializer_class(page, many=True, context={"request": request}).data
    return paginator.get_paginated_response(data)


# --- auth -------------------------------------------------------------------------------
class TokenApi(APIView):
    authentication_classes: list = []
    permission_classes = [AllowAny]

    @extend_schema(request=TokenInputSerializer, responses={200: TokenOutputSerializer})
    def post(self, request: Request) -> Response:
        serializer = TokenInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        # The HttpRequest, not DRF's wrapper: django-axes counts failures per address and
        # flags a locked-out request on it.
        http_request = request._request
        user = authenticate(request=http_request, **serializer.validated_data)
        if getattr(http_request, "axes_locked_out", False):
            # Answered here as JSON; cleared so axes' middleware does not swap in its text page.
            http_request.axes_locked_out = False
            return Response({"detail": LOCKED_OUT_MESSAGE}, status=status.HTTP_429_TOO_MANY_REQUESTS)
        if user is None:
            return Response(
                {"non_field_errors": [BAD_CREDENTIALS_MESSAGE]}, status=status.HTTP_400_BAD_REQUEST
            )
        token = services.auth_token_issue(user=user, ip=request_ip(request))
        return Response({"token": token})


# --- patients ---------------------------------------------------------------------------
class PatientListCreateApi(ApiView):
    @extend_schema(parameters=[PatientFilterSerializer], responses={200: PatientOutputSerializer(many=True)})
    def get(self, request: Request) -> Response:
        filters = _filters(PatientFilterSerializer, request)
        patients = selectors.patient_list(user=request.user, search=filters.get("search"))
        return _paginated(
            queryset=patients, serializer_class=PatientOutputSerializer, request=request, view=self
        )

    @extend_schema(request=PatientInputSerializer, responses={201: PatientOutputSerializer})
    def post(self, request: Request) -> Response:
        serializer = PatientInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        patient = services.patient_create(
            **serializer.validated_data, actor=request.user, ip=request_ip(request)
        )
        return Response(PatientOutputSerializer(patient).data, status=status.HTTP_201_CREATED)


class PatientDetailApi(ApiView):
    @extend_schema(responses={200: PatientOutputSerializer})
    def get(self, request: Request, pk: int) -> Response:
        patient = selectors.patient_detail(user=request.user, patient_id=pk)
        return Response(PatientOutputSerializer(patient).data)


# --- studies ----------------------------------------------------------------------------
class StudyListCreateApi(ApiView):
    @extend_schema(parameters=[StudyFilterSerializer], responses={200: StudyListOutputSerializer(many=True)})
    def get(self, request: Request) -> Response:
        filters = _filters(StudyFilterSerializer, request)
        studies = selectors.worklist(
            user=request.user,
            status=filters.get("status"),
            body_part=filters.get("body_part"),
            flagged=filters.get("flagged"),
            reviewed=filters.get("reviewed"),
            patient_id=filters.get("patient"),
        )
        return _paginated(
            queryset=studies, serializer_class=StudyListOutputSerializer, request=request, view=self
        )

    @extend_schema(request=StudyInputSerializer, responses={201: StudyDetailOutputSerializer})
    def post(self, request: Request) -> Response:
        serializer = StudyInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        try:
            patient = selectors.patient_detail(user=request.user, patient_id=data["patient"])
        except NotFoundError as exc:
            raise serializers.ValidationError({"patient": ["No such patient."]}) from exc
        study = services.study_create(
            patient=patient,
            accession_number=data["accession_number"],
            body_part=data["body_part"],
            study_date=data["study_date"],
            expected_images=data["expected_images"],
            actor=request.user,
            ip=request_ip(request),
        )
        study = selectors.study_detail(user=request.user, study_id=study.pk)
        return Response(
            StudyDetailOutputSerializer(study, context={"request": request}).data,
            status=status.HTTP_201_CREATED,
        )


class StudyDetailApi(ApiView):
    @extend_schema(responses={200: StudyDetailOutputSerializer})
    def get(self, request: Request, pk: int) -> Response:
        study = selectors.study_detail(user=request.user, study_id=pk)
        services.study_view_record(study=study, actor=request.user, ip=request_ip(request))
        return Response(StudyDetailOutputSerializer(study, context={"request": request}).data)


class StudyImagesApi(ApiView):
    parser_classes = [MultiPartParser, FormParser]

    @extend_schema(
        request={"multipart/form-data": UploadInputSerializer}, responses={201: UploadOutputSerializer}
    )
    def post(self, request: Request, pk: int) -> Response:
        study = selectors.study_get(user=request.user, study_id=pk)
        # The plain values, not the QueryDict with the files: only the confirmation is validated here.
        fields = ("confirm_mismatch", "mismatch_reason")
        confirmation = UploadConfirmInputSerializer(
            data={key: request.data[key] for key in fields if key in request.data}
        )
        confirmation.is_valid(raise_exception=True)
        images = services.radiographs_add(
            study=study,
            files=request.FILES.getlist("file"),
            actor=request.user,
            ip=request_ip(request),
            **confirmation.validated_data,
        )
        body = {
            "images": [
                {"id": image.pk, "status": image.status, "confirmed_mismatch": confirmed_mismatch_data(image)}
                for image in images
            ]
        }
        return Response(UploadOutputSerializer(body).data, status=status.HTTP_201_CREATED)


class StudyCompleteApi(ApiView):
    @extend_schema(request=None, responses={200: StudyDetailOutputSerializer})
    def post(self, request: Request, pk: int) -> Response:
        """Staff say no more files will come: the study stops reporting missing files (409 if none are)."""
        study = selectors.study_get(user=request.user, study_id=pk)
        services.study_mark_complete(study=study, actor=request.user, ip=request_ip(request))
        study = selectors.study_detail(user=request.user, study_id=pk)
        return Response(StudyDetailOutputSerializer(study, context={"request": request}).data)


class StudyReviewsApi(ApiView):
    permission_classes = [IsRadiologist]

    @extend_schema(request=ReviewInputSerializer, responses={201: ReviewOutputSerializer})
    def post(self, request: Request, pk: int) -> Response:
        study = selectors.study_get(user=request.user, study_id=pk)
        serializer = ReviewInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        review = services.review_create(
            study=study, radiologist=request.user, **serializer.validated_data, ip=request_ip(request)
        )
        return Response(ReviewOutputSerializer(review).data, status=status.HTTP_201_CREATED)


# --- images -----------------------------------------------------------------------------
class ImageDetailApi(ApiView):
    @extend_schema(responses={200: ImageOutputSerializer})
    def get(self, request: Request, pk: int) -> Response:
        image = selectors.image_detail(user=request.user, image_id=pk)
        return Response(ImageOutputSerializer(image, context={"request": request}).data)


class AnyContentNegotiation(BaseContentNegotiation):
    """File views answer with the file whatever `Accept` says (an <img> tag, a DICOM viewer)."""

    def select_parser(self, request, parsers):
        return parsers[0]

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type


def _private_file(*, name: str, content_type: str) -> HttpResponse:
    prefix = settings.MSKDETECT_PROTECTED_MEDIA_PREFIX
    if prefix:
        # nginx serves the bytes from an `internal` location after this view said yes.
        response = HttpResponse(content_type=content_type)
        response["X-Accel-Redirect"] = f"{prefix.rstrip('/')}/{quote(name)}"
    else:
        response = FileResponse(default_storage.open(name, "rb"), content_type=content_type)
    return _no_store(response)


def _no_store(response: HttpResponse) -> HttpResponse:
    # Patient images must not stay in a shared workstation's browser cache after logout.
    response["Cache-Control"] = "private, no-store"
    response["X-Content-Type-Options"] = "nosniff"
    response["Content-Disposition"] = "inline"
    return response


class _ImageFileBase(ApiView):
    content_negotiation_class = AnyContentNegotiation
    part = ""
    # A download of the original is always an image view of its own.
    always_audited = False

    def _record_view(self, request: Request, image: Radiograph) -> None:
        # Pages record their own view: the study page one `study.viewed` per opening, whatever the
        # number of thumbnails, heat maps and pixel fetches it makes. An API client (token) has no
        # page, so its fetch of an image's pixels is audited here. See docs/viewer.md.
        if self.always_audited or isinstance(request.successful_authenticator, TokenAuthentication):
            services.radiograph_view_record(
                image=image, actor=request.user, ip=request_ip(request), part=self.part
            )


class ImageFileApi(_ImageFileBase):
    part = "file"
    always_audited = True

    @extend_schema(responses={(200, "application/octet-stream"): bytes})
    def get(self, request: Request, pk: int) -> HttpResponse:
        image = selectors.image_detail(user=request.user, image_id=pk)
        self._record_view(request, image)
        return _private_file(name=image.file.name, content_type=CONTENT_TYPES[image.format])


class ImageHeatmapApi(_ImageFileBase):
    part = "heatmap"

    @extend_schema(responses={(200, "image/png"): bytes})
    def get(self, request: Request, pk: int) -> HttpResponse:
        image = selectors.image_detail(user=request.user, image_id=pk)
        prediction = selectors.latest_prediction(image)
        if prediction is None or not prediction.heatmap:
            raise NotFoundError("This image has no heat map.")
        self._record_view(request, image)
        content_type = mimetypes.guess_type(prediction.heatmap.name)[0] or "image/png"
        return _private_file(name=prediction.heatmap.name, content_type=content_type)


class ImagePreviewApi(_ImageFileBase):
    part = "preview"

    @extend_schema(responses={(200, "image/png"): bytes})
    def get(self, request: Request, pk: int) -> HttpResponse:
        image = selectors.image_detail(user=request.user, image_id=pk)
        self._record_view(request, image)
        return _private_file(name=ensure_preview(stored_name=image.file.name), content_type="image/png")


# --- pixel data for the viewer (docs/viewer.md) -----------------------------------------
def _not_modified(request: Request, etag: str) -> bool:
    # Weak comparison (RFC 9110 13.1.2): the same samples go out gzip-encoded or not.
    tags = parse_etags(request.headers.get("If-None-Match", ""))
    return "*" in tags or etag.removeprefix("W/") in {tag.removeprefix("W/") for tag in tags}


def _revalidated(response: HttpResponse, etag: str) -> HttpResponse:
    # Kept by the browser but checked on every use: a logged-out session gets 401, not the bytes.
    response["ETag"] = etag
    response["Cache-Control"] = "private, no-cache"
    response["Vary"] = "Accept-Encoding, Cookie, Authorization"
    response["X-Content-Type-Options"] = "nosniff"
    return response


class ImagePixelsApi(ApiView):
    class OutputSerializer(serializers.Serializer):
        class WindowSerializer(serializers.Serializer):
            key = serializers.CharField()
            label = serializers.CharField()
            center = serializers.FloatField()
            width = serializers.FloatField()

        class VoiSerializer(serializers.Serializer):
            center = serializers.FloatField()
            width = serializers.FloatField()
            explanation = serializers.CharField(allow_blank=True)

        class SpacingSerializer(serializers.Serializer):
            row_mm = serializers.FloatField(help_text="mm between the centres of adjacent rows")
            column_mm = serializers.FloatField(help_text="mm between the centres of adjacent columns")
            source = serializers.ChoiceField(choices=["PixelSpacing", "ImagerPixelSpacing"])

        width = serializers.IntegerField()
        height = serializers.IntegerField()
        bits_stored = serializers.IntegerField()
        photometric = serializers.ChoiceField(
            choices=["MONOCHROME1", "MONOCHROME2"], help_text="MONOCHROME1: high values are shown dark"
        )
        source_format = serializers.ChoiceField(choices=["dcm", "png", "jpeg"])
        source_photometric = serializers.CharField()
        colour_converted = serializers.BooleanField(
            help_text="a colour image, sent as its grey (BT.601 luma)"
        )
        rescale_slope = serializers.FloatField(help_text="value = sample * rescale_slope + rescale_intercept")
        rescale_intercept = serializers.FloatField()
        sample_min = serializers.IntegerField()
        sample_max = serializers.IntegerField()
        value_min = serializers.FloatField()
        value_max = serializers.FloatField()
        voi = VoiSerializer(allow_null=True, help_text="the DICOM window (first value), if any")
        presets = WindowSerializer(many=True, help_text="windows in value units; the first is the default")
        pixel_spacing = SpacingSerializer(allow_null=True, help_text="null: calibration unknown")
        data_url = serializers.CharField(help_text="the samples: little-endian uint16, row-major")

    @extend_schema(responses={200: OutputSerializer})
    def get(self, request: Request, pk: int) -> HttpResponse:
        """What the viewer needs to window the image's samples, and where to fetch them."""
        image = selectors.image_detail(user=request.user, image_id=pk)
        etag = pixels_etag(image.sha256)
        if _not_modified(request, etag):
            return _revalidated(HttpResponseNotModified(), etag)
        stored = ensure_pixels(stored_name=image.file.name)
        data_url = reverse("api:image-pixel-data", args=[image.pk])
        body = self.OutputSerializer({**stored.metadata, "data_url": data_url}).data
        return _revalidated(Response(body), etag)


class ImagePixelDataApi(_ImageFileBase):
    part = "pixels"

    @extend_schema(responses={(200, "application/octet-stream"): bytes})
    def get(self, request: Request, pk: int) -> HttpResponse:
        """The image's samples, width x height little-endian uint16, row-major; gzip when accepted."""
        image = selectors.image_detail(user=request.user, image_id=pk)
        etag = pixels_etag(image.sha256)
        if _not_modified(request, etag):
            self._record_view(request, image)
            return _revalidated(HttpResponseNotModified(), etag)
        stored = ensure_pixels(stored_name=image.file.name)
        self._record_view(request, image)
        if ACCEPTS_GZIP.search(request.headers.get("Accept-Encoding", "")):
            # Stored compressed: the browser inflates it, the server never recompresses.
            response = FileResponse(
                default_storage.open(stored.data_name, "rb"), content_type="application/octet-stream"
            )
            response["Content-Encoding"] = "gzip"
        else:
            with default_storage.open(stored.data_name, "rb") as handle:
                response = HttpResponse(
                    gzip.decompress(handle.read()), content_type="application/octet-stream"
                )
        response["Content-Disposition"] = "inline"
        return _revalidated(response, etag)


# --- audit and schema -------------------------------------------------------------------
class AuditEventListApi(ApiView):
    permission_classes = [IsAdmin]

    @extend_schema(
        parameters=[
            OpenApiParameter("study", int, description="study id"),
            OpenApiParameter("actor", str, description="user id or username"),
            OpenApiParameter("action", str, description="e.g. study.viewed"),
        ],
        responses={200: AuditEventOutputSerializer(many=True)},
    )
    def get(self, request: Request) -> Response:
        filters = _filters(AuditEventFilterSerializer, request)
        events = selectors.audit_events(
            user=request.user,
            study=filters.get("study"),
            actor=filters.get("actor"),
            action=filters.get("action"),
        )
        return _paginated(
            queryset=events, serializer_class=AuditEventOutputSerializer, request=request, view=self
        )


class SchemaApi(SpectacularAPIView):
    authentication_classes = [TokenAuthentication, SessionAuthentication]
    permission_classes = [IsStaffMember]
