"""The ``gradlens`` command line (installed as ``gradlens.cli``)."""
