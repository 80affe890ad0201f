"""The optional ONNX Runtime: converted once per weight file, checked against Keras, Keras when it cannot."""

import functools
import io
import json
import logging
import os

import numpy as np
import pytest
from django.core.management import call_command

from inference import onnx_runtime, predictor
from inference.decoding import decode_image
from inference.onnx_runtime import forget_loaded
from inference.predictor import Predictor
from inference.registry import ModelRegistry
from tests.conftest import SHARED_DATA
from tests.inference.conftest import build_tiny_cnn


@pytest.fixture(autouse=True)
def _fresh_sessions():
    forget_loaded()
    yield
    forget_loaded()


def _images(count: int = 6) -> list:
    files = sorted((SHARED_DATA / "png16").glob("*.png"))[:3] + sorted((SHARED_DATA / "jpeg").glob("*.jpg"))
    return [decode_image(path.read_bytes()) for path in files[:count]]


def _probabilities(loaded, runtime: str, onnx_dir) -> tuple[Predictor, list[float]]:
    runner = Predictor(loaded, batch_size=4, runtime=runtime, onnx_dir=onnx_dir)
    return runner, [image.abnormal_probability for image in runner.predict(_images()).images]


def test_onnx_predictions_equal_keras_and_the_converted_file_is_reused(tiny_model_dir, tmp_path):
    loaded = ModelRegistry(tiny_model_dir).get("XR_WRIST")
    _, keras_probabilities = _probabilities(loaded, "keras", tmp_path)

    runner, onnx_probabilities = _probabilities(loaded, "onnx", tmp_path)

    assert runner.runtime == "onnx" and runner.predict(_images(1)).runtime == "onnx"
    np.testing.assert_allclose(onnx_probabilities, keras_probabilities, atol=1e-5)
    assert np.ptp(keras_probabilities) > 0.01  # the images are told apart: equality means something
    path = runner.onnx_model.path
    assert path.parent == tmp_path and path.name.startswith(loaded.version)
    assert runner.onnx_model.max_difference <= 1e-5
    written = path.stat().st_mtime_ns
    forget_loaded()  # as a new worker process would
    assert Predictor(loaded, runtime="onnx", onnx_dir=tmp_path).runtime == "onnx"
    assert path.stat().st_mtime_ns == written


def test_onnx_heat_maps_equal_keras_heat_maps(tiny_model_dir, tmp_path):
    loaded = ModelRegistry(tiny_model_dir).get("XR_WRIST")
    keras_runner = Predictor(loaded, batch_size=4)
    onnx_runner = Predictor(loaded, batch_size=4, runtime="onnx", onnx_dir=tmp_path)
    batch = keras_runner.preprocess(_images())

    expected = keras_runner.run(batch, heatmaps=True)
    actual = onnx_runner.run(batch, heatmaps=True)

    assert actual.heatmaps.shape == expected.heatmaps.shape == (len(batch), 26, 26)
    np.testing.assert_allclose(actual.heatmaps, expected.heatmaps, atol=1e-4)
    np.testing.assert_allclose(actual.probabilities, expected.probabilities, atol=1e-5)


def test_a_damaged_converted_file_is_converted_again(tiny_model_dir, tmp_path):
    loaded = ModelRegistry(tiny_model_dir).get("XR_WRIST")
    path = Predictor(loaded, runtime="onnx", onnx_dir=tmp_path).onnx_model.path
    path.write_bytes(b"not an onnx file")
    forget_loaded()

    runner, probabilities = _probabilities(loaded, "onnx", tmp_path)

    assert runner.runtime == "onnx" and path.stat().st_size > 1000
    np.testing.assert_allclose(probabilities, _probabilities(loaded, "keras", tmp_path)[1], atol=1e-5)


def test_a_file_converted_from_other_weights_is_replaced(tiny_model_dir, tmp_path):
    loaded = ModelRegistry(tiny_model_dir).get("XR_WRIST")
    path = Predictor(loaded, runtime="onnx", onnx_dir=tmp_path).onnx_model.path
    other = Predictor(build_tiny_cnn(seed=1))  # same architecture, other weights
    onnx_runtime.convert(other.split.features_model, path=path)
    forget_loaded()

    runner, probabilities = _probabilities(loaded, "onnx", tmp_path)

    assert runner.runtime == "onnx"
    np.testing.assert_allclose(probabilities, _probabilities(loaded, "keras", tmp_path)[1], atol=1e-5)


def test_keras_serves_when_onnx_cannot_match_it(tiny_model_dir, tmp_path, monkeypatch, caplog):
    loaded = ModelRegistry(tiny_model_dir).get("XR_WRIST")
    strict = functools.partial(onnx_runtime.load_onnx_model, tolerance=-1.0)  # nothing can pass
    monkeypatch.setattr(predictor, "load_onnx_model", strict)

    with caplog.at_level(logging.WARNING, logger="inference.predictor"):
        runner, probabilities = _probabilities(loaded, "onnx", tmp_path)

    assert runner.runtime == "keras" and runner.predict(_images(1)).runtime == "keras"
    assert "Using Keras for tiny-wrist" in caplog.text and "differ from Keras" in caplog.text
    assert probabilities == _probabilities(loaded, "keras", tmp_path)[1]


def test_an_unknown_runtime_is_refused(tiny_model_dir):
    loaded = ModelRegistry(tiny_model_dir).get("XR_WRIST")
    with pytest.raises(ValueError, match="keras, onnx"):
        Predictor(loaded, runtime="tensorrt")


def test_convert_onnx_command_converts_installed_models_and_predict_uses_them(
    tiny_model_dir, tmp_path, settings, shared_data
):
    settings.MSKDETECT_ONNX_DIR = tmp_path / "onnx"
    out = io.StringIO()
    call_command("convert_onnx", "--model-dir", str(tiny_model_dir), stdout=out)

    version = ModelRegistry(tiny_model_dir).get("XR_WRIST").version
    (path,) = (tmp_path / "onnx").glob(f"{version}*.onnx")
    assert out.getvalue().startswith(f"XR_WRIST: {path} (max difference from Keras")
    assert "XR_HAND" not in out.getvalue()  # configured, but not installed

    forget_loaded()
    written = path.stat().st_mtime_ns
    out = io.StringIO()
    radiograph = shared_data / "jpeg" / "IMG0003301.jpg"
    call_command(
        "predict", str(radiograph), "--body-part", "XR_WRIST", "--model-dir", str(tiny_model_dir),
        "--runtime", "onnx", stdout=out,
    )  # fmt: skip
    result = json.loads(out.getvalue())
    assert result["runtime"] == "onnx" and result["model_version"] == version
    assert path.stat().st_mtime_ns == written


@pytest.mark.slow
def test_the_seed_architecture_runs_in_onnx_runtime_like_keras_2(
    seed_format_loaded, seed_format_file, tmp_path
):
    if os.environ.get("MSKDETECT_SLOW_TESTS") != "1":
        pytest.skip("set MSKDETECT_SLOW_TESTS=1 to convert the InceptionResNetV2 (about 90 s)")
    runner = Predictor(seed_format_loaded, runtime="onnx", onnx_dir=tmp_path)

    assert runner.runtime == "onnx"
    feature_maps, outputs = runner.onnx_model(seed_format_file.inputs)  # the network cut at conv_7b_ac
    assert feature_maps.shape == (len(outputs), 5, 5, 1536)
    np.testing.assert_allclose(outputs, seed_format_file.reference, atol=1e-5)
    expected = Predictor(seed_format_loaded).run(seed_format_file.inputs, heatmaps=True)
    actual = runner.run(seed_format_file.inputs, heatmaps=True)
    np.testing.assert_allclose(actual.heatmaps, expected.heatmaps, atol=1e-4)
