"""gradlens.instrument"""
