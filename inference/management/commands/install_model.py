"""Install a model for a body part: check it, smoke-test it, optionally validate it, then register it.

Everything is tried first, in a staging folder inside the model dir: the entry goes through the
registry's own manifest parser, the file is loaded by the registry's loader, the shared radiographs
are predicted and (with ``--validate-on``) the validation set is evaluated. Only then are the file
moved in, the validation card written and ``models.toml`` replaced, in that order; if one of those
steps fails the earlier ones are undone. A refusal leaves the model dir exactly as it was.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import tempfile
from collections.abc import Callable
from datetime import date
from pathlib import Path

import numpy as np
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from inference.body_parts import BODY_PARTS
from inference.decoding import DecodeError, decode_image
from inference.evaluation import BodyPartEvaluation, evaluate_model
from inference.manifest_writer import read_manifest_text, with_entry, write_manifest_text
from inference.model_card import MURA_VALID, build_card, card_path, write_card
from inference.mura import SPLITS, MuraFormatError, MuraStudy, find_dataset_dir, read_split
from inference.onnx_runtime import OnnxClassifier
from inference.ood import (
    OodReference,
    OodReferenceError,
    fit_model_reference,
    reference_path,
    write_reference,
)
from inference.ood_samples import ReferenceFolderError, decode_reference, reference_paths
from inference.predictor import Predictor, model_input_size
from inference.preprocessing import UnknownProfile, UnsupportedInputSize, get_profile
from inference.registry import (
    ABNORMAL,
    MANIFEST_NAME,
    OUTPUTS,
    SIGMOID,
    SOFTMAX,
    LoadedModel,
    ManifestError,
    ModelLoadError,
    ModelSpec,
    file_sha256,
    open_model_file,
    read_manifest,
)
from inference.shared_data import SharedDataNotFound, locate_shared_data

_NOT_IMAGES = {".md", ".csv", ".txt", ".json"}
_SOFTMAX_TOLERANCE = 1e-3


def describe_model(model: object) -> list[str]:
    """What a loaded model is, for people: class, nested base model, input size, outputs, parameters."""
    height, width = model_input_size(model)
    if isinstance(model, OnnxClassifier):
        outputs = [tuple(output.shape) for output in model.session.get_outputs()]
        return [
            f"model: ONNX graph {model.path.name}",
            f"input size: {height}x{width}",
            f"outputs: {outputs}",
        ]
    lines = [f"model: {type(model).__name__} {model.name!r}"]
    nested = [layer.name for layer in model.layers if hasattr(layer, "layers")]
    if nested:
        lines.append(f"base model: {', '.join(nested)}")
    lines.append(f"input size: {height}x{width}")
    lines.append(f"outputs: {[tuple(output.shape) for output in model.outputs]}")
    lines.append(f"parameters: {model.count_params():,}")
    return lines


def _band(text: str) -> list[float]:
    """``--indeterminate LOW,HIGH`` as two numbers; the manifest parser checks them against the threshold."""
    parts = [part.strip() for part in text.split(",")]
    try:
        if len(parts) != 2:
            raise ValueError
        return [float(part) for part in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH such as 0.35,0.65, not {text!r}") from None


def _first_output(outputs: object) -> np.ndarray:
    return np.asarray(outputs[0] if isinstance(outputs, list | tuple) else outputs, dtype=np.float64)


class Command(BaseCommand):
    help = (
        "Install a model (Keras 2/3 .h5, .keras, TF SavedModel folder or .onnx) for a body part: load it, "
        "print what it is and its sha256, predict the shared radiographs as a smoke test, optionally "
        "evaluate it on a MURA-layout folder and write its validation card, then write its models.toml "
        "entry (other entries and comments kept). A refusal changes nothing."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        add = parser.add_argument
        add("file", type=Path, metavar="FILE", help="model file or SavedModel folder")
        add("--body-part", required=True, help=f"one of {', '.join(BODY_PARTS)}")
        add("--preprocessing", default="seed", help="preprocessing profile the model was trained with")
        add("--labels", help="meaning of the outputs, in order (default: abnormal,normal; sigmoid: abnormal)")
        add("--output", choices=OUTPUTS, help="softmax: one output per label (default); sigmoid: one output")
        add("--threshold", type=float, default=0.5, help="a study is abnormal at P(abnormal) >= this")
        add(
            "--indeterminate",
            type=_band,
            metavar="LOW,HIGH",
            help="indeterminate band around the threshold, e.g. 0.35,0.65: a study with LOW <= P(abnormal) "
            "< HIGH is called neither abnormal nor normal (default: no band, see models/README.md)",
        )
        add("--name", help="model name shown with results (default: the file's stem)")
        add("--model-dir", type=Path, help="folder with models.toml (default: MSKDETECT_MODEL_DIR)")
        add("--demo", action="store_true", help="mark it a demo model: not for clinical use")
        add("--force", action="store_true", help="replace a different file of the same name in the model dir")
        add("--validate-on", type=Path, metavar="MURA_ROOT", help="evaluate on this MURA-layout folder")
        add("--split", choices=SPLITS, default="valid", help="split of --validate-on (default: valid)")
        add("--set-name", help="validation set's name on the card (default: e.g. 'MURA-v1.1 valid')")
        add("--smoke-dir", type=Path, help="radiographs for the smoke test (default: the shared test data)")
        add(
            "--ood-reference",
            type=Path,
            metavar="DIR",
            help="in-distribution radiographs for the out-of-distribution score: a folder of images or "
            "a MURA-layout folder (its train split, this body part) "
            "(default: the shared upper-limb radiographs)",
        )
        add("--batch-size", type=int, default=settings.MSKDETECT_BATCH_SIZE)

    def handle(self, *args, **options) -> None:
        body_part = options["body_part"]
        if body_part not in BODY_PARTS:
            raise CommandError(f"unknown body part {body_part!r}; choose one of {', '.join(BODY_PARTS)}")
        try:
            get_profile(options["preprocessing"])
        except UnknownProfile as error:
            raise CommandError(str(error)) from error
        if options["batch_size"] < 1:
            raise CommandError("--batch-size must be at least 1")
        source: Path = options["file"].resolve()
        if not source.exists():
            raise CommandError(f"{source} does not exist")
        smoke_paths = self._smoke_paths(options["smoke_dir"])
        studies = self._validation_studies(options)

        model_dir: Path = (options["model_dir"] or settings.MSKDETECT_MODEL_DIR).resolve()
        created_model_dir = not model_dir.exists()
        model_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=model_dir, prefix=".install-"))
        try:
            self._install(
                options,
                source=source,
                model_dir=model_dir,
                staging=staging,
                studies=studies,
                smoke_paths=smoke_paths,
            )
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            if created_model_dir and not any(model_dir.iterdir()):
                model_dir.rmdir()

    def _smoke_paths(self, smoke_dir: Path | None) -> list[Path]:
        if smoke_dir is None:
            try:
                smoke_dir = locate_shared_data()
            except SharedDataNotFound as error:
                raise CommandError(f"{error} (or give --smoke-dir with a few radiographs)") from error
        paths = sorted(
            path
            for path in Path(smoke_dir).rglob("*")
            if path.is_file() and path.suffix.lower() not in _NOT_IMAGES and not path.name.startswith(".")
        )
        if not paths:
            raise CommandError(f"no radiographs for the smoke test in {smoke_dir}")
        return paths

    def _validation_studies(self, options: dict) -> list[MuraStudy]:
        if options["validate_on"] is None:
            return []
        split, body_part = options["split"], options["body_part"]
        try:
            studies = read_split(mura_root=options["validate_on"], split=split, body_part=body_part)
        except MuraFormatError as error:
            raise CommandError(f"--validate-on: {error}") from error
        if not studies:
            raise CommandError(f"--validate-on: the {split} split has no {body_part} studies")
        return studies

    # --- try everything in the staging folder ------------------------------------------------------

    def _install(
        self,
        options: dict,
        *,
        source: Path,
        model_dir: Path,
        staging: Path,
        studies: list[MuraStudy],
        smoke_paths: list[Path],
    ) -> None:
        body_part = options["body_part"]
        relative, copy_needed = self._destination(source=source, model_dir=model_dir, force=options["force"])
        destination = model_dir / relative
        version = file_sha256(path=source)
        current_text = read_manifest_text(model_dir=model_dir)
        previous = self._previous_entry(model_dir=model_dir, body_part=body_part, current_text=current_text)
        keeps_name = previous is not None and previous.path == destination
        name = options["name"] or (previous.name if keeps_name else relative.stem)
        new_text, spec = self._entry(options, staging=staging, current_text=current_text, entry={
            "file": relative.as_posix(), "name": name, "preprocessing": options["preprocessing"],
            "labels": self._labels(options), "output": options["output"],
            "threshold": float(options["threshold"]), "indeterminate": options["indeterminate"],
            "sha256": version, "demo": bool(options["demo"]),
        })  # fmt: skip

        staged = destination
        if copy_needed:
            staged = staging / "model" / relative.name
            staged.parent.mkdir()
            (shutil.copytree if source.is_dir() else shutil.copy2)(source, staged)
            if file_sha256(path=staged) != version:
                raise CommandError(f"{source} changed while it was being copied; try again")
        spec = dataclasses.replace(spec, path=staged)
        try:
            opened = open_model_file(spec=spec)
        except ModelLoadError as error:
            raise CommandError(f"{source} cannot be installed: {error}") from error
        for line in describe_model(opened.model):
            self.stdout.write(line)
        self.stdout.write(f"format: {opened.format}; {opened.check}")
        self.stdout.write(f"sha256: {version}")
        loaded = LoadedModel(spec=spec, model=opened.model, version=version)
        self._smoke_test(loaded=loaded, paths=smoke_paths, batch_size=options["batch_size"])
        card = self._card(options, loaded=loaded, studies=studies) if studies else None
        ood_reference = self._ood_reference(options, loaded=loaded)

        self._commit(
            model_dir=model_dir, staging=staging, staged=staged if copy_needed else None,
            destination=destination, card=card, manifest_text=new_text, ood_reference=ood_reference,
        )  # fmt: skip
        self.stdout.write(
            self.style.SUCCESS(
                f"installed {relative.as_posix()} for {body_part} as {name!r} (sha256 {version[:12]}) "
                f"in {model_dir / MANIFEST_NAME}"
            )
        )
        if previous is not None and previous.path != destination:
            self.stdout.write(
                f"it replaces {previous.path.name} for {body_part}; that file stays in {model_dir}"
            )
        if spec.indeterminate is None:
            self.stdout.write(
                "no indeterminate band: every result is abnormal or normal at the threshold "
                "(give --indeterminate LOW,HIGH for a band)"
            )
        else:
            low, high = spec.indeterminate
            self.stdout.write(f"indeterminate band: {low:g} <= P(abnormal) < {high:g}")
        self.stdout.write("workers load each model once: restart them to serve the new entry")

    def _destination(self, *, source: Path, model_dir: Path, force: bool) -> tuple[Path, bool]:
        """The model's path relative to the model dir, and whether it must be copied there."""
        if source.is_relative_to(model_dir):
            return source.relative_to(model_dir), False
        relative = Path(source.name)
        destination = model_dir / relative
        if destination.exists():
            same_kind = destination.is_dir() == source.is_dir()
            if same_kind and file_sha256(path=destination) == file_sha256(path=source):
                self.stdout.write(f"{relative} is already in {model_dir} with the same content: not copied")
                return relative, False
            if not force:
                raise CommandError(
                    f"a different {relative} is already in {model_dir}; rename your file, or pass --force "
                    "to replace it (every body part that uses it will change)"
                )
        return relative, True

    def _previous_entry(
        self, *, model_dir: Path, body_part: str, current_text: str | None
    ) -> ModelSpec | None:
        if current_text is None:
            return None
        try:
            return read_manifest(model_dir=model_dir).get(body_part)
        except ManifestError as error:
            raise CommandError(f"{error}; fix it first: install_model leaves it as it is") from error

    def _labels(self, options: dict) -> list[str]:
        if options["labels"] is not None:
            return [label.strip() for label in options["labels"].split(",") if label.strip()]
        return [ABNORMAL] if options["output"] == SIGMOID else [ABNORMAL, "normal"]

    def _entry(
        self, options: dict, *, staging: Path, current_text: str | None, entry: dict
    ) -> tuple[str, ModelSpec]:
        """The new manifest text, and the spec the registry will build from it.

        The whole new manifest goes through the registry's own parser (from a copy in the staging
        folder), so what gets written is exactly what the registry accepts: labels, output and
        threshold are judged by the same rules that serve the model.
        """
        try:
            text = with_entry(text=current_text, body_part=options["body_part"], entry=entry)
            (staging / MANIFEST_NAME).write_text(text, encoding="utf-8")
            return text, read_manifest(model_dir=staging)[options["body_part"]]
        except ManifestError as error:
            message = str(error).replace(str(staging / MANIFEST_NAME), MANIFEST_NAME)
            raise CommandError(f"refused: {message}") from error

    def _smoke_test(self, *, loaded: LoadedModel, paths: list[Path], batch_size: int) -> None:
        self.stdout.write(f"smoke test on {len(paths)} radiograph(s):")
        decoded, names = [], []
        for path in paths:
            try:
                decoded.append(decode_image(path.read_bytes()))
                names.append(path.name)
            except (OSError, DecodeError) as error:
                self.stdout.write(f"  {path.name}: not readable here ({error}), skipped")
        if not decoded:
            raise CommandError("smoke test: none of the radiographs could be decoded")
        try:
            predictor = Predictor(loaded, batch_size=batch_size)
            batch = predictor.preprocess(decoded)
            if loaded.spec.output == SOFTMAX:
                self._check_softmax(_first_output(loaded.model(batch[:1])))
            probabilities = predictor.abnormal_probabilities(batch)
        except (ManifestError, UnsupportedInputSize) as error:  # outputs or input size don't fit the entry
            raise CommandError(f"refused: {error} (see --output, --labels, --preprocessing)") from error
        except CommandError:
            raise
        except Exception as error:  # any failure to run the model is a refusal, whatever raised it
            raise CommandError(f"smoke test: the model failed: {type(error).__name__}: {error}") from error
        for name, probability in zip(names, probabilities, strict=True):
            self.stdout.write(f"  {name}: P(abnormal) = {probability:.4f}")
        bad = [name for name, p in zip(names, probabilities, strict=True) if not 0.0 <= p <= 1.0]
        if bad:  # NaN fails the comparison too
            raise CommandError(f"smoke test: P(abnormal) is NaN or outside [0, 1] for {', '.join(bad)}")

    def _check_softmax(self, outputs: np.ndarray) -> None:
        # Softmax outputs are probabilities summing to 1: a model that ends in logits would otherwise
        # be read as P(abnormal) without complaint.
        if not np.all(np.isfinite(outputs)):
            raise CommandError("smoke test: the model's outputs are NaN or infinite")
        total = outputs.sum(axis=-1)
        if outputs.min() < 0.0 or not np.all(np.abs(total - 1.0) <= _SOFTMAX_TOLERANCE):
            raise CommandError(
                f"the model's outputs are not softmax probabilities (they sum to {total.flat[0]:.4f}); "
                "give --output sigmoid for a one-unit sigmoid model, or install a model that ends in softmax"
            )

    def _card(self, options: dict, *, loaded: LoadedModel, studies: list[MuraStudy]) -> dict:
        images = sum(len(study.image_paths) for study in studies)
        self.stdout.write(f"validating on {len(studies)} studies ({images} images)...")
        try:
            evaluation: BodyPartEvaluation = evaluate_model(
                studies=studies, loaded=loaded, batch_size=options["batch_size"]
            )
        except Exception as error:  # any failure to run the model is a refusal, whatever raised it
            raise CommandError(f"validation failed: {type(error).__name__}: {error}") from error
        if evaluation.metrics.count == 0:
            raise CommandError("validation: none of the studies had a readable image")
        if evaluation.failed_images:
            self.stderr.write(f"{len(evaluation.failed_images)} image(s) unreadable, left out of the card")
        root = options["validate_on"]
        dataset_dir = find_dataset_dir(mura_root=root, split=options["split"])
        default_name = (
            MURA_VALID
            if (dataset_dir.name, options["split"]) == ("MURA-v1.1", "valid")
            else f"{dataset_dir.name} {options['split']}"
        )
        return build_card(
            evaluation=evaluation,
            set_name=options["set_name"] or default_name,
            set_path=str(Path(root).resolve()),
            validated_on=date.today(),
        )

    def _report_card(self, card: dict) -> None:
        seen = card["validated_on"]
        self.stdout.write(
            f"validated on {seen['set']}: {seen['studies']} studies ({seen['abnormal_studies']} abnormal), "
            f"{seen['images']} images, at threshold {card['threshold']:g}"
        )
        for name, figure in card["metrics"].items():
            if figure["value"] is None:
                self.stdout.write(f"  {name}: n/a")
            elif figure["low"] is None:
                self.stdout.write(f"  {name}: {figure['value']:.3f}")
            else:
                self.stdout.write(
                    f"  {name}: {figure['value']:.3f} (95% CI {figure['low']:.3f}-{figure['high']:.3f})"
                )

    # --- commit -----------------------------------------------------------------------------------

    def _commit(
        self,
        *,
        model_dir: Path,
        staging: Path,
        staged: Path | None,
        destination: Path,
        card: dict | None,
        manifest_text: str,
        ood_reference: OodReference | None = None,
    ) -> None:
        """Move the file in, write the card and OOD reference, then the manifest; undo all if a step fails."""
        undo: list[Callable[[], None]] = []
        try:
            if staged is not None:
                if destination.exists():  # --force: the old one waits aside until the manifest is written
                    aside = staging / "previous"
                    os.replace(destination, aside)
                    undo.append(lambda: os.replace(aside, destination))
                destination.parent.mkdir(parents=True, exist_ok=True)
                os.replace(staged, destination)
                undo.append(lambda: _remove(destination))
            if card is not None:
                path = card_path(model_dir=model_dir, version=card["model_version"])
                old_card = path.read_bytes() if path.exists() else None
                cards_dir_existed = path.parent.exists()
                write_card(model_dir=model_dir, card=card)
                undo.append(lambda: _restore(path, old_card, remove_dir=not cards_dir_existed))
            if ood_reference is not None:
                ood_path = reference_path(model_dir=model_dir, version=ood_reference.model_version)
                old_reference = ood_path.read_bytes() if ood_path.exists() else None
                ood_dir_existed = ood_path.parent.exists()
                write_reference(model_dir=model_dir, reference=ood_reference)
                undo.append(lambda: _restore(ood_path, old_reference, remove_dir=not ood_dir_existed))
            write_manifest_text(model_dir=model_dir, text=manifest_text)
        except BaseException as error:
            for step in reversed(undo):
                step()
            if isinstance(error, OSError):
                raise CommandError(
                    f"could not install into {model_dir}: {error}; nothing was changed"
                ) from error
            raise
        if card is not None:
            self.stdout.write(f"card: {card_path(model_dir=model_dir, version=card['model_version'])}")
            self._report_card(card)
        if ood_reference is not None:
            self.stdout.write(
                f"OOD reference: {reference_path(model_dir=model_dir, version=ood_reference.model_version)} "
                f"({ood_reference.meta['images']} images, threshold {ood_reference.threshold:.2f})"
            )

    def _ood_reference(self, options: dict, *, loaded: LoadedModel) -> OodReference | None:
        """The model's OOD reference from ``--ood-reference`` (default: the shared radiographs)."""
        directory = options["ood_reference"]
        if directory is None:
            try:
                directory = locate_shared_data()
            except SharedDataNotFound:
                self.stderr.write(
                    "no OOD reference: the shared radiographs were not found (give --ood-reference)"
                )
                return None
        try:
            paths = reference_paths(directory, body_part=options["body_part"])
        except ReferenceFolderError as error:
            raise CommandError(f"--ood-reference: {error}") from error
        images, names, skipped = decode_reference(paths, root=Path(directory))
        if skipped:
            self.stderr.write(f"OOD reference: {len(skipped)} file(s) not readable, left out")
        self.stdout.write(f"fitting the OOD reference on {len(images)} radiograph(s) from {directory}...")
        try:
            return fit_model_reference(
                loaded=loaded, images=images, names=names, source=str(Path(directory).resolve()),
                batch_size=options["batch_size"],
            )  # fmt: skip
        except OodReferenceError as error:
            raise CommandError(f"--ood-reference: {error}") from error


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _restore(path: Path, content: bytes | None, *, remove_dir: bool) -> None:
    if content is not None:
        path.write_bytes(content)
        return
    path.unlink(missing_ok=True)
    if remove_dir and not any(path.parent.iterdir()):
        path.parent.rmdir()
