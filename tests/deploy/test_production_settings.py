"""mskdetect/settings/production.py: storage switch, key rotation, client address behind nginx."""

import importlib
import secrets
import sys
from types import ModuleType
from urllib.parse import parse_qs, urlsplit

import pytest
from django.core import signing
from django.core.exceptions import ImproperlyConfigured
from django.test import RequestFactory, override_settings

REQUIRED = {
    "DJANGO_SECRET_KEY": "k" * 60,
    "DJANGO_ALLOWED_HOSTS": "mskdetect.hospital.example",
    "MEDIA_ROOT": "/srv/media",
}
S3 = {
    "MSKDETECT_STORAGE": "s3",
    "AWS_STORAGE_BUCKET_NAME": "mskdetect-media",
    "AWS_S3_ENDPOINT_URL": "https://minio.hospital.example:9000",
    "AWS_S3_ADDRESSING_STYLE": "path",
    "AWS_ACCESS_KEY_ID": "test-access-key",
    "AWS_SECRET_ACCESS_KEY": "test-secret-key",
}
CLEARED = [
    "MSKDETECT_STORAGE",
    "AWS_STORAGE_BUCKET_NAME",
    "AWS_S3_ENDPOINT_URL",
    "AWS_S3_REGION_NAME",
    "AWS_S3_ADDRESSING_STYLE",
    "DJANGO_SECRET_KEY_FALLBACKS",
    "MSKDETECT_PROTECTED_MEDIA_PREFIX",
]


def _production(monkeypatch, **env: str) -> ModuleType:
    """The production settings module, freshly evaluated under this environment."""
    for name in CLEARED:
        monkeypatch.delenv(name, raising=False)
    for name, value in {**REQUIRED, **env}.items():
        monkeypatch.setenv(name, value)
    # Re-evaluated from scratch (base too); the running test settings are not touched.
    modules = ("mskdetect.settings.production", "mskdetect.settings.base")
    saved = {name: sys.modules.pop(name) for name in modules if name in sys.modules}
    try:
        return importlib.import_module("mskdetect.settings.production")
    finally:
        for name in modules:
            sys.modules.pop(name, None)
        sys.modules.update(saved)


def test_media_defaults_to_the_file_system_served_through_nginx(monkeypatch):
    production = _production(monkeypatch, MSKDETECT_PROTECTED_MEDIA_PREFIX="/protected-media/")
    assert production.STORAGES["default"]["BACKEND"] == "django.core.files.storage.FileSystemStorage"
    assert str(production.MEDIA_ROOT) == "/srv/media"
    assert production.MSKDETECT_PROTECTED_MEDIA_PREFIX == "/protected-media/"


def test_s3_media_is_private_and_links_are_signed_and_short_lived(monkeypatch):
    from storages.backends.s3 import S3Storage

    production = _production(monkeypatch, MSKDETECT_PROTECTED_MEDIA_PREFIX="/protected-media/", **S3)
    default = production.STORAGES["default"]
    assert default["BACKEND"] == "storages.backends.s3.S3Storage"
    # nginx cannot X-Accel-Redirect into a bucket: the views must stream instead.
    assert production.MSKDETECT_PROTECTED_MEDIA_PREFIX == ""
    storage = S3Storage(**default["OPTIONS"])
    assert storage.default_acl == "private" and storage.querystring_auth is True
    url = urlsplit(storage.url("radiographs/abc.png"))
    query = parse_qs(url.query)
    assert url.netloc == "minio.hospital.example:9000"
    assert url.path == "/mskdetect-media/media/radiographs/abc.png"
    assert query["X-Amz-Credential"][0].startswith("test-access-key/")
    assert "X-Amz-Signature" in query and int(query["X-Amz-Expires"][0]) <= 300


def test_s3_without_a_bucket_or_an_unknown_storage_is_refused(monkeypatch):
    with pytest.raises(ImproperlyConfigured, match="AWS_STORAGE_BUCKET_NAME"):
        _production(monkeypatch, MSKDETECT_STORAGE="s3", AWS_STORAGE_BUCKET_NAME="")
    with pytest.raises(ImproperlyConfigured, match="MSKDETECT_STORAGE"):
        _production(monkeypatch, MSKDETECT_STORAGE="nfs")


def test_blank_s3_options_from_the_env_file_mean_unset(monkeypatch):
    production = _production(monkeypatch, **{**S3, "AWS_S3_ENDPOINT_URL": "", "AWS_S3_ADDRESSING_STYLE": ""})
    options = production.STORAGES["default"]["OPTIONS"]
    assert options["endpoint_url"] is None and options["addressing_style"] is None


def test_the_file_system_storage_needs_a_media_root(monkeypatch):
    monkeypatch.delenv("MEDIA_ROOT", raising=False)
    with pytest.raises(ImproperlyConfigured, match="MEDIA_ROOT"):
        _production(monkeypatch, MEDIA_ROOT="")


def test_data_signed_with_the_old_key_stays_valid_during_a_rotation(monkeypatch):
    old_key, new_key = secrets.token_urlsafe(50), secrets.token_urlsafe(50)
    token = signing.dumps({"session": "of a radiologist"}, key=old_key)
    rotated = _production(monkeypatch, DJANGO_SECRET_KEY=new_key, DJANGO_SECRET_KEY_FALLBACKS=old_key)
    assert [old_key] == rotated.SECRET_KEY_FALLBACKS
    with override_settings(SECRET_KEY=rotated.SECRET_KEY, SECRET_KEY_FALLBACKS=rotated.SECRET_KEY_FALLBACKS):
        assert signing.loads(token) == {"session": "of a radiologist"}
    finished = _production(monkeypatch, DJANGO_SECRET_KEY=new_key)
    with (
        override_settings(SECRET_KEY=finished.SECRET_KEY, SECRET_KEY_FALLBACKS=finished.SECRET_KEY_FALLBACKS),
        pytest.raises(signing.BadSignature),
    ):
        signing.loads(token)


def test_login_lockout_counts_failures_per_client_not_per_proxy(monkeypatch):
    from axes.helpers import get_client_ip_address

    production = _production(monkeypatch)
    request = RequestFactory().post("/login/", REMOTE_ADDR="172.18.0.9", HTTP_X_REAL_IP="10.20.30.40")
    with override_settings(AXES_CLIENT_IP_CALLABLE=production.AXES_CLIENT_IP_CALLABLE):
        assert get_client_ip_address(request) == "10.20.30.40"
    direct = _production(monkeypatch, MSKDETECT_TRUST_X_REAL_IP="false")
    with override_settings(AXES_CLIENT_IP_CALLABLE=direct.AXES_CLIENT_IP_CALLABLE):
        assert get_client_ip_address(request) == "172.18.0.9"
