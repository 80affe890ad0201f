"""8-bit PNG previews of stored radiographs, for browsers (which cannot show DICOM or 16-bit PNG)."""

import io

from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from PIL import Image

PREVIEW_MAX_SIDE = 1024


def render_preview_png(*, data: bytes, max_side: int = PREVIEW_MAX_SIDE) -> bytes:
    """Decode a stored upload (PNG, JPEG or DICOM) and return a PNG no larger than max_side."""
    from inference.tasks import display_pixels

    pixels = display_pixels(data)
    if pixels.ndim == 3 and pixels.shape[2] == 4:
        pixels = pixels[:, :, :3]
    image = Image.fromarray(pixels)
    image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def preview_name(stored_name: str) -> str:
    """Where the preview of a stored upload lives (uploads are content-addressed and never change)."""
    return f"previews/{stored_name}.png"


def ensure_preview(*, stored_name: str) -> str:
    """The storage name of the upload's preview, rendered on first use and kept.

    Decoding a large JPEG 2000 DICOM takes about 0.6 s: a worklist of thumbnails must not pay
    that on every page load.
    """
    name = preview_name(stored_name)
    if not default_storage.exists(name):
        with default_storage.open(stored_name, "rb") as stored:
            png = render_preview_png(data=stored.read())
        saved = default_storage.save(name, ContentFile(png))
        if saved != name:  # a concurrent request stored the same preview first
            default_storage.delete(saved)
    return name
