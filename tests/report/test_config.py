"""Thresholds from pyproject.toml / gradlens.toml, and CLI overrides on top."""

from __future__ import annotations

import pytest

from gradlens.errors import ConfigError
from gradlens.report.config import load_config


def test_defaults_without_any_file(tmp_path):
    config = load_config(start=tmp_path)
    assert config.fail_on == "error" and config.source is None
    assert config.thresholds.loss_spike_max_clusters == 3


def test_pyproject_tool_section_found_walking_up(tmp_path):
    (tmp_path / "pyproject.toml").write_text(
        "[project]\nname='x'\n[tool.gradlens.report]\nfail_on='warning'\n"
        "[tool.gradlens.thresholds]\nexploding_ratio=50\n"
    )
    nested = tmp_path / "a" / "b"
    nested.mkdir(parents=True)
    config = load_config(start=nested)
    assert config.fail_on == "warning"
    assert config.thresholds.exploding_ratio == 50.0
    assert config.source == str(tmp_path / "pyproject.toml")


def test_gradlens_toml_wins_and_cli_overrides_it(tmp_path):
    (tmp_path / "pyproject.toml").write_text("[tool.gradlens.report]\nfail_on='warning'\n")
    (tmp_path / "gradlens.toml").write_text(
        "[report]\nfail_on='never'\n[thresholds]\nspike_gap=3\n"
    )
    config = load_config(start=tmp_path)
    assert (config.fail_on, config.thresholds.spike_gap) == ("never", 3)
    config = load_config(start=tmp_path, fail_on="error", overrides={"spike_gap": "7"})
    assert (config.fail_on, config.thresholds.spike_gap) == ("error", 7)


def test_pyproject_without_tool_section_is_ignored(tmp_path):
    (tmp_path / "pyproject.toml").write_text("[project]\nname='x'\n")
    assert load_config(start=tmp_path).source is None


@pytest.mark.parametrize(
    "content,match",
    [
        ("[thresholds]\nno_such=1\n", "unknown threshold 'no_such'"),
        ("[thresholds]\nspike_gap='many'\n", "needs an integer"),
        ("[report]\nfail_on='sometimes'\n", "fail_on must be one of"),
        ("[report]\ncolour='red'\n", "unknown \\[report\\] keys"),
        ("not = [valid toml", "gradlens.toml"),
    ],
)
def test_bad_config_is_a_config_error(tmp_path, content, match):
    (tmp_path / "gradlens.toml").write_text(content)
    with pytest.raises(ConfigError, match=match):
        load_config(start=tmp_path)


def test_explicit_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(path=tmp_path / "missing.toml")
