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
