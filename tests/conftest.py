"""Session-wide test set-up shared by every test package."""

import os
from pathlib import Path

import pytest

from inference.shared_data import locate_shared_data

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO_ROOT = Path(__file__).resolve().parent.parent


SHARED_DATA = locate_shared_data()
INTEGRATION = os.environ.get("MSKDETECT_INTEGRATION") == "1"


def pytest_collection_modifyitems(config, items):
    if INTEGRATION:
        return
    skip = pytest.mark.skip(reason="needs MSKDETECT_INTEGRATION=1 (PostgreSQL, Redis, worker)")
    for item in items:
        if "integration" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _private_media(settings, tmp_path):
    # Every test writes uploads and heat maps under its own temporary MEDIA_ROOT.
    settings.MEDIA_ROOT = tmp_path / "media"


# --- Database fixtures: users in each role and API clients (clinical records) ---------------
@pytest.fixture
def staff_user(db):
    from tests.factories import UserFactory

    return UserFactory(username="staff", role="staff")


@pytest.fixture
def radiologist_user(db):
    from tests.factories import UserFactory

    return UserFactory(username="radiologist", role="radiologist")


@pytest.fixture
def admin_user(db):
    from tests.factories import UserFactory

    return UserFactory(username="admin", role="admin")


@pytest.fixture
def norole_user(db):
    from tests.factories import UserFactory

    return UserFactory(username="norole", role=None)


@pytest.fixture
def api_client_for(db):
    """`api_client_for(user)`: a DRF client sending that user's real API token (None: anonymous)."""
    from rest_framework.authtoken.models import Token
    from rest_framework.test import APIClient

    def make(user=None):
        client = APIClient()
        if user is not None:
            token, _ = Token.objects.get_or_create(user=user)
            client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
        return client

    return make
