"""Predict radiograph files from the command line: one JSON object per file, one per line."""

from __future__ import annotations

import json
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from inference.decoding import DecodedImage, DecodeError, decode_image
from inference.predictor import Predictor
from inference.registry import ABNORMAL, BODY_PARTS, ModelLoadError, ModelRegistry, UnsupportedBodyPart


def _heatmap_path(*, heatmap_dir: Path, source: Path, taken: set[Path]) -> Path:
    # Two inputs may share a file name (a/img.png, b/img.png): never overwrite an earlier heat map.
    candidate = heatmap_dir / f"{source.stem}.heatmap.png"
    counter = 2
    while candidate in taken:
        candidate = heatmap_dir / f"{source.stem}.heatmap-{counter}.png"
        counter += 1
    taken.add(candidate)
    return candidate


class Command(BaseCommand):
    help = (
        "Predict P(abnormal) for PNG, JPEG or DICOM files with a body part's model. Prints one JSON "
        "object per file; exits non-zero when any file could not be read."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("files", nargs="+", type=Path, metavar="FILE")
        parser.add_argument("--body-part", required=True, help=f"one of {', '.join(BODY_PARTS)}")
        parser.add_argument(
            "--model-dir", type=Path, help="folder with models.toml (default: MSKDETECT_MODEL_DIR)"
        )
        parser.add_argument("--heatmap-dir", type=Path, help="write a Grad-CAM overlay PNG per file here")
        parser.add_argument("--batch-size", type=int, default=settings.MSKDETECT_BATCH_SIZE)

    def handle(self, *args, **options) -> None:
        body_part: str = options["body_part"]
        model_dir: Path = options["model_dir"] or settings.MSKDETECT_MODEL_DIR
        if body_part not in BODY_PARTS:
            raise CommandError(f"unknown body part {body_part!r}; choose one of {', '.join(BODY_PARTS)}")
        if options["batch_size"] < 1:
            raise CommandError("--batch-size must be at least 1")
        try:
            registry = ModelRegistry(model_dir)
            registry.spec(body_part)
            loaded = registry.get(body_part)
        except UnsupportedBodyPart as error:
            configured = ", ".join(registry.body_parts()) or "none"
            raise CommandError(
                f"{body_part} is not supported: no model for it in {model_dir} (configured: {configured})"
            ) from error
        except ModelLoadError as error:
            raise CommandError(str(error)) from error

        results: list[dict] = []
        decoded: list[tuple[int, Path, DecodedImage]] = []
        for path in options["files"]:
            try:
                decoded.append((len(results), path, decode_image(path.read_bytes())))
                results.append({"file": str(path)})
            except (OSError, DecodeError) as error:
                reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
                results.append({"file": str(path), "error": reason})

        if decoded:
            predictor = Predictor(loaded, batch_size=options["batch_size"])
            batch = predictor.preprocess([image for _, _, image in decoded])
            probabilities = predictor.abnormal_probabilities(batch)
            heatmap_paths = self._heatmaps(loaded, batch, decoded, options["heatmap_dir"])
            spec = loaded.spec
            for position, ((index, _, _), probability) in enumerate(zip(decoded, probabilities, strict=True)):
                results[index].update(
                    abnormal_probability=round(float(probability), 6),
                    label=ABNORMAL if probability >= spec.threshold else "normal",
                    model_name=spec.name,
                    model_version=loaded.version,
                    demo=spec.demo,
                )
                if heatmap_paths:
                    results[index]["heatmap"] = str(heatmap_paths[position])

        for result in results:
            self.stdout.write(json.dumps(result))
        failed = sum("error" in result for result in results)
        if failed:
            raise CommandError(f"{failed} of {len(results)} file(s) could not be read")

    def _heatmaps(self, loaded, batch, decoded, heatmap_dir: Path | None) -> list[Path]:
        if heatmap_dir is None:
            return []
        # Imported here: Grad-CAM needs gradients, which a plain prediction run does not pay for.
        from inference.gradcam import gradcam_heatmaps, heatmap_overlay_png

        heatmap_dir.mkdir(parents=True, exist_ok=True)
        spec = loaded.spec
        heatmaps = gradcam_heatmaps(loaded.model, batch, class_index=spec.abnormal_index)
        taken: set[Path] = set()
        paths = []
        for (_, source, image), heatmap in zip(decoded, heatmaps, strict=True):
            path = _heatmap_path(heatmap_dir=heatmap_dir, source=source, taken=taken)
            path.write_bytes(heatmap_overlay_png(image, heatmap, preprocessing=spec.preprocessing))
            paths.append(path)
        return paths
