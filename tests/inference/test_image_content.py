"""The upload gate on pixels: colour photographs and screenshots are refused, radiographs pass."""

import io

import numpy as np
import pytest
import skimage.data
from PIL import Image, ImageDraw, ImageFont

from inference.decoding import DecodeError, decode_image
from inference.image_content import (
    NotARadiograph,
    check_radiograph_content,
    content_stats,
    radiograph_content_problem,
)
from tests.conftest import SHARED_DATA

SHARED_IMAGES = sorted(
    path for path in SHARED_DATA.rglob("*") if path.is_file() and path.suffix not in {".md", ".csv"}
)


def text_page(size=(800, 600), *, colour=False) -> np.ndarray:
    """A rendered page of text, as a screenshot of a document would be."""
    image = Image.new("RGB" if colour else "L", size, "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=18)
    for line in range(25):
        draw.text(
            (20, 10 + 22 * line), f"Discharge letter, line {line}: findings and plan", fill="black", font=font
        )
    return np.array(image)


def user_interface() -> np.ndarray:
    """A flat grey application window with a blue title bar, a menu and an empty black viewer."""
    image = Image.new("RGB", (1000, 700), (240, 240, 240))
    draw = ImageDraw.Draw(image)
    draw.rectangle([0, 0, 1000, 40], fill=(30, 60, 160))
    draw.rectangle([20, 60, 300, 680], fill="white")
    font = ImageFont.load_default(size=16)
    for item in range(20):
        draw.text((30, 70 + 25 * item), f"Menu item {item}", fill="black", font=font)
    draw.rectangle([320, 60, 980, 680], fill="black")
    return np.array(image)


@pytest.mark.parametrize("path", SHARED_IMAGES, ids=lambda p: p.name)
def test_every_shared_radiograph_passes(path):
    decoded = decode_image(path.read_bytes())
    assert radiograph_content_problem(decoded.pixels) is None, content_stats(decoded.pixels)


def test_a_radiograph_with_a_faint_tint_passes():
    wrist = decode_image(sorted((SHARED_DATA / "png16").glob("*.png"))[0].read_bytes()).pixels
    tinted = np.stack([wrist * 1.0, wrist * 0.95, wrist * 0.88], axis=2).astype(np.uint16)
    assert radiograph_content_problem(tinted) is None
    sepia = np.stack([wrist >> 8, (wrist >> 8) * 0.9, (wrist >> 8) * 0.8], axis=2).astype(np.uint8)
    assert radiograph_content_problem(sepia) is None


@pytest.mark.parametrize("name", ["astronaut", "coffee", "chelsea", "rocket"])
def test_colour_photographs_are_refused(name):
    problem = radiograph_content_problem(getattr(skimage.data, name)())
    assert problem is not None and problem.code == "colour"
    assert "colour photograph" in problem.message


def test_text_is_refused_whether_photographed_or_rendered():
    for pixels in (skimage.data.text(), skimage.data.page()):
        problem = radiograph_content_problem(pixels)
        assert problem is not None and problem.code == "text" and "text" in problem.message
    rendered = radiograph_content_problem(text_page())
    assert rendered is not None and rendered.code in {"flat", "text"} and "screenshot" in rendered.message


def test_screenshots_and_blank_images_are_refused():
    assert radiograph_content_problem(user_interface()).code == "flat"
    assert radiograph_content_problem(np.full((200, 300), 7, dtype=np.uint8)).code == "flat"


def test_tiny_images_are_only_judged_on_colour():
    assert radiograph_content_problem(np.arange(16 * 16, dtype=np.uint16).reshape(16, 16)) is None
    tiny_red = np.zeros((8, 8, 3), dtype=np.uint8)
    tiny_red[..., 0] = 255
    assert radiograph_content_problem(tiny_red).code == "colour"


def test_the_refusal_is_a_decode_error_with_a_stable_code():
    with pytest.raises(NotARadiograph) as caught:
        check_radiograph_content(skimage.data.coffee())
    assert isinstance(caught.value, DecodeError) and caught.value.code == "not_a_radiograph"


def test_a_colour_jpeg_decodes_and_is_refused_by_the_gate():
    buffer = io.BytesIO()
    Image.fromarray(skimage.data.chelsea()).save(buffer, format="JPEG")
    decoded = decode_image(buffer.getvalue())
    assert decoded.pixels.ndim == 3
    assert radiograph_content_problem(decoded.pixels).code == "colour"
