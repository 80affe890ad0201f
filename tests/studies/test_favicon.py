"""/favicon.ico, which browsers request on pages that name no icon (the Django admin, JSON answers)."""

import pytest
from django.contrib.staticfiles import finders
from PIL import Image

from tests.factories import UserFactory


@pytest.mark.django_db
def test_favicon_ico_redirects_to_the_static_icon_for_anyone(client):
    response = client.get("/favicon.ico")
    assert response.status_code == 301
    assert response.url == "/static/img/favicon.ico"


def test_the_icon_is_a_real_ico_with_the_usual_sizes():
    path = finders.find("img/favicon.ico")
    assert path is not None
    with Image.open(path) as icon:
        assert icon.format == "ICO"
        assert {(16, 16), (32, 32), (48, 48)} <= set(icon.info["sizes"])
        icon.size = (32, 32)
        pixels = icon.convert("RGB")
        # The SVG's dark tile with a white M: dark corner area, white in the M's left stem.
        assert pixels.getpixel((4, 16)) < (60, 60, 60) and pixels.getpixel((10, 16)) > (200, 200, 200)


@pytest.mark.django_db
def test_every_page_names_both_icons(client):
    client.force_login(UserFactory(role="staff"))
    html = client.get("/").content.decode()
    assert '<link rel="icon" href="/static/img/favicon.ico"' in html
    assert 'href="/static/img/favicon.svg" type="image/svg+xml"' in html
