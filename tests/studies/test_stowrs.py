"""STOW-RS (issue 13): `POST /dicomweb/studies[/{StudyInstanceUID}]`, multipart/related DICOM files in,
a PS3.18 Store Instances Response out, token auth for staff, limits on the body."""

import json

import pytest
from pydicom.uid import generate_uid

from studies.dicomweb import BadRequest, check_content_type, media_type, split_parts
from studies.models import AuditEvent, Radiograph, Study
from tests.inference import hostile
from tests.studies.test_dicom_ingest import STUDY_UID, instance

pytestmark = pytest.mark.django_db

BOUNDARY = "mskdetect-test-boundary"
CONTENT_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
REFERENCED = "00081199"
FAILED = "00081198"


def multipart(*files: bytes, boundary: str = BOUNDARY, part_type: str = "application/dicom") -> bytes:
    body = b"preamble, ignored\r\n"
    for data in files:
        body += f"--{boundary}\r\nContent-Type: {part_type}\r\n\r\n".encode() + data + b"\r\n"
    return body + f"--{boundary}--\r\n".encode()


@pytest.fixture(autouse=True)
def _no_broker(monkeypatch):
    # The views commit for real in these tests only through the test transaction: nothing is sent.
    monkeypatch.setattr("studies.services.radiographs._enqueue_on_commit", lambda ids: None)


@pytest.fixture
def staff(api_client_for, staff_user):
    return api_client_for(staff_user)


def stow(client, body: bytes, *, path: str = "/dicomweb/studies", content_type: str = CONTENT_TYPE):
    return client.generic("POST", path, data=body, content_type=content_type)


def uids(answer, key: str) -> list[str]:
    return [item["00081155"]["Value"][0] for item in answer.json().get(key, {}).get("Value", [])]


def reasons(answer) -> list[int]:
    return [item["00081197"]["Value"][0] for item in answer.json()[FAILED]["Value"]]


def sop_uid(data: bytes) -> str:
    import io

    import pydicom

    return str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID)


def test_all_instances_stored_answers_200_with_the_referenced_sop_sequence(staff, staff_user):
    files = [instance(), instance(SeriesDescription="LAT")]
    answer = stow(staff, multipart(*files))

    assert answer.status_code == 200, answer.content
    assert answer["Content-Type"] == "application/dicom+json"
    assert uids(answer, REFERENCED) == [sop_uid(data) for data in files]
    assert FAILED not in answer.json()
    assert Radiograph.objects.count() == 2 and Study.objects.get().study_instance_uid == STUDY_UID
    received = AuditEvent.objects.filter(action="image.received")
    assert received.count() == 2
    assert all(
        event.actor == staff_user and event.details["source"]["kind"] == "stow-rs" for event in received
    )


def test_a_re_sent_request_succeeds_stores_nothing_new_and_is_audited_once(staff):
    body = multipart(instance(), instance(SeriesDescription="LAT"))
    assert stow(staff, body).status_code == 200
    again = stow(staff, body)

    assert again.status_code == 200 and len(uids(again, REFERENCED)) == 2
    assert Radiograph.objects.count() == 2
    event = AuditEvent.objects.get(action="image.duplicate_received")
    assert event.details["instances"] == 2


def test_some_failed_answers_202_and_all_failed_409_with_failure_reasons(staff):
    good, ct = instance(), hostile.dicom_ct()
    partly = stow(staff, multipart(good, ct))
    assert partly.status_code == 202
    assert uids(partly, REFERENCED) == [sop_uid(good)]
    assert reasons(partly) == [0xC001]

    failed = stow(staff, multipart(hostile.dicom_ct(), hostile.dicom_without_pixel_data()))
    assert failed.status_code == 409
    assert reasons(failed) == [0xC001, 0xC000] and REFERENCED not in failed.json()


def test_instances_of_another_study_than_the_path_fail(staff):
    answer = stow(staff, multipart(instance()), path=f"/dicomweb/studies/{generate_uid()}")
    assert answer.status_code == 409 and reasons(answer) == [0xA900]
    assert stow(staff, multipart(instance()), path=f"/dicomweb/studies/{STUDY_UID}").status_code == 200


@pytest.mark.parametrize(
    "content_type",
    [
        "application/dicom",
        "multipart/form-data; boundary=x",
        'multipart/related; type="application/dicom+json"; boundary=x',
    ],
)
def test_another_media_type_is_415(staff, content_type):
    answer = stow(staff, multipart(instance()), content_type=content_type)
    assert answer.status_code == 415 and "detail" in answer.json()
    assert not Radiograph.objects.exists()


@pytest.mark.parametrize(
    ("body", "content_type", "words"),
    [
        (
            b"--x\r\nContent-Type: application/dicom\r\n\r\nabc",
            'multipart/related; type="application/dicom"; boundary=x',
            "truncated",
        ),
        (b"nothing here", CONTENT_TYPE, "no part"),
        (b"", CONTENT_TYPE, "empty"),
        (b"--x--", 'multipart/related; type="application/dicom"', "no boundary"),
    ],
    ids=["truncated", "no-part", "empty", "no-boundary"],
)
def test_a_body_that_is_not_a_readable_multipart_is_400_and_stores_nothing(staff, body, content_type, words):
    answer = stow(staff, body, content_type=content_type)
    assert answer.status_code == 400 and words in answer.json()["detail"]


def test_a_truncated_body_stores_none_of_its_complete_parts(staff):
    body = multipart(instance(), instance(SeriesDescription="LAT"))
    answer = stow(staff, body[: len(body) - 200])
    assert answer.status_code == 400 and not Radiograph.objects.exists()


def test_a_body_over_the_limit_is_413(staff, settings):
    body = multipart(instance())
    settings.MSKDETECT_STOWRS_MAX_BYTES = len(body) - 1
    answer = stow(staff, body)
    assert answer.status_code == 413 and "limit" in answer.json()["detail"]
    assert not Radiograph.objects.exists()


def test_a_part_that_is_not_dicom_fails_alone(staff):
    body = multipart(instance()).replace(f"--{BOUNDARY}--".encode(), b"") + (
        f"--{BOUNDARY}\r\nContent-Type: image/png\r\n\r\n".encode()
        + b"\x89PNG"
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )
    answer = stow(staff, body)
    assert answer.status_code == 202 and reasons(answer) == [0xC000]


def test_only_staff_with_a_token_may_store(client, api_client_for, norole_user, staff_user):
    body = multipart(instance())
    assert stow(api_client_for(None), body).status_code == 401
    assert stow(api_client_for(norole_user), body).status_code == 403
    # No session authentication (and so no CSRF question): a logged-in browser is not enough.
    client.force_login(staff_user)
    assert client.post("/dicomweb/studies", data=body, content_type=CONTENT_TYPE).status_code == 401
    assert not Radiograph.objects.exists()


def test_the_body_is_read_from_disk_when_large(staff, monkeypatch):
    monkeypatch.setattr("studies.dicomweb.SPOOL_IN_MEMORY_BYTES", 1024)
    answer = stow(staff, multipart(instance(), instance(SeriesDescription="LAT")))
    assert answer.status_code == 200 and len(uids(answer, REFERENCED)) == 2


# --- the parser on its own -------------------------------------------------------------------
def test_media_type_parameters_are_read_quoted_or_not():
    kind, parameters = media_type('Multipart/Related; type="application/dicom"; boundary="a b;c"')
    assert kind == "multipart/related" and parameters == {"type": "application/dicom", "boundary": "a b;c"}
    assert check_content_type("multipart/related; boundary=xyz") == b"xyz"  # type defaults to DICOM
    with pytest.raises(BadRequest) as caught:
        check_content_type("text/plain")
    assert caught.value.status == 415


def test_parts_with_bare_line_feeds_and_padding_are_read():
    part = b"Content-Type: application/dicom\n\n"
    body = b"--b  \n" + part + b"ONE\r\n--b\n" + part + b"TWO\r\n--b--"
    parts = split_parts(body, b"b")
    assert [body[part.start : part.end] for part in parts] == [b"ONE", b"TWO"]
    assert parts[0].headers == {"content-type": "application/dicom"}


def test_the_response_is_valid_dicom_json(staff):
    answer = stow(staff, multipart(instance()))
    from pydicom import Dataset

    dataset = Dataset.from_json(json.dumps(answer.json()))
    assert dataset.ReferencedSOPSequence[0].ReferencedSOPClassUID == "1.2.840.10008.5.1.4.1.1.1"
