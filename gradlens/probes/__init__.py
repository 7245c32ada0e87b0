"""gradlens.probes"""
