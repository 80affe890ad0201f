#!/bin/sh
# Entry point of the application images: wait until PostgreSQL accepts connections, then run the
# command (gunicorn, celery worker/beat, manage.py ...). Migrations are not run here: the one-shot
# `migrate` service runs them once, and web/workers start only after it has succeeded.
set -eu

if [ "${MSKDETECT_WAIT_FOR_DB:-1}" = "1" ]; then
    python "$(dirname "$0")/wait_for_db.py"
fi

exec "$@"
