"""The container scripts: entrypoint (waits for the database) and the beat health check."""

import os
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import REPO_ROOT

DOCKER_DIR = REPO_ROOT / "docker"
# Port 9 (discard) on the loopback: nothing listens there, so connections are refused at once.
UNREACHABLE_POSTGRES = "postgres://mskdetect:secret@127.0.0.1:9/mskdetect"


def _run(argv: list[str], **env: str) -> subprocess.CompletedProcess:
    base = {
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "HOME": os.environ.get("HOME", "/tmp"),
        "DJANGO_SETTINGS_MODULE": "mskdetect.settings.test",
    }
    return subprocess.run(
        argv, env={**base, **env}, capture_output=True, text=True, timeout=120, cwd=REPO_ROOT
    )


def test_entrypoint_runs_the_command_once_the_database_answers(tmp_path):
    result = _run(
        [str(DOCKER_DIR / "entrypoint.sh"), "echo", "service started"],
        DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}",
        MSKDETECT_DATA_DIR=str(tmp_path),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "service started"


def test_entrypoint_gives_up_on_an_unreachable_database_without_starting_the_command(tmp_path):
    result = _run(
        [str(DOCKER_DIR / "entrypoint.sh"), "echo", "service started"],
        DATABASE_URL=UNREACHABLE_POSTGRES,
        MSKDETECT_DATA_DIR=str(tmp_path),
        MSKDETECT_WAIT_FOR_DB_SECONDS="1",
    )
    assert result.returncode == 1
    assert "service started" not in result.stdout
    assert "database unreachable after 1 s" in result.stderr


def _beat_check(schedule: Path, broker: str) -> subprocess.CompletedProcess:
    return _run(
        [
            sys.executable,
            str(DOCKER_DIR / "beat_healthcheck.py"),
            "--schedule",
            str(schedule),
            "--max-age",
            "600",
        ],
        CELERY_BROKER_URL=broker,
    )


def test_beat_is_healthy_with_a_fresh_schedule_and_a_reachable_broker(tmp_path):
    schedule = tmp_path / "celerybeat-schedule"
    schedule.write_bytes(b"written by beat")
    result = _beat_check(schedule, "memory://")
    assert result.returncode == 0, result.stderr


def test_beat_is_unhealthy_when_it_stopped_writing_its_schedule(tmp_path):
    schedule = tmp_path / "celerybeat-schedule.db"
    schedule.write_bytes(b"written by beat")
    an_hour_ago = time.time() - 3600
    os.utime(schedule, (an_hour_ago, an_hour_ago))
    result = _beat_check(tmp_path / "celerybeat-schedule", "memory://")
    assert result.returncode == 1
    assert "last written" in result.stderr


def test_beat_is_unhealthy_before_it_has_written_a_schedule(tmp_path):
    result = _beat_check(tmp_path / "celerybeat-schedule", "memory://")
    assert result.returncode == 1
    assert "no schedule file" in result.stderr


def test_beat_is_unhealthy_when_the_broker_is_unreachable(tmp_path):
    schedule = tmp_path / "celerybeat-schedule"
    schedule.write_bytes(b"written by beat")
    result = _beat_check(schedule, "redis://127.0.0.1:9/0")
    assert result.returncode == 1
    assert "broker unreachable" in result.stderr


RUN_DEV = REPO_ROOT / "scripts" / "run_dev.sh"
TF_STARTUP_LINES = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1796203730.917396    1531 port.cc:153] oneDNN custom operations are on.",
    "I0000 00:00:1796203730.918166    1531 cudart_stub.cc:31] Could not find cuda drivers on your machine",
    "E0000 00:00:1796203732.189447    1531 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error",
]
KEPT_LINES = [
    "[2026-12-02 09:31:33,069: INFO/ForkPoolWorker-1] Task inference.tasks.predict_images[1] succeeded",
    "[2026-12-02 09:31:34,709: ERROR/MainProcess] Task handler raised error: ValueError('x')",
    "E0000 00:00:1796203732.189447    1531 some_op.cc:52] a real TensorFlow error",
]


def test_make_run_filters_tensorflow_startup_noise_and_keeps_everything_else():
    # The filter the script puts on the worker's stderr, run on TensorFlow's real start-up lines.
    script = RUN_DEV.read_text()
    define = next(line for line in script.splitlines() if line.startswith("TF_NOISE="))
    result = subprocess.run(
        ["bash", "-c", f'{define}\ngrep -v -E "$TF_NOISE"'],
        input="\n".join(TF_STARTUP_LINES + KEPT_LINES) + "\n",
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.stdout.splitlines() == KEPT_LINES


def test_make_run_binds_host_and_port_from_the_environment_loopback_by_default():
    script = RUN_DEV.read_text()
    assert 'HOST="${HOST:-127.0.0.1}"' in script and 'PORT="${PORT:-8000}"' in script
    assert 'runserver "$HOST:$PORT"' in script and "0.0.0.0:8000" not in script
    # The banner names the address the server really listens on.
    banner = subprocess.run(
        ["bash", "-c", script[script.index('case "$HOST" in') : script.index("(Ctrl-C stops")] + '"'],
        env={"PATH": os.environ["PATH"], "HOST": "10.1.2.3", "PORT": "8123"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert "http://10.1.2.3:8123/" in banner.stdout, banner.stderr
