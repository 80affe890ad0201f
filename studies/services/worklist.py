"""The worklist's stored sort key: flagged first, then indeterminate awaiting a read, then the rest.

``flagged`` = the study's result is abnormal and no radiologist has reviewed it (DESIGN.md). An
indeterminate result (P(abnormal) inside the model's band) is never flagged: it is not a call, but
it needs a radiologist's read, so it ranks right after the flagged studies until one has ruled.
Within a rank, highest P(abnormal) first. The key is derived from the result and the reviews, and
every service that changes either calls ``study_worklist_key_refresh`` inside its own transaction,
so the two never disagree.
"""

from studies.models import ResultLabel, Review, Study, StudyResult, WorklistRank


def worklist_rank(*, label: str | None, reviewed: bool) -> int:
    """The rank of a study with this result label (None: no result) and review state."""
    if reviewed or label is None:
        return WorklistRank.OTHER
    if label == ResultLabel.ABNORMAL:
        return WorklistRank.FLAGGED
    if label == ResultLabel.INDETERMINATE:
        return WorklistRank.INDETERMINATE
    return WorklistRank.OTHER


def study_worklist_key_refresh(*, study: Study) -> None:
    """Recompute the study's worklist sort key from its result and reviews."""
    result = StudyResult.objects.filter(study_id=study.pk).values("label", "abnormal_probability").first()
    reviewed = Review.objects.filter(study_id=study.pk).exists()
    rank = worklist_rank(label=result["label"] if result else None, reviewed=reviewed)
    probability = result["abnormal_probability"] if result else -1.0
    Study.objects.filter(pk=study.pk).update(worklist_rank=rank, worklist_probability=probability)
    study.worklist_rank, study.worklist_probability = rank, probability
