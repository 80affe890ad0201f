"""A real Orthanc PACS (Debian packages `orthanc` and `orthanc-dicomweb`) for the PACS tests.

Each `Orthanc` runs its own server on free ports with its own storage folder; `stop()` and
`start()` keep the storage, so a test can take the PACS down during a send and bring the same
one back. Tests skip, saying why, when /usr/sbin/Orthanc is missing.
"""

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

ORTHANC = Path("/usr/sbin/Orthanc")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def missing() -> str | None:
    """Why Orthanc cannot run here, or None."""
    if not ORTHANC.exists():
        return "Orthanc is missing: apt-get install orthanc orthanc-dicomweb"
    if not DICOMWEB_PLUGIN.exists():
        return "Orthanc's DICOMweb plugin is missing: apt-get install orthanc-dicomweb"
    return None


class Orthanc:
    """One Orthanc server: DICOM on `dicom_port` (AE title `aet`), REST + DICOMweb on `http_port`."""

    def __init__(self, root: Path, *, aet: str = "ORTHANC", modalities: dict | None = None):
        self.root = root
        self.aet = aet
        self.http_port = free_port()
        self.dicom_port = free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.dicomweb_url = f"{self.url}/dicom-web"
        # Peers Orthanc may send to: {"NAME": [AET, host, port]}.
        self.modalities = dict(modalities or {})
        self.process: subprocess.Popen | None = None
        root.mkdir(parents=True, exist_ok=True)

    def _write_config(self) -> Path:
        config = {
            "Name": f"mskdetect-test-{self.aet}",
            "StorageDirectory": str(self.root / "storage"),
            "IndexDirectory": str(self.root / "storage"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.aet,
            "DicomCheckCalledAet": True,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "Plugins": [str(DICOMWEB_PLUGIN)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "DicomModalities": {name: list(peer) for name, peer in self.modalities.items()},
            # Accept every storage class, including the SR and secondary captures we send.
            "UnknownSopClassAccepted": True,
            "StableAge": 1,
        }
        path = self.root / "orthanc.json"
        path.write_text(json.dumps(config, indent=2))
        return path

    def start(self, timeout: float = 30.0) -> "Orthanc":
        config = self._write_config()
        log = (self.root / "orthanc.log").open("ab")
        self.process = subprocess.Popen([str(ORTHANC), str(config)], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited: see {self.root / 'orthanc.log'}")
            try:
                self.get("/system")
                return self
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.2)
        raise RuntimeError(f"Orthanc did not answer within {timeout} s")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    # --- REST -------------------------------------------------------------------------------
    def _request(self, method: str, path: str, body: bytes | None = None) -> bytes:
        request = urllib.request.Request(self.url + path, data=body, method=method)
        if body is not None:
            request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.read()

    def get(self, path: str):
        return json.loads(self._request("GET", path) or b"null")

    def get_bytes(self, path: str) -> bytes:
        return self._request("GET", path)

    def post(self, path: str, payload) -> object:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        answer = self._request("POST", path, body)
        return json.loads(answer) if answer else None

    def put(self, path: str, payload) -> None:
        self._request("PUT", path, json.dumps(payload).encode())

    def add_modality(self, name: str, aet: str, host: str, port: int) -> None:
        """Declare a C-STORE peer at run time (REST), e.g. the receiver under test."""
        self.put(f"/modalities/{name}", {"AET": aet, "Host": host, "Port": port})

    def instances(self) -> list[dict]:
        """Every stored instance with its main tags (simplified)."""
        return [
            self.get(f"/instances/{instance_id}/simplified-tags") | {"ID": instance_id}
            for instance_id in self.get("/instances")
        ]

    def upload(self, path: Path) -> dict:
        """Store a DICOM file in this Orthanc through its REST API."""
        return self.post("/instances", path.read_bytes())

    def file(self, instance_id: str) -> bytes:
        return self.get_bytes(f"/instances/{instance_id}/file")
