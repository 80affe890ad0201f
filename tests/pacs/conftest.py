"""Fixtures for the PACS tests: a real Orthanc per test session, emptied before each test."""

from collections.abc import Iterator

import pytest

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
