"""The gradlens dashboard (installed as ``gradlens.dashboard``); reads runs via gradlens.store."""
