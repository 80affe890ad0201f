"""Test settings: fast hashing; the database and broker still come from the environment."""

from mskdetect.settings.base import *  # noqa: F403

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
        "store_processed": False,
    }
