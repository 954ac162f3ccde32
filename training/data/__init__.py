"""Canonical session data: schema and validation, the search-log simulator, the Amazon importer, samples."""
