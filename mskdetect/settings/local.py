"""Developer settings: embedded SQLite and filesystem broker unless the environment says otherwise."""

from mskdetect.settings.base import *  # noqa: F403
from mskdetect.settings.base import env

DEBUG = env.bool("DJANGO_DEBUG", default=True)
