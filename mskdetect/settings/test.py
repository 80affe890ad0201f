"""Test settings: fast hashing; the database and broker still come from the environment."""

from mskdetect.settings.base import *  # noqa: F403
from mskdetect.settings.base import env

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
if CELERY_BROKER_URL.startswith("filesystem"):  # noqa: F405
    # Jobs published by tests go to their own folder, never to the developer's running worker.
    _TEST_QUEUE_DIR = DATA_DIR / "test-broker"  # noqa: F405
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_TEST_QUEUE_DIR),
        "data_folder_out": str(_TEST_QUEUE_DIR),
        "processed_folder": str(_TEST_QUEUE_DIR / "processed"),
        # Broadcast (control) exchanges: kombu's default is ./control in the working directory.
        "control_folder": str(_TEST_QUEUE_DIR / "control"),
        "store_processed": False,
    }

# Lets parallel runs (several engineers, or CI beside a developer) use separate test databases.
if env("MSKDETECT_TEST_DB_NAME", default=""):
    DATABASES["default"]["TEST"] = {"NAME": env("MSKDETECT_TEST_DB_NAME")}  # noqa: F405
# Django's live test server wraps every request in a media-files handler that crashes when
# MEDIA_URL is None; this prefix is linked from nowhere (the app serves images only via its API).
MEDIA_URL = "/__test-media-not-linked__/"
