"""Fault-injection fixtures: a real web server, real `celery worker` processes and a broker per test.

Each test gets its own stack (`FaultStack`): gunicorn, one worker at a time (with beat) and either
the configured Redis (`CELERY_BROKER_URL`) or a private `redis-server` the test may stop and
start. Only one worker runs at a time because a worker's beat re-dispatches *every* stale image
in the shared test database: a second worker would quietly rescue another test's images.

Run with MSKDETECT_INTEGRATION=1, DATABASE_URL=postgres://… and CELERY_BROKER_URL=redis://…
Every wait has a deadline and fails with the worker's log, so a hung pipeline fails the test.
"""

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from django.conf import settings as django_settings
from django.db import connection

from tests.conftest import SHARED_DATA
from tests.e2e.conftest import WebServer, Worker, database_url_for, stack_env
from tests.factories import PASSWORD, UserFactory
from tests.inference.tiny_models import write_tiny_model_dir

HTTP_TIMEOUT = 60
# The worker's Django connection is tagged, so a test can terminate exactly its backend.
WORKER_APPLICATION_NAME = "mskdetect-fault-worker"
SLOW_MODEL_FILE = "slow_elbow.keras"
SLOW_BODY_PART = "XR_ELBOW"
# Full-resolution convolutions: a few hundred milliseconds per image on a CPU, Grad-CAM included,
# so a test can see a job `processing` and strike while the worker is in it.
SLOW_MODEL_LAYERS = 8
SLOW_MODEL_FILTERS = 24

WRIST_PNGS = sorted((SHARED_DATA / "png16").glob("*.png"))
JPEGS = sorted((SHARED_DATA / "jpeg").glob("*.jpg"))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def write_slow_model(path: Path) -> Path:
    """A small .keras CNN (about 40 kB) whose predict takes visible time: it never downsamples."""
    import keras

    keras.utils.set_random_seed(11)
    inputs = keras.Input(shape=(224, 224, 3))
    x = inputs
    for index in range(SLOW_MODEL_LAYERS):
        x = keras.layers.Conv2D(
            SLOW_MODEL_FILTERS, 3, padding="same", activation="relu", name=f"conv{index}"
        )(x)
    pooled = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(2, activation="softmax", name="scores")(pooled)
    keras.Model(inputs, outputs, name="slow_elbow").save(path)
    return path


class RedisServer:
    """A private `redis-server` subprocess without persistence: stopping it loses what it held."""

    def __init__(self, *, log_path: Path) -> None:
        if shutil.which("redis-server") is None:
            pytest.skip("redis-server is not installed")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    def start(self, *, timeout: float = 20) -> None:
        import redis

        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--daemonize", "no"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=1)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if client.ping():
                    return
            except redis.ConnectionError:
                time.sleep(0.1)
        raise RuntimeError(f"redis-server on port {self.port} not answering after {timeout} s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None


def process_tree(pid: int) -> set[int]:
    """`pid` and all its descendants (Linux /proc), e.g. a worker, its pool child and its beat."""
    found = {pid}
    pending = [pid]
    while pending:
        for child in children(pending.pop()) - found:
            found.add(child)
            pending.append(child)
    return found


def children(pid: int) -> set[int]:
    """The direct children of `pid` (Linux /proc)."""
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found.update(int(child) for child in (task / "children").read_text().split())
        except OSError:
            continue
    return found


def maps_tensorflow(pid: int) -> bool:
    """Whether the process has TensorFlow's native library loaded (the worker's pool child, in a job)."""
    try:
        return "tensorflow" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


def pid_alive(pid: int) -> bool:
    """Running, as opposed to gone or a zombie nobody has reaped yet."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


class FaultStack:
    """One test's web server, worker(s) and broker, plus helpers that talk to them over HTTP."""

    def __init__(self, *, root: Path, env: dict[str, str]) -> None:
        self.root = root
        self.env = env
        self.web: WebServer | None = None
        self.worker: Worker | None = None
        self._workers = 0

    @property
    def base_url(self) -> str:
        assert self.web is not None
        return self.web.url

    def start_web(self) -> None:
        web_env = {**self.env, "DATABASE_URL": self.env["DATABASE_URL"].split("?")[0]}
        self.web = WebServer(env=web_env, log_path=self.root / "web.log")

    def start_worker(self, *, purge: bool = True, **overrides: str) -> Worker:
        """Start a worker (with beat); the previous one must be gone. Logs go to worker-<n>.log.

        `purge=False` keeps the queue as the previous worker of this test left it.
        """
        assert self.worker is None or self.worker.process.poll() is not None, "one worker at a time"
        self._workers += 1
        self.worker = Worker(
            env={**self.env, **overrides}, log_path=self.root / f"worker-{self._workers}.log"
        )
        self.worker.start(purge=purge)
        return self.worker

    def kill_worker(self) -> None:
        """SIGKILL the worker's whole process group (main process, pool child, beat): no cleanup runs."""
        assert self.worker is not None and self.worker.process is not None
        os.killpg(self.worker.process.pid, signal.SIGKILL)
        self.worker.process.wait(timeout=30)
        self.worker.log.close()

    def stop(self) -> None:
        if self.worker is not None:
            self.worker.stop()
        if self.web is not None:
            self.web.stop()

    def logs(self) -> str:
        tails = []
        for path in sorted(self.root.glob("*.log")):
            lines = path.read_text(errors="replace").splitlines()[-40:]
            tails.append(f"--- {path.name}\n" + "\n".join(lines))
        return "\n".join(tails)

    # HTTP, as a client of the deployed app would do it.
    def url(self, path: str) -> str:
        return f"{self.base_url}{path}"

    def client(self, username: str) -> requests.Session:
        """A staff user (made in the shared test database) and an HTTP session holding its token."""
        UserFactory(username=username, role="staff")
        answer = requests.post(
            self.url("/api/v1/auth/token/"),
            json={"username": username, "password": PASSWORD},
            timeout=HTTP_TIMEOUT,
        )
        assert answer.status_code == 200, answer.text
        session = requests.Session()
        session.headers["Authorization"] = f"Token {answer.json()['token']}"
        return session

    def patient(self, session: requests.Session, *, mrn: str) -> int:
        answer = session.post(
            self.url("/api/v1/patients/"), json={"mrn": mrn, "name": "Fault Patient", "sex": "F"},
            timeout=HTTP_TIMEOUT,
        )  # fmt: skip
        assert answer.status_code == 201, answer.text
        return answer.json()["id"]

    def study(self, session: requests.Session, *, patient: int, accession: str, body_part: str) -> int:
        answer = session.post(
            self.url("/api/v1/studies/"),
            json={"patient": patient, "accession_number": accession, "body_part": body_part},
            timeout=HTTP_TIMEOUT,
        )
        assert answer.status_code == 201, answer.text
        return answer.json()["id"]

    def upload(self, session: requests.Session, study_id: int, paths: list[Path]) -> list[int]:
        """Upload files to a study; asserts HTTP 201 and returns the new image ids."""
        files = [("file", (path.name, path.read_bytes(), "application/octet-stream")) for path in paths]
        answer = session.post(
            self.url(f"/api/v1/studies/{study_id}/images/"), files=files, timeout=HTTP_TIMEOUT
        )
        assert answer.status_code == 201, answer.text
        return [image["id"] for image in answer.json()["images"]]

    def wait_until(self, check: Callable[[], Any], *, timeout: float, what: str, every: float = 0.2) -> Any:
        """Poll `check` until it returns something truthy; fail with the logs after `timeout` s."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = check()
            if value:
                return value
            time.sleep(every)
        raise AssertionError(f"not {what} after {timeout} s\n{self.logs()}")


@pytest.fixture(scope="session")
def fault_model_dir(tmp_path_factory) -> Path:
    """Tiny wrist model, corrupt hand file (from the e2e set) and a slow elbow model."""
    model_dir = write_tiny_model_dir(tmp_path_factory.mktemp("fault-models"))
    write_slow_model(model_dir / SLOW_MODEL_FILE)
    with (model_dir / "models.toml").open("a") as manifest:
        manifest.write(
            f"""
[{SLOW_BODY_PART}]
file = "{SLOW_MODEL_FILE}"
preprocessing = "seed"
labels = ["abnormal", "normal"]
threshold = 0.5
demo = true
"""
        )
    return model_dir


@pytest.fixture(scope="session")
def fault_database_url(django_db_setup, django_db_blocker) -> str:
    if connection.vendor != "postgresql":
        pytest.skip("fault tests need DATABASE_URL=postgres://… (the worker shares the test database)")
    if not django_settings.CELERY_BROKER_URL.startswith("redis://"):
        pytest.skip("fault tests need CELERY_BROKER_URL=redis://…")
    with django_db_blocker.unblock():
        return database_url_for(connection.settings_dict)


@pytest.fixture
def fault_env(fault_database_url, fault_model_dir, tmp_path) -> dict[str, str]:
    """Environment for this test's subprocesses; the broker is the configured Redis unless replaced."""
    # Long enough that a backlog waiting in the queue is not sent again and again.
    return stack_env(
        database_url=f"{fault_database_url}?application_name={WORKER_APPLICATION_NAME}",
        root=tmp_path,
        model_dir=fault_model_dir,
        redispatch_after_seconds=5,
    )


@pytest.fixture
def fault_stack(transactional_db, fault_env, tmp_path) -> Iterator[FaultStack]:
    """A stack on the configured Redis; the test starts the web server and worker it needs."""
    stack = FaultStack(root=tmp_path, env=fault_env)
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture
def private_redis(tmp_path) -> Iterator[RedisServer]:
    """A `redis-server` of this test's own, so that stopping it disturbs nobody else."""
    server = RedisServer(log_path=tmp_path / "redis.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()
