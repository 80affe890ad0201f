"""The worklist page: priority order, columns, filters, search, pagination, live polling, query count."""

import datetime
import re

import pytest
from django.urls import reverse

from studies.models import Study
from tests.factories import (
    RadiographFactory,
    ReviewFactory,
    StudyFactory,
    StudyResultFactory,
    UserFactory,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff_client(client):
    client.force_login(UserFactory(role="staff"))
    return client


def _row_accessions(html: str) -> list[str]:
    return re.findall(r'href="/studies/\d+/">([^<]+)</a>', html)


def test_flagged_unreviewed_first_then_probability_then_oldest(staff_client):
    old_new = StudyFactory(accession_number="NEW-OLD")
    young_new = StudyFactory(accession_number="NEW-YOUNG")
    StudyResultFactory(study__accession_number="NORMAL-HIGH", abnormal_probability=0.45)
    StudyResultFactory(study__accession_number="FLAG-LOW", abnormal_probability=0.6)
    StudyResultFactory(study__accession_number="FLAG-HIGH", abnormal_probability=0.9)
    reviewed = StudyResultFactory(study__accession_number="REVIEWED-HIGH", abnormal_probability=0.95).study
    ReviewFactory(study=reviewed)
    Study.objects.filter(pk=old_new.pk).update(created_at=young_new.created_at - datetime.timedelta(hours=1))

    html = staff_client.get(reverse("worklist")).content.decode()

    assert _row_accessions(html) == [
        "FLAG-HIGH",
        "FLAG-LOW",
        "REVIEWED-HIGH",
        "NORMAL-HIGH",
        "NEW-OLD",
        "NEW-YOUNG",
    ]


def test_row_shows_probability_as_text_flag_as_text_and_demo_badge(staff_client):
    StudyResultFactory(abnormal_probability=0.873, demo=True)
    html = staff_client.get(reverse("worklist")).content.decode()
    assert "87.3 %" in html
    assert "Flagged" in html and "⚑" in html
    assert "demo model" in html
    assert "Awaiting review" in html


def test_reviewed_row_shows_final_label_and_is_not_flagged(staff_client):
    result = StudyResultFactory(abnormal_probability=0.9)
    ReviewFactory(study=result.study, decision="override", final_label="normal", comment="motion artefact")
    html = staff_client.get(reverse("worklist")).content.decode()
    assert "Reviewed: Normal" in html
    assert 'data-flag="flagged"' not in html


def test_thumbnail_uses_the_authenticated_preview_of_the_first_image(staff_client):
    study = StudyFactory()
    first = RadiographFactory(study=study)
    RadiographFactory(study=study)
    html = staff_client.get(reverse("worklist")).content.decode()
    assert f'src="{reverse("api:image-preview", args=[first.pk])}"' in html


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({"q": "MRN-777"}, ["A-WRIST"]),
        ({"q": "ada lov"}, ["A-WRIST"]),
        ({"q": "B-HAND"}, ["B-HAND"]),
        ({"body_part": "XR_HAND"}, ["B-HAND"]),
        ({"status": "predicted"}, ["A-WRIST"]),
        ({"flagged": "yes"}, ["A-WRIST"]),
        ({"flagged": "no"}, ["B-HAND"]),
        ({"reviewed": "no"}, ["A-WRIST", "B-HAND"]),
    ],
)
def test_filters_and_search(staff_client, query, expected):
    StudyResultFactory(
        study__accession_number="A-WRIST", study__patient__mrn="MRN-777", study__patient__name="Ada Lovelace"
    )
    StudyFactory(accession_number="B-HAND", body_part="XR_HAND", status="queued")
    html = staff_client.get(reverse("worklist"), query).content.decode()
    assert _row_accessions(html) == expected


def test_date_range_filter_and_its_validation(staff_client):
    old = StudyFactory(accession_number="OLD")
    StudyFactory(accession_number="TODAY")
    Study.objects.filter(pk=old.pk).update(created_at=old.created_at - datetime.timedelta(days=10))
    today = datetime.date.today().isoformat()
    html = staff_client.get(reverse("worklist"), {"date_from": today}).content.decode()
    assert _row_accessions(html) == ["TODAY"]
    bad = staff_client.get(
        reverse("worklist"), {"date_from": today, "date_to": "2000-01-01"}
    ).content.decode()
    assert "The end date is before the start date." in bad


def test_pagination_keeps_the_filters(staff_client):
    for n in range(30):
        StudyFactory(accession_number=f"W{n:03d}")
    first = staff_client.get(reverse("worklist"), {"body_part": "XR_WRIST"}).content.decode()
    assert len(_row_accessions(first)) == 25
    assert "Page 1 of 2" in first
    assert "?body_part=XR_WRIST&amp;page=2" in first
    second = staff_client.get(reverse("worklist"), {"body_part": "XR_WRIST", "page": 2}).content.decode()
    assert len(_row_accessions(second)) == 5


def test_table_always_polls_with_its_fingerprint(staff_client):
    StudyResultFactory()
    response = staff_client.get(reverse("worklist"))
    table = response.content.decode().split('id="worklist-table"')[1].split(">")[0]
    assert 'hx-trigger="every 3s"' in table
    assert f'"X-Worklist-Fingerprint": "{response["X-Worklist-Fingerprint"]}"' in table


def test_htmx_poll_returns_only_the_table(staff_client):
    StudyFactory(status="queued", accession_number="Q1")
    response = staff_client.get(
        reverse("worklist"), headers={"HX-Request": "true", "HX-Target": "worklist-table"}
    )
    html = response.content.decode()
    assert html.lstrip().startswith('<div id="worklist-table"')
    assert "<nav" not in html.split('id="worklist-table"')[0]
    assert "Q1" in html


def _populate(n: int) -> None:
    for i in range(n):
        result = StudyResultFactory(abnormal_probability=(i % 10) / 10)
        RadiographFactory(study=result.study)
        if i % 3 == 0:
            ReviewFactory(study=result.study, model_label=result.label, final_label=result.label)


@pytest.mark.parametrize("count", [3, 30])
def test_query_count_does_not_grow_with_rows(client, django_assert_num_queries, count):
    user = UserFactory(role="staff")
    _populate(count)
    client.force_login(user)
    # Session, user, groups (role check), page count, page rows, then the session save that
    # pushes the idle expiry (savepoint, update, release): the same for 3 or 30 studies.
    with django_assert_num_queries(8):
        response = client.get(reverse("worklist"))
    assert response.status_code == 200
    assert len(_row_accessions(response.content.decode())) == min(count, 25)
