"""``serve``: input checks, loopback by default, and an import free of torch."""

from __future__ import annotations

import subprocess
import sys

import dash
import pytest

from gradlens.dashboard.serve import serve
from gradlens.errors import GradlensError


def test_missing_directory_is_one_line_error(tmp_path):
    with pytest.raises(GradlensError, match="no such directory"):
        serve(tmp_path / "nope")


def test_bad_port(tmp_path):
    with pytest.raises(GradlensError, match="port"):
        serve(tmp_path, port=70000)


def test_binds_loopback_by_default(tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr(dash.Dash, "run", lambda self, **kw: seen.update(kw))
    serve(tmp_path)
    assert seen == {"host": "127.0.0.1", "port": 8050, "debug": False}


def test_taken_port_is_a_gradlens_error(tmp_path, monkeypatch):
    def taken(self, **kw):
        raise OSError(98, "Address already in use")

    monkeypatch.setattr(dash.Dash, "run", taken)
    with pytest.raises(GradlensError, match="Address already in use"):
        serve(tmp_path, port=9999)


def test_the_app_never_imports_torch():
    code = (
        "import sys; from gradlens.dashboard import create_app; "
        "create_app('sample_runs'); print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize(
    ("host", "name", "ok"),
    [("127.0.0.1", "evil.example", False), ("box.lan", "box.lan", True), ("0.0.0.0", "x.y", True)],
)
def test_serve_answers_only_the_hosts_it_serves(tmp_path, monkeypatch, host, name, ok):
    apps = []
    monkeypatch.setattr(dash.Dash, "run", lambda self, **kw: apps.append(self))
    serve(tmp_path, host=host)
    client = apps[0].server.test_client()
    assert (client.get("/", headers={"Host": f"{name}:8050"}).status_code == 200) is ok
    assert client.get("/", headers={"Host": "localhost:8050"}).status_code == 200
