"""The audit log is append-only: read-only in the admin, and PostgreSQL rejects UPDATE and DELETE."""

import pytest
from django.db import DatabaseError, connection, transaction

from studies.models import AuditEvent
from studies.services import study_view_record
from tests.factories import StudyFactory

pytestmark = pytest.mark.django_db


def test_admin_audit_log_is_read_only_even_for_a_superuser(client, admin_user, staff_user):
    event = study_view_record(study=StudyFactory(), actor=staff_user, ip="10.0.0.9")
    client.force_login(admin_user)
    listing = client.get("/admin/studies/auditevent/")
    assert listing.status_code == 200 and b"study.viewed" in listing.content
    assert client.get("/admin/studies/auditevent/add/").status_code == 403
    assert client.get(f"/admin/studies/auditevent/{event.pk}/delete/").status_code == 403
    # The change page shows the event but offers no save button.
    page = client.get(f"/admin/studies/auditevent/{event.pk}/change/")
    assert page.status_code == 200 and b'name="_save"' not in page.content
    posted = client.post(f"/admin/studies/auditevent/{event.pk}/change/", {"action": "forged"})
    assert posted.status_code == 403
    event.refresh_from_db()
    assert event.action == "study.viewed"


@pytest.mark.parametrize(
    "model",
    [
        "patient",
        "study",
        "radiograph",
        "prediction",
        "studyresult",
        "review",
        "inferenceworker",
        "dicomreceiverrun",
        "dicomexport",
        "dicomsend",
    ],
)
def test_admin_lists_every_model_with_search_read_only(client, admin_user, model):
    client.force_login(admin_user)
    assert client.get(f"/admin/studies/{model}/", {"q": "x"}).status_code == 200
    assert client.get(f"/admin/studies/{model}/add/").status_code == 403


@pytest.mark.integration
@pytest.mark.skipif(connection.vendor != "postgresql", reason="the trigger exists on PostgreSQL only")
@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE studies_auditevent SET action = 'forged' WHERE id = %s",
        "DELETE FROM studies_auditevent WHERE id = %s",
    ],
)
def test_postgresql_rejects_update_and_delete_of_audit_events(staff_user, statement):
    event = study_view_record(study=StudyFactory(), actor=staff_user, ip=None)
    with (
        pytest.raises(DatabaseError, match="append-only"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute(statement, [event.pk])
    # The ORM goes through the same trigger.
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        AuditEvent.objects.filter(pk=event.pk).update(action="forged")
    event.refresh_from_db()
    assert event.action == "study.viewed"


@pytest.mark.django_db(transaction=True)
def test_the_test_runner_can_still_empty_the_tables_between_transactional_tests():
    # On PostgreSQL the flush after this test TRUNCATEs the audit table: the trigger allows that
    # in Django's `test_…` databases only (checked by hand against a non-test database).
    event = study_view_record(study=StudyFactory(), actor=None, ip=None)
    assert event.actor_username == "" and AuditEvent.objects.count() == 1
