"""gradlens.report"""
