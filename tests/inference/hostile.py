"""Generators of image files for decoding tests: hostile uploads and synthetic DICOM.

Every generator returns bytes built in memory, so tests need no fixture files in the repo.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid


def png_bytes(array: np.ndarray, *, mode: str | None = None, **save_args: object) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buffer, format="PNG", **save_args)
    return buffer.getvalue()


def jpeg_bytes(array: np.ndarray, *, quality: int = 95) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def gradient(height: int = 40, width: int = 50) -> np.ndarray:
    """An 8-bit gray ramp with structure in both directions (so resizing bugs show)."""
    rows = np.arange(height)[:, np.newaxis] * 3
    columns = np.arange(width)[np.newaxis, :] * 5
    return ((rows + columns) % 256).astype(np.uint8)


# --- hostile files ----------------------------------------------------------------------------


def zero_bytes() -> bytes:
    return b""


def random_bytes(size: int = 4096, *, seed: int = 7) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()


def text_file() -> bytes:
    return b"Patient: Doe, John\nFindings: no fracture.\n" * 20


def html_renamed_png() -> bytes:
    return b"<!DOCTYPE html><html><head><title>x.png</title></head><body><img src=x></body></html>"


def truncated_png() -> bytes:
    data = png_bytes(np.random.default_rng(1).integers(0, 256, (200, 200), dtype=np.uint8))
    return data[: len(data) // 2]


def truncated_jpeg() -> bytes:
    data = jpeg_bytes(np.random.default_rng(2).integers(0, 256, (200, 200, 3), dtype=np.uint8))
    return data[: len(data) // 2]


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid-looking PNG whose header claims ``width x height`` 8-bit gray pixels (10 GB decoded)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    # A few rows of zeros compress to almost nothing; a naive decoder would allocate it all.
    pixels = zlib.compress(b"\x00" * (width + 1) * 4, 9)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", pixels)
        + _png_chunk(b"IEND", b"")
    )


# --- DICOM ------------------------------------------------------------------------------------


def dicom_dataset(
    pixels: np.ndarray | None,
    *,
    modality: str | None = "CR",
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
) -> Dataset:
    """A minimal Secondary Capture dataset (explicit VR little endian) holding ``pixels`` if given."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = "MRN-0042"
    ds.PatientName = "Test^Patient"
    ds.AccessionNumber = "ACC-7"
    ds.StudyDate = "20240131"
    ds.BodyPartExamined = "WRIST"
    if modality is not None:
        ds.Modality = modality
    if pixels is None:
        return ds
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.SamplesPerPixel = 1 if pixels.ndim == 2 else pixels.shape[2]
    ds.PhotometricInterpretation = photometric
    if ds.SamplesPerPixel > 1:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = bits_stored or ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.tobytes()
    return ds


def dicom_bytes(ds: Dataset, *, preamble: bool = True) -> bytes:
    """Write ``ds`` as a DICOM file, or as a raw dataset (no preamble, no meta header)."""
    buffer = io.BytesIO()
    if preamble:
        ds.save_as(buffer, enforce_file_format=True)
    else:
        raw = Dataset()
        raw.update({element.tag: element for element in ds})
        dcmwrite(buffer, raw, implicit_vr=False, little_endian=True)
    return buffer.getvalue()


def dicom_without_pixel_data() -> bytes:
    return dicom_bytes(dicom_dataset(None))


def dicom_ct() -> bytes:
    return dicom_bytes(dicom_dataset(np.zeros((8, 8), dtype=np.uint16), modality="CT"))


def dicom_truncated_pixel_data() -> bytes:
    data = dicom_bytes(dicom_dataset(np.full((64, 64), 1000, dtype=np.uint16), bits_stored=12))
    return data[: len(data) - 4000]


def dicom_bomb() -> bytes:
    """Rows x Columns claim 65535 x 65535 while the pixel data is tiny."""
    ds = dicom_dataset(np.zeros((4, 4), dtype=np.uint16))
    ds.Rows = ds.Columns = 65535
    return dicom_bytes(ds)


def gdcm_transcode(data: bytes, *, transfer_syntax: str, tmp_dir: Path) -> bytes:
    """Re-encode a DICOM file with GDCM (JPEG lossless, 12-bit JPEG: pydicom has no encoder for them)."""
    import gdcm

    source, target = tmp_dir / "source.dcm", tmp_dir / "target.dcm"
    source.write_bytes(data)
    reader = gdcm.ImageReader()
    reader.SetFileName(str(source))
    if not reader.Read():
        raise RuntimeError("GDCM cannot read the source file")
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.GetTSType(transfer_syntax)))
    change.SetInput(reader.GetImage())
    if not change.Change():
        raise RuntimeError(f"GDCM cannot encode {transfer_syntax}")
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(target))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    if not writer.Write():
        raise RuntimeError("GDCM cannot write the target file")
    return target.read_bytes()
