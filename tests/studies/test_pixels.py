"""The viewer's pixel endpoints (/api/v1/images/{id}/pixels and pixels.u16): who may fetch them,
that they carry the original values (16-bit PNG, DICOM with rescale, MONOCHROME1, signed data),
that they revalidate with an ETag, and that a study view is audited once, not per fetch."""

import gzip
import time

import numpy as np
import pydicom
import pytest
from django.core.files.storage import default_storage
from django.urls import reverse

from inference.decoding import decode_image
from studies.models import AuditEvent, ImageFormat
from studies.pixels import pixel_names
from tests.conftest import SHARED_DATA
from tests.factories import RadiographFactory, StudyFactory, UserFactory
from tests.inference import hostile

pytestmark = pytest.mark.django_db

PNG16 = sorted((SHARED_DATA / "png16").glob("*.png"))[0]
DICOM = SHARED_DATA / "dicom"


def _image(path_or_bytes, *, fmt=ImageFormat.DICOM, study=None):
    content = path_or_bytes if isinstance(path_or_bytes, bytes) else path_or_bytes.read_bytes()
    return RadiographFactory(content=content, format=fmt, **({"study": study} if study else {}))


def _samples(client, image, **headers) -> tuple[dict, np.ndarray]:
    meta = client.get(reverse("api:image-pixels", args=[image.pk]), **headers)
    assert meta.status_code == 200, meta.content
    body = meta.json()
    data = client.get(body["data_url"], HTTP_ACCEPT_ENCODING="gzip, deflate, br", **headers)
    assert data.status_code == 200
    assert data["Content-Type"] == "application/octet-stream" and data["Content-Encoding"] == "gzip"
    raw = gzip.decompress(b"".join(data.streaming_content))
    return body, np.frombuffer(raw, dtype="<u2").reshape(body["height"], body["width"])


@pytest.mark.parametrize(
    ("role", "expected"),
    [("anonymous", 401), ("norole", 403), ("staff", 200), ("radiologist", 200), ("admin", 200)],
)
def test_only_clinical_roles_get_pixels(api_client_for, role, expected):
    image = RadiographFactory()
    user = None if role == "anonymous" else UserFactory(role=None if role == "norole" else role)
    client = api_client_for(user)
    for name in ("api:image-pixels", "api:image-pixel-data"):
        assert client.get(reverse(name, args=[image.pk])).status_code == expected


def test_logged_out_browser_gets_401_not_the_pixels(client):
    image = RadiographFactory()
    response = client.get(reverse("api:image-pixel-data", args=[image.pk]))
    assert response.status_code == 401 and not response.content.startswith(b"\x1f\x8b")


def test_unknown_image_is_404(api_client_for, staff_user):
    assert api_client_for(staff_user).get(reverse("api:image-pixels", args=[999999])).status_code == 404


def test_16_bit_png_round_trips_exactly(api_client_for, staff_user):
    image = _image(PNG16, fmt=ImageFormat.PNG)
    meta, samples = _samples(api_client_for(staff_user), image)
    original = decode_image(PNG16.read_bytes()).pixels
    assert original.dtype == np.uint16 and np.array_equal(samples, original)
    assert (meta["bits_stored"], meta["photometric"], meta["source_format"]) == (16, "MONOCHROME2", "png")
    assert (meta["rescale_slope"], meta["rescale_intercept"]) == (1.0, 0.0)
    assert meta["voi"] is None and meta["pixel_spacing"] is None
    assert [p["key"] for p in meta["presets"]] == ["auto", "bone", "soft", "full"]
    assert meta["presets"][3] == {
        "key": "full",
        "label": "Full range (16-bit)",
        "center": 32767.5,
        "width": 65535.0,
    }


def test_monochrome1_dicom_keeps_stored_values_rescale_voi_and_imager_spacing(api_client_for, staff_user):
    path = DICOM / "CR1_6154_noext"
    meta, samples = _samples(api_client_for(staff_user), _image(path))
    ds = pydicom.dcmread(path)
    assert np.array_equal(samples, ds.pixel_array)  # stored values: no window, no inversion
    assert meta["photometric"] == "MONOCHROME1" and meta["bits_stored"] == 12
    assert (meta["rescale_slope"], meta["rescale_intercept"]) == (0.684, 200.0)
    assert meta["voi"] == {"center": 1600.0, "width": 2800.0, "explanation": ""}
    assert meta["presets"][0] == {"key": "voi", "label": "DICOM VOI", "center": 1600.0, "width": 2800.0}
    assert meta["pixel_spacing"] == {"row_mm": 0.1, "column_mm": 0.1, "source": "ImagerPixelSpacing"}
    assert meta["value_min"] == pytest.approx(samples.min() * 0.684 + 200)


def test_large_jpeg2000_dicom_is_decoded_once_then_streamed(api_client_for, staff_user):
    path = DICOM / "NM_Kakadu44_SOTmarkerincons.dcm"
    image = _image(path)
    client = api_client_for(staff_user)
    started = time.perf_counter()
    meta, samples = _samples(client, image)
    first = time.perf_counter() - started
    assert (meta["width"], meta["height"], meta["bits_stored"]) == (2048, 2500, 12)
    assert meta["pixel_spacing"] == {"row_mm": 0.115, "column_mm": 0.115, "source": "PixelSpacing"}
    assert meta["voi"]["center"] == 2048.0 and meta["voi"]["width"] == 4096.0
    assert np.array_equal(samples, pydicom.dcmread(path).pixel_array)
    meta_name, data_name = pixel_names(image.file.name)
    assert default_storage.exists(meta_name) and default_storage.exists(data_name)
    # Gzip halves the 10 MB of 12-bit samples; the second request only streams the stored file.
    assert default_storage.size(data_name) < 0.6 * 2048 * 2500 * 2
    started = time.perf_counter()
    _samples(client, image)
    assert time.perf_counter() - started < first


def test_signed_dicom_is_shifted_into_uint16_with_the_offset_in_the_intercept(api_client_for, staff_user):
    values = np.array([[-1000, -1], [0, 1200]], dtype=np.int16)
    ds = hostile.dicom_dataset(values, modality="DX")
    ds.PixelRepresentation = 1
    ds.RescaleSlope, ds.RescaleIntercept = 2, 10
    meta, samples = _samples(api_client_for(staff_user), _image(hostile.dicom_bytes(ds)))
    restored = samples * meta["rescale_slope"] + meta["rescale_intercept"]
    assert np.array_equal(restored, values.astype(np.float64) * 2 + 10)
    assert (meta["value_min"], meta["value_max"]) == (-1990.0, 2410.0)


def test_etag_revalidation_and_encodings(api_client_for, staff_user):
    image = _image(PNG16, fmt=ImageFormat.PNG)
    client = api_client_for(staff_user)
    url = reverse("api:image-pixel-data", args=[image.pk])
    first = client.get(url, HTTP_ACCEPT_ENCODING="gzip")
    etag = first["ETag"]
    assert etag == f'W/"px1-{image.sha256}"'
    assert first["Cache-Control"] == "private, no-cache" and "Accept-Encoding" in first["Vary"]
    again = client.get(url, HTTP_IF_NONE_MATCH=etag)
    assert again.status_code == 304 and again.content == b"" and again["ETag"] == etag
    assert (
        client.get(reverse("api:image-pixels", args=[image.pk]), HTTP_IF_NONE_MATCH=etag).status_code == 304
    )
    # A client that does not take gzip gets the plain samples, and a gzip;q=0 is a refusal.
    for encoding in ("identity", "gzip;q=0"):
        plain = client.get(url, HTTP_ACCEPT_ENCODING=encoding)
        assert plain.status_code == 200 and "Content-Encoding" not in plain
        assert len(plain.content) == decode_image(PNG16.read_bytes()).pixels.size * 2
    assert client.get(url, HTTP_IF_NONE_MATCH='W/"px1-other"').status_code == 200


def test_a_damaged_stored_file_answers_409_naming_the_problem(api_client_for, staff_user):
    image = RadiographFactory(content=b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    response = api_client_for(staff_user).get(reverse("api:image-pixels", args=[image.pk]))
    assert response.status_code == 409 and "cannot be decoded" in response.json()["detail"]


def test_one_audit_event_per_study_view_not_per_fetch(client, staff_user, api_client_for):
    study = StudyFactory(accession_number="ACC-VIEW-1")
    images = [RadiographFactory(study=study) for _ in range(3)]
    client.force_login(staff_user)
    assert client.get(reverse("study_detail", args=[study.pk])).status_code == 200
    # What the page then fetches: the viewer's pixels and the worklist's thumbnails.
    for image in images:
        for name in ("api:image-pixels", "api:image-pixel-data", "api:image-preview"):
            assert client.get(reverse(name, args=[image.pk])).status_code == 200
    events = AuditEvent.objects.filter(study=study)
    assert [(e.action, e.details) for e in events] == [("study.viewed", {"accession_number": "ACC-VIEW-1"})]
    # An API client has no page that recorded a view: its fetch of the pixels is audited.
    api = api_client_for(staff_user)
    assert api.get(reverse("api:image-pixel-data", args=[images[0].pk])).status_code == 200
    fetched = AuditEvent.objects.get(action="image.viewed")
    assert (fetched.object_id, fetched.details) == (str(images[0].pk), {"part": "pixels"})
    # Downloading the original is always an image view of its own.
    assert client.get(reverse("api:image-file", args=[images[1].pk])).status_code == 200
    assert AuditEvent.objects.filter(action="image.viewed", details__part="file").count() == 1
