"""The Celery application; reads every CELERY_* Django setting."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mskdetect.settings.local")

app = Celery("mskdetect")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.task_routes = {"inference.tasks.*": {"queue": "inference"}}
app.autodiscover_tasks()
