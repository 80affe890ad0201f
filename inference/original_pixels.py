"""A radiograph's pixel values at their original depth, for the viewer's window/level.

``inference.decoding`` gives display-ready pixels (the DICOM window already applied, 8-bit for
previews); a radiologist's window/level needs the values before that: 10, 12 or 16 bits, with the
DICOM modality transform (RescaleSlope/Intercept) known. This module turns an upload into

- ``samples``: one ``(H, W)`` uint16 array, sent to the browser as little-endian bytes, and
- ``metadata``: what the browser needs to turn samples into grey levels:
  ``value = sample * rescale_slope + rescale_intercept`` (the modality value, in which the DICOM
  window and every preset are expressed), the photometric interpretation (MONOCHROME1 is shown
  inverted), the first DICOM VOI window, window presets from the image's histogram, and the pixel
  spacing with its source, for measurements in mm.

Decoding goes through ``inference.decoding`` (same codecs, checks and refusals); no second decoder.
No Django here: ``studies.pixels`` stores and serves the result.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut

from inference.decoding import DEFAULT_MAX_PIXELS, decode_dicom_stored, decode_image, sniff_format

SAMPLE_MAX = 65535
# Signed stored values are shifted into uint16; the shift is folded into the intercept.
SIGNED_OFFSET = 32768
# Histogram presets. Projection radiographs have no calibrated unit (no Hounsfield scale), so
# "bone" and "soft tissue" are taken from the image itself: Otsu's threshold splits the background
# (air, collimation) from the anatomy; bone is the brighter part of the anatomy, soft tissue the
# range from the background up into the anatomy's darker part. Percentiles of the displayed order.
ROBUST_PERCENTILES = (0.5, 99.5)
BONE_PERCENTILES = (30.0, 99.5)  # of the anatomy
SOFT_TISSUE_BACKGROUND_PERCENTILE = 50.0  # of the background: the window starts there
SOFT_TISSUE_ANATOMY_PERCENTILE = 60.0  # of the anatomy: and ends there


@dataclass(frozen=True)
class OriginalPixels:
    """``samples`` (uint16, H x W) and the ``metadata`` dict described in the module docstring."""

    samples: np.ndarray
    metadata: dict[str, Any]


def read_original_pixels(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> OriginalPixels:
    """Decode PNG, JPEG or DICOM bytes into uint16 samples plus window/level metadata.

    Raises ``inference.decoding.DecodeError`` (the upload's own refusals) for a file that cannot
    be decoded.
    """
    fmt = sniff_format(data)
    if fmt == "dcm":
        ds, raw = decode_dicom_stored(data, max_pixels=max_pixels)
        photometric = str(ds.get("PhotometricInterpretation") or "MONOCHROME2").strip().upper()
        if photometric in ("MONOCHROME1", "MONOCHROME2") and raw.ndim == 2:
            return _dicom_grayscale(ds, raw, photometric=photometric)
        # Colour DICOM (RGB, YBR, palette): the display pixels in grey, said so in the metadata.
        decoded = decode_image(data, max_pixels=max_pixels)
        samples, converted = _gray_samples(decoded.pixels)
        return _finish(
            samples,
            slope=1.0,
            intercept=0.0,
            bits=8 if decoded.pixels.dtype == np.uint8 else 16,
            photometric="MONOCHROME2",
            source_format=fmt,
            source_photometric=photometric,
            colour_converted=converted,
            voi=None,
            spacing=_pixel_spacing(ds),
        )
    decoded = decode_image(data, max_pixels=max_pixels)
    samples, converted = _gray_samples(decoded.pixels)
    return _finish(
        samples,
        slope=1.0,
        intercept=0.0,
        bits=min(int(decoded.bit_depth), 16),
        photometric="MONOCHROME2",
        source_format=fmt,
        source_photometric="RGB" if converted else "MONOCHROME2",
        colour_converted=converted,
        voi=None,
        spacing=None,
    )


def _dicom_grayscale(ds: Dataset, raw: np.ndarray, *, photometric: str) -> OriginalPixels:
    bits = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 16)
    has_modality_lut = bool(ds.get("ModalityLUTSequence"))
    if raw.dtype in (np.uint8, np.uint16) and not has_modality_lut:
        samples = raw.astype(np.uint16, copy=False)
        slope, intercept = _rescale(ds)
    elif raw.dtype in (np.int8, np.int16) and not has_modality_lut:
        samples = (raw.astype(np.int32) + SIGNED_OFFSET).astype(np.uint16)
        slope, intercept = _rescale(ds)
        intercept -= SIGNED_OFFSET * slope
    else:
        # 32-bit, float or a non-linear modality LUT: the modality values, quantised to 16 bits.
        values = np.asarray(apply_modality_lut(raw, ds), dtype=np.float64)
        low, high = float(values.min()), float(values.max())
        span = high - low
        slope = span / SAMPLE_MAX if span > 0 else 1.0
        intercept = low
        samples = np.rint((values - low) / slope).astype(np.uint16)
        bits = 16
    return _finish(
        samples,
        slope=slope,
        intercept=intercept,
        bits=bits,
        photometric=photometric,
        source_format="dcm",
        source_photometric=photometric,
        colour_converted=False,
        voi=_voi_window(ds),
        spacing=_pixel_spacing(ds),
    )


def _rescale(ds: Dataset) -> tuple[float, float]:
    try:
        slope = float(ds.get("RescaleSlope", 1) or 1)
        intercept = float(ds.get("RescaleIntercept", 0) or 0)
    except (TypeError, ValueError):
        return 1.0, 0.0
    return (slope if slope != 0 else 1.0), intercept


def _first(value: Any) -> float | None:
    """The first value of a (possibly multi-valued) numeric DICOM element, or None."""
    if isinstance(value, MultiValue | list | tuple):
        value = value[0] if len(value) else None
    try:
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _voi_window(ds: Dataset) -> dict[str, Any] | None:
    center, width = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
    if center is None or width is None or width < 1:
        return None
    return {
        "center": center,
        "width": width,
        "explanation": _first_text(ds.get("WindowCenterWidthExplanation")),
    }


def _first_text(value: Any) -> str:
    if isinstance(value, MultiValue | list | tuple):
        value = value[0] if len(value) else None
    return str(value).strip() if value is not None else ""


def _pixel_spacing(ds: Dataset) -> dict[str, Any] | None:
    """mm between rows and between columns: PixelSpacing (in the patient), else ImagerPixelSpacing
    (at the detector, so distances include the projection's magnification)."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(keyword)
        try:
            row, column = float(value[0]), float(value[1])
        except (TypeError, ValueError, IndexError):
            continue
        if row > 0 and column > 0:
            return {"row_mm": row, "column_mm": column, "source": keyword}
    return None


def _gray_samples(pixels: np.ndarray) -> tuple[np.ndarray, bool]:
    """(H, W) uint16 samples from decoded PNG/JPEG pixels; True when colour had to be converted."""
    if pixels.ndim == 2:
        return pixels.astype(np.uint16, copy=False), False
    channels = pixels[:, :, : 3 if pixels.shape[2] >= 3 else 1]
    first = channels[:, :, 0]
    if channels.shape[2] == 1 or all(np.array_equal(first, channels[:, :, i]) for i in range(1, 3)):
        return first.astype(np.uint16), False  # a grey radiograph stored as RGB
    # ITU-R BT.601 luma, the weights JPEG and most viewers use for grey.
    luma = channels.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return np.rint(luma).astype(np.uint16), True


def _display_histogram(samples: np.ndarray, *, bright_is_high: bool) -> np.ndarray:
    """Pixel counts per sample value, ordered from the darkest shown to the brightest shown."""
    counts = np.bincount(samples.ravel(), minlength=SAMPLE_MAX + 1).astype(np.float64)
    return counts if bright_is_high else counts[::-1]


def _at_percentile(counts: np.ndarray, percent: float, low: int = 0, high: int | None = None) -> int:
    """The index where `percent` of the pixels within counts[low:high] lie at or below."""
    part = np.cumsum(counts[low:high])
    if part.size == 0 or part[-1] == 0:
        return low
    return low + int(np.searchsorted(part, part[-1] * percent / 100.0, side="left"))


def _otsu(counts: np.ndarray) -> int:
    """Otsu's threshold: the split with the largest between-class variance (first index above it)."""
    levels = np.arange(counts.size, dtype=np.float64)
    weight = np.cumsum(counts)
    total = weight[-1]
    mass = np.cumsum(counts * levels)
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mass[-1] * weight / total - mass) ** 2 / (weight * (total - weight))
    between[~np.isfinite(between)] = -1.0
    return int(np.argmax(between)) + 1


def _window(low: float, high: float) -> dict[str, float]:
    width = max(high - low, 1.0)
    return {"center": (low + high) / 2.0, "width": width}


def _finish(
    samples: np.ndarray,
    *,
    slope: float,
    intercept: float,
    bits: int,
    photometric: str,
    source_format: str,
    source_photometric: str,
    colour_converted: bool,
    voi: dict[str, Any] | None,
    spacing: dict[str, Any] | None,
) -> OriginalPixels:
    samples = np.ascontiguousarray(samples, dtype=np.uint16)
    height, width = samples.shape

    def value(sample: float) -> float:
        return sample * slope + intercept

    sample_min, sample_max = int(samples.min()), int(samples.max())
    value_low, value_high = sorted((value(sample_min), value(sample_max)))
    # Presets are taken from the histogram in the order the image is shown: for MONOCHROME1 (and a
    # negative slope) a high sample is dark, so "the brightest half" is the low samples.
    bright_is_high = (photometric == "MONOCHROME2") == (slope > 0)
    counts = _display_histogram(samples, bright_is_high=bright_is_high)
    split = _otsu(counts)
    positions = [
        _at_percentile(counts, ROBUST_PERCENTILES[0]),
        _at_percentile(counts, ROBUST_PERCENTILES[1]),
        _at_percentile(counts, BONE_PERCENTILES[0], split),
        _at_percentile(counts, BONE_PERCENTILES[1], split),
        _at_percentile(counts, SOFT_TISSUE_BACKGROUND_PERCENTILE, 0, split),
        _at_percentile(counts, SOFT_TISSUE_ANATOMY_PERCENTILE, split),
    ]
    at = [value(index if bright_is_high else SAMPLE_MAX - index) for index in positions]
    robust, bone, soft = sorted(at[0:2]), sorted(at[2:4]), sorted(at[4:6])
    full = sorted((value(0), value((1 << bits) - 1)))
    # Four presets, on the viewer's keys 2 to 5; the first is where the viewer starts.
    if voi is not None:
        name = f"DICOM VOI ({voi['explanation']})" if voi["explanation"] else "DICOM VOI"
        presets = [{"key": "voi", "label": name, "center": voi["center"], "width": voi["width"]}]
    else:
        presets = [{"key": "auto", "label": "Auto (0.5 to 99.5 %)", **_window(*robust)}]
    presets += [
        {"key": "bone", "label": "Bone", **_window(*bone)},
        {"key": "soft", "label": "Soft tissue", **_window(*soft)},
        {"key": "full", "label": f"Full range ({bits}-bit)", **_window(*full)},
    ]
    metadata = {
        "width": int(width),
        "height": int(height),
        "bits_stored": int(bits),
        "photometric": photometric,
        "source_format": source_format,
        "source_photometric": source_photometric,
        "colour_converted": colour_converted,
        "rescale_slope": float(slope),
        "rescale_intercept": float(intercept),
        "sample_min": sample_min,
        "sample_max": sample_max,
        "value_min": float(value_low),
        "value_max": float(value_high),
        "voi": voi,
        "presets": presets,
        "pixel_spacing": spacing,
    }
    return OriginalPixels(samples=samples, metadata=metadata)
