"""Named, versioned preprocessing profiles: a ``DecodedImage`` in, a float32 (height, width, 3) array out.

The size is the model's input size, ``profile(image, size=(height, width))``, 224 x 224 by default.

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

Every other profile is for models trained the way public MURA projects train them: the same 8-bit
rendering, gray (or gray+alpha) to 3 equal channels, alpha dropped from RGBA, the whole image resized
to the model's input size with anti-aliasing (``resized_rgb``: no crop, nothing at the edges is
lost), then the scaling the model was trained with:

- ``unit-v1``: ``x / 255``;
- ``imagenet-meanstd-v1``: ``x / 255``, then ImageNet mean/std per channel (torchvision's);
- ``keras-<base>-v1``: ``keras.applications.<base>.preprocess_input`` (mode "torch" for DenseNet,
  "caffe" for ResNet50 and VGG, "tf" for MobileNet(V2), InceptionV3, Xception and InceptionResNetV2,
  none for EfficientNet, which rescales inside the model);
- ``imagenet-v1``: the first profile for newly trained InceptionResNetV2 models, ``x / 127.5 - 1``:
  equal in values to ``keras-inception-resnet-v2-v1``; both names stay valid.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache

import numpy as np
import scipy.sparse
from skimage.transform import resize

from inference.decoding import DecodedImage

INPUT_SIZE = 224
DEFAULT_SIZE = (INPUT_SIZE, INPUT_SIZE)  # (height, width) of the seed's and most ImageNet models' input


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


class UnsupportedInputSize(ValueError):
    """A profile asked for an input size it cannot make (the seed makes 224 x 224 only)."""


def _checked_size(size: Sequence[int]) -> tuple[int, int]:
    try:
        height, width = (int(value) for value in size)
    except (TypeError, ValueError):
        raise UnsupportedInputSize(f"input size must be (height, width), not {size!r}") from None
    if height < 1 or width < 1:
        raise UnsupportedInputSize(f"input size must be positive, not {height}x{width}")
    return height, width


class PreprocessingProfile:
    """A named, versioned transform from a decoded image to the model's (height, width, 3) float32 input."""

    name: str
    version: str

    def check_size(self, size: Sequence[int]) -> tuple[int, int]:
        """``size`` as (height, width) when this profile can make it; ``UnsupportedInputSize`` otherwise."""
        return _checked_size(size)

    def __call__(self, image: DecodedImage, size: Sequence[int] = DEFAULT_SIZE) -> np.ndarray:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<PreprocessingProfile {self.name} v{self.version}>"


class SeedProfile(PreprocessingProfile):
    """The original Flask app: resize to (300, 300, 3), centre crop 224, divide by 255 (twice scaled)."""

    name = "seed"
    version = "1"
    resize_to = 300

    def check_size(self, size: Sequence[int]) -> tuple[int, int]:
        """(224, 224), the only size the seed's 300 -> centre-crop-224 pipeline makes."""
        height, width = _checked_size(size)
        if (height, width) != DEFAULT_SIZE:
            raise UnsupportedInputSize(
                f"preprocessing profile {self.name!r} makes 224x224 inputs only (the original app's "
                f"resize to 300 and centre crop of 224), but the model takes {height}x{width}: "
                "use a profile that resizes to the model's size, such as 'unit-v1' or 'imagenet-meanstd-v1'"
            )
        return height, width

    def __call__(self, image: DecodedImage, size: Sequence[int] = DEFAULT_SIZE) -> np.ndarray:
        self.check_size(size)
        pixels = to_display_uint8(image)
        resized = _seed_resize_fast(pixels, self.resize_to)
        if resized is None:
            resized = resize(pixels, (self.resize_to, self.resize_to, 3))
        offset = (self.resize_to - INPUT_SIZE) // 2
        cropped = resized[offset : offset + INPUT_SIZE, offset : offset + INPUT_SIZE]
        return (cropped / 255.0).astype(np.float32)


def resized_rgb(image: DecodedImage, size: Sequence[int] = DEFAULT_SIZE) -> np.ndarray:
    """The whole image as float32 RGB display values 0..255, resized to ``size`` with anti-aliasing.

    Gray (or gray+alpha) becomes three equal channels and alpha is dropped from RGBA; nothing is
    cropped, so nothing at the edges is lost. Every profile but ``seed`` starts from this.
    """
    height, width = _checked_size(size)
    pixels = to_display_uint8(image)
    if pixels.dtype == np.bool_:
        pixels = pixels.astype(np.uint8) * 255
    if pixels.ndim == 3 and pixels.shape[2] in (1, 2):
        pixels = pixels[:, :, 0]  # gray or gray+alpha: keep the gray
    if pixels.ndim == 2:
        # Resize the single gray plane, then copy it: a third of the work of resizing RGB.
        plane = resize(pixels.astype(np.float32), (height, width), preserve_range=True)
        return np.repeat(plane[:, :, np.newaxis], 3, axis=2)
    rgb = pixels[:, :, :3].astype(np.float32)
    return resize(rgb, (height, width, 3), preserve_range=True, anti_aliasing=True)


# The ImageNet statistics of torchvision and keras.applications' "torch" mode, and the BGR means
# of "caffe" mode; float32 so the arithmetic is Keras's own (it works in place on float32 arrays).
_IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
_IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
_CAFFE_BGR_MEAN = np.array([103.939, 116.779, 123.68], dtype=np.float32)


def _unit(rgb: np.ndarray) -> np.ndarray:
    return rgb / np.float32(255.0)


def _imagenet_mean_std(rgb: np.ndarray) -> np.ndarray:
    return (rgb / np.float32(255.0) - _IMAGENET_MEAN) / _IMAGENET_STD


def _caffe(rgb: np.ndarray) -> np.ndarray:
    return rgb[:, :, ::-1] - _CAFFE_BGR_MEAN  # RGB -> BGR, then zero-centre; no scaling


def _minus_one_to_one(rgb: np.ndarray) -> np.ndarray:
    return rgb / np.float32(127.5) - np.float32(1.0)


def _identity(rgb: np.ndarray) -> np.ndarray:
    return rgb


class ResizedProfile(PreprocessingProfile):
    """``resized_rgb`` to the model's input size, then a per-pixel scaling (``scale``)."""

    def __init__(self, *, name: str, version: str, scale: Callable[[np.ndarray], np.ndarray]) -> None:
        self.name = name
        self.version = version
        self.scale = scale

    def __call__(self, image: DecodedImage, size: Sequence[int] = DEFAULT_SIZE) -> np.ndarray:
        rgb = resized_rgb(image, size).astype(np.float32, copy=False)
        return np.ascontiguousarray(self.scale(rgb), dtype=np.float32)


# keras.applications bases by the preprocess_input each one uses (identical in Keras 3 and TF 2.10).
_KERAS_BASES = {
    "densenet": _imagenet_mean_std,  # mode "torch"
    "resnet50": _caffe,
    "vgg16": _caffe,
    "vgg19": _caffe,
    "mobilenet": _minus_one_to_one,  # mode "tf"
    "mobilenet-v2": _minus_one_to_one,
    "inception-v3": _minus_one_to_one,
    "xception": _minus_one_to_one,
    "inception-resnet-v2": _minus_one_to_one,
    "efficientnet": _identity,  # the model rescales 0..255 itself
}


PROFILES: dict[str, PreprocessingProfile] = {
    profile.name: profile
    for profile in (
        SeedProfile(),
        # The first profile for new models; its values equal keras-inception-resnet-v2-v1's.
        ResizedProfile(name="imagenet-v1", version="1", scale=_minus_one_to_one),
        ResizedProfile(name="unit-v1", version="1", scale=_unit),
        ResizedProfile(name="imagenet-meanstd-v1", version="1", scale=_imagenet_mean_std),
        *(
            ResizedProfile(name=f"keras-{base}-v1", version="1", scale=scale)
            for base, scale in _KERAS_BASES.items()
        ),
    )
}


def get_profile(name: str) -> PreprocessingProfile:
    """Return the profile called ``name``; raise ``UnknownProfile`` naming the known ones otherwise."""
    try:
        return PROFILES[name]
    except KeyError:
        raise UnknownProfile(name) from None


def build_batch(
    *,
    images: Sequence[DecodedImage],
    profile: PreprocessingProfile | str,
    size: Sequence[int] = DEFAULT_SIZE,
) -> np.ndarray:
    """Apply ``profile`` to each image and stack them into a float32 (N, height, width, 3) batch."""
    if isinstance(profile, str):
        profile = get_profile(profile)
    height, width = profile.check_size(size)
    batch = np.empty((len(images), height, width, 3), dtype=np.float32)
    for index, image in enumerate(images):
        batch[index] = profile(image, (height, width))
    return batch
