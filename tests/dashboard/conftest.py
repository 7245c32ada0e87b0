"""Dashboard fixtures: sample runs copied next to crafted ones, and headless Chromium."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.dashboard.craft import (
    copy_samples,
    craft_eval_run,
    craft_layer_run,
    craft_probe_run,
)


def pytest_configure(config: pytest.Config) -> None:
    # dash[testing] opens a visible browser unless --headless is given; without a display
    # that fails after 30 s, so default to headless there.
    if hasattr(config.option, "headless") and not os.environ.get("DISPLAY"):
        config.option.headless = True


@pytest.fixture(scope="session")
def dash_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample runs plus ``probes`` (every probe table), ``layered`` (a layer spike) and
    ``evaluated``/``evaluated-2`` (two eval loaders and logged metrics)."""
    root = tmp_path_factory.mktemp("dash") / "runs"
    root.mkdir()
    copy_samples(root)
    craft_probe_run(root)
    craft_layer_run(root, "layered")
    craft_eval_run(root, "evaluated")
    craft_eval_run(root, "evaluated-2", offset=-0.2)
    return root
