"""Model registry: reads ``models.toml`` from the model directory and loads each model on first use.

A model is loaded once per process and kept in a bounded LRU cache. Its version is the sha256 of its
weight file. The manifest may list files that are not installed: ``available()`` says which are, so
the app can run (and say so) with only some models present.
"""

from __future__ import annotations

import hashlib
import os
import threading
import tomllib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from inference.body_parts import BODY_PARTS
from inference.model_files import ModelFileError, OpenedModel, is_model_path, open_model
from inference.onnx_runtime import OnnxClassifier

MANIFEST_NAME = "models.toml"
ABNORMAL = "abnormal"
NORMAL = "normal"
# The third result tier: P(abnormal) inside the model's indeterminate band (manifest key
# ``indeterminate = [low, high]``). The model makes no call; a radiologist decides.
INDETERMINATE = "indeterminate"
# What the model's outputs are (the manifest's ``output`` key).
SOFTMAX = "softmax"  # one output per label, in the order of ``labels``
SIGMOID = "sigmoid"  # one output: P(labels[0]), which is "abnormal" or "normal"
OUTPUTS = (SOFTMAX, SIGMOID)
_HASH_CHUNK = 1 << 20


class UnsupportedBodyPart(LookupError):
    """The manifest has no model for this body part."""


class ModelLoadError(RuntimeError):
    """A model could not be loaded: missing or corrupt file, wrong checksum, unknown architecture."""


class ManifestError(ModelLoadError):
    """``models.toml`` is missing or invalid."""


@dataclass(frozen=True)
class ModelSpec:
    body_part: str
    name: str
    path: Path
    preprocessing: str
    labels: tuple[str, ...]
    threshold: float
    sha256: str | None
    demo: bool
    output: str = SOFTMAX
    # (low, high) with low <= threshold <= high, or None: no band, results are abnormal or normal.
    indeterminate: tuple[float, float] | None = None

    def label_for(self, probability: float) -> str:
        """The result tier of one P(abnormal) under this model's threshold and band."""
        return result_label(probability, threshold=self.threshold, indeterminate=self.indeterminate)

    @property
    def abnormal_index(self) -> int:
        """Index of the model output the abnormal class is read from (also Grad-CAM's target)."""
        return 0 if self.output == SIGMOID else self.labels.index(ABNORMAL)

    @property
    def abnormal_sign(self) -> float:
        """-1.0 for a sigmoid output that is P(normal): evidence for abnormal lowers it; else 1.0."""
        return -1.0 if self.output == SIGMOID and self.labels[0] == NORMAL else 1.0

    @property
    def output_count(self) -> int:
        """How many outputs per image the model must give: 1 for sigmoid, one per label for softmax."""
        return 1 if self.output == SIGMOID else len(self.labels)

    def abnormal_probabilities(self, outputs: np.ndarray) -> np.ndarray:
        """P(abnormal) (N,) from the model's raw output batch (N, k); ManifestError when k is wrong."""
        outputs = np.asarray(outputs, dtype=np.float64)
        if outputs.ndim == 1 and self.output == SIGMOID:
            outputs = outputs[:, np.newaxis]  # some exports drop the unit axis of a one-unit output
        count = outputs.shape[1] if outputs.ndim == 2 else None
        if count != self.output_count:
            given = f"{count} outputs per image" if count is not None else f"outputs of shape {outputs.shape}"
            raise ManifestError(
                f"{MANIFEST_NAME} [{self.body_part}] describes {self.output_count} {self.output} output(s) "
                f"(labels {list(self.labels)}), but model {self.name!r} gives {given}: "
                "fix `output` and `labels` for this model"
            )
        probabilities = outputs[:, self.abnormal_index]
        return 1.0 - probabilities if self.abnormal_sign < 0 else probabilities


def result_label(probability: float, *, threshold: float, indeterminate: tuple[float, float] | None) -> str:
    """``abnormal`` at or above the band's top (the threshold when there is no band), ``normal``
    below its bottom, ``indeterminate`` in between: low <= P < high.

    ``studies.services.predictions`` applies the same rule to a study's mean (the web side does not
    import inference); tests/studies/test_result_tiers.py checks that the two agree at every edge.
    """
    if indeterminate is None:
        return ABNORMAL if probability >= threshold else NORMAL
    low, high = indeterminate
    if probability >= high:
        return ABNORMAL
    return NORMAL if probability < low else INDETERMINATE


@dataclass(frozen=True)
class LoadedModel:
    spec: ModelSpec
    model: keras.Model | OnnxClassifier
    version: str  # sha256 of the weight file


def read_manifest(*, model_dir: Path) -> dict[str, ModelSpec]:
    """Parse and validate ``models.toml`` in ``model_dir``; paths are resolved against that dir."""
    manifest_path = model_dir / MANIFEST_NAME
    try:
        with manifest_path.open("rb") as handle:
            raw = tomllib.load(handle)
    except FileNotFoundError as exc:
        raise ManifestError(f"no {MANIFEST_NAME} in model dir {model_dir}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ManifestError(f"{manifest_path} is not valid TOML: {exc}") from exc
    return {body_part: _parse_entry(manifest_path, body_part, entry) for body_part, entry in raw.items()}


def _parse_entry(manifest_path: Path, body_part: str, entry: object) -> ModelSpec:
    where = f"{manifest_path} [{body_part}]"
    if body_part not in BODY_PARTS:
        raise ManifestError(f"{where}: unknown body part; expected one of {', '.join(BODY_PARTS)}")
    if not isinstance(entry, dict):
        raise ManifestError(f"{where}: expected a table")
    unknown_keys = set(entry) - {
        "file",
        "name",
        "preprocessing",
        "labels",
        "threshold",
        "sha256",
        "demo",
        "output",
        "indeterminate",
    }
    if unknown_keys:
        raise ManifestError(f"{where}: unknown keys {sorted(unknown_keys)}")
    output = entry.get("output", SOFTMAX)
    if output not in OUTPUTS:
        raise ManifestError(f"{where}: output {output!r} must be one of {', '.join(map(repr, OUTPUTS))}")
    try:
        file_name = str(entry["file"])
        preprocessing = str(entry["preprocessing"])
        labels = _labels(entry, output=output)
        threshold = float(entry["threshold"])
    except KeyError as exc:
        raise ManifestError(f"{where}: missing key {exc.args[0]!r}") from exc
    except (TypeError, ValueError) as exc:
        raise ManifestError(f"{where}: {exc}") from exc
    _check_labels(where, labels, output=output)
    if not 0.0 <= threshold <= 1.0:
        raise ManifestError(f"{where}: threshold {threshold} is outside [0, 1]")
    indeterminate = _indeterminate_band(where, entry.get("indeterminate"), threshold=threshold)
    sha256 = entry.get("sha256")
    if sha256 is not None and (len(str(sha256)) != 64 or not _is_hex(str(sha256))):
        raise ManifestError(f"{where}: sha256 must be 64 hex digits")
    path = manifest_path.parent / file_name
    return ModelSpec(
        body_part=body_part,
        name=str(entry.get("name") or Path(file_name).stem),
        path=path,
        preprocessing=preprocessing,
        labels=labels,
        threshold=threshold,
        sha256=str(sha256).lower() if sha256 is not None else None,
        demo=bool(entry.get("demo", False)),
        output=output,
        indeterminate=indeterminate,
    )


def _indeterminate_band(where: str, value: object, *, threshold: float) -> tuple[float, float] | None:
    """``indeterminate = [low, high]``: 0 <= low < high <= 1 and low <= threshold <= high; absent: None."""
    if value is None:
        return None
    example = "e.g. indeterminate = [0.35, 0.65]"
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not all(isinstance(bound, int | float) and not isinstance(bound, bool) for bound in value)
    ):
        raise ManifestError(
            f"{where}: indeterminate must be two numbers [low, high] ({example}), not {value!r}"
        )
    low, high = (float(bound) for bound in value)
    if not 0.0 <= low <= 1.0 or not 0.0 <= high <= 1.0:
        raise ManifestError(f"{where}: indeterminate [{low:g}, {high:g}] must lie within [0, 1]")
    if low >= high:
        raise ManifestError(
            f"{where}: indeterminate [{low:g}, {high:g}] needs low < high; "
            "leave the key out for a result without an indeterminate band"
        )
    if not low <= threshold <= high:
        raise ManifestError(
            f"{where}: indeterminate [{low:g}, {high:g}] must contain the threshold {threshold:g} "
            "(low <= threshold <= high)"
        )
    return low, high


def _labels(entry: dict, *, output: str) -> tuple[str, ...]:
    if output == SIGMOID and "labels" not in entry:
        return (ABNORMAL,)  # a one-unit sigmoid model most often gives P(abnormal)
    labels = entry["labels"]
    if isinstance(labels, str):  # a bare string would otherwise be read as its letters
        raise ValueError(f"labels must be a list, such as [{labels!r}], not a string")
    return tuple(str(label) for label in labels)


def _check_labels(where: str, labels: tuple[str, ...], *, output: str) -> None:
    if output == SIGMOID:
        if labels not in ((ABNORMAL,), (NORMAL,)):
            raise ManifestError(
                f"{where}: a sigmoid output is one probability: labels must be [{ABNORMAL!r}] "
                f"(it is P(abnormal)) or [{NORMAL!r}] (it is P(normal)), not {list(labels)}"
            )
        return
    if ABNORMAL not in labels:
        raise ManifestError(f"{where}: labels {list(labels)} must include {ABNORMAL!r}")
    if len(labels) < 2:
        raise ManifestError(
            f"{where}: softmax labels {list(labels)} name one output; a single-unit model needs "
            f'output = "{SIGMOID}"'
        )
    if len(set(labels)) != len(labels):
        raise ManifestError(f"{where}: labels {list(labels)} repeat a name")


def _is_hex(text: str) -> bool:
    try:
        int(text, 16)
    except ValueError:
        return False
    return True


_hash_cache: dict[tuple, str] = {}
_hash_lock = threading.Lock()


def file_sha256(*, path: Path) -> str:
    """The sha256 of a weight file, streamed; computed once per (path, size, mtime) in this process.

    A SavedModel folder's version hashes each file's relative path and contents, in sorted order.
    """
    files = sorted(item for item in path.rglob("*") if item.is_file()) if path.is_dir() else [path]
    stats = [item.stat() for item in files]
    key = (
        str(path.resolve()),
        *((str(item), st.st_size, st.st_mtime_ns) for item, st in zip(files, stats, strict=True)),
    )
    with _hash_lock:
        cached = _hash_cache.get(key)
    if cached is not None:
        return cached
    digest = hashlib.sha256()
    for item in files:
        if path.is_dir():
            digest.update(str(item.relative_to(path)).encode() + b"\0")
        with item.open("rb") as handle:
            while chunk := handle.read(_HASH_CHUNK):
                digest.update(chunk)
    value = digest.hexdigest()
    with _hash_lock:
        _hash_cache[key] = value
    return value


def load_model_file(*, spec: ModelSpec) -> keras.Model | OnnxClassifier:
    """Load the model a spec points at, raising ModelLoadError naming the file and body part."""
    return open_model_file(spec=spec).model


def open_model_file(*, spec: ModelSpec) -> OpenedModel:
    """The model a spec points at, with its format and what the load proved (for ``install_model``)."""
    where = f"model file {spec.path} for {spec.body_part}"
    if not is_model_path(spec.path):
        raise ModelLoadError(f"{where} is missing")
    try:
        return open_model(spec.path)
    except ModelFileError as exc:
        raise ModelLoadError(f"{where} {exc}") from exc


class ModelRegistry:
    """Body part → model, from ``models.toml``; loads lazily, caches the last ``cache_size`` models."""

    def __init__(self, model_dir: Path, *, cache_size: int = 3) -> None:
        if cache_size < 1:
            raise ValueError("cache_size must be at least 1")
        self.model_dir = Path(model_dir)
        self.cache_size = cache_size
        self._specs = read_manifest(model_dir=self.model_dir)
        self._cache: OrderedDict[str, LoadedModel] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._load_locks = {body_part: threading.Lock() for body_part in self._specs}

    def spec(self, body_part: str) -> ModelSpec:
        """The manifest entry for a body part; UnsupportedBodyPart when it has none."""
        try:
            return self._specs[body_part]
        except KeyError:
            raise UnsupportedBodyPart(f"no model configured for body part {body_part!r}") from None

    def body_parts(self) -> list[str]:
        """Body parts listed in the manifest, whether or not their file is installed."""
        return sorted(self._specs)

    def available(self, body_part: str) -> bool:
        """True when the body part is configured and its weight file exists."""
        return body_part in self._specs and is_model_path(self._specs[body_part].path)

    def missing(self) -> list[str]:
        """Configured body parts whose weight file is not installed."""
        return [body_part for body_part in self.body_parts() if not self.available(body_part)]

    def get(self, body_part: str) -> LoadedModel:
        """The loaded model for a body part: loaded on first use, then served from the cache."""
        spec = self.spec(body_part)
        cached = self._cached(body_part)
        if cached is not None:
            return cached
        # One lock per body part: a slow load of one model does not block cached reads of others,
        # and two threads asking for the same model load it once.
        with self._load_locks[body_part]:
            cached = self._cached(body_part)
            if cached is not None:
                return cached
            loaded = self._load(spec)
            with self._cache_lock:
                self._cache[body_part] = loaded
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
            return loaded

    def _cached(self, body_part: str) -> LoadedModel | None:
        with self._cache_lock:
            loaded = self._cache.get(body_part)
            if loaded is not None:
                self._cache.move_to_end(body_part)
            return loaded

    def _load(self, spec: ModelSpec) -> LoadedModel:
        if not is_model_path(spec.path):
            raise ModelLoadError(f"model file {spec.path} for {spec.body_part} is missing")
        version = file_sha256(path=spec.path)
        if spec.sha256 is not None and spec.sha256 != version:
            raise ModelLoadError(
                f"model file {spec.path} for {spec.body_part} has sha256 {version}, "
                f"but {MANIFEST_NAME} expects {spec.sha256}"
            )
        model = load_model_file(spec=spec)
        return LoadedModel(spec=spec, model=model, version=version)


_registries: dict[Path, ModelRegistry] = {}
_registries_lock = threading.Lock()


def default_model_dir() -> Path:
    """``MSKDETECT_MODEL_DIR`` from the environment, else ``models/`` in the repository."""
    configured = os.environ.get("MSKDETECT_MODEL_DIR")
    return Path(configured) if configured else Path(__file__).resolve().parent.parent / "models"


def get_registry(model_dir: Path | None = None) -> ModelRegistry:
    """The process-wide registry for a model dir (default: ``default_model_dir()``)."""
    key = Path(model_dir or default_model_dir()).resolve()
    with _registries_lock:
        registry = _registries.get(key)
        if registry is None:
            registry = ModelRegistry(key)
            _registries[key] = registry
        return registry
