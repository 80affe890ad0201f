"""Decoding of real radiographs, synthetic files of every supported flavour, and hostile uploads."""

import io
import subprocess
import sys

import numpy as np
import pydicom
import pytest
import skimage.io
from PIL import Image
from pydicom.pixels import pixel_array
from pydicom.uid import JPEG2000, JPEGExtended12Bit, JPEGLosslessSV1, JPEGLSLossless

from inference.decoding import (
    CorruptImage,
    DecodeError,
    EmptyFile,
    NoPixelData,
    NotAnImage,
    TooManyPixels,
    UnsupportedModality,
    decode_image,
    probe_image,
)
from tests.conftest import REPO_ROOT, SHARED_DATA
from tests.inference import hostile

SHARED_FILES = sorted(
    path
    for folder in ("png16", "jpeg", "dicom")
    for path in (SHARED_DATA / folder).iterdir()
    if path.suffix != ".csv"
)


@pytest.mark.parametrize("path", SHARED_FILES, ids=lambda path: path.name)
def test_every_shared_radiograph_decodes_with_header_size(path):
    data = path.read_bytes()
    decoded = decode_image(data)
    header = probe_image(data)

    expected_format = {"png16": "png", "jpeg": "jpeg", "dicom": "dcm"}[path.parent.name]
    assert decoded.format == header.format == expected_format
    assert (decoded.width, decoded.height) == (header.width, header.height)
    assert decoded.pixels.shape[:2] == (decoded.height, decoded.width)
    assert decoded.pixels.max() > decoded.pixels.min()  # a real image, not a blank


@pytest.mark.parametrize("folder", ["png16", "jpeg"])
def test_shared_png_and_jpeg_pixels_equal_skimage_imread(folder):
    for path in sorted((SHARED_DATA / folder).glob("*.*g")):
        decoded = decode_image(path.read_bytes())
        np.testing.assert_array_equal(decoded.pixels, skimage.io.imread(str(path)))
        assert decoded.bit_depth == (16 if folder == "png16" else 8)


def test_dicom_metadata_prefills_upload_form():
    decoded = decode_image((SHARED_DATA / "dicom" / "RG3_J2KR.dcm").read_bytes())

    assert decoded.metadata == {
        "patient_id": "11RG3",
        "patient_name": "CompressedSamples^RG3",
        "accession_number": "FUJI95706",
        "body_part_examined": "EXTREMITY",
        "study_description": "Non-ossifying fibroma of distal tibia",
        "study_instance_uid": "1.3.6.1.4.1.5962.1.2.11.20040826185059.5457",
        "study_date": "2004-08-26",
        "modality": "CR",
    }
    assert decoded.bit_depth == 10


def test_dicom_without_extension_is_recognised_by_content():
    decoded = decode_image((SHARED_DATA / "dicom" / "CR1_6154_noext").read_bytes())

    assert decoded.format == "dcm"
    assert (decoded.width, decoded.height) == (16, 16)
    assert decoded.metadata["body_part_examined"] == "CSPINE"


@pytest.mark.parametrize(
    ("name", "monochrome1"),
    [("RG3_J2KR.dcm", True), ("RG2_JPLL.dcm", False), ("NM_Kakadu44_SOTmarkerincons.dcm", False)],
)
def test_compressed_shared_dicom_matches_stored_values_in_display_order(name, monochrome1):
    path = SHARED_DATA / "dicom" / name
    stored = pixel_array(pydicom.dcmread(path)).astype(np.int64)
    display = decode_image(path.read_bytes()).pixels.astype(np.int64)

    # Windowing is monotonic, so ranks must follow the stored values, reversed for MONOCHROME1.
    brightest_stored = np.unravel_index(np.argmax(stored), stored.shape)
    darkest_stored = np.unravel_index(np.argmin(stored), stored.shape)
    if monochrome1:
        assert display[brightest_stored] <= display[darkest_stored]
        assert display[brightest_stored] == display.min()
    else:
        assert display[brightest_stored] >= display[darkest_stored]
        assert display[brightest_stored] == display.max()


# --- synthetic PNG and JPEG -------------------------------------------------------------------


def _palette_png(*, transparent: bool) -> bytes:
    image = Image.fromarray(hostile.gradient() // 64, mode="L").convert("P")
    image.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 - 4) * 3)
    extra = {"transparency": 0} if transparent else {}
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **extra)
    return buffer.getvalue()


SYNTHETIC_8BIT = {
    "gray8": lambda: hostile.png_bytes(hostile.gradient()),
    "gray16": lambda: hostile.png_bytes(hostile.gradient().astype(np.uint16) * 250),
    "gray_alpha": lambda: hostile.png_bytes(
        np.dstack([hostile.gradient(), hostile.gradient()[::-1]]), mode="LA"
    ),
    "rgb": lambda: hostile.png_bytes(
        np.dstack([hostile.gradient(), hostile.gradient()[::-1], hostile.gradient()[:, ::-1]])
    ),
    "rgba": lambda: hostile.png_bytes(np.dstack([hostile.gradient()] * 3 + [hostile.gradient()[:, ::-1]])),
    "palette": lambda: _palette_png(transparent=False),
    "palette_transparent": lambda: _palette_png(transparent=True),
    "jpeg_gray": lambda: hostile.jpeg_bytes(hostile.gradient()),
    "jpeg_rgb": lambda: hostile.jpeg_bytes(np.dstack([hostile.gradient()] * 3)),
}


@pytest.mark.parametrize("kind", sorted(SYNTHETIC_8BIT))
def test_synthetic_png_and_jpeg_equal_skimage_imread(kind, tmp_path):
    data = SYNTHETIC_8BIT[kind]()
    path = tmp_path / ("upload.jpg" if kind.startswith("jpeg") else "upload.png")
    path.write_bytes(data)

    decoded = decode_image(data)

    expected = skimage.io.imread(str(path))
    assert decoded.pixels.dtype == expected.dtype
    np.testing.assert_array_equal(decoded.pixels, expected)


def test_png_decoding_keeps_values_and_reports_depth():
    gray16 = decode_image(SYNTHETIC_8BIT["gray16"]())
    palette = decode_image(SYNTHETIC_8BIT["palette"]())
    rgba = decode_image(SYNTHETIC_8BIT["rgba"]())

    assert gray16.bit_depth == 16
    np.testing.assert_array_equal(gray16.pixels, hostile.gradient().astype(np.uint16) * 250)
    assert palette.pixels.shape == (40, 50, 3)
    # Palette index 1 is pure red.
    index_one = hostile.gradient() // 64 == 1
    np.testing.assert_array_equal(palette.pixels[index_one][0], [255, 0, 0])
    assert rgba.pixels.shape == (40, 50, 4)
    np.testing.assert_array_equal(rgba.pixels[:, :, 3], hostile.gradient()[:, ::-1])


def test_format_comes_from_bytes_not_from_gif_or_bmp_pretending():
    buffer = io.BytesIO()
    Image.fromarray(hostile.gradient()).save(buffer, format="GIF")

    with pytest.raises(NotAnImage):
        decode_image(buffer.getvalue())


# --- synthetic DICOM --------------------------------------------------------------------------


def _windowed_monochrome1() -> tuple[bytes, np.ndarray]:
    stored = np.array([[0, 50, 100, 150], [200, 250, 300, 350]], dtype=np.uint16)
    ds = hostile.dicom_dataset(stored, photometric="MONOCHROME1", bits_stored=12)
    ds.RescaleSlope = 2
    ds.RescaleIntercept = -100
    ds.WindowCenter = 300
    ds.WindowWidth = 401
    return hostile.dicom_bytes(ds), stored


def test_dicom_rescale_window_and_monochrome1_inversion_give_exact_values():
    data, stored = _windowed_monochrome1()

    decoded = decode_image(data)

    # Modality: 2 * stored - 100. Window (LINEAR, PS3.3 C.11.2.1.2): centre 299.5, width 400.
    hounsfield = stored * 2.0 - 100
    fraction = np.clip((hounsfield - 299.5) / 400 + 0.5, 0, 1)
    expected = 65535 - np.rint(fraction * 65535).astype(np.uint16)
    np.testing.assert_array_equal(decoded.pixels, expected)
    # Below the window -> white after MONOCHROME1 inversion; above -> black.
    assert decoded.pixels[0, 0] == 65535
    assert decoded.pixels[1, 3] == 0


def test_raw_dicom_dataset_without_preamble_is_decoded():
    stored = (np.arange(64, dtype=np.uint16) * 50).reshape(8, 8)
    data = hostile.dicom_bytes(hostile.dicom_dataset(stored, bits_stored=12), preamble=False)
    assert data[128:132] != b"DICM"

    decoded = decode_image(data)

    # No window: min-max stretch of the stored values.
    np.testing.assert_array_equal(decoded.pixels, np.rint(stored / stored.max() * 65535).astype(np.uint16))
    assert decoded.metadata["patient_id"] == "MRN-0042"
    assert decoded.metadata["study_date"] == "2024-01-31"


def test_multiframe_dicom_gives_first_frame():
    frames = np.stack([np.full((6, 5), value, dtype=np.uint16) for value in (100, 900, 500)])
    frames[0, 0, 0] = 0
    ds = hostile.dicom_dataset(frames[0], bits_stored=12)
    ds.NumberOfFrames = 3
    ds.PixelData = frames.tobytes()

    decoded = decode_image(hostile.dicom_bytes(ds))

    assert decoded.pixels.shape == (6, 5)
    assert decoded.pixels[0, 0] == 0 and decoded.pixels[1, 1] == 65535  # first frame's own range


def _smooth_12bit() -> np.ndarray:
    rows, columns = np.mgrid[0:96, 0:80]
    return ((np.sin(rows / 9.0) + np.cos(columns / 7.0) + 2) * 1000).astype(np.uint16)


def _decode_stored(data: bytes) -> np.ndarray:
    """Undo the decoder's min-max stretch (no window) to compare with stored values."""
    return decode_image(data).pixels.astype(np.float64) / 65535


def test_jpeg_ls_dicom_is_lossless():
    stored = _smooth_12bit()
    ds = hostile.dicom_dataset(stored, bits_stored=12)
    ds.compress(JPEGLSLossless, stored)
    expected = hostile.dicom_bytes(hostile.dicom_dataset(stored, bits_stored=12))

    np.testing.assert_array_equal(_decode_stored(hostile.dicom_bytes(ds)), _decode_stored(expected))


def test_lossy_jpeg2000_dicom_is_close_but_not_identical():
    stored = _smooth_12bit()
    ds = hostile.dicom_dataset(stored, bits_stored=12)
    ds.compress(JPEG2000, stored, j2k_cr=[40])
    data = hostile.dicom_bytes(ds)

    decoded = pixel_array(pydicom.dcmread(io.BytesIO(data)))
    error = np.abs(decoded.astype(np.int64) - stored)
    assert 0 < error.mean() < 20  # lossy, yet faithful at 12 bits
    shown = decode_image(data).pixels
    assert np.corrcoef(shown.ravel(), stored.ravel())[0, 1] > 0.999


@pytest.mark.parametrize("transfer_syntax", [JPEGLosslessSV1, JPEGExtended12Bit], ids=["lossless", "12bit"])
def test_gdcm_encoded_jpeg_dicom_decodes(transfer_syntax, tmp_path):
    stored = _smooth_12bit()
    native = hostile.dicom_bytes(hostile.dicom_dataset(stored, bits_stored=12))
    data = hostile.gdcm_transcode(native, transfer_syntax=transfer_syntax, tmp_dir=tmp_path)
    assert pydicom.dcmread(io.BytesIO(data)).file_meta.TransferSyntaxUID == transfer_syntax

    decoded = decode_image(data)

    difference = np.abs(decoded.pixels.astype(np.int64) - decode_image(native).pixels)
    if transfer_syntax == JPEGLosslessSV1:
        assert difference.max() == 0
    else:
        assert difference.mean() < 0.01 * 65535


# --- refusals ---------------------------------------------------------------------------------

HOSTILE = {
    "zero_bytes": (hostile.zero_bytes, EmptyFile, "empty"),
    "random_bytes": (hostile.random_bytes, NotAnImage, "not_an_image"),
    "text_file": (hostile.text_file, NotAnImage, "not_an_image"),
    "html_renamed_png": (hostile.html_renamed_png, NotAnImage, "not_an_image"),
    "truncated_png": (hostile.truncated_png, CorruptImage, "corrupt"),
    "truncated_jpeg": (hostile.truncated_jpeg, CorruptImage, "corrupt"),
    "png_bomb": (hostile.png_bomb, TooManyPixels, "too_many_pixels"),
    "dicom_bomb": (hostile.dicom_bomb, TooManyPixels, "too_many_pixels"),
    "dicom_without_pixel_data": (hostile.dicom_without_pixel_data, NoPixelData, "no_pixel_data"),
    "dicom_ct": (hostile.dicom_ct, UnsupportedModality, "unsupported_modality"),
    "dicom_truncated_pixel_data": (hostile.dicom_truncated_pixel_data, CorruptImage, "corrupt"),
}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_hostile_file_is_refused_with_specific_error(kind):
    make, error_class, code = HOSTILE[kind]

    with pytest.raises(error_class) as caught:
        decode_image(make())

    assert isinstance(caught.value, DecodeError) and isinstance(caught.value, ValueError)
    assert caught.value.code == code
    assert caught.value.message and str(caught.value) == caught.value.message


def test_bombs_are_refused_by_the_cheap_header_probe_too():
    with pytest.raises(TooManyPixels):
        probe_image(hostile.png_bomb())
    header = probe_image(hostile.dicom_bomb())  # DICOM headers are read without PIL's guard

    assert (header.format, header.width, header.height) == ("dcm", 65535, 65535)


def test_max_pixels_is_configurable():
    data = hostile.png_bytes(hostile.gradient())  # 50 x 40 = 2000 pixels

    assert decode_image(data, max_pixels=2000).width == 50
    with pytest.raises(TooManyPixels, match="2,000"):
        decode_image(data, max_pixels=1999)


def test_refusal_messages_name_the_problem():
    with pytest.raises(
        UnsupportedModality, match="CT \\(computed tomography\\), not a projection radiograph"
    ):
        decode_image(hostile.dicom_ct())
    for modality in ("MR", "US", "NM", "PT", "MG"):
        ds = hostile.dicom_dataset(np.zeros((4, 4), dtype=np.uint16), modality=modality)
        with pytest.raises(UnsupportedModality, match=f"modality is {modality} "):
            decode_image(hostile.dicom_bytes(ds))
    # Projection radiographs (fluoroscopy and C-arm frames too) and secondary captures are read.
    for modality in ("CR", "DX", "RG", "RF", "XA", "OT", "SC", None):
        ds = hostile.dicom_dataset(np.arange(16, dtype=np.uint16).reshape(4, 4), modality=modality)
        assert decode_image(hostile.dicom_bytes(ds)).width == 4


def test_decoding_module_does_not_import_tensorflow():
    code = "import sys, inference.decoding, inference.preprocessing; print('tensorflow' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )

    assert result.stdout.strip() == "False"


@pytest.mark.parametrize("kind", ["png", "jpeg", "dicom"])
def test_damaged_files_only_ever_raise_decode_errors(kind):
    valid = {
        "png": hostile.png_bytes(hostile.gradient()),
        "jpeg": hostile.jpeg_bytes(hostile.gradient()),
        "dicom": _windowed_monochrome1()[0],
    }[kind]
    rng = np.random.default_rng(11)
    for _ in range(150):
        damaged = bytearray(valid)
        for position in rng.integers(0, len(valid), 4):
            damaged[position] = rng.integers(0, 256)
        cut = int(rng.integers(len(valid) // 2, len(valid) + 1))
        try:
            decoded = decode_image(bytes(damaged[:cut]))
        except DecodeError as error:
            assert error.code in {
                "corrupt",
                "not_an_image",
                "too_many_pixels",
                "no_pixel_data",
                "unsupported_modality",
            }
        else:
            assert decoded.pixels.shape[:2] == (decoded.height, decoded.width)
