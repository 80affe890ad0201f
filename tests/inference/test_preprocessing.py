"""Preprocessing profiles: the seed profile must equal the original app's skimage pipeline."""

import numpy as np
import pytest
import skimage.io
from skimage.transform import resize

from inference.decoding import DecodedImage, decode_image
from inference.preprocessing import (
    PROFILES,
    UnknownProfile,
    UnsupportedInputSize,
    build_batch,
    get_profile,
    resized_rgb,
    to_display_uint8,
)
from tests.conftest import SHARED_DATA
from tests.inference import hostile


def original_flask_app(path) -> np.ndarray:
    """The seed app, verbatim: imread, resize to (300, 300, 3), centre crop 224, divide by 255."""
    img = skimage.io.imread(str(path))
    img = resize(img, (300, 300, 3))
    img = img[38:262, 38:262]
    return img / 255.0


def _rgb() -> np.ndarray:
    gray = hostile.gradient(260, 330)
    return np.dstack([gray, gray[::-1], gray[:, ::-1]])


EIGHT_BIT_FILES = {
    "gray.png": lambda: hostile.png_bytes(hostile.gradient(260, 330)),
    "rgb.png": lambda: hostile.png_bytes(_rgb()),
    "rgba.png": lambda: hostile.png_bytes(np.dstack([_rgb(), hostile.gradient(260, 330)[::-1]])),
    "small.png": lambda: hostile.png_bytes(hostile.gradient(120, 90)),  # upsampled, not shrunk
    "gray.jpg": lambda: hostile.jpeg_bytes(hostile.gradient(260, 330)),
    "rgb.jpg": lambda: hostile.jpeg_bytes(_rgb()),
}


@pytest.mark.parametrize("name", sorted(EIGHT_BIT_FILES))
def test_seed_profile_equals_original_app_on_8bit_file(name, tmp_path):
    path = tmp_path / name
    path.write_bytes(EIGHT_BIT_FILES[name]())

    out = get_profile("seed")(decode_image(path.read_bytes()))

    assert out.shape == (224, 224, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out, original_flask_app(path), atol=1e-6, rtol=0)
    assert out.max() <= 1 / 255 + 1e-7 and out.min() >= 0  # the seed's double scaling, kept


@pytest.mark.parametrize("name", sorted(path.name for path in (SHARED_DATA / "jpeg").glob("*.jpg")))
def test_seed_profile_equals_original_app_on_real_jpeg(name):
    path = SHARED_DATA / "jpeg" / name

    out = get_profile("seed")(decode_image(path.read_bytes()))

    np.testing.assert_allclose(out, original_flask_app(path), atol=1e-6, rtol=0)


def test_seed_gray_becomes_three_equal_channels_and_rgba_mixes_alpha(tmp_path):
    seed = get_profile("seed")
    gray = seed(decode_image(EIGHT_BIT_FILES["gray.png"]()))
    rgba = seed(decode_image(EIGHT_BIT_FILES["rgba.png"]()))
    rgb = seed(decode_image(EIGHT_BIT_FILES["rgb.png"]()))

    np.testing.assert_array_equal(gray[:, :, 0], gray[:, :, 1])
    np.testing.assert_array_equal(gray[:, :, 0], gray[:, :, 2])
    # skimage interpolates 4 channels down to 3: alpha leaks in, as it did in the seed app.
    assert np.abs(rgba - rgb).max() > 0.1 / 255


REAL_FILES = sorted(
    [
        *(SHARED_DATA / "png16").glob("*.png"),
        *(SHARED_DATA / "dicom").iterdir(),
        *(SHARED_DATA / "jpeg").glob("*.jpg"),
    ]
)


@pytest.mark.parametrize("path", REAL_FILES, ids=lambda path: path.name)
def test_seed_profile_equals_original_app_on_every_real_radiograph(path, tmp_path):
    # 16-bit PNGs and DICOM reach the original pipeline as the 8-bit rendering the profile makes.
    decoded = decode_image(path.read_bytes())
    eight_bit = tmp_path / "display.png"
    eight_bit.write_bytes(hostile.png_bytes(to_display_uint8(decoded)))

    out = get_profile("seed")(decoded)

    expected = original_flask_app(path if decoded.pixels.dtype == np.uint8 else eight_bit)
    np.testing.assert_allclose(out, expected, atol=1e-6, rtol=0)
    # In practice the fast separable resize matches skimage to float64 rounding (~1e-16), so the
    # float32 profile output is identical; a drift of even 1e-9 would mean a different transform.
    assert np.abs(out - expected).max() <= 1e-9


def original_on_pixels(pixels: np.ndarray) -> np.ndarray:
    """The seed app's transform on decoded pixels (no file round trip, so any dtype and shape)."""
    return resize(pixels, (300, 300, 3))[38:262, 38:262] / 255.0


SYNTHETIC_SHAPES = [
    (1, 1),  # a single pixel
    (7, 2000),  # upscaled along one axis, shrunk along the other
    (16, 16),
    (299, 301),
    (300, 300),  # no resampling at all
    (301, 299),
    (457, 1203),
    (903, 97),
    (2501, 2047),
]


@pytest.mark.parametrize("shape", SYNTHETIC_SHAPES, ids=lambda shape: f"{shape[0]}x{shape[1]}")
@pytest.mark.parametrize("channels", [None, 1, 3], ids=["gray", "gray1", "rgb"])
def test_seed_profile_equals_original_resize_on_synthetic_gray_and_rgb(shape, channels):
    rng = np.random.default_rng(shape[0] * 7 + shape[1])
    full_shape = shape if channels is None else (*shape, channels)
    pixels = rng.integers(0, 256, size=full_shape, dtype=np.uint8)
    if shape[0] > 2:
        pixels[: shape[0] // 2] //= 4  # structure, not only noise: a dark half

    out = get_profile("seed")(DecodedImage(pixels, "png", shape[1], shape[0], 8, {}))

    expected = original_on_pixels(pixels)
    assert out.shape == (224, 224, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out, expected, atol=1e-9, rtol=0)


@pytest.mark.parametrize("channels", [2, 4], ids=["gray+alpha", "rgba"])
def test_seed_profile_keeps_skimage_channel_mixing_for_alpha_images(channels):
    rng = np.random.default_rng(channels)
    pixels = rng.integers(0, 256, size=(333, 517, channels), dtype=np.uint8)

    out = get_profile("seed")(DecodedImage(pixels, "png", 517, 333, 8, {}))

    np.testing.assert_allclose(out, original_on_pixels(pixels), atol=1e-9, rtol=0)
    assert not np.allclose(out[:, :, 0], original_on_pixels(pixels[:, :, 0])[:, :, 0], atol=1e-6)


def test_seed_profile_on_a_bool_image_resizes_like_skimage_with_nearest_neighbour():
    pixels = np.zeros((410, 390), dtype=bool)
    pixels[100:300, 150:250] = True

    out = get_profile("seed")(DecodedImage(pixels, "png", 390, 410, 1, {}))

    np.testing.assert_array_equal(out, original_on_pixels(pixels).astype(np.float32))


def test_16bit_png_is_min_max_stretched_to_8bit():
    stored = (hostile.gradient().astype(np.uint16) * 16) + 1000  # 12-bit data in a 16-bit PNG
    decoded = decode_image(hostile.png_bytes(stored))

    display = to_display_uint8(decoded)

    assert display.dtype == np.uint8 and display.min() == 0 and display.max() == 255
    expected = np.rint((stored - 1000.0) * 255 / (stored.max() - 1000.0)).astype(np.uint8)
    np.testing.assert_array_equal(display, expected)


def test_16bit_png_through_seed_equals_original_app_on_its_8bit_rendering(tmp_path):
    source = SHARED_DATA / "png16" / "1068_1253423501_03_WRI-L2_F010.png"
    decoded = decode_image(source.read_bytes())
    eight_bit = tmp_path / "display.png"
    eight_bit.write_bytes(hostile.png_bytes(to_display_uint8(decoded)))

    out = get_profile("seed")(decoded)

    np.testing.assert_allclose(out, original_flask_app(eight_bit), atol=1e-6, rtol=0)


def test_dicom_window_maps_linearly_to_8bit():
    stored = np.array([[0, 100, 200, 300, 400]], dtype=np.uint16)
    ds = hostile.dicom_dataset(stored, bits_stored=12)
    ds.WindowCenter = 200.5
    ds.WindowWidth = 201  # LINEAR: 100 -> 0, 300 -> 255
    decoded = decode_image(hostile.dicom_bytes(ds))

    display = to_display_uint8(decoded)

    np.testing.assert_array_equal(display, [[0, 0, 128, 255, 255]])


def test_imagenet_profile_scales_to_minus_one_one_and_ignores_alpha():
    profile = get_profile("imagenet-v1")
    gray = profile(decode_image(EIGHT_BIT_FILES["gray.png"]()))
    rgb = profile(decode_image(EIGHT_BIT_FILES["rgb.png"]()))
    rgba = profile(decode_image(EIGHT_BIT_FILES["rgba.png"]()))
    black = profile(DecodedImage(np.zeros((30, 30), np.uint8), "png", 30, 30, 8, {}))

    assert gray.shape == rgb.shape == (224, 224, 3) and gray.dtype == np.float32
    assert -1 <= gray.min() < -0.9 and 0.9 < gray.max() <= 1
    np.testing.assert_array_equal(gray[:, :, 0], gray[:, :, 2])
    np.testing.assert_allclose(rgba, rgb, atol=1e-6)
    np.testing.assert_array_equal(black, np.full((224, 224, 3), -1.0, np.float32))


def test_unknown_profile_is_a_clear_key_error():
    with pytest.raises(UnknownProfile) as caught:
        get_profile("seed-v0")

    assert isinstance(caught.value, KeyError)
    assert "seed-v0" in str(caught.value) and "imagenet-v1" in str(caught.value)


def test_profiles_are_named_and_versioned():
    assert {name: (profile.name, profile.version) for name, profile in PROFILES.items()} == {
        "seed": ("seed", "1"),
        "imagenet-v1": ("imagenet-v1", "1"),
        "unit-v1": ("unit-v1", "1"),
        "imagenet-meanstd-v1": ("imagenet-meanstd-v1", "1"),
        **{name: (name, "1") for name in KERAS_PROFILES},
    }


@pytest.mark.parametrize("profile_name", ["seed", "imagenet-v1"])
def test_build_batch_stacks_every_shared_radiograph(profile_name):
    paths = sorted((SHARED_DATA / "dicom").iterdir()) + sorted((SHARED_DATA / "png16").glob("*.png"))[:2]
    images = [decode_image(path.read_bytes()) for path in paths]
    profile = get_profile(profile_name)

    batch = build_batch(images=images, profile=profile_name)

    assert batch.shape == (len(images), 224, 224, 3) and batch.dtype == np.float32
    assert np.isfinite(batch).all()
    for index, image in enumerate(images):
        np.testing.assert_array_equal(batch[index], profile(image))
        assert batch[index].std() > 0  # an image, not a constant


# Profile name -> the keras.applications module whose preprocess_input it reproduces.
KERAS_PROFILES = {
    "keras-densenet-v1": "densenet",
    "keras-resnet50-v1": "resnet50",
    "keras-vgg16-v1": "vgg16",
    "keras-vgg19-v1": "vgg19",
    "keras-mobilenet-v1": "mobilenet",
    "keras-mobilenet-v2-v1": "mobilenet_v2",
    "keras-inception-v3-v1": "inception_v3",
    "keras-xception-v1": "xception",
    "keras-inception-resnet-v2-v1": "inception_resnet_v2",
    "keras-efficientnet-v1": "efficientnet",
}
# Model input sizes public MURA projects use, and a non-square one to catch a swapped height/width.
MODEL_SIZES = [(224, 224), (320, 320), (299, 256)]


@pytest.fixture(scope="module")
def profile_images() -> dict[str, DecodedImage]:
    """Real radiographs of each kind (16-bit PNG, DICOM, JPEG) and an RGB image whose channels differ."""
    return {
        "png16": decode_image((SHARED_DATA / "png16" / "1068_1253423501_03_WRI-L2_F010.png").read_bytes()),
        "dicom": decode_image((SHARED_DATA / "dicom" / "RG3_J2KR.dcm").read_bytes()),
        "jpeg": decode_image((SHARED_DATA / "jpeg" / "IMG0003301.jpg").read_bytes()),
        # Radiographs are gray, so R, G and B are equal there; this one shows any channel-order slip.
        "rgb": decode_image(EIGHT_BIT_FILES["rgb.png"]()),
    }


@pytest.mark.parametrize("profile_name", sorted(KERAS_PROFILES))
def test_keras_profiles_equal_keras_preprocess_input_on_real_radiographs(profile_name, profile_images):
    import importlib

    preprocess_input = importlib.import_module(
        f"keras.applications.{KERAS_PROFILES[profile_name]}"
    ).preprocess_input
    profile = get_profile(profile_name)

    for kind, image in profile_images.items():
        for size in MODEL_SIZES:
            pixels = resized_rgb(image, size)
            expected = preprocess_input(pixels[np.newaxis].copy())[0]

            out = profile(image, size)

            assert out.shape == (*size, 3) and out.dtype == np.float32, (kind, size)
            np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6, err_msg=f"{kind} {size}")


def test_resized_rgb_is_the_whole_image_resized_with_anti_aliasing(profile_images):
    # A reference that resizes all three channels at once (the profile resizes one gray plane).
    for kind, image in profile_images.items():
        display = to_display_uint8(image).astype(np.float32)
        rgb = np.dstack([display] * 3) if display.ndim == 2 else display[:, :, :3]
        expected = resize(rgb, (299, 256, 3), preserve_range=True, anti_aliasing=True)

        pixels = resized_rgb(image, (299, 256))

        assert pixels.shape == (299, 256, 3) and pixels.min() >= 0 and pixels.max() <= 255
        np.testing.assert_allclose(pixels, expected, atol=1e-3, err_msg=kind)
        assert pixels.std() > 10, "an image, not a blur"


def test_resized_rgb_copies_gray_into_three_channels_and_drops_alpha():
    gray = resized_rgb(decode_image(EIGHT_BIT_FILES["gray.png"]()), (320, 320))
    rgb = resized_rgb(decode_image(EIGHT_BIT_FILES["rgb.png"]()), (320, 320))
    rgba = resized_rgb(decode_image(EIGHT_BIT_FILES["rgba.png"]()), (320, 320))

    np.testing.assert_array_equal(gray[:, :, 0], gray[:, :, 1])
    np.testing.assert_array_equal(gray[:, :, 0], gray[:, :, 2])
    np.testing.assert_array_equal(rgba, rgb)


def test_unit_and_imagenet_mean_std_profiles_scale_the_resized_pixels(profile_images):
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    for kind, image in profile_images.items():
        pixels = resized_rgb(image, (320, 320)).astype(np.float64)

        unit = get_profile("unit-v1")(image, (320, 320))
        mean_std = get_profile("imagenet-meanstd-v1")(image, (320, 320))

        np.testing.assert_allclose(unit, pixels / 255, atol=1e-6, err_msg=kind)
        assert unit.min() >= 0 and unit.max() <= 1
        np.testing.assert_allclose(mean_std, (pixels / 255 - mean) / std, atol=1e-5, err_msg=kind)


def test_imagenet_v1_keeps_its_values_which_equal_the_inception_resnet_v2_profile(profile_images):
    for image in profile_images.values():
        imagenet = get_profile("imagenet-v1")(image)

        np.testing.assert_array_equal(imagenet, get_profile("keras-inception-resnet-v2-v1")(image))
        np.testing.assert_allclose(imagenet, resized_rgb(image) / 127.5 - 1, atol=1e-6)


def test_densenet_profile_is_imagenet_mean_std_and_caffe_profiles_are_bgr(profile_images):
    rgb = profile_images["rgb"]
    pixels = resized_rgb(rgb)

    vgg = get_profile("keras-vgg16-v1")(rgb)

    np.testing.assert_array_equal(
        get_profile("keras-densenet-v1")(rgb), get_profile("imagenet-meanstd-v1")(rgb)
    )
    np.testing.assert_allclose(vgg[:, :, 0], pixels[:, :, 2] - 103.939, atol=1e-4)  # blue first
    np.testing.assert_allclose(vgg[:, :, 2], pixels[:, :, 0] - 123.68, atol=1e-4)
    np.testing.assert_array_equal(get_profile("keras-efficientnet-v1")(rgb), pixels)


def test_seed_profile_makes_224_only_and_says_what_to_use_instead(profile_images):
    seed = get_profile("seed")
    image = profile_images["png16"]

    np.testing.assert_array_equal(seed(image, (224, 224)), seed(image))
    for call in (
        lambda: seed(image, (320, 320)),
        lambda: build_batch(images=[image], profile="seed", size=(320, 320)),
    ):
        with pytest.raises(UnsupportedInputSize, match=r"'seed' makes 224x224 inputs only.*320x320.*unit-v1"):
            call()


@pytest.mark.parametrize("size", [(0, 224), (224,), ("a", 224)])
def test_a_nonsense_size_is_refused(size, profile_images):
    with pytest.raises(UnsupportedInputSize, match="input size"):
        get_profile("unit-v1")(profile_images["rgb"], size)


def test_build_batch_makes_the_models_input_size():
    paths = sorted((SHARED_DATA / "png16").glob("*.png"))[:3]
    images = [decode_image(path.read_bytes()) for path in paths]
    profile = get_profile("keras-densenet-v1")

    batch = build_batch(images=images, profile="keras-densenet-v1", size=(320, 256))

    assert batch.shape == (3, 320, 256, 3) and batch.dtype == np.float32
    for index, image in enumerate(images):
        np.testing.assert_array_equal(batch[index], profile(image, (320, 256)))
