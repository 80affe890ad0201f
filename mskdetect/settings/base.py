"""Settings shared by every environment; values come from the environment."""

from datetime import timedelta
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

from mskdetect.env import BASE_DIR, env
from studies.dicom_results.destinations import configured_destinations

DATA_DIR = Path(env("MSKDETECT_DATA_DIR", default=str(BASE_DIR / "var")))

SECRET_KEY = env("DJANGO_SECRET_KEY", default="dev-only-insecure-key-change-me")
DEBUG = env.bool("DJANGO_DEBUG", default=False)
ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "axes",
    "studies",
    "inference",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    # Django's SessionMiddleware, but a page's background poll does not keep an idle session alive
    # (studies.idle_sessions), and a request racing a logout ends cleanly (studies.session_end).
    "studies.session_end.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "studies.middleware.ContentSecurityPolicyMiddleware",
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "mskdetect.urls"
WSGI_APPLICATION = "mskdetect.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": env.db("DATABASE_URL", default=f"sqlite:///{DATA_DIR / 'db.sqlite3'}"),
}
DATABASES["default"]["ATOMIC_REQUESTS"] = False
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The web server and the worker write the same file: wait for locks instead of failing.
    DATABASES["default"]["OPTIONS"] = {"timeout": 30, "transaction_mode": "IMMEDIATE"}
    # The embedded database lives in the data dir; a fresh checkout has none yet.
    Path(DATABASES["default"]["NAME"]).parent.mkdir(parents=True, exist_ok=True)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "worklist"
LOGOUT_REDIRECT_URL = "login"

# Sessions end after inactivity: each request pushes the expiry forward.
SESSION_COOKIE_AGE = env.int("MSKDETECT_SESSION_IDLE_SECONDS", default=30 * 60)
SESSION_SAVE_EVERY_REQUEST = True
SESSION_EXPIRE_AT_BROWSER_CLOSE = True
SESSION_COOKIE_HTTPONLY = True

# Login lockout (django-axes): by username and IP, for the API token endpoint and the login page.
AXES_FAILURE_LIMIT = env.int("MSKDETECT_LOGIN_FAILURE_LIMIT", default=5)
AXES_COOLOFF_TIME = timedelta(minutes=env.int("MSKDETECT_LOGIN_COOLOFF_MINUTES", default=15))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_VERBOSE = False

LANGUAGE_CODE = "en-gb"
TIME_ZONE = env("TIME_ZONE", default="UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = Path(env("STATIC_ROOT", default=str(DATA_DIR / "staticfiles")))

# Patient images are private: MEDIA_ROOT is never routed; files are served by an
# authenticated view (and by nginx X-Accel-Redirect in production, after that view).
MEDIA_ROOT = Path(env("MEDIA_ROOT", default=str(DATA_DIR / "media")))
MEDIA_URL = None
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
FILE_UPLOAD_PERMISSIONS = 0o640
DATA_UPLOAD_MAX_MEMORY_SIZE = 10 * 1024 * 1024
MSKDETECT_MAX_UPLOAD_BYTES = env.int("MSKDETECT_MAX_UPLOAD_BYTES", default=200 * 1024 * 1024)
MSKDETECT_MAX_PIXELS = env.int("MSKDETECT_MAX_PIXELS", default=50_000_000)
MSKDETECT_MODEL_DIR = Path(env("MSKDETECT_MODEL_DIR", default=str(BASE_DIR / "models")))
MSKDETECT_BATCH_SIZE = env.int("MSKDETECT_BATCH_SIZE", default=16)
# Forward-pass engine of the worker: "keras" (TensorFlow; GPU workers) or "onnx" (ONNX Runtime,
# about 1.25x faster on CPU workers; converted once into MSKDETECT_ONNX_DIR, checked against Keras).
MSKDETECT_RUNTIME = env.str("MSKDETECT_RUNTIME", default="keras")
if MSKDETECT_RUNTIME not in ("keras", "onnx"):
    raise ImproperlyConfigured(f"MSKDETECT_RUNTIME={MSKDETECT_RUNTIME!r}: expected keras or onnx")
MSKDETECT_ONNX_DIR = Path(env("MSKDETECT_ONNX_DIR", default=str(DATA_DIR / "onnx")))
MSKDETECT_PROTECTED_MEDIA_PREFIX = env("MSKDETECT_PROTECTED_MEDIA_PREFIX", default="")

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.SessionAuthentication",
        "rest_framework.authentication.TokenAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_SCHEMA_CLASS": "studies.schema.ApiSchema",
    "TEST_REQUEST_DEFAULT_FORMAT": "json",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "MSK-Detect API",
    "DESCRIPTION": "Musculoskeletal radiograph triage: patients, studies, images, reviews.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # Operation ids and tags are named after the path below /api/v1 (the DICOMweb paths sit beside it).
    "SCHEMA_PATH_PREFIX": r"/api/v1",
    # One schema name per choice set: the same choices appear on several serializers.
    "ENUM_NAME_OVERRIDES": {
        "LabelEnum": "studies.models.Label",
        "ResultLabelEnum": "studies.models.ResultLabel",
        "StudyStatusEnum": "studies.models.StudyStatus",
        "ImageStatusEnum": "studies.models.ImageStatus",
        "DicomSendStatusEnum": "studies.models.DicomSendStatus",
        "DicomSendProtocolEnum": "studies.models.DicomSendProtocol",
        "DicomExportTriggerEnum": "studies.models.DicomExportTrigger",
    },
}

# Celery. The embedded default is kombu's filesystem transport: a real queue on disk and a
# real worker process, with no server to run. Production points this at Redis.
CELERY_BROKER_URL = env("CELERY_BROKER_URL", default="filesystem://")
_QUEUE_DIR = DATA_DIR / "broker"
CELERY_BROKER_TRANSPORT_OPTIONS = (
    {
        "data_folder_in": str(_QUEUE_DIR),
        "data_folder_out": str(_QUEUE_DIR),
        "processed_folder": str(_QUEUE_DIR / "processed"),
        # Broadcast (control) exchanges: kombu's default is ./control in the working directory.
        "control_folder": str(_QUEUE_DIR / "control"),
        "store_processed": False,
    }
    if CELERY_BROKER_URL.startswith("filesystem")
    # Redis re-delivers an unacknowledged task after this long: longer than the hard limit.
    else {"visibility_timeout": 3600}
)
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SOFT_TIME_LIMIT = env.int("MSKDETECT_TASK_SOFT_TIME_LIMIT", default=600)
CELERY_TASK_TIME_LIMIT = env.int("MSKDETECT_TASK_TIME_LIMIT", default=660)
CELERY_TASK_ALWAYS_EAGER = False
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Images left queued longer than this are sent again by the periodic re-dispatch.
MSKDETECT_REDISPATCH_AFTER_SECONDS = env.int("MSKDETECT_REDISPATCH_AFTER_SECONDS", default=120)
# How often beat looks for lost jobs and dead workers' claims (a few indexed queries).
MSKDETECT_REDISPATCH_EVERY_SECONDS = env.float("MSKDETECT_REDISPATCH_EVERY_SECONDS", default=10.0)
# Worker liveness: each worker writes a heartbeat this often; one silent for DEAD_AFTER (several
# missed beats) is gone, and the re-dispatch takes its claims back at once.
MSKDETECT_WORKER_HEARTBEAT_SECONDS = env.float("MSKDETECT_WORKER_HEARTBEAT_SECONDS", default=5.0)
MSKDETECT_WORKER_DEAD_AFTER_SECONDS = env.float("MSKDETECT_WORKER_DEAD_AFTER_SECONDS", default=20.0)
# The last resort: a `processing` claim older than the hard time limit plus this is dead even if
# its worker still beats (a job hung beyond the pool's reach).
MSKDETECT_CLAIM_GRACE_SECONDS = env.int("MSKDETECT_CLAIM_GRACE_SECONDS", default=60)
# The study page says "Stalled: waiting for a worker" when a queued/processing study has not moved
# for this long and no live worker holds its images.
MSKDETECT_STALLED_AFTER_SECONDS = env.int("MSKDETECT_STALLED_AFTER_SECONDS", default=60)
CELERY_TASK_ROUTES = {
    "inference.tasks.predict_images": {"queue": "inference"},
    # On the default queue, so a long backlog of predictions never delays the re-dispatch.
    "inference.tasks.redispatch_stale_images": {"queue": "celery"},
    # Sending results to the PACS never waits behind a backlog of predictions.
    "studies.tasks.send_dicom_results": {"queue": "celery"},
    "studies.tasks.dispatch_due_pacs_sends": {"queue": "celery"},
}
CELERY_BEAT_SCHEDULE = {
    "redispatch-stale-images": {
        "task": "inference.tasks.redispatch_stale_images",
        "schedule": MSKDETECT_REDISPATCH_EVERY_SECONDS,
    },
    # PACS sends whose retry is due but whose message was lost (broker down, worker gone).
    "dispatch-due-pacs-sends": {
        "task": "studies.tasks.dispatch_due_pacs_sends",
        "schedule": MSKDETECT_REDISPATCH_EVERY_SECONDS,
    },
}
CELERY_BEAT_SCHEDULE_FILENAME = str(DATA_DIR / "celerybeat-schedule")
# Fail fast when the broker is unreachable: uploads must not wait on it.
CELERY_BROKER_CONNECTION_TIMEOUT = env.float("MSKDETECT_BROKER_CONNECTION_TIMEOUT", default=2.0)

# --- Receiving by DICOM (`manage.py dicom_receiver`, STOW-RS at /dicomweb/studies) ------------
MSKDETECT_DICOM_AE_TITLE = env.str("MSKDETECT_DICOM_AE_TITLE", default="MSKDETECT").strip()
if not 0 < len(MSKDETECT_DICOM_AE_TITLE) <= 16 or "\\" in MSKDETECT_DICOM_AE_TITLE:
    raise ImproperlyConfigured(
        f"MSKDETECT_DICOM_AE_TITLE={MSKDETECT_DICOM_AE_TITLE!r}: 1 to 16 characters, no backslash"
    )
MSKDETECT_DICOM_PORT = env.int("MSKDETECT_DICOM_PORT", default=11112)
# Calling AE titles, hosts, IP addresses or CIDR networks (and AE@host pairs) allowed to send;
# empty: any peer (the receiver logs a warning at start).
MSKDETECT_DICOM_ALLOWED = env.list("MSKDETECT_DICOM_ALLOWED", default=[])
# IssuerOfPatientID values that mean "this hospital's MRNs" (stored as a blank issuer).
MSKDETECT_DICOM_LOCAL_ISSUERS = env.list("MSKDETECT_DICOM_LOCAL_ISSUERS", default=[])
MSKDETECT_DICOM_MAX_ASSOCIATIONS = env.int("MSKDETECT_DICOM_MAX_ASSOCIATIONS", default=10)
# The receiver's heartbeat (/healthz: alive, or silent for DEAD_AFTER seconds).
MSKDETECT_DICOM_HEARTBEAT_SECONDS = env.float("MSKDETECT_DICOM_HEARTBEAT_SECONDS", default=5.0)
MSKDETECT_DICOM_DEAD_AFTER_SECONDS = env.float("MSKDETECT_DICOM_DEAD_AFTER_SECONDS", default=30.0)
# Largest STOW-RS request body (each instance in it is also held to MSKDETECT_MAX_UPLOAD_BYTES).
MSKDETECT_STOWRS_MAX_BYTES = env.int("MSKDETECT_STOWRS_MAX_BYTES", default=256 * 1024 * 1024)

# --- Sending results back to the PACS (studies.services.pacs_sends; our AE title is the one above) --
# C-STORE peers, `AE@host:port`, comma-separated.
MSKDETECT_DICOM_DESTINATIONS = env.list("MSKDETECT_DICOM_DESTINATIONS", default=[])
# A DICOMweb root (results are POSTed to <root>/studies/<StudyInstanceUID>). Credentials never go in
# the URL: a bearer token, or a user and password (HTTP basic).
MSKDETECT_STOWRS_DESTINATION = env.str("MSKDETECT_STOWRS_DESTINATION", default="")
MSKDETECT_STOWRS_TOKEN = env.str("MSKDETECT_STOWRS_TOKEN", default="")
MSKDETECT_STOWRS_USER = env.str("MSKDETECT_STOWRS_USER", default="")
MSKDETECT_STOWRS_PASSWORD = env.str("MSKDETECT_STOWRS_PASSWORD", default="")
try:
    configured_destinations(
        cstore_peers=MSKDETECT_DICOM_DESTINATIONS, stowrs_url=MSKDETECT_STOWRS_DESTINATION
    )
except ValueError as _error:
    raise ImproperlyConfigured(f"PACS destinations: {_error}") from _error
# Results of demo models stay here (recorded "not sent: demo model") unless this is on.
MSKDETECT_SEND_DEMO_RESULTS = env.bool("MSKDETECT_SEND_DEMO_RESULTS", default=False)
# A destination that is down: retried after RETRY seconds, doubling up to RETRY_MAX, until
# GIVE_UP_AFTER seconds have passed; then the send is "failed" and staff can send it again.
MSKDETECT_PACS_RETRY_SECONDS = env.float("MSKDETECT_PACS_RETRY_SECONDS", default=30.0)
MSKDETECT_PACS_RETRY_MAX_SECONDS = env.float("MSKDETECT_PACS_RETRY_MAX_SECONDS", default=600.0)
MSKDETECT_PACS_GIVE_UP_AFTER_SECONDS = env.float("MSKDETECT_PACS_GIVE_UP_AFTER_SECONDS", default=24 * 3600.0)
# Connect, association and per-request timeout towards a destination.
MSKDETECT_PACS_TIMEOUT_SECONDS = env.float("MSKDETECT_PACS_TIMEOUT_SECONDS", default=30.0)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env("LOG_LEVEL", default="INFO")},
    # axes logs every successful login's counter reset at INFO; lockouts are WARNING.
    # highdicom logs every module it copies and pynetdicom every PDU at INFO: one send would print dozens.
    "loggers": {
        "axes": {"level": "WARNING"},
        "highdicom": {"level": "WARNING"},
        "pynetdicom": {"level": "WARNING"},
    },
}
