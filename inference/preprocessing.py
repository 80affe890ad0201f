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

import numpy as np
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
