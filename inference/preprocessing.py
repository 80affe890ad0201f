"""Named, versioned preprocessing profiles: a ``DecodedImage`` in, a float32 (224, 224, 3) array out.

``seed`` (version 1) reproduces the original Flask app exactly, because the MURA weights expect
it: ``skimage.io.imread(path)`` -> ``skimage.transform.resize(img, (300, 300, 3))`` -> centre crop
224 x 224 -> ``/ 255.0``. ``resize`` already scales 8-bit input to [0, 1], so the final division
leaves values in [0, 1/255]; that is what the weights were trained on, so it stays. Two
consequences of asking skimage for (300, 300, 3), reproduced by calling skimage itself:

- a 2-D gray image is treated as (H, W, 1) and interpolated along the channel axis from 1 to 3,
  which copies the gray values into three equal channels;
- an RGBA image (H, W, 4) is interpolated along the channel axis from 4 to 3 (with a small
  anti-aliasing blur across channels), so alpha leaks into the output channels. The seed app did
  exactly this to RGBA uploads.

Bringing 16-bit and DICOM images to the 8-bit range of the training data. MURA images are 8-bit,
display-ready PNGs, so every image is first rendered to uint8 as a viewer would show it:

- DICOM: the decoder has already applied the modality LUT, the VOI window (or LUT) and the
  MONOCHROME1 inversion, and scaled the result to 0..65535; that maps linearly to 0..255. The
  window is the radiographer's own choice of display contrast: nothing is re-stretched.
- 16-bit PNG: no window travels with it, so it is min-max stretched to 0..255 and rounded. Min-max
  (rather than a percentile stretch) keeps an export that already spans the full range (like the
  GRAZPEDWRI-DX files) unchanged, still rescues 12-bit data stored in a 16-bit container, and never
  clips bright cortical bone, which a percentile stretch would saturate.
- 8-bit input is used as decoded, so the seed profile on an 8-bit file equals the original app.

``imagenet-v1`` (version 1) is for newly trained InceptionResNetV2 models: the same 8-bit rendering,
gray (or gray+alpha) to 3 equal channels, alpha dropped from RGBA, resize of the whole image to
224 x 224 with anti-aliasing (no crop, so nothing at the edges is lost), then Keras's Inception
scaling ``x / 127.5 - 1`` to [-1, 1], which is what ImageNet-pretrained InceptionResNetV2 expects.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import scipy.sparse
from skimage.transform import resize

from inference.decoding import DecodedImage

INPUT_SIZE = 224


class UnknownProfile(KeyError):
    """A preprocessing profile name that does not exist."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name
        self.message = (
            f"Unknown preprocessing profile {name!r}; known profiles: {', '.join(sorted(PROFILES))}."
        )

    def __str__(self) -> str:
        return self.message


def to_display_uint8(image: DecodedImage) -> np.ndarray:
    """Render an image as 8-bit display values (see the module docstring for the rules)."""
    pixels = image.pixels
    if pixels.dtype in (np.uint8, np.bool_):
        return pixels
    if image.format == "dcm" and pixels.dtype == np.uint16 and pixels.ndim == 2:
        # Display-ready 0..65535 from the decoder; 65535 / 255 == 257 exactly.
        return np.rint(pixels / 257.0).astype(np.uint8)
    values = pixels.astype(np.float64)
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros(pixels.shape, dtype=np.uint8)
    return np.rint((values - low) * (255.0 / (high - low))).astype(np.uint8)


# skimage's defaults in the seed's ``resize`` call: ``gaussian_filter`` truncates at 4 sigma.
_GAUSSIAN_TRUNCATE = 4.0


def _mirror(indices: np.ndarray, size: int) -> np.ndarray:
    """Fold indices into 0..size-1 the way scipy.ndimage's ``mirror`` mode (numpy's ``reflect``) does."""
    if size == 1:
        return np.zeros_like(indices)
    period = 2 * size - 2
    folded = np.abs(indices) % period
    return np.where(folded >= size, period - folded, folded)


@lru_cache(maxsize=32)
def _seed_axis_operator(size: int, out_size: int) -> scipy.sparse.csr_matrix:
    """The seed ``resize`` along one axis as a sparse (out_size, size) matrix.

    ``resize`` with its defaults is separable: a Gaussian anti-aliasing blur (sigma = (factor - 1) / 2
    when the axis shrinks, none otherwise; ``mirror`` edges; 4-sigma kernel) followed by order-1
    interpolation at ``(j + 0.5) * factor - 0.5`` (``grid_mode=True``, coordinates mirrored into the
    image). Both are linear, so one axis is one matrix; only the ~2 x out_size blurred samples the
    interpolation reads are ever computed, instead of blurring every pixel of a 5-megapixel image.
    """
    factor = size / out_size
    # Order-1 interpolation weights (scipy.ndimage.zoom with grid_mode=True, mode="mirror").
    coords = (np.arange(out_size) + 0.5) * factor - 0.5
    if size > 1:
        coords = np.abs(coords)  # mirror below 0
        coords = np.where(coords > size - 1, 2 * (size - 1) - coords, coords)  # and beyond the end
    else:
        coords = np.zeros_like(coords)
    low = np.floor(coords).astype(np.int64)
    frac = coords - low
    taps = np.stack([low, _mirror(low + 1, size)], axis=1)  # (out_size, 2)
    tap_weights = np.stack([1.0 - frac, frac], axis=1)
    # The anti-aliasing kernel, exactly as scipy.ndimage.gaussian_filter1d builds it.
    sigma = max(0.0, (factor - 1.0) / 2.0)
    if sigma > 1e-15:  # gaussian_filter skips axes with sigma <= 1e-15
        radius = int(_GAUSSIAN_TRUNCATE * sigma + 0.5)
        offsets = np.arange(-radius, radius + 1)
        kernel = np.exp(-0.5 / (sigma * sigma) * offsets**2)
        kernel = kernel / kernel.sum()
    else:
        offsets, kernel = np.zeros(1, dtype=np.int64), np.ones(1)
    rows = np.repeat(np.arange(out_size), 2 * len(offsets))
    cols = _mirror(taps[:, :, np.newaxis] + offsets, size).ravel()
    values = (tap_weights[:, :, np.newaxis] * kernel).ravel()
    # Duplicate (row, col) pairs (mirrored taps near an edge) are summed by the COO -> CSR conversion.
    return scipy.sparse.coo_matrix((values, (rows, cols)), shape=(out_size, size)).tocsr()


def _seed_resize_fast(pixels: np.ndarray, out_size: int) -> np.ndarray | None:
    """``resize(pixels, (out_size, out_size, 3))`` for uint8 gray or RGB, as two sparse matrix products.

    Returns None for anything else (RGBA and gray+alpha, whose channels ``resize`` interpolates
    4 -> 3 or 2 -> 3; bool images, which it resizes with order 0): those take skimage itself. Equal
    to skimage's float64 result up to summation order (differences ~1e-16, tested on every real file).
    """
    if pixels.dtype != np.uint8 or not (pixels.ndim == 2 or (pixels.ndim == 3 and pixels.shape[2] in (1, 3))):
        return None
    height, width = pixels.shape[:2]
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    rows_op = _seed_axis_operator(height, out_size)
    cols_op = _seed_axis_operator(width, out_size)
    plane = pixels.reshape(height, width * channels)
    tall = rows_op @ plane.astype(np.float64)  # (out, width * channels)
    tall = tall.reshape(out_size, width, channels).transpose(1, 0, 2).reshape(width, out_size * channels)
    resized = (cols_op @ tall).reshape(out_size, out_size, channels).transpose(1, 0, 2) / 255.0
    # resize clips to the input's range (uint8 -> [min, max] / 255), over all channels together.
    np.clip(resized, pixels.min() / 255.0, pixels.max() / 255.0, out=resized)
    if channels == 1:
        # A gray image interpolated along the channel axis from 1 to 3 is three equal copies.
        resized = np.repeat(resized, 3, axis=2)
    return resized


class PreprocessingProfile:
    """A named, versioned transform from a decoded image to the model's (224, 224, 3) float32 input."""

    name: str
    version: str

    def __call__(self, image: DecodedImage) -> np.ndarray:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<PreprocessingProfile {self.name} v{self.version}>"


class SeedProfile(PreprocessingProfile):
    """The original Flask app: resize to (300, 300, 3), centre crop 224, divide by 255 (twice scaled)."""

    name = "seed"
    version = "1"
    resize_to = 300

    def __call__(self, image: DecodedImage) -> np.ndarray:
        pixels = to_display_uint8(image)
        resized = _seed_resize_fast(pixels, self.resize_to)
        if resized is None:
            resized = resize(pixels, (self.resize_to, self.resize_to, 3))
        offset = (self.resize_to - INPUT_SIZE) // 2
        cropped = resized[offset : offset + INPUT_SIZE, offset : offset + INPUT_SIZE]
        return (cropped / 255.0).astype(np.float32)


class ImagenetProfile(PreprocessingProfile):
    """Whole image to 224 x 224 RGB with anti-aliasing, then Inception scaling to [-1, 1]."""

    name = "imagenet-v1"
    version = "1"

    def __call__(self, image: DecodedImage) -> np.ndarray:
        pixels = to_display_uint8(image)
        if pixels.dtype == np.bool_:
            pixels = pixels.astype(np.uint8) * 255
        if pixels.ndim == 3 and pixels.shape[2] in (1, 2):
            pixels = pixels[:, :, 0]  # gray or gray+alpha: keep the gray
        if pixels.ndim == 2:
            # Resize the single gray plane, then copy it: a third of the work of resizing RGB.
            plane = resize(pixels.astype(np.float32), (INPUT_SIZE, INPUT_SIZE), preserve_range=True)
            resized = np.repeat(plane[:, :, np.newaxis], 3, axis=2)
        else:
            rgb = pixels[:, :, :3].astype(np.float32)
            resized = resize(rgb, (INPUT_SIZE, INPUT_SIZE, 3), preserve_range=True, anti_aliasing=True)
        return (resized / 127.5 - 1.0).astype(np.float32)


PROFILES: dict[str, PreprocessingProfile] = {
    profile.name: profile for profile in (SeedProfile(), ImagenetProfile())
}


def get_profile(name: str) -> PreprocessingProfile:
    """Return the profile called ``name``; raise ``UnknownProfile`` naming the known ones otherwise."""
    try:
        return PROFILES[name]
    except KeyError:
        raise UnknownProfile(name) from None


def build_batch(*, images: Sequence[DecodedImage], profile: PreprocessingProfile | str) -> np.ndarray:
    """Apply ``profile`` to each image and stack them into a float32 (N, 224, 224, 3) batch."""
    if isinstance(profile, str):
        profile = get_profile(profile)
    batch = np.empty((len(images), INPUT_SIZE, INPUT_SIZE, 3), dtype=np.float32)
    for index, image in enumerate(images):
        batch[index] = profile(image)
    return batch
