"""The viewer's pixel data: a radiograph's original values, decoded once and kept beside the upload.

Uploads are content-addressed and never change, so the decoded samples are stored (gzip-compressed
little-endian uint16, the bytes the browser receives) with their metadata next to the preview
(`pixels/<upload name>.v<N>.…`). Decoding a 2048 x 2500 JPEG 2000 DICOM takes about half a second;
every later request only streams the stored file. See docs/viewer.md.
"""

import gzip
import json
from dataclasses import dataclass
from typing import Any

from django.core.files.base import ContentFile
from django.core.files.storage import default_storage

from studies.errors import ConflictError

# Bump when the stored bytes or the metadata change shape: old files are then left unused.
PIXELS_FORMAT_VERSION = 1
# Level 3 compresses a 12-bit radiograph to about half, as well as level 6, three times faster.
GZIP_LEVEL = 3


@dataclass(frozen=True)
class StoredPixels:
    """Where an upload's decoded pixels are stored, and their metadata."""

    data_name: str
    metadata: dict[str, Any]


def pixel_names(stored_name: str) -> tuple[str, str]:
    """Storage names of the metadata (JSON) and of the samples (gzip) for a stored upload."""
    base = f"pixels/{stored_name}.v{PIXELS_FORMAT_VERSION}"
    return f"{base}.json", f"{base}.u16.gz"


def pixels_etag(sha256: str) -> str:
    """A weak validator: the upload's content hash and the format version name the bytes exactly
    (weak because the same samples go out gzip-encoded or not)."""
    return f'W/"px{PIXELS_FORMAT_VERSION}-{sha256}"'


def ensure_pixels(*, stored_name: str) -> StoredPixels:
    """The decoded pixels of a stored upload, decoded on first use and kept.

    Raises ConflictError (409) when the stored file cannot be decoded: it passed the same decoder
    at upload, so only a damaged storage gets there.
    """
    meta_name, data_name = pixel_names(stored_name)
    if default_storage.exists(meta_name) and default_storage.exists(data_name):
        with default_storage.open(meta_name, "rb") as handle:
            return StoredPixels(data_name=data_name, metadata=json.loads(handle.read()))
    from inference.decoding import DecodeError
    from inference.tasks import original_pixels

    with default_storage.open(stored_name, "rb") as stored:
        data = stored.read()
    try:
        decoded = original_pixels(data)
    except DecodeError as exc:
        raise ConflictError(f"The stored image cannot be decoded: {exc.message}") from exc
    samples = decoded.samples.astype("<u2", copy=False).tobytes()
    # mtime=0: the same upload always gives the same bytes.
    _save_once(data_name, gzip.compress(samples, compresslevel=GZIP_LEVEL, mtime=0))
    # The metadata goes last: its presence says the samples are complete.
    _save_once(meta_name, json.dumps(decoded.metadata).encode())
    return StoredPixels(data_name=data_name, metadata=decoded.metadata)


def _save_once(name: str, content: bytes) -> None:
    if default_storage.exists(name):
        return
    saved = default_storage.save(name, ContentFile(content))
    if saved != name:  # a concurrent request stored the same file first
        default_storage.delete(saved)
