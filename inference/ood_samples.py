"""Images for fitting and testing the OOD score: the shared radiographs, and things that are not.

``shared_radiographs`` lists ``../shared/data`` with the body part each file shows; the ones of the
upper limb (the MURA body parts) are the default OOD reference of the demo models and of
``install_model``. ``not_radiographs`` generates what a model must not believe: colour and grey
photographs, screenshots and rendered text pages, CT and MR slices (pydicom's own CT and MR test
slices converted to plain pixels, the Shepp-Logan phantom, and synthetic ones). Everything is made
here, deterministically, with no download.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from inference.decoding import DecodedImage, DecodeError, decode_image

# Files of ../shared/data (README.md there) and the MURA body parts each shows; () = none of them.
_UPPER_LIMB_JPEG = ("XR_FOREARM", "XR_HAND", "XR_WRIST")  # forearm+hand, hand+wrist, forearm
SHARED_BODY_PARTS: dict[str, tuple[str, ...]] = {
    "png16/": ("XR_WRIST",),
    "jpeg/": _UPPER_LIMB_JPEG,
    "dicom/NM_Kakadu44_SOTmarkerincons.dcm": ("XR_HAND",),
    "dicom/RG3_J2KR.dcm": (),  # distal tibia
    "dicom/RG2_JPLL.dcm": (),  # hip
    "dicom/CR1_6154_noext": (),  # cervical spine
}
SHARED_DESCRIPTIONS = {
    "dicom/RG3_J2KR.dcm": "tibia",
    "dicom/RG2_JPLL.dcm": "hip",
    "dicom/CR1_6154_noext": "cervical spine",
}
_NOT_IMAGES = {".md", ".csv", ".txt", ".json"}


@dataclass(frozen=True)
class Sample:
    name: str
    kind: str  # e.g. "radiograph", "photograph", "screenshot", "ct", "mr"
    image: DecodedImage
    body_parts: tuple[str, ...] = ()  # MURA body parts a radiograph shows


def image_files(directory: Path) -> list[Path]:
    """Image-looking files under ``directory`` (recursively), sorted; notes and tables left out."""
    return sorted(
        path
        for path in Path(directory).rglob("*")
        if path.is_file() and path.suffix.lower() not in _NOT_IMAGES and not path.name.startswith(".")
    )


def _shared_body_parts(relative: str) -> tuple[str, ...] | None:
    for prefix, parts in SHARED_BODY_PARTS.items():
        if relative == prefix or (prefix.endswith("/") and relative.startswith(prefix)):
            return parts
    return None


def shared_radiographs(shared_dir: Path) -> list[Sample]:
    """The decodable shared radiographs with the MURA body parts each shows (unknown files left out)."""
    samples = []
    for path in image_files(shared_dir):
        relative = path.relative_to(shared_dir).as_posix()
        parts = _shared_body_parts(relative)
        if parts is None:
            continue
        try:
            image = decode_image(path.read_bytes())
        except (OSError, DecodeError):
            continue
        samples.append(Sample(name=relative, kind="radiograph", image=image, body_parts=parts))
    return samples


def upper_limb_paths(shared_dir: Path) -> list[Path]:
    """The shared radiographs of MURA body parts: the default OOD reference."""
    return [
        path
        for path in image_files(shared_dir)
        if _shared_body_parts(path.relative_to(shared_dir).as_posix())
    ]


# --- not radiographs --------------------------------------------------------------------------------


def _decoded(pixels: np.ndarray) -> DecodedImage:
    pixels = np.ascontiguousarray(pixels)
    height, width = pixels.shape[:2]
    bits = 16 if pixels.dtype == np.uint16 else 8
    return DecodedImage(pixels=pixels, format="png", width=width, height=height, bit_depth=bits)


def _uint8(values: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(values, 0.0, 1.0) * 255).astype(np.uint8)


def photographs() -> list[Sample]:
    """skimage's sample photographs: colour ones and grey ones (a grey photo is no radiograph either)."""
    import skimage.data

    colour = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field")
    grey = ("camera", "moon", "coins", "clock", "grass", "gravel", "cell")
    samples = [
        Sample(name=f"skimage.{name}", kind="photograph", image=_decoded(getattr(skimage.data, name)()))
        for name in (*colour, *grey)
    ]
    return samples


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without a scalable default font
        return ImageFont.load_default()


_WORDS = [
    "patient",
    "study",
    "report",
    "findings",
    "impression",
    "fracture",
    "normal",
    "radiograph",
    "wrist",
    "hand",
    "view",
    "lateral",
    "anterior",
    "posterior",
    "clinical",
    "history",
    "pain",
    "swelling",
    "no",
    "acute",
    "osseous",
    "abnormality",
    "soft",
    "tissue",
]


def _text_lines(rng: np.random.Generator, count: int) -> list[str]:
    return [" ".join(rng.choice(_WORDS, size=int(rng.integers(5, 11)))) for _ in range(count)]


def text_page(
    *, rng: np.random.Generator, dark: bool = False, size: tuple[int, int] = (600, 800)
) -> np.ndarray:
    """A rendered page of text (black on white, or a light-on-dark terminal)."""
    background, ink = ((12, 12, 16), (200, 230, 200)) if dark else ((250, 250, 248), (20, 20, 20))
    page = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(page)
    font_size = int(rng.integers(12, 22))
    font = _font(font_size)
    y = 30
    for line in _text_lines(rng, 60):
        if y > size[1] - 40:
            break
        draw.text((30, y), line, fill=ink, font=font)
        y += int(font_size * 1.5)
    return np.asarray(page)


def screenshot(*, rng: np.random.Generator, size: tuple[int, int] = (800, 500)) -> np.ndarray:
    """A user-interface screenshot: title bar, side bar, buttons, panels and text in flat colours."""
    shot = Image.new("RGB", size, (245, 246, 250))
    draw = ImageDraw.Draw(shot)
    accent = tuple(int(v) for v in rng.integers(40, 220, size=3))
    draw.rectangle((0, 0, size[0], 40), fill=accent)
    draw.text((12, 12), "MSK-Detect · Worklist", fill=(255, 255, 255), font=_font(16))
    draw.rectangle((0, 40, 160, size[1]), fill=(230, 232, 238))
    for index, line in enumerate(_text_lines(rng, 8)):
        draw.text((12, 60 + 28 * index), line[:18], fill=(40, 40, 60), font=_font(13))
    for row in range(6):
        top = 60 + row * 62
        draw.rectangle((180, top, size[0] - 20, top + 50), outline=(200, 200, 210), fill=(255, 255, 255))
        draw.text((192, top + 16), " ".join(_text_lines(rng, 1)), fill=(30, 30, 30), font=_font(14))
        colour = tuple(int(v) for v in rng.integers(0, 255, size=3))
        draw.rectangle((size[0] - 120, top + 12, size[0] - 32, top + 38), fill=colour)
    return np.asarray(shot)


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    axis = np.linspace(-1.0, 1.0, size)
    return np.meshgrid(axis, axis, indexing="ij")


def ct_slice(*, rng: np.random.Generator, region: str, size: int = 256) -> np.ndarray:
    """A CT-like axial slice (16-bit, windowed as a CT viewer would): a body on black air.

    ``chest``: soft tissue with a bright rib ring, dark lungs and a bright vertebra; ``abdomen``:
    organs of slightly different density; ``head``: a bright skull ring round the brain.
    """
    y, x = _grid(size)
    ry, rx = rng.uniform(0.55, 0.7), rng.uniform(0.8, 0.92)
    if region == "head":
        ry, rx = rng.uniform(0.75, 0.85), rng.uniform(0.62, 0.72)
    body = ((y / ry) ** 2 + (x / rx) ** 2) <= 1.0
    image = np.where(body, 0.45, 0.0)
    radius = np.sqrt((y / ry) ** 2 + (x / rx) ** 2)
    if region == "chest":
        ring = (radius > 0.82) & (radius < 0.9) & body
        ribs = ring & (np.sin(np.arctan2(y, x) * 9 + rng.uniform(0, np.pi)) > 0.2)
        image = np.where(ribs, 0.95, image)
        for side in (-1, 1):
            lung = (((y + 0.05) / (ry * 0.6)) ** 2 + ((x - side * rx * 0.42) / (rx * 0.32)) ** 2) <= 1.0
            image = np.where(lung, 0.06, image)
        spine = ((y - ry * 0.6) ** 2 + x**2) <= (0.09) ** 2
        image = np.where(spine, 0.92, image)
    elif region == "abdomen":
        for _ in range(4):
            centre = rng.uniform(-0.4, 0.4, size=2)
            organ = ((y - centre[0]) / rng.uniform(0.12, 0.3)) ** 2 + (
                (x - centre[1]) / rng.uniform(0.12, 0.3)
            ) ** 2
            image = np.where((organ <= 1) & body, rng.uniform(0.5, 0.62), image)
        spine = ((y - ry * 0.62) ** 2 + x**2) <= 0.1**2
        image = np.where(spine, 0.92, image)
    else:
        skull = (radius > 0.88) & body
        image = np.where(skull, 0.97, np.where(body, 0.5, 0.0))
        ventricles = ((y / 0.18) ** 2 + (np.abs(x) - 0.1) ** 2 / 0.06**2) <= 1
        image = np.where(ventricles, 0.35, image)
    image = image + rng.normal(0, 0.025, size=image.shape) * (image > 0)
    return np.rint(np.clip(image, 0, 1) * 65535).astype(np.uint16)


def mr_slice(*, rng: np.random.Generator, size: int = 256) -> np.ndarray:
    """An MR-like axial brain slice: bright scalp, dark skull, grey and white matter, dark ventricles."""
    y, x = _grid(size)
    ry, rx = rng.uniform(0.75, 0.85), rng.uniform(0.6, 0.7)
    radius = np.sqrt((y / ry) ** 2 + (x / rx) ** 2)
    image = np.where(radius <= 1.0, 0.75, 0.0)  # scalp fat is bright on T1
    image = np.where(radius <= 0.93, 0.08, image)  # skull is dark
    folds = 0.12 * np.sin(np.arctan2(y, x) * rng.integers(14, 22)) * np.sin(radius * 25)
    image = np.where(radius <= 0.88, 0.45 + folds, image)  # cortex, folded
    image = np.where(radius <= 0.7, 0.62, image)  # white matter
    ventricles = ((y / 0.25) ** 2 + (np.abs(x) - 0.09) ** 2 / 0.05**2) <= 1
    image = np.where(ventricles, 0.12, image)
    image = image + rng.normal(0, 0.03, size=image.shape) * (radius <= 1.0)
    return np.rint(np.clip(image, 0, 1) * 4095).astype(np.uint16)


def _pydicom_slice(name: str) -> np.ndarray | None:
    """Pixels of one of pydicom's bundled test slices, min-max scaled to 16 bits (None if absent)."""
    try:
        import pydicom
        from pydicom.data import get_testdata_file

        path = get_testdata_file(name, download=False)
        if path is None:
            return None
        pixels = pydicom.dcmread(path).pixel_array.astype(np.float64)
    except Exception:  # an optional extra sample; its absence only shrinks the set
        return None
    low, high = float(pixels.min()), float(pixels.max())
    return np.rint((pixels - low) / max(high - low, 1.0) * 65535).astype(np.uint16)


def cross_sections(*, seed: int = 0) -> list[Sample]:
    """CT and MR slices: pydicom's CT and MR test slices, the Shepp-Logan phantom, synthetic ones."""
    import skimage.data

    rng = np.random.default_rng(seed)
    samples = []
    for name, kind in (("CT_small.dcm", "ct"), ("MR_small.dcm", "mr")):
        pixels = _pydicom_slice(name)
        if pixels is not None:
            samples.append(Sample(name=f"pydicom.{name}", kind=kind, image=_decoded(pixels)))
    phantom = skimage.data.shepp_logan_phantom()
    samples.append(Sample(name="skimage.shepp_logan_phantom", kind="mr", image=_decoded(_uint8(phantom))))
    for region in ("chest", "chest", "abdomen", "abdomen", "head"):
        samples.append(
            Sample(name=f"synthetic CT {region}", kind="ct", image=_decoded(ct_slice(rng=rng, region=region)))
        )
    for index in range(3):
        samples.append(
            Sample(name=f"synthetic MR brain {index + 1}", kind="mr", image=_decoded(mr_slice(rng=rng)))
        )
    return samples


def screens(*, seed: int = 0) -> list[Sample]:
    """Screenshots and text pages: skimage's scanned text, rendered pages, UI screenshots, a terminal."""
    import skimage.data

    rng = np.random.default_rng(seed)
    samples = [
        Sample(name="skimage.text", kind="screenshot", image=_decoded(skimage.data.text())),
        Sample(name="skimage.page", kind="screenshot", image=_decoded(skimage.data.page())),
    ]
    for index in range(3):
        samples.append(
            Sample(name=f"text page {index + 1}", kind="screenshot", image=_decoded(text_page(rng=rng)))
        )
    samples.append(Sample(name="terminal", kind="screenshot", image=_decoded(text_page(rng=rng, dark=True))))
    for index in range(3):
        samples.append(
            Sample(name=f"UI screenshot {index + 1}", kind="screenshot", image=_decoded(screenshot(rng=rng)))
        )
    return samples


def not_radiographs(*, seed: int = 0) -> list[Sample]:
    """Everything the OOD score must tell from a radiograph, deterministic for a seed."""
    return [*photographs(), *screens(seed=seed), *cross_sections(seed=seed)]


# --- reference folders ------------------------------------------------------------------------------

MAX_REFERENCE_IMAGES = 300


class ReferenceFolderError(ValueError):
    """A folder that gives no usable reference images; the message says why."""


def reference_paths(directory: Path, *, body_part: str, limit: int = MAX_REFERENCE_IMAGES) -> list[Path]:
    """The in-distribution images of ``body_part`` in ``directory``, at most ``limit``, spread evenly.

    A MURA-layout folder gives the body part's *train* images (its valid split stays for validation);
    the shared test data gives its upper-limb radiographs; any other folder gives all its images.
    """
    from inference.mura import MuraFormatError, read_split
    from inference.shared_data import SharedDataNotFound, locate_shared_data

    directory = Path(directory)
    if not directory.is_dir():
        raise ReferenceFolderError(f"{directory} is not a folder")
    try:
        studies = read_split(mura_root=directory, split="train", body_part=body_part)
        paths = [path for study in studies for path in study.image_paths]
        if not paths:
            raise ReferenceFolderError(f"the MURA train split in {directory} has no {body_part} images")
    except MuraFormatError:
        try:
            shared = locate_shared_data().resolve()
        except SharedDataNotFound:
            shared = None
        paths = upper_limb_paths(directory) if directory.resolve() == shared else image_files(directory)
    if not paths:
        raise ReferenceFolderError(f"no images in {directory}")
    if len(paths) > limit:
        paths = [paths[index] for index in np.linspace(0, len(paths) - 1, limit).round().astype(int)]
    return paths


def decode_reference(paths: list[Path], *, root: Path) -> tuple[list[DecodedImage], list[str], list[str]]:
    """Decoded images, their names (relative to ``root``) and the names of files that did not decode."""
    images, names, skipped = [], [], []
    for path in paths:
        name = path.relative_to(root).as_posix() if path.is_relative_to(root) else path.name
        try:
            images.append(decode_image(path.read_bytes()))
            names.append(name)
        except (OSError, DecodeError):
            skipped.append(name)
    return images, names, skipped
