"""The one environment reader for settings (cookiecutter-django style)."""

from pathlib import Path

import environ

BASE_DIR = Path(__file__).resolve().parent.parent
env = environ.Env()
