"""Help reads as words (RUN, DIR, N, FILE), --version, defaults shown; CliRunner in-process."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from gradlens._version import __version__
from gradlens.cli.main import app
from tests.conftest import cli_env, gradlens_cli

runner = CliRunner()


def _help(*command):
    result = runner.invoke(
        app, [*command, "--help"], prog_name="gradlens", env={"COLUMNS": "200", "NO_COLOR": "1"}
    )
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize(
    "command,usage,words",
    [
        ("watch", "gradlens watch [OPTIONS] SCRIPT [ARGS]...", ["DIR", "NAME", " N ", "--probe"]),
        ("report", "gradlens report [OPTIONS] RUN", ["DIR", "FILE", "NAME=VALUE"]),
        ("compare", "gradlens compare [OPTIONS] RUN_A RUN_B [RUN]...", ["DIR", "FILE"]),
        ("ls", "gradlens ls [OPTIONS] [DIR]", []),
        ("dashboard", "gradlens dashboard [OPTIONS] [DIR]", ["HOST", "PORT"]),
    ],
)
def test_metavars_are_words(command, usage, words):
    text = _help(command)
    assert usage in " ".join(text.split())
    for word in words:
        assert word in text, word
    for internal in ("<int range>", "list[", "<path>", "{script}", "{run}", "{RUN}"):
        assert internal not in text, internal
    assert not re.search(r"<(str|int|path|list)", text.replace("<str>", "")), text


def test_defaults_are_shown():
    watch = " ".join(_help("watch").split())
    assert "[default: 50]" in watch and "[default: cheap]" in watch
    report = " ".join(_help("report").split())
    assert "[default: text]" in report and "(default: the config's, else error)" in report
    assert "(default: $GRADLENS_DIR, else ./runs)" in report


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output == f"gradlens {__version__}\n"


def test_version_through_the_real_cli():
    result = gradlens_cli("--version", env=cli_env())
    assert result.returncode == 0 and result.stdout == f"gradlens {__version__}\n"
