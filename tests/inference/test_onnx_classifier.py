"""A classifier installed as an ONNX file: served by ONNX Runtime as it is, at its own input size."""

import hashlib
from pathlib import Path

import numpy as np
import pytest

from inference import tasks
from inference.decoding import DecodedImage, decode_image
from inference.onnx_runtime import OnnxClassifier, convert
from inference.predictor import Predictor
from inference.preprocessing import build_batch
from inference.registry import ManifestError, ModelLoadError, ModelRegistry
from studies.models import Prediction, StudyStatus
from tests.conftest import SHARED_DATA
from tests.inference.conftest import write_manifest
from tests.inference.test_tasks import add_image, make_study

# Non-square on purpose: a swapped height and width cannot pass unnoticed.
INPUT_SIZE = (96, 128)


def _tiny_keras(*, units: int, activation: str, input_shape=(*INPUT_SIZE, 3), seed: int = 0):
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape=input_shape)
    features = keras.layers.Conv2D(4, 3, strides=2, activation="relu")(inputs)
    pooled = keras.layers.GlobalAveragePooling2D()(features)
    dense = keras.layers.Dense(units, activation=activation)
    model = keras.Model(inputs, dense(pooled))
    kernel, bias = dense.get_weights()
    dense.set_weights([kernel * 20.0, bias])  # spread the outputs away from 0.5
    return model


def _channels_first_fixed_batch_onnx(path: Path, weights: np.ndarray) -> None:
    """A PyTorch-style export: input (1, 3, H, W), batch fixed at 1; sigmoid(mean colour @ weights)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["image"], ["colour"], axes=[2, 3], keepdims=0),
            helper.make_node("MatMul", ["colour", "weights"], ["logit"]),
            helper.make_node("Sigmoid", ["logit"], ["probability"]),
        ],
        "channels_first",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, *INPUT_SIZE])],
        [helper.make_tensor_value_info("probability", TensorProto.FLOAT, [1, 1])],
        [numpy_helper.from_array(weights.astype(np.float32), "weights")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # what every ONNX Runtime 1.1x reads
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())


class OnnxFiles:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.softmax = _tiny_keras(units=2, activation="softmax")
        self.sigmoid = _tiny_keras(units=1, activation="sigmoid", seed=1)
        convert(self.softmax, path=directory / "softmax.onnx")
        convert(self.sigmoid, path=directory / "sigmoid.onnx")
        convert(
            _tiny_keras(units=2, activation="softmax", input_shape=(None, None, 3)),
            path=directory / "any_size.onnx",
        )
        self.colour_weights = np.array([[6.0], [-4.0], [1.0]])
        _channels_first_fixed_batch_onnx(directory / "channels_first.onnx", self.colour_weights)
        (directory / "broken.onnx").write_bytes(b"\x08\x07 not a protobuf model" * 20)


@pytest.fixture(scope="module")
def onnx_files(tmp_path_factory) -> OnnxFiles:
    return OnnxFiles(tmp_path_factory.mktemp("onnx-classifiers"))


def _entry(file: str, **overrides: object) -> dict[str, object]:
    entry: dict[str, object] = {
        "file": file,
        "preprocessing": "unit-v1",
        "labels": ["normal", "abnormal"],
        "threshold": 0.5,
    }
    entry.update(overrides)
    return entry


def _radiographs() -> list[DecodedImage]:
    paths = (
        sorted((SHARED_DATA / "png16").glob("*.png"))[:3] + sorted((SHARED_DATA / "jpeg").glob("*.jpg"))[:2]
    )
    return [decode_image(path.read_bytes()) for path in paths]


def _loaded(onnx_files: OnnxFiles, **entry: object):
    write_manifest(onnx_files.directory, {"XR_WRIST": _entry(**entry)})
    return ModelRegistry(onnx_files.directory).get("XR_WRIST")


def test_an_onnx_classifier_predicts_at_its_own_input_size_like_its_keras_source(onnx_files):
    loaded = _loaded(onnx_files, file="softmax.onnx")
    images = _radiographs()
    predictor = Predictor(loaded, batch_size=4)  # chunks of 4 and 1

    result = predictor.predict(images)

    assert isinstance(loaded.model, OnnxClassifier) and predictor.input_size == INPUT_SIZE
    batch = build_batch(images=images, profile="unit-v1", size=INPUT_SIZE)
    expected = np.asarray(onnx_files.softmax(batch, training=False))[:, 1]  # labels: normal, abnormal
    probabilities = [image.abnormal_probability for image in result.images]
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)
    assert np.ptp(expected) > 0.01, "the images must get different answers for the test to mean anything"
    assert result.abnormal_probability == pytest.approx(float(np.mean(expected)), abs=1e-5)
    assert (result.runtime, result.heatmaps_available) == ("onnx", False)
    assert loaded.version == hashlib.sha256((onnx_files.directory / "softmax.onnx").read_bytes()).hexdigest()


def test_an_onnx_classifier_gives_no_heat_maps_and_says_so(onnx_files, caplog):
    predictor = Predictor(_loaded(onnx_files, file="softmax.onnx"), runtime="keras")
    batch = predictor.preprocess(_radiographs()[:2])

    run = predictor.run(batch, heatmaps=True)

    assert batch.shape == (2, *INPUT_SIZE, 3)
    assert run.heatmaps is None and run.probabilities.shape == (2,)
    assert predictor.runtime == "onnx"  # the file is the model: there is no Keras to fall back on
    assert "Grad-CAM failed" not in caplog.text  # nothing failed: there was nothing to compute


def test_a_sigmoid_onnx_model_of_p_normal_gives_one_minus_its_output(onnx_files):
    images = _radiographs()
    batch = build_batch(images=images, profile="unit-v1", size=INPUT_SIZE)
    p_normal = np.asarray(onnx_files.sigmoid(batch, training=False))[:, 0]

    as_normal = Predictor(_loaded(onnx_files, file="sigmoid.onnx", output="sigmoid", labels=["normal"]))
    as_abnormal = Predictor(_loaded(onnx_files, file="sigmoid.onnx", output="sigmoid", labels=["abnormal"]))

    np.testing.assert_allclose(as_normal.abnormal_probabilities(batch), 1.0 - p_normal, atol=1e-5)
    np.testing.assert_allclose(as_abnormal.abnormal_probabilities(batch), p_normal, atol=1e-5)
    assert np.ptp(p_normal) > 0.01
    result = as_normal.predict(images)
    assert result.label == ("abnormal" if result.abnormal_probability >= 0.5 else "normal")


def test_a_channels_first_export_with_batch_one_serves_whole_studies(onnx_files):
    # Colours that differ by channel: a model fed channels in the wrong order gives other numbers.
    rng = np.random.default_rng(3)
    images = []
    for index in range(5):
        pixels = rng.integers(0, 256, size=(150 + 10 * index, 200, 3), dtype=np.uint8)
        pixels[:, :, index % 3] //= 3
        images.append(DecodedImage(pixels, "png", 200, 150 + 10 * index, 8, {}))
    loaded = _loaded(onnx_files, file="channels_first.onnx", output="sigmoid", labels=["abnormal"])
    predictor = Predictor(loaded, batch_size=4)

    result = predictor.predict(images)

    assert (loaded.model.channels_first, loaded.model.fixed_batch, predictor.input_size) == (
        True,
        1,
        INPUT_SIZE,
    )
    batch = build_batch(images=images, profile="unit-v1", size=INPUT_SIZE)
    expected = 1.0 / (1.0 + np.exp(-(batch.mean(axis=(1, 2)) @ onnx_files.colour_weights)[:, 0]))
    np.testing.assert_allclose([image.abnormal_probability for image in result.images], expected, atol=1e-5)
    assert np.ptp(expected) > 0.05


def test_an_onnx_file_without_a_fixed_image_size_is_refused(onnx_files):
    with pytest.raises(
        ModelLoadError, match=r"any_size\.onnx for XR_WRIST has input .* leaves the image size open"
    ):
        _loaded(onnx_files, file="any_size.onnx")


def test_a_damaged_onnx_file_is_refused_naming_it(onnx_files):
    with pytest.raises(
        ModelLoadError, match=r"broken\.onnx for XR_WRIST is not a model ONNX Runtime can run"
    ):
        _loaded(onnx_files, file="broken.onnx")


def test_a_manifest_that_misreads_the_outputs_fails_before_any_image(onnx_files):
    loaded = _loaded(onnx_files, file="softmax.onnx", output="sigmoid", labels=["abnormal"])

    with pytest.raises(ManifestError, match=r"describes 1 sigmoid output.*gives 2 outputs per image"):
        Predictor(loaded)


def test_a_seed_profile_on_a_model_of_another_size_is_refused(onnx_files):
    loaded = _loaded(onnx_files, file="softmax.onnx", preprocessing="seed")

    with pytest.raises(ValueError, match=r"'seed' makes 224x224 inputs only.*96x128"):
        Predictor(loaded)


@pytest.mark.django_db
def test_the_worker_stores_onnx_predictions_without_heat_maps(onnx_files, settings):
    write_manifest(onnx_files.directory, {"XR_WRIST": _entry("softmax.onnx")})
    settings.MSKDETECT_MODEL_DIR = onnx_files.directory
    study = make_study()
    paths = sorted((SHARED_DATA / "png16").glob("*.png"))[:2]
    images = [add_image(study, path.read_bytes()) for path in paths]

    tasks.predict_images([image.id for image in images])

    study.refresh_from_db()
    assert study.status == StudyStatus.PREDICTED, study.error
    predictions = list(Prediction.objects.filter(radiograph__study=study))
    assert len(predictions) == 2
    for prediction in predictions:
        assert 0.0 <= prediction.abnormal_probability <= 1.0
        assert not prediction.heatmap  # no Grad-CAM for a model served from its ONNX file
        # ...and the result says why, on the study page and in the API.
        assert "opaque graph (ONNX or SavedModel)" in prediction.heatmap_note
