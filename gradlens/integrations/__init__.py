"""Callbacks for training frameworks: the same run ``gradlens watch`` records, from inside
the framework's ``Trainer``, plus the metrics the framework logs itself.

- :mod:`gradlens.integrations.lightning`: ``GradlensCallback`` for ``lightning.pytorch``;
- :mod:`gradlens.integrations.transformers`: ``GradlensCallback`` for the Hugging Face
  ``Trainer``.

Each module imports its framework; this package imports neither. See docs/integrations.md.
"""
