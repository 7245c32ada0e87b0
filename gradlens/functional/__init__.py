"""gradlens.functional"""
