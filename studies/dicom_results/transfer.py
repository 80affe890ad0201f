"""Sending built instances to one destination: DICOM C-STORE (pynetdicom) or DICOMweb STOW-RS.

Both return one `InstanceOutcome` per instance and call `on_stored(uid)` as soon as the destination
confirms an instance, so the caller can record it before anything else can go wrong. A failure of
the whole attempt (no connection, association refused or dropped, HTTP 5xx, timeout) raises
`TransferError`: the destination may be back later, so the caller retries.
"""

import base64
import json
import logging
import secrets
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from studies.dicom_results.destinations import Destination

logger = logging.getLogger(__name__)

# C-STORE statuses that mean "stored": success, and the warnings (coercion, elements discarded,
# data set does not match the SOP class) after which the instance is kept (PS3.4 B.2.3).
_STORED = {0x0000, 0xB000, 0xB006, 0xB007}
# "Refused: out of resources": the destination may take it later.
_OUT_OF_RESOURCES = range(0xA700, 0xA800)
# HTTP statuses after which the same request may succeed later.
_HTTP_TRANSIENT = {401, 403, 408, 425, 429, 500, 502, 503, 504}


@dataclass(frozen=True)
class Instance:
    """One built instance to send: its UIDs and its Part 10 file's bytes."""

    sop_class_uid: str
    sop_instance_uid: str
    data: bytes


@dataclass(frozen=True)
class InstanceOutcome:
    sop_instance_uid: str
    stored: bool
    error: str = ""


class TransferError(Exception):
    """The attempt failed as a whole and may succeed later; `message` says what happened."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def cstore(
    *,
    peer: Destination,
    calling_ae: str,
    instances: Sequence[tuple[Instance, Dataset]],
    timeout: float,
    on_stored: Callable[[str], None],
) -> list[InstanceOutcome]:
    """Send the datasets over one association; each C-STORE response's status is checked."""
    # Imported here: only the worker sends, and the web process imports this module at start-up.
    from pynetdicom import AE

    ae = AE(ae_title=calling_ae)
    for sop_class in sorted({instance.sop_class_uid for instance, _ in instances}):
        ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    ae.connection_timeout = timeout
    ae.acse_timeout = timeout
    ae.dimse_timeout = timeout
    ae.network_timeout = timeout
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title)
    if not assoc.is_established:
        if assoc.is_rejected:
            raise TransferError(
                f"{peer.key} rejected the association (is {calling_ae} a known AE title there?)"
            )
        raise TransferError(f"{peer.key} did not answer (connection refused, aborted or timed out)")
    outcomes: list[InstanceOutcome] = []
    try:
        for instance, dataset in instances:
            try:
                status = assoc.send_c_store(dataset)
            except (ValueError, RuntimeError) as exc:
                # No presentation context accepted for this SOP class: the PACS does not store it.
                outcomes.append(
                    _refused(instance, f"{peer.key} does not accept {_class_name(instance)}: {exc}")
                )
                continue
            if not status or "Status" not in status:
                raise TransferError(f"{peer.key} dropped the association during a C-STORE")
            code = int(status.Status)
            if code in _STORED:
                on_stored(instance.sop_instance_uid)
                outcomes.append(InstanceOutcome(sop_instance_uid=instance.sop_instance_uid, stored=True))
            elif code in _OUT_OF_RESOURCES:
                raise TransferError(f"{peer.key} is out of resources (C-STORE status 0x{code:04X})")
            else:
                comment = str(status.get("ErrorComment", "") or "")
                outcomes.append(
                    _refused(
                        instance,
                        f"{peer.key} refused {_class_name(instance)} (C-STORE status 0x{code:04X}"
                        + (f": {comment}" if comment else "")
                        + ")",
                    )
                )
    finally:
        if assoc.is_established:
            assoc.release()
    return outcomes


def stowrs(
    *,
    destination: Destination,
    study_instance_uid: str,
    instances: Sequence[Instance],
    authorization: str,
    timeout: float,
    on_stored: Callable[[str], None],
) -> list[InstanceOutcome]:
    """POST the instances as one multipart/related request to <root>/studies/<StudyInstanceUID>.

    200: all stored; 202: some failed (FailedSOPSequence says which); 409 and other 4xx: refused;
    5xx, 401, 403, 408, 429 and network errors: TransferError (retried).
    """
    boundary = f"mskdetect-{secrets.token_hex(12)}"
    body = _multipart(instances, boundary=boundary)
    request = urllib.request.Request(
        f"{destination.url}/studies/{study_instance_uid}",
        data=body,
        method="POST",
        headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Accept": "application/dicom+json",
        },
    )
    if authorization:
        request.add_header("Authorization", authorization)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, answer = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, answer = exc.code, exc.read()
        if status in _HTTP_TRANSIENT:
            raise TransferError(f"{destination.key} answered HTTP {status} {exc.reason}") from exc
    except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TransferError(f"{destination.key} did not answer: {reason}") from exc
    failed = _failed_instances(answer)
    outcomes = []
    for instance in instances:
        uid = instance.sop_instance_uid
        if status in (200, 202) and uid not in failed:
            on_stored(uid)
            outcomes.append(InstanceOutcome(sop_instance_uid=uid, stored=True))
        else:
            reason = failed.get(uid) or f"HTTP {status}"
            outcomes.append(
                _refused(instance, f"{destination.key} refused {_class_name(instance)} ({reason})")
            )
    return outcomes


def stowrs_authorization(*, token: str, user: str, password: str) -> str:
    """The Authorization header value: a bearer token, else HTTP basic, else none."""
    if token:
        return f"Bearer {token}"
    if user:
        return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    return ""


def _multipart(instances: Sequence[Instance], *, boundary: str) -> bytes:
    parts = []
    for instance in instances:
        parts += [f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode(), instance.data, b"\r\n"]
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts)


def _failed_instances(answer: bytes) -> dict[str, str]:
    """SOP Instance UID → failure reason, from a STOW-RS response's FailedSOPSequence (00081198)."""
    try:
        document = json.loads(answer or b"{}")
    except ValueError:
        return {}
    if isinstance(document, list):  # some servers wrap the one response dataset in a list
        document = document[0] if document else {}
    failed = {}
    for item in (document.get("00081198") or {}).get("Value") or []:
        uid = ((item.get("00081155") or {}).get("Value") or [""])[0]
        reason = ((item.get("00081197") or {}).get("Value") or [None])[0]
        if uid:
            failed[uid] = f"failure reason 0x{int(reason):04X}" if reason is not None else "failed"
    return failed


def _refused(instance: Instance, message: str) -> InstanceOutcome:
    logger.warning("%s", message)
    return InstanceOutcome(sop_instance_uid=instance.sop_instance_uid, stored=False, error=message)


def _class_name(instance: Instance) -> str:
    return f"the {UID(instance.sop_class_uid).name}"
