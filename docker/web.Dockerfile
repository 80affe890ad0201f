# syntax=docker/dockerfile:1.7
# Application image: gunicorn (web), the one-shot migrations, celery beat, the default-queue worker
# and, on hosts without a GPU, CPU inference workers. Build context: the repository root.
#   docker build -f docker/web.Dockerfile -t mskdetect-web .
FROM python:3.11-slim-bookworm

# The media volume is shared with the GPU worker image and nginx: the same uid/gid in all three.
ARG APP_UID=1000
ARG APP_GID=1000

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DJANGO_SETTINGS_MODULE=mskdetect.settings.production \
    STATIC_ROOT=/app/staticfiles \
    MEDIA_ROOT=/srv/media \
    MSKDETECT_MODEL_DIR=/models \
    MSKDETECT_DATA_DIR=/tmp/mskdetect \
    MPLCONFIGDIR=/tmp/matplotlib \
    TF_CPP_MIN_LOG_LEVEL=2

# curl is for the health check; every Python dependency installs from a binary wheel.
RUN apt-get update \
    && apt-get install -y --no-install-recommends curl \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid "${APP_GID}" app \
    && useradd --system --uid "${APP_UID}" --gid app --home-dir /home/app --create-home \
        --shell /usr/sbin/nologin app \
    && mkdir -p /srv/media /srv/onnx /models \
    && chown app:app /srv/media /srv/onnx

WORKDIR /app
COPY requirements.txt ./
RUN pip install -r requirements.txt

COPY manage.py ./
COPY mskdetect ./mskdetect
COPY studies ./studies
COPY inference ./inference
COPY templates ./templates
COPY static ./static
COPY --chmod=755 docker/entrypoint.sh docker/wait_for_db.py docker/beat_healthcheck.py ./docker/

# Static files are collected at build time with the production settings. These values exist only
# for this command, which reads no secret, database or media file.
RUN DJANGO_SECRET_KEY=collectstatic-at-build-time-only DJANGO_ALLOWED_HOSTS=localhost \
    MEDIA_ROOT=/tmp/build-media DATABASE_URL=sqlite:////tmp/build.sqlite3 \
    python manage.py collectstatic --noinput

USER app
EXPOSE 8000
ENTRYPOINT ["/app/docker/entrypoint.sh"]
# Workers: gunicorn reads WEB_CONCURRENCY. Uploads reach gunicorn fully buffered by nginx.
CMD ["gunicorn", "mskdetect.wsgi:application", "--bind", "0.0.0.0:8000", "--worker-tmp-dir", "/dev/shm", \
     "--timeout", "120", "--access-logfile", "-"]
# Django rejects unknown Host headers, so the probe sends the first allowed host.
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
    CMD curl -fsS -o /dev/null -H "Host: ${DJANGO_ALLOWED_HOSTS%%,*}" http://127.0.0.1:8000/healthz || exit 1
