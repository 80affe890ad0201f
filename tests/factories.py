"""factory_boy factories for the clinical records; UserFactory(role=...) puts the user in a role."""

import hashlib
import io

import factory
import numpy as np
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.files.base import ContentFile
from django.utils import timezone
from PIL import Image

from studies.models import (
    BodyPart,
    ImageFormat,
    ImageStatus,
    Label,
    ModelVersion,
    Patient,
    Prediction,
    Radiograph,
    ResultLabel,
    Review,
    ReviewDecision,
    Sex,
    Study,
    StudyResult,
)
from studies.services.predictions import result_label
from studies.services.worklist import study_worklist_key_refresh

PASSWORD = "correct horse battery staple"


def small_png(*, seed: int = 0, size: tuple[int, int] = (48, 64)) -> bytes:
    """A small, valid 8-bit gray PNG whose bytes differ by seed (so sha256s differ)."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=size, dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


class UserFactory(factory.django.DjangoModelFactory):
    """`role`: "staff" (default), "radiologist", "admin" (a superuser) or None (no role at all)."""

    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda u: f"{u.username}@hospital.example")
    password = factory.django.Password(PASSWORD)

    @classmethod
    def _create(cls, model_class, *args, role: str | None = "staff", **kwargs):
        kwargs.setdefault("is_superuser", role == "admin")
        kwargs.setdefault("is_staff", role == "admin")
        user = super()._create(model_class, *args, **kwargs)
        if role in ("staff", "radiologist"):
            user.groups.add(Group.objects.get_or_create(name=role)[0])
        return user


class PatientFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Patient

    mrn = factory.Sequence(lambda n: f"MRN{n:06d}")
    name = factory.Sequence(lambda n: f"Patient {n}")
    birth_date = factory.Faker("date_of_birth", minimum_age=5, maximum_age=90)
    sex = Sex.FEMALE


class StudyFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Study

    patient = factory.SubFactory(PatientFactory)
    accession_number = factory.Sequence(lambda n: f"ACC{n:07d}")
    body_part = BodyPart.WRIST


class RadiographFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Radiograph
        exclude = ("content",)

    study = factory.SubFactory(StudyFactory)
    content = factory.Sequence(lambda n: small_png(seed=n))
    sha256 = factory.LazyAttribute(lambda r: hashlib.sha256(r.content).hexdigest())
    format = ImageFormat.PNG
    width = 64
    height = 48
    status = ImageStatus.QUEUED
    file = factory.LazyAttribute(lambda r: ContentFile(r.content, name="upload.png"))


class PredictionFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Prediction
        exclude = ("indeterminate",)

    radiograph = factory.SubFactory(RadiographFactory, status=ImageStatus.DONE)
    model_name = "WRIST"
    body_part = factory.LazyAttribute(lambda p: p.radiograph.study.body_part)
    model_version = "a" * 64
    abnormal_probability = 0.8
    threshold = 0.5
    # (low, high) or None; the label follows from the probability, threshold and band.
    indeterminate = None
    indeterminate_low = factory.LazyAttribute(lambda p: p.indeterminate[0] if p.indeterminate else None)
    indeterminate_high = factory.LazyAttribute(lambda p: p.indeterminate[1] if p.indeterminate else None)
    label = factory.LazyAttribute(
        lambda p: result_label(p.abnormal_probability, threshold=p.threshold, indeterminate=p.indeterminate)
    )
    preprocessing = "seed"


class StudyResultFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = StudyResult
        exclude = ("indeterminate",)
        skip_postgeneration_save = True

    study = factory.SubFactory(StudyFactory, status=Study.Status.PREDICTED)
    abnormal_probability = 0.8
    threshold = 0.5
    # (low, high) or None; the label follows from the probability, threshold and band.
    indeterminate = None
    indeterminate_low = factory.LazyAttribute(lambda r: r.indeterminate[0] if r.indeterminate else None)
    indeterminate_high = factory.LazyAttribute(lambda r: r.indeterminate[1] if r.indeterminate else None)
    label = factory.LazyAttribute(
        lambda r: result_label(r.abnormal_probability, threshold=r.threshold, indeterminate=r.indeterminate)
    )
    model_name = "WRIST"
    model_version = "a" * 64

    @factory.post_generation
    def worklist_key(self, create, extracted, **kwargs):
        # Made without the services, so keep the study's worklist sort key as they would.
        if create:
            study_worklist_key_refresh(study=self.study)


def validation_card(
    *,
    version: str = "a" * 64,
    model_name: str = "WRIST",
    body_part: str = BodyPart.WRIST,
    created_at: str = "2026-12-02T10:00:00+00:00",
    kappa: tuple[float | None, float | None, float | None] = (0.71, 0.67, 0.75),
    demo: bool = False,
) -> dict:
    """A schema-1 validation card (inference.model_card) with plausible MURA-valid figures."""
    value, low, high = kappa
    return {
        "schema": 1,
        "model_name": model_name,
        "body_part": body_part,
        "model_version": version,
        "demo": demo,
        "threshold": 0.5,
        "validated_on": {
            "set": "MURA-v1.1 valid",
            "path": "/data/MURA-v1.1/valid",
            "date": "2026-12-02",
            "studies": 1199,
            "abnormal_studies": 536,
            "normal_studies": 663,
            "images": 3197,
            "failed_images": 0,
        },
        "metrics": {
            "kappa": {"value": value, "low": low, "high": high},
            "auroc": {"value": 0.874, "low": 0.853, "high": 0.893},
            "sensitivity": {"value": 0.781, "low": 0.744, "high": 0.814},
            "specificity": {"value": 0.902, "low": 0.877, "high": 0.922},
        },
        "ci": "Sensitivity and specificity: Wilson score interval; AUROC and kappa: stratified bootstrap.",
        "roc": {"fpr": [0.0, 0.05, 0.098, 0.3, 1.0], "tpr": [0.0, 0.55, 0.781, 0.93, 1.0]},
        "created_at": created_at,
    }


class ModelVersionFactory(factory.django.DjangoModelFactory):
    """A recorded model version; `card=validation_card(version=...)` makes it validated."""

    class Meta:
        model = ModelVersion
        django_get_or_create = ("version",)

    version = "a" * 64
    model_name = "WRIST"
    body_part = BodyPart.WRIST
    threshold = 0.5
    card = None
    card_updated = factory.LazyAttribute(lambda m: timezone.now() if m.card is not None else None)


class ReviewFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Review
        skip_postgeneration_save = True

    study = factory.SubFactory(StudyFactory, status=Study.Status.REVIEWED)
    radiologist = factory.SubFactory(UserFactory, role="radiologist")
    decision = factory.LazyAttribute(
        lambda r: (
            ReviewDecision.RULE if r.model_label == ResultLabel.INDETERMINATE else ReviewDecision.CONFIRM
        )
    )
    model_label = Label.ABNORMAL
    # An indeterminate result has no label to confirm: give final_label for those.
    final_label = factory.LazyAttribute(lambda r: r.model_label)
    model_version = "a" * 64

    @factory.post_generation
    def worklist_key(self, create, extracted, **kwargs):
        if create:
            study_worklist_key_refresh(study=self.study)
