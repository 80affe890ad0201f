"""/healthz: open to anyone, reports database, broker and models, and never patient data."""

import pytest

from tests.factories import PatientFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def model_dir(tmp_path, settings):
    directory = tmp_path / "models"
    directory.mkdir()
    (directory / "models.toml").write_text(
        '[XR_WRIST]\nfile = "WRIST.h5"\ndemo = true\n\n[XR_HAND]\nfile = "HAND.h5"\n', encoding="utf-8"
    )
    (directory / "WRIST.h5").write_bytes(b"weights")
    settings.MSKDETECT_MODEL_DIR = directory
    return directory


def test_healthz_reports_each_part_without_auth_or_patient_data(client, model_dir, queue_dir, settings):
    PatientFactory(name="Ada Lovelace", mrn="SECRET-MRN")
    response = client.get("/healthz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["database"]["status"] == "ok" and body["broker"]["status"] == "ok"
    parts = body["models"]["body_parts"]
    assert parts["XR_WRIST"] == {"configured": True, "installed": True, "demo": True}
    assert parts["XR_HAND"]["installed"] is False and parts["XR_ELBOW"]["configured"] is False
    assert body["models"]["status"] == "degraded"
    assert b"Lovelace" not in response.content and b"SECRET-MRN" not in response.content


def test_healthz_is_503_when_the_broker_is_unreachable(client, model_dir, settings, tmp_path):
    settings.CELERY_BROKER_URL = "filesystem://"
    settings.CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(tmp_path / "missing"),
        "data_folder_out": str(tmp_path / "missing"),
    }
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["broker"]["status"] == "error" and response.json()["database"]["status"] == "ok"


def test_models_section_says_when_the_manifest_is_missing(client, settings, tmp_path, queue_dir):
    settings.MSKDETECT_MODEL_DIR = tmp_path / "nowhere"
    body = client.get("/healthz").json()
    assert body["models"]["status"] == "error" and "models.toml" in body["models"]["error"]
