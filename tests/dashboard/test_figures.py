"""Training-curve figures from crafted frames: downsampling, markers, log colour, axes."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pandas as pd
import pytest

from gradlens.dashboard.figures import (
    X_TITLES,
    Axes,
    compare_figure,
    curve_with_events,
    empty_figure,
    heatmap_figure,
    layer_figure,
    lines_figure,
)


def _curve(n: int = 100_000, spike_at: int | None = 42_424) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    value = 2.0 + 0.01 * rng.standard_normal(n)
    if spike_at is not None:
        value[spike_at] = 40.0
    return pd.DataFrame({"step": np.arange(n), "value": value, "time": np.arange(n) * 0.1})


def _events(rows: list[dict]) -> pd.DataFrame:
    cols = ["step", "kind", "metric", "layer", "value", "baseline", "ratio", "detail"]
    return pd.DataFrame(
        [{c: r.get(c, "" if c in ("layer", "detail") else 0) for c in cols} for r in rows]
    )


def test_long_curve_is_downsampled_and_keeps_its_spike():
    fig = lines_figure(_curve(), "loss")
    (trace,) = fig.data
    assert len(trace.x) <= 2000
    assert 42_424 in trace.x and max(trace.y) == 40.0
    assert trace.name == "loss"


def test_smoothing_draws_raw_behind_smoothed():
    frame = _curve(1000, spike_at=None)
    fig = lines_figure(frame, "loss", Axes(smoothing=0.9))
    raw, smooth = fig.data
    assert raw.opacity == 0.25 and not raw.showlegend
    assert np.std(smooth.y) < np.std(raw.y) / 3


def test_series_become_traces_and_log_y():
    frame = pd.concat([_curve(50, None).assign(series="a"), _curve(50, None).assign(series="b")])
    fig = compare_figure(frame, "loss", Axes(log_y=True))
    assert [t.name for t in fig.data] == ["a", "b"]
    assert fig.layout.yaxis.type == "log"


@pytest.mark.parametrize("xaxis", ["step", "time", "wall"])
def test_x_axes(xaxis):
    start = 1_699_920_000.0
    frame = _curve(10, None)
    fig = lines_figure(frame, "loss", Axes(xaxis=xaxis, start_time=start))
    x = fig.data[0].x
    if xaxis == "wall":  # local time, like TensorBoard's "wall" axis
        assert x[0] == np.datetime64(datetime.fromtimestamp(start))
        assert x[5] - x[0] == np.timedelta64(500, "ms")
    else:
        assert x[0] == 0 and x[5] == (5 if xaxis == "step" else 0.5)
    assert fig.layout.xaxis.title.text == X_TITLES[xaxis]


def test_spike_and_nonfinite_markers():
    frame = _curve(300, spike_at=151)
    frame.loc[250:, "value"] = np.nan
    frame.loc[200, "value"] = np.inf
    events = _events(
        [
            {"step": 151, "kind": "loss_spike", "value": 40.0},
            {"step": 120, "kind": "nonfinite_loss", "value": np.nan},  # event without NaN row
            {"step": 151, "kind": "grad_spike", "value": 3.0},  # another curve's event
        ]
    )
    fig = curve_with_events(frame, events, "loss", ["loss_spike"], ["nonfinite_loss"])
    spikes = next(t for t in fig.data if t.name == "spike")
    assert list(spikes.x) == [151] and list(spikes.y) == [40.0]
    bad = next(t for t in fig.data if t.name == "non-finite")
    assert list(bad.x) == [120, 200, *range(250, 300)]
    assert bad.y[0] == frame["value"][120]  # at the last finite value
    assert bad.y[1] == frame["value"][199] and bad.y[-1] == frame["value"][249]


def test_heatmap_uses_log_colour():
    cells = pd.DataFrame(
        [[1e-3, 1e-2, 0.0], [1.0, 10.0, 100.0]], index=["a", "b"], columns=[0, 10, 20]
    )
    fig = heatmap_figure(cells, "grad_norm", last_steps=[9, 19, 20])
    (heat,) = fig.data
    z = np.array(heat.z, dtype=float)
    np.testing.assert_allclose(z[1], [0, 1, 2])
    np.testing.assert_allclose(z[0, :2], [-3, -2])
    assert np.isnan(z[0, 2])  # zero has no logarithm: blank cell
    assert list(heat.colorbar.tickvals) == [-3, -2, -1, 0, 1, 2]
    assert heat.colorbar.ticktext[0] == "1e-3"
    assert list(heat.y) == ["a", "b"] and fig.layout.yaxis.autorange == "reversed"
    # a bucket sits at the centre of its steps; hover has the value and the exact step range
    assert list(heat.x) == [4.5, 14.5, 20.0]
    custom = np.asarray(heat.customdata)
    assert custom[1, 2].tolist() == [100.0, 20.0, 20.0] and custom[0, 0, :3].tolist() == [
        pytest.approx(1e-3),
        0.0,
        9.0,
    ]
    assert "customdata[1]}–%{customdata[2]" in heat.hovertemplate
    assert "log10" not in heat.hovertemplate


def test_layer_figure_rows_and_layer_spikes():
    steps = np.arange(100)
    curves = pd.concat(
        [
            pd.DataFrame({"step": steps, "metric": m, "value": np.full(100, v)})
            for m, v in (("grad_norm", 1.0), ("update_ratio", 1e-3), ("param_norm", 5.0))
        ]
    )
    events = _events(
        [
            {"step": 40, "kind": "layer_grad_spike", "layer": "w", "value": 9.0},
            {"step": 60, "kind": "layer_grad_spike", "layer": "other", "value": 9.0},
        ]
    )
    fig = layer_figure(curves, "w", events, Axes(log_y=True))
    titles = [a.text for a in fig.layout.annotations][:3]
    assert titles == ["grad_norm", "update_ratio", "param_norm"]
    spikes = [t for t in fig.data if t.name == "spike"]
    assert len(spikes) == 1 and list(spikes[0].x) == [40]
    assert fig.layout.yaxis.type == "log" and fig.layout.yaxis3.type == "log"


def test_empty_inputs_say_why():
    assert "no loss data" in lines_figure(pd.DataFrame(), "loss").layout.annotations[0].text
    assert empty_figure("nothing").layout.annotations[0].text == "nothing"
    assert "no per-layer" in heatmap_figure(pd.DataFrame(), "x").layout.annotations[0].text


def test_relative_heatmap_colours_the_ratio_centred_on_one():
    cells = pd.DataFrame([[1e-3, 3.4e-2], [5.0, 5.0]], index=["small", "big"], columns=[0, 1])
    ratio = pd.DataFrame([[1.0, 34.0], [1.0, 1.0]], index=cells.index, columns=cells.columns)
    (heat,) = heatmap_figure(cells, "grad_norm", relative=ratio).data
    z = np.asarray(heat.z, dtype=float)
    assert z[0, 1] == pytest.approx(np.log10(34.0), abs=1e-3) and z[1, 1] == 0.0
    assert heat.zmid == 0 and heat.zmin == -heat.zmax
    assert np.asarray(heat.customdata)[0, 1, 3] == pytest.approx(34.0)
    assert "×10" in heat.colorbar.ticktext


def test_sparse_series_are_not_smoothed_and_hover_shows_the_raw_value():
    # grokking's top eigenvalue: four probes, the last one large
    frame = pd.DataFrame({"step": [499, 999, 1499, 1999], "value": [0.005, 0.0, 0.0, 59.239]})
    (line,) = lines_figure(frame, "top_eigenvalue", Axes(smoothing=0.6)).data
    assert list(line.y) == [0.005, 0.0, 0.0, 59.239]
    assert line.mode == "lines+markers"
    dense = _curve(500, spike_at=None)
    _, smooth = lines_figure(dense, "loss", Axes(smoothing=0.6)).data
    custom = np.asarray(smooth.customdata)
    assert custom[:, 1].tolist() == list(smooth.x)  # step of each drawn point
    np.testing.assert_allclose(custom[:, 0], dense["value"].to_numpy()[custom[:, 1].astype(int)])
    assert "smoothed" in smooth.hovertemplate and "customdata[0]" in smooth.hovertemplate


@pytest.mark.parametrize(
    ("value", "log"), [(0.01, False), (0.01, True), (0.0, False), (-3.0, False)]
)
def test_a_constant_series_gets_an_axis_around_its_value(value, log):
    frame = pd.DataFrame({"step": np.arange(50), "value": np.full(50, value)})
    fig = lines_figure(frame, "learning rate", Axes(log_y=log))
    lo, hi = fig.layout.yaxis.range
    shown = np.log10(value) if log else value
    assert lo < shown < hi and hi - lo <= max(1.0, 1.01 * abs(shown))
    assert any(f"constant {value:.6g}" == a.text for a in fig.layout.annotations)
    varied = lines_figure(frame.assign(value=np.arange(50.0)), "x")
    assert varied.layout.yaxis.range is None


def test_names_with_plotly_markup_are_escaped():
    name = "<b>evil</b><a href='x'>"
    frame = pd.DataFrame({"step": np.arange(5), "value": 1.0 + np.arange(5), "series": name})
    (line,) = lines_figure(frame, "loss").data
    assert "<b>" not in line.name and "&lt;b&gt;" in line.name
    assert "<b>" not in line.hovertemplate
    cells = pd.DataFrame([[1.0]], index=[name], columns=[0])
    (heat,) = heatmap_figure(cells, "grad_norm").data
    assert list(heat.y) == ["&lt;b&gt;evil&lt;/b&gt;&lt;a href='x'&gt;"]
    curves = pd.DataFrame({"step": [0, 1], "metric": "grad_norm", "value": [1.0, 2.0]})
    assert "<b>" not in layer_figure(curves, name).layout.title.text


def test_spike_markers_hover_ratio_baseline_and_layer():
    frame = _curve(300, spike_at=151)
    events = _events(
        [{"step": 151, "kind": "loss_spike", "value": 40.0, "ratio": 20.0, "baseline": 2.0}]
    )
    fig = curve_with_events(frame, events, "loss", ["loss_spike"], [])
    spike = next(t for t in fig.data if t.name == "spike")
    assert np.asarray(spike.customdata)[0].tolist() == [151.0, 20.0, 2.0, 40.0]
    assert "× baseline" in spike.hovertemplate


def test_a_single_probe_is_a_point_labelled_with_its_value():
    (point,) = lines_figure(pd.DataFrame({"step": [499], "value": [59.239]}), "λmax").data
    assert point.mode == "markers+text" and point.text == ("59.24",)
