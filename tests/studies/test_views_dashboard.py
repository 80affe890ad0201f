"""The dashboard page: figures per body part and model version, charts' data, drift warning."""

import datetime
import json
import re

import pytest
from django.urls import reverse
from django.utils import timezone

from studies.models import Study
from tests.factories import ReviewFactory, StudyResultFactory, UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff_client(client):
    client.force_login(UserFactory(role="staff"))
    return client


def _results(n: int, *, probability: float, days_ago: int, version: str = "v" * 64) -> list:
    results = [StudyResultFactory(abnormal_probability=probability, model_version=version) for _ in range(n)]
    Study.objects.filter(pk__in=[r.study_id for r in results]).update(
        created_at=timezone.now() - datetime.timedelta(days=days_ago)
    )
    return results


def test_empty_dashboard(staff_client):
    html = staff_client.get(reverse("dashboard")).content.decode()
    assert "No study has a model result yet." in html and "chart.umd.min.js" not in html


def _cell(html: str, metric: str, body_part: str = "XR_WRIST") -> str:
    """The text of one figure's cell in the per-group table, tags stripped, spaces collapsed."""
    row = html.split(f'data-body-part="{body_part}"')[1].split("</tr>")[0]
    cell = row.split(f'data-metric="{metric}">')[1].split("</td>")[0]
    return " ".join(re.sub(r"<[^>]+>", " ", cell).split())


def _chart_data(html: str) -> dict:
    return json.loads(
        re.search(r'<script id="dashboard-data" type="application/json">(.*?)</script>', html).group(1)
    )


def _review(result, *, model_label: str, final_label: str):
    override = model_label != final_label
    return ReviewFactory(
        study=result.study,
        model_version=result.model_version,
        model_label=model_label,
        final_label=final_label,
        decision="override" if override else "confirm",
        comment="x" if override else "",
    )


def test_agreement_figures_show_their_interval_count_and_a_too_few_caveat(staff_client):
    results = _results(4, probability=0.9, days_ago=1)
    _review(results[0], model_label="abnormal", final_label="abnormal")
    _review(results[1], model_label="abnormal", final_label="normal")
    html = staff_client.get(reverse("dashboard")).content.decode()
    # Wilson 95 % intervals: 1 of 1 -> 20.7 to 100 %, 0 of 1 -> 0 to 79.3 %.
    assert _cell(html, "sensitivity") == (
        "100.0 % 95 % CI 20.7\N{EN DASH}100.0 % n = 1 abnormal study only 1 abnormal study: too few to judge"
    )
    assert _cell(html, "specificity") == (
        "0.0 % 95 % CI 0.0\N{EN DASH}79.3 % n = 1 normal study only 1 normal study: too few to judge"
    )
    # Observed agreement 1/2 equals chance agreement (the model always says abnormal): kappa 0.
    assert _cell(html, "kappa").startswith("0.00 ") and "only 2 reviews: too few to judge" in _cell(
        html, "kappa"
    )
    assert _cell(html, "flagged-rate").startswith("100.0 % 95 % CI 51.0\N{EN DASH}100.0 % 4 of 4 studies")
    data = _chart_data(html)
    assert data["sensitivity"][0] | {"low": round(data["sensitivity"][0]["low"], 3)} == {
        "value": 1.0,
        "low": 0.207,
        "high": 1.0,
        "n": 1,
        "counted": "1 abnormal study",
        "caveat": "only 1 abnormal study: too few to judge",
    }
    assert data["flagged_rate"][0]["value"] == 1.0 and data["flagged_rate"][0]["n"] == 4


def test_enough_reviews_give_a_figure_without_the_caveat(staff_client):
    results = _results(24, probability=0.9, days_ago=1) + _results(16, probability=0.1, days_ago=1)
    abnormal, normal = results[:24], results[24:]
    for result in abnormal[:10]:
        _review(result, model_label="abnormal", final_label="abnormal")
    for result in abnormal[10:12]:
        _review(result, model_label="abnormal", final_label="normal")
    for result in normal[:8]:
        _review(result, model_label="normal", final_label="normal")
    for result in normal[8:10]:
        _review(result, model_label="normal", final_label="abnormal")
    html = staff_client.get(reverse("dashboard")).content.decode()
    # 10 of 12 truly abnormal called abnormal; Wilson 55.2 to 95.3 %.
    assert _cell(html, "sensitivity") == "83.3 % 95 % CI 55.2\N{EN DASH}95.3 % n = 12 abnormal studies"
    assert _cell(html, "specificity") == "80.0 % 95 % CI 49.0\N{EN DASH}94.3 % n = 10 normal studies"
    kappa = _cell(html, "kappa")
    assert re.fullmatch(r"0\.63 95 % CI (0\.\d\d)\N{EN DASH}(0\.\d\d) n = 22 reviews", kappa), kappa
    low, high = (float(x) for x in re.findall(r"0\.\d\d", kappa)[1:])
    assert 0.2 < low < 0.63 < high <= 1.0
    assert "too few to judge" not in html.split('data-testid="dashboard-table"')[1]


def test_kappa_is_a_dash_when_undefined(staff_client):
    results = _results(2, probability=0.9, days_ago=1)
    _review(results[0], model_label="abnormal", final_label="abnormal")
    html = staff_client.get(reverse("dashboard")).content.decode()
    assert _cell(html, "kappa") == "— n = 1 review only 1 review: too few to judge"
    assert _chart_data(html)["kappa"][0]["value"] is None


def test_demo_results_put_the_demo_marker_on_every_chart(staff_client):
    _results(3, probability=0.9, days_ago=1)
    demo = StudyResultFactory(abnormal_probability=0.2, model_version="d" * 64, demo=True)
    html = staff_client.get(reverse("dashboard")).content.decode()
    assert html.count('data-testid="chart-demo-badge">demo model — not for clinical use<') == 2
    assert 'data-testid="dashboard-demo-warning"' in html
    data = _chart_data(html)
    assert data["demo"] is True and data["demo_notice"] == "demo model — not for clinical use"
    assert "Wrist · dddddddd (demo)" in data["labels"] and "Wrist · vvvvvvvv" in data["labels"]
    # Without the demo model's result, no marker.
    demo.delete()
    html = staff_client.get(reverse("dashboard")).content.decode()
    assert "chart-demo-badge" not in html and _chart_data(html)["demo"] is False


def test_drift_warning_when_the_last_week_differs(staff_client):
    _results(18, probability=0.1, days_ago=30)
    _results(2, probability=0.9, days_ago=30)
    _results(10, probability=0.9, days_ago=2)
    html = staff_client.get(reverse("dashboard")).content.decode()
    assert 'data-testid="drift-warning"' in html
    assert "100.0 %" in html and "10.0 %" in html


def test_no_drift_warning_for_a_steady_rate(staff_client):
    _results(30, probability=0.1, days_ago=30)
    _results(10, probability=0.1, days_ago=2)
    assert 'data-testid="drift-warning"' not in staff_client.get(reverse("dashboard")).content.decode()


def test_dashboard_needs_a_clinical_role(client):
    client.force_login(UserFactory(role=None))
    assert client.get(reverse("dashboard")).status_code == 403
