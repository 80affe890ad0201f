"""The reading room's worklist and flow: the live table's change check (204 while nothing changed, a
fixed query count, polls that do not keep an idle session alive), the Received and patient-age
columns, "Start reading" / next unreviewed study in worklist order within the filters, and going on
to the next study after a review."""

import datetime
import re

import pytest
from django.contrib.sessions.models import Session
from django.urls import reverse
from django.utils import timezone

from studies import views
from studies.models import AuditEvent, Review, Study
from studies.selectors_reading import next_unreviewed, worklist_position
from studies.services.reviews import review_create
from studies.templatetags.worklist_columns import age_text, received_ago
from studies.views_reading import NOTHING_LEFT, NOTHING_LEFT_FILTERED
from tests.factories import (
    PatientFactory,
    RadiographFactory,
    ReviewFactory,
    StudyFactory,
    StudyResultFactory,
    UserFactory,
)

pytestmark = pytest.mark.django_db
POLL = {"HX-Request": "true", "HX-Target": "worklist-table", "X-Live-Poll": "1"}


@pytest.fixture
def frozen_minute(monkeypatch):
    # The fingerprint holds the minute (the "Received … ago" column); keep it still during a test.
    monkeypatch.setattr(views, "_current_minute", lambda: 29_000_000)


@pytest.fixture
def staff(client):
    user = UserFactory(role="staff")
    client.force_login(user)
    return user


@pytest.fixture
def radiologist(client):
    user = UserFactory(role="radiologist")
    client.force_login(user)
    return user


def _accessions(html: str) -> list[str]:
    return re.findall(r'href="/studies/\d+/">([^<]+)</a>', html)


def _flagged(accession: str, probability: float = 0.9, **study) -> Study:
    return StudyResultFactory(
        study__accession_number=accession, abnormal_probability=probability, **study
    ).study


def _poll(client, fingerprint: str, **params):
    return client.get(reverse("worklist"), params, headers={**POLL, "X-Worklist-Fingerprint": fingerprint})


# --- the live worklist ---------------------------------------------------------------------------
def test_an_unchanged_worklist_answers_204_with_nothing_to_swap(client, staff, frozen_minute):
    _flagged("A-1")
    first = client.get(reverse("worklist"))
    fingerprint = first["X-Worklist-Fingerprint"]
    again = _poll(client, fingerprint)
    assert again.status_code == 204 and again.content == b""
    assert again["X-Worklist-Fingerprint"] == fingerprint


def test_a_new_study_appears_in_worklist_order_on_the_next_poll(client, staff, frozen_minute):
    _flagged("FLAG-LOW", 0.6)
    StudyFactory(accession_number="NEW")
    fingerprint = client.get(reverse("worklist"))["X-Worklist-Fingerprint"]
    _flagged("FLAG-HIGH", 0.95)
    response = _poll(client, fingerprint)
    assert response.status_code == 200
    html = response.content.decode()
    assert html.lstrip().startswith('<div id="worklist-table"')
    assert _accessions(html) == ["FLAG-HIGH", "FLAG-LOW", "NEW"]
    assert response["X-Worklist-Fingerprint"] != fingerprint


def test_a_status_change_and_a_review_change_the_fingerprint(client, staff, frozen_minute):
    waiting = StudyFactory(accession_number="Q-1", status=Study.Status.QUEUED)
    flagged = _flagged("F-1")
    fingerprint = client.get(reverse("worklist"))["X-Worklist-Fingerprint"]
    waiting.status = Study.Status.PROCESSING
    waiting.save(update_fields=["status", "updated_at"])
    processing = _poll(client, fingerprint)
    assert processing.status_code == 200 and 'data-status="processing"' in processing.content.decode()
    fingerprint = processing["X-Worklist-Fingerprint"]
    review_create(
        study=flagged, radiologist=UserFactory(role="radiologist"), decision="confirm", final_label=None
    )
    reviewed = _poll(client, fingerprint)
    assert reviewed.status_code == 200 and "Reviewed: Abnormal" in reviewed.content.decode()


def test_a_study_leaving_the_filter_changes_the_filtered_fingerprint(client, staff, frozen_minute):
    flagged = _flagged("F-1")
    _flagged("F-2", 0.8)
    fingerprint = client.get(reverse("worklist"), {"flagged": "yes"})["X-Worklist-Fingerprint"]
    review_create(
        study=flagged, radiologist=UserFactory(role="radiologist"), decision="confirm", final_label=None
    )
    response = _poll(client, fingerprint, flagged="yes")
    assert response.status_code == 200 and _accessions(response.content.decode()) == ["F-2"]


def test_the_page_number_is_part_of_the_fingerprint(client, staff, frozen_minute):
    for n in range(30):
        StudyFactory(accession_number=f"W{n:03d}")
    first = client.get(reverse("worklist"))["X-Worklist-Fingerprint"]
    second = client.get(reverse("worklist"), {"page": 2})["X-Worklist-Fingerprint"]
    assert first != second
    assert _poll(client, second, page=2).status_code == 204


def test_the_received_column_is_rewritten_once_a_minute(client, staff, monkeypatch):
    StudyFactory()
    monkeypatch.setattr(views, "_current_minute", lambda: 100)
    fingerprint = client.get(reverse("worklist"))["X-Worklist-Fingerprint"]
    assert _poll(client, fingerprint).status_code == 204
    monkeypatch.setattr(views, "_current_minute", lambda: 101)
    assert _poll(client, fingerprint).status_code == 200


def _populate(n: int) -> None:
    for i in range(n):
        result = StudyResultFactory(abnormal_probability=(i % 10) / 10)
        RadiographFactory(study=result.study)
        if i % 3 == 0:
            ReviewFactory(study=result.study, model_label=result.label, final_label=result.label)


@pytest.mark.parametrize("count", [3, 30])
def test_live_poll_query_count_is_constant(client, django_assert_num_queries, frozen_minute, count):
    _populate(count)
    client.force_login(UserFactory(role="staff"))
    fingerprint = client.get(reverse("worklist"))["X-Worklist-Fingerprint"]
    # Unchanged: session, user, groups (role check), the one aggregate; a poll saves no session.
    with django_assert_num_queries(4):
        assert _poll(client, fingerprint).status_code == 204
    # Changed: the same, plus the page's rows (the aggregate's count serves the paginator).
    with django_assert_num_queries(5):
        response = _poll(client, "stale")
    assert response.status_code == 200
    assert len(_accessions(response.content.decode())) == min(count, 25)


def _expiry(client) -> datetime.datetime:
    return Session.objects.get(session_key=client.session.session_key).expire_date


def test_a_poll_does_not_keep_an_idle_session_alive(client, staff):
    client.get(reverse("worklist"))
    before = _expiry(client)
    _poll(client, "anything")
    assert _expiry(client) == before
    client.get(reverse("worklist"))
    assert _expiry(client) > before


def test_a_poll_after_the_session_ended_goes_to_the_login_page(client, staff):
    client.get(reverse("worklist"))
    Session.objects.filter(session_key=client.session.session_key).update(
        expire_date=timezone.now() - datetime.timedelta(seconds=1)
    )
    response = _poll(client, "anything")
    assert response.status_code == 302 and response["Location"].startswith(reverse("login"))
    assert "X-Worklist-Fingerprint" not in response


# --- columns ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("born", "on", "expected"),
    [
        (datetime.date(1990, 6, 15), datetime.date(2024, 6, 15), "34 y"),
        (datetime.date(1990, 6, 15), datetime.date(2024, 6, 14), "33 y"),
        (datetime.date(2023, 10, 2), datetime.date(2024, 6, 14), "8 mo"),
        (datetime.date(2022, 6, 15), datetime.date(2024, 6, 14), "23 mo"),
        (datetime.date(2024, 6, 2), datetime.date(2024, 6, 14), "12 d"),
        (datetime.date(2024, 7, 1), datetime.date(2024, 6, 14), ""),
    ],
)
def test_age_text(born, on, expected):
    assert age_text(born, on) == expected


@pytest.mark.parametrize(
    ("ago", "expected"),
    [
        (datetime.timedelta(seconds=20), "just now"),
        (datetime.timedelta(minutes=12, seconds=5), "12 min ago"),
        (datetime.timedelta(hours=5, minutes=1), "5 h ago"),
        (datetime.timedelta(days=3, hours=2), "3 d ago"),
    ],
)
def test_received_ago(ago, expected):
    assert received_ago(timezone.now() - ago) == expected


def test_worklist_shows_received_and_the_patient_age_on_the_study_date(client, staff):
    known = PatientFactory(birth_date=datetime.date(1990, 6, 15))
    StudyFactory(accession_number="AGED", patient=known, study_date=datetime.date(2024, 6, 20))
    StudyFactory(accession_number="UNKNOWN", patient=PatientFactory(birth_date=None))
    study = StudyFactory(accession_number="OLD")
    Study.objects.filter(pk=study.pk).update(created_at=timezone.now() - datetime.timedelta(minutes=12))
    html = client.get(reverse("worklist")).content.decode()
    assert '<th scope="col">Received</th>' in html and ">Age<" not in html
    rows = {
        accession: html.split(f">{accession}</a>")[0].rsplit("<tr", 1)[1] for accession in ("AGED", "UNKNOWN")
    }
    assert 'data-testid="patient-age" title="Age on the study date">34 y<' in rows["AGED"]
    assert "patient-age" not in rows["UNKNOWN"]
    assert ">12 min ago</time>" in html
    assert re.search(r'title="Received \d{1,2} \w{3} \d{4}, \d\d:\d\d"', html)


def test_final_labels_use_the_models_casing(client, staff):
    result = StudyResultFactory(abnormal_probability=0.9)
    ReviewFactory(study=result.study, decision="override", final_label="normal", comment="motion")
    html = client.get(reverse("worklist")).content.decode()
    assert "Reviewed: Normal" in html and "Reviewed: normal" not in html


# --- start reading / next unreviewed --------------------------------------------------------------
@pytest.fixture
def queue():
    """Flagged (two), indeterminate, an unreviewed normal, a reviewed one and one with no result."""
    studies = {
        "FLAG-HIGH": _flagged("FLAG-HIGH", 0.95),
        "FLAG-LOW": _flagged("FLAG-LOW", 0.7, study__body_part="XR_HAND"),
        "UNSURE": StudyResultFactory(
            study__accession_number="UNSURE", abnormal_probability=0.5, indeterminate=(0.35, 0.65)
        ).study,
        "NORMAL": _flagged("NORMAL", 0.2),
        "DONE": _flagged("DONE", 0.99),
        "PENDING": StudyFactory(accession_number="PENDING", status=Study.Status.QUEUED),
    }
    ReviewFactory(study=studies["DONE"])
    return studies


def test_next_unreviewed_follows_the_worklist_order_and_wraps_round(queue):
    user = UserFactory(role="radiologist")
    order = []
    after = None
    for _ in range(5):
        study_id = next_unreviewed(user=user, after=after)
        order.append(Study.objects.get(pk=study_id).accession_number)
        after = worklist_position(Study.objects.get(pk=study_id))
    # Flagged first, then indeterminate, then the rest; reviewed and result-less studies never;
    # after the last one the first comes back (a skipped study is read at the end).
    assert order == ["FLAG-HIGH", "FLAG-LOW", "UNSURE", "NORMAL", "FLAG-HIGH"]


def test_next_unreviewed_is_none_for_staff(queue):
    assert next_unreviewed(user=UserFactory(role="staff")) is None


def test_start_reading_opens_the_first_flagged_study_within_the_filters(client, radiologist, queue):
    response = client.get(reverse("reading_next"))
    assert response["Location"] == reverse("study_detail", args=[queue["FLAG-HIGH"].pk])
    response = client.get(reverse("reading_next"), {"body_part": "XR_HAND", "page": "3", "junk": "x"})
    assert response["Location"] == reverse("study_detail", args=[queue["FLAG-LOW"].pk]) + "?body_part=XR_HAND"


def test_skipping_opens_the_next_study_after_this_one(client, radiologist, queue):
    response = client.get(reverse("reading_next"), {"after": queue["FLAG-LOW"].pk})
    assert response["Location"] == reverse("study_detail", args=[queue["UNSURE"].pk])
    assert not Review.objects.filter(study=queue["FLAG-LOW"]).exists()


def test_nothing_left_goes_back_to_the_worklist_with_a_message(client, radiologist):
    response = client.get(reverse("reading_next"), follow=True)
    assert response.redirect_chain[-1][0] == reverse("worklist")
    assert NOTHING_LEFT in response.content.decode()
    filtered = client.get(reverse("reading_next"), {"body_part": "XR_ELBOW"}, follow=True)
    assert filtered.redirect_chain[-1][0] == reverse("worklist") + "?body_part=XR_ELBOW"
    assert NOTHING_LEFT_FILTERED in filtered.content.decode()


def test_reading_next_is_for_radiologists(client, staff, queue):
    assert client.get(reverse("reading_next")).status_code == 403
    client.logout()
    response = client.get(reverse("reading_next"))
    assert response.status_code == 302 and response["Location"].startswith(reverse("login"))


def test_reading_next_refuses_a_bad_study_id(client, radiologist):
    assert client.get(reverse("reading_next"), {"after": "abc"}).status_code == 400
    assert client.get(reverse("reading_next"), {"after": "999999"}).status_code == 404


# --- after a review -----------------------------------------------------------------------------------
def test_record_and_open_next_goes_to_the_next_study_with_the_filters(client, radiologist, queue):
    response = client.post(
        reverse("study_review", args=[queue["FLAG-HIGH"].pk]),
        {"decision": "confirm", "then": "next", "reading": "flagged=yes&page=2"},
    )
    assert response["Location"] == reverse("study_detail", args=[queue["FLAG-LOW"].pk]) + "?flagged=yes"
    review = Review.objects.get(study=queue["FLAG-HIGH"])
    assert review.final_label == "abnormal"
    assert AuditEvent.objects.filter(action="study.reviewed", study=queue["FLAG-HIGH"]).count() == 1
    page = client.get(response["Location"]).content.decode()
    assert f"Your review of {queue['FLAG-HIGH'].accession_number} has been recorded." in page
    assert 'name="reading" value="flagged=yes"' in page


def test_a_ruling_goes_on_to_the_next_study_too(client, radiologist, queue):
    response = client.post(
        reverse("study_review", args=[queue["UNSURE"].pk]),
        {"decision": "rule", "final_label": "normal", "then": "next"},
    )
    assert response["Location"] == reverse("study_detail", args=[queue["NORMAL"].pk])


def test_the_last_review_goes_back_to_the_worklist(client, radiologist):
    study = _flagged("ONLY")
    response = client.post(
        reverse("study_review", args=[study.pk]), {"decision": "confirm", "then": "next"}, follow=True
    )
    assert response.redirect_chain[-1][0] == reverse("worklist")
    html = response.content.decode()
    assert "Your review of ONLY has been recorded." in html and NOTHING_LEFT in html


def test_record_review_alone_stays_on_the_study(client, radiologist, queue):
    response = client.post(reverse("study_review", args=[queue["FLAG-HIGH"].pk]), {"decision": "confirm"})
    assert response["Location"] == reverse("study_detail", args=[queue["FLAG-HIGH"].pk]) + "#review"


def test_a_refused_review_keeps_the_filters_and_records_nothing(client, radiologist, queue):
    response = client.post(
        reverse("study_review", args=[queue["FLAG-HIGH"].pk]),
        {
            "decision": "override",
            "final_label": "normal",
            "comment": "",
            "then": "next",
            "reading": "body_part=XR_WRIST",
        },
    )
    assert response.status_code == 400
    html = response.content.decode()
    assert "An override needs a reason." in html
    assert 'name="reading" value="body_part=XR_WRIST"' in html
    assert not Review.objects.filter(study=queue["FLAG-HIGH"]).exists()


# --- what each role sees ---------------------------------------------------------------------------
def test_radiologist_sees_start_reading_and_the_review_keys(client, radiologist, queue):
    worklist = client.get(reverse("worklist"), {"body_part": "XR_HAND"}).content.decode()
    assert f'href="{reverse("reading_next")}?body_part=XR_HAND"' in worklist
    assert 'id="shortcuts"' in worklist
    page = client.get(
        reverse("study_detail", args=[queue["FLAG-HIGH"].pk]), {"flagged": "yes"}
    ).content.decode()
    keys = page.split('data-testid="shortcuts-table"')[1].split("</table>")[0]
    assert "<kbd>c</kbd>" in keys and "<kbd>o</kbd>" in keys and "<kbd>j</kbd>" in keys
    assert f'data-next-url="{reverse("reading_next")}?after={queue["FLAG-HIGH"].pk}&amp;flagged=yes"' in page
    assert "Record and open next" in page
    assert f'href="{reverse("worklist")}?flagged=yes"' in page


def test_the_study_pages_live_update_keeps_the_filters(client, radiologist, queue):
    study = queue["FLAG-HIGH"]
    page_url = f"http://testserver{reverse('study_detail', args=[study.pk])}?body_part=XR_WRIST"
    html = client.get(
        reverse("study_live", args=[study.pk]), headers={"HX-Request": "true", "HX-Current-URL": page_url}
    ).content.decode()
    assert 'name="reading" value="body_part=XR_WRIST"' in html


def test_an_indeterminate_study_says_confirm_is_not_available(client, radiologist, queue):
    page = client.get(reverse("study_detail", args=[queue["UNSURE"].pk])).content.decode()
    keys = page.split('data-testid="shortcuts-table"')[1].split("</table>")[0]
    assert "Not available here: the model made no call" in keys


def test_staff_see_no_review_keys(client, staff, queue):
    worklist = client.get(reverse("worklist")).content.decode()
    assert "Start reading" not in worklist and 'id="shortcuts"' not in worklist
    page = client.get(reverse("study_detail", args=[queue["FLAG-HIGH"].pk])).content.decode()
    keys = page.split('data-testid="shortcuts-table"')[1].split("</table>")[0]
    assert "<kbd>j</kbd>" in keys
    assert "<kbd>c</kbd>" not in keys and "<kbd>o</kbd>" not in keys and "<kbd>n</kbd>" not in keys
    assert "data-next-url" not in page and "Record and open next" not in page
