"""The inference worker's life cycle: heartbeat, recovery when it starts, hand-back when it stops.

Connected to Celery's signals (mskdetect/celery.py imports this module), so it runs in every
worker, on the embedded defaults (SQLite, filesystem broker) as on PostgreSQL and Redis:

main process
  worker_init           a new worker id (MSKDETECT_WORKER_ID, inherited by the pool children, who
                        record it on their claims), its row registered, a heartbeat thread started.
  worker_ready          predecessors of this node name on this host whose process is gone are marked
                        stopped, and the re-dispatch runs at once: a new worker takes back the
                        claims of a dead one without waiting for beat or for the broker.
  worker_shutting_down  SIGTERM is passed on to the pool children, so the job in progress hands its
                        claims back at once instead of being waited for.
  worker_shutdown       any claim still held is handed back and sent again; the row marked stopped.
pool child
  worker_process_init   TensorFlow is imported in a background thread (the first job after a
                        restart does not pay for it); SIGTERM is ignored while idle and raises
                        WorkerStopping during a job (job_running).
"""

import contextlib
import logging
import os
import signal
import socket
import threading
import uuid
from collections.abc import Iterator

from celery import signals

logger = logging.getLogger(__name__)

WORKER_ID_VARIABLE = "MSKDETECT_WORKER_ID"
INFERENCE_QUEUE = "inference"


class WorkerStopping(BaseException):
    """Raised in a pool child's job when its worker is being stopped: hand back, then return.

    A BaseException, so that no `except Exception` on the way swallows it.
    """


def current_worker_id() -> str:
    """The id of the worker this process belongs to ("" outside a worker: no liveness then)."""
    return os.environ.get(WORKER_ID_VARIABLE, "")


# --- main process ---------------------------------------------------------------------------------
class _Heartbeat(threading.Thread):
    def __init__(self, *, worker_id: str, nodename: str, interval: float) -> None:
        super().__init__(name="mskdetect-heartbeat", daemon=True)
        self.worker_id = worker_id
        self.nodename = nodename
        self.interval = interval
        self.stopped = threading.Event()
        self._failing = False

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            self.beat()

    def beat(self) -> None:
        from django.db import connections

        from studies.services.workers import inference_worker_beat, inference_worker_register

        try:
            if not inference_worker_beat(worker_id=self.worker_id):
                # The row went missing (database restored, or registration failed at start).
                inference_worker_register(
                    worker_id=self.worker_id,
                    nodename=self.nodename,
                    host=socket.gethostname(),
                    pid=os.getpid(),
                )
            if self._failing:
                logger.info("Worker heartbeat recorded again")
            self._failing = False
        except Exception as exc:
            if not self._failing:
                logger.warning("Worker heartbeat not recorded (will keep trying): %s", exc)
            self._failing = True
        finally:
            # Never an open connection in this thread when the pool forks a child.
            connections.close_all()


class _State:
    worker = None  # the WorkController
    worker_id = ""
    heartbeat: _Heartbeat | None = None


def _consumes_inference(worker) -> bool:
    consume_from = worker.app.amqp.queues.consume_from
    return not consume_from or INFERENCE_QUEUE in consume_from


@signals.worker_init.connect
def _on_worker_init(sender=None, **kwargs) -> None:
    from django.conf import settings

    if sender is None or not _consumes_inference(sender):
        return
    _State.worker = sender
    _State.worker_id = uuid.uuid4().hex
    os.environ[WORKER_ID_VARIABLE] = _State.worker_id  # before the pool forks its children
    _State.heartbeat = _Heartbeat(
        worker_id=_State.worker_id,
        nodename=sender.hostname,
        interval=settings.MSKDETECT_WORKER_HEARTBEAT_SECONDS,
    )
    _State.heartbeat.beat()  # registers the row before any job can be claimed
    _State.heartbeat.start()


@signals.worker_ready.connect
def _on_worker_ready(sender=None, **kwargs) -> None:
    if not _State.worker_id:
        return
    from django.db import connections

    try:
        _retire_predecessors(nodename=_State.worker.hostname)
        from inference.tasks import redispatch_stale_images

        redispatch_stale_images()
    except Exception:
        logger.exception("Recovery at start failed; beat's periodic re-dispatch will do it")
    finally:
        connections.close_all()


def _retire_predecessors(*, nodename: str) -> None:
    # A node name runs one worker per host: an earlier run of it whose process is gone was
    # killed (no graceful stop marked it). Its claims are dead now, not after its last beat expires.
    from studies.models import InferenceWorker
    from studies.services.workers import inference_workers_stop

    host = socket.gethostname()
    earlier = InferenceWorker.objects.filter(nodename=nodename, host=host, stopped_at__isnull=True).exclude(
        worker_id=_State.worker_id
    )
    gone = [worker_id for worker_id, pid in earlier.values_list("worker_id", "pid") if not _pid_running(pid)]
    if gone:
        inference_workers_stop(worker_ids=gone)
        logger.info("Earlier run(s) of %s found dead; their claims are taken back", nodename)


def _pid_running(pid: int) -> bool:
    if pid == os.getpid():
        return False  # the same pid on this host is this new process, not the old one
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@signals.worker_shutting_down.connect
def _on_worker_shutting_down(sender=None, **kwargs) -> None:
    if _State.worker is None:
        return
    # In a signal handler: only pass the signal on. A child in a job hands back its claims.
    try:
        children = _State.worker.pool.info.get("processes", [])
    except Exception:
        children = []
    for pid in children:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)


@signals.worker_shutdown.connect
def _on_worker_shutdown(sender=None, **kwargs) -> None:
    if not _State.worker_id:
        return
    from django.db import connections

    from studies.services.workers import inference_workers_stop

    if _State.heartbeat is not None:
        _State.heartbeat.stopped.set()
    try:
        # A child killed before it could hand back leaves its claims under this worker's id.
        from inference.tasks import hand_back_claims

        hand_back_claims(worker_id=_State.worker_id)
        inference_workers_stop(worker_ids=[_State.worker_id])
    except Exception:
        logger.exception("Could not hand back this worker's claims; the re-dispatch will take them back")
    finally:
        connections.close_all()


# --- pool child -----------------------------------------------------------------------------------
class _Child:
    in_job = False
    stopping = False
    warm_up: threading.Thread | None = None


def _on_child_sigterm(signum, frame) -> None:
    # Idle, or already stopping (the group's SIGTERM and the one the main process passes on):
    # nothing to do; the main process ends this child cleanly with its own shutdown.
    if _Child.in_job and not _Child.stopping:
        _Child.stopping = True
        raise WorkerStopping()


def _import_tensorflow() -> None:
    try:
        import inference.predictor  # noqa: F401  (TensorFlow and Keras)
    except Exception:
        logger.exception("TensorFlow warm-up failed; the first job will import it")


@signals.worker_process_init.connect
def _on_worker_process_init(**kwargs) -> None:
    if not current_worker_id():
        return
    # Ignored until a job starts (billiard replaces any other handler after this signal; an ignored
    # SIGTERM it leaves alone): an idle child is ended by the main process, never by SIGTERM,
    # so a stop logs no "exited with signal 15".
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # The pool waits only a few seconds for a new child: import in the background.
    _Child.warm_up = threading.Thread(target=_import_tensorflow, name="mskdetect-warm-up", daemon=True)
    _Child.warm_up.start()


def wait_for_warm_up() -> None:
    """Let the background TensorFlow import finish before a job imports it (no import race)."""
    if _Child.warm_up is not None:
        _Child.warm_up.join()


@contextlib.contextmanager
def job_running() -> Iterator[None]:
    """Marks a job in progress: SIGTERM raises WorkerStopping inside it instead of exiting."""
    if current_worker_id() and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_child_sigterm)
    _Child.in_job, _Child.stopping = True, False
    try:
        yield
    finally:
        _Child.in_job = False
