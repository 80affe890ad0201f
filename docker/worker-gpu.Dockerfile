# syntax=docker/dockerfile:1.7
# GPU inference worker: one container per GPU, consuming the `inference` queue one job at a time.
# Build context: the repository root.
#   docker build -f docker/worker-gpu.Dockerfile -t mskdetect-worker-gpu .
#
# Base: python:3.11-slim + pip `tensorflow[and-cuda]`, not tensorflow/tensorflow:*-gpu or nvidia/cuda.
# - The `and-cuda` extra installs the CUDA 12 and cuDNN 9 libraries that this TensorFlow release
#   was built and tested against, as wheels; the host needs only the NVIDIA driver and the NVIDIA
#   Container Toolkit (which mounts libcuda from the driver). An nvidia/cuda runtime base would
#   carry a second, possibly different, copy of the same libraries.
# - Same Python (3.11), same Debian and same requirements.txt pins as the web image, so the worker
#   runs exactly the code and library versions that the tests ran. The tensorflow/tensorflow
#   images bring their own Python and preinstalled packages that pip would have to reconcile.
FROM python:3.11-slim-bookworm

ARG APP_UID=1000
ARG APP_GID=1000
# Must equal the tensorflow pin in requirements.txt (tests/deploy checks it).
ARG TENSORFLOW_VERSION=2.21.0

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DJANGO_SETTINGS_MODULE=mskdetect.settings.production \
    MEDIA_ROOT=/srv/media \
    MSKDETECT_MODEL_DIR=/models \
    MSKDETECT_DATA_DIR=/tmp/mskdetect \
    MPLCONFIGDIR=/tmp/matplotlib \
    TF_CPP_MIN_LOG_LEVEL=2 \
    TF_FORCE_GPU_ALLOW_GROWTH=true \
    CUDA_CACHE_PATH=/tmp/cuda-cache \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

RUN groupadd --system --gid "${APP_GID}" app \
    && useradd --system --uid "${APP_UID}" --gid app --home-dir /home/app --create-home \
        --shell /usr/sbin/nologin app \
    && mkdir -p /srv/media /models \
    && chown app:app /srv/media

WORKDIR /app
COPY requirements.txt ./
# pip merges the two tensorflow requirements (same version, plus the extra).
RUN pip install -r requirements.txt "tensorflow[and-cuda]==${TENSORFLOW_VERSION}"

COPY manage.py ./
COPY mskdetect ./mskdetect
COPY studies ./studies
COPY inference ./inference
COPY templates ./templates
COPY --chmod=755 docker/entrypoint.sh docker/wait_for_db.py ./docker/

USER app
ENTRYPOINT ["/app/docker/entrypoint.sh"]
# prefork with one child: the child runs one job at a time on the GPU while the parent still
# answers `inspect ping` (the health check), which the solo pool cannot do during a long batch.
CMD ["celery", "-A", "mskdetect", "worker", "-Q", "inference", "--concurrency", "1", \
     "--prefetch-multiplier", "1", "-n", "gpu@%h", "--loglevel", "INFO"]
HEALTHCHECK --interval=60s --timeout=30s --start-period=60s --retries=3 \
    CMD celery -A mskdetect inspect ping -d "gpu@${HOSTNAME}" --timeout 20 || exit 1
