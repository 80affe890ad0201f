"""model_version_record: an idempotent, audited upsert of a model version and its validation card."""

import importlib

import pytest
from django.apps import apps
from django.db import IntegrityError, transaction

from studies.errors import ApplicationError
from studies.models import AuditEvent, ModelVersion
from studies.services.model_versions import model_version_record
from tests.factories import PredictionFactory, validation_card

pytestmark = pytest.mark.django_db

VERSION = "b" * 64


def record(**overrides):
    arguments = {
        "version": VERSION,
        "name": "WRIST",
        "body_part": "XR_WRIST",
        "demo": False,
        "threshold": 0.5,
        "card": None,
    }
    arguments.update(overrides)
    return model_version_record(**arguments)


def events(action: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=action).order_by("id"))


def test_first_record_creates_the_version_and_audits_it():
    card = validation_card(version=VERSION)
    version = record(card=card)
    assert (version.model_name, version.body_part, version.demo, version.threshold) == (
        "WRIST",
        "XR_WRIST",
        False,
        0.5,
    )
    assert version.card == card and version.card_updated is not None
    [event] = events("model_version.recorded")
    assert event.actor is None and event.object_id == str(version.pk) and event.study is None
    assert event.details["version"] == VERSION and event.details["validated"] is True


def test_the_same_record_again_writes_and_audits_nothing():
    first = record(card=validation_card(version=VERSION))
    stamp = first.card_updated
    again = record(card=validation_card(version=VERSION))
    assert again.pk == first.pk and again.card_updated == stamp
    assert ModelVersion.objects.count() == 1
    assert AuditEvent.objects.count() == 1


def test_a_newer_card_replaces_the_stored_one_and_an_older_one_does_not():
    record(card=validation_card(version=VERSION, created_at="2026-12-01T08:00:00+00:00"))
    newer = validation_card(version=VERSION, created_at="2026-12-02T08:00:00+00:00", kappa=(0.8, 0.7, 0.9))
    assert record(card=newer).card == newer
    [update] = events("model_version.updated")
    assert update.details["fields"] == ["card", "card_updated"]
    older = validation_card(version=VERSION, created_at="2026-11-30T08:00:00+00:00", kappa=(0.1, 0.0, 0.2))
    assert record(card=older).card == newer
    # A worker that found no card file keeps the card install_model stored.
    assert record(card=None).card == newer
    assert len(events("model_version.updated")) == 1


def test_a_manifest_change_for_the_same_file_is_recorded():
    record()
    changed = record(threshold=0.4, demo=True)
    assert (changed.threshold, changed.demo, changed.card) == (0.4, True, None)
    [update] = events("model_version.updated")
    assert update.details["fields"] == ["demo", "threshold"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"version": "not-a-hash"}, "sha256"),
        ({"version": "B" * 64}, "sha256"),
        ({"body_part": "XR_KNEE"}, "XR_KNEE"),
        ({"threshold": 1.5}, "outside"),
        ({"card": validation_card(version="c" * 64)}, "c" * 64),
    ],
)
def test_bad_input_is_refused_and_nothing_is_stored(overrides, message):
    with pytest.raises(ApplicationError, match=message):
        record(**overrides)
    assert not ModelVersion.objects.exists() and not AuditEvent.objects.exists()


def test_the_database_refuses_a_version_that_is_not_a_sha256():
    with pytest.raises(IntegrityError), transaction.atomic():
        ModelVersion.objects.create(version="x" * 64, model_name="WRIST", body_part="XR_WRIST", threshold=0.5)


def test_the_migration_records_the_versions_already_in_predictions():
    PredictionFactory(model_version="d" * 64, model_name="OLD-WRIST", threshold=0.4, demo=True)
    PredictionFactory(model_version="d" * 64, model_name="OLD-WRIST", threshold=0.4, demo=True)
    PredictionFactory(model_version="e" * 64, model_name="HAND", body_part="XR_HAND")
    migration = importlib.import_module("studies.migrations.0006_model_version")

    migration.record_versions_seen_in_predictions(apps, None)

    rows = ModelVersion.objects.order_by("version").values_list(
        "version", "model_name", "body_part", "demo", "threshold", "card"
    )
    assert list(rows) == [
        ("d" * 64, "OLD-WRIST", "XR_WRIST", True, 0.4, None),
        ("e" * 64, "HAND", "XR_HAND", False, 0.5, None),
    ]
