"""How well the OOD score tells radiographs from things that are not, per model (``benchmark_ood``).

Honest held-out figures: the radiographs a reference was fitted on are scored only by leave-one-out
(each against a reference fitted without it and its augmented copies), never against a reference
that holds them. Everything else (photographs, screenshots, CT and MR slices, radiographs of other
body parts that are not in the reference) is scored against the model's full reference.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from inference.decoding import DecodedImage
from inference.ood import (
    OodReference,
    assess_images,
    build_reference,
    read_reference,
)
from inference.ood_samples import Sample, not_radiographs, shared_radiographs, upper_limb_paths
from inference.registry import LoadedModel


def auroc(*, positives: Sequence[float], negatives: Sequence[float]) -> float | None:
    """P(a negative scores higher than a positive), ties counting half; None with an empty side.

    Here "negative" is the out-of-distribution image: the score should be higher for it.
    """
    positives, negatives = np.asarray(positives, float), np.asarray(negatives, float)
    if not len(positives) or not len(negatives):
        return None
    higher = (negatives[:, None] > positives[None, :]).sum()
    ties = (negatives[:, None] == positives[None, :]).sum()
    return float((higher + 0.5 * ties) / (len(positives) * len(negatives)))


@dataclass(frozen=True)
class ModelReference:
    reference: OodReference
    source: str  # "installed" (the model dir's file) or "fitted here" (none installed)
    loo_by_name: dict[str, float]


def reference_for(*, loaded: LoadedModel, model_dir: Path, shared_dir: Path, predictor) -> ModelReference:
    """The model's installed reference, or one fitted here from the shared upper-limb radiographs."""
    reference = read_reference(model_dir=model_dir, version=loaded.version)
    source = "installed"
    if reference is None:
        samples = [s for s in shared_radiographs(shared_dir) if s.body_parts]
        reference = build_reference(
            images=[sample.image for sample in samples],
            names=[sample.name for sample in samples],
            features_of=predictor.pooled_features,
            meta=_meta(loaded, source=str(shared_dir)),
        )
        source = "fitted here from the shared upper-limb radiographs"
    names = reference.meta.get("sources", [])
    loo_by_name = dict(zip(names, (float(s) for s in reference.loo_scores), strict=False))
    return ModelReference(reference=reference, source=source, loo_by_name=loo_by_name)


def _meta(loaded: LoadedModel, *, source: str) -> dict:
    return {
        "model_version": loaded.version,
        "model_name": loaded.spec.name,
        "body_part": loaded.spec.body_part,
        "source": source,
    }


def _scores(*, predictor, reference: OodReference, images: list[DecodedImage]) -> list[float]:
    features = predictor.pooled_features(images)
    return [result.score for result in assess_images(reference=reference, features=features, images=images)]


def benchmark_model(*, loaded: LoadedModel, model_dir: Path, shared_dir: Path, batch_size: int = 16) -> dict:
    """The figures of one model: AUROC radiograph vs not, per kind, and own vs other body parts."""
    from inference.predictor import Predictor

    predictor = Predictor(loaded, batch_size=batch_size)
    fitted = reference_for(loaded=loaded, model_dir=model_dir, shared_dir=shared_dir, predictor=predictor)
    reference = fitted.reference
    in_reference = set(fitted.loo_by_name)
    radiographs = shared_radiographs(shared_dir)
    negatives = not_radiographs()
    outside = [s for s in radiographs if s.name not in in_reference]
    scored_outside = _scores(predictor=predictor, reference=reference, images=[s.image for s in outside])
    scored_negatives = _scores(predictor=predictor, reference=reference, images=[s.image for s in negatives])
    # Radiographs of the reference: leave-one-out scores only (held out from the fit that scores them).
    positives = dict(fitted.loo_by_name)
    negative_scores = dict(zip((s.name for s in negatives), scored_negatives, strict=True))
    kinds = sorted({s.kind for s in negatives})
    per_kind = {
        kind: auroc(
            positives=list(positives.values()),
            negatives=[negative_scores[s.name] for s in negatives if s.kind == kind],
        )
        for kind in kinds
    }
    body_part = loaded.spec.body_part
    # Own vs other body parts: reference radiographs by their leave-one-out scores, the rest directly.
    own, other = [], []
    for sample in radiographs:
        score = positives.get(sample.name)
        if score is None:
            score = dict(zip((s.name for s in outside), scored_outside, strict=True))[sample.name]
        (own if body_part in sample.body_parts else other).append(score)
    threshold = reference.threshold
    return {
        "body_part": body_part,
        "model_name": loaded.spec.name,
        "model_version": loaded.version,
        "reference": {
            "source": fitted.source,
            "fitted_on": reference.meta.get("source"),
            "images": reference.meta.get("images"),
            "threshold": round(threshold, 4),
            "percentile": reference.meta.get("percentile"),
            "feature_dim": reference.meta.get("feature_dim"),
        },
        "radiographs_vs_not": {
            "auroc": auroc(positives=list(positives.values()), negatives=scored_negatives),
            "radiographs": len(positives),
            "not_radiographs": len(negatives),
            "per_kind_auroc": per_kind,
            "radiographs_above_threshold": sum(score > threshold for score in positives.values()),
            "not_radiographs_above_threshold": sum(score > threshold for score in scored_negatives),
        },
        "own_vs_other_body_parts": {
            "auroc": auroc(positives=own, negatives=other),
            "own": len(own),
            "other": len(other),
            "note": "no target: few images, and the other body parts are of another kind of patient too",
        },
        "scores": {
            "radiographs (leave-one-out)": _rounded(positives),
            "other radiographs": _rounded(
                {_label(sample): score for sample, score in zip(outside, scored_outside, strict=True)}
            ),
            "not radiographs": _rounded(negative_scores),
        },
    }


def _label(sample: Sample) -> str:
    from inference.ood_samples import SHARED_DESCRIPTIONS

    return f"{sample.name} ({SHARED_DESCRIPTIONS.get(sample.name, 'radiograph')})"


def _rounded(scores: dict[str, float]) -> dict[str, float]:
    return {name: round(float(score), 3) for name, score in scores.items()}


def default_reference_paths(shared_dir: Path) -> list[Path]:
    """The shared radiographs of MURA body parts (upper limb): the default reference images."""
    return upper_limb_paths(shared_dir)
