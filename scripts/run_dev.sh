#!/usr/bin/env bash
# `make run`: migrate, create the demo users, pick the models (real weights when present,
# generated demo models otherwise), then run the web server, a real Celery worker (with
# embedded beat) and the DICOM receiver in the foreground. Ctrl-C stops all three, quietly: a job
# in progress is handed back and resumes when the worker next starts.
#   HOST (default 127.0.0.1; 0.0.0.0 to be reachable from other machines), PORT (default 8000);
#   the receiver listens on HOST too, port MSKDETECT_DICOM_PORT (11112), AE MSKDETECT_DICOM_AE_TITLE.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=.venv/bin/python
HOST="${HOST:-127.0.0.1}"
PORT="${PORT:-8000}"
DICOM_PORT="${MSKDETECT_DICOM_PORT:-11112}"
DICOM_AE_TITLE="${MSKDETECT_DICOM_AE_TITLE:-MSKDETECT}"
export DJANGO_SETTINGS_MODULE="${DJANGO_SETTINGS_MODULE:-mskdetect.settings.local}"
export PYTHONUNBUFFERED=1
# TensorFlow's C++ notes (oneDNN, no CUDA driver) say nothing a user of `make run` can act on.
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
# Lines TensorFlow's C++ logging writes to stderr before Python's logging is set up: INFO and
# WARNING lines, and the CUDA probe's "failed call to cuInit" on a machine without a GPU driver.
TF_NOISE='^(WARNING: All log messages before absl::InitializeLog|[IW][0-9]{4} [0-9:.]+ +[0-9]+ |E[0-9]{4} .*(cuInit|cuda_|cudart))'
quiet_tf() { grep --line-buffered -v -E "$TF_NOISE" >&2 || true; }
# Beat's routine look for stale images, every 10 s: three INFO lines each time, none of them news.
HOUSEKEEPING='redispatch[-_]stale[-_]images'
quiet_worker() { grep --line-buffered -v -E "$TF_NOISE|$HOUSEKEEPING" >&2 || true; }
mkdir -p var

"$PY" manage.py migrate --noinput
"$PY" manage.py seed_demo

# Real weights: any weight file that models/models.toml lists is present in models/.
real_weights() {
  "$PY" - <<'PYEOF'
import sys, tomllib
from pathlib import Path
manifest = Path("models/models.toml")
if not manifest.is_file():
    sys.exit(1)
entries = tomllib.loads(manifest.read_text())
present = [e["file"] for e in entries.values() if isinstance(e, dict) and (Path("models") / e.get("file", "")).is_file()]
sys.exit(0 if present else 1)
PYEOF
}

if [ -z "${MSKDETECT_MODEL_DIR:-}" ]; then
  if real_weights; then
    export MSKDETECT_MODEL_DIR=models
  else
    export MSKDETECT_MODEL_DIR=models/demo
    if [ ! -f models/demo/models.toml ]; then
      echo "No real weights in models/: building the demo models (once, about a minute)..."
      "$PY" manage.py build_demo_models --out models/demo 2> >(quiet_tf)
    fi
  fi
fi

"$PY" - <<'PYEOF'
import os, tomllib
from pathlib import Path
model_dir = Path(os.environ["MSKDETECT_MODEL_DIR"])
manifest = model_dir / "models.toml"
entries = tomllib.loads(manifest.read_text()) if manifest.is_file() else {}
print(f"Models in use ({model_dir}):")
for body_part, entry in sorted(entries.items()):
    if not isinstance(entry, dict):
        continue
    state = "present" if (model_dir / entry.get("file", "")).is_file() else "MISSING"
    demo = "  DEMO MODEL - NOT FOR CLINICAL USE" if entry.get("demo") else ""
    print(f"  {body_part:<12} {entry.get('file', '?'):<28} {state}{demo}")
if not entries:
    print("  none: every upload will be marked unsupported")
PYEOF

# Each child runs in its own process group, so stopping it also stops what it started
# (runserver's autoreloader child, the worker's pool processes and beat).
set -m
pids=()
stop_all() {
  trap - INT TERM EXIT
  echo "Stopping the web server, the worker and the DICOM receiver..."
  # runserver: its whole group (the autoreloader's child). The worker: its main process only,
  # which stops its pool child and beat itself and hands back a job in progress. The receiver
  # lets an association in progress finish (a few seconds at most here), then exits.
  kill -TERM -- "-${pids[0]}" 2>/dev/null || true
  kill -TERM "${pids[1]}" 2>/dev/null || true
  kill -TERM "${pids[2]}" 2>/dev/null || true
  for _ in $(seq 20); do
    alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && return 0
    sleep 0.5
  done
  for pid in "${pids[@]}"; do kill -KILL -- "-$pid" 2>/dev/null || true; done
}
trap stop_all INT TERM EXIT

"$PY" manage.py runserver "$HOST:$PORT" &
pids+=($!)
.venv/bin/celery -A mskdetect worker -B -Q inference,celery --concurrency 1 --loglevel INFO 2> >(quiet_worker) &
pids+=($!)
# pynetdicom listens on IPv4: an IPv6 HOST means every interface.
case "$HOST" in *:*) dicom_bind=0.0.0.0 ;; *) dicom_bind="$HOST" ;; esac
"$PY" manage.py dicom_receiver --bind "$dicom_bind" --port "$DICOM_PORT" --grace-seconds 5 &
pids+=($!)

case "$HOST" in
  0.0.0.0 | "::") where="http://127.0.0.1:$PORT/ (listening on all interfaces, port $PORT)" ;;
  *:*) where="http://[$HOST]:$PORT/" ;;
  *) where="http://$HOST:$PORT/" ;;
esac
echo "MSK-Detect: $where; DICOM receiver $DICOM_AE_TITLE on port $DICOM_PORT  (Ctrl-C stops them all)"
# When any one exits, stop the others.
wait -n || true
