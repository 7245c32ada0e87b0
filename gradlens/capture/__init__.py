"""gradlens.capture"""
