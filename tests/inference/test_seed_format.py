"""The registry loads the seed's weight files: Keras 2 HDF5, mixed_float16, InceptionResNetV2 inside."""

from __future__ import annotations

import os
import shutil
import subprocess
import textwrap
from pathlib import Path

import numpy as np
import pytest

from inference.registry import ModelRegistry, file_sha256
from tests.inference.conftest import wrist_entry, write_manifest

# The float32 rebuild equals Keras 2's float32 computation to rounding; 1e-5 leaves room for
# different kernel orderings of the same sums on other CPUs.
TOLERANCE = 1e-5


def test_keras3_load_model_fails_on_the_seed_format(seed_format_file):
    # Why the registry rebuilds the architecture: Keras 3 cannot deserialise the file's dtype policy.
    import keras

    with pytest.raises(Exception) as caught:
        keras.saving.load_model(seed_format_file.path, compile=False)
    assert "quantization_mode" in str(caught.value) or isinstance(caught.value, TypeError | ValueError)


def test_registry_loads_the_seed_format_with_keras2_outputs(seed_format_file, seed_format_loaded):
    reference = seed_format_file.reference
    assert np.std(reference[:, 0]) > 0.05, "reference outputs must differ between inputs to prove anything"

    outputs = np.asarray(seed_format_loaded.model(seed_format_file.inputs, training=False))

    assert outputs.dtype == np.float32
    np.testing.assert_allclose(outputs, reference, atol=TOLERANCE, rtol=0)
    assert seed_format_loaded.version == file_sha256(path=seed_format_file.path)
    assert seed_format_loaded.model.get_layer("inception_resnet_v2").get_layer("conv_7b_ac") is not None


def test_truncated_seed_file_names_file_and_body_part(seed_format_file, tmp_path):
    from inference.registry import ModelLoadError

    data = seed_format_file.path.read_bytes()
    (tmp_path / "WRIST.h5").write_bytes(data[: len(data) // 3])
    write_manifest(tmp_path, {"XR_WRIST": wrist_entry(file="WRIST.h5")})

    with pytest.raises(ModelLoadError) as caught:
        ModelRegistry(tmp_path).get("XR_WRIST")
    assert "WRIST.h5" in str(caught.value)
    assert "XR_WRIST" in str(caught.value)


# --- The genuine article: a file written by TensorFlow 2.10.1 under Python 3.10 -------------------

GENUINE_CACHE = Path.home() / ".cache" / "mskdetect" / "tf210"
_WRITE_GENUINE = textwrap.dedent(
    """
    import sys
    import numpy as np
    import tensorflow as tf
    from tensorflow import keras
    assert tf.__version__ == "2.10.1", tf.__version__

    def seed_model():
        base = keras.applications.InceptionResNetV2(
            include_top=False, weights=None, input_shape=(224, 224, 3))
        return keras.Sequential([base, keras.layers.Flatten(), keras.layers.Dense(256, activation="relu"),
                                 keras.layers.Dropout(0.5), keras.layers.Dense(2, activation="softmax")])

    out = sys.argv[1]
    inputs = np.random.default_rng(3).random((4, 224, 224, 3), dtype=np.float32)
    tf.keras.utils.set_random_seed(3)
    keras.mixed_precision.set_global_policy("float32")
    reference_model = seed_model()
    head = reference_model.layers[-1]
    features = keras.Model(reference_model.inputs, reference_model.layers[-2].output)(inputs).numpy()
    kernel, bias = head.get_weights()
    margins = features @ (kernel[:, 0] - kernel[:, 1])
    scale = 2.0 / max(float(np.std(margins)), 1e-12)
    centre = float(np.mean(margins)) * scale / 2
    head.set_weights([kernel * scale, np.array([-centre, centre], dtype=bias.dtype)])
    np.save(out + "/inputs.npy", inputs)
    np.save(out + "/reference.npy", reference_model(inputs, training=False).numpy())
    keras.mixed_precision.set_global_policy("mixed_float16")
    model = seed_model()
    model.set_weights(reference_model.get_weights())
    model.compile(optimizer=keras.optimizers.RMSprop(1e-4), loss="categorical_crossentropy")
    model.save(out + "/WRIST.h5")
    """
)


def _python310() -> str | None:
    # A pyenv shim for an inactive version exists but fails, so each candidate is run once.
    candidates = [os.environ.get("MSKDETECT_PYTHON310"), shutil.which("python3.10")]
    candidates += sorted(str(path) for path in Path.home().glob(".pyenv/versions/3.10*/bin/python3.10"))
    for candidate in filter(None, candidates):
        probe = subprocess.run([candidate, "--version"], capture_output=True, text=True, check=False)
        if probe.returncode == 0 and probe.stdout.startswith("Python 3.10"):
            return candidate
    return None


@pytest.fixture(scope="session")
def genuine_seed_file() -> Path:
    """WRIST.h5 written by TF 2.10.1 (Lambda layers and all), cached under ~/.cache/mskdetect/tf210."""
    if os.environ.get("MSKDETECT_SLOW_TESTS") != "1":
        pytest.skip("set MSKDETECT_SLOW_TESTS=1 to build a TensorFlow 2.10 venv (downloads ~600 MB)")
    python310 = _python310()
    if python310 is None:
        pytest.skip("python3.10 is not available (TensorFlow 2.10 has no wheels for newer Pythons)")
    venv = GENUINE_CACHE / "venv"
    out = GENUINE_CACHE / "files"
    if not (out / "WRIST.h5").is_file():
        if not (venv / "bin" / "python").is_file():
            subprocess.run([python310, "-m", "venv", str(venv)], check=True)
            subprocess.run(
                [str(venv / "bin" / "pip"), "install", "--quiet", "tensorflow==2.10.1", "numpy<2"], check=True
            )
        out.mkdir(parents=True, exist_ok=True)
        script = GENUINE_CACHE / "write_genuine.py"
        script.write_text(_WRITE_GENUINE, encoding="utf-8")
        subprocess.run([str(venv / "bin" / "python"), str(script), str(out)], check=True)
    return out / "WRIST.h5"


@pytest.mark.slow
def test_registry_loads_a_genuine_tf210_file(genuine_seed_file, tmp_path):
    import h5py

    with h5py.File(genuine_seed_file, "r") as handle:
        assert "Lambda" in handle.attrs["model_config"], "TF 2.10's InceptionResNetV2 holds Lambda layers"
    model_dir = tmp_path / "models"
    model_dir.mkdir()
    (model_dir / "WRIST.h5").symlink_to(genuine_seed_file)
    write_manifest(model_dir, {"XR_WRIST": wrist_entry(file="WRIST.h5")})
    inputs = np.load(genuine_seed_file.parent / "inputs.npy")
    reference = np.load(genuine_seed_file.parent / "reference.npy")

    loaded = ModelRegistry(model_dir).get("XR_WRIST")
    outputs = np.asarray(loaded.model(inputs, training=False))

    assert np.std(reference[:, 0]) > 0.05
    np.testing.assert_allclose(outputs, reference, atol=TOLERANCE, rtol=0)
