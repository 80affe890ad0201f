"""DICOMweb STOW-RS (PS3.18 10.5): `POST /dicomweb/studies[/{StudyInstanceUID}]` for senders that speak HTTP.

The body is `multipart/related; type="application/dicom"`, one DICOM file per part; each goes
through studies.services.dicom_ingest, as a C-STORE would. Token authentication (the API's
tokens; staff role), no session and so no CSRF. The answer is a PS3.18 Store Instances Response
in `application/dicom+json`: ReferencedSOPSequence for the stored instances (a re-sent one
included: it changes nothing and succeeds), FailedSOPSequence with a FailureReason for the others
(the codes of the C-STORE receiver). 200 all stored, 202 some failed, 409 none stored; 400 when
the body is not a readable multipart, 413 above MSKDETECT_STOWRS_MAX_BYTES, 415 for another media
type.

The body is read in chunks into a temporary file (in memory up to 16 MB, on disk beyond) and the
parts are sliced from it one at a time, so a large study does not sit in memory twice.
"""

import mmap
import re
import tempfile
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass

from django.conf import settings
from django.db import DatabaseError
from django.http import HttpResponse, JsonResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiResponse, extend_schema
from pydicom.dataset import Dataset
from rest_framework.authentication import TokenAuthentication
from rest_framework.request import Request
from rest_framework.views import APIView

from studies.audit import request_ip
from studies.permissions import IsStaffMember
from studies.services.dicom_ingest import (
    CANNOT_UNDERSTAND,
    OUT_OF_RESOURCES,
    STOW_RS,
    DicomSource,
    InstanceRefused,
    dicom_duplicates_record,
    dicom_instance_ingest,
)

DICOM_JSON = "application/dicom+json"
SPOOL_IN_MEMORY_BYTES = 16 * 1024 * 1024
READ_CHUNK_BYTES = 1024 * 1024
_PARAMETER = re.compile(r';\s*([A-Za-z0-9_.+-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;\s]*)')


class BadRequest(Exception):
    """The request cannot be read as a STOW-RS request; `status` is the HTTP answer."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


# --- multipart/related --------------------------------------------------------------------
def media_type(content_type: str) -> tuple[str, dict[str, str]]:
    """`multipart/related; type="application/dicom"; boundary=x` → ("multipart/related", {...})."""
    main, _, rest = (content_type or "").partition(";")
    parameters = {
        name.lower(): value[1:-1].replace('\\"', '"') if value.startswith('"') else value
        for name, value in _PARAMETER.findall(";" + rest)
    }
    return main.strip().lower(), parameters


def check_content_type(content_type: str) -> bytes:
    """The multipart boundary of a STOW-RS request; BadRequest (415 or 400) when it is not one."""
    kind, parameters = media_type(content_type)
    if kind != "multipart/related":
        raise BadRequest(
            f'The body must be multipart/related; type="application/dicom", not {kind or "untyped"}.',
            status=415,
        )
    part_type = parameters.get("type", "application/dicom").lower()
    if part_type != "application/dicom":
        raise BadRequest(
            f'Only type="application/dicom" parts (DICOM files) are accepted, not "{part_type}".', status=415
        )
    boundary = parameters.get("boundary", "")
    if not boundary or len(boundary) > 200:
        raise BadRequest("The multipart/related Content-Type has no boundary.")
    return boundary.encode("latin-1", "replace")


@dataclass(frozen=True)
class Part:
    """One body part: its headers (lower-case names) and where its content lies in the body."""

    headers: dict[str, str]
    start: int
    end: int


def _skip_line_end(buffer, position: int) -> int:
    # After a delimiter: optional transport padding (spaces, tabs), then CRLF (LF tolerated).
    while buffer[position : position + 1] in (b" ", b"\t"):
        position += 1
    if buffer[position : position + 2] == b"\r\n":
        return position + 2
    if buffer[position : position + 1] == b"\n":
        return position + 1
    raise BadRequest("The multipart body is malformed: a boundary line does not end where it should.")


def split_parts(buffer, boundary: bytes) -> list[Part]:
    """Every part of a multipart body (`buffer`: bytes or an mmap); BadRequest if it is malformed
    anywhere, so that a truncated body stores nothing. The contents are not copied."""
    return list(_parts(buffer, boundary))


def _parts(buffer, boundary: bytes) -> Iterator[Part]:
    delimiter = b"--" + boundary
    start = buffer.find(delimiter)
    if start < 0:
        raise BadRequest("The multipart body holds no part (its boundary never appears).")
    position = start + len(delimiter)
    while True:
        if buffer[position : position + 2] == b"--":
            return
        position = _skip_line_end(buffer, position)
        header_end = buffer.find(b"\r\n\r\n", position)
        separator = 4
        bare = buffer.find(b"\n\n", position)
        if bare >= 0 and (header_end < 0 or bare < header_end):
            header_end, separator = bare, 2
        if header_end < 0:
            raise BadRequest("The multipart body is truncated: a part's headers never end.")
        headers = {}
        for line in bytes(buffer[position:header_end]).decode("latin-1").splitlines():
            name, colon, value = line.partition(":")
            if colon:
                headers[name.strip().lower()] = value.strip()
        content_start = header_end + separator
        end = buffer.find(b"\r\n" + delimiter, content_start)
        if end < 0:
            raise BadRequest("The multipart body is truncated: its closing boundary is missing.")
        yield Part(headers=headers, start=content_start, end=end)
        position = end + 2 + len(delimiter)


# --- the response -------------------------------------------------------------------------
@dataclass
class StoreOutcome:
    """What happened to each part, for the PS3.18 response."""

    stored: list[tuple[str, str]]
    failed: list[tuple[str, str, int]]

    def http_status(self) -> int:
        if not self.failed:
            return 200
        return 202 if self.stored else 409

    def as_dicom_json(self) -> dict:
        response = Dataset()
        if self.stored:
            response.ReferencedSOPSequence = [
                _reference(sop_class, sop_instance) for sop_class, sop_instance in self.stored
            ]
        if self.failed:
            items = []
            for sop_class, sop_instance, reason in self.failed:
                item = _reference(sop_class, sop_instance)
                item.FailureReason = reason
                items.append(item)
            response.FailedSOPSequence = items
        return response.to_json_dict()


def _reference(sop_class: str, sop_instance: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = sop_instance
    return item


def store_parts(
    *, buffer, parts: list[Part], source: DicomSource, study_instance_uid: str = ""
) -> StoreOutcome:
    """Ingest every part (studies.services.dicom_ingest); duplicates are audited once per study."""
    outcome = StoreOutcome(stored=[], failed=[])
    duplicates: dict[int, list[str]] = defaultdict(list)
    try:
        for part in parts:
            part_type, _ = media_type(part.headers.get("content-type", "application/dicom"))
            if part_type != "application/dicom":
                outcome.failed.append(("", "", CANNOT_UNDERSTAND))
                continue
            try:
                received = dicom_instance_ingest(
                    data=bytes(buffer[part.start : part.end]),
                    source=source,
                    study_instance_uid=study_instance_uid,
                )
            except InstanceRefused as refusal:
                outcome.failed.append((refusal.sop_class_uid, refusal.sop_instance_uid, refusal.status))
                continue
            except (DatabaseError, OSError):
                outcome.failed.append(("", "", OUT_OF_RESOURCES))
                continue
            outcome.stored.append((received.sop_class_uid, received.sop_instance_uid))
            if received.duplicate:
                duplicates[received.study_id].append(received.sop_instance_uid)
    finally:
        for study_id, uids in duplicates.items():
            dicom_duplicates_record(source=source, study_id=study_id, sop_instance_uids=uids)
    return outcome


# --- the view -----------------------------------------------------------------------------
def _check_declared_length(request) -> None:
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError as exc:
        raise BadRequest("The Content-Length header is not a number.") from exc
    if declared > settings.MSKDETECT_STOWRS_MAX_BYTES:
        raise _too_large()


def _too_large() -> BadRequest:
    limit = settings.MSKDETECT_STOWRS_MAX_BYTES
    return BadRequest(f"The request body is larger than the {limit // (1024 * 1024)} MB limit.", status=413)


def _spool_body(request, spool) -> int:
    """Copy the body into `spool` in chunks, never past the limit; returns its size."""
    total = 0
    while chunk := request.read(READ_CHUNK_BYTES):
        total += len(chunk)
        if total > settings.MSKDETECT_STOWRS_MAX_BYTES:
            raise _too_large()
        spool.write(chunk)
    if total == 0:
        raise BadRequest("The request body is empty.")
    return total


STOW_RESPONSE_SCHEMA = {
    "type": "object",
    "description": (
        "PS3.18 Store Instances Response (DICOM JSON): 00081199 ReferencedSOPSequence (stored, re-sends "
        "included), 00081198 FailedSOPSequence with 00081197 FailureReason (A700 out of resources, "
        "A900 identifying attributes missing or not matching the request, C000 unreadable or too large, "
        "C001 not a projection radiograph, C002 disagrees with its patient or study)."
    ),
    "additionalProperties": {"type": "object", "additionalProperties": {}},
}
STOW_EXAMPLE = {
    "00081199": {
        "vr": "SQ",
        "Value": [
            {
                "00081150": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.1"]},
                "00081155": {"vr": "UI", "Value": ["1.2.826.0.1.3680043.8.498.1"]},
            }
        ],
    }
}


def _stow_schema(*, operation_id: str, description: str) -> dict:
    return {
        "operation_id": operation_id,
        "summary": "Store DICOM instances (STOW-RS)",
        "description": description
        + (
            ' Body: `multipart/related; type="application/dicom"; boundary=…`, one DICOM file per part. Each '
            "instance is filed as a C-STORE would be: patient from PatientID (+ IssuerOfPatientID), study "
            "from StudyInstanceUID then AccessionNumber, body part from the header (not recognised: the "
            "study waits for staff). A re-sent SOP Instance UID is stored once and answered as stored."
        ),
        "request": {"multipart/related": OpenApiTypes.BINARY},
        "responses": {
            (200, DICOM_JSON): OpenApiResponse(
                STOW_RESPONSE_SCHEMA,
                description="Every instance stored.",
                examples=[OpenApiExample("stored", value=STOW_EXAMPLE)],
            ),
            (202, DICOM_JSON): OpenApiResponse(STOW_RESPONSE_SCHEMA, description="Some stored, some failed."),
            (409, DICOM_JSON): OpenApiResponse(STOW_RESPONSE_SCHEMA, description="No instance stored."),
            413: OpenApiResponse(
                {"type": "object", "properties": {"detail": {"type": "string"}}, "required": ["detail"]},
                description="The body is larger than MSKDETECT_STOWRS_MAX_BYTES.",
            ),
        },
        "tags": ["dicomweb"],
    }


class StowRsApi(APIView):
    """STOW-RS: store DICOM instances sent over HTTP, of any study."""

    authentication_classes = [TokenAuthentication]
    permission_classes = [IsStaffMember]
    parser_classes: list = []

    @extend_schema(
        **_stow_schema(operation_id="dicomweb_studies_store", description="Instances of any study.")
    )
    def post(self, request: Request, study_instance_uid: str = "") -> HttpResponse:
        return self.store(request, study_instance_uid=study_instance_uid)

    def store(self, request: Request, *, study_instance_uid: str) -> HttpResponse:
        source = DicomSource(kind=STOW_RS, peer=request_ip(request), user=request.user)
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY_BYTES) as spool:
            try:
                boundary = check_content_type(request.META.get("CONTENT_TYPE", ""))
                _check_declared_length(request._request)
                buffer = _buffer_of(spool, _spool_body(request._request, spool))
            except BadRequest as error:
                return JsonResponse({"detail": error.message}, status=error.status)
            try:
                parts = split_parts(buffer, boundary)
                if not parts:
                    raise BadRequest("The multipart body holds no part.")
                outcome = store_parts(
                    buffer=buffer, parts=parts, source=source, study_instance_uid=study_instance_uid
                )
            except BadRequest as error:
                return JsonResponse({"detail": error.message}, status=error.status)
            finally:
                if isinstance(buffer, mmap.mmap):
                    buffer.close()
        return JsonResponse(outcome.as_dicom_json(), status=outcome.http_status(), content_type=DICOM_JSON)


class StowRsStudyApi(StowRsApi):
    """STOW-RS into one study: instances of another study fail (A900)."""

    @extend_schema(
        **_stow_schema(
            operation_id="dicomweb_study_store",
            description="Instances of the study in the path; one of another study fails (A900).",
        )
    )
    def post(self, request: Request, study_instance_uid: str = "") -> HttpResponse:
        return self.store(request, study_instance_uid=study_instance_uid)


def _buffer_of(spool: tempfile.SpooledTemporaryFile, size: int) -> bytes | mmap.mmap:
    # Small: the bytes; large (already on disk): a read-only map of the file, nothing loaded at once.
    spool.flush()
    spool.seek(0)
    if size <= SPOOL_IN_MEMORY_BYTES:
        return spool.read()
    return mmap.mmap(spool.fileno(), 0, access=mmap.ACCESS_READ)
