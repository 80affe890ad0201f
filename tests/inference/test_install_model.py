"""`manage.py install_model`: install, keep comments, refuse cleanly, validate into a card."""

import io
import shutil
import tomllib
from pathlib import Path

import keras
import numpy as np
import pytest
from django.core.management import CommandError, call_command

from inference.decoding import decode_image
from inference.evaluation import evaluate_studies
from inference.model_card import read_card
from inference.mura import read_split
from inference.predictor import Predictor
from inference.registry import ModelRegistry, file_sha256, read_manifest
from tests.conftest import SHARED_DATA
from tests.inference.conftest import build_tiny_cnn
from tests.inference.mura_tree import learnable_studies, write_mura_tree

COMMENTED_MANIFEST = """\
# Hospital models. Wrist replaced in January (ticket 42).
# Paths are relative to this folder.

[XR_HAND]  # waiting for the vendor's file
file = "HAND.h5"   # not installed yet
preprocessing = "seed"
labels = ["abnormal", "normal"]
threshold = 0.5

[XR_WRIST]
file = "old-wrist.keras"
name = "old wrist"
preprocessing = "seed"
labels = ["abnormal", "normal"]
threshold = 0.4  # tuned locally
demo = false

# Elbow: none yet.
"""


def install(*args: str) -> str:
    out = io.StringIO()
    call_command("install_model", *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones too) with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def model_dir(tmp_path) -> Path:
    folder = tmp_path / "models"
    folder.mkdir()
    return folder


@pytest.fixture
def commented_model_dir(model_dir) -> Path:
    (model_dir / "models.toml").write_text(COMMENTED_MANIFEST)
    return model_dir


def test_install_into_an_empty_model_dir_serves_through_the_registry(model_dir, tiny_model_file):
    output = install(str(tiny_model_file), "--body-part", "XR_WRIST", "--model-dir", str(model_dir), "--demo")

    digest = file_sha256(path=tiny_model_file)
    assert (model_dir / "tiny.keras").read_bytes() == tiny_model_file.read_bytes()
    assert "model: Sequential 'tiny_cnn'" in output
    assert "input size: 224x224" in output and "outputs: [(None, 2)]" in output
    assert "format: Keras 3 (.keras); loaded by Keras 3" in output
    assert "parameters: 122" in output
    assert f"sha256: {digest}" in output
    assert tomllib.loads((model_dir / "models.toml").read_text()) == {
        "XR_WRIST": {
            "file": "tiny.keras",
            "name": "tiny",
            "preprocessing": "seed",
            "labels": ["abnormal", "normal"],
            "threshold": 0.5,
            "sha256": digest,
            "demo": True,
        }
    }
    # ood/: the version's out-of-distribution reference (tests/inference/test_install_model_ood.py).
    assert sorted(p.name for p in model_dir.iterdir()) == ["models.toml", "ood", "tiny.keras"]

    # The smoke test predicted every shared radiograph; the registry now serves the same numbers.
    jpeg = sorted((SHARED_DATA / "jpeg").glob("*.jpg"))[0]
    printed = next(line for line in output.splitlines() if line.strip().startswith(jpeg.name))
    loaded = ModelRegistry(model_dir).get("XR_WRIST")
    assert loaded.version == digest and loaded.spec.demo
    prediction = Predictor(loaded).predict([decode_image(jpeg.read_bytes())])
    assert printed.strip() == f"{jpeg.name}: P(abnormal) = {prediction.abnormal_probability:.4f}"
    assert "smoke test on 16 radiograph(s)" in output


def test_install_keeps_comments_and_other_entries(commented_model_dir, tiny_model_file):
    install(
        str(tiny_model_file), "--body-part", "XR_WRIST", "--model-dir", str(commented_model_dir),
        "--name", "wrist v2", "--threshold", "0.45",
    )  # fmt: skip
    digest = file_sha256(path=tiny_model_file)
    # Only the wrist's values change: its comments stay on their lines, the new sha256 goes in
    # before `demo` (not after the trailing comment), everything else is byte for byte the same.
    expected = COMMENTED_MANIFEST.replace(
        'file = "old-wrist.keras"\nname = "old wrist"', 'file = "tiny.keras"\nname = "wrist v2"'
    ).replace(
        "threshold = 0.4  # tuned locally\n", f'threshold = 0.45  # tuned locally\nsha256 = "{digest}"\n'
    )
    assert (commented_model_dir / "models.toml").read_text() == expected
    specs = read_manifest(model_dir=commented_model_dir)
    wrist = specs["XR_WRIST"]
    assert wrist.path == commented_model_dir / "tiny.keras"
    assert (wrist.name, wrist.threshold, wrist.demo, wrist.sha256) == ("wrist v2", 0.45, False, digest)
    assert specs["XR_HAND"].path.name == "HAND.h5"


def test_a_new_body_part_is_added_after_the_others(commented_model_dir, tiny_model_file):
    install(str(tiny_model_file), "--body-part", "XR_ELBOW", "--model-dir", str(commented_model_dir))
    text = (commented_model_dir / "models.toml").read_text()
    assert text.startswith(COMMENTED_MANIFEST)
    assert list(tomllib.loads(text)) == ["XR_HAND", "XR_WRIST", "XR_ELBOW"]


def test_a_file_already_in_the_model_dir_is_registered_in_place(model_dir, tiny_model_file):
    (model_dir / "wrist").mkdir()
    in_place = model_dir / "wrist" / "tiny.keras"
    shutil.copy(tiny_model_file, in_place)
    install(str(in_place), "--body-part", "XR_HAND", "--model-dir", str(model_dir))
    assert read_manifest(model_dir=model_dir)["XR_HAND"].path == in_place
    version = file_sha256(path=in_place)
    assert sorted(str(p.relative_to(model_dir)) for p in model_dir.rglob("*") if p.is_file()) == [
        "models.toml",
        f"ood/{version}.npz",  # the version's out-of-distribution reference
        "wrist/tiny.keras",
    ]


# --- refusals: each one leaves the model dir byte for byte as it was --------------------------


@pytest.fixture(scope="module")
def refused_files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("refused")
    corrupt = folder / "corrupt.keras"
    corrupt.write_bytes(b"PK\x03\x04 this is not a Keras archive")
    logits = keras.Sequential(
        [keras.Input((224, 224, 3)), keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2)],
        name="logits",
    )
    logits.layers[-1].set_weights([np.full((3, 2), 500.0, np.float32), np.array([3.0, 1.0], np.float32)])
    logits.save(folder / "logits.keras")
    sigmoid_nan = _sigmoid_model()
    kernel, _ = sigmoid_nan.layers[-1].get_weights()
    sigmoid_nan.layers[-1].set_weights([kernel, np.array([np.nan], np.float32)])
    sigmoid_nan.save(folder / "sigmoid_nan.keras")
    return {
        "corrupt": corrupt,
        "logits": folder / "logits.keras",
        "sigmoid": sigmoid_model_file(folder),
        "sigmoid_nan": folder / "sigmoid_nan.keras",
    }


def _sigmoid_model() -> keras.Model:
    """A tiny one-unit sigmoid classifier (the MURA paper's kind of head) whose output varies by image."""
    keras.utils.set_random_seed(2)
    return keras.Sequential(
        [
            keras.Input((224, 224, 3)),
            keras.layers.Rescaling(255.0 * 255.0),
            keras.layers.AveragePooling2D(8),
            keras.layers.Conv2D(4, 3, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(1, activation="sigmoid"),
        ],
        name="tiny_sigmoid",
    )


def sigmoid_model_file(folder: Path) -> Path:
    path = folder / "sigmoid.keras"
    if not path.exists():
        _sigmoid_model().save(path)
    return path


@pytest.mark.parametrize(
    ("case", "extra", "message"),
    [
        ("tiny", ["--body-part", "XR_KNEE"], "unknown body part 'XR_KNEE'"),
        ("tiny", ["--body-part", "XR_WRIST", "--preprocessing", "fancy"], "Unknown preprocessing profile"),
        ("tiny", ["--body-part", "XR_WRIST", "--labels", "normal,fracture"], "must include 'abnormal'"),
        ("tiny", ["--body-part", "XR_WRIST", "--threshold", "1.5"], r"outside \[0, 1\]"),
        ("corrupt", ["--body-part", "XR_WRIST"], "corrupt.keras cannot be installed"),
        (
            "tiny",
            ["--body-part", "XR_WRIST", "--labels", "abnormal,normal,other"],
            "gives 2 outputs per image",
        ),
        ("logits", ["--body-part", "XR_WRIST"], "not softmax probabilities"),
        ("tiny", ["--body-part", "XR_WRIST", "--validate-on", "/nonexistent"], "is not a MURA directory"),
        ("sigmoid", ["--body-part", "XR_WRIST"], "gives 1 outputs per image"),
        (
            "sigmoid",
            ["--body-part", "XR_WRIST", "--output", "sigmoid", "--labels", "abnormal,normal"],
            "a sigmoid output is one probability",
        ),
        ("sigmoid_nan", ["--body-part", "XR_WRIST", "--output", "sigmoid"], "NaN or outside"),
        ("tiny", ["--body-part", "XR_WRIST", "--indeterminate", "0.6,0.7"], "must contain the threshold 0.5"),
        ("tiny", ["--body-part", "XR_WRIST", "--indeterminate", "0.7,0.3"], "needs low < high"),
        (
            "tiny",
            ["--body-part", "XR_WRIST", "--indeterminate", "0.35"],
            "expected LOW,HIGH such as 0.35,0.65",
        ),
    ],
)
def test_refusals_change_nothing(commented_model_dir, tiny_model_file, refused_files, case, extra, message):
    source = tiny_model_file if case == "tiny" else refused_files[case]
    before = snapshot(commented_model_dir)
    with pytest.raises(CommandError, match=message):
        install(str(source), "--model-dir", str(commented_model_dir), *extra)
    assert snapshot(commented_model_dir) == before
    assert sorted(p.name for p in commented_model_dir.iterdir()) == ["models.toml"]


def test_a_sigmoid_model_of_p_normal_serves_p_abnormal(model_dir, tmp_path):
    source = sigmoid_model_file(tmp_path)
    install(
        str(source), "--body-part", "XR_WRIST", "--model-dir", str(model_dir),
        "--output", "sigmoid", "--labels", "normal",
    )  # fmt: skip
    entry = tomllib.loads((model_dir / "models.toml").read_text())["XR_WRIST"]
    assert (entry["output"], entry["labels"]) == ("sigmoid", ["normal"])
    loaded = ModelRegistry(model_dir).get("XR_WRIST")
    jpeg = sorted((SHARED_DATA / "jpeg").glob("*.jpg"))[0]
    predictor = Predictor(loaded)
    batch = predictor.preprocess([decode_image(jpeg.read_bytes())])
    p_normal = float(np.asarray(loaded.model(batch))[0, 0])
    assert predictor.abnormal_probabilities(batch)[0] == pytest.approx(1.0 - p_normal, abs=1e-6)


def test_a_different_file_of_the_same_name_needs_force(model_dir, tiny_model_file, tmp_path):
    other = tmp_path / "other" / "tiny.keras"
    other.parent.mkdir()
    build_tiny_cnn(seed=1).save(other)
    install(str(other), "--body-part", "XR_HAND", "--model-dir", str(model_dir))
    before = snapshot(model_dir)
    with pytest.raises(CommandError, match=r"a different tiny\.keras is already in"):
        install(str(tiny_model_file), "--body-part", "XR_WRIST", "--model-dir", str(model_dir))
    assert snapshot(model_dir) == before

    install(str(tiny_model_file), "--body-part", "XR_WRIST", "--model-dir", str(model_dir), "--force")
    assert (model_dir / "tiny.keras").read_bytes() == tiny_model_file.read_bytes()
    assert read_manifest(model_dir=model_dir)["XR_WRIST"].sha256 == file_sha256(path=tiny_model_file)


def test_a_failure_while_committing_undoes_the_copy_and_the_card(
    commented_model_dir, tiny_model_file, tmp_path, monkeypatch
):
    root = write_mura_tree(tmp_path / "mura", learnable_studies(studies_per_label=2, images_per_study=1))

    def disk_full(**_):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("inference.management.commands.install_model.write_manifest_text", disk_full)
    before = snapshot(commented_model_dir)
    with pytest.raises(CommandError, match="No space left on device; nothing was changed"):
        install(
            str(tiny_model_file), "--body-part", "XR_WRIST", "--model-dir", str(commented_model_dir),
            "--validate-on", str(root),
        )  # fmt: skip
    assert snapshot(commented_model_dir) == before
    assert sorted(p.name for p in commented_model_dir.rglob("*") if p.is_file()) == ["models.toml"]


# --- validation into a card ---------------------------------------------------------------------


def test_validate_on_writes_a_card_equal_to_the_evaluation(model_dir, tiny_model_file, tmp_path):
    root = write_mura_tree(
        tmp_path / "mura", learnable_studies(body_parts=("XR_WRIST", "XR_HAND"), studies_per_label=5)
    )
    output = install(
        str(tiny_model_file),
        "--body-part",
        "XR_WRIST",
        "--model-dir",
        str(model_dir),
        "--validate-on",
        str(root),
    )
    digest = file_sha256(path=tiny_model_file)
    card = read_card(model_dir=model_dir, version=digest)
    assert card is not None and card["model_version"] == digest and card["body_part"] == "XR_WRIST"
    assert card["validated_on"]["set"] == "MURA-v1.1 valid"
    assert card["validated_on"]["path"] == str(root.resolve())
    assert (card["validated_on"]["studies"], card["validated_on"]["images"]) == (10, 20)  # wrist only

    # The same studies through the evaluate command's code path, from the installed model dir.
    [evaluation] = evaluate_studies(
        studies=read_split(mura_root=root, split="valid", body_part="XR_WRIST"),
        registry=ModelRegistry(model_dir),
    )
    m = evaluation.metrics
    for name in ("kappa", "auroc", "sensitivity", "specificity"):
        figure = card["metrics"][name]
        assert figure["value"] == pytest.approx(getattr(m, name))
        assert figure["low"] <= figure["value"] <= figure["high"]
    assert card["roc"]["fpr"] == pytest.approx(list(m.roc_fpr), abs=1e-6)
    assert f"kappa: {m.kappa:.3f} (95% CI" in output and f"auroc: {m.auroc:.3f} (95% CI" in output
    assert f"card: {model_dir / 'cards' / (digest + '.json')}" in output


def test_a_saved_model_folder_is_copied_and_versioned_as_a_whole(model_dir, tmp_path):
    exported = tmp_path / "export" / "wrist_savedmodel"
    build_tiny_cnn().export(str(exported), verbose=False)
    output = install(str(exported), "--body-part", "XR_WRIST", "--model-dir", str(model_dir))
    installed = model_dir / "wrist_savedmodel"
    assert "format: TF SavedModel" in output
    assert sorted(p.relative_to(installed) for p in installed.rglob("*")) == sorted(
        p.relative_to(exported) for p in exported.rglob("*")
    )
    spec = read_manifest(model_dir=model_dir)["XR_WRIST"]
    assert spec.path == installed and spec.sha256 == file_sha256(path=exported)
    assert ModelRegistry(model_dir).get("XR_WRIST").version == spec.sha256


def test_indeterminate_band_is_written_into_the_entry(commented_model_dir, tiny_model_file):
    output = install(
        str(tiny_model_file), "--body-part", "XR_WRIST", "--model-dir", str(commented_model_dir),
        "--threshold", "0.45", "--indeterminate", "0.3, 0.6",
    )  # fmt: skip
    assert "indeterminate band: 0.3 <= P(abnormal) < 0.6" in output
    text = (commented_model_dir / "models.toml").read_text()
    # After the threshold, in the canonical key order; the other entry and the comments are kept.
    assert "threshold = 0.45  # tuned locally\nindeterminate = [0.3, 0.6]\nsha256 = " in text
    assert text.startswith("# Hospital models. Wrist replaced in January (ticket 42).")
    specs = read_manifest(model_dir=commented_model_dir)
    assert specs["XR_WRIST"].indeterminate == (0.3, 0.6)
    assert specs["XR_HAND"].indeterminate is None

    # Installed again without the option: the entry is written afresh, with no band, and it says so.
    output = install(str(tiny_model_file), "--body-part", "XR_WRIST", "--model-dir", str(commented_model_dir))
    assert "no indeterminate band" in output
    assert read_manifest(model_dir=commented_model_dir)["XR_WRIST"].indeterminate is None
