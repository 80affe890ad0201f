# syntax=docker/dockerfile:1.7
# nginx in front of gunicorn: TLS, request buffering, and protected media via X-Accel-Redirect.
# Build context: this directory (docker/).
FROM nginx:1.28-alpine

# Uploaded files are 0640, owned by the app's uid/gid 1000: nginx's workers read them as
# members of that group (the media volume is mounted read-only here).
ARG MEDIA_GID=1000
RUN addgroup -S -g "${MEDIA_GID}" mskmedia && addgroup nginx mskmedia

COPY nginx.conf /etc/nginx/nginx.conf
