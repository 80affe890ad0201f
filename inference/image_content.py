"""Is an upload a radiograph at all? Refuse colour photographs and screenshots from image statistics.

Plain numpy + scipy (no Django, no TensorFlow): the web process runs it on every upload, after
decoding and before anything is stored. It needs no model and no training data; it is a coarse
first gate, and what it lets through is judged again at prediction time.

Three signs, each far from what the radiographs in ../shared/data show (16-bit PNG, RGB JPEG,
CR DICOM from 16x16 to 2048x2500, with collimation masks and burned-in markers):

- colour: more than ``COLOUR_FRACTION`` of the pixels have a chroma (max - min of R, G, B on a
  0..1 scale) above ``COLOUR_CHROMA``. A radiograph stored as RGB, even with a faint tint (a
  scanned film, a warm JPEG), stays below: its channels differ by a few per cent at most.
- flat synthetic content: more than ``FLAT_FRACTION`` of the pixels sit in perfectly flat areas
  (no difference at all to the right and below) and under ``SMOOTH_FRACTION`` vary smoothly.
  Rendered pages, user interfaces and blank images look like that; a radiograph's quantum noise
  makes even its collimation borders and air vary smoothly (at least 40 % smooth pixels in every
  shared radiograph, at most 51 % flat).
- text-like strokes: more than ``STROKE_FRACTION`` of the pixels belong to thin, high-contrast
  strokes (a 5x5 morphological top-hat, dark or light, above 20 % of the range, measured at
  512 pixels). Text, glyphs and handwriting do; the shared radiographs stay at or below 1.4 %.

The screenshot signs need some pixels to judge: images under ``MIN_SIDE`` pixels a side skip them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from inference.decoding import DecodeError

COLOUR_CHROMA = 0.15
COLOUR_FRACTION = 0.10
FLAT_FRACTION = 0.60
SMOOTH_FRACTION = 0.05
SMOOTH_STEP = 0.04  # a step of at most 4 % of the image's range counts as smooth
STROKE_CONTRAST = 0.20
STROKE_FRACTION = 0.05
STROKE_SIDE = 512
MIN_SIDE = 64
SAMPLE_PIXELS = 1_000_000


class NotARadiograph(DecodeError):
    """The file decodes, but its pixels are a colour photograph, a screenshot or text."""

    code = "not_a_radiograph"


@dataclass(frozen=True)
class ContentStats:
    """The statistics the gate decides on, each a fraction of the image's pixels."""

    colour: float
    flat: float
    smooth: float
    strokes: float


@dataclass(frozen=True)
class ContentProblem:
    """Why an image is not taken for a radiograph: ``code`` is stable, ``message`` is for people."""

    code: str  # "colour", "flat" or "text"
    message: str


def _gray(pixels: np.ndarray) -> np.ndarray:
    values = np.asarray(pixels)
    if values.ndim == 3:
        values = values[..., : min(3, values.shape[2])].astype(np.float64).mean(axis=2)
    return values.astype(np.float64, copy=False)


def colour_fraction(pixels: np.ndarray) -> float:
    """The fraction of pixels whose chroma (max - min of R, G, B, on 0..1) exceeds ``COLOUR_CHROMA``."""
    values = np.asarray(pixels)
    if values.ndim != 3 or values.shape[2] < 3:
        return 0.0
    scale = float(np.iinfo(values.dtype).max) if np.issubdtype(values.dtype, np.integer) else 1.0
    rgb = values[..., :3]
    chroma = (rgb.max(axis=2).astype(np.float64) - rgb.min(axis=2)) / scale
    return float(np.mean(chroma > COLOUR_CHROMA))


def _flat_and_smooth(gray: np.ndarray) -> tuple[float, float]:
    # Exact differences on a sub-grid of pixels (no resampling: it would blur flat areas away).
    height, width = gray.shape
    step = max(1, int(np.ceil(np.sqrt(height * width / SAMPLE_PIXELS))))
    rows = np.arange(0, height - 1, step)
    columns = np.arange(0, width - 1, step)
    here = gray[np.ix_(rows, columns)]
    right = np.abs(gray[np.ix_(rows, columns + 1)] - here)
    below = np.abs(gray[np.ix_(rows + 1, columns)] - here)
    change = np.maximum(right, below)
    span = float(gray.max() - gray.min())
    if span <= 0:
        return 1.0, 0.0
    flat = float(np.mean(change == 0))
    smooth = float(np.mean((change > 0) & (change <= SMOOTH_STEP * span)))
    return flat, smooth


def _stroke_fraction(gray: np.ndarray) -> float:
    low, high = np.percentile(gray, [0.5, 99.5])
    if high <= low:
        return 0.0
    scaled = np.clip((gray - low) / (high - low), 0.0, 1.0)
    factor = int(np.ceil(max(scaled.shape) / STROKE_SIDE))
    if factor > 1:  # block means: strokes are judged at the scale a reader sees the page
        h, w = scaled.shape[0] // factor * factor, scaled.shape[1] // factor * factor
        scaled = scaled[:h, :w].reshape(h // factor, factor, w // factor, factor).mean(axis=(1, 3))
    dark = ndimage.grey_closing(scaled, size=(5, 5)) - scaled
    light = scaled - ndimage.grey_opening(scaled, size=(5, 5))
    return float(max(np.mean(dark > STROKE_CONTRAST), np.mean(light > STROKE_CONTRAST)))


def content_stats(pixels: np.ndarray) -> ContentStats:
    """The colour, flatness, smoothness and stroke fractions of decoded pixels (any dtype, gray or RGB[A])."""
    gray = _gray(pixels)
    if min(gray.shape[:2]) < MIN_SIDE:
        return ContentStats(colour=colour_fraction(pixels), flat=0.0, smooth=1.0, strokes=0.0)
    flat, smooth = _flat_and_smooth(gray)
    return ContentStats(
        colour=colour_fraction(pixels), flat=flat, smooth=smooth, strokes=_stroke_fraction(gray)
    )


def radiograph_content_problem(pixels: np.ndarray) -> ContentProblem | None:
    """Why these pixels are not a radiograph (a colour photograph, a screenshot, text), or None."""
    stats = content_stats(pixels)
    if stats.colour > COLOUR_FRACTION:
        return ContentProblem(
            "colour",
            f"The image is in colour ({stats.colour:.0%} of its pixels are saturated): it looks like a "
            "colour photograph or screenshot, not a radiograph.",
        )
    if stats.flat > FLAT_FRACTION and stats.smooth < SMOOTH_FRACTION:
        return ContentProblem(
            "flat",
            f"The image is {stats.flat:.0%} perfectly flat areas with sharp edges and almost no gradual "
            "shading: it looks like a screenshot or a drawing, not a radiograph.",
        )
    if stats.strokes > STROKE_FRACTION:
        return ContentProblem(
            "text",
            f"The image is covered in thin high-contrast strokes ({stats.strokes:.0%} of it): it looks like "
            "text (a screenshot, a document or a photo of one), not a radiograph.",
        )
    return None


def check_radiograph_content(pixels: np.ndarray) -> None:
    """Raise ``NotARadiograph`` naming the reason when the pixels are not taken for a radiograph."""
    problem = radiograph_content_problem(pixels)
    if problem is not None:
        raise NotARadiograph(problem.message)
