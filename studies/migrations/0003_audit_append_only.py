"""On PostgreSQL, a trigger makes the audit table append-only: UPDATE, DELETE and TRUNCATE fail.

Other databases (SQLite in development) rely on the application: no code path updates or
deletes audit events, and the admin is read-only.

TRUNCATE is allowed only in Django's throw-away test databases (named `test_…`), because the
test runner empties every table with TRUNCATE between transactional tests.
"""

from django.db import migrations

FORWARD = [
    r"""
CREATE OR REPLACE FUNCTION studies_auditevent_append_only() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' AND current_database() LIKE 'test\_%' THEN
        RETURN NULL;
    END IF;
    RAISE EXCEPTION 'studies_auditevent is append-only: % is not allowed on audit events', TG_OP
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'Audit events are never changed or deleted; record a new event instead.';
END;
$$ LANGUAGE plpgsql""",
    """CREATE TRIGGER studies_auditevent_no_update_delete
    BEFORE UPDATE OR DELETE ON studies_auditevent
    FOR EACH ROW EXECUTE FUNCTION studies_auditevent_append_only()""",
    """CREATE TRIGGER studies_auditevent_no_truncate
    BEFORE TRUNCATE ON studies_auditevent
    FOR EACH STATEMENT EXECUTE FUNCTION studies_auditevent_append_only()""",
]

BACKWARD = [
    "DROP TRIGGER IF EXISTS studies_auditevent_no_truncate ON studies_auditevent",
    "DROP TRIGGER IF EXISTS studies_auditevent_no_update_delete ON studies_auditevent",
    "DROP FUNCTION IF EXISTS studies_auditevent_append_only()",
]


def _run(schema_editor, statements):
    # A cursor without parameters: the SQL holds literal % signs that must not be
    # read as placeholders.
    with schema_editor.connection.cursor() as cursor:
        for statement in statements:
            cursor.execute(statement)


def install(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        _run(schema_editor, FORWARD)


def uninstall(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        _run(schema_editor, BACKWARD)


class Migration(migrations.Migration):
    dependencies = [("studies", "0002_roles")]

    operations = [migrations.RunPython(install, uninstall)]
