"""The heat map as a DICOM secondary capture: the radiograph with the Grad-CAM overlay and the result
burned in, for PACS viewers that show images but not SR content.

The picture is the Prediction's stored overlay (inference.gradcam: the radiograph in gray, the heat
map in colour, same size as the original) with text bands added above and below, so no anatomy is
covered. A demo model's image says "DEMO MODEL — NOT FOR CLINICAL USE" in a red band at the top
and at the bottom. BurnedInAnnotation is YES: the text is part of the pixels.
"""

import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import highdicom as hd
import matplotlib
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset

from studies.dicom_results.sr import (
    DEMO_NOTICE,
    MANUFACTURER,
    SC_SERIES_NUMBER,
    SOFTWARE_VERSION,
    Placement,
    series_description,
)

# The capture shows where the model looked; a heat map is far coarser than this, and a full-size
# 2048 x 2500 RGB capture would be 15 MB per image per destination. Larger pictures are scaled down.
CAPTURE_MAX_SIDE = 1280
TEXT_BAND = (16, 16, 16)
DEMO_BAND = (190, 20, 20)
WHITE = (255, 255, 255)
# DejaVu (shipped with matplotlib, a dependency already): it has the em dash and every Latin letter.
_FONT_DIR = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
_LABEL_WORDS = {"abnormal": "ABNORMAL", "normal": "NORMAL", "indeterminate": "INDETERMINATE (no call)"}


@dataclass(frozen=True)
class CaptureText:
    """What is burned in: model, the image's P(abnormal), the study's result, the demo flag."""

    model_name: str
    model_version: str
    image_probability: float
    study_label: str
    study_probability: float
    threshold: float
    indeterminate_low: float | None
    indeterminate_high: float | None
    demo: bool
    note: str = ""  # e.g. why there is no heat map

    def lines(self) -> list[str]:
        if self.indeterminate_low is not None and self.indeterminate_high is not None:
            rule = f"indeterminate band {self.indeterminate_low:.2f}-{self.indeterminate_high:.2f}"
        else:
            rule = f"threshold {self.threshold:.2f}"
        lines = [
            f"MSK-Detect {SOFTWARE_VERSION} · model {self.model_name} ({self.model_version[:12]}) · "
            "Grad-CAM heat map",
            f"This image: P(abnormal) {self.image_probability:.3f}",
            f"Study result: {_LABEL_WORDS.get(self.study_label, self.study_label.upper())} · "
            f"P(abnormal) {self.study_probability:.3f} · {rule}",
        ]
        if self.note:
            lines.append(self.note)
        return lines


def rgb_from_png(data: bytes) -> np.ndarray:
    """A stored heat-map overlay (PNG) as an RGB uint8 array."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def rgb_from_gray(pixels: np.ndarray) -> np.ndarray:
    """8-bit display pixels (gray, or already RGB) as an RGB uint8 array."""
    if pixels.ndim == 2:
        return np.repeat(pixels[:, :, np.newaxis], 3, axis=2).astype(np.uint8)
    return pixels[:, :, :3].astype(np.uint8)


def fitted(picture: np.ndarray, *, max_side: int = CAPTURE_MAX_SIDE) -> np.ndarray:
    """The picture scaled down (aspect kept) so that neither side exceeds `max_side`."""
    height, width = picture.shape[:2]
    scale = max_side / max(height, width)
    if scale >= 1:
        return picture
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(picture).resize(size, Image.Resampling.LANCZOS))


def annotated_pixels(picture: np.ndarray, text: CaptureText) -> np.ndarray:
    """The picture (RGB uint8) with the text bands added above (and, for a demo, below)."""
    height, width = picture.shape[:2]
    lines = text.lines()
    font = _fitting_font("DejaVuSans.ttf", lines, width=width, size=max(10, width // 40))
    line_height = _line_height(font)
    margin = max(2, line_height // 4)
    demo_font = _fitting_font("DejaVuSans-Bold.ttf", [DEMO_NOTICE], width=width, size=max(12, width // 24))
    demo_line = _line_height(demo_font)
    demo_height = demo_line + 2 * margin if text.demo else 0
    info_height = len(lines) * line_height + 2 * margin
    top = demo_height + info_height
    canvas = Image.new("RGB", (width, top + height + demo_height), TEXT_BAND)
    canvas.paste(Image.fromarray(picture), (0, top))
    draw = ImageDraw.Draw(canvas)
    if text.demo:
        for y in (0, top + height):
            draw.rectangle([0, y, width, y + demo_height - 1], fill=DEMO_BAND)
            draw.text((margin, y + margin), DEMO_NOTICE, font=demo_font, fill=WHITE)
    for index, line in enumerate(lines):
        draw.text((margin, demo_height + margin + index * line_height), line, font=font, fill=WHITE)
    return np.asarray(canvas)


def _fitting_font(name: str, lines: Sequence[str], *, width: int, size: int) -> ImageFont.FreeTypeFont:
    # Large enough to read on a full radiograph, small enough that the longest line fits.
    while True:
        font = _font(name, size)
        if size <= 6 or max(font.getlength(line) for line in lines) <= width * 0.96:
            return font
        size -= max(1, size // 10)


@cache
def _font(name: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(_FONT_DIR / name), size)


def _line_height(font: ImageFont.FreeTypeFont) -> int:
    _, top, _, bottom = font.getbbox("MSK-Detect Äg|")
    return int((bottom - top) * 1.35) + 1


def build_secondary_capture(
    *, source: Dataset, pixels: np.ndarray, text: CaptureText, placement: Placement, study_source: Dataset
) -> hd.sc.SCImage:
    """One SC image for one source image: in `study_source`'s study, referencing `source`."""
    annotated = annotated_pixels(fitted(pixels), text)
    with warnings.catch_warnings():
        # highdicom warns about single-component person names; the source's names are copied as
        # they are, it is not ours to rewrite them.
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name")
        capture = _sc_image(study_source=study_source, annotated=annotated, text=text, placement=placement)
    # The bands change neither the row nor the column direction: the source's orientation holds
    # (empty when the source does not say, as DICOM allows).
    capture.PatientOrientation = list(source.get("PatientOrientation") or [])
    # General Series Laterality (2C: a paired body part) from the source, empty when it does not say.
    sides = [str(source.get(keyword) or "") for keyword in ("Laterality", "ImageLaterality")]
    capture.Laterality = next((side for side in sides if side in ("L", "R")), "")
    for keyword in ("ImageLaterality", "BodyPartExamined"):
        if source.get(keyword):
            setattr(capture, keyword, source.get(keyword))
    capture.ConversionType = "WSD"  # made on a workstation from another image, not digitised
    capture.ImageType = ["DERIVED", "SECONDARY"]
    capture.BurnedInAnnotation = "YES"
    capture.DerivationDescription = (
        "Grad-CAM heat map of P(abnormal) overlaid by MSK-Detect; result text burned in"
        + ("; DEMO MODEL - NOT FOR CLINICAL USE" if text.demo else "")
    )
    reference = Dataset()
    reference.ReferencedSOPClassUID = source.SOPClassUID
    reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
    capture.SourceImageSequence = [reference]
    return capture


def _sc_image(
    *, study_source: Dataset, annotated: np.ndarray, text: CaptureText, placement: Placement
) -> hd.sc.SCImage:
    return hd.sc.SCImage.from_ref_dataset(
        ref_dataset=study_source,
        pixel_array=annotated,
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=placement.series_instance_uid,
        series_number=SC_SERIES_NUMBER,
        sop_instance_uid=placement.sop_instance_uid,
        instance_number=placement.instance_number,
        manufacturer=MANUFACTURER,
        # Required by highdicom for a patient image; build_secondary_capture puts the source's value.
        patient_orientation=("L", "F"),
        transfer_syntax_uid="1.2.840.10008.1.2.1",  # Explicit VR Little Endian: every PACS takes it
        series_description=series_description(kind="SC", demo=text.demo),
        manufacturer_model_name=MANUFACTURER,
        software_versions=SOFTWARE_VERSION,
    )
