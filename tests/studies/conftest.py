"""Fixtures shared by the clinical-domain tests."""

import pytest


@pytest.fixture
def queue_dir(tmp_path, settings):
    """A kombu filesystem queue of the test's own, so broker checks see a real, empty queue."""
    folder = tmp_path / "broker"
    folder.mkdir()
    settings.CELERY_BROKER_URL = "filesystem://"
    settings.CELERY_BROKER_TRANSPORT_OPTIONS = {"data_folder_in": str(folder), "data_folder_out": str(folder)}
    return folder
