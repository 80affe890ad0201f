"""docker/nginx.conf: patient images leave nginx only after the app has authorised the request."""

import re
from pathlib import PurePosixPath

from django.conf import settings

from tests.deploy.stack import (
    NGINX_CONF,
    command_of,
    load_compose,
    option,
    parse_nginx,
    service_environment,
    site_env,
)

CONF = parse_nginx(NGINX_CONF.read_text(encoding="utf-8"))
SERVICES = load_compose()["services"]
APP_ENV = service_environment(SERVICES["web"], environ=site_env())
PREFIX = APP_ENV["MSKDETECT_PROTECTED_MEDIA_PREFIX"]


def _https_server():
    return next(
        server
        for server in CONF.find("server")
        if ["443", "ssl", "default_server"] in server.directive("listen")
    )


def _protected_location():
    locations = _https_server().find("location", PREFIX)
    assert len(locations) == 1, f"no `location {PREFIX}` in the HTTPS server"
    return locations[0]


def test_the_protected_media_location_is_internal_only():
    # Without `internal`, anyone could fetch /protected-media/<file> and skip the app's checks.
    protected = _protected_location()
    assert protected.directive("internal") == [[]]
    for location in CONF.find("location"):
        if location is not protected:
            assert not location.directive("alias"), f"location {location.args} exposes a directory"


def test_x_accel_paths_map_into_the_media_volume_without_an_off_by_slash():
    (alias,) = _protected_location().directive("alias")
    media_root = APP_ENV["MEDIA_ROOT"]
    # `location /x/` with `alias /dir` (no slash) would let /x/../ escape the media directory.
    assert PREFIX.endswith("/") and alias[0].endswith("/")
    assert alias[0].rstrip("/") == media_root
    assert f"media:{media_root}:ro" in SERVICES["nginx"]["volumes"]
    # What the image views send (prefix + storage name) lands on the file under MEDIA_ROOT.
    name = "radiographs/2026/11/25/abc.png"
    sent = f"{PREFIX.rstrip('/')}/{name}"
    served = PurePosixPath(alias[0] + sent.removeprefix(PREFIX))
    assert served == PurePosixPath(media_root) / name


def test_nginx_proxies_to_gunicorn_and_sets_the_headers_django_trusts():
    (server,) = CONF.find("upstream", "mskdetect_web")[0].directive("server")
    bind = option(command_of(SERVICES["web"]), "--bind", "-b")
    assert server[0] == f"web:{bind.rsplit(':', 1)[1]}"
    proxied = _https_server().find("location", "/")[0]
    headers = {args[0]: args[1] for args in proxied.directive("proxy_set_header")}
    assert headers["X-Forwarded-Proto"] == "$scheme"
    assert headers["X-Real-IP"] == "$remote_addr"
    assert headers["Host"] == "$host"


def test_plain_http_redirects_to_https_and_uploads_up_to_the_app_limit_get_through():
    http = next(
        server for server in CONF.find("server") if ["80", "default_server"] in server.directive("listen")
    )
    assert http.find("location", "/")[0].directive("return") == [["301", "https://$host$request_uri"]]
    (size,) = CONF.find("http")[0].directive("client_max_body_size")
    megabytes = int(re.fullmatch(r"(\d+)m", size[0]).group(1))
    assert megabytes * 1024 * 1024 >= settings.MSKDETECT_MAX_UPLOAD_BYTES


def test_tls_files_come_from_the_mounted_directory():
    (mount,) = [
        volume for volume in SERVICES["nginx"]["volumes"] if volume.endswith(":ro") and "tls" in volume
    ]
    tls_dir = mount.split(":")[-2]
    for directive in ("ssl_certificate", "ssl_certificate_key"):
        (path,) = _https_server().directive(directive)
        assert path[0].startswith(tls_dir + "/")
