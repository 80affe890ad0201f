"""Production settings: secrets and hosts have no defaults; HTTPS everywhere.

Behind nginx (docker/compose.yaml): nginx terminates TLS, sets X-Forwarded-Proto and X-Real-IP, and
serves patient images only after the app has authorised the request (X-Accel-Redirect).
"""

from pathlib import Path

from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest

from mskdetect.settings.base import *  # noqa: F403
from mskdetect.settings.base import env

SECRET_KEY = env("DJANGO_SECRET_KEY")
# Key rotation: the new key goes in DJANGO_SECRET_KEY, the old one here (comma-separated) until
# the sessions and password-reset tokens signed with it have expired. See docs/deploy.md.
SECRET_KEY_FALLBACKS = env.list("DJANGO_SECRET_KEY_FALLBACKS", default=[])
ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS")
DEBUG = False
CSRF_TRUSTED_ORIGINS = env.list("DJANGO_CSRF_TRUSTED_ORIGINS", default=[])

SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env.bool("DJANGO_SECURE_SSL_REDIRECT", default=True)
SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
SESSION_COOKIE_SECURE = True
CSRF_COOKIE_SECURE = True
SECURE_HSTS_SECONDS = env.int("DJANGO_SECURE_HSTS_SECONDS", default=60 * 60 * 24 * 365)
SECURE_HSTS_INCLUDE_SUBDOMAINS = True
SECURE_HSTS_PRELOAD = True
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"

# Gunicorn publishes no port; every request comes through nginx, which overwrites X-Real-IP with
# the peer address. Without this the login lockout would count every user's failures against the
# one nginx address. Set MSKDETECT_TRUST_X_REAL_IP=false if the app is ever reachable directly.
MSKDETECT_TRUST_X_REAL_IP = env.bool("MSKDETECT_TRUST_X_REAL_IP", default=True)


def _client_ip(request: HttpRequest) -> str | None:
    if MSKDETECT_TRUST_X_REAL_IP and request.META.get("HTTP_X_REAL_IP"):
        return request.META["HTTP_X_REAL_IP"]
    return request.META.get("REMOTE_ADDR")


AXES_CLIENT_IP_CALLABLE = _client_ip

# Media: a filesystem (a named volume shared by web, workers and nginx) or S3-compatible storage.
MSKDETECT_STORAGE = env("MSKDETECT_STORAGE", default="filesystem")
if MSKDETECT_STORAGE == "filesystem":
    if not env("MEDIA_ROOT", default=""):
        raise ImproperlyConfigured("Set MEDIA_ROOT: the directory of the shared media volume")
    MEDIA_ROOT = Path(env("MEDIA_ROOT"))
    _default_storage = {"BACKEND": "django.core.files.storage.FileSystemStorage"}
elif MSKDETECT_STORAGE == "s3":
    _bucket = env("AWS_STORAGE_BUCKET_NAME", default="")
    if not _bucket:
        raise ImproperlyConfigured("MSKDETECT_STORAGE=s3 needs AWS_STORAGE_BUCKET_NAME")
    # Credentials are not settings: django-storages/boto3 read AWS_ACCESS_KEY_ID and
    # AWS_SECRET_ACCESS_KEY from the environment, or use the instance role when they are unset.
    # An empty value (a blank line in docker/.env) means "not set", as for boto3's own variables.
    _default_storage = {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": _bucket,
            "endpoint_url": env("AWS_S3_ENDPOINT_URL", default="") or None,
            "region_name": env("AWS_S3_REGION_NAME", default="") or None,
            # MinIO and most on-premises S3 servers need path-style addressing.
            "addressing_style": env("AWS_S3_ADDRESSING_STYLE", default="") or None,
            "location": env("AWS_LOCATION", default="media"),
            "default_acl": "private",
            "querystring_auth": True,
            "querystring_expire": env.int("AWS_QUERYSTRING_EXPIRE", default=300),
            "signature_version": "s3v4",
            # An upload never replaces another file that happens to have the same name.
            "file_overwrite": False,
        },
    }
    # nginx cannot X-Accel-Redirect into a bucket: the image views stream through the storage API.
    MSKDETECT_PROTECTED_MEDIA_PREFIX = ""
else:
    raise ImproperlyConfigured(f"MSKDETECT_STORAGE must be 'filesystem' or 's3', not {MSKDETECT_STORAGE!r}")

STORAGES = {
    "default": _default_storage,
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}
