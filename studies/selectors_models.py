"""Reads for the model registry page: the installed models (models.toml) joined with their records.

The manifest comes from the inference registry; reading it loads no model (models load on first
use, in the worker). A version's identity is the sha256 of its file, hashed here (once per process
and file: a second or so for the seed's 200 MB files); a missing file shows the manifest's pinned
`sha256`, if any.
"""

from dataclasses import dataclass, field

from django.conf import settings

from studies.models import BodyPart, ModelVersion
from studies.permissions import is_admin
from studies.selectors import User


@dataclass(frozen=True)
class InstalledModel:
    """One manifest entry: the model that serves a body part, and what the app knows of its version."""

    body_part: str
    body_part_name: str
    name: str
    file: str
    present: bool
    demo: bool
    threshold: float
    preprocessing: str
    labels: tuple[str, ...]
    output: str  # how the outputs are read: softmax over `labels`, or one sigmoid
    version: str | None  # None while the file is missing and the manifest pins no sha256
    # The manifest pins a sha256 the file does not have: the worker refuses to load it.
    pinned_mismatch: bool
    record: ModelVersion | None  # None until the worker or install_model has recorded the version

    @property
    def card(self) -> dict | None:
        """The version's validation card (None: not validated here)."""
        return self.record.card if self.record else None


@dataclass(frozen=True)
class ModelRegistryPage:
    installed: list[InstalledModel] = field(default_factory=list)
    # Versions that made predictions but no manifest entry points at any more.
    retired: list[ModelVersion] = field(default_factory=list)
    error: str = ""  # why the manifest could not be read, if it could not


def model_registry(*, user: User) -> ModelRegistryPage:
    """Every model in models.toml with its version record and card, then the retired versions (admins)."""
    if not is_admin(user):
        return ModelRegistryPage()
    # Imported here: the registry module imports Keras, which only this admin page and the
    # worker need, not every web request.
    from inference.registry import ModelLoadError, ModelRegistry, file_sha256

    records = {record.version: record for record in ModelVersion.objects.all()}
    installed: list[InstalledModel] = []
    error = ""
    try:
        # A registry of its own, not the process-wide get_registry(): that one keeps the manifest it
        # read first, and this page must show what install_model wrote since. It loads no model.
        registry = ModelRegistry(settings.MSKDETECT_MODEL_DIR)
    except ModelLoadError as exc:
        error = str(exc)
    else:
        body_part_names = dict(BodyPart.choices)
        for body_part in registry.body_parts():
            spec = registry.spec(body_part)
            present = registry.available(body_part)
            version = file_sha256(path=spec.path) if present else spec.sha256
            installed.append(
                InstalledModel(
                    body_part=body_part,
                    body_part_name=body_part_names.get(body_part, body_part),
                    name=spec.name,
                    file=spec.path.name,
                    present=present,
                    demo=spec.demo,
                    threshold=spec.threshold,
                    preprocessing=spec.preprocessing,
                    labels=tuple(spec.labels),
                    output=spec.output,
                    version=version,
                    pinned_mismatch=bool(present and spec.sha256 and spec.sha256 != version),
                    record=records.get(version) if version else None,
                )
            )
    in_manifest = {model.version for model in installed}
    retired = [record for version, record in records.items() if version not in in_manifest]
    return ModelRegistryPage(installed=installed, retired=retired, error=error)
