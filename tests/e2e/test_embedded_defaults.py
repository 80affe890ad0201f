"""`make run`'s embedded defaults: SQLite and kombu's filesystem broker, with a real web process
publishing and a real `celery worker` process consuming. No server to install."""

import os

import pytest

from tests.conftest import SHARED_DATA
from tests.e2e.conftest import E2E, WebServer, Worker
from tests.inference.tiny_models import write_tiny_model_dir

pytestmark = pytest.mark.integration


def test_sqlite_and_the_filesystem_broker_carry_an_upload_to_a_result(tmp_path):
    data_dir = tmp_path / "var"
    env = {
        key: value for key, value in os.environ.items() if key not in {"DATABASE_URL", "CELERY_BROKER_URL"}
    }
    env.update(
        DJANGO_SETTINGS_MODULE="mskdetect.settings.local",
        MSKDETECT_DATA_DIR=str(data_dir),
        MEDIA_ROOT=str(data_dir / "media"),
        MSKDETECT_MODEL_DIR=str(write_tiny_model_dir(tmp_path / "models")),
        TF_CPP_MIN_LOG_LEVEL="2",
        PYTHONUNBUFFERED="1",
    )
    worker = Worker(env=env, log_path=tmp_path / "worker.log")
    session = E2E(base_url="", env=env, worker=worker, log_dir=tmp_path)
    session.manage("migrate", "--noinput")
    worker.start()
    web = WebServer(env=env, log_path=tmp_path / "web.log")
    try:
        e2e = session.on(web.url)
        staff = e2e.user("embedded-staff", "staff")
        patient = staff.post(e2e.url("/api/v1/patients/"), json={"mrn": "EMB-1", "name": "Embedded Patient"})
        assert patient.status_code == 201, patient.text
        study = staff.post(
            e2e.url("/api/v1/studies/"),
            json={"patient": patient.json()["id"], "accession_number": "EMB-ACC-1", "body_part": "XR_WRIST"},
        )
        assert study.status_code == 201, study.text
        wrist = sorted((SHARED_DATA / "png16").glob("*.png"))[0]
        uploaded = staff.post(
            e2e.url(f"/api/v1/studies/{study.json()['id']}/images/"),
            files=[("file", (wrist.name, wrist.read_bytes(), "image/png"))],
        )
        assert uploaded.status_code == 201, uploaded.text

        result = e2e.wait_for_study(staff, study.json()["id"], {"predicted", "failed"})
        assert result["status"] == "predicted", result
        assert result["result"]["demo"] is True
        assert (data_dir / "db.sqlite3").is_file()
        assert (data_dir / "broker").is_dir()
    finally:
        web.stop()
        worker.stop()
