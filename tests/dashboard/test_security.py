"""Only runs listed under the directory are served; names from URLs are never paths."""

from __future__ import annotations

import pytest

from gradlens.dashboard.app import create_app, render
from gradlens.dashboard.catalog import RunCatalog, UnknownRunError
from gradlens.dashboard.pages import compare
from gradlens.errors import GradlensError
from tests.dashboard.craft import craft_layer_run

BAD = ["..", ".", "../outside", "/etc", "a/b", "..\\x", "", "nul\0", "missing", None, 3, ["mlp"]]


@pytest.fixture
def nested(tmp_path):
    """runs/ with one run, and a run outside it reachable by a symlink and by ``..``."""
    runs = tmp_path / "runs"
    runs.mkdir()
    craft_layer_run(runs, "inside", steps=20)
    craft_layer_run(tmp_path, "outside", steps=20)
    (runs / "link").symlink_to(tmp_path / "outside")
    return runs


@pytest.mark.parametrize("name", BAD, ids=repr)
def test_catalog_rejects_anything_but_listed_names(nested, name):
    catalog = RunCatalog(nested)
    with pytest.raises(UnknownRunError):
        catalog.open(name)


def test_symlinks_out_of_the_directory_are_not_runs(nested):
    catalog = RunCatalog(nested)
    assert catalog.names() == ["inside"]
    with pytest.raises(UnknownRunError):
        catalog.open("link")
    assert catalog.open("inside").path == nested / "inside"


def test_missing_directory():
    with pytest.raises(GradlensError, match="no such directory"):
        RunCatalog("/nonexistent/runs")


@pytest.mark.parametrize(
    "path", ["/run/..%2Foutside", "/run/%2E%2E", "/curvature/..", "/collapse/%2Fetc%2Fpasswd"]
)
def test_traversal_urls_render_an_error(nested, path):
    ctx = create_app(nested).server.config["GRADLENS_CONTEXT"]
    page = str(render(ctx, path))
    assert "className='message error'" in page and "graph" not in page


def test_compare_query_keeps_only_known_runs(nested):
    ctx = create_app(nested).server.config["GRADLENS_CONTEXT"]
    assert compare.selected_runs(ctx, "?runs=inside,..%2Foutside,link,inside") == ["inside"]


def test_http_paths_never_serve_files(nested):
    client = create_app(nested).server.test_client()
    for path in ["/run/../../etc/passwd", "/run/..%2F..%2Fetc%2Fpasswd", "/_dash-layout"]:
        response = client.get(path)
        assert b"root:x:" not in response.data
    assert client.get("/assets/../../../../etc/passwd").status_code in (400, 404)


@pytest.mark.parametrize(
    ("host", "allowed", "ok"),
    [
        ("127.0.0.1:8050", None, True),
        ("localhost:8050", None, True),
        ("[::1]:8050", None, True),
        ("LOCALHOST", None, True),
        ("evil.example:8050", None, False),  # DNS rebinding: a page's name resolving to us
        ("127.0.0.1.evil.example", None, False),
        ("box.lan:8050", ["box.lan"], True),
        ("evil.example", ["box.lan"], False),
        ("anything.example", ["0.0.0.0"], True),
    ],
)
def test_only_loopback_host_headers_unless_serving_elsewhere(nested, host, allowed, ok):
    client = create_app(nested, allowed_hosts=allowed).server.test_client()
    response = client.get("/", headers={"Host": host})
    assert (response.status_code == 200) is ok
    if not ok:
        assert response.status_code == 403
        assert client.post("/_dash-update-component", headers={"Host": host}).status_code == 403


def test_csv_download_of_a_series(nested):
    client = create_app(nested).server.test_client()
    response = client.get("/csv/inside?table=scalars&metric=loss&index=0")
    assert response.status_code == 200 and response.mimetype == "text/csv"
    lines = response.data.decode().splitlines()
    assert lines[0] == "step,value,time" and len(lines) == 21
    layer = client.get("/csv/inside?table=layers&metric=grad_norm&layer=body.0.weight")
    assert layer.status_code == 200 and len(layer.data.decode().splitlines()) == 21
    for bad in (
        "/csv/link?table=scalars&metric=loss",  # a symlink out of the directory
        "/csv/inside?table=meta&metric=loss",
        "/csv/inside?table=scalars&metric=nope",
    ):
        assert client.get(bad).status_code == 404, bad
    outside = client.get("/csv/..%2Foutside?table=scalars&metric=loss")  # Dash's index page
    assert outside.mimetype != "text/csv" and b"step,value" not in outside.data
