"""End-to-end fixtures: a real web server process (gunicorn) and a real `celery worker` process
(with beat) on the pytest-django test database and the real broker, and users made with
`manage.py adduser`.

Run with MSKDETECT_INTEGRATION=1, DATABASE_URL=postgres://… and CELERY_BROKER_URL=redis://…
(`.ci/run` sets them). Both processes share the test database and one media folder, so what
the test sees went through HTTP, the broker and the worker, as in production.
"""

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from django.conf import settings as django_settings
from django.db import connection

from tests.conftest import REPO_ROOT
from tests.inference.tiny_models import write_tiny_model_dir

PASSWORD = "e2e-Passw0rd-not-secret"
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # Runs in the child before exec: if pytest itself is killed (no fixture teardown), the
    # kernel stops this server too, so no worker is left consuming the shared test broker.
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


WORKER_READY_SECONDS = 120


def database_url_for(settings_dict: dict) -> str:
    """A DATABASE_URL naming the database this test process really uses (test_mskdetect)."""
    user = settings_dict.get("USER") or ""
    password = settings_dict.get("PASSWORD") or ""
    credentials = f"{user}:{password}@" if password else (f"{user}@" if user else "")
    host = settings_dict.get("HOST") or "127.0.0.1"
    port = settings_dict.get("PORT") or 5432
    return f"postgres://{credentials}{host}:{port}/{settings_dict['NAME']}"


class Worker:
    """A `celery -A mskdetect worker -B` subprocess; its log is kept for failure messages."""

    def __init__(self, *, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    def start(self, *, purge: bool = True) -> None:
        """Start the worker; `purge=False` keeps what the queue holds (a stopped worker's hand-back)."""
        celery = [sys.executable, "-m", "celery", "-A", "mskdetect"]
        # Jobs left in the test broker by earlier runs or other tests belong to nobody here.
        if purge:
            subprocess.run(
                [*celery, "purge", "-f", "-Q", "inference,celery"],
                env=self.env,
                cwd=REPO_ROOT,
                check=False,
                capture_output=True,
                timeout=60,
            )
        self.log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [
                *celery,
                "worker",
                "-B",
                "-Q",
                "inference,celery",
                "--concurrency",
                "1",
                "--loglevel",
                "INFO",
                "--without-gossip",
                "--without-mingle",
                "--hostname",
                f"e2e-{os.getpid()}@%h",
            ],
            env=self.env,
            cwd=REPO_ROOT,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        deadline = time.monotonic() + WORKER_READY_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"celery worker exited early:\n{self.tail()}")
            if b" ready." in self.log_path.read_bytes():
                return
            time.sleep(0.5)
        raise RuntimeError(f"celery worker not ready after {WORKER_READY_SECONDS} s:\n{self.tail()}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        # The whole process group: the worker, its pool child and embedded beat.
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        self.log.close()

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture(scope="session")
def e2e_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture(scope="session")
def e2e_model_dir(e2e_dir) -> Path:
    return write_tiny_model_dir(e2e_dir / "models")


@pytest.fixture(scope="session")
def e2e_env(django_db_setup, django_db_blocker, e2e_dir, e2e_model_dir) -> dict[str, str]:
    """Environment for subprocesses (worker, manage.py) that share this test's database."""
    if connection.vendor != "postgresql":
        pytest.skip("end-to-end tests need DATABASE_URL=postgres://… (the worker shares the test DB)")
    with django_db_blocker.unblock():
        database_url = database_url_for(connection.settings_dict)
    # Short enough for a test to watch a lost job come back, long enough not to race an upload.
    return stack_env(
        database_url=database_url, root=e2e_dir, model_dir=e2e_model_dir, redispatch_after_seconds=2
    )


def stack_env(
    *, database_url: str, root: Path, model_dir: Path, redispatch_after_seconds: int
) -> dict[str, str]:
    """Environment for a test stack's subprocesses (worker, web server, manage.py)."""
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="mskdetect.settings.test",
        DATABASE_URL=database_url,
        CELERY_BROKER_URL=django_settings.CELERY_BROKER_URL,
        MEDIA_ROOT=str(root / "media"),
        MSKDETECT_DATA_DIR=str(root / "var"),
        MSKDETECT_MODEL_DIR=str(model_dir),
        MSKDETECT_REDISPATCH_AFTER_SECONDS=str(redispatch_after_seconds),
        MSKDETECT_REDISPATCH_EVERY_SECONDS="1",
        TF_CPP_MIN_LOG_LEVEL="2",
        PYTHONUNBUFFERED="1",
    )
    return env


# Module scope: a worker left running would take jobs meant for other test stacks on the same broker.
@pytest.fixture(scope="module")
def celery_worker_process(e2e_env, e2e_dir) -> Iterator[Worker]:
    worker = Worker(env=e2e_env, log_path=e2e_dir / "worker.log")
    worker.start()
    yield worker
    worker.stop()


class WebServer:
    """`gunicorn mskdetect.wsgi` on a free local port, in its own process."""

    def __init__(self, *, env: dict[str, str], log_path: Path) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.log = log_path.open("ab")
        self.process = subprocess.Popen(
            [
                sys.executable, "-m", "gunicorn", "mskdetect.wsgi", "--bind", f"127.0.0.1:{self.port}",
                "--workers", "1", "--threads", "4", "--timeout", "120",
            ],
            env=env, cwd=REPO_ROOT, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=_die_with_parent,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"web server exited early:\n{log_path.read_text(errors='replace')}")
            try:
                requests.get(f"{self.url}/healthz", timeout=5)
                return
            except requests.ConnectionError:
                time.sleep(0.3)
        raise RuntimeError(f"web server not answering after 60 s:\n{log_path.read_text(errors='replace')}")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=30)
        self.log.close()


@pytest.fixture(scope="module")
def web_server(e2e_env, e2e_dir) -> Iterator[WebServer]:
    server = WebServer(env=e2e_env, log_path=e2e_dir / "web.log")
    yield server
    server.stop()


@pytest.fixture
def e2e(transactional_db, web_server, celery_worker_process, e2e_env, e2e_dir):
    """One end-to-end test; the test database is emptied after it."""
    return E2E(base_url=web_server.url, env=e2e_env, worker=celery_worker_process, log_dir=e2e_dir)


class E2E:
    def __init__(self, *, base_url: str, env: dict[str, str], worker: Worker, log_dir: Path) -> None:
        self.base_url = base_url
        self.env = env
        self.worker = worker
        self.log_dir = log_dir

    def on(self, base_url: str) -> "E2E":
        """The same test, talking to another web server."""
        return E2E(base_url=base_url, env=self.env, worker=self.worker, log_dir=self.log_dir)

    def manage(self, *args: str, password: str = PASSWORD) -> str:
        """Run `manage.py` in its own process on the shared test database."""
        done = subprocess.run(
            [sys.executable, "manage.py", *args],
            env={**self.env, "MSKDETECT_PASSWORD": password},
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    def user(self, username: str, role: str) -> requests.Session:
        """Create a user over the CLI and return an HTTP session holding its API token."""
        self.manage("adduser", username, "--role", role)
        answer = requests.post(
            f"{self.base_url}/api/v1/auth/token/",
            json={"username": username, "password": PASSWORD},
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
        session = requests.Session()
        session.headers["Authorization"] = f"Token {answer.json()['token']}"
        return session

    def url(self, path: str) -> str:
        return f"{self.base_url}{path}"

    def wait_for_study(
        self, session: requests.Session, study_id: int, statuses: set[str], timeout: float = 180
    ):
        """Poll the study over HTTP until its status is one of `statuses`."""
        deadline = time.monotonic() + timeout
        body: dict = {}
        while time.monotonic() < deadline:
            answer = session.get(self.url(f"/api/v1/studies/{study_id}/"), timeout=30)
            assert answer.status_code == 200, answer.text
            body = answer.json()
            if body["status"] in statuses:
                return body
            time.sleep(0.5)
        raise AssertionError(
            f"study {study_id} still {body.get('status')!r} after {timeout} s\n"
            f"worker log:\n{self.worker.tail()}"
        )
