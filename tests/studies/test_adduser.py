"""`manage.py adduser NAME --role …` creates users in the right role, and refuses silent overwrites."""

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command

from studies.permissions import is_admin, is_radiologist, is_staff_member

pytestmark = pytest.mark.django_db
PASSWORD = "a long enough passphrase 42"


@pytest.fixture(autouse=True)
def password_env(monkeypatch):
    monkeypatch.setenv("MSKDETECT_PASSWORD", PASSWORD)


@pytest.mark.parametrize(
    ("role", "staff", "radiologist", "admin"),
    [("staff", True, False, False), ("radiologist", True, True, False), ("admin", True, False, True)],
)
def test_adduser_puts_the_user_in_its_role(role, staff, radiologist, admin):
    call_command("adduser", "dr_who", role=role)
    user = get_user_model().objects.get(username="dr_who")
    assert user.check_password(PASSWORD)
    assert (is_staff_member(user), is_radiologist(user), is_admin(user)) == (staff, radiologist, admin)


def test_existing_user_needs_update_flag(monkeypatch):
    call_command("adduser", "dr_who", role="staff")
    with pytest.raises(CommandError, match="already exists"):
        call_command("adduser", "dr_who", role="radiologist")
    monkeypatch.setenv("MSKDETECT_PASSWORD", "another long passphrase 7")
    call_command("adduser", "dr_who", role="radiologist", update=True)
    user = get_user_model().objects.get(username="dr_who")
    assert is_radiologist(user) and user.check_password("another long passphrase 7")
    assert list(user.groups.values_list("name", flat=True)) == ["radiologist"]


def test_weak_password_is_refused(monkeypatch):
    monkeypatch.setenv("MSKDETECT_PASSWORD", "123")
    with pytest.raises(CommandError):
        call_command("adduser", "dr_who", role="staff")
    assert not get_user_model().objects.filter(username="dr_who").exists()


def test_password_prompt_when_no_environment_variable(monkeypatch):
    monkeypatch.delenv("MSKDETECT_PASSWORD")
    monkeypatch.setattr("getpass.getpass", lambda prompt="": PASSWORD)
    call_command("adduser", "nurse", role="staff")
    assert get_user_model().objects.get(username="nurse").check_password(PASSWORD)


def test_role_groups_exist_after_migrations():
    from django.contrib.auth.models import Group

    assert set(Group.objects.values_list("name", flat=True)) >= {"staff", "radiologist"}
