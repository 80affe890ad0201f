"""The imagecodecs plugin (tried first for JPEG 2000 and JPEG lossless) gives the other plugins' pixels."""

import io

import numpy as np
import pydicom
import pytest
from pydicom.pixels import pixel_array
from pydicom.uid import JPEG2000, JPEG2000Lossless, JPEGLossless, JPEGLosslessSV1

from inference import decoding, dicom_codecs
from tests.conftest import SHARED_DATA
from tests.inference import hostile


def _stored_12bit(*, signed: bool = False) -> np.ndarray:
    rows, columns = np.mgrid[0:120, 0:97]
    values = (np.sin(rows / 7.0) * np.cos(columns / 5.0) * 1900).astype(np.int16)
    return values if signed else (values + 2048).astype(np.uint16)


def _j2k(*, lossy: bool, signed: bool = False, rgb: bool = False) -> bytes:
    if rgb:
        stored = np.stack([_stored_12bit() >> 4 for _ in range(3)], axis=-1).astype(np.uint8)
        stored[:, :, 1] = 255 - stored[:, :, 1]
        ds = hostile.dicom_dataset(stored, photometric="RGB")
    else:
        stored = _stored_12bit(signed=signed)
        ds = hostile.dicom_dataset(stored, bits_stored=12)
        ds.PixelRepresentation = int(signed)
        ds.PixelData = stored.tobytes()
    options = {"j2k_cr": [30]} if lossy else {}
    ds.compress(JPEG2000 if lossy else JPEG2000Lossless, stored, **options)
    return hostile.dicom_bytes(ds)


def _jpeg_lossless(transfer_syntax: str, tmp_path) -> bytes:
    native = hostile.dicom_bytes(hostile.dicom_dataset(_stored_12bit(), bits_stored=12))
    return hostile.gdcm_transcode(native, transfer_syntax=transfer_syntax, tmp_dir=tmp_path)


CASES = {
    "shared_j2k_2048x2500": lambda tmp: (SHARED_DATA / "dicom/NM_Kakadu44_SOTmarkerincons.dcm").read_bytes(),
    "shared_j2k_monochrome1": lambda tmp: (SHARED_DATA / "dicom/RG3_J2KR.dcm").read_bytes(),
    "shared_jpeg_lossless": lambda tmp: (SHARED_DATA / "dicom/RG2_JPLL.dcm").read_bytes(),
    "j2k_lossless_signed": lambda tmp: _j2k(lossy=False, signed=True),
    "j2k_lossy": lambda tmp: _j2k(lossy=True),
    "j2k_lossy_rgb": lambda tmp: _j2k(lossy=True, rgb=True),
    "jpeg_lossless_sv1": lambda tmp: _jpeg_lossless(JPEGLosslessSV1, tmp),
    "jpeg_lossless_process14": lambda tmp: _jpeg_lossless(JPEGLossless, tmp),
}


@pytest.mark.parametrize("case", CASES)
def test_imagecodecs_pixels_equal_the_reference_plugin(case, tmp_path):
    ds = pydicom.dcmread(io.BytesIO(CASES[case](tmp_path)))
    syntax = ds.file_meta.TransferSyntaxUID
    reference = "pylibjpeg" if syntax in (JPEG2000, JPEG2000Lossless) else "gdcm"

    ours = pixel_array(ds, decoding_plugin=dicom_codecs.PLUGIN_NAME)
    theirs = pixel_array(ds, decoding_plugin=reference)

    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
    np.testing.assert_array_equal(ours, theirs)


def test_decode_image_tries_imagecodecs_first_and_keeps_the_others_behind_it():
    for syntax in (JPEG2000, JPEG2000Lossless, JPEGLossless, JPEGLosslessSV1):
        order = decoding._PLUGIN_ORDER[syntax]
        assert order[0] == dicom_codecs.PLUGIN_NAME and len(order) > 1
        assert dicom_codecs.is_available(syntax)


def test_decode_threads_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("MSKDETECT_DECODE_THREADS", "3")
    assert dicom_codecs.decode_threads() == 3
    monkeypatch.setenv("MSKDETECT_DECODE_THREADS", "0")
    assert dicom_codecs.decode_threads() == 1
    monkeypatch.delenv("MSKDETECT_DECODE_THREADS")
    assert 1 <= dicom_codecs.decode_threads() <= 4
