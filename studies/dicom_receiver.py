"""The DICOM receiver (`manage.py dicom_receiver`): a pynetdicom storage SCP that files what it receives.

- Verification (C-ECHO) and every storage SOP class, in every transfer syntax this installation
  can decode (uncompressed, deflated, RLE, JPEG baseline/extended/lossless, JPEG-LS, JPEG 2000,
  HTJ2K): a sender that offers several syntaxes is steered to one we can read.
- Each C-STORE goes through studies.services.dicom_ingest with the dataset exactly as received
  (pynetdicom's `encoded_dataset()`: the peer's bytes behind a proper file meta header). A refusal
  is answered with its status (A700 / A900 / C000-C002) and an error comment saying why.
- Who may send: MSKDETECT_DICOM_ALLOWED (`AllowList`); others are rejected at association
  (A-ASSOCIATE-RJ, calling AE title not recognised). Associations addressed to another AE title
  are rejected too.
- Every association runs in its own thread: each C-STORE first drops a stale database
  connection (close_old_connections) and the thread closes its own at release or abort, so
  long-running associations never hold a dead connection and ended ones never leak one.
- A heartbeat thread writes the run's row (DicomReceiverRun: alive, counters) for /healthz, and
  the duplicates of associations that ended without a release.
- `stop()` (SIGTERM, Ctrl-C): no new association is accepted, those in progress get
  `grace_seconds` to finish, then are aborted; the run is marked stopped.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime

from django.db import DatabaseError, close_old_connections, connections
from django.utils import timezone
from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification

from studies.services.dicom_ingest import (
    C_STORE,
    CANNOT_UNDERSTAND,
    OUT_OF_RESOURCES,
    DicomSource,
    InstanceRefused,
    dicom_duplicates_record,
    dicom_instance_ingest,
)
from studies.services.dicom_receivers import ReceiverFigures, dicom_receiver_beat, dicom_receiver_register

logger = logging.getLogger(__name__)

SUCCESS = 0x0000
ERROR_COMMENT_LENGTH = 64  # (0000,0902) Error Comment is LO: 64 characters at most
DNS_REFRESH_SECONDS = 300.0


def readable_transfer_syntaxes() -> list[str]:
    """Every transfer syntax pynetdicom knows whose pixel data this installation can decode."""
    from pydicom.pixels import get_decoder

    import inference.decoding  # noqa: F401  (registers the imagecodecs plugins first)

    readable = []
    for syntax in ALL_TRANSFER_SYNTAXES:
        uid = UID(syntax)
        if not uid.is_compressed:
            readable.append(syntax)
            continue
        try:
            if get_decoder(uid).is_available:
                readable.append(syntax)
        except NotImplementedError:  # no decoder exists for it at all (MPEG, JPEG XL, ...)
            continue
    return readable


# --- who may send -----------------------------------------------------------------------------
@dataclass(frozen=True)
class _Entry:
    text: str
    ae_title: str = ""  # must equal the calling AE title (empty: any)
    host: str = ""  # a host name, address or network the peer must be in (empty: any)


def _parse_entry(text: str) -> _Entry:
    # "AE@host" needs both; a bare word matches either the calling AE title or the peer's host.
    if "@" in text:
        ae_title, _, host = text.partition("@")
        return _Entry(text=text, ae_title=ae_title.strip(), host=host.strip())
    return _Entry(text=text, ae_title=text, host=text)


def _network(host: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    try:
        return ipaddress.ip_network(host.strip("[]"), strict=False)
    except ValueError:
        return None


class AllowList:
    """MSKDETECT_DICOM_ALLOWED: calling AE titles, hosts, IP addresses, CIDR networks, or AE@host.

    A bare entry allows a peer whose calling AE title is that word, or whose address is that IP
    address, in that network, or one that host name resolves to (resolved at start and every
    five minutes); `AE@host` needs both. Empty: everyone (the receiver warns at start).
    """

    def __init__(self, entries: list[str]) -> None:
        self.entries = [_parse_entry(text.strip()) for text in entries if text.strip()]
        self._resolved: dict[str, set[str]] = {}
        self._resolved_at = 0.0
        self._lock = threading.Lock()
        self.refresh()

    @property
    def open(self) -> bool:
        return not self.entries

    def refresh(self) -> None:
        """Resolve the host names again (a peer's address may change)."""
        resolved: dict[str, set[str]] = {}
        for entry in self.entries:
            if entry.host and _network(entry.host) is None:
                resolved[entry.host] = _addresses(entry.host)
        with self._lock:
            self._resolved = resolved
            self._resolved_at = time.monotonic()

    def _host_matches(self, host: str, peer: str) -> bool:
        network = _network(host)
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:
            return False
        if network is not None:
            return address in network
        with self._lock:
            return peer in self._resolved.get(host, set())

    def allows(self, *, calling_ae: str, peer: str) -> bool:
        """Whether a peer calling as `calling_ae` from address `peer` may associate."""
        if self.open:
            return True
        if time.monotonic() - self._resolved_at > DNS_REFRESH_SECONDS:
            self.refresh()
        calling_ae = calling_ae.strip()
        for entry in self.entries:
            ae_ok = not entry.ae_title or entry.ae_title == calling_ae
            host_ok = not entry.host or self._host_matches(entry.host, peer)
            if entry.ae_title == entry.host:  # a bare word: either one
                if entry.ae_title == calling_ae or self._host_matches(entry.host, peer):
                    return True
            elif ae_ok and host_ok:
                return True
        return False

    def describe(self) -> str:
        """The entries as understood, for the start-up log."""
        parts = []
        for entry in self.entries:
            if entry.ae_title != entry.host:
                parts.append(f"AE {entry.ae_title or 'any'} from {entry.host or 'any host'}")
            elif _network(entry.host) is not None:
                parts.append(f"AE {entry.text} or address {entry.host}")
            else:
                addresses = ", ".join(sorted(self._resolved.get(entry.host, ()))) or "does not resolve"
                parts.append(f"AE {entry.text} or host {entry.host} ({addresses})")
        return "; ".join(parts)


def _addresses(host: str) -> set[str]:
    try:
        return {info[4][0] for info in socket.getaddrinfo(host, None)}
    except (OSError, UnicodeError):
        return set()


# --- counters and per-association state -------------------------------------------------------
class Counters:
    """What this run has counted (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, int] = defaultdict(int)
        self._last_received_at: datetime | None = None

    def add(self, name: str, *, received: bool = False) -> None:
        with self._lock:
            self._values[name] += 1
            if received:
                self._last_received_at = timezone.now()

    def figures(self) -> ReceiverFigures:
        with self._lock:
            return ReceiverFigures(
                associations=self._values["associations"],
                associations_refused=self._values["associations_refused"],
                instances_stored=self._values["instances_stored"],
                instances_duplicate=self._values["instances_duplicate"],
                instances_refused=self._values["instances_refused"],
                last_received_at=self._last_received_at,
            )


@dataclass
class _Association:
    source: DicomSource
    stored: int = 0
    refused: int = 0
    duplicates: dict[int, list[str]] = field(default_factory=lambda: defaultdict(list))
    finished: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


def _status(code: int, comment: str = "") -> Dataset:
    answer = Dataset()
    answer.Status = code
    if comment:
        # ASCII only (the command set has no character set) and LO's 64 characters.
        text = " ".join(comment.encode("ascii", "replace").decode().split())
        answer.ErrorComment = (
            text if len(text) <= ERROR_COMMENT_LENGTH else text[: ERROR_COMMENT_LENGTH - 3] + "..."
        )
    return answer


# --- the receiver -----------------------------------------------------------------------------
class DicomReceiver:
    """A storage SCP on `port` answering as `ae_title`; `start()`, then `stop()` from another thread."""

    def __init__(
        self,
        *,
        ae_title: str,
        port: int,
        allowed: list[str],
        bind_address: str = "0.0.0.0",
        max_associations: int = 10,
        heartbeat_seconds: float = 5.0,
        grace_seconds: float = 20.0,
    ) -> None:
        self.ae_title = ae_title
        self.port = port
        self.bind_address = bind_address
        self.allow_list = AllowList(allowed)
        self.heartbeat_seconds = heartbeat_seconds
        self.grace_seconds = grace_seconds
        self.counters = Counters()
        self.run_id = uuid.uuid4().hex
        self._associations: dict[int, tuple[object, _Association]] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._heartbeat: threading.Thread | None = None
        self._server = None
        self.ae = AE(ae_title=ae_title)
        self.ae.maximum_associations = max_associations
        self.ae.require_called_aet = True
        # Peers that send nothing for this long are dropped; a slow network still has time.
        self.ae.network_timeout = 300
        self.ae.dimse_timeout = 300
        syntaxes = readable_transfer_syntaxes()
        self.ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES[:4])
        for context in AllStoragePresentationContexts:
            self.ae.add_supported_context(context.abstract_syntax, syntaxes)
        self.transfer_syntaxes = syntaxes

    # -- life cycle
    def start(self) -> None:
        """Listen (in background threads), register the run and start its heartbeat."""
        handlers = [
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_ESTABLISHED, self._on_established),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_RELEASED, self._on_finished),
            (evt.EVT_ABORTED, self._on_finished),
        ]
        self._server = self.ae.start_server(
            (self.bind_address, self.port), block=False, evt_handlers=handlers
        )
        # Every C-STORE answer is a small write: without TCP_NODELAY (inherited by the accepted
        # sockets on Linux) each waits for the sender's delayed ACK, about 40 ms per instance.
        self._server.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.port = self._server.server_address[1]
        if self.allow_list.open:
            logger.warning(
                "MSKDETECT_DICOM_ALLOWED is empty: any DICOM peer may send to %s on port %d",
                self.ae_title,
                self.port,
            )
        else:
            logger.info("Accepting associations from: %s", self.allow_list.describe())
        dicom_receiver_register(
            run_id=self.run_id,
            ae_title=self.ae_title,
            port=self.port,
            host=socket.gethostname(),
            pid=os.getpid(),
        )
        self._heartbeat = threading.Thread(
            target=self._beat_until_stopped, name="dicom-heartbeat", daemon=True
        )
        self._heartbeat.start()
        logger.info(
            "DICOM receiver %s listening on %s:%d (%d transfer syntaxes)",
            self.ae_title,
            self.bind_address,
            self.port,
            len(self.transfer_syntaxes),
        )

    def wait(self) -> None:
        """Block until `stop()` is asked for (by a signal handler, for instance)."""
        while not self._stopping.wait(1.0):
            pass

    def request_stop(self) -> None:
        self._stopping.set()

    def stop(self) -> None:
        """Stop accepting, let the associations in progress finish (then abort them), mark the run stopped."""
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
        deadline = time.monotonic() + self.grace_seconds
        while self.ae.active_associations and time.monotonic() < deadline:
            time.sleep(0.1)
        for association in self.ae.active_associations:
            logger.warning(
                "Aborting an association still open at shutdown (%s)", association.requestor.ae_title
            )
            association.abort()
        if self._heartbeat is not None:
            self._heartbeat.join(timeout=self.heartbeat_seconds + 5)
        self._sweep(everything=True)
        try:
            close_old_connections()
            dicom_receiver_beat(run_id=self.run_id, figures=self.counters.figures(), stopped=True)
        except DatabaseError:
            logger.exception("Could not mark the receiver run stopped")
        finally:
            connections.close_all()
        figures = self.counters.figures()
        logger.info(
            "DICOM receiver stopped: %d association(s), %d stored, %d duplicate(s), %d refused",
            figures.associations,
            figures.instances_stored,
            figures.instances_duplicate,
            figures.instances_refused,
        )

    def _beat_until_stopped(self) -> None:
        while not self._stopping.wait(self.heartbeat_seconds):
            try:
                close_old_connections()
                if not dicom_receiver_beat(run_id=self.run_id, figures=self.counters.figures()):
                    dicom_receiver_register(
                        run_id=self.run_id,
                        ae_title=self.ae_title,
                        port=self.port,
                        host=socket.gethostname(),
                        pid=os.getpid(),
                    )
                self._sweep(everything=False)
            except DatabaseError:
                logger.warning("Receiver heartbeat: database unavailable", exc_info=True)
        connections.close_all()

    def _sweep(self, *, everything: bool) -> None:
        # Associations whose thread ended without a release or an abort event (the peer dropped
        # the connection): their duplicates are audited here.
        with self._lock:
            ended = [
                key
                for key, (association, _) in self._associations.items()
                if everything or not association.is_alive()
            ]
            states = [self._associations.pop(key)[1] for key in ended]
        for state in states:
            self._finish(state)

    # -- event handlers (each runs in the association's thread)
    def _on_requested(self, event) -> None:
        association = event.assoc
        calling_ae = str(association.requestor.primitive.calling_ae_title).strip()
        peer = association.requestor.address
        if self.allow_list.allows(calling_ae=calling_ae, peer=peer):
            return
        self.counters.add("associations_refused")
        logger.warning(
            "Rejected an association from %s at %s: not in MSKDETECT_DICOM_ALLOWED", calling_ae, peer
        )
        # Rejected permanent, by the service user: calling AE title (and host) not recognised. As
        # pynetdicom's own ACSE does: wait until the A-ASSOCIATE-RJ is out before the socket closes.
        association.acse.send_reject(0x01, 0x01, 0x03)
        evt.trigger(association, evt.EVT_REJECTED, {})
        association.kill()

    def _on_established(self, event) -> None:
        association = event.assoc
        source = DicomSource(
            kind=C_STORE,
            calling_ae=str(association.requestor.ae_title).strip(),
            called_ae=str(association.acceptor.ae_title).strip(),
            peer=association.requestor.address,
        )
        self.counters.add("associations")
        with self._lock:
            self._associations[id(association)] = (association, _Association(source=source))

    def _state(self, association) -> _Association | None:
        with self._lock:
            entry = self._associations.get(id(association))
        return entry[1] if entry else None

    def _on_echo(self, event) -> int:
        return SUCCESS

    def _on_store(self, event) -> Dataset | int:
        state = self._state(event.assoc)
        if state is None:  # cannot happen after EVT_ESTABLISHED; answered rather than crashed
            return _status(OUT_OF_RESOURCES, "The receiver lost track of this association; send again.")
        close_old_connections()
        try:
            received = dicom_instance_ingest(
                data=event.encoded_dataset(),
                source=state.source,
                sop_instance_uid=str(event.request.AffectedSOPInstanceUID or ""),
            )
        except InstanceRefused as refusal:
            state.refused += 1
            self.counters.add("instances_refused")
            return _status(refusal.status, refusal.message)
        except (DatabaseError, OSError) as exc:
            state.refused += 1
            self.counters.add("instances_refused")
            logger.exception("Could not store an instance from %s", state.source.details())
            return _status(OUT_OF_RESOURCES, f"Not stored now ({type(exc).__name__}); send it again later.")
        except Exception as exc:  # a bug must answer the sender, not kill the association
            state.refused += 1
            self.counters.add("instances_refused")
            logger.exception("Unexpected error storing an instance from %s", state.source.details())
            return _status(CANNOT_UNDERSTAND, f"Not stored: internal error ({type(exc).__name__}).")
        if received.duplicate:
            with state.lock:
                state.duplicates[received.study_id].append(received.sop_instance_uid)
            self.counters.add("instances_duplicate", received=True)
        else:
            state.stored += 1
            self.counters.add("instances_stored", received=True)
        return SUCCESS

    def _on_finished(self, event) -> None:
        with self._lock:
            entry = self._associations.pop(id(event.assoc), None)
        if entry is not None:
            self._finish(entry[1])
        if threading.current_thread() is event.assoc:
            # The association's own thread: its database connection goes with it.
            connections.close_all()

    def _finish(self, state: _Association) -> None:
        with state.lock:
            if state.finished:
                return
            state.finished = True
            duplicates = dict(state.duplicates)
        for study_id, uids in duplicates.items():
            try:
                close_old_connections()
                dicom_duplicates_record(source=state.source, study_id=study_id, sop_instance_uids=uids)
            except DatabaseError:
                logger.exception("Could not audit %d duplicate instance(s) of study %s", len(uids), study_id)
        logger.info(
            "Association from %s at %s ended: %d stored, %d duplicate(s), %d refused",
            state.source.calling_ae,
            state.source.peer,
            state.stored,
            sum(len(uids) for uids in duplicates.values()),
            state.refused,
        )


def echo(
    *, host: str, port: int, called_ae: str, calling_ae: str = "MSKDETECT-CHECK", timeout: float = 10.0
) -> str | None:
    """C-ECHO a receiver: "echo ok", "answering, association rejected" (it is up but does not
    allow this caller), or None when nothing answers."""
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.connection_timeout = timeout
    association = ae.associate(host, port, ae_title=called_ae)
    if association.is_rejected:
        return "answering, association rejected"
    if not association.is_established:
        return None
    try:
        status = association.send_c_echo()
    finally:
        association.release()
    if status is None or status.get("Status") != SUCCESS:
        return None
    return "echo ok"
