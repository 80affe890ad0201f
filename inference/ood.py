"""Out-of-distribution (OOD) score: does an image look like the radiographs a model version knows?

It needs no training data. A *reference* is fitted per model version from a folder of
in-distribution radiographs (the shared test radiographs of the upper limb for the demo models; a
MURA-layout folder for real ones) and stored beside the model as ``<model_dir>/ood/<sha256>.npz``.
An image's score combines two Mahalanobis distances to that reference, each with a Ledoit-Wolf
shrunk covariance (the reference has tens of images, the features hundreds of dimensions):

- the model's own features: the Grad-CAM layer's feature maps (``inference.gradcam.feature_split``)
  average- and max-pooled, so the score comes from the forward pass that gives the prediction;
- image statistics that tell radiographs from photographs, screenshots and cross-sectional slices:
  colourfulness, grey-level histogram shape, flat areas, axis-aligned edges, a round body on black.

Each distance is divided by the median of its leave-one-out distances on the reference, and the
score is the larger of the two: "the image does not look like a radiograph" or "the model has not
seen anything like it" each suffice. The threshold is a high percentile of the reference images'
leave-one-out scores (each scored against a reference fitted without it and its augmentations),
times a margin; it is recorded in the file. File schema 1 (``np.load(allow_pickle=False)``)::

    meta            0-d str: JSON {"schema", "model_version", "model_name", "body_part", "source",
                    "images", "augmentations", "feature_dim", "percentile", "margin", "created_at"}
    threshold       0-d float
    loo_scores      (n,) leave-one-out scores of the reference images, one per source image
    feat_*, stat_*  each component's fitted distance (mean, scale, components, eigenvalues,
                    shrinkage, mu, median)

Only numpy, Pillow and scipy are imported here; the model is run by the caller (``Predictor.run``).
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from inference.decoding import DecodedImage
from inference.preprocessing import to_display_uint8

SCHEMA = 1
OOD_DIR = "ood"
DEFAULT_PERCENTILE = 95.0
# The reference holds a few dozen images: its leave-one-out percentile is itself uncertain, and a
# radiograph a little unlike all of them should still get an automatic result.
DEFAULT_MARGIN = 1.25
NO_REFERENCE = "no OOD reference for this model version"
_VERSION = re.compile(r"[0-9a-f]{64}")
_STATS_SIDE = 256
# Image statistics are standardised by the reference's spread, but never by less than this: a
# reference of grey radiographs has colourfulness 0 with no spread at all.
_STAT_SCALE_FLOOR = 0.03
_MIN_SHRINKAGE = 0.05
_COMPONENTS = ("feat", "stat")
_COMPONENT_KEYS = ("mean", "scale", "components", "eigenvalues", "shrinkage", "mu", "median")

STATISTIC_NAMES = (
    "colourfulness",
    "saturated_fraction",
    "grey_mean",
    "grey_std",
    "histogram_entropy",
    "largest_bin_fraction",
    "white_fraction",
    "black_fraction",
    "distinct_levels",
    "flat_fraction",
    "edge_fraction",
    "axis_aligned_edges",
    "border_darkness",
    "round_body",
)


class OodReferenceError(ValueError):
    """A reference file that cannot be read or does not fit the model it is for."""


@dataclass(frozen=True)
class OodResult:
    """One image's OOD assessment; ``score`` None when it was not computed (``note`` says why)."""

    score: float | None
    threshold: float | None
    note: str = ""

    @property
    def out_of_distribution(self) -> bool:
        """True when the image scored above the threshold of the model's reference."""
        return self.score is not None and self.threshold is not None and self.score > self.threshold


# --- what is measured -------------------------------------------------------------------------------


def pooled_features(feature_maps: np.ndarray) -> np.ndarray:
    """(N, 2C) from feature maps (N, h, w, C): each channel's spatial mean and maximum."""
    maps = np.asarray(feature_maps, dtype=np.float64)
    return np.concatenate([maps.mean(axis=(1, 2)), maps.max(axis=(1, 2))], axis=1)


def _display_rgb(image: DecodedImage) -> np.ndarray:
    """The image as float RGB in [0, 1], at most _STATS_SIDE pixels on its longer side."""
    pixels = to_display_uint8(image)
    if pixels.dtype == np.bool_:
        pixels = pixels.astype(np.uint8) * 255
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[:, :, None], 3, axis=2)
    elif pixels.shape[2] < 3:
        pixels = np.repeat(pixels[:, :, :1], 3, axis=2)
    pixels = np.ascontiguousarray(pixels[:, :, :3])
    height, width = pixels.shape[:2]
    scale = _STATS_SIDE / max(height, width)
    if scale < 1:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        pixels = np.asarray(Image.fromarray(pixels).resize(size, Image.Resampling.BOX))
    return pixels.astype(np.float64) / 255.0


def image_statistics(image: DecodedImage) -> np.ndarray:
    """Statistics (STATISTIC_NAMES order, each roughly in [0, 1]) that tell radiographs from other images."""
    rgb = _display_rgb(image)
    grey = rgb.mean(axis=2)
    red, green, blue = rgb[:, :, 0], rgb[:, :, 1], rgb[:, :, 2]
    # Hasler and Suesstrunk's colourfulness (2003), on a 0..1 scale.
    rg, yb = red - green, (red + green) / 2 - blue
    colourfulness = math.hypot(rg.std(), yb.std()) + 0.3 * math.hypot(rg.mean(), yb.mean())
    chroma = rgb.max(axis=2) - rgb.min(axis=2)
    histogram = np.bincount(np.minimum((grey * 32).astype(int), 31).ravel(), minlength=32) / grey.size
    present = histogram[histogram > 0]
    entropy = float(-(present * np.log2(present)).sum()) / 5.0
    levels = np.unique(np.rint(grey * 255)).size / 256.0
    gy, gx = np.gradient(grey)
    magnitude = np.hypot(gx, gy)
    strong = magnitude > 0.08
    # Text and user interfaces are drawn along the axes; bones lie at any angle.
    angle = np.abs(np.arctan2(gy, gx)) % (np.pi / 2)
    aligned = (np.minimum(angle, np.pi / 2 - angle) < np.pi / 36) & strong
    axis_aligned = float(aligned.sum() / strong.sum()) if strong.any() else 0.0
    border = np.concatenate([grey[:4].ravel(), grey[-4:].ravel(), grey[:, :4].ravel(), grey[:, -4:].ravel()])
    return np.array(
        [
            colourfulness * 2.0,
            float((chroma > 0.12).mean()),
            float(grey.mean()),
            float(grey.std()) * 2.0,
            entropy,
            float(histogram.max()),
            float((grey > 0.9).mean()),
            float((grey < 0.1).mean()),
            levels,
            float((magnitude < 1e-6).mean()),
            float(strong.mean()) * 4.0,
            axis_aligned,
            1.0 - float(np.median(border)),
            _round_body(grey),
        ]
    )


def _round_body(grey: np.ndarray) -> float:
    """How much the brightest connected region looks like a cross-section: one round blob, centred."""
    foreground = grey > max(0.08, float(np.percentile(grey, 20)) + 0.05)
    labels, count = ndimage.label(foreground)
    if count == 0:
        return 0.0
    sizes = np.bincount(labels.ravel())[1:]
    largest = labels == (int(np.argmax(sizes)) + 1)
    filled = ndimage.binary_fill_holes(largest)
    area = float(filled.sum())
    perimeter = float((filled ^ ndimage.binary_erosion(filled)).sum())
    if perimeter == 0:
        return 0.0
    circularity = min(1.0, 4 * math.pi * area / (perimeter * 1.1) ** 2)
    touches_border = filled[0].any() or filled[-1].any() or filled[:, 0].any() or filled[:, -1].any()
    return circularity * (0.3 if touches_border else 1.0)


# --- distances --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShrunkDistance:
    """A Mahalanobis distance under a Ledoit-Wolf shrunk covariance, kept as its eigen-decomposition."""

    mean: np.ndarray  # (d,)
    scale: np.ndarray  # (d,) each dimension is divided by this first
    components: np.ndarray  # (k, d) eigenvectors of the sample covariance with nonzero eigenvalues
    eigenvalues: np.ndarray  # (k,)
    shrinkage: float
    mu: float  # the shrinkage target's variance: trace / d
    median: float = 1.0  # median leave-one-out distance on the reference: the unit of the score

    @classmethod
    def fit(cls, samples: np.ndarray, *, scale: np.ndarray | None = None) -> ShrunkDistance:
        """Fit on (n, d) samples; ``scale`` standardises each dimension (default: none)."""
        samples = np.asarray(samples, dtype=np.float64)
        dimensions = samples.shape[1]
        scale = np.ones(dimensions) if scale is None else np.asarray(scale, dtype=np.float64)
        x = samples / scale
        mean = x.mean(axis=0)
        centred = x - mean
        count = len(centred)
        gram = centred @ centred.T  # n x n: everything below is computed without a d x d matrix
        trace = float(np.trace(gram)) / count
        mu = max(trace / dimensions, 1e-12)
        squared_norm = float((gram**2).sum()) / count**2  # ||S||_F^2
        delta = (squared_norm - 2 * mu * trace + mu**2 * dimensions) / dimensions
        beta = (float((np.diag(gram) ** 2).sum()) / count**2 - squared_norm / count) / dimensions
        shrinkage = 1.0 if delta <= 0 else min(max(beta, 0.0), delta) / delta
        shrinkage = max(shrinkage, _MIN_SHRINKAGE)
        values, vectors = np.linalg.eigh(gram)
        keep = values > max(values.max(initial=0.0), 1e-300) * 1e-10
        values, vectors = values[keep], vectors[:, keep]
        components = (centred.T @ vectors / np.sqrt(values)).T if keep.any() else np.zeros((0, dimensions))
        return cls(
            mean=mean,
            scale=scale,
            components=components,
            eigenvalues=values / count,
            shrinkage=float(shrinkage),
            mu=mu,
        )

    def distances(self, samples: np.ndarray) -> np.ndarray:
        """Distance of each row of (n, d) ``samples``, per dimension, in units of ``median``."""
        centred = np.asarray(samples, dtype=np.float64) / self.scale - self.mean
        projected = centred @ self.components.T
        isotropic = self.shrinkage * self.mu
        inside = (projected**2 / ((1 - self.shrinkage) * self.eigenvalues + isotropic)).sum(axis=1)
        residual = np.maximum((centred**2).sum(axis=1) - (projected**2).sum(axis=1), 0.0)
        squared = (inside + residual / isotropic) / centred.shape[1]
        return np.sqrt(squared) / self.median


# --- the reference ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class OodReference:
    """A model version's fitted reference: distances, threshold, and what it was fitted on."""

    meta: dict
    threshold: float
    loo_scores: np.ndarray
    stat: ShrunkDistance
    feat: ShrunkDistance | None  # None for a model that gives no feature maps (ONNX, SavedModel)

    @property
    def model_version(self) -> str:
        return self.meta["model_version"]

    def scores(self, *, features: np.ndarray | None, statistics: np.ndarray) -> np.ndarray:
        """Scores of images from their pooled features (N, F) (or None) and statistics (N, S)."""
        score = self.stat.distances(statistics)
        if self.feat is not None:
            if features is None or features.shape[1] != self.feat.mean.shape[0]:
                raise OodReferenceError(
                    f"the OOD reference of {self.model_version[:12]} was fitted on "
                    f"{self.feat.mean.shape[0]} features, the model gives "
                    f"{'none' if features is None else features.shape[1]}"
                )
            score = np.maximum(score, self.feat.distances(features))
        return score


def _stat_scale(statistics: np.ndarray) -> np.ndarray:
    return np.maximum(statistics.std(axis=0), _STAT_SCALE_FLOOR)


def _fit_components(
    features: np.ndarray | None, statistics: np.ndarray, *, scale: np.ndarray | None = None
) -> tuple[ShrunkDistance | None, ShrunkDistance]:
    stat = ShrunkDistance.fit(statistics, scale=_stat_scale(statistics) if scale is None else scale)
    feat = ShrunkDistance.fit(features) if features is not None else None
    return feat, stat


def fit_reference(
    *,
    features: np.ndarray | None,
    statistics: np.ndarray,
    groups: np.ndarray,
    meta: dict,
    percentile: float = DEFAULT_PERCENTILE,
    margin: float = DEFAULT_MARGIN,
) -> OodReference:
    """Fit a reference on rows (augmented copies included) grouped by source image.

    Leave-one-out per source image: each image's first row (its unaugmented copy) is scored by a
    reference fitted on every other image's rows. Those distances set each component's unit (their
    median), the leave-one-out scores, and the threshold (``percentile`` of them, times ``margin``).
    """
    groups = np.asarray(groups)
    unique = list(dict.fromkeys(groups.tolist()))
    if len(unique) < 3:
        raise OodReferenceError(f"an OOD reference needs at least 3 images, got {len(unique)}")
    scale = _stat_scale(statistics)
    loo = {name: [] for name in _COMPONENTS}
    for group in unique:
        rest, held = groups != group, int(np.flatnonzero(groups == group)[0])
        feat, stat = _fit_components(
            features[rest] if features is not None else None, statistics[rest], scale=scale
        )
        loo["stat"].append(float(stat.distances(statistics[held : held + 1])[0]))
        if feat is not None:
            loo["feat"].append(float(feat.distances(features[held : held + 1])[0]))
    feat, stat = _fit_components(features, statistics, scale=scale)
    medians = {name: float(np.median(values)) if values else 1.0 for name, values in loo.items()}
    stat = _with_median(stat, medians["stat"])
    loo_scores = np.asarray(loo["stat"]) / stat.median
    if feat is not None:
        feat = _with_median(feat, medians["feat"])
        loo_scores = np.maximum(loo_scores, np.asarray(loo["feat"]) / feat.median)
    threshold = float(np.percentile(loo_scores, percentile)) * margin
    meta = {
        **meta,
        "schema": SCHEMA,
        "images": len(unique),
        "rows": len(groups),
        "feature_dim": 0 if features is None else int(features.shape[1]),
        "percentile": percentile,
        "margin": margin,
        "created_at": meta.get("created_at") or datetime.now(UTC).isoformat(timespec="seconds"),
    }
    return OodReference(meta=meta, threshold=threshold, loo_scores=loo_scores, stat=stat, feat=feat)


def _with_median(distance: ShrunkDistance, median: float) -> ShrunkDistance:
    return replace(distance, median=max(median, 1e-9))


# --- building a reference with a model --------------------------------------------------------------

# Copies of each reference image the model also sees: radiographs come flipped, rotated, cropped and
# exposed differently, and a few dozen images would otherwise undersample even that.
AUGMENTATIONS = ("none", "hflip", "vflip", "rot90", "crop", "gamma")


def augmented(image: DecodedImage, augmentation: str) -> DecodedImage:
    """``image`` flipped, rotated, centre-cropped to 80 % or gamma-adjusted (``augmentation``)."""
    pixels = image.pixels
    if augmentation == "hflip":
        pixels = pixels[:, ::-1]
    elif augmentation == "vflip":
        pixels = pixels[::-1]
    elif augmentation == "rot90":
        pixels = np.rot90(pixels)
    elif augmentation == "crop":
        height, width = pixels.shape[:2]
        top, left = height // 10, width // 10
        pixels = pixels[top : height - top, left : width - left]
    elif augmentation == "gamma":
        top = float(np.iinfo(pixels.dtype).max) if pixels.dtype.kind == "u" else 1.0
        pixels = (np.power(pixels.astype(np.float64) / top, 0.8) * top).astype(pixels.dtype)
    elif augmentation != "none":
        raise ValueError(f"unknown augmentation {augmentation!r}")
    pixels = np.ascontiguousarray(pixels)
    height, width = pixels.shape[:2]
    return DecodedImage(
        pixels=pixels, format=image.format, width=width, height=height, bit_depth=image.bit_depth
    )


FeatureFunction = Callable[[Sequence[DecodedImage]], "np.ndarray | None"]


def build_reference(
    *,
    images: Sequence[DecodedImage],
    names: Sequence[str],
    features_of: FeatureFunction,
    meta: dict,
    percentile: float = DEFAULT_PERCENTILE,
    margin: float = DEFAULT_MARGIN,
) -> OodReference:
    """Fit the reference of a model from in-distribution ``images`` (``names`` go in its meta).

    ``features_of`` runs the model: pooled features (N, F) of a list of images, or None for a model
    that gives none (``Predictor.pooled_features``).
    """
    rows, groups = [], []
    for index, image in enumerate(images):
        for augmentation in AUGMENTATIONS:
            rows.append(augmented(image, augmentation))
            groups.append(index)
    features = features_of(rows)
    statistics = np.stack([image_statistics(image) for image in rows])
    return fit_reference(
        features=features,
        statistics=statistics,
        groups=np.asarray(groups),
        meta={**meta, "augmentations": list(AUGMENTATIONS), "sources": list(names)},
        percentile=percentile,
        margin=margin,
    )


# --- files ------------------------------------------------------------------------------------------


def reference_path(*, model_dir: Path, version: str) -> Path:
    """Where the OOD reference of model version ``version`` (a sha256) lives in ``model_dir``."""
    if not _VERSION.fullmatch(version):
        # The version becomes a file name: never let anything but a lower-case sha256 through.
        raise OodReferenceError(f"model version must be a lower-case sha256 (64 hex digits), got {version!r}")
    return Path(model_dir) / OOD_DIR / f"{version}.npz"


def _arrays(reference: OodReference) -> dict[str, np.ndarray]:
    arrays = {
        "meta": np.array(json.dumps(reference.meta, allow_nan=False)),
        "threshold": np.array(reference.threshold),
        "loo_scores": np.asarray(reference.loo_scores, dtype=np.float64),
    }
    for name in _COMPONENTS:
        distance = getattr(reference, name)
        if distance is None:
            continue
        for key in _COMPONENT_KEYS:
            arrays[f"{name}_{key}"] = np.asarray(getattr(distance, key), dtype=np.float64)
    return arrays


def write_reference(*, model_dir: Path, reference: OodReference) -> Path:
    """Write ``reference`` atomically (temp file, then rename) beside the model; returns the path."""
    path = reference_path(model_dir=model_dir, version=reference.model_version)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.savez(buffer, **_arrays(reference))
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".ood-", suffix=".npz")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(buffer.getvalue())
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def _read(path: Path) -> OodReference:
    try:
        with np.load(path, allow_pickle=False) as stored:
            arrays = {key: stored[key] for key in stored.files}
    except Exception as exc:  # a damaged archive raises OSError, ValueError, zipfile.BadZipFile...
        raise OodReferenceError(f"OOD reference {path} cannot be read: {type(exc).__name__}: {exc}") from exc
    try:
        meta = json.loads(str(arrays["meta"]))
        if meta.get("schema") != SCHEMA:
            raise OodReferenceError(f"OOD reference {path}: unsupported schema {meta.get('schema')!r}")
        components = {
            name: ShrunkDistance(
                **{
                    key: (
                        float(arrays[f"{name}_{key}"])
                        if arrays[f"{name}_{key}"].ndim == 0
                        else arrays[f"{name}_{key}"]
                    )
                    for key in _COMPONENT_KEYS
                }
            )
            for name in _COMPONENTS
            if f"{name}_mean" in arrays
        }
        return OodReference(
            meta=meta,
            threshold=float(arrays["threshold"]),
            loo_scores=arrays["loo_scores"],
            stat=components["stat"],
            feat=components.get("feat"),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise OodReferenceError(f"OOD reference {path} is incomplete: {exc}") from exc


_cache: dict[tuple[str, int, int], OodReference] = {}
_cache_lock = threading.Lock()


def read_reference(*, model_dir: Path, version: str) -> OodReference | None:
    """The reference of a model version, or None when it has none; a bad file raises OodReferenceError."""
    path = reference_path(model_dir=model_dir, version=version)
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    with _cache_lock:
        cached = _cache.get(key)
    if cached is not None:
        return cached
    reference = _read(path)
    if reference.model_version != version:
        raise OodReferenceError(f"OOD reference {path} is for model version {reference.model_version}")
    with _cache_lock:
        _cache.clear()  # one entry per model dir and version is plenty; stale ones go
        _cache[key] = reference
    return reference


def assess_images(
    *,
    reference: OodReference | None,
    features: np.ndarray | None,
    images: Sequence[DecodedImage],
    note: str = NO_REFERENCE,
) -> list[OodResult]:
    """Each image's OOD score against ``reference``; with no reference, no score and ``note``."""
    if reference is None:
        return [OodResult(score=None, threshold=None, note=note) for _ in images]
    statistics = np.stack([image_statistics(image) for image in images])
    scores = reference.scores(features=features, statistics=statistics)
    return [OodResult(score=float(score), threshold=reference.threshold) for score in scores]


def ood_reason(*, score: float, threshold: float, body_part: str) -> str:
    """Why an image waits for a human read, in the words the study page and the API use."""
    return (
        f"Does not look like a {body_part.lower()} radiograph this model knows: "
        f"OOD score {score:.1f} > {threshold:.1f}. It is left out of the model's result and "
        "needs a radiologist's read."
    )


def fit_model_reference(
    *,
    loaded,
    images: Sequence[DecodedImage],
    names: Sequence[str],
    source: str,
    batch_size: int = 16,
) -> OodReference:
    """Fit the reference of a loaded model (``inference.registry.LoadedModel``) on ``images``.

    The model runs once over the images and their augmented copies, as ``Predictor.run`` runs it
    on the worker, so the features match the ones scored at prediction time.
    """
    from inference.predictor import Predictor  # TensorFlow: only where a model runs

    predictor = Predictor(loaded, batch_size=batch_size)
    return build_reference(
        images=images,
        names=names,
        features_of=predictor.pooled_features,
        meta={
            "model_version": loaded.version,
            "model_name": loaded.spec.name,
            "body_part": loaded.spec.body_part,
            "source": source,
        },
    )
