"""Fixtures for the PACS tests: a real Orthanc per test session, emptied before each test, and the
tiny demo model serving XR_HAND (the shared CR NM_Kakadu44 is a hand)."""

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import e2e_model_dir  # noqa: F401 (fixture used by name)
from tests.inference.tiny_models import WRIST_FILE
from tests.pacs.orthanc import Orthanc, missing


@pytest.fixture(scope="session")
def orthanc_server(tmp_path_factory) -> Iterator[Orthanc]:
    reason = missing()
    if reason:
        pytest.skip(reason)
    server = Orthanc(tmp_path_factory.mktemp("orthanc")).start()
    yield server
    server.destroy()


@pytest.fixture
def orthanc(orthanc_server) -> Orthanc:
    """The session's Orthanc, running and empty."""
    if orthanc_server.process is None:
        orthanc_server.start()
    for patient in orthanc_server.get("/patients"):
        orthanc_server._request("DELETE", f"/patients/{patient}")
    return orthanc_server


@pytest.fixture(scope="module")
def hand_model_dir(e2e_model_dir, tmp_path_factory) -> Path:  # noqa: F811
    """A model folder whose one entry, XR_HAND, is the tiny demo model."""
    directory = tmp_path_factory.mktemp("hand-models")
    shutil.copy(e2e_model_dir / WRIST_FILE, directory / WRIST_FILE)
    (directory / "models.toml").write_text(
        f'[XR_HAND]\nfile = "{WRIST_FILE}"\npreprocessing = "seed"\nlabels = ["abnormal", "normal"]\n'
        "threshold = 0.5\ndemo = true\n"
    )
    return directory
