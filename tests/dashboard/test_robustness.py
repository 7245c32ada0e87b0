"""A bad file affects only its run: it is listed as "unreadable: <reason>", never a 500."""

from __future__ import annotations

import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gradlens.dashboard.app import create_app, render
from gradlens.dashboard.pages import collapse, compare, curvature, run, runs
from tests.dashboard.craft import SAMPLES


@pytest.fixture(scope="module")
def broken(tmp_path_factory):
    """mlp intact, plus copies with a garbage segment, a corrupt meta.json, a wrong schema."""
    root = tmp_path_factory.mktemp("broken")
    for name in ("mlp", "bad-segment", "bad-meta", "wrong-schema"):
        shutil.copytree(SAMPLES / "mlp", root / name)
    for table in ("scalars", "layers", "collapse"):
        (root / "bad-segment" / table / "part-000099.parquet").write_bytes(b"PAR1 garbage")
    (root / "bad-meta" / "meta.json").write_text('{"name": "bad-meta", "status": ')
    wrong = pa.table({"step": ["x"], "metric": [1], "value": ["y"], "layer": [2]})
    for table in ("scalars", "layers", "collapse"):
        pq.write_table(wrong, root / "wrong-schema" / table / "part-000099.parquet")
    return root


@pytest.fixture(scope="module")
def app(broken):
    return create_app(broken)


@pytest.fixture(scope="module")
def ctx(app):
    return app.server.config["GRADLENS_CONTEXT"]


def _text(fig):
    return " ".join(a.text or "" for a in fig.layout.annotations)


def test_the_runs_page_lists_every_run_and_says_which_are_unreadable(app, ctx):
    assert app.server.test_client().get("/").status_code == 200
    text = str(render(ctx, "/")) + str(runs.runs_table(ctx))
    for name in ("mlp", "bad-segment", "bad-meta", "wrong-schema"):
        assert name in text
    assert text.count("unreadable") >= 2  # bad-meta's reason, and at least one bad table
    assert "bad-meta" in ctx.catalog.unreadable()
    good = runs.runs_rows(ctx, [ctx.run("mlp")])[0]
    assert "unreadable" not in str(good) and good[3] == "300"


@pytest.mark.parametrize("page", ["run", "curvature", "landscape", "collapse"])
def test_a_corrupt_meta_json_gives_a_message_on_its_pages(ctx, page):
    text = str(render(ctx, f"/{page}/bad-meta"))
    assert "unreadable" in text and "message error" in text


@pytest.mark.parametrize("name", ["bad-segment", "wrong-schema"])
def test_bad_segments_give_messages_in_every_callback(ctx, name):
    render(ctx, f"/run/{name}")  # no exception
    for fig in run.curves(ctx, name, 0.6, "step", []):
        assert "unreadable" in _text(fig)
    assert "unreadable" in _text(run.heatmap(ctx, name, "grad_norm", None))
    assert "unreadable" in _text(run.layer_curves(ctx, name, "body.0.weight", 0, "step", []))
    for fig in collapse.curves(ctx, name, 0, "step", []):
        assert "unreadable" in _text(fig) or "no " in _text(fig) or fig.data
    curvature.curves(ctx, name, 0, "step", [])
    fig = compare.figure(ctx, ["mlp", name], "scalars|loss", None, 0.0, "step", [])
    assert [t.name for t in fig.data if t.showlegend is not False] == ["mlp"]
    assert name in _text(fig) and "unreadable" in _text(fig)


def test_the_intact_run_is_unaffected(ctx):
    loss, *_ = run.curves(ctx, "mlp", 0.6, "step", [])
    assert len(loss.data[0].x) > 100 and "unreadable" not in _text(loss)
