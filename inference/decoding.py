"""Decode uploaded radiographs (PNG, JPEG, DICOM) into pixels plus the metadata the upload form shows.

The format is detected from the bytes, never from the file name, and every refusal is a
``DecodeError`` subclass whose ``code`` the API can return and whose ``message`` names the problem.

What comes back (``DecodedImage.pixels``):

- PNG / JPEG: exactly what ``skimage.io.imread`` (imageio's Pillow plugin) gives for the same file:
  ``(H, W)`` uint8 gray, ``(H, W)`` uint16 for 16-bit gray, ``(H, W, 3)`` RGB, ``(H, W, 4)`` RGBA,
  palette images expanded to their palette's mode (RGB or RGBA). The seed preprocessing profile
  depends on that faithfulness. Two deliberate differences: an animated PNG gives its first frame
  (imread would stack every frame) and a CMYK JPEG is converted to RGB.
- DICOM: a display-ready MONOCHROME2 image as uint16 spanning 0..65535. The modality LUT
  (rescale slope/intercept) is applied, then the VOI transform: a window (centre/width) maps its
  output range linearly onto 0..65535; a VOI LUT sequence, or no VOI at all, is min-max stretched.
  MONOCHROME1 is inverted afterwards. Colour DICOM (RGB, YBR converted to RGB by pydicom, palette
  colour) is returned as RGB with its stored depth. A multi-frame file gives its first frame.

Modalities: projection radiographs only. CR, DX and RG are radiographs; RF and XA are projection
X-ray too (a fluoroscopy or C-arm frame of a wrist fixation is a radiograph of the wrist; the first
frame is used). OT and SC (secondary capture) are accepted because scanned films and radiographs
exported by another system arrive that way; what such a file holds is judged from its pixels
(inference.image_content refuses colour photographs and screenshots). A file with no Modality is
accepted on the same terms. Everything else (CT, MR, US, NM, PT, MG, IO, PX, ...) is refused with
its name: the classifiers were trained on musculoskeletal radiographs (MURA) and their output on a
CT slice or a mammogram would look valid and mean nothing.

Decompression bombs are refused from the header, before any pixel is decoded: Pillow's header
size, or DICOM Rows x Columns x NumberOfFrames. Pillow's own guard is set to the same default;
Pillow raises on its own above twice that, whatever ``max_pixels`` a caller passes.

No TensorFlow import here: this module runs in the web process to validate uploads.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import warnings
from dataclasses import dataclass, field
from datetime import date

import numpy as np
import pydicom
from PIL import Image
from pydicom import uid as dicom_uid
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, get_decoder, pixel_array

from inference import dicom_codecs

logger = logging.getLogger(__name__)

# 50 megapixels: a full-size 43x43 cm detector at 100 um is about 18 MP, so real radiographs pass
# with room to spare while a bomb (a few bytes claiming gigapixels) is refused.
DEFAULT_MAX_PIXELS = 50_000_000
Image.MAX_IMAGE_PIXELS = DEFAULT_MAX_PIXELS

ALLOWED_MODALITIES = frozenset({"CR", "DX", "RG", "RF", "XA", "OT", "SC"})
# Names for the refusal message (DICOM PS3.3 C.7.3.1.1.1 defined terms).
MODALITY_NAMES = {
    "CT": "computed tomography",
    "MR": "magnetic resonance",
    "US": "ultrasound",
    "NM": "nuclear medicine",
    "PT": "positron emission tomography",
    "MG": "mammography",
    "IO": "intra-oral radiography",
    "PX": "panoramic dental radiography",
    "XC": "external-camera photography",
    "ES": "endoscopy",
    "OP": "ophthalmic photography",
    "SM": "slide microscopy",
    "BMD": "bone densitometry",
    "SR": "a structured report",
    "DOC": "a document",
}

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8\xff"

# Decoding plugins in order of preference per transfer syntax. JPEG 2000: OpenJPEG through
# imagecodecs (several threads; see inference.dicom_codecs), then through pylibjpeg, GDCM and Pillow;
# JPEG-LS: CharLS (pyjpegls) before GDCM; JPEG lossless: libjpeg-turbo through imagecodecs, then
# GDCM (both BSD: no GPL codec); 12-bit JPEG: GDCM; 8-bit baseline JPEG: Pillow (libjpeg-turbo),
# then GDCM. Syntaxes not listed (uncompressed, deflated, RLE) use pydicom.
_PLUGIN_ORDER: dict[str, tuple[str, ...]] = {
    dicom_uid.JPEG2000Lossless: (dicom_codecs.PLUGIN_NAME, "pylibjpeg", "gdcm", "pillow"),
    dicom_uid.JPEG2000: (dicom_codecs.PLUGIN_NAME, "pylibjpeg", "gdcm", "pillow"),
    dicom_uid.JPEGLSLossless: ("pyjpegls", "gdcm"),
    dicom_uid.JPEGLSNearLossless: ("pyjpegls", "gdcm"),
    dicom_uid.JPEGLosslessSV1: (dicom_codecs.PLUGIN_NAME, "gdcm"),
    dicom_uid.JPEGLossless: (dicom_codecs.PLUGIN_NAME, "gdcm"),
    dicom_uid.JPEGExtended12Bit: ("gdcm", "pillow"),
    dicom_uid.JPEGBaseline8Bit: ("pillow", "gdcm"),
}


_CODEC_PLUGIN_PATH = ("inference.dicom_codecs", "_decode_frame")


def _register_codec_plugin() -> None:
    # At import, once: pydicom's add_plugin is not thread-safe, and a second call raises.
    for transfer_syntax in dicom_codecs.DECODER_DEPENDENCIES:
        with contextlib.suppress(ValueError):  # already registered (the module was reloaded)
            get_decoder(transfer_syntax).add_plugin(dicom_codecs.PLUGIN_NAME, _CODEC_PLUGIN_PATH)


_register_codec_plugin()


class DecodeError(ValueError):
    """An upload that cannot be used as a radiograph; ``code`` is stable, ``message`` is for people."""

    code = "invalid"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class EmptyFile(DecodeError):
    code = "empty"


class NotAnImage(DecodeError):
    code = "not_an_image"


class CorruptImage(DecodeError):
    code = "corrupt"


class TooManyPixels(DecodeError):
    code = "too_many_pixels"


class NoPixelData(DecodeError):
    code = "no_pixel_data"


class UnsupportedModality(DecodeError):
    code = "unsupported_modality"


@dataclass(frozen=True)
class ImageHeader:
    """What the header says, read without decoding pixels."""

    format: str
    width: int
    height: int
    frames: int = 1


@dataclass(frozen=True)
class DecodedImage:
    """Decoded pixels (as ``skimage.io.imread`` would give, MONOCHROME2) and upload metadata.

    ``bit_depth`` is the depth of the samples stored in the file (DICOM BitsStored, PNG IHDR depth).
    """

    pixels: np.ndarray
    format: str
    width: int
    height: int
    bit_depth: int
    metadata: dict[str, str] = field(default_factory=dict)


def sniff_format(data: bytes) -> str:
    """Return ``"png"``, ``"jpeg"`` or ``"dcm"`` from the leading bytes; raise ``DecodeError`` otherwise."""
    if not data:
        raise EmptyFile("The file is empty (0 bytes).")
    if data.startswith(PNG_SIGNATURE):
        return "png"
    if data.startswith(JPEG_SIGNATURE):
        return "jpeg"
    if data[128:132] == b"DICM" or _looks_like_raw_dicom(data):
        return "dcm"
    raise NotAnImage("The file is not a PNG, JPEG or DICOM image.")


def probe_image(data: bytes) -> ImageHeader:
    """Return format and size from the header alone (cheap: no pixel is decoded)."""
    fmt = sniff_format(data)
    if fmt == "dcm":
        ds = _read_dicom(data, stop_before_pixels=True)
        rows, columns, frames = _dicom_geometry(ds)
        return ImageHeader(format=fmt, width=columns, height=rows, frames=frames)
    with _open_pil(data, fmt) as im:
        return ImageHeader(format=fmt, width=im.width, height=im.height, frames=getattr(im, "n_frames", 1))


def decode_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedImage:
    """Decode PNG, JPEG or DICOM bytes; raise a ``DecodeError`` subclass naming what is wrong."""
    fmt = sniff_format(data)
    if fmt == "dcm":
        return _decode_dicom(data, max_pixels=max_pixels)
    return _decode_pil(data, fmt, max_pixels=max_pixels)


# --- PNG and JPEG -----------------------------------------------------------------------------


def _open_pil(data: bytes, fmt: str) -> Image.Image:
    pil_format = "PNG" if fmt == "png" else "JPEG"
    try:
        return Image.open(io.BytesIO(data), formats=(pil_format,))
    except Image.DecompressionBombError as exc:
        raise TooManyPixels(
            f"The {fmt.upper()} header declares more than {2 * Image.MAX_IMAGE_PIXELS:,} pixels: "
            "too large to decode safely."
        ) from exc
    except Exception as exc:  # any failure to read a header that carries a valid signature
        raise CorruptImage(f"The {fmt.upper()} file is damaged and its header cannot be read.") from exc


def _decode_pil(data: bytes, fmt: str, *, max_pixels: int) -> DecodedImage:
    with _open_pil(data, fmt) as im:
        _check_pixel_count(im.width, im.height, 1, max_pixels=max_pixels, fmt=fmt)
        bit_depth = _png_bit_depth(data) if fmt == "png" else int(getattr(im, "bits", 8))
        try:
            im.load()
            pixels = _pil_to_array(im)
        except Exception as exc:  # damaged data makes Pillow raise OSError, SyntaxError, struct.error...
            raise CorruptImage(f"The {fmt.upper()} file is truncated or corrupt: {exc}.") from exc
        return DecodedImage(
            pixels=pixels, format=fmt, width=im.width, height=im.height, bit_depth=bit_depth, metadata={}
        )


def _pil_to_array(im: Image.Image) -> np.ndarray:
    # Mirrors imageio's Pillow plugin (what skimage.io.imread calls), so that the seed profile
    # sees the very array the original Flask app saw.
    if im.mode == "P":
        im = im.convert(im.palette.mode)
    elif im.mode == "I" and im.format == "PNG":
        im = im.convert("I;16")
    elif im.mode == "CMYK":
        im = im.convert("RGB")
    return np.array(im)


def _png_bit_depth(data: bytes) -> int:
    # IHDR is always the first chunk: 8-byte signature, 8-byte chunk header, then width, height, depth.
    return data[24] if len(data) > 24 else 8


# --- DICOM ------------------------------------------------------------------------------------


def _looks_like_raw_dicom(data: bytes) -> bool:
    """A dataset written without preamble and meta header: starts with a group 0002 or 0008 tag."""
    if len(data) < 12:
        return False
    group = int.from_bytes(data[0:2], "little")
    element = int.from_bytes(data[2:4], "little")
    if group not in (0x0002, 0x0008) or element > 0x0100:
        return False
    vr = data[4:6]
    if vr.isalpha() and vr.isupper():
        return True
    # Implicit VR: a 4-byte length that fits the file.
    return int.from_bytes(data[4:8], "little") < len(data)


def _read_dicom(data: bytes, *, stop_before_pixels: bool = False) -> Dataset:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(io.BytesIO(data), force=True, stop_before_pixels=stop_before_pixels)
    except Exception as exc:  # pydicom raises many types on damaged files; none may escape an upload
        raise CorruptImage(f"The DICOM file is truncated or corrupt: {exc}.") from exc
    if len(ds) == 0:
        raise CorruptImage("The DICOM file contains no readable data elements.")
    if "TransferSyntaxUID" not in getattr(ds, "file_meta", {}):
        # A raw dataset has no meta header: its transfer syntax is the one it was read with.
        ds.file_meta = getattr(ds, "file_meta", None) or FileMetaDataset()
        is_implicit, _little = ds.original_encoding
        ds.file_meta.TransferSyntaxUID = (
            dicom_uid.ImplicitVRLittleEndian if is_implicit else dicom_uid.ExplicitVRLittleEndian
        )
    return ds


def _dicom_geometry(ds: Dataset) -> tuple[int, int, int]:
    try:
        rows = int(ds.get("Rows") or 0)
        columns = int(ds.get("Columns") or 0)
        frames = int(ds.get("NumberOfFrames") or 1)
    except (TypeError, ValueError) as exc:
        raise CorruptImage("The DICOM image size (Rows, Columns, NumberOfFrames) is unreadable.") from exc
    return rows, columns, max(frames, 1)


def _dicom_metadata(ds: Dataset) -> dict[str, str]:
    values = {
        "patient_id": ds.get("PatientID"),
        "issuer_of_patient_id": ds.get("IssuerOfPatientID"),
        "accession_number": ds.get("AccessionNumber"),
        "patient_name": ds.get("PatientName"),
        "body_part_examined": ds.get("BodyPartExamined"),
        "study_description": ds.get("StudyDescription"),
        "series_description": ds.get("SeriesDescription"),
        "modality": ds.get("Modality"),
        "study_instance_uid": ds.get("StudyInstanceUID"),
        "study_date": _iso_date(str(ds.get("StudyDate") or "")),
    }
    return {key: str(value).strip() for key, value in values.items() if value and str(value).strip()}


def _iso_date(value: str) -> str | None:
    try:
        return date(int(value[0:4]), int(value[4:6]), int(value[6:8])).isoformat()
    except ValueError:
        return None


def _check_pixel_count(width: int, height: int, frames: int, *, max_pixels: int, fmt: str) -> None:
    total = width * height * frames
    if total > max_pixels:
        frames_note = f" x {frames} frames" if frames > 1 else ""
        label = "DICOM" if fmt == "dcm" else fmt.upper()
        raise TooManyPixels(
            f"The {label} image is {width} x {height}{frames_note} = {total:,} pixels; "
            f"the limit is {max_pixels:,}."
        )


def decode_dicom_stored(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[Dataset, np.ndarray]:
    """The dataset and its first frame's stored values, before any LUT (for the viewer's
    window/level on the original depth); the same checks and refusals as ``decode_image``."""
    ds = _read_dicom(data)
    modality = str(ds.get("Modality") or "").strip().upper()
    if modality and modality not in ALLOWED_MODALITIES:
        name = f" ({MODALITY_NAMES[modality]})" if modality in MODALITY_NAMES else ""
        raise UnsupportedModality(
            f"The DICOM modality is {modality}{name}, not a projection radiograph; only CR, DX, RG, "
            "RF and XA images (or OT and SC secondary captures of them) can be analysed."
        )
    if not any(tag in ds for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise NoPixelData("The DICOM file has no pixel data (it may be a report or a structured document).")
    rows, columns, frames = _dicom_geometry(ds)
    if rows == 0 or columns == 0:
        raise CorruptImage("The DICOM file has pixel data but no image size (Rows, Columns).")
    _check_pixel_count(columns, rows, frames, max_pixels=max_pixels, fmt="dcm")
    return ds, _decode_first_frame(ds, data)


def _decode_dicom(data: bytes, *, max_pixels: int) -> DecodedImage:
    ds, raw = decode_dicom_stored(data, max_pixels=max_pixels)
    rows, columns, _frames = _dicom_geometry(ds)
    photometric = str(ds.get("PhotometricInterpretation") or "MONOCHROME2").strip().upper()
    if photometric in ("MONOCHROME1", "MONOCHROME2"):
        pixels = _display_grayscale(raw, ds, invert=photometric == "MONOCHROME1")
    elif photometric == "PALETTE COLOR":
        pixels = apply_color_lut(raw, ds)
    else:
        pixels = raw  # RGB; pydicom has already converted YBR_* to RGB
    return DecodedImage(
        pixels=np.ascontiguousarray(pixels),
        format="dcm",
        width=columns,
        height=rows,
        bit_depth=int(ds.get("BitsStored") or ds.get("BitsAllocated") or 8),
        metadata=_dicom_metadata(ds),
    )


def _decode_first_frame(ds: Dataset, data: bytes) -> np.ndarray:
    transfer_syntax = ds.file_meta.TransferSyntaxUID
    if transfer_syntax == dicom_uid.JPEGExtended12Bit and int(ds.get("BitsStored") or 8) > 8:
        return _decode_12bit_jpeg_with_gdcm(ds, data)
    try:
        decoder = get_decoder(transfer_syntax)
    except NotImplementedError as exc:
        raise CorruptImage(f"The DICOM transfer syntax {transfer_syntax} is not supported.") from exc
    available = set(decoder.available_plugins)
    plugins = [name for name in _PLUGIN_ORDER.get(transfer_syntax, ("",)) if not name or name in available]
    if not plugins:
        raise CorruptImage(f"No codec is installed for the DICOM transfer syntax {transfer_syntax.name}.")
    failures = []
    for plugin in plugins:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return pixel_array(ds, index=0, decoding_plugin=plugin)
        except Exception as exc:  # codecs raise anything from ValueError to RuntimeError
            failures.append(f"{plugin or 'pydicom'}: {exc}")
    logger.info("DICOM decoding failed: %s", "; ".join(failures))
    raise CorruptImage(
        f"The DICOM pixel data ({transfer_syntax.name}) is truncated or corrupt and cannot be decoded."
    )


def _decode_12bit_jpeg_with_gdcm(ds: Dataset, data: bytes) -> np.ndarray:
    """12-bit JPEG (process 4) through GDCM directly.

    pydicom's GDCM plugin refuses 12-bit JPEG (older GDCM wheels were built with an 8-bit libjpeg),
    and the only other pydicom plugin for it (pylibjpeg-libjpeg) is GPL. The GDCM wheel installed
    here decodes it, which the tests check against the original pixels.
    """
    import gdcm  # imported here: only this rare transfer syntax needs it

    with tempfile.NamedTemporaryFile(suffix=".dcm") as handle:
        handle.write(data)
        handle.flush()
        reader = gdcm.ImageReader()
        reader.SetFileName(handle.name)
        if not reader.Read():
            raise CorruptImage("The 12-bit JPEG DICOM file cannot be read.")
        buffer = reader.GetImage().GetBuffer()
    if not buffer:
        raise CorruptImage("The 12-bit JPEG pixel data is truncated or corrupt and cannot be decoded.")
    encoded = buffer.encode("utf-8", "surrogateescape")
    rows, columns, _frames = _dicom_geometry(ds)
    samples = int(ds.get("SamplesPerPixel") or 1)
    frame_size = rows * columns * samples
    dtype = np.int16 if ds.get("PixelRepresentation") == 1 else np.uint16
    values = np.frombuffer(encoded, dtype=dtype)
    if values.size < frame_size:
        raise CorruptImage("The 12-bit JPEG pixel data is truncated or corrupt and cannot be decoded.")
    shape = (rows, columns) if samples == 1 else (rows, columns, samples)
    return values[:frame_size].reshape(shape).copy()


def _display_grayscale(raw: np.ndarray, ds: Dataset, *, invert: bool) -> np.ndarray:
    """Modality LUT, VOI transform, then MONOCHROME1 inversion, as uint16 over 0..65535."""
    # Both transforms map each stored value independently, so they are computed once per distinct
    # value (a few thousand for 12-bit data) and applied as a table: 5x faster than on every pixel.
    lowest, highest = int(raw.min()), int(raw.max())
    use_table = np.issubdtype(raw.dtype, np.integer) and highest - lowest <= 1 << 16
    source = np.arange(lowest, highest + 1, dtype=raw.dtype) if use_table else raw
    try:
        display = apply_voi_lut(apply_modality_lut(source, ds), ds, index=0, prefer_lut=True)
        if "WindowCenter" in ds and "WindowWidth" in ds and not ds.get("VOILUTSequence"):
            # The window's own output range, found by pushing values far below and above it.
            low, high = apply_voi_lut(np.array([-1e30, 1e30]), ds, index=0, prefer_lut=True)
        else:
            low, high = float(np.min(display)), float(np.max(display))
    except Exception as exc:  # malformed LUT descriptors and window values fail in many ways
        raise CorruptImage(f"The DICOM rescale or window values are invalid: {exc}.") from exc
    span = float(high) - float(low)
    scaled = (np.asarray(display, dtype=np.float64) - float(low)) / span if span > 0 else display * 0.0
    mapped = np.rint(np.clip(scaled, 0.0, 1.0) * 65535.0).astype(np.uint16)
    if invert:
        mapped = np.uint16(65535) - mapped
    return mapped[raw.astype(np.int64) - lowest] if use_table else mapped
