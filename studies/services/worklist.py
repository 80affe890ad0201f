"""The worklist's stored sort key: flagged-and-unreviewed first, then highest P(abnormal).

``flagged`` = the study's result is abnormal and no radiologist has reviewed it (DESIGN.md).
The key is derived from the result and the reviews, and every service that changes either
calls ``study_worklist_key_refresh`` inside its own transaction, so the two never disagree.
"""

from studies.models import Label, Review, Study, StudyResult


def study_worklist_key_refresh(*, study: Study) -> None:
    """Recompute the study's worklist sort key from its result and reviews."""
    result = StudyResult.objects.filter(study_id=study.pk).values("label", "abnormal_probability").first()
    reviewed = Review.objects.filter(study_id=study.pk).exists()
    flagged = bool(result) and result["label"] == Label.ABNORMAL and not reviewed
    probability = result["abnormal_probability"] if result else -1.0
    Study.objects.filter(pk=study.pk).update(worklist_flagged=flagged, worklist_probability=probability)
    study.worklist_flagged, study.worklist_probability = flagged, probability
