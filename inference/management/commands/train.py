"""Train a body part's classifier on the MURA layout with the seed's recipe."""

from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError, CommandParser, OutputWrapper

from inference.mura import MURA_BODY_PARTS, MuraFormatError, read_split
from inference.training import (
    ARCHITECTURES,
    PREPROCESSING,
    PROFILE_RANGES,
    LabeledImage,
    TrainingError,
    manifest_entry,
    sha256_of,
    train_classifier,
)


def _labeled_images(*, mura_root: Path, split: str, body_part: str) -> list[LabeledImage]:
    studies = read_split(mura_root=mura_root, split=split, body_part=body_part)
    return [LabeledImage(path, study.abnormal) for study in studies for path in study.image_paths]


class _RawStream:
    # Django's OutputWrapper ends every write with a newline; the progress bar redraws one line.
    def __init__(self, wrapper: OutputWrapper) -> None:
        self.wrapper = wrapper

    def write(self, text: str) -> None:
        self.wrapper.write(text, ending="")

    def flush(self) -> None:
        self.wrapper.flush()

    def isatty(self) -> bool:
        return self.wrapper.isatty()


class Command(BaseCommand):
    help = (
        "Train a normal/abnormal classifier for one body part on a MURA-v1.1 directory "
        "(InceptionResNetV2 + Flatten + Dense 256 + Dropout 0.5 + Dense 2, RMSprop 1e-4, class weights, "
        "augmentation) and write a .keras file plus the models.toml entry that registers it."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--mura-root", type=Path, required=True, help="folder holding MURA-v1.1/ (or it)")
        parser.add_argument("--body-part", required=True, choices=MURA_BODY_PARTS)
        parser.add_argument(
            "--weights",
            default="imagenet",
            help="backbone start: imagenet (from the Keras cache, never downloaded), none, or a .h5 file",
        )
        parser.add_argument("--epochs", type=int, default=10)
        parser.add_argument("--batch-size", type=int, default=8)
        parser.add_argument(
            "--image-size", type=int, default=224, help="backbone input side (resized in-model)"
        )
        parser.add_argument("--out", type=Path, help="model file to write (default: <BODY_PART>.keras)")
        parser.add_argument(
            "--preprocessing",
            choices=sorted(PROFILE_RANGES),
            default=PREPROCESSING,
            help="preprocessing profile used for training and written to models.toml (default: seed)",
        )
        parser.add_argument("--seed", type=int, default=0, help="random seed for shuffling and augmentation")
        parser.add_argument(
            "--architecture",
            choices=ARCHITECTURES,
            default="seed",
            help="seed = InceptionResNetV2 (default); tiny = a small CNN for tests and smoke runs",
        )

    def handle(self, *args, **options) -> None:
        body_part: str = options["body_part"]
        out: Path = options["out"] or Path(f"{body_part}.keras")
        if out.suffix != ".keras":
            raise CommandError(f"--out must end in .keras (Keras 3 format), got {out}")
        if options["epochs"] < 1 or options["batch_size"] < 1:
            raise CommandError("--epochs and --batch-size must be at least 1")
        try:
            train_items = _labeled_images(mura_root=options["mura_root"], split="train", body_part=body_part)
            try:
                valid_items = _labeled_images(
                    mura_root=options["mura_root"], split="valid", body_part=body_part
                )
            except MuraFormatError:
                valid_items = []
        except MuraFormatError as error:
            raise CommandError(str(error)) from error
        if not train_items:
            raise CommandError(f"the train split has no {body_part} images")
        self.stdout.write(
            f"{body_part}: {len(train_items)} training images "
            f"({sum(item.abnormal for item in train_items)} abnormal), {len(valid_items)} validation images"
        )
        try:
            result = train_classifier(
                train_items=train_items,
                valid_items=valid_items,
                architecture=options["architecture"],
                weights=options["weights"],
                epochs=options["epochs"],
                batch_size=options["batch_size"],
                image_size=options["image_size"],
                seed=options["seed"],
                preprocessing=options["preprocessing"],
                progress=_RawStream(self.stdout),
            )
        except TrainingError as error:
            raise CommandError(str(error)) from error
        for path, reason in result.skipped_images:
            self.stderr.write(f"skipped {path}: {reason}")
        out.parent.mkdir(parents=True, exist_ok=True)
        result.model.save(out)
        digest = sha256_of(out)
        self.stdout.write(self.style.SUCCESS(f"wrote {out} (sha256 {digest})"))
        self.stdout.write(f"Copy {out.name} into the model directory and add to its models.toml:\n")
        self.stdout.write(
            manifest_entry(
                body_part=body_part, file_name=out.name, sha256=digest, preprocessing=options["preprocessing"]
            )
        )
