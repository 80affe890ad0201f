"""The two clinical roles. Admins are superusers, so they need no group."""

from django.db import migrations

ROLES = ("staff", "radiologist")


def create_roles(apps, schema_editor):
    Group = apps.get_model("auth", "Group")
    for name in ROLES:
        Group.objects.get_or_create(name=name)


def remove_roles(apps, schema_editor):
    Group = apps.get_model("auth", "Group")
    Group.objects.filter(name__in=ROLES, user__isnull=True).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("auth", "0012_alter_user_first_name_max_length"),
        ("studies", "0001_initial"),
    ]

    operations = [migrations.RunPython(create_roles, remove_roles)]
