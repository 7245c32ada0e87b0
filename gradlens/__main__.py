"""``python -m gradlens …`` (e.g. under ``torchrun -m gradlens watch train.py``)."""

from gradlens.cli.main import run

run()
