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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import h5py
import keras

from inference.architectures import build_seed_from_architecture, recognise_seed_architecture
from inference.body_parts import BODY_PARTS

MANIFEST_NAME = "models.toml"
ABNORMAL = "abnormal"
_HASH_CHUNK = 1 << 20
_HDF5_SUFFIXES = {".h5", ".hdf5"}


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

    @property
    def abnormal_index(self) -> int:
        """Index of the model output that holds P(abnormal)."""
        return self.labels.index(ABNORMAL)


@dataclass(frozen=True)
class LoadedModel:
    spec: ModelSpec
    model: keras.Model
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
    unknown_keys = set(entry) - {"file", "name", "preprocessing", "labels", "threshold", "sha256", "demo"}
    if unknown_keys:
        raise ManifestError(f"{where}: unknown keys {sorted(unknown_keys)}")
    try:
        file_name = str(entry["file"])
        preprocessing = str(entry["preprocessing"])
        labels = tuple(str(label) for label in entry["labels"])
        threshold = float(entry["threshold"])
    except KeyError as exc:
        raise ManifestError(f"{where}: missing key {exc.args[0]!r}") from exc
    except (TypeError, ValueError) as exc:
        raise ManifestError(f"{where}: {exc}") from exc
    if ABNORMAL not in labels:
        raise ManifestError(f"{where}: labels {list(labels)} must include {ABNORMAL!r}")
    if not 0.0 <= threshold <= 1.0:
        raise ManifestError(f"{where}: threshold {threshold} is outside [0, 1]")
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
    )


def _is_hex(text: str) -> bool:
    try:
        int(text, 16)
    except ValueError:
        return False
    return True


_hash_cache: dict[tuple[str, int, int], str] = {}
_hash_lock = threading.Lock()


def file_sha256(*, path: Path) -> str:
    """Return the sha256 of a file, streamed; computed once per (path, size, mtime) in this process."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    with _hash_lock:
        cached = _hash_cache.get(key)
    if cached is not None:
        return cached
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    value = digest.hexdigest()
    with _hash_lock:
        _hash_cache[key] = value
    return value


@contextmanager
def _float32_policy() -> Iterator[None]:
    # The seed was trained under mixed_float16; inference here runs in float32 (exact and fast on
    # CPUs). The policy is global in Keras, so restore whatever the caller had.
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float32")
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def load_model_file(*, spec: ModelSpec) -> keras.Model:
    """Load the Keras model a spec points at, raising ModelLoadError naming the file and body part."""
    path = spec.path
    where = f"model file {path} for {spec.body_part}"
    if not path.is_file():
        raise ModelLoadError(f"{where} is missing")
    if path.suffix.lower() in _HDF5_SUFFIXES:
        return _load_hdf5(path=path, where=where)
    if path.suffix.lower() == ".keras":
        try:
            with _float32_policy():
                return keras.saving.load_model(path, compile=False)
        except Exception as exc:  # Keras raises many types for bad archives; all mean "corrupt"
            raise ModelLoadError(f"{where} could not be loaded: {exc}") from exc
    raise ModelLoadError(f"{where} has an unknown format (expected .h5, .hdf5 or .keras)")


def _load_hdf5(*, path: Path, where: str) -> keras.Model:
    try:
        with h5py.File(path, "r") as handle:
            model_config = handle.attrs.get("model_config")
            weights_group = handle.get("model_weights", handle)
            layer_names = [_as_str(name) for name in weights_group.attrs.get("layer_names", [])]
    except OSError as exc:
        raise ModelLoadError(f"{where} is not a readable HDF5 file: {exc}") from exc
    architecture = recognise_seed_architecture(model_config=model_config, weight_layer_names=layer_names)
    if architecture is not None:
        try:
            with _float32_policy():
                model = build_seed_from_architecture(architecture)
                model.load_weights(path)
        except Exception as exc:  # h5py and Keras raise assorted errors for truncated/mismatched files
            raise ModelLoadError(f"{where}: seed architecture recognised but weights failed: {exc}") from exc
        return model
    try:
        with _float32_policy():
            return keras.saving.load_model(path, compile=False)
    except Exception as exc:
        raise ModelLoadError(
            f"{where}: unknown architecture (not the seed's InceptionResNetV2 classifier) "
            f"and Keras could not load it: {type(exc).__name__}: {exc}"
        ) from exc


def _as_str(value: str | bytes) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


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
        return body_part in self._specs and self._specs[body_part].path.is_file()

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
        if not spec.path.is_file():
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
