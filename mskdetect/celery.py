"""The Celery application; reads every CELERY_* Django setting."""

import os
from pathlib import Path

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mskdetect.settings.local")

app = Celery("mskdetect")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@app.on_after_configure.connect
def _make_data_folders(sender: Celery, **kwargs) -> None:
    # kombu's filesystem transport and beat's schedule file fail on a missing folder; the web
    # process (publisher) and the worker (consumer) both create them so either may start first.
    options = sender.conf.broker_transport_options or {}
    folders = [
        options[key]
        for key in ("data_folder_in", "data_folder_out", "processed_folder", "control_folder")
        if options.get(key)
    ]
    if sender.conf.beat_schedule_filename:
        folders.append(Path(sender.conf.beat_schedule_filename).parent)
    for folder in folders:
        Path(folder).mkdir(parents=True, exist_ok=True)


# Worker liveness: heartbeat, recovery at start, hand-back at stop (Celery signal handlers).
import inference.worker  # noqa: E402, F401
