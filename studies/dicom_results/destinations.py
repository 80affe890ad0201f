"""Where results go: C-STORE peers (`AE@host:port`) and one DICOMweb STOW-RS service.

Pure Python: mskdetect.settings imports `parse_cstore_peer` to refuse a malformed
MSKDETECT_DICOM_DESTINATIONS at start-up instead of at the first send.
"""

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

CSTORE = "cstore"
STOWRS = "stowrs"

# AE titles: at most 16 characters, no backslash or control characters (PS3.5 6.2, VR AE).
_PEER = re.compile(
    r"(?P<ae>[^@\\\x00-\x1f]{1,16})@(?P<host>\[[0-9a-fA-F:.]+\]|[A-Za-z0-9._-]+):(?P<port>\d{1,5})"
)


@dataclass(frozen=True)
class Destination:
    """One place results are sent to. `key` is what a DicomSend row records."""

    protocol: str  # CSTORE or STOWRS
    key: str  # "C-STORE PACS@10.0.0.5:104" or "STOW-RS https://pacs/dicom-web"
    ae_title: str = ""
    host: str = ""
    port: int = 0
    url: str = ""


def parse_cstore_peer(text: str) -> Destination:
    """`AE@host:port` → Destination; ValueError naming the problem when it is not that."""
    value = text.strip()
    match = _PEER.fullmatch(value)
    if match is None:
        raise ValueError(
            f"{value!r} is not a C-STORE peer: write AE@host:port, e.g. PACS@10.0.0.5:104 "
            "(AE title at most 16 characters)"
        )
    ae_title = match["ae"].strip()
    port = int(match["port"])
    if not ae_title or not 0 < port < 65536:
        raise ValueError(f"{value!r}: the AE title must not be blank and the port must be 1 to 65535")
    host = match["host"].strip("[]")
    return Destination(
        protocol=CSTORE,
        key=f"C-STORE {ae_title}@{match['host']}:{port}",
        ae_title=ae_title,
        host=host,
        port=port,
    )


def parse_stowrs_url(text: str) -> Destination:
    """The DICOMweb root (e.g. http://pacs:8042/dicom-web) → Destination; ValueError when not http(s)."""
    value = text.strip().rstrip("/")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{value!r} is not an http(s) URL of a DICOMweb service")
    if parts.username or parts.password:
        raise ValueError(
            "put the STOW-RS credentials in MSKDETECT_STOWRS_USER/MSKDETECT_STOWRS_PASSWORD or "
            "MSKDETECT_STOWRS_TOKEN, not in the URL"
        )
    return Destination(protocol=STOWRS, key=f"STOW-RS {value}", url=value)


def configured_destinations(*, cstore_peers: list[str], stowrs_url: str) -> list[Destination]:
    """Every configured destination, C-STORE peers first, in the order given; duplicates once."""
    found = [parse_cstore_peer(peer) for peer in cstore_peers if peer.strip()]
    if stowrs_url.strip():
        found.append(parse_stowrs_url(stowrs_url))
    unique: dict[str, Destination] = {}
    for destination in found:
        unique.setdefault(destination.key, destination)
    return list(unique.values())
