"""`/healthz`: is the database reachable, the broker reachable, which models are installed, and
are inference workers alive to serve the images waiting, and are results reaching the PACS.

No authentication and no patient data. The models are checked from `models.toml` and the file
system only (inference.registry imports Keras, and a health probe must not load TensorFlow).
"""

import logging
import tomllib
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from kombu import Connection

from studies.models import BodyPart
from studies.selectors_pacs import destination_health
from studies.selectors_receiver import SILENT, receiver_state
from studies.selectors_workers import queue_figures

logger = logging.getLogger(__name__)

OK = "ok"
ERROR = "error"
DEGRADED = "degraded"
BROKER_TIMEOUT_SECONDS = 2.0


def check_database() -> dict[str, Any]:
    """`SELECT 1` on the default database."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as exc:
        logger.warning("Health check: database unreachable: %s", exc)
        return {"status": ERROR, "error": type(exc).__name__}
    return {"status": OK, "vendor": connection.vendor}


def check_broker(*, timeout: float = BROKER_TIMEOUT_SECONDS) -> dict[str, Any]:
    """Open (and close) a connection to the Celery broker, giving up after `timeout` seconds."""
    try:
        with Connection(
            settings.CELERY_BROKER_URL,
            transport_options=dict(settings.CELERY_BROKER_TRANSPORT_OPTIONS or {}),
            connect_timeout=timeout,
        ) as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=timeout)
            transport = str(conn.transport_cls)
            if transport == "filesystem":
                _check_queue_folders(conn.transport_options)
    except Exception as exc:
        logger.warning("Health check: broker unreachable: %s", exc)
        return {"status": ERROR, "error": type(exc).__name__}
    return {"status": OK, "transport": transport}


def _check_queue_folders(options: dict[str, Any]) -> None:
    # The filesystem transport "connects" without touching the disk; the queue folder is the broker.
    for key in ("data_folder_in", "data_folder_out"):
        folder = options.get(key)
        if folder and not Path(folder).is_dir():
            raise FileNotFoundError(f"queue folder {key} does not exist")


def check_models(*, model_dir: Path | None = None) -> dict[str, Any]:
    """Each body part: whether `models.toml` configures it and whether its weight file is there."""
    model_dir = Path(model_dir or settings.MSKDETECT_MODEL_DIR)
    manifest = model_dir / "models.toml"
    try:
        entries = tomllib.loads(manifest.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {"status": ERROR, "error": "models.toml not found", "body_parts": {}}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        return {"status": ERROR, "error": f"models.toml unreadable: {type(exc).__name__}", "body_parts": {}}
    body_parts: dict[str, dict[str, Any]] = {}
    for body_part in BodyPart.values:
        entry = entries.get(body_part)
        if not isinstance(entry, dict) or not entry.get("file"):
            body_parts[body_part] = {"configured": False, "installed": False}
            continue
        body_parts[body_part] = {
            "configured": True,
            "installed": (model_dir / str(entry["file"])).is_file(),
            "demo": bool(entry.get("demo", False)),
        }
    configured = [part for part in body_parts.values() if part["configured"]]
    installed = [part for part in configured if part["installed"]]
    # Missing weights are not an outage: those body parts' images wait for a human read.
    status = OK if configured and len(installed) == len(configured) else DEGRADED
    return {
        "status": status,
        "installed": len(installed),
        "configured": len(configured),
        "body_parts": body_parts,
    }


def check_workers() -> dict[str, Any]:
    """Live inference workers (heartbeats) and the queue: `degraded` when images wait with no worker."""
    try:
        figures = queue_figures()
    except Exception as exc:
        logger.warning("Health check: worker figures unavailable: %s", exc)
        return {"status": ERROR, "error": type(exc).__name__}
    idle_queue = figures.live_workers == 0 and figures.waiting_images > 0
    return {
        "status": DEGRADED if idle_queue else OK,
        "alive": figures.live_workers,
        "waiting_images": figures.waiting_images,
        "oldest_queued_seconds": figures.oldest_waiting_seconds,
    }


def check_pacs() -> dict[str, Any]:
    """Each PACS destination results are sent to: sends pending, being retried and failed, the last
    success and the last error. Read from the send records (no C-ECHO: the probe answers at once);
    `degraded` while a destination is failing and its sends are being retried."""
    try:
        destinations = destination_health()
    except Exception as exc:
        logger.warning("Health check: PACS send figures unavailable: %s", exc)
        return {"status": ERROR, "error": type(exc).__name__}
    retrying = any(figures["retrying"] for figures in destinations.values())
    return {
        "status": DEGRADED if retrying else OK,
        "send_demo_results": settings.MSKDETECT_SEND_DEMO_RESULTS,
        "destinations": destinations,
    }


def check_dicom_receiver() -> dict[str, Any]:
    """The DICOM receiver (`manage.py dicom_receiver`) from its heartbeat: `alive`, `stopped`
    (gracefully), `silent` (stopped beating: crashed or hung; degraded) or `never_started` (this
    deployment receives nothing by DICOM), with its counters of associations and instances."""
    try:
        state = receiver_state()
    except Exception as exc:
        logger.warning("Health check: DICOM receiver figures unavailable: %s", exc)
        return {"status": ERROR, "error": type(exc).__name__}
    return {"status": DEGRADED if state["state"] == SILENT else OK, **state}


def health_report() -> dict[str, Any]:
    """The whole report; `status` is error when the database or the broker is down, degraded when
    images wait and no inference worker is alive, a PACS destination is failing or the DICOM receiver
    went silent, else ok."""
    report = {
        "database": check_database(),
        "broker": check_broker(),
        "models": check_models(),
        "workers": check_workers(),
        "pacs": check_pacs(),
        "dicom_receiver": check_dicom_receiver(),
    }
    if report["database"]["status"] != OK or report["broker"]["status"] != OK:
        status = ERROR
    elif any(report[part]["status"] != OK for part in ("workers", "pacs", "dicom_receiver")):
        status = DEGRADED
    else:
        status = OK
    return {"status": status, **report}


@never_cache
@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    """503 when the database or broker does not answer; 200 otherwise, `degraded` included (the web
    process itself serves: a load balancer must not drop it because the workers are down)."""
    report = health_report()
    return JsonResponse(report, status=503 if report["status"] == ERROR else 200)
