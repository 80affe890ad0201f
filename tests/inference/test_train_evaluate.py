"""Training and study-level evaluation on a tiny synthetic MURA tree, and the metrics by hand."""

import hashlib
import io
import json
import math
import re
import tomllib
from pathlib import Path

import keras
import numpy as np
import pytest
from django.core.management import CommandError, call_command
from PIL import Image

from inference.decoding import decode_image
from inference.evaluation import auroc, binary_metrics, cohen_kappa, confusion_matrix, roc_curve
from inference.predictor import Predictor
from inference.registry import ModelRegistry
from inference.training import AugmentationSettings, augment, class_weights
from tests.inference.mura_tree import SyntheticStudy, learnable_studies, uniform_image, write_mura_tree

# --- metrics against values computed by hand ------------------------------------------------


def test_confusion_matrix_and_kappa_by_hand():
    labels = [True, True, True, False, False, False, False]
    predicted = [True, True, False, True, False, False, False]
    matrix = confusion_matrix(labels=labels, predicted=predicted)
    assert (matrix.true_negative, matrix.false_positive, matrix.false_negative, matrix.true_positive) == (
        3,
        1,
        1,
        2,
    )
    # p_o = 5/7, p_e = (3/7)(3/7) + (4/7)(4/7) = 25/49, kappa = (35 - 25) / (49 - 25) = 10/24
    assert cohen_kappa(matrix) == pytest.approx(10 / 24)


def test_kappa_extremes():
    perfect = confusion_matrix(labels=[True, False, True], predicted=[True, False, True])
    inverted = confusion_matrix(labels=[True, False], predicted=[False, True])
    assert cohen_kappa(perfect) == pytest.approx(1.0)
    assert cohen_kappa(inverted) == pytest.approx(-1.0)
    assert math.isnan(cohen_kappa(confusion_matrix(labels=[True, True], predicted=[True, True])))


def test_auroc_counts_pairs_and_half_ties():
    # 4 positive-negative pairs: 0.9>0.1, 0.9>0.5, 0.5 = 0.5 (half), 0.5 > 0.1  -> 3.5 / 4
    assert auroc(labels=[True, True, False, False], scores=[0.9, 0.5, 0.5, 0.1]) == pytest.approx(0.875)
    assert auroc(labels=[True, False], scores=[0.2, 0.8]) == pytest.approx(0.0)
    assert math.isnan(auroc(labels=[True, True], scores=[0.2, 0.8]))


def test_roc_curve_points_by_hand():
    fpr, tpr, thresholds = roc_curve(labels=[True, False, True, False], scores=[0.8, 0.6, 0.4, 0.2])
    np.testing.assert_allclose(fpr, [0, 0, 0.5, 0.5, 1])
    np.testing.assert_allclose(tpr, [0, 0.5, 0.5, 1, 1])
    assert thresholds[0] == np.inf and list(thresholds[1:]) == [0.8, 0.6, 0.4, 0.2]


def test_binary_metrics_threshold_is_inclusive():
    metrics = binary_metrics(labels=[True, False], scores=[0.5, 0.49], threshold=0.5)
    assert metrics.sensitivity == 1.0 and metrics.specificity == 1.0 and metrics.kappa == pytest.approx(1.0)


def test_class_weights_balance_the_classes():
    weights = class_weights(labels=[True, False, False, False])
    assert weights == {0: 2.0, 1: pytest.approx(4 / 6)}
    assert weights[0] * 1 == pytest.approx(weights[1] * 3)


def test_augment_keeps_shape_range_and_changes_the_image():
    rng = np.random.default_rng(1)
    image = np.zeros((32, 32, 3), np.float32)
    image[4:12, 4:12] = 1.0
    outputs = [augment(image, rng=rng, settings=AugmentationSettings()) for _ in range(8)]
    assert all(out.shape == image.shape and out.dtype == np.float32 for out in outputs)
    assert all(out.min() >= 0.0 and out.max() <= 1.0 for out in outputs)
    assert any(not np.allclose(out, image, atol=0.05) for out in outputs)
    still = augment(
        image,
        rng=rng,
        settings=AugmentationSettings(0, 0, 0, 0, (1.0, 1.0), 0, 0, 0, 0),
    )
    np.testing.assert_allclose(still, image, atol=1e-6)


# --- evaluate: a model whose predictions the test controls ---------------------------------

SLOPE = 20.0


def _p(value: int) -> float:
    # The controlled model below: P(abnormal) = sigmoid((pixel value - 128) / SLOPE) for a flat image.
    return 1 / (1 + math.exp(-(value - 128) / SLOPE))


def _controlled_model() -> keras.Model:
    # A flat 8-bit image of value v becomes v / 255 / 255 under the seed profile; x 65025 gives v back.
    model = keras.Sequential(
        [
            keras.Input(shape=(224, 224, 3)),
            keras.layers.Rescaling(255.0 * 255.0),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(2, activation="softmax"),
        ]
    )
    kernel = np.zeros((3, 2), np.float32)
    kernel[:, 0] = 1 / (3 * SLOPE)
    model.layers[-1].set_weights([kernel, np.array([-128 / SLOPE, 0.0], np.float32)])
    return model


# (abnormal, image values): study means fall on known sides of 0.5.
VALID_WRIST = [
    (True, [188, 168]),  # 0.917 TP
    (True, [138]),  # 0.622 TP
    (True, [108]),  # 0.269 FN
    (False, [88, 98]),  # 0.151 TN
    (False, [148]),  # 0.731 FP
    (False, [118]),  # 0.378 TN
    (False, [68]),  # 0.047 TN
]


@pytest.fixture
def controlled_setup(tmp_path: Path) -> tuple[Path, Path]:
    studies = [
        SyntheticStudy("valid", "XR_WRIST", index, 1, abnormal, [uniform_image(v) for v in values])
        for index, (abnormal, values) in enumerate(VALID_WRIST, start=1)
    ]
    studies.append(SyntheticStudy("valid", "XR_ELBOW", 99, 1, True, [uniform_image(200)]))
    root = write_mura_tree(tmp_path / "mura", studies)
    # A third, unreadable image in the first study: reported, and left out of that study's mean.
    broken = root / "MURA-v1.1/valid/XR_WRIST/patient00001/study1_positive/image3.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with (root / "MURA-v1.1" / "valid_image_paths.csv").open("a") as handle:
        handle.write("MURA-v1.1/valid/XR_WRIST/patient00001/study1_positive/image3.png\n")

    model_dir = tmp_path / "models"
    model_dir.mkdir()
    _controlled_model().save(model_dir / "wrist.keras")
    (model_dir / "models.toml").write_text(
        '[XR_WRIST]\nfile = "wrist.keras"\npreprocessing = "seed"\nlabels = ["abnormal", "normal"]\n'
        "threshold = 0.5\ndemo = true\n"
    )
    return root, model_dir


def test_evaluate_writes_report_with_hand_computed_figures(controlled_setup, tmp_path):
    root, model_dir = controlled_setup
    out, err = io.StringIO(), io.StringIO()
    report_dir = tmp_path / "report"
    call_command(
        "evaluate", "--mura-root", str(root), "--model-dir", str(model_dir), "--out", str(report_dir),
        stdout=out, stderr=err,
    )  # fmt: skip
    report = (report_dir / "report.md").read_text()

    probabilities = [float(np.mean([_p(v) for v in values])) for _, values in VALID_WRIST]
    labels = [abnormal for abnormal, _ in VALID_WRIST]
    assert [p >= 0.5 for p in probabilities] == [True, True, False, False, True, False, False]
    # TP 2, FN 1, FP 1, TN 3: kappa 10/24, sensitivity 2/3, specificity 3/4, accuracy 5/7;
    # AUROC: positive-over-negative pairs 4 + 3 + 2 of 12.
    row = next(line for line in report.splitlines() if line.startswith("| XR_WRIST |"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[1] == "wrist (demo)"
    assert cells[3:] == ["7", "3", "0.5", "0.417", "0.750", "0.667", "0.750", "0.714"]
    assert "| **normal** | 3 | 1 |" in report
    assert "| **abnormal** | 1 | 2 |" in report
    assert "Demo model — not for clinical use." in report
    assert "1 image(s) could not be decoded" in report and "image3.png" in report
    assert "XR_ELBOW" not in report  # no model for it
    assert "XR_ELBOW: no installed model" in err.getvalue()
    assert "kappa 0.417, AUROC 0.750" in out.getvalue()
    assert auroc(labels=labels, scores=probabilities) == pytest.approx(9 / 12)

    with Image.open(report_dir / "roc.png") as png:
        assert png.format == "PNG" and png.size == (600, 600)
    assert "![Study-level ROC curves](roc.png)" in report


def test_evaluate_without_any_matching_model(controlled_setup, tmp_path):
    root, model_dir = controlled_setup
    (model_dir / "models.toml").write_text(
        '[XR_HAND]\nfile = "hand.keras"\npreprocessing = "seed"\n'
        'labels = ["abnormal", "normal"]\nthreshold = 0.5\n'
    )
    with pytest.raises(CommandError, match="no installed model"):
        call_command(
            "evaluate", "--mura-root", str(root), "--model-dir", str(model_dir), "--out", str(tmp_path)
        )


# --- train --------------------------------------------------------------------------------


@pytest.fixture
def learnable_root(tmp_path: Path) -> Path:
    return write_mura_tree(tmp_path / "mura", learnable_studies(studies_per_label=4, images_per_study=2))


def test_train_tiny_writes_a_model_the_registry_serves(learnable_root, tmp_path):
    out_file = tmp_path / "trained" / "XR_WRIST.keras"
    out = io.StringIO()
    call_command(
        "train", "--mura-root", str(learnable_root), "--body-part", "XR_WRIST", "--architecture", "tiny",
        "--weights", "none", "--epochs", "2", "--batch-size", "4", "--image-size", "64",
        "--out", str(out_file), stdout=out,
    )  # fmt: skip
    text = out.getvalue()
    assert "16 training images (8 abnormal), 16 validation images" in text
    assert re.search(r"epoch 2/2 \[=+\] 4/4 .*loss \d", text)
    digest = hashlib.sha256(out_file.read_bytes()).hexdigest()
    assert f"sha256 {digest}" in text

    # The printed entry, pasted into models.toml, makes the model servable as it is.
    entry = text[text.index("[XR_WRIST]") :]
    manifest = tomllib.loads(entry)["XR_WRIST"]
    assert manifest == {
        "file": "XR_WRIST.keras",
        "preprocessing": "seed",
        "labels": ["abnormal", "normal"],
        "threshold": 0.5,
        "sha256": digest,
        "demo": False,
    }
    (out_file.parent / "models.toml").write_text(entry)
    loaded = ModelRegistry(out_file.parent).get("XR_WRIST")
    assert loaded.version == digest
    image_path = next(learnable_root.glob("MURA-v1.1/valid/XR_WRIST/*/*_positive/image1.png"))
    prediction = Predictor(loaded).predict([decode_image(image_path.read_bytes())])
    assert 0.0 <= prediction.abnormal_probability <= 1.0

    # ...and the predict command serves it, heat map included.
    predicted = io.StringIO()
    call_command(
        "predict", str(image_path), "--body-part", "XR_WRIST", "--model-dir", str(out_file.parent),
        "--heatmap-dir", str(tmp_path / "heat"), stdout=predicted,
    )  # fmt: skip
    result = json.loads(predicted.getvalue())
    assert result["model_version"] == digest and result["demo"] is False
    assert result["abnormal_probability"] == pytest.approx(prediction.abnormal_probability, abs=1e-5)
    with Image.open(result["heatmap"]) as png:
        assert png.size == (64, 64)


def test_train_imagenet_without_cached_weights_fails_clearly(learnable_root, tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras-home"))
    with pytest.raises(CommandError) as raised:
        call_command(
            "train", "--mura-root", str(learnable_root), "--body-part", "XR_WRIST", "--weights", "imagenet",
            "--out", str(tmp_path / "never.keras"),
        )  # fmt: skip
    message = str(raised.value)
    assert "cannot be downloaded" in message
    assert str(tmp_path / "keras-home" / "models") in message
    assert "inception_resnet_v2_weights_tf_dim_ordering_tf_kernels_notop.h5" in message
    assert not (tmp_path / "never.keras").exists()


def test_train_refuses_a_tree_without_the_body_part(learnable_root, tmp_path):
    with pytest.raises(CommandError, match="no XR_ELBOW images"):
        call_command(
            "train", "--mura-root", str(learnable_root), "--body-part", "XR_ELBOW", "--architecture", "tiny",
            "--weights", "none", "--out", str(tmp_path / "x.keras"),
        )  # fmt: skip
